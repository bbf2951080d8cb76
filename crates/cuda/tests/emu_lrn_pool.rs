//! kernels/lrn_pool.cu on the CPU emulator (no GPU) against the layers crate's reference: the
//! per-element LRN kernels (f64 reference), the column kernels (bit-identical to the f32
//! reference with beta = 0.75, every window size and chunking), max-pool forward (values and
//! argmax, ties included) and both max-pool backward kernels (exact).

#[path = "emu/common.rs"]
mod common;

use alexnet_cuda::emu::{arg, Emu};
use alexnet_cuda::gpu::grid_for;
use alexnet_cuda::kernels::KernelFile;
use alexnet_cuda::ops::lrn::{LrnCols, LrnParams, PoolGeom, PoolTile};
use alexnet_layers::lrn::{lrn_backward_relu, lrn_forward, LrnParams as CpuLrn};
use alexnet_layers::pool::{maxpool_backward, maxpool_forward, PoolShape};
use common::{bits, emu, f64s, normal, rel_l2};
use cudarc::driver::LaunchConfig;

const N: usize = 2;
const C: usize = 7; // odd, so windows are clipped at both ends differently
const HW: usize = 5 * 6;

fn cpu_lrn() -> CpuLrn {
    CpuLrn {
        size: 5,
        alpha: 0.3,
        beta: 0.75,
        k: 2.0,
    }
}

/// The kernels' parameters of the CPU reference's `p` over (n, c, hw).
fn gpu_params(p: &CpuLrn, (n, c, hw): (usize, usize, usize), relu: bool) -> LrnParams {
    LrnParams::new(
        n,
        c,
        hw,
        p.size,
        p.alpha as f32,
        p.beta as f32,
        p.k as f32,
        relu,
    )
    .unwrap()
}

/// The CPU reference in f64 of the LRN of max(x, 0) (relu) or x: (y, scale).
fn reference(x: &[f32], relu: bool) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let a: Vec<f64> = x
        .iter()
        .map(|&v| if relu { (v as f64).max(0.0) } else { v as f64 })
        .collect();
    let (mut y, mut s) = (vec![0.0; a.len()], vec![0.0; a.len()]);
    lrn_forward(&a, &mut y, &mut s, N, C, HW, &cpu_lrn()).unwrap();
    (a, y, s)
}

fn lrn_checks(e: &Emu, relu: bool) {
    let len = N * C * HW;
    let x = normal(len, 11 + relu as u64, 1.5);
    let dy = normal(len, 12, 1.0);
    let p = cpu_lrn();
    let q = gpu_params(&p, (N, C, HW), relu);
    let cfg = grid_for(len as u64).unwrap();
    let (a, y_ref, s_ref) = reference(&x, relu);
    let mut dx_ref = vec![0.0; len];
    lrn_backward_relu(&a, &s_ref, &f64s(&dy), &mut dx_ref, [N, C, HW], &p, relu).unwrap();

    // Forward.
    let mut y = vec![0.0f32; len];
    let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
    // SAFETY: x and y hold N*C*HW floats, the extent of the launch.
    unsafe { e.launch("lrn_fwd", &cfg, &[arg(&xp), arg(&yp), arg(&q)]) }.unwrap();
    let err = rel_l2(&y, &y_ref);
    assert!(err < 1e-6, "lrn_fwd relu={relu}: rel L2 {err:e}");

    // One-kernel backward.
    let mut dx = vec![0.0f32; len];
    let (dyp, dxp) = (dy.as_ptr(), dx.as_mut_ptr());
    // SAFETY: every buffer holds N*C*HW floats.
    unsafe { e.launch("lrn_bwd", &cfg, &[arg(&xp), arg(&dyp), arg(&dxp), arg(&q)]) }.unwrap();
    let err = rel_l2(&dx, &dx_ref);
    assert!(err < 1e-5, "lrn_bwd relu={relu}: rel L2 {err:e}");

    // Two-pass in-place backward: g holds dy, then u, then dx.
    let mut g = dy.clone();
    let mut t = vec![f32::NAN; len];
    let (gp, tp) = (g.as_mut_ptr(), t.as_mut_ptr());
    // SAFETY: every buffer holds N*C*HW floats.
    unsafe {
        e.launch(
            "lrn_bwd_prep",
            &cfg,
            &[arg(&xp), arg(&gp), arg(&tp), arg(&q)],
        )
        .unwrap();
        e.launch(
            "lrn_bwd_finish",
            &cfg,
            &[arg(&xp), arg(&tp), arg(&gp), arg(&q)],
        )
        .unwrap();
    }
    let err = rel_l2(&g, &dx_ref);
    assert!(
        err < 1e-5,
        "lrn_bwd_prep + finish relu={relu}: rel L2 {err:e}"
    );
}

