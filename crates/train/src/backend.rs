//! The device a model runs on: the CPU reference ([`Model`]) or CUDA ([`GpuNet`]). Both use the
//! plan's flat parameter layout, so parameters and momentum move between them unchanged.

use crate::kept_picks;
use alexnet_cuda::ops::conv_cudnn::{self, TimedPick};
use alexnet_cuda::ops::conv_route::{self, ConvPick};
use alexnet_cuda::{
    device_count, AlgoSearch, AugmentSample, ConvImpl, Gpu, GpuNet, Precision, Staged,
};
use alexnet_data::augment::{pca_delta, Patch};
use alexnet_data::{Draw, Stats};
use alexnet_layers::{Mode, Model};
use alexnet_tensor::spec::Plan;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::sync::Arc;

/// Which device to use (`--device auto|cpu|cuda[:i]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DeviceChoice {
    Cpu,
    Cuda(usize),
}

impl DeviceChoice {
    /// Parses `auto` (CUDA when a device is present, else CPU), `cpu`, `cuda` or `cuda:i`.
    pub fn parse(s: &str) -> Result<DeviceChoice> {
        match s {
            "auto" => Ok(if device_count() > 0 {
                DeviceChoice::Cuda(0)
            } else {
                DeviceChoice::Cpu
            }),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(i)) => Ok(DeviceChoice::Cuda(i)),
                _ => bail!("--device {s}: expected auto, cpu, cuda or cuda:N"),
            },
        }
    }

    /// `cpu` or `cuda:i`.
    pub fn label(&self) -> String {
        match self {
            DeviceChoice::Cpu => "cpu".into(),
            DeviceChoice::Cuda(i) => format!("cuda:{i}"),
        }
    }
}

/// A network on one device.
pub enum Backend {
    Cpu(Box<Model<f32>>),
    Cuda(Box<GpuNet>),
}

impl Backend {
    /// Builds the network for batches of at most `batch` samples on `device`.
    pub fn new(plan: &Plan, device: DeviceChoice, batch: usize, precision: &str) -> Result<Self> {
        match device {
            DeviceChoice::Cpu => {
                let gemm = alexnet_tensor::gemm::cpu_backend_for(precision)?;
                alexnet_tensor::gemm::set_f32_backend(gemm)?;
                Ok(Backend::Cpu(Box::new(Model::new(plan.clone()))))
            }
            DeviceChoice::Cuda(i) => {
                let p = Precision::parse(precision)?;
                let gpu = Gpu::new(i).with_context(|| {
                    format!("--device cuda:{i}: no usable CUDA device (use --device cpu)")
                })?;
                Ok(Backend::Cuda(Box::new(GpuNet::new(
                    Arc::new(gpu),
                    plan,
                    batch,
                    p,
                )?)))
            }
        }
    }

    /// Runs the CUDA convolutions as `conv` says (`auto`, `cudnn`, `im2col`, `winograd` or
    /// `timed`, see [`ConvImpl`]); nothing to set on the CPU.
    pub fn set_conv(&mut self, conv: &str) -> Result<()> {
        if let Backend::Cuda(g) = self {
            let c = ConvImpl::parse(conv).map_err(|e| anyhow::anyhow!("--conv {conv}: {e}"))?;
            g.gpu().set_conv_impl(c)?;
        }
        Ok(())
    }

    /// How cuDNN picks algorithms on CUDA (`heuristic` or `timed`, see [`AlgoSearch`]);
    /// nothing to set on the CPU.
    pub fn set_cudnn_algo(&mut self, algo: &str) -> Result<()> {
        if let Backend::Cuda(g) = self {
            let a =
                AlgoSearch::parse(algo).map_err(|e| anyhow::anyhow!("--cudnn-algo {algo}: {e}"))?;
            g.gpu().set_algo_search(a);
        }
        Ok(())
    }

    /// With timed cuDNN algorithms or timed convolutions on CUDA (`ALEXNET_CUDNN_ALGO=timed`,
    /// `--conv timed`): pins the picks of the run's earlier processes, kept in the run folder
    /// `run` ([`crate::kept_picks`]). Nothing otherwise.
    pub fn pin_timed_picks(&self, run: &Path) -> Result<()> {
        if let Some(gpu) = self.timed_gpu() {
            let path = kept_picks::path::<TimedPick>(run);
            let picks = kept_picks::read::<TimedPick>(&path)?;
            if !picks.is_empty() {
                conv_cudnn::pin_timed_algorithms(gpu, &picks)
                    .with_context(|| format!("{}: delete it to time again", path.display()))?;
            }
        }
        if let Some(gpu) = self.timed_conv_gpu() {
            let path = kept_picks::path::<ConvPick>(run);
            let picks = kept_picks::read::<ConvPick>(&path)?;
            conv_route::pin_conv_picks(gpu, &picks)
                .with_context(|| format!("{}: delete it to time again", path.display()))?;
        }
        Ok(())
    }

