//! kernels/im2col.cu on the CPU emulator (no GPU): im2col against its definition (exact) and,
//! through an f64 GEMM, against the layers crate's convolution (forward, dx, dw); col2im
//! against a scatter-add of its definition and as the adjoint of im2col; the space-to-depth
//! kernels against their definitions (exact), as adjoints of each other, and by the convolution
//! they exist for: the stride-1 convolution of s2d_input(x) with s2d_weight(w) equals the
//! strided convolution of x with w, and s2d_input_grad / s2d_weight_grad of the stride-1
//! gradients equal the strided convolution's gradients.

#[path = "emu/common.rs"]
mod common;

use alexnet_cuda::emu::Emu;
use alexnet_cuda::kernels::KernelFile;
use alexnet_cuda::ops::conv::ConvShape;
use alexnet_cuda::ops::space_to_depth::s2d_shape;
use alexnet_layers::conv::{conv2d_backward, conv2d_forward};
use common::{cpu_shape, emu, extents, f64s, geom, launch_cfg, normal, rel_l2, run, weight_geom};
use cudarc::driver::LaunchConfig;

#[allow(clippy::too_many_arguments)]
fn shape(
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
    stride: usize,
    pad: usize,
    groups: usize,
) -> ConvShape {
    let s = ConvShape {
        n,
        c,
        h,
        w,
        o,
        k,
        stride,
        pad,
        groups,
    };
    s.validate().unwrap();
    s
}

/// The index of x[n, c, hp - P, wp - P] for padded coordinates (hp, wp); None in the padding
/// and beyond.
fn xpad(s: &ConvShape, n: usize, c: usize, hp: usize, wp: usize) -> Option<usize> {
    let (h, w) = (hp.checked_sub(s.pad)?, wp.checked_sub(s.pad)?);
    (h < s.h && w < s.w).then(|| ((n * s.c + c) * s.h + h) * s.w + w)
}

/// Calls `f(row, column, input index)` for every (row, column) of the column matrix of `nb`
/// samples: row (c*K + u)*K + v, column s*HO*WO + i*WO + j, reading x[s, c, i*S + u - P,
/// j*S + v - P] of the chunk (None in the padding).
fn for_each_col(s: &ConvShape, nb: usize, mut f: impl FnMut(usize, usize, Option<usize>)) {
    let (ho, wo, k, st) = (s.ho(), s.wo(), s.k, s.stride);
    for c in 0..s.c {
        for u in 0..k {
            for v in 0..k {
                for sm in 0..nb {
                    for i in 0..ho {
                        for j in 0..wo {
                            let src = xpad(s, sm, c, i * st + u, j * st + v);
                            f((c * k + u) * k + v, (sm * ho + i) * wo + j, src);
                        }
                    }
                }
            }
        }
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// sum |a_i b_i|: the scale of the rounding error of a dot product.
fn dot_abs(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x * y).abs()).sum()
}

fn rel64(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

/// The layers crate's convolution in f64: (y, dx, dw) for x, w and dy.
fn reference(s: &ConvShape, x: &[f64], w: &[f64], dy: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let c = cpu_shape(s);
    let mut y = vec![0.0; s.n * s.o * s.ho() * s.wo()];
    conv2d_forward(x, w, &vec![0.0; s.o], &mut y, &c).unwrap();
    let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; s.o]);
    conv2d_backward(x, w, dy, &mut dx, &mut dw, &mut db, &c).unwrap();
    (y, dx, dw)
}

