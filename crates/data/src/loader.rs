//! The loader that train and eval consume.
//!
//! Training: an epoch-seeded permutation (reproducible for a given (seed, epoch)), then per sample
//! a random `crop x crop` patch of the S x S record, a horizontal flip with probability 1/2 and
//! PCA lighting with `alpha ~ N(0, pca_std^2)`, minus the mean image (cropped/flipped at the same
//! place); batches are f32 NCHW `(N, 3, crop, crop)` on the 0..255 scale minus the mean (no further
//! scaling). With [`LoaderConfig::raw`] the loader stops before the crop: it hands over the
//! batch's S x S u8 records with each sample's [`Draw`], for a device that augments itself (the
//! CUDA trainer uploads the u8 records and crops, flips, lights and normalises on the GPU, which
//! [`crate::augment::patch_to_chw`] defines). Every random draw of a sample depends only on
//! (seed, epoch, position in the epoch), so starting at `start_batch` reproduces the same
//! batches. Batches are built with rayon on a producer thread that keeps up to `prefetch` ready
//! batches in a bounded channel.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rayon::prelude::*;

use crate::augment::{patch_to_chw, pca_delta, Patch};
use crate::error::DataError;
use crate::rng::Rng;
use crate::shards::{Dataset, Split, SplitData};

/// Training-loader settings.
#[derive(Clone, Debug, PartialEq)]
pub struct LoaderConfig {
    /// Samples per batch (N).
    pub batch_size: usize,
    /// Patch side S' (e.g. 224 of 256, 56 of 64).
    pub crop: usize,
    /// Seed of the shuffles and augmentation draws.
    pub seed: u64,
    /// Random horizontal flips.
    pub flip: bool,
    /// Standard deviation of the PCA-lighting alphas (0.1 in the paper; 0 disables).
    pub pca_std: f32,
    /// Drop the last incomplete batch.
    pub drop_last: bool,
    /// Batches prepared ahead of the consumer (at least 1).
    pub prefetch: usize,
    /// Use only the first `n` training records.
    pub subset: Option<usize>,
    /// Hand over u8 records and draws ([`Pixels::U8`]) instead of augmented f32 patches.
    pub raw: bool,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 128,
            crop: 56,
            seed: 0,
            flip: true,
            pca_std: 0.1,
            drop_last: true,
            prefetch: 2,
            subset: None,
            raw: false,
        }
    }
}

/// The pixels of one training batch.
#[derive(Clone, Debug, PartialEq)]
pub enum Pixels {
    /// `(N, 3, crop, crop)` NCHW f32, 0..255 scale minus the mean image (augmented).
    F32(Vec<f32>),
    /// The `N` S x S records as stored, `(N, S, S, 3)` u8 HWC, and each sample's draws: what
    /// [`crate::augment::patch_to_chw`] turns into the [`Pixels::F32`] patches.
    U8 { records: Vec<u8>, draws: Vec<Draw> },
}

/// One training batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub pixels: Pixels,
    /// `N` labels.
    pub labels: Vec<u32>,
    /// Batch index within the epoch.
    pub index: usize,
}

impl Batch {
    /// The augmented f32 patches (`None` for a raw batch).
    pub fn x(&self) -> Option<&[f32]> {
        match &self.pixels {
            Pixels::F32(x) => Some(x),
            Pixels::U8 { .. } => None,
        }
    }
}

/// Reproducible permutation of `0..len` for `(seed, epoch)`.
pub fn epoch_order(len: usize, seed: u64, epoch: u64) -> Vec<u32> {
    let mut v: Vec<u32> = (0..len as u32).collect();
    Rng::from_words(&[seed, epoch, 0x5348_5546]).shuffle(&mut v);
    v
}

/// Batches in an epoch of `len` samples.
pub fn batches_per_epoch(len: usize, batch_size: usize, drop_last: bool) -> usize {
    if batch_size == 0 {
        0
    } else if drop_last {
        len / batch_size
    } else {
        len.div_ceil(batch_size)
    }
}