    /// With timed cuDNN algorithms or timed convolutions on CUDA: adds this process's picks to
    /// the run folder `run`.
    pub fn record_timed_picks(&self, run: &Path) -> Result<()> {
        if let Some(gpu) = self.timed_gpu() {
            let path = kept_picks::path::<TimedPick>(run);
            kept_picks::record(&path, &conv_cudnn::timed_algorithms(gpu))?;
        }
        if let Some(gpu) = self.timed_conv_gpu() {
            let path = kept_picks::path::<ConvPick>(run);
            kept_picks::record(&path, &conv_route::conv_picks(gpu))?;
        }
        Ok(())
    }

    /// The device, when the network runs on CUDA with cuDNN convolutions and timed algorithms.
    fn timed_gpu(&self) -> Option<&Gpu> {
        match self {
            Backend::Cuda(g) => {
                let gpu = g.gpu();
                (gpu.algo_search() == AlgoSearch::Timed && gpu.conv_impl().may_use_cudnn())
                    .then_some(&**gpu)
            }
            Backend::Cpu(_) => None,
        }
    }

    /// The device, when the network runs on CUDA with timed convolutions ([`ConvImpl::Timed`]).
    fn timed_conv_gpu(&self) -> Option<&Gpu> {
        match self {
            Backend::Cuda(g) => (g.gpu().conv_impl() == ConvImpl::Timed).then_some(&**g.gpu()),
            Backend::Cpu(_) => None,
        }
    }

    /// Replaces all parameters (flat, plan layout).
    pub fn set_params(&mut self, params: &[f32]) -> Result<()> {
        match self {
            Backend::Cpu(m) => {
                if params.len() != m.params.len() {
                    bail!(
                        "parameter count {} != network's {}",
                        params.len(),
                        m.params.len()
                    );
                }
                m.params.copy_from_slice(params);
            }
            Backend::Cuda(g) => g.upload_params(params)?,
        }
        Ok(())
    }

    /// All parameters (flat, plan layout).
    pub fn params(&self) -> Result<Vec<f32>> {
        Ok(match self {
            Backend::Cpu(m) => m.params.clone(),
            Backend::Cuda(g) => g.download_params()?,
        })
    }

    /// Replaces the SGD velocity.
    pub fn set_momentum(&mut self, v: &[f32]) -> Result<()> {
        match self {
            Backend::Cpu(m) => {
                if v.len() != m.momentum.len() {
                    bail!(
                        "momentum length {} != network's {}",
                        v.len(),
                        m.momentum.len()
                    );
                }
                m.momentum.copy_from_slice(v);
            }
            Backend::Cuda(g) => g.upload_momentum(v)?,
        }
        Ok(())
    }

    /// The SGD velocity.
    pub fn momentum(&self) -> Result<Vec<f32>> {
        Ok(match self {
            Backend::Cpu(m) => m.momentum.clone(),
            Backend::Cuda(g) => g.download_momentum()?,
        })
    }

    /// One training step: forward (dropout from `seed`), loss, backward, SGD. Returns the loss
    /// and the logits (n, classes) of this batch (for the running training error).
    pub fn train_step(
        &mut self,
        x: &[f32],
        labels: &[u32],
        seed: u64,
        (lr, momentum, wd): (f64, f64, f64),
    ) -> Result<(f32, Vec<f32>)> {
        match self {
            Backend::Cpu(m) => {
                let logits = m.forward(x, labels.len(), Mode::Train { seed })?.to_vec();
                let loss = m.loss_backward(labels)?;
                if loss.is_finite() {
                    m.sgd(lr, momentum, wd)?;
                }
                Ok((loss, logits))
            }
            Backend::Cuda(g) => {
                let loss = g.forward_backward(x, labels, seed)?;
                if loss.is_finite() {
                    g.sgd_step(lr as f32, momentum as f32, wd as f32)?;
                }
                // The GPU path does not return training logits (saves a transfer per step).
                Ok((loss, Vec::new()))
            }
        }
    }

    /// True when [`Backend::train_step_staged`] augments on the device (CUDA); the CPU takes the
    /// loader's f32 batches.
    pub fn augments_on_device(&self) -> bool {
        matches!(self, Backend::Cuda(_))
    }

    /// Hands the device what its augmentation needs from the dataset: the S x S mean image.
    pub fn set_augment_stats(&mut self, stats: &Stats, s: usize) -> Result<()> {
        match self {
            Backend::Cpu(_) => Err(cpu_takes_f32()),
            Backend::Cuda(g) => Ok(g.set_mean_image(&stats.mean, s, s)?),
        }
    }

    /// Starts uploading a raw batch's `records` (n, s, s, 3) u8 for
    /// [`Backend::train_step_staged`] (CUDA only).
    pub fn stage_u8(&mut self, records: &[u8]) -> Result<Staged> {
        match self {
            Backend::Cpu(_) => Err(cpu_takes_f32()),
            Backend::Cuda(g) => Ok(g.stage_u8(records)?),
        }
    }

