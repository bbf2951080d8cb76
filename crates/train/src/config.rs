//! `RUN/config.json`: every setting of a training run.

use alexnet_tensor::spec::NetSpec;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
    /// The GPU settings made by environment variables ([`alexnet_cuda::NUMERIC_ENVS`]) that
    /// were set when the run started; a resume under other values is told that it will not be
    /// bit-identical ([`RunConfig::env_changes`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gpu_env: BTreeMap<String, String>,
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

    /// The set values of [`alexnet_cuda::NUMERIC_ENVS`], as `get` (the environment) gives them.
    pub fn gpu_env_now(get: impl Fn(&str) -> Option<String>) -> BTreeMap<String, String> {
        alexnet_cuda::NUMERIC_ENVS
            .iter()
            .filter_map(|k| get(k).map(|v| (k.to_string(), v)))
            .collect()
    }

    /// One line per GPU setting whose environment variable differs between the run's start
    /// (`self.gpu_env`) and `now`: what a resume is warned about.
    pub fn env_changes(&self, now: &BTreeMap<String, String>) -> Vec<String> {
        let shown = |v: Option<&String>| v.map_or("unset".to_string(), |v| format!("{v:?}"));
        alexnet_cuda::NUMERIC_ENVS
            .iter()
            .filter(|k| self.gpu_env.get(**k) != now.get(**k))
            .map(|k| {
                format!(
                    "{k} is {} now but was {} when the run started",
                    shown(now.get(*k)),
                    shown(self.gpu_env.get(*k))
                )
            })
            .collect()
    }

    /// Seed of ensemble member `k`.
    pub fn model_seed(&self, k: usize) -> u64 {
        alexnet_tensor::rng::Rng::derive(self.seed, &[k as u64, 0x5eed]).next_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_gpu_settings_are_named_and_old_configs_read() {
        let env = |pairs: &[(&str, &str)]| {
            let m: BTreeMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            move |k: &str| m.get(k).cloned()
        };
        // Only the listed variables are kept; the graph switch and unknown ones are not.
        let start = RunConfig::gpu_env_now(env(&[
            ("ALEXNET_CONV_S2D", "off"),
            ("ALEXNET_CUDA_GRAPH", "on"),
            ("HOME", "/root"),
        ]));
        assert_eq!(start.len(), 1);
        let mut cfg: RunConfig = serde_json::from_str(&full_config_json()).unwrap();
        assert!(
            cfg.gpu_env.is_empty(),
            "a config from before the field reads as no settings"
        );
        cfg.gpu_env = start.clone();
        assert!(cfg.env_changes(&start).is_empty());
        let now = RunConfig::gpu_env_now(env(&[("ALEXNET_CONV", "timed")]));
        assert_eq!(
            cfg.env_changes(&now),
            [
                "ALEXNET_CONV is \"timed\" now but was unset when the run started",
                "ALEXNET_CONV_S2D is unset now but was \"off\" when the run started",
            ]
        );
        // Written only when set, and read back.
        let text = serde_json::to_string(&cfg).unwrap();
        assert_eq!(serde_json::from_str::<RunConfig>(&text).unwrap(), cfg);
        cfg.gpu_env.clear();
        assert!(!serde_json::to_string(&cfg).unwrap().contains("gpu_env"));
    }

    /// A run config as written before `gpu_env` existed.
    fn full_config_json() -> String {
        let spec = crate::presets::load_preset("small").unwrap();
        serde_json::json!({
            "tool_version": "0.1.0", "preset": "small", "spec": spec, "data": "/d",
            "data_manifest_checksum": "x", "num_classes": 10, "models": 1, "epochs": 1,
            "batch_size": 8, "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0005,
            "schedule": "plateau", "seed": 1, "device": "cuda", "precision": "f32",
            "threads": 1, "train_subset": null, "init_from": null, "pca_std": 0.1,
            "flip": true, "log_every": 1, "checkpoint_every": 10
        })
        .to_string()
    }
}
