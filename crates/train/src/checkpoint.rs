//! Checkpoints as safetensors. Parameter tensors are named like the fixtures (`conv1.weight`,
//! ..., `fc8.bias`) with PyTorch layouts, so `safetensors.torch.load_file` reads them; the
//! training checkpoint adds `momentum.<name>` tensors and the training state as JSON metadata.

use crate::schedule::Schedule;
use alexnet_tensor::io::{read_safetensors, safetensors_bytes, write_atomic};
use alexnet_tensor::spec::{NetSpec, Plan};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Where a model's training stands (saved beside the parameters in `checkpoint.safetensors`).
///
/// Every random draw of training is a pure function of `(seed, epoch, batch)` (loader) or
/// `(seed, step)` (dropout), so these counters are the complete RNG state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// The model's seed (ensemble member k has its own).
    pub seed: u64,
    /// 0-based epoch in progress.
    pub epoch: usize,
    /// Next batch of that epoch.
    pub next_batch: usize,
    /// Steps done in total.
    pub step: u64,
    pub schedule: Schedule,
    /// Running sums of the current epoch (for its summary line).
    pub epoch_loss_sum: f64,
    pub epoch_top1_miss: u64,
    pub epoch_top5_miss: u64,
    pub epoch_seen: u64,
    /// Seconds spent training so far (all epochs).
    pub train_seconds: f64,
    /// Length in bytes of metrics.jsonl when this checkpoint was written: a resumed run
    /// truncates the log there, so lines are never duplicated.
    pub metrics_len: u64,
    /// True once every epoch is done.
    pub finished: bool,
}

/// What a parameter file says about itself: enough to rebuild the network (and name its
/// classes) without the run folder. Stored as ONE JSON metadata entry, `alexnet`, so the file's
/// bytes do not depend on hash-map ordering (resumed runs must write byte-identical files).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileInfo {
    pub format: String,
    pub spec: NetSpec,
    pub num_classes: usize,
    /// Class names in label order.
    pub classes: Vec<String>,
    pub tool_version: String,
    /// Present in training checkpoints only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<TrainState>,
}

impl FileInfo {
    /// Info for a network built from `spec` with `classes`.
    pub fn new(spec: &NetSpec, classes: Vec<String>) -> FileInfo {
        FileInfo {
            format: "alexnet-rs/1".into(),
            spec: spec.clone(),
            num_classes: classes.len(),
            classes,
            tool_version: env!("CARGO_PKG_VERSION").into(),
            state: None,
        }
    }

    /// The metadata map of the file.
    pub fn to_metadata(&self) -> Result<HashMap<String, String>> {
        Ok(HashMap::from([(
            "alexnet".to_string(),
            serde_json::to_string(self)?,
        )]))
    }

    /// Parses the metadata of a file written by this tool.
    pub fn from_metadata(path: &Path, m: &HashMap<String, String>) -> Result<FileInfo> {
        let text = m.get("alexnet").with_context(|| {
            format!(
                "{}: no `alexnet` metadata: not written by this tool",
                path.display()
            )
        })?;
        serde_json::from_str(text)
            .with_context(|| format!("{}: damaged `alexnet` metadata", path.display()))
    }
}

/// Writes parameters (and optionally momentum) atomically.
pub fn save(
    path: &Path,
    plan: &Plan,
    params: &[f32],
    momentum: Option<&[f32]>,
    metadata: &HashMap<String, String>,
) -> Result<()> {
    let mut tensors: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
    for e in &plan.params {
        tensors.push((
            e.name.clone(),
            e.shape.clone(),
            &params[e.offset..e.offset + e.len],
        ));
    }
    if let Some(v) = momentum {
        for e in &plan.params {
            tensors.push((
                format!("momentum.{}", e.name),
                e.shape.clone(),
                &v[e.offset..e.offset + e.len],
            ));
        }
    }
    let bytes = safetensors_bytes(&tensors, metadata)?;
    write_atomic(path, &bytes)?;
    Ok(())
}

/// A loaded parameter file.
pub struct Loaded {
    pub params: Vec<f32>,
    pub momentum: Option<Vec<f32>>,
    pub metadata: HashMap<String, String>,
}

/// Reads a checkpoint written by [`save`] for `plan`; every parameter must be present with its
/// shape (errors name the file, the tensor and the fix).
pub fn load(path: &Path, plan: &Plan) -> Result<Loaded> {
    let f = read_safetensors(path)
        .with_context(|| format!("{}: not a readable checkpoint", path.display()))?;
    let mut params = vec![0.0; plan.total];
    let mut momentum = vec![0.0; plan.total];
    let mut has_momentum = true;
    for e in &plan.params {
        let t = f.f32s.get(&e.name).with_context(|| {
            format!(
                "{}: no tensor `{}`: it was written for another network (check --preset)",
                path.display(),
                e.name
            )
        })?;
        if t.shape() != e.shape.as_slice() {
            bail!(
                "{}: tensor `{}` has shape {:?}, the network needs {:?} (check --preset and the dataset's classes)",
                path.display(),
                e.name,
                t.shape(),
                e.shape
            );
        }
        params[e.offset..e.offset + e.len].copy_from_slice(t.data());
        match f.f32s.get(&format!("momentum.{}", e.name)) {
            Some(m) if m.shape() == e.shape.as_slice() => {
                momentum[e.offset..e.offset + e.len].copy_from_slice(m.data())
            }
            _ => has_momentum = false,
        }
    }
    if let Some(bad) = params.iter().position(|v| !v.is_finite()) {
        bail!(
            "{}: parameter {bad} is not finite; the file is damaged",
            path.display()
        );
    }
    Ok(Loaded {
        params,
        momentum: has_momentum.then_some(momentum),
        metadata: f.metadata,
    })
}

/// Fine-tuning (`--init-from`): copies every parameter of `path` whose name and shape match
/// `plan` into `params`; returns the names copied and the names left as initialised.
pub fn load_matching(
    path: &Path,
    plan: &Plan,
    params: &mut [f32],
) -> Result<(Vec<String>, Vec<String>)> {
    let f = read_safetensors(path)
        .with_context(|| format!("--init-from {}: not a readable checkpoint", path.display()))?;
    let (mut copied, mut fresh) = (Vec::new(), Vec::new());
    for e in &plan.params {
        match f.f32s.get(&e.name) {
            Some(t) if t.shape() == e.shape.as_slice() => {
                params[e.offset..e.offset + e.len].copy_from_slice(t.data());
                copied.push(e.name.clone());
            }
            _ => fresh.push(e.name.clone()),
        }
    }
    if copied.is_empty() {
        bail!(
            "--init-from {}: no tensor matches this network by name and shape",
            path.display()
        );
    }
    Ok((copied, fresh))
}