/// im2col and col2im on `s`, in chunks of `chunk` samples as `conv_forward` / `conv_backward`
/// run them (the kernels see the chunk's first sample as sample 0).
fn im2col_checks(e: &Emu, s: &ConvShape, chunk: usize) {
    let (hw, chw, ohw) = (s.ho() * s.wo(), s.c * s.h * s.w, s.o * s.ho() * s.wo());
    let (kd, og) = (s.kdim(), s.o / s.groups);
    let x = normal(s.n * chw, 31, 1.0);
    let w = normal(s.o * kd, 32, 0.2);
    let dy = normal(s.n * ohw, 33, 1.0);
    let (y_ref, dx_ref, dw_ref) = reference(s, &f64s(&x), &f64s(&w), &f64s(&dy));
    let (mut y, mut dx, mut dw) = (
        vec![0.0; y_ref.len()],
        vec![0.0f32; x.len()],
        vec![0.0; w.len()],
    );
    let mut n0 = 0;
    while n0 < s.n {
        let nb = chunk.min(s.n - n0);
        let (g, p) = (geom(s, nb), nb * hw);
        let xc = &x[n0 * chw..(n0 + nb) * chw];

        // im2col: a copy, so exact.
        let col = run(e, "im2col", xc, g);
        let mut col_ref = vec![f32::NAN; col.len()];
        for_each_col(s, nb, |r, q, src| {
            col_ref[r * p + q] = src.map_or(0.0, |i| xc[i])
        });
        assert_eq!(col, col_ref, "im2col {s:?} chunk {n0}+{nb}");

        // The convolution from the columns (f64 GEMMs per group), and the gradients:
        // y = W_g col_g, dw_g += dy_g col_g^T, dcol_g = W_g^T dy_g.
        let mut dcol = vec![0.0f64; col.len()];
        for o in 0..s.o {
            let gr = o / og;
            for q in 0..p {
                let (sm, pix) = (q / hw, q % hw);
                let yi = ((n0 + sm) * s.o + o) * hw + pix;
                let mut acc = 0.0;
                for r in 0..kd {
                    let cv = col[(gr * kd + r) * p + q] as f64;
                    acc += w[o * kd + r] as f64 * cv;
                    dw[o * kd + r] += dy[yi] as f64 * cv;
                    dcol[(gr * kd + r) * p + q] += w[o * kd + r] as f64 * dy[yi] as f64;
                }
                y[yi] = acc;
            }
        }

        // col2im of the convolution's column gradient (rounded to f32, as the GPU's GEMM
        // writes it) is the convolution's input gradient.
        let dcol32: Vec<f32> = dcol.iter().map(|&v| v as f32).collect();
        let dxc = run(e, "col2im", &dcol32, g);
        dx[n0 * chw..(n0 + nb) * chw].copy_from_slice(&dxc);

        // col2im against the scatter-add of the definition (f64), for columns of any values.
        let r = normal(col.len(), 34 + n0 as u64, 1.0);
        let back = run(e, "col2im", &r, g);
        let mut back_ref = vec![0.0f64; xc.len()];
        for_each_col(s, nb, |row, q, src| {
            if let Some(i) = src {
                back_ref[i] += r[row * p + q] as f64;
            }
        });
        // f32 sums of at most ceil(K/S)^2 terms per pixel against f64: a few ulps.
        let err = rel_l2(&back, &back_ref);
        assert!(err < 1e-6, "col2im {s:?}: rel L2 {err:e}");
        // ... and as the adjoint of im2col: <im2col(x), r> = <x, col2im(r)>.
        let (cf, rf, xf, bf) = (f64s(&col), f64s(&r), f64s(xc), f64s(&back));
        let (l, rr) = (dot(&cf, &rf), dot(&xf, &bf));
        // The only rounding is col2im's f32 sums: relative 1e-6 of the terms' magnitude.
        assert!(
            (l - rr).abs() < 1e-6 * dot_abs(&xf, &bf),
            "col2im adjoint {s:?}: {l} vs {rr}"
        );
        n0 += nb;
    }
    // Products of f32 values are exact in f64: only the order of the f64 sums differs.
    let err = rel64(&y, &y_ref);
    assert!(err < 1e-12, "conv via im2col {s:?}: rel L2 {err:e}");
    let err = rel64(&dw, &dw_ref);
    assert!(err < 1e-12, "conv dw via im2col {s:?}: rel L2 {err:e}");
    // dcol rounded to f32 (relative 2^-24 per element), then summed in f32.
    let err = rel_l2(&dx, &dx_ref);
    assert!(err < 1e-6, "conv dx via col2im {s:?}: rel L2 {err:e}");
}

