//! `cargo xtask all`: the main job on the embedded default, in order, each step skipped when its
//! output is already there and current:
//! 1. prepare-data: the synthetic set into `shards/synthetic` (skipped when its manifest exists);
//! 2. train: the small preset ensemble into `runs/default` (resumed when a run is there but not
//!    finished; skipped when it is finished on the same data);
//! 3. report: `runs/default/report.md` (skipped when newer than every trained model).

use alexnet_data::cli::PrepareArgs;
use alexnet_data::Manifest;
use alexnet_train::cli::{run_finished, TrainArgs, DEFAULT_DATA, DEFAULT_RUN};
use alexnet_train::RunConfig;
use anyhow::Result;
use clap::Parser;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// `cargo xtask all` arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct AllArgs {
    /// auto (CUDA when present, else CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Hide progress bars.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Parser)]
struct PrepareDefaults {
    #[command(flatten)]
    args: PrepareArgs,
}

#[derive(Parser)]
struct TrainDefaults {
    #[command(flatten)]
    args: TrainArgs,
}

#[derive(Parser)]
struct ReportDefaults {
    #[command(flatten)]
    args: alexnet_eval::ReportArgs,
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Runs the three steps; returns the report path.
pub fn run_all(a: &AllArgs) -> Result<PathBuf> {
    let t = std::time::Instant::now();
    let data = PathBuf::from(DEFAULT_DATA);
    let run = PathBuf::from(DEFAULT_RUN);
    // 1. prepare-data
    let manifest = match Manifest::load(&data) {
        Ok(m) => {
            println!(
                "all: {} is prepared (delete it to redo), skipping prepare-data",
                data.display()
            );
            m
        }
        Err(_) => {
            let mut p = PrepareDefaults::parse_from(["prepare-data"]).args;
            p.quiet = a.quiet;
            alexnet_data::cli::run_prepare(&p)?;
            Manifest::load(&data)?
        }
    };
    // 2. train
    let mut tr = TrainDefaults::parse_from(["train"]).args;
    tr.device = a.device.clone();
    tr.quiet = a.quiet;
    match RunConfig::load(&run) {
        Ok(cfg) if cfg.data_manifest_checksum != manifest.checksum() => anyhow::bail!(
            "{} was trained on other data than {}: move it away to train again",
            run.display(),
            data.display()
        ),
        Ok(_) if run_finished(&run) => {
            println!("all: {} is trained, skipping train", run.display())
        }
        Ok(_) => {
            println!("all: resuming the unfinished run in {}", run.display());
            tr.resume = true;
            alexnet_train::cli::run_train(&tr)?;
        }
        Err(_) => {
            alexnet_train::cli::run_train(&tr)?;
        }
    }
    // 3. report
    let report = run.join("report.md");
    let cfg = RunConfig::load(&run)?;
    let newest_model = (0..cfg.models)
        .filter_map(|k| modified(&RunConfig::model_dir(&run, k).join("final.safetensors")))
        .max();
    let current = match (modified(&report), newest_model) {
        (Some(r), Some(m)) => r >= m,
        _ => false,
    };
    let path = if current {
        println!("all: {} is current, skipping report", report.display());
        println!("report: {}", report.display());
        report
    } else {
        let mut r = ReportDefaults::parse_from(["report"]).args;
        r.device = a.device.clone();
        r.quiet = a.quiet;
        alexnet_eval::report(&r)?
    };
    eprintln!("all: done in {:.0} s", t.elapsed().as_secs_f64());
    Ok(path)
}
