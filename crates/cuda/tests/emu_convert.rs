//! kernels/convert.cu on the CPU emulator (no GPU): f32 -> bf16 rounding against the crate's
//! host mirror and an independent, value-based round-to-nearest-even (hand cases: ties, overflow
//! to inf, signed zeros, subnormals, NaN), bf16 -> f32 decoding (every one of the 65,536
//! patterns), and the tiled NCHW <-> NHWC transposes in f32 and bf16 (bias and ReLU on the way
//! back) against plain index loops, on shapes whose C and HW are not multiples of 32. All exact.

#[path = "emu/common.rs"]
mod common;

use alexnet_cuda::emu::{arg, Emu};
use alexnet_cuda::gpu::grid_for;
use alexnet_cuda::kernels::KernelFile;
use alexnet_cuda::ops::convert::f32_to_bf16_bits;
use alexnet_cuda::ops::layout;
use alexnet_tensor::rng::Rng;
use common::{emu, normal};
use cudarc::driver::LaunchConfig;

/// Elements past the end of every output buffer that no launch may touch.
const GUARD: usize = 40;
const U16_POISON: u16 = 0xdead;

/// The bf16 (raw bits) nearest to `f`, ties to the even significand, by value: the two
/// candidates are the truncation of `f` to 16 bits and the next bf16 away from zero; the one
/// past the largest finite bf16 stands for 2^128 (the overflow threshold is then the halfway
/// point, as IEEE 754 rounds with an unbounded exponent). NaN -> some NaN of the same sign.
fn bf16_nearest(f: f32) -> u16 {
    if f.is_nan() {
        return if f.is_sign_negative() { 0xffc0 } else { 0x7fc0 };
    }
    let lo = (f.to_bits() >> 16) as u16;
    if f.is_infinite() || f.to_bits() & 0xffff == 0 {
        return lo;
    }
    let mag = |h: u16| -> f64 {
        let h = h & 0x7fff;
        if h == 0x7f80 {
            2f64.powi(128)
        } else {
            f32::from_bits((h as u32) << 16).abs() as f64
        }
    };
    let hi = lo + 1; // next magnitude up, same sign (0x7f80 / 0xff80 = inf)
    let a = (f as f64).abs();
    let (dl, dh) = (a - mag(lo), mag(hi) - a);
    if dl < dh || (dl == dh && lo & 1 == 0) {
        lo
    } else {
        hi
    }
}

/// The value of bf16 bits `h` from the format's definition: sign, 8-bit exponent (bias 127),
/// 7-bit fraction; exponent 0 is subnormal (0.f * 2^-126), 255 is inf / NaN.
fn bf16_value(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let (e, m) = (((h >> 7) & 0xff) as i32, (h & 0x7f) as f64);
    let v = match e {
        0 => m / 128.0 * 2f64.powi(-126),
        255 if m == 0.0 => f64::INFINITY,
        255 => f64::NAN,
        _ => (1.0 + m / 128.0) * 2f64.powi(e - 127),
    };
    (sign * v) as f32
}

/// Hand cases for the rounding, as f32 bit patterns.
fn hand_cases() -> Vec<u32> {
    let one = 1.0f32.to_bits(); // 0x3f80_0000
    vec![
        0x0000_0000,
        0x8000_0000,    // -0
        one,            // 1
        one | 0x8000,   // 1 + 2^-8: tie, down to even 1
        one | 0x8001,   // just above the tie: up
        one | 0x7fff,   // just below the tie: down
        one | 0x1_8000, // 1 + 3 * 2^-8: tie, up to even 1 + 2^-6
        0xbf81_8000,    // its negative
        0x7f7f_ffff,    // f32::MAX: inf
        0xff7f_ffff,    // f32::MIN: -inf
        0x7f7f_7fff,    // below the halfway point past the largest bf16: stays finite
        0x7f7f_8000,    // on the halfway point, odd: inf
        0x7f7e_8000,    // tie, even: down
        0x7f80_0000,    // inf
        0xff80_0000,    // -inf
        0x7fc0_0000,    // quiet NaN
        0x7f80_0001,    // signalling NaN, payload only in the low half
        0xffff_ffff,    // negative NaN, full payload
        0x7f81_0000,    // signalling NaN with a high payload
        0x0000_0001,    // smallest subnormal: 0
        0x8000_0001,    // its negative: -0
        0x0000_8000,    // subnormal tie, even: 0
        0x0001_8000,    // subnormal tie, odd: up
        0x0000_8001,    // just above a subnormal tie
        0x007f_ffff,    // largest subnormal: up to the smallest normal
        0x0080_0000,    // smallest normal
        0x807f_c000,    // negative subnormal, rounds up in magnitude
        0x3eaa_aaab,    // 1/3
        0x4049_0fdb,    // pi
    ]
}

