//! The element-wise loops run in copies compiled for AVX-512, AVX2 and SSE2 (see
//! `alexnet_tensor::simd`); every copy must produce the same bits, so that results (and resumed
//! runs) do not depend on the CPU. Each layer's forward and backward is run at every level this
//! CPU offers and compared bit for bit with the baseline.

use alexnet_layers::conv::{conv2d_backward, conv2d_forward, ConvShape};
use alexnet_layers::lrn::{lrn_backward, lrn_forward, LrnParams};
use alexnet_layers::pool::{maxpool_backward, maxpool_forward, PoolShape};
use alexnet_layers::relu::{relu_backward, relu_forward};
use alexnet_tensor::rng::Rng;
use alexnet_tensor::simd::{set_level, Level};

fn randn(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.normal()).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Every output of one pass through conv (5x5, groups 2, chunks of several samples) + ReLU +
/// LRN + max-pool and back, as bit patterns.
fn run_layers() -> Vec<Vec<u32>> {
    // 19 x 19 planes: max-pool takes its stride-2 path (9 outputs per row), LRN runs whole
    // 64-pixel blocks and a short one.
    let s = ConvShape {
        n: 6,
        c: 4,
        h: 19,
        w: 19,
        o: 8,
        k: 5,
        stride: 1,
        pad: 2,
        groups: 2,
    };
    let (ho, wo) = (s.ho(), s.wo());
    let x = randn(s.n * s.c * s.h * s.w, 1);
    let w = randn(s.o * (s.c / s.groups) * s.k * s.k, 2);
    let b = randn(s.o, 3);
    let mut y = vec![0.0; s.n * s.o * ho * wo];
    conv2d_forward(&x, &w, &b, &mut y, &s).unwrap();
    let mut r = vec![0.0; y.len()];
    relu_forward(&y, &mut r).unwrap();
    let p = LrnParams {
        size: 5,
        alpha: 1e-2,
        beta: 0.75,
        k: 2.0,
    };
    let (mut l, mut scale) = (vec![0.0; r.len()], vec![0.0; r.len()]);
    lrn_forward(&r, &mut l, &mut scale, s.n, s.o, ho * wo, &p).unwrap();
    let ps = PoolShape {
        planes: s.n * s.o,
        h: ho,
        w: wo,
        k: 3,
        stride: 2,
    };
    let np = ps.planes * ps.ho() * ps.wo();
    let (mut m, mut arg) = (vec![0.0; np], vec![0u32; np]);
    maxpool_forward(&l, &mut m, &mut arg, &ps).unwrap();

    let dm = randn(np, 4);
    let mut dl = vec![0.0; l.len()];
    maxpool_backward(&dm, &arg, &mut dl, &ps).unwrap();
    let mut dr = vec![0.0; r.len()];
    lrn_backward(&r, &scale, &dl, &mut dr, s.n, s.o, ho * wo, &p).unwrap();
    let mut dy = vec![0.0; y.len()];
    relu_backward(&r, &dr, &mut dy).unwrap();
    let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; s.o]);
    conv2d_backward(&x, &w, &dy, &mut dx, &mut dw, &mut db, &s).unwrap();
    let args: Vec<f32> = arg.iter().map(|&a| a as f32).collect();
    [y, r, l, scale, m, args, dl, dr, dy, dx, dw, db]
        .iter()
        .map(|v| bits(v))
        .collect()
}

#[test]
fn every_vector_level_gives_the_same_bits() {
    let names = [
        "conv y",
        "relu",
        "lrn y",
        "lrn scale",
        "pool y",
        "pool arg",
        "pool dx",
        "lrn dx",
        "relu dx",
        "conv dx",
        "conv dw",
        "conv db",
    ];
    assert_eq!(set_level(Level::Baseline), Level::Baseline);
    let base = run_layers();
    // Not all zeros: the comparison means something.
    assert!(base[9].iter().any(|&b| b != 0) && base[10].iter().any(|&b| b != 0));
    for cap in [Level::V3, Level::V4] {
        let got = set_level(cap);
        let out = run_layers();
        for ((name, a), b) in names.iter().zip(&base).zip(&out) {
            assert!(a == b, "{name}: level {got:?} differs from the baseline");
        }
    }
}
