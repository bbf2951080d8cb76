//! The LRN and max-pool kernels alone on the paper network's shapes at batch 128: both thread
//! mappings of the LRN kernels must give identical results ([`LrnForm`]), and each kernel's
//! time and effective bandwidth are printed, so the next optimisation starts from a measurement.

use super::{median, Tally};
use alexnet_cuda::ops::lrn::{
    lrn_bwd_inplace_form, lrn_fwd_form, maxpool_bwd, maxpool_fwd, LrnForm, LrnParams, PoolGeom,
};
use alexnet_cuda::Gpu;
use alexnet_tensor::rel_l2;
use alexnet_tensor::rng::Rng;
use anyhow::Result;
use std::sync::Arc;
use std::time::Instant;

/// Timed repetitions per kernel (the median is printed).
const REPS: usize = 7;

/// (name, N, C, H, W) of the paper network's two LRN + pool stages.
const SHAPES: [(&str, usize, usize, usize, usize); 2] = [
    ("lrn1/pool1", 128, 96, 55, 55),
    ("lrn2/pool2", 128, 256, 27, 27),
];

/// Median seconds of `f` over [`REPS`] runs, the device synchronised around each.
fn time(gpu: &Gpu, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?; // warm-up (and kernel load)
    let mut t = Vec::with_capacity(REPS);
    for _ in 0..REPS {
        gpu.synchronize()?;
        let t0 = Instant::now();
        f()?;
        gpu.synchronize()?;
        t.push(t0.elapsed().as_secs_f64());
    }
    Ok(median(t))
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
        let mut outs = Vec::new();
        for form in [LrnForm::Element, LrnForm::Channel] {
            let tag = format!("lrn fwd {form:?}");
            let s = time(gpu, || {
                Ok(lrn_fwd_form(
                    gpu,
                    &x.as_view(),
                    &mut y.as_view_mut(),
                    q,
                    form,
                )?)
            })?;
            row(&tag, name, s, 2 * 4 * len);
            let fwd = gpu.download(&y)?;
            // The backward overwrites g in place: reload dy before every run.
            let s = time(gpu, || {
                gpu.stream()
                    .memcpy_dtod(&dy, &mut g)
                    .map_err(|e| anyhow::anyhow!("copy dy: {e:?}"))?;
                Ok(lrn_bwd_inplace_form(
                    gpu,
                    &x.as_view(),
                    &mut g.as_view_mut(),
                    &mut scratch.as_view_mut(),
                    q,
                    form,
                )?)
            })?;
            // dy copy (8 B) + prep (16 B) + finish (16 B) per element.
            row(&format!("lrn bwd {form:?} +copy"), name, s, 40 * len);
            outs.push((fwd, gpu.download(&g)?));
        }
        let (e, ch) = (&outs[0], &outs[1]);
        t.check(
            &format!("{name}: LRN forward, channel-loop vs element-wise kernels (identical)"),
            rel_l2(&ch.0, &e.0),
            0.0,
        );
        t.check(
            &format!("{name}: LRN backward, channel-loop vs element-wise kernels (identical)"),
            rel_l2(&ch.1, &e.1),
            0.0,
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
        let s = time(gpu, || {
            Ok(maxpool_bwd(
                gpu,
                &py.as_view(),
                &arg.as_view(),
                &mut g.as_view_mut(),
                geom,
            )?)
        })?;
        row("maxpool bwd", name, s, 4 * len + 8 * geom.out_len());
    }
    Ok(())
}
