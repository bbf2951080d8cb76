//! CPU-side tests: no GPU (and no CUDA library) needed.

use alexnet_cuda::gpu::{grid_for, BLOCK, MAX_GRID};
use alexnet_cuda::hash::{keeps, layer_seed, mix_hash, uniform};
use alexnet_cuda::kernels::{kernel_names, KernelFile};
use alexnet_cuda::ops::augment::{AugmentParams, AugmentSample};
use alexnet_cuda::ops::conv::{ConvGeom, ConvShape};
use alexnet_cuda::ops::convert::f32_to_bf16_bits;
use alexnet_cuda::ops::elementwise::dropout_threshold;
use alexnet_cuda::ops::gemm::{gemm_dims, MatDesc};
use alexnet_cuda::ops::lrn::{LrnCols, LrnParams, PoolGeom, PoolTile, LRN_POOL_THREADS};
use alexnet_cuda::ops::sgd::SgdParams;
use alexnet_cuda::ops::winograd::{WinoGeom, WinoMats};
use alexnet_cuda::{device_count, CudaError, Gpu, Precision};
use std::mem::{align_of, size_of};

#[test]
fn repr_c_structs_match_the_cuda_structs() {
    // Sizes of the C structs in kernels/*.cu (all-u32/f32 fields, SgdParams leads with a u64).
    assert_eq!(size_of::<ConvGeom>(), 36);
    assert_eq!(size_of::<LrnParams>(), 48);
    assert_eq!(size_of::<PoolGeom>(), 56);
    assert_eq!(size_of::<LrnCols>(), 16);
    assert_eq!(size_of::<PoolTile>(), 16);
    assert_eq!((size_of::<SgdParams>(), align_of::<SgdParams>()), (24, 8));
    assert_eq!(size_of::<AugmentParams>(), 32);
    assert_eq!(size_of::<AugmentSample>(), 36);
    assert_eq!(size_of::<WinoGeom>(), 64);
    assert_eq!(size_of::<WinoMats>(), (48 + 40 + 64) * 4);
    // Each C struct declares the same field count as its Rust mirror.
    let src = KernelFile::LrnPool.source();
    assert!(src.contains("struct LrnParams") && src.contains("struct PoolGeom"));
}

