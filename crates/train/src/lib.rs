//! `alexnet-train`: training runs. SGD with the paper's rule (in the layers crate), learning-rate
//! schedules, checkpoints (safetensors, PyTorch-compatible names), exact resume, metrics logs,
//! and the CPU/CUDA backend switch.
//!
//! A run folder holds `config.json` and, per ensemble member k, `model-k/metrics.jsonl`,
//! `model-k/checkpoint.safetensors` (latest, with momentum and training state) and
//! `model-k/final.safetensors` (the trained parameters); with timed cuDNN algorithms on CUDA,
//! `cudnn_algos.json`, and with timed convolutions `conv_picks.json` (see [`kept_picks`]).

pub mod backend;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod evaluate;
pub mod kept_picks;
pub mod metrics;
pub mod presets;
pub mod schedule;
pub mod trainer;

pub use backend::{Backend, DeviceChoice};
pub use config::RunConfig;
