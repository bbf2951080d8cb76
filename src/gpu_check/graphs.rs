//! The CUDA-graph section of `gpu-check` (`ALEXNET_CUDA_GRAPH=on`, `alexnet_cuda::net::graph`):
//! training with graphs must give the same bits as without them (each precision's default
//! convolutions, the trainer's own pipelined steps, a partial batch in the middle), then
//! training img/s with and without graphs in TF32 and bf16. Ends its checks with `graphs: N
//! passed, M failed`; the timings are skipped past [`TIMING_BUDGET_S`].

use super::bench::{bench_on, CudaBench, ImagePool};
use super::winograd::TIMING_BUDGET_S;
use super::{precision_name, Tally};
use crate::presets::load_preset;
use alexnet_cuda::{Gpu, GpuNet, Precision};
use alexnet_tensor::rng::Rng;
use anyhow::{bail, Result};
use std::sync::Arc;
use std::time::Instant;

/// Training steps of [`graph_identity`]; the one at `PARTIAL_STEP` has a partial batch.
pub const IDENTITY_STEPS: usize = 7;
/// The step of [`graph_identity`] with `batch - batch / 4` samples (run without the graph).
const PARTIAL_STEP: usize = 3;

/// What [`graph_identity`] found: the same training run with and without CUDA graphs.
#[derive(Clone, Debug, PartialEq)]
pub struct GraphIdentity {
    /// Each step's loss, without and with graphs.
    pub losses: [Vec<f32>; 2],
    /// Final parameters that differ (of `params`).
    pub params_differing: usize,
    pub params: usize,
    /// (graphs captured, replays) of the run with graphs.
    pub counts: (usize, usize),
}

impl GraphIdentity {
    /// Bit-identical losses and parameters, and the graph really used (captured once at
    /// least, replayed on the later full batches).
    pub fn passed(&self) -> bool {
        let same_losses = self.losses[0]
            .iter()
            .zip(&self.losses[1])
            .all(|(a, b)| a.to_bits() == b.to_bits());
        same_losses && self.params_differing == 0 && self.counts.0 >= 1 && self.counts.1 >= 2
    }
}

/// [`IDENTITY_STEPS`] training steps of `preset` at `batch` and precision `p`, as the trainer
/// runs them (u8 batches staged and augmented on the GPU, the loss read, SGD with a changing
/// learning rate, a new dropout seed each step), once without and once with CUDA graphs, from
/// the same parameters. The device's graph setting is restored afterwards.
pub fn graph_identity(
    gpu: &Arc<Gpu>,
    preset: &str,
    batch: usize,
    p: Precision,
) -> Result<GraphIdentity> {
    if batch < 4 {
        bail!("graph_identity: batch {batch} < 4");
    }
    let spec = load_preset(preset)?;
    let plan = spec.plan(10)?;
    let [_, h, _] = plan.input;
    let side = spec.input.image_size;
    let mut rng = Rng::new(0x6A94);
    let pool = ImagePool::new(&mut rng, 2 * batch, side, plan.num_classes);
    let start = super::bench::init_params(&plan, 7);
    let was = gpu.graphs();
    // (losses, final parameters, graph counts)
    type Run = (Vec<f32>, Vec<f32>, (usize, usize));
    let run = |graphs: bool| -> Result<Run> {
        gpu.set_graphs(graphs);
        let mut net = GpuNet::new(gpu.clone(), &plan, batch, p)?;
        net.upload_params(&start)?;
        net.set_mean_image(&pool.mean, side, side)?;
        let mut rng = Rng::new(0x57E9);
        let mut buf = Vec::new();
        let mut losses = Vec::with_capacity(IDENTITY_STEPS);
        for step in 0..IDENTITY_STEPS {
            let n = if step == PARTIAL_STEP {
                batch - batch / 4
            } else {
                batch
            };
            let (samples, labels) = pool.train_batch(&mut rng, n, h, &mut buf);
            let staged = net.stage_u8(&buf)?;
            net.launch_train_staged(staged, (side, side), &samples, &labels, 100 + step as u64)?;
            losses.push(net.finish_loss()?);
            let lr = 0.01 / (1 + step) as f32;
            net.sgd_step(lr, 0.9, 5e-4)?;
        }
        Ok((losses, net.download_params()?, net.graph_counts()))
    };
    let plain = run(false);
    let graphed = run(true);
    gpu.set_graphs(was);
    let ((l0, p0, _), (l1, p1, counts)) = (plain?, graphed?);
    Ok(GraphIdentity {
        losses: [l0, l1],
        params_differing: p0
            .iter()
            .zip(&p1)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count(),
        params: p0.len(),
        counts,
    })
}

