//! Training / inference throughput of a [`GpuNet`] on synthetic data.

use crate::error::CudaError;
use crate::gpu::{Gpu, Precision};
use crate::net::GpuNet;
use alexnet_tensor::rng::Rng;
use alexnet_tensor::spec::Plan;
use std::sync::Arc;
use std::time::Instant;

/// Warm-up steps before timing.
pub const WARMUP: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

/// Builds a network for `plan` with random N(0, init_std^2) / constant parameters and runs
/// `steps` timed training steps (forward + backward + SGD, device-synchronised) and `steps`
/// timed inference forwards after [`WARMUP`] untimed ones, on synthetic input. Returns
/// (training img/s, inference img/s), each the median over the timed steps. The loss and logits
/// downloads are part of the timed step (as in training).
pub fn bench_train_step(
    gpu: &Arc<Gpu>,
    plan: &Plan,
    batch: usize,
    precision: Precision,
    steps: usize,
) -> Result<(f64, f64), CudaError> {
    if steps == 0 {
        return Err(CudaError::invalid("bench", "steps must be > 0"));
    }
    let mut net = GpuNet::new(gpu.clone(), plan, batch, precision)?;
    let mut rng = Rng::new(0x5EED);
    let mut params = vec![0.0f32; plan.total];
    for p in &plan.params {
        for v in &mut params[p.offset..p.offset + p.len] {
            *v = if p.init_std > 0.0 {
                p.init_std * rng.normal()
            } else {
                p.init_constant
            };
        }
    }
    net.upload_params(&params)?;
    let per: usize = plan.input.iter().product();
    let x: Vec<f32> = (0..per * batch).map(|_| rng.normal()).collect();
    let labels: Vec<u32> = (0..batch)
        .map(|_| rng.below(plan.num_classes as u64) as u32)
        .collect();
    let mut train = Vec::with_capacity(steps);
    for step in 0..WARMUP + steps {
        gpu.synchronize()?;
        let t = Instant::now();
        net.forward_backward(&x, &labels, step as u64)?;
        net.sgd_step(1e-4, 0.9, 5e-4)?;
        gpu.synchronize()?;
        if step >= WARMUP {
            train.push(batch as f64 / t.elapsed().as_secs_f64());
        }
    }
    let mut infer = Vec::with_capacity(steps);
    for step in 0..WARMUP + steps {
        gpu.synchronize()?;
        let t = Instant::now();
        net.forward(&x, false, 0)?;
        gpu.synchronize()?;
        if step >= WARMUP {
            infer.push(batch as f64 / t.elapsed().as_secs_f64());
        }
    }
    Ok((median(train), median(infer)))
}
