//! The LRN and max-pool kernels alone on the paper network's shapes at batch 128: the max-pool
//! backward with fast division must give the reference kernel's results exactly, the column
//! LRN kernels (the network's) the per-element ones' within 1e-6 (and the CPU reference's bits:
//! printed), and each kernel's time and effective bandwidth are printed, so the next
//! optimisation starts from a measurement.

use super::{median_secs, Tally};
use alexnet_cuda::ops::lrn::{
    lrn_bwd_cols, lrn_bwd_inplace, lrn_fwd_cols, lrn_fwd_elems, lrn_pool_bwd_cols,
    lrn_pool_fwd_cols, maxpool_bwd, maxpool_bwd_ref, maxpool_fwd, LrnCols, LrnParams, PoolGeom,
    PoolTile, LRN_CHUNK, LRN_POOL_THREADS,
};
use alexnet_cuda::Gpu;
use alexnet_layers::lrn::{lrn_backward, lrn_forward, LrnParams as CpuLrn};
use alexnet_tensor::rel_l2;
use alexnet_tensor::rng::Rng;
use anyhow::Result;
use std::sync::Arc;

/// Timed repetitions per kernel (the median is printed).
const REPS: usize = 7;

/// (name, N, C, H, W) of the paper network's two LRN + pool stages.
const SHAPES: [(&str, usize, usize, usize, usize); 2] = [
    ("lrn1/pool1", 128, 96, 55, 55),
    ("lrn2/pool2", 128, 256, 27, 27),
];

/// Median seconds of `f` over [`REPS`] runs after one warm-up (and kernel load).
fn time(gpu: &Gpu, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    median_secs(gpu, 1, REPS, |_| f())
}

fn row(what: &str, shape: &str, secs: f64, bytes: usize) {
    println!(
        "{what:<22} {shape:<11} {:>8.3} ms {:>8.0} GB/s",
        secs * 1e3,
        bytes as f64 / secs / 1e9
    );
}