fn pool_checks(e: &Emu, planes: usize, h: usize, w: usize, k: usize, stride: usize, ties: bool) {
    let s = PoolShape {
        planes,
        h,
        w,
        k,
        stride,
    };
    let g = PoolGeom::new(planes, h, w, k, stride).unwrap();
    let (lin, lout) = (g.in_len(), g.out_len());
    let mut x = normal(lin, 21, 1.0);
    if ties {
        // Few distinct values: most windows hold their maximum more than once.
        x.iter_mut().for_each(|v| *v = (*v * 1.5).round());
    }
    let mut y_ref = vec![0.0f32; lout];
    let mut arg_ref = vec![0u32; lout];
    maxpool_forward(&x, &mut y_ref, &mut arg_ref, &s).unwrap();

    let (mut y, mut am) = (vec![0.0f32; lout], vec![-1i32; lout]);
    let (xp, yp, ap) = (x.as_ptr(), y.as_mut_ptr(), am.as_mut_ptr());
    let cfg = grid_for(lout as u64).unwrap();
    // SAFETY: x holds the input planes, y and arg the output planes.
    unsafe {
        e.launch(
            "maxpool_fwd",
            &cfg,
            &[arg(&xp), arg(&yp), arg(&ap), arg(&g)],
        )
    }
    .unwrap();
    assert_eq!(y, y_ref, "maxpool_fwd values ({s:?})");
    let am_u: Vec<u32> = am.iter().map(|&v| v as u32).collect();
    assert_eq!(am_u, arg_ref, "maxpool_fwd argmax ({s:?})");

    let dy = normal(lout, 22, 1.0);
    let mut dx_ref = vec![0.0f32; lin];
    maxpool_backward(&dy, &arg_ref, &mut dx_ref, &s).unwrap();
    for name in ["maxpool_bwd", "maxpool_bwd_ref"] {
        let mut dx = vec![f32::NAN; lin];
        let (dyp, ap, dxp) = (dy.as_ptr(), am.as_ptr(), dx.as_mut_ptr());
        let cfg = grid_for(lin as u64).unwrap();
        // SAFETY: dy and arg hold the output planes, dx the input planes.
        unsafe { e.launch(name, &cfg, &[arg(&dyp), arg(&ap), arg(&dxp), arg(&g)]) }.unwrap();
        // Same additions in the same (row-major window) order: bit-identical.
        assert_eq!(dx, dx_ref, "{name} ({s:?})");
    }
}

