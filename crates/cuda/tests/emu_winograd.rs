//! kernels/winograd.cu on the CPU emulator (no GPU): the Winograd transforms composed as
//! `ops::winograd` composes them (chunks of samples, the filter gradient accumulated over the
//! chunks in the transformed domain), with the batched GEMMs done here in f64, against the
//! layers crate's convolution in f64: forward (with and without ReLU), dx, dw, for F(2x2) and
//! F(4x4) tiles, 3x3 and 5x5 kernels, groups, pads 0-2, planes the tiles overhang, a 1x1
//! output.

#[path = "emu/common.rs"]
mod common;

use alexnet_cuda::emu::{arg, Emu, EmuArg};
use alexnet_cuda::gpu::grid_for;
use alexnet_cuda::kernels::KernelFile;
use alexnet_cuda::ops::conv::ConvShape;
use alexnet_cuda::ops::gemm::MatDesc;
use alexnet_cuda::ops::winograd::{
    chunk, chunks, gemm_precision, tile_m, winograd_shape, Pass, Products, Transform, WinoGeom,
    WinoMats, WINO_BUDGET,
};
use alexnet_cuda::Precision;
use alexnet_layers::conv::{conv2d_backward, conv2d_forward};
use common::{assert_all_launched, cpu_shape, emu, f64s, geom, normal, rel_l2, run, weight_geom};

#[allow(clippy::too_many_arguments)]
fn shape(
    n: usize,
    c: usize,
    hw: [usize; 2],
    o: usize,
    k: usize,
    pad: usize,
    groups: usize,
) -> ConvShape {
    let s = ConvShape {
        n,
        c,
        h: hw[0],
        w: hw[1],
        o,
        k,
        stride: 1,
        pad,
        groups,
    };
    s.validate().unwrap();
    s
}

/// Launches `name` over `threads` grid-stride threads, as the launch functions do.
fn launch(e: &Emu, name: &str, threads: usize, args: &[EmuArg]) {
    let cfg = grid_for(threads as u64).unwrap();
    // SAFETY: every caller passes buffers of the lengths the kernel reads and writes for its
    // geometry (the launch functions' checks, mirrored by the callers' allocations).
    unsafe { e.launch(name, &cfg, args) }.unwrap();
}

/// Transform `tr` from `src` into `dst` over chunk `g`, over the threads `ops::winograd`
/// launches it with (`Transform::threads`); the buffers must hold what it reads and writes.
fn transform(e: &Emu, tr: Transform, src: &[f32], dst: &mut [f32], g: &WinoGeom, t: &WinoMats) {
    let [ls, ld] = tr.lens(g);
    assert!(
        src.len() >= ls && dst.len() >= ld,
        "{tr:?}: {} / {}",
        src.len(),
        dst.len()
    );
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
    let threads = tr.threads(g) as usize;
    launch(
        e,
        tr.kernel(),
        threads,
        &[arg(&sp), arg(&dp), arg(g), arg(t)],
    );
}

/// `v` rounded to TF32 (10 mantissa bits, to nearest even); finite values only.
fn tf32(v: f32) -> f32 {
    let b = v.to_bits();
    f32::from_bits(b.wrapping_add(0xFFF + ((b >> 13) & 1)) & !0x1FFF)
}

/// `v` rounded to bf16 (7 mantissa bits, to nearest even); finite values only.
fn bf16(v: f32) -> f32 {
    let b = v.to_bits();
    f32::from_bits(b.wrapping_add(0x7FFF + ((b >> 16) & 1)) & !0xFFFF)
}

/// How a GEMM rounds its operands.
type Round = fn(f32) -> f32;

/// Operands as strict f32 GEMMs take them.
fn exact(v: f32) -> f32 {
    v
}

/// Element (i, j) of op(M) for a stored row-major matrix described by `d`.
fn at(m: &[f32], d: MatDesc, i: usize, j: usize) -> f32 {
    if d.trans {
        m[j * d.ld + i]
    } else {
        m[i * d.ld + j]
    }
}

