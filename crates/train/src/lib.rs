//! `alexnet-train`: training runs. SGD with the paper's rule (in the layers crate), learning-rate
//! schedules, checkpoints (safetensors, PyTorch-compatible names), exact resume, metrics logs,
//! and the CPU/CUDA backend switch.
//!
//! A run folder holds `config.json` and, per ensemble member k, `model-k/metrics.jsonl`,
//! `model-k/checkpoint.safetensors` (latest, with momentum and training state) and
//! `model-k/final.safetensors` (the trained parameters); with timed cuDNN algorithms on CUDA,
//! `cudnn_algos.json` (see [`cudnn_algos`]).

pub mod backend;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod cudnn_algos;
pub mod evaluate;
pub mod metrics;
pub mod presets;
pub mod schedule;
pub mod trainer;

pub use backend::{Backend, DeviceChoice};
pub use config::RunConfig;
