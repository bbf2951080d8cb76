//! Command-line front ends (clap derive) for `prepare-data` and `bench-data`, shared by the xtask
//! and the main binary.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use fast_image_resize::Resizer;
use rayon::prelude::*;

use crate::loader::{Batch, LoaderConfig, Pixels, Recycler, TrainLoader};
use crate::manifest::Storage;
use crate::prepare::{self, PrepareOptions, Source};
use crate::shards::Dataset;
use crate::synthetic::{self, SyntheticOptions};

fn parse_storage(s: &str) -> Result<Storage, String> {
    match s {
        "raw" => Ok(Storage::Raw),
        "jpeg" => Ok(Storage::Jpeg),
        _ => Err(format!("unknown storage {s:?}: use raw or jpeg")),
    }
}

/// `prepare-data`: no source = the synthetic set.
#[derive(clap::Args, Debug, Clone)]
pub struct PrepareArgs {
    /// ILSVRC-2012 tree: train/WNID/*.JPEG and val/ (class folders, or flat + devkit labels).
    #[arg(long, value_name = "DIR", conflicts_with = "fashion_mnist")]
    pub imagenet: Option<PathBuf>,
    /// Fashion-MNIST IDX directory (e.g. /usr/share/datasets/fashion-mnist).
    #[arg(long, value_name = "DIR")]
    pub fashion_mnist: Option<PathBuf>,
    /// Devkit ground truth for a flat val/ (default:
    /// DIR/ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt).
    #[arg(long, value_name = "FILE")]
    pub val_ground_truth: Option<PathBuf>,
    /// Output directory [default: shards/synthetic, shards/imagenet or shards/fashion-mnist].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// S: shorter side to S, central S x S crop [default: 64 synthetic, 256 imagenet, 28 fashion].
    #[arg(long, value_name = "S")]
    pub image_size: Option<u32>,
    /// Record storage: raw (u8 pixels, mmap) or jpeg (q90 re-encoded).
    #[arg(long, value_name = "raw|jpeg", default_value = "raw", value_parser = parse_storage)]
    pub storage: Storage,
    /// Only re-check the existing output's checksums, headers and sizes.
    #[arg(long)]
    pub verify: bool,
    /// Seed of the synthetic set.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where the synthetic set's JPEG tree is drawn.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "data-cache/synthetic-ilsvrc"
    )]
    pub synthetic_dir: PathBuf,
    /// Synthetic classes.
    #[arg(long, default_value_t = SyntheticOptions::default().classes)]
    pub synthetic_classes: usize,
    /// Synthetic training images per class.
    #[arg(long, default_value_t = SyntheticOptions::default().train_per_class)]
    pub synthetic_train_per_class: usize,
    /// Synthetic validation images per class.
    #[arg(long, default_value_t = SyntheticOptions::default().val_per_class)]
    pub synthetic_val_per_class: usize,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

impl PrepareArgs {
    /// The options this command line stands for.
    pub fn options(&self) -> PrepareOptions {
        let (source, out) = if let Some(d) = &self.imagenet {
            let s = Source::ImageNet {
                dir: d.clone(),
                val_ground_truth: self.val_ground_truth.clone(),
            };
            (s, "shards/imagenet")
        } else if let Some(d) = &self.fashion_mnist {
            (
                Source::FashionMnist { dir: d.clone() },
                "shards/fashion-mnist",
            )
        } else {
            (Source::Synthetic { seed: self.seed }, "shards/synthetic")
        };
        let out = self.out.clone().unwrap_or_else(|| PathBuf::from(out));
        let mut o = PrepareOptions::new(source, out);
        if let Some(s) = self.image_size {
            o.image_size = s;
        }
        o.storage = self.storage;
        o.progress = !self.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
        o.synthetic_dir = self.synthetic_dir.clone();
        o.synthetic = SyntheticOptions {
            seed: self.seed,
            classes: self.synthetic_classes,
            train_per_class: self.synthetic_train_per_class,
            val_per_class: self.synthetic_val_per_class,
            ..SyntheticOptions::default()
        };
        o
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Runs `prepare-data` (or `--verify`) and prints a one-line summary.
pub fn run_prepare(args: &PrepareArgs) -> anyhow::Result<()> {
    let o = args.options();
    let t = Instant::now();
    if args.verify {
        let r = prepare::verify(&o.out)?;
        println!(
            "verified {}: {} shards, {} records, {:.1} MB, all checksums match ({:.1} s)",
            o.out.display(),
            r.shards,
            r.records,
            r.bytes as f64 / 1e6,
            t.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let m = prepare::prepare(&o)?;
    let shards = m.splits.train.shards.len() + m.splits.val.shards.len();
    println!(
        "prepared {} train + {} val images ({} classes, {s}x{s}, {}, {shards} shards, {:.1} MB) \
         into {}; skipped {} (listed in manifest.json); {:.1} s",
        m.splits.train.count,
        m.splits.val.count,
        m.classes.len(),
        m.storage,
        dir_bytes(&o.out) as f64 / 1e6,
        o.out.display(),
        m.skipped.len(),
        t.elapsed().as_secs_f64(),
        s = m.image_size,
    );
    for sk in m.skipped.iter().take(10) {
        eprintln!("  skipped {}/{}: {}", sk.split, sk.path, sk.reason);
    }
    Ok(())
}

/// `bench-data`: ingestion and loader throughput.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchDataArgs {
    /// Directory of photos (searched recursively for .jpg/.jpeg/.png) [default: the synthetic set].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Where the synthetic set is (drawn there if missing).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "data-cache/synthetic-ilsvrc"
    )]
    pub synthetic_dir: PathBuf,
    /// Ingestion output size S.
    #[arg(long, default_value_t = 256)]
    pub image_size: u32,
    /// At most this many files for the ingestion benchmark.
    #[arg(long, default_value_t = 2000)]
    pub max_files: usize,
    /// Prepared shards for the loader benchmark (skipped if absent).
    #[arg(long, value_name = "DIR", default_value = "shards/synthetic")]
    pub data: PathBuf,
    /// Loader crop S'.
    #[arg(long, default_value_t = 56)]
    pub crop: usize,
    /// Loader batch size.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
}

fn find_images(dir: &Path, out: &mut Vec<PathBuf>, max: usize) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if out.len() >= max {
            return;
        }
        if p.is_dir() {
            find_images(&p, out, max);
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
        {
            out.push(p);
        }
    }
}

