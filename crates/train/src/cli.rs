//! `cargo xtask train`: arguments and the driver over the ensemble members.

use crate::backend::DeviceChoice;
use crate::config::RunConfig;
use crate::presets::load_preset;
use crate::schedule::Schedule;
use crate::trainer::{train_model, Outcome, TrainOptions};
use alexnet_data::Dataset;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Default shard folder (where `prepare-data` writes the synthetic set).
pub const DEFAULT_DATA: &str = "shards/synthetic";
/// Default run folder.
pub const DEFAULT_RUN: &str = "runs/default";

/// `cargo xtask train` arguments. Unset values come from the preset's `[train]` table.
#[derive(clap::Args, Clone, Debug)]
pub struct TrainArgs {
    /// Shard folder written by prepare-data.
    #[arg(long, default_value = DEFAULT_DATA)]
    pub data: PathBuf,
    /// small, paper, paper-6conv, or a preset TOML file.
    #[arg(long, default_value = "small")]
    pub preset: String,
    /// Ensemble members, each trained with its own seed.
    #[arg(long)]
    pub models: Option<usize>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Initial learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// plateau (lr / 10 when validation error stops improving), plateau:PATIENCE or step:E1,E2,...
    #[arg(long)]
    pub schedule: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// auto (CUDA when present, else CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// f32 (strict), tf32 or bf16 on CUDA; f32, bf16x3 or bf16 (Intel AMX GEMMs) on the CPU.
    #[arg(long, default_value = "f32")]
    pub precision: String,
    /// CUDA convolutions: auto, cudnn, im2col, winograd or timed (default: ALEXNET_CONV, else
    /// auto); kept in the run's config, so a resumed run computes the same way (timed runs keep
    /// their picks in conv_picks.json).
    #[arg(long)]
    pub conv: Option<String>,
    /// CUDA: how cuDNN picks its algorithms, heuristic or timed (default: ALEXNET_CUDNN_ALGO,
    /// else heuristic); timed runs keep their picks in cudnn_algos.json for exact resumes.
    #[arg(long)]
    pub cudnn_algo: Option<String>,
    /// Run folder (config, metrics, checkpoints, report).
    #[arg(long, default_value = DEFAULT_RUN)]
    pub run: PathBuf,
    /// Continue the run in --run from its checkpoints (its config.json wins over other flags).
    #[arg(long)]
    pub resume: bool,
    /// Fine-tune: load every tensor of CKPT whose name and shape match, re-initialise the rest.
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Train on the first N images of each epoch's order only (quick experiments).
    #[arg(long)]
    pub train_subset: Option<usize>,
    /// PCA lighting std (the paper: 0.1; 0 turns it off).
    #[arg(long, default_value_t = 0.1)]
    pub pca_std: f32,
    /// Turn off random horizontal flips.
    #[arg(long)]
    pub no_flip: bool,
    /// Log a step line to metrics.jsonl every N steps.
    #[arg(long, default_value_t = 10)]
    pub log_every: u64,
    /// Write checkpoint.safetensors every N steps (and at each epoch end).
    #[arg(long, default_value_t = 50)]
    pub checkpoint_every: u64,
    /// Hide progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// On CUDA: augment on the CPU and upload f32 batches, instead of uploading the u8
    /// records and augmenting on the GPU (bit-identical batches; for comparison).
    #[arg(long)]
    pub cpu_augment: bool,
}

/// Builds the run config from the flags, the preset and the dataset.
pub fn make_config(a: &TrainArgs, dataset: &Dataset) -> Result<RunConfig> {
    let spec = load_preset(&a.preset)?;
    let t = &spec.train;
    let cfg = RunConfig {
        tool_version: env!("CARGO_PKG_VERSION").into(),
        preset: a.preset.clone(),
        // Absolute, so `report` and `predict` find the data from any directory.
        data: std::fs::canonicalize(&a.data).unwrap_or_else(|_| a.data.clone()),
        data_manifest_checksum: dataset.manifest.checksum(),
        num_classes: dataset.num_classes(),
        models: a.models.unwrap_or(t.models),
        epochs: a.epochs.unwrap_or(t.epochs),
        batch_size: a.batch_size.unwrap_or(t.batch_size),
        lr: a.lr.unwrap_or(t.lr),
        momentum: t.momentum,
        weight_decay: t.weight_decay,
        schedule: a.schedule.clone().unwrap_or_else(|| t.schedule.clone()),
        seed: a.seed,
        device: a.device.clone(),
        precision: a.precision.clone(),
        conv: a.conv.clone(),
        cudnn_algo: a.cudnn_algo.clone(),
        gpu_env: RunConfig::gpu_env_now(|k| std::env::var(k).ok()),
        threads: rayon::current_num_threads(),
        train_subset: a.train_subset,
        init_from: a.init_from.clone(),
        pca_std: a.pca_std,
        flip: !a.no_flip,
        log_every: a.log_every.max(1),
        checkpoint_every: a.checkpoint_every.max(1),
        spec,
    };
    if cfg.models == 0 || cfg.epochs == 0 || cfg.batch_size == 0 {
        bail!("--models, --epochs and --batch-size must be at least 1");
    }
    Schedule::parse(&cfg.schedule, cfg.lr)?;
    if dataset.image_size() < cfg.spec.input.crop {
        bail!(
            "{}: images are {}x{}, smaller than the preset's {} crop: prepare the data with \
             --image-size {} or pick another --preset",
            a.data.display(),
            dataset.image_size(),
            dataset.image_size(),
            cfg.spec.input.crop,
            cfg.spec.input.image_size
        );
    }
    cfg.spec.plan(cfg.num_classes)?;
    Ok(cfg)
}