/// The space-to-depth kernels on `s` (see the module docs).
fn s2d_checks(e: &Emu, s: &ConvShape) {
    let t = s2d_shape(s).expect("space-to-depth applies");
    assert_eq!((t.ho(), t.wo()), (s.ho(), s.wo()), "{s:?}");
    let (st, k, ks, cg) = (s.stride, s.k, t.k, s.c / s.groups);
    let x = normal(s.n * s.c * s.h * s.w, 41, 1.0);
    let w = normal(s.o * s.kdim(), 42, 0.2);

    // Forward maps against the definitions: copies, so exact.
    // xs[n, (c*S + a)*S + b, I, J] = xpad[n, c, I*S + a, J*S + b]
    let xs = run(e, "s2d_input", &x, geom(s, s.n));
    assert_eq!(xs.len(), t.n * t.c * t.h * t.w, "{s:?}");
    let mut xs_ref = vec![f32::NAN; xs.len()];
    // Calls f(xs index, x index or None).
    let each_xs = |f: &mut dyn FnMut(usize, Option<usize>)| {
        for n in 0..s.n {
            for c in 0..s.c {
                for a in 0..st {
                    for b in 0..st {
                        for i in 0..t.h {
                            for j in 0..t.w {
                                let cc = (c * st + a) * st + b;
                                let idx = ((n * t.c + cc) * t.h + i) * t.w + j;
                                f(idx, xpad(s, n, c, i * st + a, j * st + b));
                            }
                        }
                    }
                }
            }
        }
    };
    each_xs(&mut |idx, src| xs_ref[idx] = src.map_or(0.0, |i| x[i]));
    assert_eq!(xs, xs_ref, "s2d_input {s:?}");

    // ws[o, (c*S + a)*S + b, U, V] = w[o, c, U*S + a, V*S + b], 0 past the kernel.
    let wsd = run(e, "s2d_weight", &w, weight_geom(s));
    assert_eq!(wsd.len(), t.o * t.kdim(), "{s:?}");
    let mut ws_ref = vec![f32::NAN; wsd.len()];
    let each_ws = |f: &mut dyn FnMut(usize, Option<usize>)| {
        for o in 0..s.o {
            for c in 0..cg {
                for a in 0..st {
                    for b in 0..st {
                        for uu in 0..ks {
                            for vv in 0..ks {
                                let cc = (c * st + a) * st + b;
                                let idx = ((o * cg * st * st + cc) * ks + uu) * ks + vv;
                                let (u, v) = (uu * st + a, vv * st + b);
                                f(
                                    idx,
                                    (u < k && v < k).then(|| ((o * cg + c) * k + u) * k + v),
                                );
                            }
                        }
                    }
                }
            }
        }
    };
    each_ws(&mut |idx, src| ws_ref[idx] = src.map_or(0.0, |i| w[i]));
    assert_eq!(wsd, ws_ref, "s2d_weight {s:?}");

    // The gradient kernels against the scatters of the definitions (each source element has
    // at most one image: exact), including the pixels no output reads (0).
    let r = normal(xs.len(), 43, 1.0);
    let dx = run(e, "s2d_input_grad", &r, geom(s, s.n));
    let mut dx_ref = vec![0.0f32; x.len()];
    each_xs(&mut |idx, src| {
        if let Some(i) = src {
            dx_ref[i] += r[idx];
        }
    });
    assert_eq!(dx, dx_ref, "s2d_input_grad {s:?}");
    let rw = normal(wsd.len(), 44, 1.0);
    let dw = run(e, "s2d_weight_grad", &rw, weight_geom(s));
    let mut dw_ref = vec![0.0f32; w.len()];
    each_ws(&mut |idx, src| {
        if let Some(i) = src {
            dw_ref[i] += rw[idx];
        }
    });
    assert_eq!(dw, dw_ref, "s2d_weight_grad {s:?}");
    // Every weight appears exactly once: the round trip is the identity.
    assert_eq!(run(e, "s2d_weight_grad", &wsd, weight_geom(s)), w, "{s:?}");

    // Adjoints: <s2d(x), r> = <x, s2d_grad(r)>, the same products summed in another order.
    for (what, fwd, r, src, back) in [("input", &xs, &r, &x, &dx), ("weight", &wsd, &rw, &w, &dw)] {
        let (l, rr) = (dot(&f64s(fwd), &f64s(r)), dot(&f64s(src), &f64s(back)));
        let scale = dot_abs(&f64s(src), &f64s(back));
        assert!(
            (l - rr).abs() < 1e-12 * scale,
            "s2d {what} adjoint {s:?}: {l} vs {rr}"
        );
    }

    // The convolution itself: the stride-1 convolution of the kernels' outputs equals the
    // strided one (f64, from the same f32 values: only the order of sums and zero terms
    // differ), and the kernels' gradient maps of the stride-1 gradients (rounded to f32, as
    // cuDNN writes them) equal the strided convolution's gradients.
    let dy = normal(s.n * s.o * s.ho() * s.wo(), 45, 1.0);
    let (y_ref, dx_ref, dw_ref) = reference(s, &f64s(&x), &f64s(&w), &f64s(&dy));
    let (y_t, dxs_t, dws_t) = reference(&t, &f64s(&xs), &f64s(&wsd), &f64s(&dy));
    let err = rel64(&y_t, &y_ref);
    assert!(err < 1e-12, "s2d convolution {s:?}: rel L2 {err:e}");
    let f32s = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
    let dx = run(e, "s2d_input_grad", &f32s(&dxs_t), geom(s, s.n));
    let err = rel_l2(&dx, &dx_ref);
    assert!(err < 1e-6, "s2d dx {s:?}: rel L2 {err:e}");
    let dw = run(e, "s2d_weight_grad", &f32s(&dws_t), weight_geom(s));
    let err = rel_l2(&dw, &dw_ref);
    assert!(err < 1e-6, "s2d dw {s:?}: rel L2 {err:e}");
}