/// What `gemm_batched` asks of cuBLAS, on the host: C_i = op(A_i) op(B_i) + beta C_i with
/// the descriptors and strides of `pr`, products in f64 of the operands rounded by `round`.
fn host_gemm(pr: &Products, a: &[f32], b: &[f32], beta: f32, c: &mut [f32], round: Round) {
    let op = |v: f32| round(v) as f64;
    let (rows, inner) = pr.a.op_shape();
    let (inner_b, cols) = pr.b.op_shape();
    assert_eq!(inner, inner_b, "op(A) and op(B) do not chain");
    assert_eq!((pr.c.rows, pr.c.cols), (rows, cols));
    let bt = pr.batch;
    for i in 0..bt.count {
        let (ai, bi) = (&a[i * bt.stride_a..], &b[i * bt.stride_b..]);
        let ci = &mut c[i * bt.stride_c..];
        for r in 0..rows {
            for q in 0..cols {
                let s: f64 = (0..inner)
                    .map(|k| op(at(ai, pr.a, r, k)) * op(at(bi, pr.b, k, q)))
                    .sum();
                let dst = &mut ci[r * pr.c.ld + q];
                *dst = if beta == 0.0 {
                    s as f32
                } else {
                    (beta as f64 * *dst as f64 + s) as f32
                };
            }
        }
    }
}

/// The workspace budget (elements) that makes `chunk` take `nb` samples per chunk: the
/// workspace of exactly `nb` (it grows with every sample).
fn budget_for(s: &ConvShape, m: usize, nb: usize) -> usize {
    let budget = WinoGeom::new(s, nb, m).unwrap().workspace_len();
    assert_eq!(chunk(s, m, budget).unwrap(), nb, "{s:?} F({m}x{m})");
    budget
}

/// y, dx, dw of the Winograd composition with m x m tiles, composed as `ops::winograd` composes
/// it: the chunks of `chunks` for a workspace of `budget` elements, the GEMMs of
/// `Products::of` (done on the host, with TF32 operands when `tf32`), the filter gradient
/// accumulated over the chunks, the patches' gradients in V's buffer. The ReLU (forward)
/// applies when `relu`; dy is the already-masked gradient.
fn winograd(
    e: &Emu,
    s: &ConvShape,
    (m, budget, round): (usize, usize, Round),
    [x, w, b, dy]: [&[f32]; 4],
    relu: bool,
) -> [Vec<f32>; 3] {
    let t = WinoMats::new(m, s.k).unwrap();
    let (full, parts) = chunks(s, m, budget).unwrap();
    let hw = s.ho() * s.wo();
    let (chw, ohw) = (s.c * s.h * s.w, s.o * hw);
    let mut u = vec![f32::NAN; full.u_len()];
    transform(e, Transform::Filter, w, &mut u, &full, &t);
    let mut y = vec![f32::NAN; s.n * ohw];
    let mut dx = vec![f32::NAN; s.n * chw];
    let mut du = vec![f32::NAN; full.u_len()];
    let (mut v, mut dv) = (vec![f32::NAN; full.v_len()], vec![f32::NAN; full.v_len()]);
    let mut mm = vec![f32::NAN; full.m_len()];
    for (n0, g) in parts {
        let (nb, p) = (g.nb as usize, g.p as usize);
        let xc = &x[n0 * chw..(n0 + nb) * chw];
        transform(e, Transform::Input, xc, &mut v, &g, &t);
        // Forward.
        host_gemm(
            &Products::of(&g, Pass::Forward),
            &u,
            &v,
            0.0,
            &mut mm,
            round,
        );
        let yc = &mut y[n0 * ohw..(n0 + nb) * ohw];
        let (mp, bp, yp, r) = (mm.as_ptr(), b.as_ptr(), yc.as_mut_ptr(), relu as i32);
        let args = [arg(&mp), arg(&bp), arg(&yp), arg(&g), arg(&t), arg(&r)];
        launch(e, "wino_output", s.o * p, &args);
        // Backward: dy chunk (nb, O, HO, WO) -> (O, nb, HO, WO), as nchw_to_cnhw_mask does.
        let mut tc = vec![0.0f32; g.t_len()];
        for n in 0..nb {
            for o in 0..s.o {
                let src = &dy[(n0 + n) * ohw + o * hw..][..hw];
                tc[(o * nb + n) * hw..][..hw].copy_from_slice(src);
            }
        }
        transform(e, Transform::OutputGrad, &tc, &mut mm, &g, &t);
        let beta = if n0 == 0 { 0.0 } else { 1.0 };
        host_gemm(
            &Products::of(&g, Pass::FilterGrad),
            &mm,
            &v,
            beta,
            &mut du,
            round,
        );
        host_gemm(
            &Products::of(&g, Pass::InputGrad),
            &u,
            &mm,
            0.0,
            &mut dv,
            round,
        );
        // The patches' gradients go into V's buffer, as in ops::winograd.
        transform(e, Transform::InputGradTiles, &dv, &mut v, &g, &t);
        let dxc = &mut dx[n0 * chw..(n0 + nb) * chw];
        let (ddp, dxp) = (v.as_ptr(), dxc.as_mut_ptr());
        launch(
            e,
            "wino_input_grad",
            nb * chw,
            &[arg(&ddp), arg(&dxp), arg(&g)],
        );
    }
    let mut dw = vec![f32::NAN; w.len()];
    transform(e, Transform::FilterGrad, &du, &mut dw, &full, &t);
    [y, dx, dw]
}

