//! kernels/augment.cu on the CPU emulator (no GPU): `augment_u8` (crop, horizontal flip,
//! u8 -> f32, PCA-lighting delta, mean-image subtraction, scale) against a reference written from
//! the definition of the CPU loader's `patch_to_chw` (crates/data/src/augment.rs; alexnet-data
//! is not a dev-dependency of this crate, so it is restated here). Exact: the same three f32
//! operations in the same order. Each sample crops the image its `src` names: one per image
//! for training, several per image for the evaluation views.

#[path = "emu/common.rs"]
mod common;

use alexnet_cuda::emu::Emu;
use alexnet_cuda::kernels::KernelFile;
use alexnet_cuda::ops::augment::augment_u8_emulated;
use alexnet_cuda::{AugmentParams, AugmentSample};
use alexnet_tensor::rng::Rng;
use common::{emu, normal, rel_l2};
use cudarc::driver::LaunchConfig;

/// Elements past the end of the output that no launch may touch.
const GUARD: usize = 40;

/// Random u8 HWC images.
fn images(len: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng::new(seed);
    (0..len).map(|_| r.below(256) as u8).collect()
}

/// A mean image near mid-grey (f32 HWC).
fn mean_image(h: u32, w: u32, seed: u64) -> Vec<f32> {
    normal((h * w * 3) as usize, seed, 40.0)
        .into_iter()
        .map(|v| v + 120.0)
        .collect()
}

/// The per-sample crop of image `src` at (oy, ox), mirrored left-right when flipped, each channel
/// plus its lighting delta, minus the mean image cropped (and mirrored) at (moy, mox), times
/// `scale`: out[n][c][y][x] = (img[src][oy+y][ox+x'][c] + delta[c] - mean[moy+y][mox+x'][c]) * scale
/// with x' = crop-1-x when flipped. In f32, in that order (as the CPU loader computes it, then
/// scaled), and in f64.
fn reference(
    src: &[u8],
    mean: &[f32],
    samples: &[AugmentSample],
    p: &AugmentParams,
) -> (Vec<f32>, Vec<f64>) {
    let (c, sw, mw) = (p.crop as usize, p.src_w as usize, p.mean_w as usize);
    let plane = p.src_h as usize * sw * 3;
    let (mut out32, mut out64) = (Vec::new(), Vec::new());
    for s in samples {
        let r = s.src as usize;
        let img = &src[r * plane..(r + 1) * plane];
        for ch in 0..3 {
            for y in 0..c {
                for x in 0..c {
                    let xs = if s.flip != 0 { c - 1 - x } else { x };
                    let v = img[((s.oy as usize + y) * sw + s.ox as usize + xs) * 3 + ch];
                    let m = mean[((s.moy as usize + y) * mw + s.mox as usize + xs) * 3 + ch];
                    out32.push((v as f32 + s.delta[ch] - m) * p.scale);
                    out64.push((v as f64 + s.delta[ch] as f64 - m as f64) * p.scale as f64);
                }
            }
        }
    }
    (out32, out64)
}

/// augment_u8 over `cfg` (the op's `grid_for(n * 3 * crop^2)` unless given), after the op's
/// own validation; the output has a guard tail that must stay untouched.
fn run(
    e: &Emu,
    src: &[u8],
    mean: &[f32],
    samples: &[AugmentSample],
    p: AugmentParams,
    cfg: Option<LaunchConfig>,
) -> Vec<f32> {
    augment_u8_emulated(e, (src, mean, samples), p, cfg, GUARD).unwrap()
}

fn check(e: &Emu, p: AugmentParams, samples: &[AugmentSample], seed: u64) {
    let src = images((p.records * p.src_h * p.src_w * 3) as usize, seed);
    let mean = mean_image(p.mean_h, p.mean_w, seed + 1);
    let (want, want64) = reference(&src, &mean, samples, &p);
    let x = run(e, &src, &mean, samples, p, None);
    // Same f32 operations in the same order (no multiply-add to contract): bit-exact.
    assert_eq!(x, want, "augment_u8 {p:?}");
    // And against f64: only the f32 roundings of three operations differ.
    let err = rel_l2(&x, &want64);
    assert!(err < 1e-6, "augment_u8 vs f64: rel L2 {err:e} ({p:?})");
}

/// A sample of image `src` with crop origin (ox, oy), mean origin (mox, moy), flip and a
/// lighting delta.
fn sample(src: u32, o: (u32, u32), mo: (u32, u32), flip: bool, seed: u64) -> AugmentSample {
    let d = normal(3, seed, 12.0);
    AugmentSample {
        ox: o.0,
        oy: o.1,
        mox: mo.0,
        moy: mo.1,
        flip: flip as u32,
        delta: [d[0], d[1], d[2]],
        src,
    }
}

