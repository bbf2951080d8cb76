//! `prepare-data`: source tree (synthetic, ImageNet layout, Fashion-MNIST) -> shards + statistics
//! + `manifest.json` (written last).
//!
//! Shards are planned as fixed groups of source files (`<split>-<k>.shard`); each one is written to a
//! temp file and renamed, then a `<split>-<k>.part.json` sidecar records the inputs' key, its
//! manifest entry and its skips. A rerun after an interruption reuses every shard whose sidecar key
//! matches (resume) and rebuilds the rest; the old `manifest.json` is removed first, so the
//! directory never reads as valid while it is being rewritten.

use std::path::{Path, PathBuf};

use fast_image_resize::Resizer;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::decode;
use crate::error::DataError;
pub use crate::imagenet::read_ground_truth;
use crate::imagenet::{list_files, list_imagenet, Item};
pub use crate::manifest::Storage;
use crate::manifest::{
    ClassEntry, Manifest, ShardInfo, Skipped, SourceInfo, SplitInfo, Splits, StatsFiles,
    FORMAT_VERSION, TOOL_VERSION,
};
use crate::shards::{crc_string, write_atomic, write_shard, Dataset, SplitData};
use crate::stats::{self, MEAN_FILE, STATS_FILE};
use crate::synthetic::{self, SyntheticOptions};

/// Where the images come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The embedded synthetic set, drawn from `seed` into `PrepareOptions::synthetic_dir`.
    Synthetic {
        /// Seed of the drawing.
        seed: u64,
    },
    /// An ILSVRC-2012 tree: `train/<wnid>/*`, and `val/<wnid>/*` or flat `val/` + devkit labels.
    ImageNet {
        /// Root of the tree.
        dir: PathBuf,
        /// Ground truth for a flat val (default: the devkit path under `dir`).
        val_ground_truth: Option<PathBuf>,
    },
    /// Fashion-MNIST IDX files (train = `train-*`, val = `t10k-*`).
    FashionMnist {
        /// Directory holding the IDX files.
        dir: PathBuf,
    },
}

/// Options of [`prepare`].
#[derive(Clone, Debug)]
pub struct PrepareOptions {
    /// Source.
    pub source: Source,
    /// Output directory (manifest + shards + stats).
    pub out: PathBuf,
    /// S: records are S x S x 3 (shorter side to S, central crop).
    pub image_size: u32,
    /// Raw records or q90 JPEGs.
    pub storage: Storage,
    /// Show indicatif progress bars.
    pub progress: bool,
    /// Where the synthetic JPEG tree is written (synthetic source only).
    pub synthetic_dir: PathBuf,
    /// Size of the synthetic set (its `seed` is replaced by `Source::Synthetic::seed`).
    pub synthetic: SyntheticOptions,
    /// Target shard size in bytes (raw record size x records per shard).
    pub shard_bytes: u64,
    /// JPEG quality for `Storage::Jpeg`.
    pub jpeg_quality: u8,
}

impl PrepareOptions {
    /// Defaults for a source: image size 64 (synthetic), 256 (ImageNet), 28 (Fashion-MNIST).
    pub fn new(source: Source, out: PathBuf) -> Self {
        let image_size = match source {
            Source::Synthetic { .. } => 64,
            Source::ImageNet { .. } => 256,
            Source::FashionMnist { .. } => 28,
        };
        PrepareOptions {
            source,
            out,
            image_size,
            storage: Storage::Raw,
            progress: false,
            synthetic_dir: PathBuf::from("data-cache/synthetic-ilsvrc"),
            synthetic: SyntheticOptions::default(),
            shard_bytes: 256 << 20,
            jpeg_quality: 90,
        }
    }
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions::new(
            Source::Synthetic { seed: 0 },
            PathBuf::from("shards/synthetic"),
        )
    }
}

/// Result of [`verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Shards checked.
    pub shards: usize,
    /// Records in them.
    pub records: u64,
    /// Bytes read.
    pub bytes: u64,
}

#[derive(Serialize, Deserialize)]
struct Part {
    key: String,
    info: Option<ShardInfo>,
    skipped: Vec<Skipped>,
}