#[test]
fn winograd_transforms_compute_the_convolution() {
    let Some(e) = emu(KernelFile::Winograd) else {
        return;
    };
    let shapes = [
        // conv3-5-like: 13x13 "same", groups, the tiles overhang (16x16 for m = 4).
        shape(3, 4, [13, 13], 6, 3, 1, 2),
        // Non-square, no padding; pad 2 with a 3x3 kernel (output larger than the input).
        shape(2, 3, [6, 7], 5, 3, 0, 1),
        shape(2, 2, [5, 4], 3, 3, 2, 1),
        // A 1x1 output plane.
        shape(2, 3, [3, 3], 2, 3, 0, 1),
        // conv2-like 5x5 "same" with groups, an odd plane; pads 0 and 1.
        shape(3, 4, [9, 9], 6, 5, 2, 2),
        shape(2, 3, [7, 6], 4, 5, 1, 1),
        shape(1, 2, [6, 6], 3, 5, 0, 1),
    ];
    let mut worst = [0.0f64; 3];
    for (si, s) in shapes.iter().enumerate() {
        let seed = 100 * si as u64;
        let x = normal(s.n * s.c * s.h * s.w, seed + 1, 1.0);
        let w = normal(s.o * s.kdim(), seed + 2, 0.3);
        let b = normal(s.o, seed + 3, 0.5);
        let dy = normal(s.n * s.o * s.ho() * s.wo(), seed + 4, 1.0);
        let cs = cpu_shape(s);
        let mut y_ref = vec![0.0f64; dy.len()];
        conv2d_forward(&f64s(&x), &f64s(&w), &f64s(&b), &mut y_ref, &cs).unwrap();
        let (mut dx_ref, mut dw_ref, mut db_ref) =
            (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; s.o]);
        let (xd, wd, dyd) = (f64s(&x), f64s(&w), f64s(&dy));
        conv2d_backward(&xd, &wd, &dyd, &mut dx_ref, &mut dw_ref, &mut db_ref, &cs).unwrap();
        let relu_ref: Vec<f64> = y_ref.iter().map(|&v| v.max(0.0)).collect();
        for m in [2, 4] {
            // One chunk of every sample, and chunks of 2 (the last one shorter when n = 3).
            for chunk in [s.n, 2.min(s.n)] {
                for relu in [false, true] {
                    let [y, dx, dw] = winograd(
                        &e,
                        s,
                        (m, budget_for(s, m, chunk), exact),
                        [&x, &w, &b, &dy],
                        relu,
                    );
                    let want = if relu { &relu_ref } else { &y_ref };
                    // f32 against f64 (measured worst: F(2x2) 7.0e-7, F(4x4, 3x3) 7.8e-7,
                    // F(4x4, 5x5) 3.2e-6; the CPU's Winograd has the same orders).
                    let bound = if m == 4 && s.k == 5 { 1e-5 } else { 2e-6 };
                    let errs = [rel_l2(&y, want), rel_l2(&dx, &dx_ref), rel_l2(&dw, &dw_ref)];
                    for (i, (&err, what)) in errs.iter().zip(["y", "dx", "dw"]).enumerate() {
                        assert!(
                            err < bound,
                            "{s:?} F({m}x{m}) chunk {chunk} relu {relu}: {what} rel L2 {err:e} \
                             (bound {bound:e})"
                        );
                        worst[i] = worst[i].max(err);
                    }
                }
            }
        }
    }
    println!(
        "winograd on the emulator: worst rel L2 y {:e}, dx {:e}, dw {:e}",
        worst[0], worst[1], worst[2]
    );
    assert_all_launched(&e);
}