/// The random draws of the sample at `position` of epoch `epoch`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Draw {
    /// Patch location and flip.
    pub patch: Patch,
    /// PCA-lighting alphas (zeros when `pca_std == 0`).
    pub alpha: [f32; 3],
}

/// Draws crop offsets (uniform in `0..=s-crop`), flip (p = 1/2 when `cfg.flip`) and alphas for one
/// sample; depends only on `(cfg.seed, epoch, position)`.
pub fn sample_draw(cfg: &LoaderConfig, s: usize, epoch: u64, position: usize) -> Draw {
    let mut r = Rng::from_words(&[cfg.seed, epoch, position as u64, 0x4155_4745]);
    let span = (s - cfg.crop.min(s)) as u64;
    let top = r.below(span + 1) as usize;
    let left = r.below(span + 1) as usize;
    let flip = r.bool() && cfg.flip;
    let alpha = [0; 3].map(|_| (r.normal() * cfg.pca_std as f64) as f32);
    let alpha = if cfg.pca_std == 0.0 { [0.0; 3] } else { alpha };
    Draw {
        patch: Patch { top, left, flip },
        alpha,
    }
}

fn check(ds: &Dataset, cfg: &LoaderConfig) -> Result<usize, DataError> {
    let s = ds.image_size();
    if cfg.batch_size == 0 || cfg.crop == 0 || cfg.crop > s {
        return Err(DataError::InvalidArg(format!(
            "loader needs batch_size > 0 and 0 < crop <= {s} (got batch {} crop {}) in {}",
            cfg.batch_size,
            cfg.crop,
            ds.dir.display()
        )));
    }
    let len = ds.split(Split::Train).len();
    Ok(cfg.subset.map_or(len, |n| n.min(len)))
}

/// Builds training batch `batch` of `epoch` synchronously (what [`TrainLoader`] runs ahead).
pub fn train_batch(
    ds: &Dataset,
    cfg: &LoaderConfig,
    epoch: u64,
    batch: usize,
) -> Result<Batch, DataError> {
    let len = check(ds, cfg)?;
    let order = epoch_order(len, cfg.seed, epoch);
    build(ds, cfg, &order, (epoch, batch), None)
}

/// [`train_batch`] filling a buffer from `recycler` for a raw batch's records (the same batch).
pub fn train_batch_recycled(
    ds: &Dataset,
    cfg: &LoaderConfig,
    (epoch, batch): (u64, usize),
    recycler: &Recycler,
) -> Result<Batch, DataError> {
    let len = check(ds, cfg)?;
    let order = epoch_order(len, cfg.seed, epoch);
    build(ds, cfg, &order, (epoch, batch), Some(recycler))
}

/// Record buffers handed back by the consumer of raw batches ([`TrainLoader::recycler`]), which
/// the loader fills again instead of allocating: a fresh buffer of a 128-image batch of 256 x 256
/// records is 25 MB of pages faulted in on first write, which cost the raw loader ~40% of its
/// speed (measured: 11k vs 18k img/s per core gathering into fresh vs reused buffers).
#[derive(Clone, Debug, Default)]
pub struct Recycler {
    free: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl Recycler {
    /// Buffers kept at most (the loader has at most `prefetch` + 2 batches out at once).
    const KEEP: usize = 4;

    /// Hands `records` back for a later batch (dropped when enough are kept already).
    pub fn give(&self, records: Vec<u8>) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < Self::KEEP {
            free.push(records);
        }
    }

    /// A buffer handed back earlier, or an empty one.
    fn take(&self) -> Vec<u8> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        free.pop().unwrap_or_default()
    }
}