    /// One training step from the loader's raw batch, staged by [`Backend::stage_u8`], with
    /// each sample's `draws`: the device crops, flips, adds the PCA-lighting delta and
    /// subtracts the mean (bit-identical to the CPU loader's f32 batch), then runs
    /// [`Backend::train_step`]'s forward, backward and SGD. While the device computes, the
    /// records of the `next` batch (if given) are staged: their upload overlaps this step.
    /// Returns the loss and the next batch's staged upload. Needs
    /// [`Backend::set_augment_stats`] first.
    #[allow(clippy::too_many_arguments)]
    pub fn train_step_staged(
        &mut self,
        staged: Staged,
        s: usize,
        draws: &[Draw],
        stats: &Stats,
        labels: &[u32],
        seed: u64,
        (lr, momentum, wd): (f64, f64, f64),
        next: Option<&[u8]>,
    ) -> Result<(f32, Option<Staged>)> {
        let Backend::Cuda(g) = self else {
            return Err(cpu_takes_f32());
        };
        let samples = draw_samples(draws, stats);
        g.launch_train_staged(staged, (s, s), &samples, labels, seed)?;
        let next = next.map(|r| g.stage_u8(r)).transpose()?;
        let loss = g.finish_loss()?;
        // SGD is skipped on a non-finite loss, as in `train_step`.
        if loss.is_finite() {
            g.sgd_step(lr as f32, momentum as f32, wd as f32)?;
        }
        Ok((loss, next))
    }

    /// Inference logits (n, classes) with dropout off.
    pub fn predict(&mut self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        Ok(match self {
            Backend::Cpu(m) => m.forward(x, n, Mode::Infer)?.to_vec(),
            Backend::Cuda(g) => g.forward(x, false, 0)?,
        })
    }

    /// Queues the inference of a raw batch staged by [`Backend::stage_u8`] (`records` S x S
    /// images; `patches` of side `crop`, the network's input side) without waiting: the device crops every patch of every image and subtracts the
    /// mean ([`view_samples`]; the same inputs as the CPU's [`alexnet_data::eval_batch`], bit
    /// for bit), then runs the forward with dropout off. [`Backend::predict_finish`] returns the
    /// logits; in between the host can stage the next batch. Needs
    /// [`Backend::set_augment_stats`] first.
    pub fn predict_launch(
        &mut self,
        staged: Staged,
        (s, crop): (usize, usize),
        (records, patches): (usize, &[Patch]),
    ) -> Result<()> {
        let Backend::Cuda(g) = self else {
            return Err(cpu_takes_f32());
        };
        // The kernel cuts crops of the network's input side; `patches` were placed for `crop`.
        let side = g.plan().input[1];
        if crop != side {
            bail!("evaluation crop {crop} is not the network's input side {side}");
        }
        Ok(g.launch_predict_staged(staged, (s, s), &view_samples(records, patches))?)
    }

    /// The logits `(records * patches, classes)` of the inference queued by
    /// [`Backend::predict_launch`].
    pub fn predict_finish(&mut self) -> Result<Vec<f32>> {
        let Backend::Cuda(g) = self else {
            return Err(cpu_takes_f32());
        };
        Ok(g.finish_logits()?)
    }
}

/// The augment kernel's samples for a training batch: each sample's crop, flip and PCA-lighting
/// delta from its draw, from its own image.
pub fn draw_samples(draws: &[Draw], stats: &Stats) -> Vec<AugmentSample> {
    draws
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let delta = pca_delta(&stats.eigvec, &stats.eigval, &d.alpha);
            patch_sample(&d.patch, delta, i)
        })
        .collect()
}

/// The augment kernel's samples for evaluation views: every patch of image 0, then of image 1,
/// ... (the row order of [`alexnet_data::eval_batch`]), no lighting.
pub fn view_samples(records: usize, patches: &[Patch]) -> Vec<AugmentSample> {
    (0..records)
        .flat_map(|r| patches.iter().map(move |p| patch_sample(p, [0.0; 3], r)))
        .collect()
}

/// The sample cropping `patch` of staged image `src` (the mean image cropped at the same
/// place, as the CPU loader subtracts it), with lighting `delta`.
fn patch_sample(patch: &Patch, delta: [f32; 3], src: usize) -> AugmentSample {
    let (ox, oy) = (patch.left as u32, patch.top as u32);
    AugmentSample {
        ox,
        oy,
        mox: ox,
        moy: oy,
        flip: patch.flip as u32,
        delta,
        src: src as u32,
    }
}

/// The raw-batch (device augmentation) entry points called on the CPU backend: a caller bug
/// (see [`Backend::augments_on_device`]), reported as an error rather than a panic.
fn cpu_takes_f32() -> anyhow::Error {
    anyhow::anyhow!(
        "the CPU backend takes augmented f32 batches (raw u8 batches are for --device cuda)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_batch_entry_points_are_errors_on_the_cpu() {
        let plan = crate::presets::load_preset("small")
            .unwrap()
            .plan(10)
            .unwrap();
        let mut b = Backend::new(&plan, DeviceChoice::Cpu, 4, "f32").unwrap();
        assert!(!b.augments_on_device());
        let e = b.stage_u8(&[0; 12]).expect_err("CPU stage_u8 must fail");
        assert!(e.to_string().contains("--device cuda"), "{e}");
    }
}
