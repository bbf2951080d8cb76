//! Training end to end on a tiny synthetic set, and exact resume: a run stopped part-way and
//! resumed ends with a byte-identical final.safetensors.

use alexnet_data::{prepare, PrepareOptions, Source, SyntheticOptions};
use alexnet_train::cli::{run_train_with, TrainArgs};
use alexnet_train::metrics::read_jsonl;
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("alexnet-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A tiny preset: the small topology at 24x24 crops of 28x28 images.
const TINY: &str = r#"
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
lr = 0.01
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
weight_std = 0.05
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
"#;

fn tiny_data(root: &Path) -> PathBuf {
    let out = root.join("shards");
    let mut o = PrepareOptions::new(Source::Synthetic { seed: 3 }, out.clone());
    o.image_size = 28;
    o.progress = false;
    o.synthetic_dir = root.join("synthetic");
    o.synthetic = SyntheticOptions {
        classes: 4,
        train_per_class: 24,
        val_per_class: 6,
        ..Default::default()
    };
    prepare(&o).unwrap();
    out
}

fn args(root: &Path, data: &Path, run: &str) -> TrainArgs {
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
        run: root.join(run),
        resume: false,
        init_from: None,
        train_subset: None,
        pca_std: 0.1,
        no_flip: false,
        log_every: 1,
        checkpoint_every: 2,
        quiet: true,
    }
}

#[test]
fn resume_is_byte_identical_and_logs_are_not_duplicated() {
    let root = tmp("resume");
    let data = tiny_data(&root);
    // Uninterrupted run.
    let a = args(&root, &data, "full");
    run_train_with(&a, None).unwrap();
    // Interrupted: stop after 3 steps (mid-epoch, between checkpoints), then again after 5
    // more (crossing the epoch boundary and into model 1), then finish.
    let mut b = args(&root, &data, "cut");
    run_train_with(&b, Some(3)).unwrap();
    b.resume = true;
    run_train_with(&b, Some(5)).unwrap();
    run_train_with(&b, None).unwrap();
    for k in 0..2 {
        let f1 = std::fs::read(root.join(format!("full/model-{k}/final.safetensors"))).unwrap();
        let f2 = std::fs::read(root.join(format!("cut/model-{k}/final.safetensors"))).unwrap();
        assert!(f1 == f2, "model {k}: resumed final.safetensors differs");
        let m1 = read_jsonl(&root.join(format!("full/model-{k}/metrics.jsonl"))).unwrap();
        let m2 = read_jsonl(&root.join(format!("cut/model-{k}/metrics.jsonl"))).unwrap();
        let steps = |m: &[serde_json::Value]| -> Vec<(String, u64, f64)> {
            m.iter()
                .map(|v| {
                    (
                        v["kind"].as_str().unwrap().to_string(),
                        v["step"].as_u64().unwrap(),
                        v["loss"].as_f64().unwrap(),
                    )
                })
                .collect()
        };
        assert_eq!(steps(&m1), steps(&m2), "model {k}: metrics lines differ");
        // 96 images / 16 = 6 steps per epoch, 2 epochs: 12 step lines + 2 epoch lines.
        assert_eq!(m1.len(), 14);
    }
    // The two ensemble members differ (their own seeds).
    let p0 = std::fs::read(root.join("full/model-0/final.safetensors")).unwrap();
    let p1 = std::fs::read(root.join("full/model-1/final.safetensors")).unwrap();
    assert_ne!(p0, p1);
    // Training again into the same folder without --resume is refused with a clear error.
    let e = run_train_with(&args(&root, &data, "full"), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("already holds a run") && e.contains("--resume"),
        "{e}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn bad_flags_and_missing_data_are_clear_errors() {
    let root = tmp("badflags");
    let mut a = args(&root, &root.join("nowhere"), "r");
    let e = run_train_with(&a, None).unwrap_err().to_string();
    assert!(e.contains("nowhere"), "{e}");
    a.device = "tpu".into();
    a.data = tiny_data(&root);
    let e = format!("{:#}", run_train_with(&a, None).unwrap_err());
    assert!(e.contains("--device tpu"), "{e}");
    let mut a = args(&root, &a.data, "r2");
    a.schedule = Some("cosine".into());
    let e = format!("{:#}", run_train_with(&a, None).unwrap_err());
    assert!(e.contains("--schedule cosine"), "{e}");
    std::fs::remove_dir_all(&root).unwrap();
}