/// Four samples on 13 x 11 images (h != w, so a swapped index shows), crop 7, mean image
/// 10 x 9 (another size, so mean and image origins differ): the four corners of both, flipped
/// and not, and every channel's delta different.
fn rect_case() -> (AugmentParams, Vec<AugmentSample>) {
    let p = AugmentParams {
        n: 4,
        src_h: 13,
        src_w: 11,
        crop: 7,
        mean_h: 10,
        mean_w: 9,
        scale: 1.0,
        records: 4,
    };
    let samples = vec![
        sample(0, (0, 0), (2, 3), false, 1),
        sample(1, (4, 6), (0, 0), true, 2),
        sample(2, (4, 0), (2, 0), true, 3),
        sample(3, (1, 5), (1, 3), false, 4),
    ];
    (p, samples)
}

#[test]
fn augment_kernel_matches_the_reference() {
    let Some(e) = emu(KernelFile::Augment) else {
        return;
    };
    // 4 * 3 * 49 = 588 outputs: three 256-thread blocks, the last partial.
    let (p, samples) = rect_case();
    check(&e, p, &samples, 10);
    // A scale that is not a power of two (rounds on its own).
    check(
        &e,
        AugmentParams {
            scale: 1.0 / 58.4,
            ..p
        },
        &samples,
        11,
    );
    // The loader's shape: square images and mean, mean crop at the image crop, odd crop.
    let p = AugmentParams::square(3, 12, 9, 12).unwrap();
    let samples: Vec<AugmentSample> = [((3, 0), false), ((0, 3), true), ((2, 1), true)]
        .iter()
        .enumerate()
        .map(|(i, &(o, f))| sample(i as u32, o, o, f, 20 + i as u64))
        .collect();
    check(&e, p, &samples, 12);
    // Crop = the whole image, mirrored: one sample, one partial block.
    let p = AugmentParams::square(1, 5, 5, 5).unwrap();
    check(&e, p, &[sample(0, (0, 0), (0, 0), true, 30)], 13);
    // Evaluation views: three crops of each of two images, interleaved out of image order, no
    // lighting (as the views have none) except on one, so a crop taken from the wrong image or
    // with another sample's delta shows.
    let p = AugmentParams {
        n: 6,
        records: 2,
        ..AugmentParams::square(6, 12, 9, 12).unwrap()
    };
    let views: Vec<AugmentSample> = [(1, (0, 0), false), (0, (3, 3), true), (1, (3, 0), true)]
        .iter()
        .chain(&[(0, (0, 3), false), (1, (1, 1), false), (0, (0, 0), true)])
        .enumerate()
        .map(|(i, &(r, o, f))| {
            let s = sample(r, o, o, f, 40 + i as u64);
            let delta = if i == 4 { s.delta } else { [0.0; 3] };
            AugmentSample { delta, ..s }
        })
        .collect();
    check(&e, p, &views, 14);
    common::assert_all_launched(&e);
}

#[test]
fn the_grid_stride_loop_covers_outputs_past_the_grid() {
    let Some(e) = emu(KernelFile::Augment) else {
        return;
    };
    // 588 outputs on 2 blocks of 32 threads: every thread takes several strides.
    let (p, samples) = rect_case();
    let src = images((p.n * p.src_h * p.src_w * 3) as usize, 40);
    let mean = mean_image(p.mean_h, p.mean_w, 41);
    let small = LaunchConfig {
        grid_dim: (2, 1, 1),
        block_dim: (32, 1, 1),
        shared_mem_bytes: 0,
    };
    let x = run(&e, &src, &mean, &samples, p, Some(small));
    assert_eq!(x, reference(&src, &mean, &samples, &p).0);
}

#[test]
fn crops_outside_the_image_or_mean_are_refused() {
    // The op validates before it launches: these would read out of bounds.
    let (p, mut samples) = rect_case();
    assert!(p.validate(&samples).is_ok());
    samples[1].ox = 5; // 5 + 7 > 11
    assert!(p.validate(&samples).is_err());
    samples[1].ox = 4;
    samples[2].moy = 4; // 4 + 7 > 10
    assert!(p.validate(&samples).is_err());
    samples[2].moy = 0;
    assert!(p.validate(&samples[..3]).is_err(), "3 samples for n = 4");
    samples[3].src = 4; // image 4 of 4
    assert!(p.validate(&samples).is_err());
}