enum Loader<'a> {
    Files(&'a Path),
    Idx(&'a crate::fashion::IdxSplit),
}

impl Loader<'_> {
    fn load(&self, i: usize, item: &Item, s: u32, rz: &mut Resizer) -> Result<Vec<u8>, String> {
        match self {
            Loader::Files(root) => {
                let bytes =
                    std::fs::read(root.join(&item.rel)).map_err(|e| format!("read: {e}"))?;
                decode::ingest(&bytes, s, rz)
            }
            Loader::Idx(sp) => {
                let n = sp.rows * sp.cols;
                let g = &sp.pixels[i * n..(i + 1) * n];
                let img = decode::Rgb {
                    w: sp.cols as u32,
                    h: sp.rows as u32,
                    px: g.iter().flat_map(|&v| [v, v, v]).collect(),
                };
                if img.w == s && img.h == s {
                    Ok(img.px)
                } else {
                    decode::resize_center(&img, s, rz)
                }
            }
        }
    }
}

fn fnv(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn bar(progress: bool, len: usize, msg: &str) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>6} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(msg.to_string());
    pb
}

/// Ingests one split into shards; returns its manifest entry and skips.
fn ingest_split(
    opts: &PrepareOptions,
    split: &str,
    items: &[Item],
    loader: &Loader<'_>,
) -> Result<(SplitInfo, Vec<Skipped>), DataError> {
    let s = opts.image_size;
    let rec = 4 + 3 * (s as u64).pow(2);
    let per = (opts.shard_bytes / rec).max(1) as usize;
    let pb = bar(opts.progress, items.len(), split);
    let mut info = SplitInfo::default();
    let mut skipped = Vec::new();
    for (k, chunk) in items.chunks(per).enumerate() {
        let file = format!("{split}-{k:05}.shard");
        let part_path = opts.out.join(format!("{split}-{k:05}.part.json"));
        let mut key = format!(
            "{TOOL_VERSION}|{s}|{}|{}|{split}",
            opts.storage, opts.jpeg_quality
        );
        for it in chunk {
            key.push_str(&format!("|{}:{}:{}", it.rel, it.label, it.key));
        }
        let key = fnv(&key);
        if let Some(part) = reusable(&opts.out, &part_path, &file, &key) {
            if let Some(i) = part.info {
                info.count += i.count;
                info.shards.push(i);
            }
            skipped.extend(part.skipped);
            pb.inc(chunk.len() as u64);
            continue;
        }
        let base = k * per;
        let results: Vec<Result<Vec<u8>, String>> = chunk
            .par_iter()
            .enumerate()
            .map_init(Resizer::new, |rz, (j, it)| {
                let px = loader.load(base + j, it, s, rz)?;
                let out = match opts.storage {
                    Storage::Raw => px,
                    Storage::Jpeg => decode::encode_jpeg(&px, s, opts.jpeg_quality)?,
                };
                pb.inc(1);
                Ok(out)
            })
            .collect();
        let mut records = Vec::with_capacity(chunk.len());
        let mut part_skips = Vec::new();
        for (it, r) in chunk.iter().zip(results) {
            match r {
                Ok(b) => records.push((it.label, b)),
                Err(reason) => part_skips.push(Skipped {
                    split: split.to_string(),
                    path: it.rel.clone(),
                    reason,
                }),
            }
        }
        let shard = if records.is_empty() {
            let _ = std::fs::remove_file(opts.out.join(&file));
            None
        } else {
            Some(write_shard(&opts.out, &file, opts.storage, s, &records)?)
        };
        let part = Part {
            key,
            info: shard.clone(),
            skipped: part_skips.clone(),
        };
        let text = serde_json::to_vec(&part).map_err(|e| DataError::json(&part_path, e))?;
        write_atomic(&part_path, &text)?;
        if let Some(i) = shard {
            info.count += i.count;
            info.shards.push(i);
        }
        skipped.extend(part_skips);
    }
    pb.finish_and_clear();
    Ok((info, skipped))
}

fn reusable(out: &Path, part_path: &Path, file: &str, key: &str) -> Option<Part> {
    let part: Part = serde_json::from_slice(&std::fs::read(part_path).ok()?).ok()?;
    if part.key != key {
        return None;
    }
    if let Some(info) = &part.info {
        if info.file != file || !out.join(file).is_file() {
            return None;
        }
    }
    Some(part)
}