/// TF32 products (`--conv winograd --precision tf32`): the operands of the GEMMs rounded to
/// TF32, as cuBLAS rounds them, against the f64 convolution, beside the error of TF32 products
/// in the direct form (x, w and dy rounded to TF32, products exact) on the same data. The
/// transforms' coefficients amplify the rounding; the documented TF32 bound is 2e-2.
#[test]
fn tf32_products_stay_within_the_tf32_bound() {
    let Some(e) = emu(KernelFile::Winograd) else {
        return;
    };
    for s in [
        shape(2, 64, [13, 13], 32, 3, 1, 1),
        shape(2, 32, [27, 27], 16, 5, 2, 2),
    ] {
        let x = normal(s.n * s.c * s.h * s.w, 21, 1.0);
        let w = normal(s.o * s.kdim(), 22, 0.1);
        let b = normal(s.o, 23, 0.5);
        let dy = normal(s.n * s.o * s.ho() * s.wo(), 24, 1.0);
        let cs = cpu_shape(&s);
        let grads = |x: &[f64], w: &[f64], dy: &[f64]| {
            let mut y = vec![0.0f64; dy.len()];
            conv2d_forward(x, w, &f64s(&b), &mut y, &cs).unwrap();
            let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; s.o]);
            conv2d_backward(x, w, dy, &mut dx, &mut dw, &mut db, &cs).unwrap();
            [y, dx, dw]
        };
        let exact_grads = grads(&f64s(&x), &f64s(&w), &f64s(&dy));
        let rel = |a: &[f64], b: &[f64]| {
            let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
            (num / b.iter().map(|y| y * y).sum::<f64>()).sqrt()
        };
        // bf16 operands, for comparison (bf16 runs TF32 GEMMs: `gemm_precision`).
        let modes: [(&str, Round); 2] = [("tf32", tf32), ("bf16", bf16)];
        for (name, round) in modes {
            let r = |v: &[f32]| -> Vec<f64> { v.iter().map(|&x| round(x) as f64).collect() };
            let direct = grads(&r(&x), &r(&w), &r(&dy));
            for m in [2, 4] {
                let got = winograd(&e, &s, (m, WINO_BUDGET, round), [&x, &w, &b, &dy], false);
                let used = name == "tf32" && m == tile_m(Precision::Tf32, s.k, None);
                let tag = if used { " (the tiles tf32 uses)" } else { "" };
                for (i, what) in ["y", "dx", "dw"].iter().enumerate() {
                    let err = rel_l2(&got[i], &exact_grads[i]);
                    let base = rel(&direct[i], &exact_grads[i]);
                    let k = s.k;
                    println!(
                        "{name} k{k} F({m}x{m}) {what}: rel L2 {err:.2e} \
                         (direct form {base:.2e}){tag}"
                    );
                    // Measured with TF32 operands: F(4x4, 3x3) 2.0e-3, F(2x2, 5x5) 2.3e-3
                    // (F(4x4, 5x5): 5.5e-3). With bf16 operands 1.6e-2, 1.8e-2 and 4.3e-2,
                    // up to beyond bf16's 3e-2 bound: why bf16 runs TF32 GEMMs here.
                    let bound = match (used, name) {
                        (true, _) => 3e-3,
                        (false, "tf32") => 1e-2,
                        _ => 1e-1,
                    };
                    assert!(
                        err < bound,
                        "{s:?} F({m}x{m}) {name} {what}: rel L2 {err:e}"
                    );
                }
            }
        }
    }
}