/// The column kernels on (n, c, hw) with window `size`, chunks of `chunk` channels, against the
/// CPU reference in f32: bit-identical when beta = 0.75 and alpha is exact in f32 (the kernels
/// follow the reference's operations and summation order, without FMA contraction), else within
/// `tol` (powf's last ulp; 2 alpha beta rounded from a different f64 product).
#[allow(clippy::too_many_arguments)]
fn cols_check(
    e: &Emu,
    (n, c, hw): (usize, usize, usize),
    size: usize,
    chunk: usize,
    relu: bool,
    p: CpuLrn,
    tol: f64,
) {
    let len = n * c * hw;
    let seed = (c * 31 + size * 7 + chunk) as u64;
    let x = normal(len, seed, 1.5);
    let dy = normal(len, seed + 1, 1.0);
    let p = CpuLrn { size, ..p };
    let q = gpu_params(&p, (n, c, hw), relu);
    let g = LrnCols::new(&q, chunk).unwrap();
    let a: Vec<f32> = x
        .iter()
        .map(|&v| if relu { v.max(0.0) } else { v })
        .collect();
    let (mut y_ref, mut s_ref, mut dx_ref) = (vec![0.0f32; len], vec![0.0f32; len], vec![0.0; len]);
    lrn_forward(&a, &mut y_ref, &mut s_ref, n, c, hw, &p).unwrap();
    lrn_backward_relu(&a, &s_ref, &dy, &mut dx_ref, [n, c, hw], &p, relu).unwrap();

    let cfg = grid_for(g.threads(&q) as u64).unwrap();
    let (mut y, mut dx) = (vec![f32::NAN; len], vec![f32::NAN; len]);
    let (xp, yp, dyp, dxp) = (x.as_ptr(), y.as_mut_ptr(), dy.as_ptr(), dx.as_mut_ptr());
    // SAFETY: x, y, dy, dx hold n*c*hw floats; the threads cover n * chunks * hw columns.
    unsafe {
        e.launch(
            "lrn_fwd_cols",
            &cfg,
            &[arg(&xp), arg(&yp), arg(&q), arg(&g)],
        )
        .unwrap();
        e.launch(
            "lrn_bwd_cols",
            &cfg,
            &[arg(&xp), arg(&dyp), arg(&dxp), arg(&q), arg(&g)],
        )
        .unwrap();
    }
    let what = format!("(n, c, hw) = ({n}, {c}, {hw}), size {size}, chunk {chunk}, relu {relu}");
    if tol == 0.0 {
        assert_eq!(bits(&y), bits(&y_ref), "lrn_fwd_cols {what}");
        assert_eq!(bits(&dx), bits(&dx_ref), "lrn_bwd_cols {what}");
    } else {
        let (ey, ed) = (rel_l2(&y, &f64s(&y_ref)), rel_l2(&dx, &f64s(&dx_ref)));
        assert!(
            ey < tol && ed < tol,
            "{what}: rel L2 y {ey:e}, dx {ed:e} (bound {tol:e})"
        );
    }
}

fn cols_checks(e: &Emu) {
    let exact = CpuLrn {
        size: 5,
        alpha: 0.375,
        beta: 0.75,
        k: 2.0,
    };
    for relu in [false, true] {
        for size in [1, 3, 5] {
            // One chunk holding every channel, chunks that split the channels unevenly, chunks
            // of one channel (every window from halo loads), fewer channels than the window.
            cols_check(e, (2, 7, 30), size, 32, relu, exact, 0.0);
            cols_check(e, (2, 70, 9), size, 32, relu, exact, 0.0);
            cols_check(e, (1, 11, 13), size, 4, relu, exact, 0.0);
            cols_check(e, (1, 6, 5), size, 1, relu, exact, 0.0);
            cols_check(e, (3, 2, 17), size, 32, relu, exact, 0.0);
        }
    }
    // The paper's alpha (not exact in f32) and a beta other than 0.75 (powf).
    let paper = CpuLrn {
        size: 5,
        alpha: 1e-4,
        beta: 0.75,
        k: 2.0,
    };
    cols_check(e, (2, 40, 12), 5, 32, false, paper, 1e-6);
    let other = CpuLrn {
        size: 5,
        alpha: 0.3,
        beta: 0.6,
        k: 1.0,
    };
    cols_check(e, (2, 40, 12), 5, 16, true, other, 1e-6);
}