/// The check and the timing table (see the module docs).
pub(super) fn lrn_kernels(gpu: &Arc<Gpu>, t: &mut Tally) -> Result<()> {
    println!("-- LRN and max-pool kernels, paper shapes at batch 128 (median of {REPS})");
    let mut rng = Rng::new(0x1A2B_0001);
    for (name, n, c, h, w) in SHAPES {
        let len = n * c * h * w;
        // Post-ReLU activations (half exact zeros) and a random incoming gradient.
        let xh: Vec<f32> = (0..len).map(|_| (rng.normal() * 3.0).max(0.0)).collect();
        let dyh: Vec<f32> = (0..len).map(|_| rng.normal()).collect();
        let x = gpu.upload(&xh)?;
        let dy = gpu.upload(&dyh)?;
        let mut y = gpu.zeros(len)?;
        let mut g = gpu.zeros(len)?;
        let mut scratch = gpu.zeros(len)?;
        let q = LrnParams::new(n, c, h * w, 5, 1e-4, 0.75, 2.0, false)?;
        let s = time(gpu, || {
            Ok(lrn_fwd_elems(gpu, &x.as_view(), &mut y.as_view_mut(), q)?)
        })?;
        row("lrn fwd (elements)", name, s, 2 * 4 * len);
        let y_elems = gpu.download(&y)?;
        // The column kernels at three chunk sizes (the network uses LRN_CHUNK).
        let mut y_cols = Vec::new();
        for chunk in [16, 32, 64] {
            let cols = LrnCols::new(&q, chunk)?;
            let s = time(gpu, || {
                Ok(lrn_fwd_cols(
                    gpu,
                    &x.as_view(),
                    &mut y.as_view_mut(),
                    q,
                    cols,
                )?)
            })?;
            row(&format!("lrn fwd (cols {chunk})"), name, s, 2 * 4 * len);
            if chunk == LRN_CHUNK {
                y_cols = gpu.download(&y)?;
            }
        }
        t.check(
            &format!("{name}: LRN forward, column vs per-element kernel"),
            rel_l2(&y_cols, &y_elems),
            1e-6,
        );
        // The backward overwrites g in place: reload dy before every run.
        let s = time(gpu, || {
            gpu.stream()
                .memcpy_dtod(&dy, &mut g)
                .map_err(|e| anyhow::anyhow!("copy dy: {e:?}"))?;
            let (xv, mut gv, mut tv) = (x.as_view(), g.as_view_mut(), scratch.as_view_mut());
            Ok(lrn_bwd_inplace(gpu, &xv, &mut gv, &mut tv, q)?)
        })?;
        // dy copy (8 B) + prep (16 B) + finish (16 B) per element.
        row("lrn bwd 2-pass +copy", name, s, 40 * len);
        let dx_elems = gpu.download(&g)?;
        let mut dx_cols = Vec::new();
        for chunk in [16, 32, 64] {
            let cols = LrnCols::new(&q, chunk)?;
            let s = time(gpu, || {
                let (xv, dyv, mut gv) = (x.as_view(), dy.as_view(), g.as_view_mut());
                Ok(lrn_bwd_cols(gpu, &xv, &dyv, &mut gv, q, cols)?)
            })?;
            // x, dy read and dx written once.
            row(&format!("lrn bwd (cols {chunk})"), name, s, 3 * 4 * len);
            if chunk == LRN_CHUNK {
                dx_cols = gpu.download(&g)?;
            }
        }
        t.check(
            &format!("{name}: LRN backward, column vs two-pass kernels"),
            rel_l2(&dx_cols, &dx_elems),
            1e-6,
        );
        // The column kernels follow the CPU reference operation by operation (beta 0.75: square
        // roots and divisions, no FMA): report how many values differ in their bits.
        let p = CpuLrn {
            size: 5,
            alpha: 1e-4,
            beta: 0.75,
            k: 2.0,
        };
        let (mut yc, mut sc, mut dxc) = (vec![0.0f32; len], vec![0.0f32; len], vec![0.0f32; len]);
        lrn_forward(&xh, &mut yc, &mut sc, n, c, h * w, &p)?;
        lrn_backward(&xh, &sc, &dyh, &mut dxc, n, c, h * w, &p)?;
        let differ = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .filter(|(u, v)| u.to_bits() != v.to_bits())
                .count()
        };
        println!(
            "info {name}: column kernels vs CPU reference: {} of {len} forward and {} backward \
             values differ in their bits (rel L2 {:.2e} / {:.2e})",
            differ(&y_cols, &yc),
            differ(&dx_cols, &dxc),
            rel_l2(&y_cols, &yc),
            rel_l2(&dx_cols, &dxc)
        );
        let geom = PoolGeom::new(n * c, h, w, 3, 2)?;
        let mut py = gpu.zeros(geom.out_len())?;
        let mut arg = gpu
            .stream()
            .alloc_zeros::<i32>(geom.out_len())
            .map_err(|e| anyhow::anyhow!("alloc: {e:?}"))?;
        let s = time(gpu, || {
            Ok(maxpool_fwd(
                gpu,
                &x.as_view(),
                &mut py.as_view_mut(),
                &mut arg.as_view_mut(),
                geom,
            )?)
        })?;
        row("maxpool fwd", name, s, 4 * len + 8 * geom.out_len());
        // The network's LRN + pool forward: the column LRN into a buffer then the pool
        // (ALEXNET_LRN=elements runs the per-element LRN there), against the fused kernel.
        let cols = LrnCols::new(&q, LRN_CHUNK)?;
        let s = time(gpu, || {
            lrn_fwd_cols(gpu, &x.as_view(), &mut y.as_view_mut(), q, cols)?;
            let (yv, mut pv, mut av) = (y.as_view(), py.as_view_mut(), arg.as_view_mut());
            Ok(maxpool_fwd(gpu, &yv, &mut pv, &mut av, geom)?)
        })?;
        row(
            "lrn+pool fwd (2 kern)",
            name,
            s,
            16 * len + 8 * geom.out_len(),
        );
        let (two_y, two_arg) = (gpu.download(&py)?, gpu.download(&arg)?);
        let tile = PoolTile::new(&geom, LRN_POOL_THREADS)
            .ok_or_else(|| anyhow::anyhow!("no LRN + pool tile for {geom:?}"))?;
        let s = time(gpu, || {
            let (xv, mut pv, mut av) = (x.as_view(), py.as_view_mut(), arg.as_view_mut());
            Ok(lrn_pool_fwd_cols(
                gpu, &xv, &mut pv, &mut av, q, cols, geom, tile,
            )?)
        })?;
        row(
            "lrn+pool fwd (fused)",
            name,
            s,
            4 * len + 8 * geom.out_len(),
        );
        let (fy, farg) = (gpu.download(&py)?, gpu.download(&arg)?);
        let moved = farg.iter().zip(&two_arg).filter(|(a, b)| a != b).count();
        t.check(
            &format!(
                "{name}: LRN + max-pool forward, fused vs two kernels ({moved} argmax differ)"
            ),
            rel_l2(&fy, &two_y) + moved as f64,
            0.0,
        );
        // The backward of the pool's own output as its incoming gradient.
        let mut bwd = Vec::new();
        for (what, reference) in [("maxpool bwd", false), ("maxpool bwd (ref div)", true)] {
            let s = time(gpu, || {
                let (dyv, av, mut dx) = (py.as_view(), arg.as_view(), g.as_view_mut());
                if reference {
                    maxpool_bwd_ref(gpu, &dyv, &av, &mut dx, geom)?;
                } else {
                    maxpool_bwd(gpu, &dyv, &av, &mut dx, geom)?;
                }
                Ok(())
            })?;
            row(what, name, s, 4 * len + 8 * geom.out_len());
            bwd.push(gpu.download(&g)?);
        }
        t.check(
            &format!("{name}: max-pool backward, fast-division vs reference kernel (identical)"),
            rel_l2(&bwd[0], &bwd[1]),
            0.0,
        );
        // The network's LRN + pool backward: the pool's backward then the two-pass LRN one
        // (ALEXNET_LRN=elements), against the fused column kernel (the default), with the
        // fused forward's pool output and argmax as the incoming gradient and argmax.
        let s = time(gpu, || {
            let (dyv, av, mut dx) = (py.as_view(), arg.as_view(), g.as_view_mut());
            maxpool_bwd(gpu, &dyv, &av, &mut dx, geom)?;
            let (xv, mut gv, mut tv) = (x.as_view(), g.as_view_mut(), scratch.as_view_mut());
            Ok(lrn_bwd_inplace(gpu, &xv, &mut gv, &mut tv, q)?)
        })?;
        // pool backward + prep (16 B) + finish (16 B) per element.
        row(
            "pool+lrn bwd (elems)",
            name,
            s,
            36 * len + 8 * geom.out_len(),
        );
        let unfused = gpu.download(&g)?;
        let cols = LrnCols::new(&q, LRN_CHUNK)?;
        let s = time(gpu, || {
            let (xv, dyv, av, mut dx) = (x.as_view(), py.as_view(), arg.as_view(), g.as_view_mut());
            Ok(lrn_pool_bwd_cols(
                gpu, &xv, &dyv, &av, &mut dx, q, cols, geom,
            )?)
        })?;
        // x read, dx written, the pool's dy and argmax read.
        row(
            "pool+lrn bwd (fused)",
            name,
            s,
            8 * len + 8 * geom.out_len(),
        );
        t.check(
            &format!("{name}: LRN + max-pool backward, fused column vs separate kernels"),
            rel_l2(&gpu.download(&g)?, &unfused),
            1e-6,
        );
    }
    Ok(())
}