/// The strided convolutions `ops::winograd` runs in space-to-depth form, composed as it composes
/// them: im2col.cu's s2d kernels around the Winograd transforms, against the strided
/// convolution in f64.
#[test]
fn strided_convolutions_by_winograd_in_space_to_depth_form() {
    let (Some(ew), Some(ei)) = (emu(KernelFile::Winograd), emu(KernelFile::Im2col)) else {
        return;
    };
    let strided = |s: ConvShape, stride| ConvShape { stride, ..s };
    for s in [
        // conv1-like: 11x11 stride 4 (3x3 over 48 channels); 5x5 stride 2 with pad 2, groups.
        strided(shape(2, 3, [23, 27], 4, 11, 0, 1), 4),
        strided(shape(2, 4, [9, 9], 6, 5, 2, 2), 2),
    ] {
        let t = winograd_shape(&s, true).unwrap();
        assert_eq!((t.k, t.stride, t.pad), (3, 1, 0), "{s:?}");
        let x = normal(s.n * s.c * s.h * s.w, 7, 1.0);
        let w = normal(s.o * s.kdim(), 8, 0.2);
        let b = normal(s.o, 9, 0.5);
        let dy = normal(s.n * s.o * s.ho() * s.wo(), 10, 1.0);
        let xs = run(&ei, "s2d_input", &x, geom(&s, s.n));
        let wt = run(&ei, "s2d_weight", &w, weight_geom(&s));
        let [y, dxs, dwt] = winograd(&ew, &t, (4, WINO_BUDGET, exact), [&xs, &wt, &b, &dy], false);
        let dx = run(&ei, "s2d_input_grad", &dxs, geom(&s, s.n));
        let dw = run(&ei, "s2d_weight_grad", &dwt, weight_geom(&s));
        let cs = cpu_shape(&s);
        let (xd, wd, dyd) = (f64s(&x), f64s(&w), f64s(&dy));
        let mut y_ref = vec![0.0f64; dy.len()];
        conv2d_forward(&xd, &wd, &f64s(&b), &mut y_ref, &cs).unwrap();
        let (mut dx_ref, mut dw_ref, mut db_ref) =
            (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; s.o]);
        conv2d_backward(&xd, &wd, &dyd, &mut dx_ref, &mut dw_ref, &mut db_ref, &cs).unwrap();
        for (what, got, want) in [
            ("y", &y, &y_ref),
            ("dx", &dx, &dx_ref),
            ("dw", &dw, &dw_ref),
        ] {
            let err = rel_l2(got, want);
            assert!(err < 2e-6, "{s:?} in s2d form: {what} rel L2 {err:e}");
        }
    }
}