/// Runs `cargo xtask train`. Returns the run folder.
pub fn run_train(a: &TrainArgs) -> Result<PathBuf> {
    run_train_with(a, None)
}

/// [`run_train`] with an optional step limit for this invocation (simulates a kill in tests).
pub fn run_train_with(a: &TrainArgs, stop_after_steps: Option<u64>) -> Result<PathBuf> {
    let run = &a.run;
    let cfg_path = RunConfig::path(run);
    // Check the device before anything is written, so a bad --device leaves no half-made run.
    let device = DeviceChoice::parse(&a.device)?;
    if device == DeviceChoice::Cpu && !a.resume {
        alexnet_tensor::gemm::cpu_backend_for(&a.precision)?;
    }
    if let Some(c) = &a.conv {
        alexnet_cuda::ConvImpl::parse(c).map_err(|e| anyhow::anyhow!("--conv {c}: {e}"))?;
    }
    if let Some(c) = &a.cudnn_algo {
        alexnet_cuda::AlgoSearch::parse(c).map_err(|e| anyhow::anyhow!("--cudnn-algo {c}: {e}"))?;
    }
    if let DeviceChoice::Cuda(i) = device {
        let n = alexnet_cuda::device_count();
        if i >= n {
            bail!(
                "--device {}: {n} CUDA device(s) found (use --device cpu or auto)",
                a.device
            );
        }
    }
    let cfg = if a.resume {
        let cfg = RunConfig::load(run)?;
        let ds = Dataset::open(&cfg.data)?;
        if ds.manifest.checksum() != cfg.data_manifest_checksum {
            bail!(
                "{}: the data changed since this run started (manifest checksum differs); \
                 start a new --run",
                cfg.data.display()
            );
        }
        if matches!(device, DeviceChoice::Cuda(_)) {
            let now = RunConfig::gpu_env_now(|k| std::env::var(k).ok());
            for change in cfg.env_changes(&now) {
                eprintln!(
                    "warning: {change}: the resumed run computes with other kernels and will \
                     not be bit-identical to an uninterrupted one"
                );
            }
        }
        cfg
    } else {
        if cfg_path.exists() {
            bail!(
                "{} already holds a run: pass --resume to continue it, or choose another --run",
                run.display()
            );
        }
        let ds = Dataset::open(&a.data)?;
        let cfg = make_config(a, &ds)?;
        std::fs::create_dir_all(run)
            .with_context(|| format!("{}: cannot create", run.display()))?;
        cfg.save(run)?;
        cfg
    };
    let dataset = Arc::new(Dataset::open(&cfg.data)?);
    let opts = TrainOptions {
        device,
        progress: !a.quiet,
        stop_after_steps,
        cpu_augment: a.cpu_augment,
    };
    let t = std::time::Instant::now();
    for k in 0..cfg.models {
        match train_model(run, &cfg, k, &dataset, &opts)? {
            Outcome::Stopped => return Ok(run.clone()),
            Outcome::AlreadyFinished => {
                if !a.quiet {
                    eprintln!("model {k}: already trained");
                }
            }
            Outcome::Finished => {}
        }
    }
    println!(
        "train: {} model(s) of preset {} on {} in {:.0} s -> {}",
        cfg.models,
        cfg.spec.name,
        device.label(),
        t.elapsed().as_secs_f64(),
        run.display()
    );
    Ok(run.clone())
}

/// True when every model of the run in `run` has its final.safetensors.
pub fn run_finished(run: &Path) -> bool {
    match RunConfig::load(run) {
        Ok(cfg) => (0..cfg.models).all(|k| {
            RunConfig::model_dir(run, k)
                .join("final.safetensors")
                .exists()
        }),
        Err(_) => false,
    }
}