fn clean_out(out: &Path) -> Result<(), DataError> {
    std::fs::create_dir_all(out).map_err(|e| DataError::io(out, e))?;
    let m = out.join(crate::manifest::MANIFEST_FILE);
    if m.exists() {
        std::fs::remove_file(&m).map_err(|e| DataError::io(&m, e))?;
    }
    for f in list_files(out)? {
        if f.ends_with(".tmp") {
            let p = out.join(&f);
            std::fs::remove_file(&p).map_err(|e| DataError::io(&p, e))?;
        }
    }
    Ok(())
}

fn remove_stale(out: &Path, keep: &[&ShardInfo]) -> Result<(), DataError> {
    for f in list_files(out)? {
        let ours = (f.starts_with("train-") || f.starts_with("val-"))
            && (f.ends_with(".shard") || f.ends_with(".part.json"));
        let stem = f.trim_end_matches(".part.json").trim_end_matches(".shard");
        let listed = keep
            .iter()
            .any(|s| s.file.trim_end_matches(".shard") == stem);
        if ours && !listed && f.ends_with(".shard") {
            let p = out.join(&f);
            std::fs::remove_file(&p).map_err(|e| DataError::io(&p, e))?;
        }
    }
    Ok(())
}

/// Runs the whole preparation and returns the manifest it wrote.
pub fn prepare(opts: &PrepareOptions) -> Result<Manifest, DataError> {
    if opts.image_size == 0 || opts.image_size > 4096 {
        return Err(DataError::InvalidArg(format!(
            "--image-size {} not in 1..=4096",
            opts.image_size
        )));
    }
    let (classes, train, val, pre_skipped, source, fashion);
    match &opts.source {
        Source::Synthetic { seed } => {
            let so = SyntheticOptions {
                seed: *seed,
                ..opts.synthetic.clone()
            };
            if !synthetic::is_current(&opts.synthetic_dir, &so) {
                synthetic::generate(&opts.synthetic_dir, &so)?;
            }
            let (c, t, v, s, _) = list_imagenet(&opts.synthetic_dir, None)?;
            (classes, train, val, pre_skipped, fashion) = (c, t, v, s, None);
            source = SourceInfo {
                kind: "synthetic".into(),
                path: opts.synthetic_dir.display().to_string(),
                seed: Some(*seed),
                val_ground_truth: Some(synthetic::GROUND_TRUTH.into()),
            };
        }
        Source::ImageNet {
            dir,
            val_ground_truth,
        } => {
            let (c, t, v, s, gt) = list_imagenet(dir, val_ground_truth.as_deref())?;
            (classes, train, val, pre_skipped, fashion) = (c, t, v, s, None);
            source = SourceInfo {
                kind: "imagenet".into(),
                path: dir.display().to_string(),
                seed: None,
                val_ground_truth: gt.map(|p| p.display().to_string()),
            };
        }
        Source::FashionMnist { dir } => {
            if !dir.is_dir() {
                return Err(DataError::SourceMissing { path: dir.clone() });
            }
            let tr = crate::fashion::load(dir, "train")?;
            let te = crate::fashion::load(dir, "t10k")?;
            let items = |sp: &crate::fashion::IdxSplit, name: &str| -> Vec<Item> {
                (0..sp.len())
                    .map(|i| Item {
                        rel: format!("{name}#{i}"),
                        label: sp.labels[i] as u32,
                        key: String::new(),
                    })
                    .collect()
            };
            train = items(&tr, "train-images-idx3-ubyte");
            val = items(&te, "t10k-images-idx3-ubyte");
            classes = (0..10)
                .map(|i| ClassEntry {
                    index: i,
                    wnid: format!("fashion-mnist/{i}"),
                    name: crate::fashion::NAMES[i as usize].into(),
                })
                .collect();
            pre_skipped = Vec::new();
            source = SourceInfo {
                kind: "fashion-mnist".into(),
                path: dir.display().to_string(),
                seed: None,
                val_ground_truth: None,
            };
            fashion = Some((tr, te));
        }
    }
    clean_out(&opts.out)?;
    let root = match &opts.source {
        Source::Synthetic { .. } => opts.synthetic_dir.as_path(),
        Source::ImageNet { dir, .. } | Source::FashionMnist { dir } => dir.as_path(),
    };
    let (tl, vl) = match &fashion {
        Some((tr, te)) => (Loader::Idx(tr), Loader::Idx(te)),
        None => (Loader::Files(root), Loader::Files(root)),
    };
    let (tinfo, mut skipped) = ingest_split(opts, "train", &train, &tl)?;
    let (vinfo, vskipped) = ingest_split(opts, "val", &val, &vl)?;
    skipped.extend(vskipped);
    skipped.extend(pre_skipped);
    if tinfo.count == 0 {
        return Err(DataError::SourceEmpty {
            path: root.to_path_buf(),
            expected: "at least one decodable training image (all were skipped)".into(),
        });
    }
    let keep: Vec<&ShardInfo> = tinfo.shards.iter().chain(&vinfo.shards).collect();
    remove_stale(&opts.out, &keep)?;
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        classes,
        image_size: opts.image_size,
        storage: opts.storage,
        splits: Splits {
            train: tinfo,
            val: vinfo,
        },
        skipped,
        source,
        tool_version: TOOL_VERSION.into(),
        stats: StatsFiles {
            file: STATS_FILE.into(),
            mean: MEAN_FILE.into(),
        },
    };
    let train_data = SplitData::open(&opts.out, &manifest, &manifest.splits.train.shards)?;
    stats::compute_and_save(&train_data, &opts.out)?;
    manifest.save(&opts.out)?;
    Ok(manifest)
}