#[test]
fn geometry_and_matrices_are_checked() {
    // F(4x4, 3x3) of the paper's conv3: 13x13 -> 4x4 tiles of 4 outputs, a = 6.
    let s = shape(128, 256, [13, 13], 384, 3, 1, 1);
    let g = WinoGeom::new(&s, 128, 4).unwrap();
    assert_eq!((g.th, g.tw, g.p, g.a), (4, 4, 128 * 16, 6));
    assert_eq!(g.v_len(), 36 * 256 * 2048);
    assert_eq!(g.m_len(), 36 * 384 * 2048);
    assert_eq!(g.u_len(), 36 * 384 * 256);
    // conv2 (5x5, two groups): 27x27 -> 7x7 tiles, a = 8.
    let s2 = shape(128, 96, [27, 27], 256, 5, 2, 2);
    let g2 = WinoGeom::new(&s2, 1, 4).unwrap();
    assert_eq!((g2.th, g2.p, g2.ps, g2.a), (7, 49, 56, 8));
    assert_eq!(
        g2.v_len(),
        64 * 96 * 56,
        "rows of p = 49 tiles padded to 56"
    );
    assert_eq!(g2.u_len(), 64 * 256 * 48);
    // No instance: strided, 7x7, m = 3; too many elements for 32-bit indices.
    let strided = ConvShape { stride: 2, ..s };
    assert!(WinoGeom::new(&strided, 1, 4).is_err());
    assert!(WinoGeom::new(&shape(1, 2, [9, 9], 2, 7, 3, 1), 1, 4).is_err());
    assert!(WinoGeom::new(&s, 1, 3).is_err());
    assert!(WinoGeom::new(&shape(4096, 256, [27, 27], 256, 5, 2, 1), 4096, 4).is_err());
    // Each pass's batched GEMM fits the buffers the workspace gives it (conv2's padded rows, a
    // chunk with odd p), and gemm_batched's check refuses a buffer one element short of what the
    // batch reaches (the last row's padding is not read).
    let odd = WinoGeom::new(&s2, 83, 4).unwrap();
    assert_eq!((odd.p, odd.ps), (83 * 49, 4072));
    for g in [g, g2, odd] {
        for (pass, lens) in [
            (Pass::Forward, [g.u_len(), g.v_len(), g.m_len()]),
            (Pass::FilterGrad, [g.m_len(), g.v_len(), g.u_len()]),
            (Pass::InputGrad, [g.u_len(), g.m_len(), g.v_len()]),
        ] {
            let pr = Products::of(&g, pass);
            let (b, descs) = (pr.batch, [pr.a, pr.b, pr.c]);
            b.check(lens, descs).unwrap();
            let strides = [b.stride_a, b.stride_b, b.stride_c];
            for i in 0..3 {
                let reach = (b.count - 1) * strides[i] + descs[i].extent();
                assert!(
                    reach <= lens[i] && lens[i] - reach < 8,
                    "{pass:?} operand {i}"
                );
                let mut short = lens;
                short[i] = reach - 1;
                assert!(b.check(short, descs).is_err(), "{pass:?} operand {i}");
            }
        }
    }
    // Chunks keep V, dV, M and the masked gradient within WINO_BUDGET (2^27 elements): conv2's
    // 1,591,552 per sample (plus U and dU, 1,572,864) give 83 samples; conv3 fits the batch.
    assert_eq!(chunk(&s2, 4, WINO_BUDGET).unwrap(), 83);
    assert_eq!(chunk(&s, 4, WINO_BUDGET).unwrap(), 128);
    assert_eq!(chunk(&ConvShape { n: 7, ..s }, 4, WINO_BUDGET).unwrap(), 7);
    // Which convolutions have a Winograd form: 3x3 and 5x5 stride 1 as they are; the paper's
    // conv1 (11x11 stride 4) in space-to-depth form (48 channels, 3x3 over 57x57) when on.
    assert_eq!(winograd_shape(&s2, false), Some(s2));
    let conv1 = shape(128, 3, [227, 227], 96, 11, 0, 1);
    let conv1 = ConvShape { stride: 4, ..conv1 };
    let t = winograd_shape(&conv1, true).unwrap();
    assert_eq!(
        (t.c, t.h, t.w, t.k, t.stride, t.pad, t.o),
        (48, 57, 57, 3, 1, 0, 96)
    );
    assert_eq!(winograd_shape(&conv1, false), None);
    assert_eq!(
        winograd_shape(&strided, true),
        None,
        "3x3 stride 2 has no s2d form"
    );
    assert_eq!(winograd_shape(&shape(1, 2, [9, 9], 2, 7, 3, 1), true), None);
    // Tiles and GEMM precision: f32 GEMMs in f32 on F(4x4); TF32 GEMMs in TF32 and bf16, with
    // F(2x2) for 5x5 (the amplified TF32 rounding, test above); a forced side wins.
    use Precision::{Bf16, Tf32, F32};
    assert_eq!([F32, Tf32, Bf16].map(gemm_precision), [F32, Tf32, Tf32]);
    assert_eq!([F32, Tf32, Bf16].map(|p| tile_m(p, 5, None)), [4, 2, 2]);
    assert_eq!([F32, Tf32, Bf16].map(|p| tile_m(p, 3, None)), [4, 4, 4]);
    assert_eq!(tile_m(Tf32, 5, Some(4)), 4);
    assert_eq!(tile_m(F32, 3, Some(2)), 2);
    // The matrices' f32 copies: those of F(2, 3), in the fixed-size arrays' first entries.
    let t = WinoMats::new(2, 3).unwrap();
    assert_eq!(t.at[..8], [1., 1., 1., 0., 0., 1., -1., 1.]);
    assert_eq!(t.g[..3], [1., 0., 0.]);
    assert!(t.at[8..].iter().all(|&v| v == 0.0));
    assert!(WinoMats::new(6, 5).is_err(), "a = 10 has no matrices");
}