fn rate(n: usize, t: Instant) -> f64 {
    n as f64 / t.elapsed().as_secs_f64().max(1e-9)
}

/// The loader's img/s (per core, all threads): one epoch on all threads (its producer thread
/// and rayon's pool), and up to 20 batches built on `one` thread. A raw batch's record buffer
/// is handed back, as the trainer hands it back once the upload is staged.
fn loader_rates(
    ds: &Arc<Dataset>,
    cfg: &LoaderConfig,
    one: &rayon::ThreadPool,
) -> anyhow::Result<(f64, f64)> {
    let give = |recycler: &Recycler, b: Batch| {
        let n = b.labels.len();
        if let Pixels::U8 { records, .. } = b.pixels {
            recycler.give(records);
        }
        n
    };
    let t = Instant::now();
    let loader = TrainLoader::new(ds.clone(), cfg.clone(), 0, 0)?;
    let recycler = loader.recycler();
    let n: usize = loader.map(|b| give(&recycler, b)).sum();
    let all = rate(n, t);
    let t = Instant::now();
    let mut n1 = 0;
    let recycler = Recycler::default();
    one.install(|| -> anyhow::Result<()> {
        for b in 0..crate::loader::batches_per_epoch(n, cfg.batch_size, true).min(20) {
            let batch = crate::loader::train_batch_recycled(ds, cfg, (1, b), &recycler)?;
            n1 += give(&recycler, batch);
        }
        Ok(())
    })?;
    Ok((rate(n1, t), all))
}

/// Measures ingestion (decode + resize + crop) per core and on all cores, and the loader.
pub fn run_bench_data(args: &BenchDataArgs) -> anyhow::Result<()> {
    let root = match &args.dir {
        Some(d) => d.clone(),
        None => {
            let so = SyntheticOptions::default();
            if !synthetic::is_current(&args.synthetic_dir, &so) {
                synthetic::generate(&args.synthetic_dir, &so)?;
            }
            args.synthetic_dir.clone()
        }
    };
    let mut files = Vec::new();
    find_images(&root, &mut files, args.max_files);
    anyhow::ensure!(
        !files.is_empty(),
        "no .jpg/.jpeg/.png under {}: pass --dir DIR",
        root.display()
    );
    let blobs: Vec<Vec<u8>> = files
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .collect::<anyhow::Result<_>>()?;
    let pixels: u64 = blobs
        .iter()
        .filter_map(|b| crate::decode::decode_rgb(b).ok())
        .map(|i| i.w as u64 * i.h as u64)
        .sum();
    let s = args.image_size;
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    // Per core: the median of three passes (one pass over a small folder is noisy).
    let mut ok = 0;
    let mut passes: Vec<f64> = (0..3)
        .map(|_| {
            let t = Instant::now();
            one.install(|| {
                let mut rz = Resizer::new();
                ok = blobs
                    .iter()
                    .filter(|b| crate::decode::ingest(b, s, &mut rz).is_ok())
                    .count();
            });
            rate(blobs.len(), t)
        })
        .collect();
    passes.sort_by(f64::total_cmp);
    let per_core = passes[1];
    let t = Instant::now();
    blobs
        .par_iter()
        .map_init(Resizer::new, |rz, b| {
            crate::decode::ingest(b, s, rz).is_ok()
        })
        .count();
    let all = rate(blobs.len(), t);
    println!(
        "ingestion (decode+resize+crop to {s}x{s}) of {} files ({ok} decodable, mean {:.0} px) \
         from {}: {per_core:.0} img/s per core, {all:.0} img/s on {} threads",
        blobs.len(),
        pixels as f64 / ok.max(1) as f64,
        root.display(),
        rayon::current_num_threads()
    );
    match Dataset::open(&args.data) {
        Ok(ds) => {
            let ds = Arc::new(ds);
            let cfg = LoaderConfig {
                batch_size: args.batch_size,
                crop: args.crop,
                ..LoaderConfig::default()
            };
            let (per_core, all) = loader_rates(&ds, &cfg, &one)?;
            println!(
                "loader (crop {c} of {}, flip, PCA, mean-subtract, f32 NCHW, batch {}): \
                 {per_core:.0} img/s per core, {all:.0} img/s on {} threads",
                ds.image_size(),
                cfg.batch_size,
                rayon::current_num_threads(),
                c = cfg.crop,
            );
            // What a device that augments itself takes (the CUDA trainer): the stored records
            // gathered into one batch, and each sample's draws.
            let raw = LoaderConfig { raw: true, ..cfg };
            let (per_core, all) = loader_rates(&ds, &raw, &one)?;
            let s = ds.image_size();
            println!(
                "loader, raw (u8 {s}x{s} records gathered + draws, for a device that augments, \
                 batch {}): {per_core:.0} img/s per core, {all:.0} img/s on {} threads",
                raw.batch_size,
                rayon::current_num_threads(),
            );
        }
        Err(e) => println!("loader: skipped ({e})"),
    }
    Ok(())
}
