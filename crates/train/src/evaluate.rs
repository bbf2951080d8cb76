//! Evaluation on a split: softmax probabilities per sample for the center crop or the average
//! over the 10 patches (the paper's test-time averaging), and top-1/top-5 errors.

use crate::backend::Backend;
use crate::metrics::topk_misses;
use alexnet_data::{eval_batch, eval_records, view_patches, Dataset, Split, View};
use alexnet_layers::loss::softmax_rows;
use anyhow::{bail, Context, Result};

/// Softmax probabilities (N, classes) of `split` (or its first `limit` samples), averaged over
/// the views of `view`. `batch` is the number of network inputs per forward pass. On a device
/// that builds its own inputs (CUDA), the records are uploaded as stored and the device cuts
/// the views ([`Backend::predict_launch`]), the next pass's records read and uploaded while
/// this pass computes; the CPU gets [`eval_batch`]'s f32 views. Both see the same inputs, bit
/// for bit.
#[allow(clippy::too_many_arguments)]
pub fn predict_split(
    backend: &mut Backend,
    dataset: &Dataset,
    split: Split,
    crop: usize,
    view: View,
    batch: usize,
    limit: Option<usize>,
    mut progress: impl FnMut(usize),
) -> Result<(Vec<f32>, Vec<u32>)> {
    let classes = dataset.num_classes();
    let n = limit.map_or(dataset.split(split).len(), |l| {
        l.min(dataset.split(split).len())
    });
    let views = view.count();
    let per_pass = (batch / views).max(1);
    let mut probs = Vec::with_capacity(n * classes);
    let mut labels = Vec::with_capacity(n);
    let passes: Vec<Vec<usize>> = (0..n)
        .step_by(per_pass)
        .map(|start| (start..(start + per_pass).min(n)).collect())
        .collect();
    let reading = || format!("{}: reading {split:?} images", dataset.dir.display());
    let mut take = |logits: &[f32], l: &[u32]| {
        let p = softmax_rows(logits, classes);
        probs.extend(average_views(&p, views, classes));
        labels.extend_from_slice(l);
        progress(l.len());
    };
    if backend.augments_on_device() && !passes.is_empty() {
        let s = dataset.image_size();
        if crop == 0 || crop > s {
            bail!("eval crop {crop} not in 1..={s}");
        }
        backend.set_augment_stats(&dataset.stats, s)?;
        let patches = view_patches(s, crop, view);
        let stage = |backend: &mut Backend, idx: &[usize]| -> Result<_> {
            let (records, l) = eval_records(dataset, split, idx).with_context(reading)?;
            Ok((backend.stage_u8(&records)?, l))
        };
        let mut current = stage(backend, &passes[0])?;
        for (k, idx) in passes.iter().enumerate() {
            let (staged, l) = current;
            backend.predict_launch(staged, (s, crop), (idx.len(), &patches))?;
            // The next pass's records are read and their upload queued while this one computes.
            let next = match passes.get(k + 1) {
                Some(nidx) => Some(stage(backend, nidx)?),
                None => None,
            };
            take(&backend.predict_finish()?, &l);
            match next {
                Some(nx) => current = nx,
                None => break,
            }
        }
        return Ok((probs, labels));
    }
    for idx in &passes {
        let (x, l) = eval_batch(dataset, split, idx, crop, view).with_context(reading)?;
        let logits = backend.predict(&x, idx.len() * views)?;
        take(&logits, &l);
    }
    Ok((probs, labels))
}

/// Averages consecutive groups of `views` rows of `probs` (`(N*views, classes)`, the views of
/// sample i at rows `i*views..i*views+views`) into `(N, classes)`.
///
/// Sums are taken in f64 in view order and divided by `views`, so a single view is returned
/// bit-for-bit unchanged.
pub fn average_views(probs: &[f32], views: usize, classes: usize) -> Vec<f32> {
    if views == 0 || classes == 0 {
        return Vec::new();
    }
    let n = probs.len() / (views * classes);
    let mut out = Vec::with_capacity(n * classes);
    for sample in probs.chunks_exact(views * classes) {
        for c in 0..classes {
            let s: f64 = (0..views).map(|v| sample[v * classes + c] as f64).sum();
            out.push((s / views as f64) as f32);
        }
    }
    out
}

/// (top-1 error, top-5 error) as fractions. top-5 is capped at the number of classes.
pub fn errors(probs: &[f32], labels: &[u32], classes: usize) -> (f64, f64) {
    let n = labels.len().max(1) as f64;
    let t1 = topk_misses(probs, labels, classes, 1) as f64 / n;
    let t5 = topk_misses(probs, labels, classes, 5.min(classes)) as f64 / n;
    (t1, t5)
}