fn build(
    ds: &Dataset,
    cfg: &LoaderConfig,
    order: &[u32],
    (epoch, b): (u64, usize),
    recycler: Option<&Recycler>,
) -> Result<Batch, DataError> {
    let split = ds.split(Split::Train);
    let (s, c) = (ds.image_size(), cfg.crop);
    let start = b * cfg.batch_size;
    let end = (start + cfg.batch_size).min(order.len());
    if start >= end {
        return Err(DataError::InvalidArg(format!(
            "batch {b} is past the end of epoch {epoch}"
        )));
    }
    let n = end - start;
    let st = &ds.stats;
    let pixels = if cfg.raw {
        let rec = s * s * 3;
        // A recycled buffer of the same size is overwritten as it is (no zero fill).
        let mut records = recycler.map(Recycler::take).unwrap_or_default();
        records.resize(n * rec, 0);
        records.par_chunks_mut(rec).enumerate().try_for_each(
            |(j, out)| -> Result<(), DataError> {
                out.copy_from_slice(&split.image(order[start + j] as usize)?);
                Ok(())
            },
        )?;
        let draws = (start..end)
            .map(|pos| sample_draw(cfg, s, epoch, pos))
            .collect();
        Pixels::U8 { records, draws }
    } else {
        let mut x = vec![0f32; n * 3 * c * c];
        x.par_chunks_mut(3 * c * c).enumerate().try_for_each(
            |(j, out)| -> Result<(), DataError> {
                let pos = start + j;
                let d = sample_draw(cfg, s, epoch, pos);
                let img = split.image(order[pos] as usize)?;
                let delta = pca_delta(&st.eigvec, &st.eigval, &d.alpha);
                patch_to_chw(&img, &st.mean, s, c, d.patch, delta, out);
                Ok(())
            },
        )?;
        Pixels::F32(x)
    };
    let labels = order[start..end]
        .iter()
        .map(|&i| split.label(i as usize))
        .collect();
    Ok(Batch {
        pixels,
        labels,
        index: b,
    })
}

/// Iterator over one epoch's training batches, built ahead on a producer thread.
/// If building a batch fails (e.g. an undecodable JPEG record) iteration ends and
/// [`TrainLoader::take_error`] returns the error.
pub struct TrainLoader {
    rx: Option<Receiver<Result<Batch, DataError>>>,
    handle: Option<JoinHandle<()>>,
    error: Option<DataError>,
    remaining: usize,
    recycler: Recycler,
}

impl TrainLoader {
    /// Starts producing batches `start_batch..batches_per_epoch` of `epoch`.
    pub fn new(
        dataset: Arc<Dataset>,
        cfg: LoaderConfig,
        epoch: u64,
        start_batch: usize,
    ) -> Result<TrainLoader, DataError> {
        let len = check(&dataset, &cfg)?;
        let nb = batches_per_epoch(len, cfg.batch_size, cfg.drop_last);
        let (tx, rx) = sync_channel(cfg.prefetch.max(1));
        let first = start_batch.min(nb);
        let recycler = Recycler::default();
        let pool = recycler.clone();
        let handle = std::thread::Builder::new()
            .name("alexnet-loader".into())
            .spawn(move || {
                let order = epoch_order(len, cfg.seed, epoch);
                for b in first..nb {
                    let r = build(&dataset, &cfg, &order, (epoch, b), Some(&pool));
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| DataError::InvalidArg(format!("cannot spawn loader thread: {e}")))?;
        Ok(TrainLoader {
            rx: Some(rx),
            handle: Some(handle),
            error: None,
            remaining: nb - first,
            recycler,
        })
    }

    /// Where the consumer of raw batches hands their record buffers back once it is done with
    /// them (after staging their upload), so that the loader refills them.
    pub fn recycler(&self) -> Recycler {
        self.recycler.clone()
    }

    /// The error that ended iteration early, if any.
    pub fn take_error(&mut self) -> Option<DataError> {
        self.error.take()
    }
}

impl Iterator for TrainLoader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        match self.rx.as_ref()?.recv() {
            Ok(Ok(b)) => {
                self.remaining = self.remaining.saturating_sub(1);
                Some(b)
            }
            Ok(Err(e)) => {
                self.error = Some(e);
                self.rx = None;
                None
            }
            Err(_) => None,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining))
    }
}

