//! Criterion benchmarks of the CPU layers on the small preset's shapes at batch 128 (the
//! default flow's training step), plus the paper net's conv2 and conv3 at batch 32; the shapes
//! Winograd takes run twice, by Winograd and, as `NAME_im2col_*`, by im2col in the same run:
//! `cargo bench -p alexnet-layers --bench ops [-- NAME]`. Inputs are pseudo-random and
//! post-ReLU-like (about half exact zeros), since the max-pool and ReLU loops are
//! data-dependent. Whole-network throughput is `cargo xtask bench --device cpu`.
use alexnet_layers::conv::{conv2d_backward_opt, conv2d_forward_act, ConvShape};
use alexnet_layers::lrn::{lrn_backward, lrn_forward, LrnParams};
use alexnet_layers::pool::{maxpool_backward, maxpool_forward, PoolShape};
use alexnet_layers::relu::{relu_backward, relu_forward};
use alexnet_layers::winograd;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;

/// `len` pseudo-random values, about half of them exactly 0 and the rest in (0, 50).
fn post_relu(len: usize, seed: u64) -> Vec<f32> {
    (0..len as u64)
        .map(|i| {
            let h = (i + 1 + (seed << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            ((h % 1000) as f32 / 10.0 - 50.0).max(0.0)
        })
        .collect()
}

/// conv1's output block: (128, 24, 56, 56).
const N: usize = 128;
const C: usize = 24;
const H: usize = 56;

fn pool_lrn_relu(cr: &mut Criterion) {
    let len = N * C * H * H;
    let x = post_relu(len, 1);
    let mut g = cr.benchmark_group("block1");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(len as u64));

    let s = PoolShape {
        planes: N * C,
        h: H,
        w: H,
        k: 3,
        stride: 2,
    };
    let m = N * C * s.ho() * s.wo();
    let (mut y, mut arg, mut dx) = (vec![0.0; m], vec![0u32; m], vec![0.0; len]);
    g.bench_function("maxpool_forward", |b| {
        b.iter(|| maxpool_forward(black_box(&x), &mut y, &mut arg, &s).unwrap())
    });
    let dy = post_relu(m, 2);
    g.bench_function("maxpool_backward", |b| {
        b.iter(|| maxpool_backward(black_box(&dy), &arg, &mut dx, &s).unwrap())
    });

    let p = LrnParams {
        size: 5,
        alpha: 2e-5,
        beta: 0.75,
        k: 2.0,
    };
    let (mut ly, mut scale) = (vec![0.0; len], vec![0.0; len]);
    g.bench_function("lrn_forward", |b| {
        b.iter(|| lrn_forward(black_box(&x), &mut ly, &mut scale, N, C, H * H, &p).unwrap())
    });
    let dy = post_relu(len, 3);
    g.bench_function("lrn_backward", |b| {
        b.iter(|| lrn_backward(black_box(&x), &scale, &dy, &mut dx, N, C, H * H, &p).unwrap())
    });

    let mut ry = vec![0.0; len];
    g.bench_function("relu_forward", |b| {
        b.iter(|| relu_forward(black_box(&x), &mut ry).unwrap())
    });
    g.bench_function("relu_backward", |b| {
        b.iter(|| relu_backward(black_box(&ry), &dy, &mut dx).unwrap())
    });
    g.finish();
}

fn convs(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("conv");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    // The small preset's conv2 (5x5, groups 2) and conv3 (3x3) at batch 128.
    let shapes = [
        (
            "conv2",
            ConvShape {
                n: N,
                c: 24,
                h: 27,
                w: 27,
                o: 64,
                k: 5,
                stride: 1,
                pad: 2,
                groups: 2,
            },
        ),
        (
            "conv3",
            ConvShape {
                n: N,
                c: 64,
                h: 13,
                w: 13,
                o: 96,
                k: 3,
                stride: 1,
                pad: 1,
                groups: 1,
            },
        ),
        // The paper's conv2 and conv3 at batch 32 (the paper preset's CPU benchmark batch).
        (
            "paper_conv2",
            ConvShape {
                n: 32,
                c: 96,
                h: 27,
                w: 27,
                o: 256,
                k: 5,
                stride: 1,
                pad: 2,
                groups: 2,
            },
        ),
        (
            "paper_conv3",
            ConvShape {
                n: 32,
                c: 256,
                h: 13,
                w: 13,
                o: 384,
                k: 3,
                stride: 1,
                pad: 1,
                groups: 1,
            },
        ),
    ];
    for (name, s) in shapes {
        let x = post_relu(s.n * s.c * s.h * s.w, 4);
        let wlen = s.o * (s.c / s.groups) * s.k * s.k;
        let w: Vec<f32> = post_relu(wlen, 5).iter().map(|v| v * 1e-3 - 0.01).collect();
        let bias = vec![0.1; s.o];
        let ylen = s.n * s.o * s.ho() * s.wo();
        let mut y = vec![0.0; ylen];
        // Multiply-adds of the forward pass; the backward does twice as many.
        let macs = (ylen * (s.c / s.groups) * s.k * s.k) as u64;
        let dy = post_relu(ylen, 6);
        let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; wlen], vec![0.0; s.o]);
        // Shapes Winograd takes run both ways: Winograd (the default) and im2col (`_im2col`),
        // the baseline in the same run. The scratch is kept between calls, as the model does.
        let wino =
            matches!(s.k, 3 | 5) && s.stride == 1 && s.c / s.groups >= winograd::MIN_CHANNELS;
        let algos: &[(&str, bool)] = if wino {
            &[("", true), ("_im2col", false)]
        } else {
            &[("", true)]
        };
        for &(suffix, wino) in algos {
            let mut scratch = Vec::new();
            g.throughput(Throughput::Elements(macs));
            g.bench_function(format!("{name}{suffix}_forward"), |b| {
                winograd::set_enabled(wino);
                b.iter(|| {
                    conv2d_forward_act(black_box(&x), &w, &bias, &mut y, &s, false, &mut scratch)
                        .unwrap()
                })
            });
            g.throughput(Throughput::Elements(2 * macs));
            g.bench_function(format!("{name}{suffix}_backward"), |b| {
                winograd::set_enabled(wino);
                b.iter(|| {
                    let dxo = Some(&mut dx[..]);
                    conv2d_backward_opt(
                        black_box(&x),
                        &w,
                        &dy,
                        dxo,
                        &mut dw,
                        &mut db,
                        &s,
                        &mut scratch,
                        false,
                    )
                    .unwrap()
                })
            });
        }
        winograd::set_enabled(true);
    }
    g.finish();
}

criterion_group!(benches, pool_lrn_relu, convs);
criterion_main!(benches);