/// Strided convolutions where space-to-depth applies: the paper's conv1 (3 channels, 11 x 11,
/// stride 4) scaled down, without and with padding, and with floor-mode leftovers; k4 s2 p1 in
/// 3 groups with leftovers; k4 s2 p0 in 2 groups, whose last input row no output reads; k5 s3;
/// k = S.
fn s2d_cases() -> Vec<ConvShape> {
    vec![
        shape(2, 3, 19, 19, 4, 11, 4, 0, 1),
        shape(2, 3, 19, 19, 4, 11, 4, 2, 1),
        shape(2, 3, 21, 18, 5, 11, 4, 2, 1),
        shape(2, 6, 9, 13, 9, 4, 2, 1, 3),
        shape(1, 4, 9, 8, 6, 4, 2, 0, 2),
        shape(1, 2, 10, 11, 3, 5, 3, 1, 1),
        shape(2, 4, 8, 7, 6, 2, 2, 0, 2),
    ]
}

#[test]
fn im2col_kernels_match_the_references() {
    let Some(e) = emu(KernelFile::Im2col) else {
        return;
    };
    // im2col / col2im: the s2d cases (strided, padded, leftovers), stride 1 "same" convs as
    // conv2-5 in groups, and a batch split into chunks of 2 + 2 + 1 samples.
    let mut cases: Vec<(ConvShape, usize)> = s2d_cases().into_iter().map(|s| (s, 2)).collect();
    cases.push((shape(5, 4, 7, 9, 6, 5, 1, 2, 2), 2));
    cases.push((shape(2, 3, 6, 5, 4, 3, 1, 1, 1), 1));
    cases.push((shape(3, 6, 11, 10, 6, 3, 2, 0, 3), 3));
    for (s, chunk) in cases {
        im2col_checks(&e, &s, chunk);
    }
    for s in s2d_cases() {
        s2d_checks(&e, &s);
    }
    common::assert_all_launched(&e);
}

#[test]
fn grid_stride_loops_cover_launches_smaller_than_the_work() {
    let Some(e) = emu(KernelFile::Im2col) else {
        return;
    };
    // Three blocks of 32 threads: every thread takes several elements (grid_for caps the
    // grid at MAX_GRID blocks, so large layers run this way on the GPU).
    let small = LaunchConfig {
        grid_dim: (3, 1, 1),
        block_dim: (32, 1, 1),
        shared_mem_bytes: 0,
    };
    let s = shape(2, 6, 9, 13, 9, 4, 2, 1, 3);
    for (name, g) in [
        ("im2col", geom(&s, s.n)),
        ("col2im", geom(&s, s.n)),
        ("s2d_input", geom(&s, s.n)),
        ("s2d_input_grad", geom(&s, s.n)),
        ("s2d_weight", weight_geom(&s)),
        ("s2d_weight_grad", weight_geom(&s)),
    ] {
        let (ns, nd) = extents(name, &g);
        assert!(
            nd > 3 * 32 * 2,
            "{name}: the work is larger than the launch"
        );
        let src = normal(ns, 51, 1.0);
        // Each element is computed by one thread in the same order either way: bit-identical.
        assert_eq!(
            launch_cfg(&e, name, &small, &src, g),
            run(&e, name, &src, g),
            "{name}"
        );
    }
}