/// The fused LRN + max-pool backward against the CPU's two passes (pool backward, then LRN
/// backward): bit-identical (same gathers in the same order, same LRN arithmetic).
fn fused_check(e: &Emu, (n, c, h, w): (usize, usize, usize, usize), size: usize, chunk: usize) {
    let (hw, len) = (h * w, n * c * h * w);
    let p = CpuLrn {
        size,
        alpha: 0.375,
        beta: 0.75,
        k: 2.0,
    };
    // Post-ReLU activations (exact zeros included, as in the network) with ties in the pools.
    let x: Vec<f32> = normal(len, 31, 1.5)
        .iter()
        .map(|v| (v * 2.0).round().max(0.0) / 2.0)
        .collect();
    let q = gpu_params(&p, (n, c, hw), false);
    let cols = LrnCols::new(&q, chunk).unwrap();
    let g = PoolGeom::new(n * c, h, w, 3, 2).unwrap();
    let s = PoolShape {
        planes: n * c,
        h,
        w,
        k: 3,
        stride: 2,
    };
    // The forward on the CPU: LRN, then the pool's argmax over its output.
    let (mut l, mut sc) = (vec![0.0f32; len], vec![0.0f32; len]);
    lrn_forward(&x, &mut l, &mut sc, n, c, hw, &p).unwrap();
    let mut py = vec![0.0f32; g.out_len()];
    let mut am = vec![0u32; g.out_len()];
    maxpool_forward(&l, &mut py, &mut am, &s).unwrap();
    let pdy = normal(g.out_len(), 32, 1.0);
    let mut dl = vec![0.0f32; len];
    maxpool_backward(&pdy, &am, &mut dl, &s).unwrap();
    let mut dx_ref = vec![0.0f32; len];
    lrn_backward_relu(&x, &sc, &dl, &mut dx_ref, [n, c, hw], &p, false).unwrap();

    let ai: Vec<i32> = am.iter().map(|&v| v as i32).collect();
    let mut dx = vec![f32::NAN; len];
    let (xp, pp, ap, dxp) = (x.as_ptr(), pdy.as_ptr(), ai.as_ptr(), dx.as_mut_ptr());
    let cfg = grid_for(cols.threads(&q) as u64).unwrap();
    let args = [
        arg(&xp),
        arg(&pp),
        arg(&ap),
        arg(&dxp),
        arg(&q),
        arg(&cols),
        arg(&g),
    ];
    // SAFETY: x and dx hold n*c*h*w floats, pdy and arg the pool's output; the threads cover
    // n * chunks * hw columns.
    unsafe { e.launch("lrn_pool_bwd_cols", &cfg, &args) }.unwrap();
    assert_eq!(
        bits(&dx),
        bits(&dx_ref),
        "lrn_pool_bwd_cols (n, c, h, w) = ({n}, {c}, {h}, {w}), size {size}, chunk {chunk}"
    );
}