/// `n` random f32 bit patterns (every class: normal, subnormal, inf, NaN), with the hand cases
/// at the front.
fn bit_patterns(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    let mut v: Vec<f32> = hand_cases().into_iter().map(f32::from_bits).collect();
    while v.len() < n {
        let bits = r.next_u64() as u32;
        // Every third one a tie or near-tie in its low half.
        let bits = match r.below(3) {
            0 => (bits & 0xffff_0000) | 0x8000,
            1 => (bits & 0xffff_0000) | (0x7ffe + r.below(4) as u32),
            _ => bits,
        };
        v.push(f32::from_bits(bits));
    }
    v
}

/// Checks `got[i]` against both references for `x[i]`.
fn check_rounding(x: &[f32], got: &[u16], what: &str) {
    for (i, (&f, &g)) in x.iter().zip(got).enumerate() {
        let mirror = f32_to_bf16_bits(f);
        assert_eq!(
            g,
            mirror,
            "{what}[{i}]: {:#010x} -> {g:#06x}, host mirror",
            f.to_bits()
        );
        let want = bf16_nearest(f);
        let gv = f32::from_bits((g as u32) << 16);
        if f.is_nan() {
            assert!(
                gv.is_nan() && gv.is_sign_negative() == f.is_sign_negative(),
                "{what}[{i}]"
            );
            // A quiet NaN that keeps the top of the payload.
            assert_eq!(
                g,
                (f.to_bits() >> 16) as u16 | 0x40,
                "{what}[{i}]: NaN payload"
            );
        } else {
            assert_eq!(
                g,
                want,
                "{what}[{i}]: {:#010x} -> {g:#06x}, want {want:#06x}",
                f.to_bits()
            );
        }
    }
}

/// f32_to_bf16 over `x` with `cfg`; the output has a guard tail that must stay untouched.
fn run_f32_to_bf16(e: &Emu, x: &[f32], cfg: &LaunchConfig) -> Vec<u16> {
    let n = x.len() as u64;
    let mut y = vec![U16_POISON; x.len() + GUARD];
    let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
    // SAFETY: x holds n floats and y n + GUARD u16s; the kernel touches indices below n.
    unsafe { e.launch("f32_to_bf16", cfg, &[arg(&xp), arg(&yp), arg(&n)]) }.unwrap();
    assert!(
        y[x.len()..].iter().all(|&v| v == U16_POISON),
        "f32_to_bf16 wrote past n"
    );
    y.truncate(x.len());
    y
}

/// bf16_to_f32 over `x` with `cfg`, with a guard tail as above.
fn run_bf16_to_f32(e: &Emu, x: &[u16], cfg: &LaunchConfig) -> Vec<f32> {
    let n = x.len() as u64;
    let mut y = vec![f32::from_bits(0x7fbe_efed); x.len() + GUARD];
    let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
    // SAFETY: x holds n u16s and y n + GUARD floats; the kernel touches indices below n.
    unsafe { e.launch("bf16_to_f32", cfg, &[arg(&xp), arg(&yp), arg(&n)]) }.unwrap();
    assert!(
        y[x.len()..].iter().all(|v| v.to_bits() == 0x7fbe_efed),
        "bf16_to_f32 wrote past n"
    );
    y.truncate(x.len());
    y
}