/// The section; false when a check failed or a row could not run. `started` is when
/// `gpu-check` began.
pub(super) fn graph_section(gpu: &Arc<Gpu>, started: Instant) -> Result<bool> {
    let mut tally = Tally::default();
    println!(
        "-- CUDA graphs: {IDENTITY_STEPS} training steps with and without graphs, bit for bit \
         (paper net, batch 64, step {PARTIAL_STEP} a partial batch)"
    );
    for p in [Precision::F32, Precision::Tf32, Precision::Bf16] {
        match graph_identity(gpu, "paper", 64, p) {
            Ok(r) => {
                let ok = r.passed();
                println!(
                    "{} graphs {}: losses {:?} / {:?}, {} of {} parameters differ, {} captured, \
                     {} replayed",
                    if ok { "PASS" } else { "FAIL" },
                    precision_name(p),
                    r.losses[0],
                    r.losses[1],
                    r.params_differing,
                    r.params,
                    r.counts.0,
                    r.counts.1
                );
                tally.record(ok);
            }
            Err(e) => {
                println!("FAIL graphs {}: {e:#}", precision_name(p));
                tally.record(false);
            }
        }
    }
    println!("graphs: {} passed, {} failed", tally.passed, tally.failed);
    let t = started.elapsed().as_secs_f64();
    if t >= TIMING_BUDGET_S {
        println!("skipped: graph timings (gpu-check at {t:.0} s, past {TIMING_BUDGET_S} s)");
        return Ok(tally.failed == 0);
    }
    Ok(tally.failed == 0 && graph_rows(gpu)?)
}

/// Training img/s without and with graphs, with the loader and compute only, TF32 and bf16 with
/// their default convolutions, paper net, batch 128 (f32's steps are the longest, so launch
/// overhead weighs least there; left out to save the lent GPU's time).
fn graph_rows(gpu: &Arc<Gpu>) -> Result<bool> {
    println!(
        "-- CUDA graphs: training img/s, paper net, batch 128 ({:<6} {:>12} {:>12} {:>12} {:>12})",
        "prec", "train", "graphs", "(synthetic)", "graphs"
    );
    let was = gpu.graphs();
    let mut ok = true;
    for p in [Precision::Tf32, Precision::Bf16] {
        let mut cells = Vec::new();
        for synthetic in [false, true] {
            for graphs in [false, true] {
                gpu.set_graphs(graphs);
                let o = CudaBench {
                    synthetic_data: synthetic,
                    ..CudaBench::paper(p, 128)
                };
                cells.push(bench_on(gpu, &o, p).map(|r| r.train_img_per_s));
            }
        }
        match cells.into_iter().collect::<Result<Vec<f64>>>() {
            Ok(c) => println!(
                "{:<6} {:>12.0} {:>12.0} {:>12.0} {:>12.0}  (graphs: {:+.1}% / {:+.1}%)",
                precision_name(p),
                c[0],
                c[1],
                c[2],
                c[3],
                100.0 * (c[1] / c[0] - 1.0),
                100.0 * (c[3] / c[2] - 1.0)
            ),
            Err(e) => {
                ok = false;
                println!("{:<6} error: {e:#}", precision_name(p));
            }
        }
    }
    gpu.set_graphs(was);
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::GraphIdentity;

    #[test]
    fn identity_needs_every_bit_and_a_used_graph() {
        let ok = GraphIdentity {
            losses: [vec![2.5, 2.25], vec![2.5, 2.25]],
            params_differing: 0,
            params: 10,
            counts: (1, 4),
        };
        assert!(ok.passed());
        let mut one_ulp = ok.clone();
        one_ulp.losses[1][1] = f32::from_bits(2.25f32.to_bits() + 1);
        assert!(!one_ulp.passed());
        assert!(!GraphIdentity {
            params_differing: 1,
            ..ok.clone()
        }
        .passed());
        // Without a capture (graphs silently not used) the check fails.
        assert!(!GraphIdentity {
            counts: (0, 0),
            ..ok
        }
        .passed());
    }
}