impl Drop for TrainLoader {
    fn drop(&mut self) {
        self.rx = None; // unblocks the producer's send
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Evaluation views.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// The central `crop x crop` patch.
    Center,
    /// Ten patches per sample, in this order: top-left, top-right, bottom-left, bottom-right,
    /// center, then the same five mirrored horizontally.
    TenCrop,
}

impl View {
    /// Patches per sample: 1 for `Center`, 10 for `TenCrop`.
    pub fn count(self) -> usize {
        match self {
            View::Center => 1,
            View::TenCrop => 10,
        }
    }
}

/// The patches of `view` for an S x S record, in the documented order.
pub fn view_patches(s: usize, crop: usize, view: View) -> Vec<Patch> {
    let (m, e) = ((s - crop) / 2, s - crop);
    let center = Patch {
        top: m,
        left: m,
        flip: false,
    };
    match view {
        View::Center => vec![center],
        View::TenCrop => {
            let five = [(0, 0), (0, e), (e, 0), (e, e), (m, m)];
            [false, true]
                .iter()
                .flat_map(|&flip| five.map(|(top, left)| Patch { top, left, flip }))
                .collect()
        }
    }
}

/// Checks an evaluation request: `crop` fits the records and every index is in `data`.
fn check_eval(data: &SplitData, s: usize, indices: &[usize], crop: usize) -> Result<(), DataError> {
    if crop == 0 || crop > s {
        return Err(DataError::InvalidArg(format!(
            "eval crop {crop} not in 1..={s}"
        )));
    }
    if let Some(&bad) = indices.iter().find(|&&i| i >= data.len()) {
        return Err(DataError::InvalidArg(format!(
            "index {bad} >= {} records",
            data.len()
        )));
    }
    Ok(())
}

/// The records of `indices` from `split` as stored, `(N, S, S, 3)` u8 HWC, and their labels:
/// what a device that builds the evaluation views itself uploads (the views of [`eval_batch`]
/// are [`view_patches`] of each record with no lighting).
pub fn eval_records(
    dataset: &Dataset,
    split: Split,
    indices: &[usize],
) -> Result<(Vec<u8>, Vec<u32>), DataError> {
    let s = dataset.image_size();
    let data = dataset.split(split);
    check_eval(data, s, indices, s)?;
    let rec = s * s * 3;
    let mut records = vec![0u8; indices.len() * rec];
    records.par_chunks_mut(rec).zip(indices).try_for_each(
        |(out, &i)| -> Result<(), DataError> {
            out.copy_from_slice(&data.image(i)?);
            Ok(())
        },
    )?;
    Ok((records, indices.iter().map(|&i| data.label(i)).collect()))
}

/// Evaluation batch of `indices` from `split`: x is `(N*V, 3, crop, crop)` NCHW f32 (V = 1 for
/// `Center`, 10 for `TenCrop`, the views of sample i at rows `i*V..i*V+V`), mean-subtracted like
/// training; labels has N entries (one per sample, not per view).
pub fn eval_batch(
    dataset: &Dataset,
    split: Split,
    indices: &[usize],
    crop: usize,
    view: View,
) -> Result<(Vec<f32>, Vec<u32>), DataError> {
    let s = dataset.image_size();
    let data = dataset.split(split);
    check_eval(data, s, indices, crop)?;
    let patches = view_patches(s, crop, view);
    let per = 3 * crop * crop * patches.len();
    let mut x = vec![0f32; indices.len() * per];
    let mean = &dataset.stats.mean;
    x.par_chunks_mut(per)
        .zip(indices)
        .try_for_each(|(out, &i)| -> Result<(), DataError> {
            let img = data.image(i)?;
            for (p, o) in patches.iter().zip(out.chunks_exact_mut(3 * crop * crop)) {
                patch_to_chw(&img, mean, s, crop, *p, [0.0; 3], o);
            }
            Ok(())
        })?;
    Ok((x, indices.iter().map(|&i| data.label(i)).collect()))
}