fn check_decoding(x: &[u16], got: &[f32]) {
    for (&h, &g) in x.iter().zip(got) {
        let want = bf16_value(h);
        if want.is_nan() {
            // NaN: kept, with its sign and payload, in the top half.
            assert!(
                g.is_nan() && g.to_bits() == (h as u32) << 16,
                "bf16_to_f32({h:#06x}) = {g}"
            );
        } else {
            assert_eq!(
                g.to_bits(),
                want.to_bits(),
                "bf16_to_f32({h:#06x}) = {g}, want {want}"
            );
        }
    }
}

fn convert_checks(e: &Emu) {
    // 1,027 values: five 256-thread blocks, the last one partial.
    let x = bit_patterns(1027, 1);
    let cfg = grid_for(x.len() as u64).unwrap();
    let y = run_f32_to_bf16(e, &x, &cfg);
    check_rounding(&x, &y, "f32_to_bf16");

    // The way back, on the same launch shape: the rounded values, then the hand cases' bits.
    let mut h: Vec<u16> = y.clone();
    h.extend([
        0x0000, 0x8000, 0x0001, 0x8001, 0x007f, 0x0080, 0x7f7f, 0xff7f, 0x7f80, 0xff80,
    ]);
    h.extend([0x7fc0, 0x7f81, 0xffff, 0x3f80, 0x3f81, 0xbfff, 0x4049]);
    let cfg = grid_for(h.len() as u64).unwrap();
    let back = run_bf16_to_f32(e, &h, &cfg);
    check_decoding(&h, &back);
}

/// The launch of `ops::layout`'s tiled kernels over (N, C, HW).
fn tiles(n: usize, c: usize, hw: usize) -> LaunchConfig {
    layout::tiles("test", (n, c, hw))
        .unwrap()
        .expect("a non-empty shape")
}

/// x: (N, C, HW) -> (N, HW, C), by the definition.
fn nhwc_of<T: Copy>(x: &[T], n: usize, c: usize, hw: usize) -> Vec<T> {
    let mut y = Vec::with_capacity(x.len());
    for s in 0..n {
        for p in 0..hw {
            for ch in 0..c {
                y.push(x[(s * c + ch) * hw + p]);
            }
        }
    }
    y
}

/// y: (N, HW, C) f32 -> (N, C, HW), + b[c], then ReLU, by the definition.
fn nchw_of(y: &[f32], b: Option<&[f32]>, relu: bool, n: usize, c: usize, hw: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(y.len());
    for s in 0..n {
        for ch in 0..c {
            for p in 0..hw {
                let mut v = y[(s * hw + p) * c + ch];
                if let Some(b) = b {
                    v += b[ch];
                }
                x.push(if relu { v.max(0.0) } else { v });
            }
        }
    }
    x
}