/// Re-reads every shard and compares its crc32 with the manifest; also re-checks headers, sizes
/// and the statistics files. The first mismatch is returned as an error naming the file.
pub fn verify(out: &Path) -> Result<VerifyReport, DataError> {
    let ds = Dataset::open(out)?;
    let mut rep = VerifyReport {
        shards: 0,
        records: 0,
        bytes: 0,
    };
    let m = &ds.manifest;
    for info in m.splits.train.shards.iter().chain(&m.splits.val.shards) {
        let p = out.join(&info.file);
        let bytes = std::fs::read(&p).map_err(|e| DataError::io(&p, e))?;
        let actual = crc_string(&bytes);
        if actual != info.checksum {
            return Err(DataError::Checksum {
                path: p,
                expected: info.checksum.clone(),
                actual,
            });
        }
        rep.shards += 1;
        rep.records += info.count;
        rep.bytes += bytes.len() as u64;
    }
    Ok(rep)
}

/// Writes a prepared-data directory directly from in-memory records (`(label, S*S*3 u8 HWC)`),
/// with statistics and manifest, as [`prepare`] would. For tests and tools; classes are named
/// `class<i>`.
pub fn from_records(
    out: &Path,
    image_size: u32,
    num_classes: usize,
    train: &[(u32, Vec<u8>)],
    val: &[(u32, Vec<u8>)],
) -> Result<Manifest, DataError> {
    clean_out(out)?;
    let mut splits = Splits::default();
    for (name, recs, info) in [
        ("train", train, &mut splits.train),
        ("val", val, &mut splits.val),
    ] {
        if !recs.is_empty() {
            let sh = write_shard(
                out,
                &format!("{name}-00000.shard"),
                Storage::Raw,
                image_size,
                recs,
            )?;
            info.count = sh.count;
            info.shards.push(sh);
        }
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        classes: (0..num_classes as u32)
            .map(|i| ClassEntry {
                index: i,
                wnid: format!("class{i}"),
                name: format!("class{i}"),
            })
            .collect(),
        image_size,
        storage: Storage::Raw,
        splits,
        skipped: Vec::new(),
        source: SourceInfo {
            kind: "records".into(),
            path: String::new(),
            seed: None,
            val_ground_truth: None,
        },
        tool_version: TOOL_VERSION.into(),
        stats: StatsFiles {
            file: STATS_FILE.into(),
            mean: MEAN_FILE.into(),
        },
    };
    let train_data = SplitData::open(out, &manifest, &manifest.splits.train.shards)?;
    stats::compute_and_save(&train_data, out)?;
    manifest.save(out)?;
    Ok(manifest)
}
