//! Times the non-GEMM layers on the small preset's first-block shapes (batch 128):
//! `cargo run --release -p alexnet-layers --example op_speed`
use alexnet_layers::lrn::{lrn_backward, lrn_forward, LrnParams};
use alexnet_layers::pool::{maxpool_backward, maxpool_forward, PoolShape};
use std::time::Instant;

fn time(label: &str, reps: usize, mut f: impl FnMut()) {
    f();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    println!(
        "{label:<28} {:8.2} ms",
        t.elapsed().as_secs_f64() * 1e3 / reps as f64
    );
}

fn main() {
    let (n, c, h) = (128usize, 24usize, 56usize);
    // Post-ReLU-like input: pseudo-random, about half exact zeros (ties in max-pool windows).
    let x: Vec<f32> = (0..n * c * h * h)
        .map(|i| {
            let h = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            ((h % 1000) as f32 / 10.0 - 50.0).max(0.0)
        })
        .collect();
    let s = PoolShape {
        planes: n * c,
        h,
        w: h,
        k: 3,
        stride: 2,
    };
    let m = n * c * s.ho() * s.wo();
    let (mut y, mut a, mut dx) = (vec![0.0; m], vec![0u32; m], vec![0.0; x.len()]);
    time("maxpool forward", 10, || {
        maxpool_forward(&x, &mut y, &mut a, &s).unwrap()
    });
    let dy = y.clone();
    time("maxpool backward", 10, || {
        maxpool_backward(&dy, &a, &mut dx, &s).unwrap()
    });
    let p = LrnParams {
        size: 5,
        alpha: 2e-5,
        beta: 0.75,
        k: 2.0,
    };
    let (mut ly, mut sc) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    time("lrn forward", 10, || {
        lrn_forward(&x, &mut ly, &mut sc, n, c, h * h, &p).unwrap()
    });
    let dy = x.clone();
    time("lrn backward", 10, || {
        lrn_backward(&x, &ly, &sc, &dy, &mut dx, n, c, h * h, &p).unwrap()
    });
}