fn layout_checks(e: &Emu, n: usize, c: usize, hw: usize) {
    let len = n * c * hw;
    let cfg = tiles(n, c, hw);
    let shape = format!("N={n} C={c} HW={hw}");
    let mut x = normal(len, 31 + c as u64, 2.0);
    // Some exact bf16 ties and a negative zero, so the bf16 store rounds them too.
    for (k, i) in (0..len).step_by(7).enumerate() {
        x[i] = f32::from_bits((x[i].to_bits() & 0xffff_0000) | 0x8000 | (k as u32 & 1) << 16);
    }
    x[len / 2] = -0.0;
    let (c32, hw32) = (c as u32, hw as u32);
    let xp = x.as_ptr();

    // NCHW f32 -> NHWC f32: a pure permutation, bit-exact.
    let mut y = vec![f32::NAN; len + GUARD];
    let yp = y.as_mut_ptr();
    // SAFETY: x holds N*C*HW floats and y that plus GUARD; the kernel indexes below N*C*HW.
    unsafe {
        e.launch(
            "nchw_to_nhwc_f32",
            &cfg,
            &[arg(&xp), arg(&yp), arg(&c32), arg(&hw32)],
        )
    }
    .unwrap();
    assert!(
        y[len..].iter().all(|v| v.is_nan()),
        "nchw_to_nhwc_f32 wrote past the end ({shape})"
    );
    y.truncate(len);
    let y_ref = nhwc_of(&x, n, c, hw);
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&y), bits(&y_ref), "nchw_to_nhwc_f32 ({shape})");

    // NCHW f32 -> NHWC bf16: the permutation of the rounded values.
    let mut yb = vec![U16_POISON; len + GUARD];
    let ybp = yb.as_mut_ptr();
    // SAFETY: x holds N*C*HW floats and yb that many u16s plus GUARD.
    unsafe {
        e.launch(
            "nchw_to_nhwc_bf16",
            &cfg,
            &[arg(&xp), arg(&ybp), arg(&c32), arg(&hw32)],
        )
    }
    .unwrap();
    assert!(
        yb[len..].iter().all(|&v| v == U16_POISON),
        "nchw_to_nhwc_bf16 past the end"
    );
    yb.truncate(len);
    let yb_ref: Vec<u16> = y_ref.iter().map(|&v| bf16_nearest(v)).collect();
    assert_eq!(yb, yb_ref, "nchw_to_nhwc_bf16 ({shape})");
    let yb_mirror: Vec<u16> = y_ref.iter().map(|&v| f32_to_bf16_bits(v)).collect();
    assert_eq!(
        yb, yb_mirror,
        "nchw_to_nhwc_bf16 vs the host mirror ({shape})"
    );

    // NHWC -> NCHW f32, each with and without bias and ReLU. The inputs are the NHWC tensors
    // above (their values have both signs); the bias is large enough to flip some signs.
    let bias = normal(c, 41, 1.0);
    let yb_f32: Vec<f32> = yb.iter().map(|&h| bf16_value(h)).collect();
    for (with_bias, relu) in [(false, false), (true, false), (false, true), (true, true)] {
        let b = with_bias.then_some(bias.as_slice());
        let bp = b.map_or(std::ptr::null(), |b| b.as_ptr());
        let r = relu as i32;
        let want = bits(&nchw_of(&y_ref, b, relu, n, c, hw));
        let want_b = bits(&nchw_of(&yb_f32, b, relu, n, c, hw));
        for bf16 in [false, true] {
            let name = if bf16 {
                "nhwc_to_nchw_bf16"
            } else {
                "nhwc_to_nchw_f32"
            };
            let mut out = vec![f32::NAN; len + GUARD];
            let (yp, hp, op) = (y.as_ptr(), yb.as_ptr(), out.as_mut_ptr());
            let input = if bf16 { arg(&hp) } else { arg(&yp) };
            // SAFETY: y / yb hold N*HW*C elements, out that plus GUARD floats, and bp is null
            // or points to C floats; the kernel indexes below N*C*HW and C.
            unsafe {
                e.launch(
                    name,
                    &cfg,
                    &[input, arg(&bp), arg(&op), arg(&c32), arg(&hw32), arg(&r)],
                )
            }
            .unwrap();
            assert!(
                out[len..].iter().all(|v| v.is_nan()),
                "{name} wrote past the end ({shape})"
            );
            out.truncate(len);
            // Same single f32 addition, same comparison with 0: bit-exact, except that
            // f32::max(-0, 0) may give either zero (the kernel keeps -0): zeros compare by value.
            let zero = |v: Vec<u32>| -> Vec<u32> {
                v.into_iter()
                    .map(|b| if b == 0x8000_0000 { 0 } else { b })
                    .collect()
            };
            let want = if bf16 { &want_b } else { &want };
            assert_eq!(
                zero(bits(&out)),
                zero(want.clone()),
                "{name} bias={with_bias} relu={relu} ({shape})"
            );
        }
    }
}

