//! Helpers shared by the end-to-end tests: a tiny preset and a tiny synthetic shard set.
#![allow(dead_code)]

use alexnet_data::{prepare, PrepareOptions, Source, SyntheticOptions};
use alexnet_train::cli::TrainArgs;
use std::path::{Path, PathBuf};

pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("alexnet-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A tiny preset: the small topology at 24x24 crops of 28x28 images.
pub const TINY: &str = r#"
name = "tiny"
[input]
channels = 3
image_size = 28
crop = 24
[init]
weight_std = 0.05
bias = 0.0
[train]
batch_size = 16
lr = 0.002
momentum = 0.9
weight_decay = 0.0005
epochs = 2
schedule = "plateau"
models = 2
[[layers]]
name = "conv1"
type = "conv2d"
out_channels = 8
kernel = 5
padding = 2
weight_std = 0.02
[[layers]]
name = "relu1"
type = "relu"
[[layers]]
name = "norm1"
type = "lrn"
size = 5
alpha = 2e-5
beta = 0.75
k = 2.0
[[layers]]
name = "pool1"
type = "maxpool"
kernel = 3
stride = 2
[[layers]]
name = "conv2"
type = "conv2d"
out_channels = 16
kernel = 3
padding = 1
groups = 2
bias_init = 0.1
weight_std = 0.2
[[layers]]
name = "relu2"
type = "relu"
[[layers]]
name = "pool2"
type = "maxpool"
kernel = 3
stride = 2
[[layers]]
name = "flatten"
type = "flatten"
[[layers]]
name = "fc6"
type = "linear"
out_features = 32
weight_std = 0.07
[[layers]]
name = "relu6"
type = "relu"
[[layers]]
name = "drop6"
type = "dropout"
p = 0.5
[[layers]]
name = "fc8"
type = "linear"
weight_std = 0.01
"#;

/// A 4-class synthetic set at 28x28 with 24 training and 6 validation images per class.
pub fn tiny_data(root: &Path) -> PathBuf {
    tiny_data_sized(root, 24, 6)
}

/// A 4-class synthetic set at 28x28 of the given size per class.
pub fn tiny_data_sized(root: &Path, train: usize, val: usize) -> PathBuf {
    data_sized(root, train, val, 28)
}

/// A 4-class synthetic set at S x S.
pub fn data_sized(root: &Path, train: usize, val: usize, s: u32) -> PathBuf {
    let out = root.join("shards");
    let mut o = PrepareOptions::new(Source::Synthetic { seed: 3 }, out.clone());
    o.image_size = s;
    o.progress = false;
    o.synthetic_dir = root.join("synthetic");
    o.synthetic = SyntheticOptions {
        classes: 4,
        train_per_class: train,
        val_per_class: val,
        ..Default::default()
    };
    prepare(&o).unwrap();
    out
}

/// The devices a device-generic test runs on: the CPU, and CUDA where a device is present.
#[allow(dead_code)]
pub fn devices() -> Vec<&'static str> {
    let mut d = vec!["cpu"];
    if alexnet_cuda::device_count() > 0 {
        d.push("cuda");
    } else {
        println!("(no CUDA device: CPU only)");
    }
    d
}

pub fn args(root: &Path, data: &Path, run: &str) -> TrainArgs {
    std::fs::write(root.join("tiny.toml"), TINY).unwrap();
    TrainArgs {
        data: data.to_path_buf(),
        preset: root.join("tiny.toml").display().to_string(),
        models: None,
        epochs: None,
        batch_size: None,
        lr: None,
        schedule: None,
        seed: 5,
        device: "cpu".into(),
        precision: "f32".into(),
        conv: None,
        cudnn_algo: None,
        run: root.join(run),
        resume: false,
        init_from: None,
        train_subset: None,
        pca_std: 0.1,
        no_flip: false,
        log_every: 1,
        checkpoint_every: 2,
        quiet: true,
        cpu_augment: false,
    }
}
