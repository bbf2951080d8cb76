//! `RUN/config.json`: every setting of a training run.

use alexnet_tensor::spec::NetSpec;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Every setting of a run; written once at the start, read back by `--resume` and `report`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub tool_version: String,
    /// `--preset` as given (a name or a file).
    pub preset: String,
    /// The full network description used.
    pub spec: NetSpec,
    /// Shard folder.
    pub data: PathBuf,
    /// Checksum of the data's manifest.json (which data this run was trained on).
    pub data_manifest_checksum: String,
    pub num_classes: usize,
    pub models: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub schedule: String,
    pub seed: u64,
    pub device: String,
    pub precision: String,
    /// `--conv` (CUDA convolutions), when given; runs from before the flag have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv: Option<String>,
    /// `--cudnn-algo`, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cudnn_algo: Option<String>,
    pub threads: usize,
    pub train_subset: Option<usize>,
    pub init_from: Option<PathBuf>,
    /// PCA lighting std (0.1 in the paper) and horizontal flips.
    pub pca_std: f32,
    pub flip: bool,
    pub log_every: u64,
    pub checkpoint_every: u64,
}

impl RunConfig {
    /// Path of config.json in `run`.
    pub fn path(run: &Path) -> PathBuf {
        run.join("config.json")
    }

    /// Reads `run/config.json`.
    pub fn load(run: &Path) -> Result<RunConfig> {
        let p = Self::path(run);
        let text = std::fs::read_to_string(&p).with_context(|| {
            format!(
                "{}: no run here (train one with `cargo xtask train --run {}`)",
                p.display(),
                run.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not a valid run config", p.display()))
    }

    /// Writes `run/config.json` atomically.
    pub fn save(&self, run: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        alexnet_tensor::io::write_atomic(&Self::path(run), text.as_bytes())?;
        Ok(())
    }

    /// The folder of ensemble member `k`.
    pub fn model_dir(run: &Path, k: usize) -> PathBuf {
        run.join(format!("model-{k}"))
    }

    /// Seed of ensemble member `k`.
    pub fn model_seed(&self, k: usize) -> u64 {
        alexnet_tensor::rng::Rng::derive(self.seed, &[k as u64, 0x5eed]).next_u64()
    }
}