/// The backward's mask-and-sum kernels (`relu_mask_sum_*`, launched by `ops::layout::mask_sums_*`
/// for cuDNN's backward) against index loops: g = dy * (y > 0) (dy without y) in NHWC f32, NHWC
/// bf16 and NCHW (or not written), bit-exact; the partial sums exactly as a sequential f32 sum
/// over each 32-slot tile (empty slots add 0); and `channel_sum` over them, as the convolution
/// composes it, against the f64 per-channel sums.
fn mask_checks(e: &Emu, el: &Emu, n: usize, c: usize, hw: usize) {
    let len = n * c * hw;
    let (cfg, shape) = (tiles(n, c, hw), format!("N={n} C={c} HW={hw}"));
    let dy = normal(len, 7 + c as u64, 1.0);
    let mut y = normal(len, 11 + hw as u64, 1.0);
    // Exact zeros and a NaN in the ReLU output mask too (y > 0 is false for both).
    for i in (0..len).step_by(5) {
        y[i] = 0.0;
    }
    y[len / 3] = f32::NAN;
    let gx = hw.div_ceil(32);
    let np = layout::partial_sums_len((n, c, hw));
    assert_eq!(np, n * c * gx);
    assert_eq!(layout::partial_sums_dims((n, c, hw)), (n, c, gx));
    let (c32, hw32) = (c as u32, hw as u32);
    for with_y in [true, false] {
        let g: Vec<f32> = (0..len)
            // Masked where y is not above zero (NaN included), as the kernel's y > 0 test.
            .map(
                |i| match with_y && y[i].partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                    true => 0.0,
                    false => dy[i],
                },
            )
            .collect();
        // part[(s, ch, t)] = sum of g over the 32 slots of tile t, in order.
        let mut part_ref = vec![0f32; np];
        for s in 0..n {
            for ch in 0..c {
                for t in 0..gx {
                    let mut acc = 0f32;
                    for j in 0..32 {
                        let p = t * 32 + j;
                        acc += if p < hw {
                            g[(s * c + ch) * hw + p]
                        } else {
                            0.0
                        };
                    }
                    part_ref[(s * c + ch) * gx + t] = acc;
                }
            }
        }
        let yp = if with_y { y.as_ptr() } else { std::ptr::null() };
        let dyp = dy.as_ptr();
        let g_nhwc = nhwc_of(&g, n, c, hw);
        let runs: [(&str, usize); 4] = [
            ("relu_mask_sum_nhwc_f32", 4),
            ("relu_mask_sum_nhwc_bf16", 2),
            ("relu_mask_sum_nchw", 4),
            ("relu_mask_sum_nchw", 0),
        ];
        for (name, elem) in runs {
            let what = format!("{name} out {elem} B, y {with_y} ({shape})");
            let mut out = vec![0xa5u8; (len + GUARD) * 4];
            let op = if elem == 0 {
                std::ptr::null_mut()
            } else {
                out.as_mut_ptr()
            };
            let mut part = vec![f32::NAN; np + GUARD];
            let pp = part.as_mut_ptr();
            // SAFETY: dy and y (or null) hold N*C*HW floats, out (or null) N*C*HW elements of
            // `elem` bytes plus GUARD, part the partial sums plus GUARD; the kernel indexes below.
            unsafe {
                e.launch(
                    name,
                    &cfg,
                    &[
                        arg(&dyp),
                        arg(&yp),
                        arg(&op),
                        arg(&pp),
                        arg(&c32),
                        arg(&hw32),
                    ],
                )
            }
            .unwrap();
            assert!(
                part[np..].iter().all(|v| v.is_nan()),
                "{what}: past the end"
            );
            assert_eq!(common::bits(&part[..np]), common::bits(&part_ref), "{what}");
            let want: Vec<u8> = match (name, elem) {
                (_, 0) => vec![0xa5u8; len * 4],
                ("relu_mask_sum_nchw", _) => g.iter().flat_map(|v| v.to_ne_bytes()).collect(),
                (_, 4) => g_nhwc.iter().flat_map(|v| v.to_ne_bytes()).collect(),
                _ => g_nhwc
                    .iter()
                    .flat_map(|&v| bf16_nearest(v).to_ne_bytes())
                    .collect(),
            };
            // Bytes the gradient takes (none written without an output: all left as they were).
            let nb = if elem == 0 { len * 4 } else { len * elem };
            assert!(out[nb..].iter().all(|&b| b == 0xa5), "{what}: past the end");
            assert!(out[..nb] == want[..], "{what}: the gradient");
            // The bias gradient as the convolution takes it: channel_sum over (N, C, tiles).
            let mut db = vec![f32::NAN; c + GUARD];
            let (pp, dbp) = (part.as_ptr(), db.as_mut_ptr());
            let (n64, c64, gx64) = (n as u64, c as u64, gx as u64);
            let one_block_per_channel = LaunchConfig {
                grid_dim: (c as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: part holds N*C*tiles floats, db C plus GUARD.
            unsafe {
                el.launch(
                    "channel_sum",
                    &one_block_per_channel,
                    &[arg(&pp), arg(&dbp), arg(&n64), arg(&c64), arg(&gx64)],
                )
            }
            .unwrap();
            let db_ref: Vec<f64> = (0..c)
                .map(|ch| {
                    (0..n)
                        .flat_map(|s| (0..hw).map(move |p| (s * c + ch) * hw + p))
                        .map(|i| g[i] as f64)
                        .sum()
                })
                .collect();
            let err = common::rel_l2(&db[..c], &db_ref);
            assert!(err < 1e-6, "{what}: bias gradient rel L2 {err:.2e}");
        }
    }
}

#[test]
fn convert_kernels_match_the_references() {
    let Some(e) = emu(KernelFile::Convert) else {
        return;
    };
    convert_checks(&e);
    // C and HW both off multiples of 32 with two tiles each way, N > 1 (16 blocks); one tile
    // that is mostly empty; C over 32 with a single partial HW tile.
    layout_checks(&e, 2, 37, 7 * 7);
    layout_checks(&e, 3, 3, 5);
    layout_checks(&e, 2, 65, 6 * 5);
    let el = emu(KernelFile::Elementwise).expect("the compiler that built convert.cu");
    for (n, c, hw) in [(2, 37, 7 * 7), (3, 3, 5), (2, 65, 6 * 5), (1, 8, 64)] {
        mask_checks(&e, &el, n, c, hw);
    }
    common::assert_all_launched(&e);
}

#[test]
fn every_bf16_pattern_decodes_and_grid_stride_loops_cover_the_rest() {
    let Some(e) = emu(KernelFile::Convert) else {
        return;
    };
    // All 65,536 patterns, on a grid far smaller than n so every thread takes many strides
    // (the grid_for grid would be 256 blocks of OS threads).
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let small = LaunchConfig {
        grid_dim: (3, 1, 1),
        block_dim: (64, 1, 1),
        shared_mem_bytes: 0,
    };
    let back = run_bf16_to_f32(&e, &all, &small);
    check_decoding(&all, &back);

    // And the rounding of many more random patterns the same way.
    let x = bit_patterns(20_011, 2);
    let y = run_f32_to_bf16(&e, &x, &small);
    check_rounding(&x, &y, "f32_to_bf16 (grid-stride)");
}

#[test]
fn the_value_based_references_agree_with_hand_results() {
    // The references themselves on cases worked out by hand.
    let r = |b: u32| bf16_nearest(f32::from_bits(b));
    assert_eq!(r(0x3f80_8000), 0x3f80);
    assert_eq!(r(0x3f81_8000), 0x3f82);
    assert_eq!(r(0x3f80_8001), 0x3f81);
    assert_eq!(r(0x7f7f_ffff), 0x7f80);
    assert_eq!(r(0x7f7f_7fff), 0x7f7f);
    assert_eq!(r(0x8000_0001), 0x8000);
    assert_eq!(r(0x007f_ffff), 0x0080);
    assert_eq!(bf16_value(0x3f80), 1.0);
    assert_eq!(bf16_value(0xc040), -3.0);
    assert_eq!(bf16_value(0x0001), 2f32.powi(-133));
    assert_eq!(bf16_value(0x7f7f), 255.0 * 2f32.powi(120));
}