#[test]
fn kernel_inventory() {
    let names: Vec<&str> = KernelFile::ALL
        .iter()
        .flat_map(|f| f.kernel_names())
        .collect();
    assert_eq!(names.len(), 46, "{names:?}");
    for n in [
        "im2col",
        "col2im",
        "s2d_input",
        "s2d_input_grad",
        "s2d_weight",
        "s2d_weight_grad",
        "lrn_bwd_prep",
        "lrn_bwd_finish",
        "lrn_fwd_cols",
        "lrn_bwd_cols",
        "lrn_pool_bwd_cols",
        "lrn_pool_fwd_cols",
        "channel_sum",
        "relu_mask_sum_nchw",
        "relu_mask_sum_nhwc_bf16",
        "dropout_apply_at",
        "softmax_ce",
        "sgd_step",
        "augment_u8",
        "f32_to_bf16",
        "wino_filter",
        "wino_filter_grad",
        "wino_input",
        "wino_output",
        "wino_output_grad",
        "wino_input_grad_tiles",
        "wino_input_grad",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    assert_eq!(
        kernel_names("extern \"C\" __global__ void k(int* a) {}"),
        vec!["k"]
    );
}

#[test]
fn launch_config_arithmetic() {
    assert!(grid_for(0).is_none());
    let c = grid_for(1).unwrap();
    assert_eq!((c.grid_dim.0, c.block_dim.0), (1, BLOCK));
    assert_eq!(grid_for(BLOCK as u64 + 1).unwrap().grid_dim.0, 2);
    // Huge sizes are capped; the kernels are grid-stride loops.
    assert_eq!(grid_for(u64::MAX / 2).unwrap().grid_dim.0 as u64, MAX_GRID);
}

#[test]
fn dropout_hash_statistics() {
    let (n, p) = (200_000u64, 0.5);
    let seed = layer_seed(42, 3);
    let kept = (0..n).filter(|&i| keeps(seed, i, p)).count() as f64 / n as f64;
    // Standard error sqrt(p(1-p)/n) ~ 0.0011.
    assert!((kept - 0.5).abs() < 0.006, "keep rate {kept}");
    let mean = (0..n).map(|i| uniform(7, i)).sum::<f64>() / n as f64;
    assert!((mean - 0.5).abs() < 0.003, "uniform mean {mean}");
    // Neighbouring indices are uncorrelated: P(both kept) ~ 1/4.
    let both = (0..n)
        .filter(|&i| keeps(seed, i, p) && keeps(seed, i + 1, p))
        .count() as f64;
    assert!((both / n as f64 - 0.25).abs() < 0.006);
    // The integer threshold decides exactly like `uniform >= p`.
    for &p in &[0.0, 0.1, 0.5, 0.9, 1.0 / 3.0] {
        for i in 0..2000 {
            assert_eq!(keeps(9, i, p), uniform(9, i) >= p);
        }
    }
    assert_eq!(dropout_threshold(0.0), 0);
    assert_ne!(layer_seed(1, 0), layer_seed(1, 1));
    assert_ne!(mix_hash(1, 0), mix_hash(2, 0));
}

#[test]
fn gemm_and_conv_shapes() {
    let a = MatDesc::new(4, 3);
    assert_eq!(a.extent(), 12);
    assert_eq!(a.t().op_shape(), (3, 4));
    assert_eq!(
        gemm_dims(a, MatDesc::new(3, 5), MatDesc::new(4, 5)).unwrap(),
        (4, 5, 3)
    );
    assert!(gemm_dims(a, MatDesc::new(4, 5), MatDesc::new(4, 5)).is_err());
    let strided = MatDesc {
        rows: 2,
        cols: 3,
        ld: 10,
        trans: false,
    };
    assert_eq!(strided.extent(), 13);
    let s = ConvShape {
        n: 8,
        c: 3,
        h: 224,
        w: 224,
        o: 96,
        k: 11,
        stride: 4,
        pad: 2,
        groups: 1,
    };
    assert_eq!((s.ho(), s.wo()), (55, 55));
    assert_eq!(s.kdim(), 363);
    let per = 363 * 55 * 55;
    assert_eq!(s.chunk(per * 3, usize::MAX), 3);
    assert_eq!(s.chunk(1, usize::MAX), 1);
    assert_eq!(s.chunk(usize::MAX, usize::MAX), 8);
    let bad = ConvShape { groups: 2, ..s };
    assert!(matches!(bad.validate(), Err(CudaError::Invalid { .. })));
}

#[test]
fn param_structs_validate() {
    let g = PoolGeom::new(4, 55, 55, 3, 2).unwrap();
    assert_eq!((g.ho, g.wo, g.out_len()), (27, 27, 4 * 27 * 27));
    assert!(PoolGeom::new(1, 2, 2, 3, 2).is_err());
    assert_eq!(
        LrnParams::new(1, 7, 4, 5, 1e-4, 0.75, 2.0, false)
            .unwrap()
            .half,
        2
    );
    assert!(LrnParams::new(1, 7, 4, 0, 1e-4, 0.75, 2.0, false).is_err());
    let p = AugmentParams::square(1, 256, 224, 256).unwrap();
    let ok = AugmentSample {
        ox: 32,
        oy: 0,
        mox: 32,
        moy: 0,
        flip: 1,
        delta: [0.0; 3],
        src: 0,
    };
    assert!(p.validate(&[ok]).is_ok());
    let out = AugmentSample { ox: 33, ..ok };
    assert!(p.validate(&[out]).is_err());
    assert!(p.validate(&[ok, ok]).is_err());
    // Two crops of one image (evaluation views) name it; an image past the batch is an error.
    let two = AugmentParams { n: 2, ..p };
    assert!(two.validate(&[ok, AugmentSample { flip: 0, ..ok }]).is_ok());
    let past = AugmentSample { src: 1, ..ok };
    let e = two.validate(&[ok, past]).unwrap_err().to_string();
    assert!(e.contains("sample 1: image 1 of 1"), "{e}");
}

#[test]
fn bf16_rounding_mirror() {
    assert_eq!(f32_to_bf16_bits(1.0), 0x3f80);
    // 1 + 2^-8 is exactly halfway between two bf16 values: ties to even (down).
    assert_eq!(f32_to_bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
    assert_eq!(f32_to_bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
    assert_eq!(f32_to_bf16_bits(f32::INFINITY), 0x7f80);
    assert!(f32_to_bf16_bits(f32::NAN) & 0x7f != 0);
}

#[test]
fn timed_picks_keep_their_json_form() {
    use alexnet_cuda::ops::conv_cudnn::TimedPick;
    // The form run folders keep (cudnn_algos.json): field names and values are a file format.
    let p = TimedPick {
        shape: [128, 48, 57, 57, 96, 3, 1, 0, 1],
        precision: Precision::Tf32.name().into(),
        nhwc: false,
        algos: [1, 0, 3],
    };
    let text = serde_json::to_string(&p).unwrap();
    assert_eq!(
        text,
        r#"{"shape":[128,48,57,57,96,3,1,0,1],"precision":"tf32","nhwc":false,"algos":[1,0,3]}"#
    );
    assert_eq!(serde_json::from_str::<TimedPick>(&text).unwrap(), p);
    for q in [Precision::F32, Precision::Tf32, Precision::Bf16] {
        assert_eq!(Precision::parse(q.name()).unwrap(), q);
    }
}

#[test]
fn precision_parsing() {
    assert_eq!(Precision::parse("TF32").unwrap(), Precision::Tf32);
    assert_eq!(Precision::parse("bf16").unwrap(), Precision::Bf16);
    assert!(Precision::parse("fp8").is_err());
    assert!(Precision::F32.tolerance() <= 1e-4);
}

#[test]
fn convolution_implementation_per_precision_and_shape() {
    use alexnet_cuda::ConvImpl::{Auto, Cudnn, Im2col, Timed, Winograd};
    use Precision::{Bf16, Tf32, F32};
    // (implementation, precision, conv in space-to-depth form) -> cuDNN's precision or im2col.
    for (ci, p, s2d, want) in [
        (Auto, Tf32, false, Some(Tf32)),
        (Auto, Tf32, true, Some(Tf32)),
        (Auto, F32, false, None),
        (Auto, F32, true, None),
        (Auto, Bf16, false, None),
        (Auto, Bf16, true, Some(Tf32)),
        (Cudnn, F32, true, Some(F32)),
        (Cudnn, Tf32, false, Some(Tf32)),
        (Cudnn, Bf16, true, None),
        (Im2col, Tf32, true, None),
        (Winograd, F32, false, None),
        (Winograd, Tf32, true, None),
        (Timed, Bf16, true, None),
    ] {
        assert_eq!(
            ci.cudnn_precision(p, s2d, false),
            want,
            "{ci:?} {p:?} s2d {s2d}"
        );
    }
    // In NHWC cuDNN takes bf16 operands: bf16 runs there wherever cuDNN is allowed.
    assert_eq!(Auto.cudnn_precision(Bf16, false, true), Some(Bf16));
    assert_eq!(Cudnn.cudnn_precision(Bf16, true, true), Some(Bf16));
    assert_eq!(Im2col.cudnn_precision(Bf16, true, true), None);
    assert_eq!(Winograd.cudnn_precision(Bf16, true, true), None);
    // Names, parsing and the codes the Gpu stores round-trip; only auto and cudnn need cuDNN.
    for ci in alexnet_cuda::ConvImpl::ALL {
        assert_eq!(alexnet_cuda::ConvImpl::parse(ci.name()).unwrap(), ci);
        assert_eq!(alexnet_cuda::ConvImpl::from_code(ci as u8), ci);
        assert_eq!(ci.uses_cudnn(), matches!(ci, Auto | Cudnn), "{ci:?}");
    }
    let e = alexnet_cuda::ConvImpl::parse("fft")
        .unwrap_err()
        .to_string();
    assert!(e.contains("auto, cudnn, im2col, winograd or timed"), "{e}");
    // Timed picks per shape; it needs no libcudnn (it leaves cuDNN out without it).
    assert_eq!(Timed.cudnn_precision(Tf32, false, false), None);
    assert_eq!(Timed.may_use_cudnn(), alexnet_cuda::cudnn_available());
    assert!(Auto.may_use_cudnn() && !Im2col.may_use_cudnn());
    assert_eq!(Auto.cudnn_precision(F32, true, true), None);
    assert_eq!(Auto.cudnn_precision(Tf32, false, true), Some(Tf32));
    // The layout: auto is NHWC for bf16 only.
    use alexnet_cuda::ConvLayout;
    for (l, want) in [
        (ConvLayout::Auto, [false, false, true]),
        (ConvLayout::Nchw, [false, false, false]),
        (ConvLayout::Nhwc, [true, true, true]),
    ] {
        assert_eq!([F32, Tf32, Bf16].map(|p| l.nhwc_for(p)), want, "{l:?}");
        assert_eq!(ConvLayout::parse(l.name()).unwrap(), l);
    }
    assert!(ConvLayout::parse("chwn").is_err());
}

#[test]
fn no_device_is_an_error_not_a_panic() {
    let n = device_count();
    if n == 0 {
        let e = Gpu::new(0).unwrap_err();
        assert!(matches!(e, CudaError::NoDevice(_)), "{e}");
    } else {
        assert!(Gpu::new(n).is_err());
    }
}

/// The kernels' multiply-high division (`FastDiv`, mirrored on the host) is exact for every
/// dividend below 2^31: all dividends up to 2^17 and the top of the range for every divisor up
/// to 1024, plus large and awkward divisors against a spread of dividends.
#[test]
fn fast_division_is_exact_below_2_pow_31() {
    use alexnet_cuda::ops::FastDiv;
    let top = (1u32 << 31) - 1;
    let mut divisors: Vec<u32> = (1..=1024).collect();
    divisors.extend([
        3025,
        729,
        50_176,
        65_535,
        65_536,
        1 << 20,
        (1 << 30) + 1,
        top,
    ]);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % (1u64 << 31)) as u32
    };
    for &d in &divisors {
        let f = FastDiv::new("test", d).unwrap();
        let dense: Box<dyn Iterator<Item = u32>> = if d <= 1024 {
            Box::new((0..1u32 << 17).chain(top - (1 << 12)..=top))
        } else {
            Box::new((0..4096).chain(top - 4096..=top))
        };
        for n in dense.chain((0..4096).map(|_| rand())) {
            assert_eq!(f.div(n), n / d, "{n} / {d} (m {}, shift {})", f.m, f.shift);
        }
    }
    assert!(FastDiv::new("test", 0).is_err());
}

#[test]
fn lrn_column_chunks() {
    let q = LrnParams::new(2, 70, 9, 5, 1e-4, 0.75, 2.0, false).unwrap();
    let g = LrnCols::new(&q, 32).unwrap();
    // 70 channels in chunks of 32: 32 + 32 + 6.
    assert_eq!((g.chunk, g.chunks, g.threads(&q)), (32, 3, 2 * 3 * 9));
    assert_eq!(g.div_chunks.div(7), 2);
    // A chunk of 0 is taken as 1; one chunk when it covers every channel.
    assert_eq!(LrnCols::new(&q, 0).unwrap().chunks, 70);
    assert_eq!(LrnCols::new(&q, 100).unwrap().chunks, 1);
    // chunks <= C, so the threads never outnumber the elements (32-bit indices hold).
    let big = LrnParams::new(1 << 10, 64, 1 << 14, 5, 1e-4, 0.75, 2.0, false).unwrap();
    assert_eq!(LrnCols::new(&big, 1).unwrap().threads(&big), 1 << 30);
}

#[test]
fn lrn_pool_tiles() {
    // The paper's pools at 256 threads: pool1 (55 -> 27) in tiles of 3 x 15 outputs (7 x 31
    // input pixels), pool2 (27 -> 13) in tiles of 4 x 13 (9 x 27).
    let g1 = PoolGeom::new(96, 55, 55, 3, 2).unwrap();
    let t1 = PoolTile::new(&g1, LRN_POOL_THREADS).unwrap();
    assert_eq!(
        (t1.to_y, t1.to_x, t1.pixels(&g1), t1.tiles(&g1)),
        (3, 15, 217, 9 * 2)
    );
    let g2 = PoolGeom::new(256, 27, 27, 3, 2).unwrap();
    let t2 = PoolTile::new(&g2, LRN_POOL_THREADS).unwrap();
    assert_eq!(
        (t2.to_y, t2.to_x, t2.pixels(&g2), t2.tiles(&g2)),
        (4, 13, 243, 4)
    );
    // Rows narrow until k of them fit the block; a window larger than the block has no tile.
    let g3 = PoolGeom::new(1, 40, 40, 5, 1).unwrap();
    let t3 = PoolTile::new(&g3, 64).unwrap();
    assert!(
        t3.pixels(&g3) <= 64 && t3.to_x >= 1 && t3.to_y >= 1,
        "{t3:?}"
    );
    assert!(PoolTile::new(&PoolGeom::new(1, 20, 20, 11, 4).unwrap(), 64).is_none());
    assert!(PoolTile::new(&g1, 2048).is_none());
}