/// The fused LRN + max-pool forward against the CPU's LRN then max-pool: values and argmax
/// bit-identical, with tiles made for `threads` (several tiles per plane when small).
fn fused_fwd_check(
    e: &Emu,
    (n, c, h, w): (usize, usize, usize, usize),
    (size, chunk): (usize, usize),
    (pk, ps): (usize, usize),
    threads: u32,
) {
    let (hw, len) = (h * w, n * c * h * w);
    let p = CpuLrn {
        size,
        alpha: 0.375,
        beta: 0.75,
        k: 2.0,
    };
    // Post-ReLU activations: windows of zeros tie, and the first maximum must win.
    let x: Vec<f32> = normal(len, 41, 1.0).iter().map(|v| v.max(0.0)).collect();
    let q = gpu_params(&p, (n, c, hw), false);
    let cols = LrnCols::new(&q, chunk).unwrap();
    let g = PoolGeom::new(n * c, h, w, pk, ps).unwrap();
    let tile = PoolTile::new(&g, threads).unwrap();
    assert!(tile.pixels(&g) <= threads);
    let s = PoolShape {
        planes: n * c,
        h,
        w,
        k: pk,
        stride: ps,
    };
    let (mut l, mut sc) = (vec![0.0f32; len], vec![0.0f32; len]);
    lrn_forward(&x, &mut l, &mut sc, n, c, hw, &p).unwrap();
    let (mut y_ref, mut am_ref) = (vec![0.0f32; g.out_len()], vec![0u32; g.out_len()]);
    maxpool_forward(&l, &mut y_ref, &mut am_ref, &s).unwrap();

    let (mut y, mut am) = (vec![f32::NAN; g.out_len()], vec![-1i32; g.out_len()]);
    let (xp, yp, ap) = (x.as_ptr(), y.as_mut_ptr(), am.as_mut_ptr());
    let cfg = LaunchConfig {
        grid_dim: (tile.tiles(&g), cols.chunks, n as u32),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    let args = [
        arg(&xp),
        arg(&yp),
        arg(&ap),
        arg(&q),
        arg(&cols),
        arg(&g),
        arg(&tile),
    ];
    // SAFETY: x holds n*c*h*w floats, y and arg the pool's output; the grid covers every tile,
    // chunk and sample, and each tile's pixels fit the block.
    unsafe { e.launch("lrn_pool_fwd_cols", &cfg, &args) }.unwrap();
    let what = format!(
        "lrn_pool_fwd_cols (n, c, h, w) = ({n}, {c}, {h}, {w}), size {size}, chunk {chunk}, \
         pool {pk}/{ps}, {threads} threads, tile {tile:?}"
    );
    assert_eq!(bits(&y), bits(&y_ref), "{what}: values");
    let am_u: Vec<u32> = am.iter().map(|&v| v as u32).collect();
    assert_eq!(am_u, am_ref, "{what}: argmax");
}

#[test]
fn lrn_pool_kernels_match_the_cpu_reference() {
    let Some(e) = emu(KernelFile::LrnPool) else {
        return;
    };
    lrn_checks(&e, false);
    lrn_checks(&e, true);
    cols_checks(&e);
    // The paper's 3/2 pool on odd planes (every pixel covered) and on planes whose last row and
    // column no window reaches; chunks that split the channels.
    fused_check(&e, (2, 9, 13, 13), 5, 4);
    fused_check(&e, (1, 40, 8, 10), 5, 32);
    fused_check(&e, (2, 3, 7, 6), 3, 32);
    // One window row and column: the window ranges must be clamped (a pixel past the last
    // window would otherwise gather from the next plane's windows).
    fused_check(&e, (2, 6, 4, 4), 5, 2);
    // The fused forward: one tile per plane, several (wide and narrow), leftovers no window
    // reaches, a non-overlapping pool, windows of 3 and 1 channels.
    fused_fwd_check(&e, (2, 9, 13, 13), (5, 4), (3, 2), 256);
    fused_fwd_check(&e, (2, 9, 13, 13), (5, 4), (3, 2), 64);
    fused_fwd_check(&e, (1, 40, 8, 10), (5, 32), (3, 2), 32);
    fused_fwd_check(&e, (2, 3, 7, 6), (3, 32), (3, 2), 256);
    fused_fwd_check(&e, (2, 5, 8, 8), (1, 2), (2, 2), 16);
    // A wide plane: 3 x 2 tiles of 15 x 3 outputs (rows of 31 input pixels).
    fused_fwd_check(&e, (1, 4, 9, 80), (5, 32), (3, 2), 256);
    // The paper's pool (3/2) on an odd plane, a plane whose last column no window reaches, a
    // non-overlapping pool, and ties.
    pool_checks(&e, 3, 13, 13, 3, 2, false);
    pool_checks(&e, 2, 9, 10, 3, 2, false);
    pool_checks(&e, 2, 8, 8, 2, 2, false);
    pool_checks(&e, 4, 11, 11, 3, 2, true);
    common::assert_all_launched(&e);
}

#[test]
fn wrong_arguments_are_refused_before_the_kernel_runs() {
    let Some(e) = emu(KernelFile::LrnPool) else {
        return;
    };
    let x = [0.0f32; 4];
    let xp = x.as_ptr();
    let cfg = grid_for(4).unwrap();
    // Too few arguments, a parameter struct of the wrong size, an unknown kernel.
    // SAFETY: refused before anything runs (one argument missing).
    let few = unsafe { e.launch("lrn_fwd", &cfg, &[arg(&xp), arg(&xp)]) };
    assert!(format!("{}", few.unwrap_err()).contains("2 arguments given, the kernel takes 3"));
    let small = [0u32; 4];
    // SAFETY: refused before anything runs (the struct has the wrong size).
    let bad = unsafe { e.launch("lrn_fwd", &cfg, &[arg(&xp), arg(&xp), arg(&small)]) };
    assert!(format!("{}", bad.unwrap_err()).contains("argument 2 is 16 bytes"));
    // SAFETY: refused before anything runs (no such kernel).
    let none = unsafe { e.launch("no_such_kernel", &cfg, &[]) };
    assert!(format!("{}", none.unwrap_err()).contains("no such kernel"));
}
