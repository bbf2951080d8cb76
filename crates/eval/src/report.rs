//! `cargo xtask report`: evaluates every model of a run on the validation split (center crop and
//! 10-patch averaging), every ensemble size 1..N, and writes `report.json`, `report.md`,
//! `curves.svg` and `conv1_filters.png` into the run folder.

use crate::average::EnsembleMean;
use crate::curves::{write_curves, ModelCurves};
use crate::filters::{first_conv, write_filter_png};
use crate::markdown::render_markdown;
use alexnet_data::{ClassEntry, Dataset, Split, View};
use alexnet_train::checkpoint::{self, FileInfo};
use alexnet_train::evaluate::{errors, predict_split};
use alexnet_train::{Backend, DeviceChoice, RunConfig};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `report` arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct ReportArgs {
    /// Run folder (written by `cargo xtask train`).
    #[arg(long, default_value = "runs/default")]
    pub run: PathBuf,
    /// Device: auto (CUDA when present), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Network inputs per forward pass (10-patch passes hold batch/10 images).
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Evaluate only the first N validation images (default: all).
    #[arg(long)]
    pub limit: Option<usize>,
    /// No progress bars and no per-model lines (the last `report:` line is still printed).
    #[arg(long)]
    pub quiet: bool,
}

impl Default for ReportArgs {
    fn default() -> Self {
        ReportArgs {
            run: PathBuf::from("runs/default"),
            device: "auto".into(),
            batch: 128,
            limit: None,
            quiet: false,
        }
    }
}

/// Top-1/top-5 errors (fractions) with the center crop and with the 10-patch average.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ViewErrors {
    pub top1_err_center: f64,
    pub top5_err_center: f64,
    pub top1_err_10crop: f64,
    pub top5_err_10crop: f64,
}

/// One trained model's results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelResult {
    /// Ensemble member index k (folder `model-k`).
    pub model: usize,
    #[serde(flatten)]
    pub errors: ViewErrors,
    /// Epochs in its metrics log.
    pub epochs: usize,
    /// Sum of the epochs' `seconds` (training only, without validation).
    pub train_seconds: f64,
    /// Mean of the epochs' `img_per_s`.
    pub img_per_s: Option<f64>,
    /// Mean training loss of the last epoch.
    pub final_train_loss: Option<f64>,
}

/// An ensemble of members `0..size` (softmax averaged).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnsembleResult {
    pub size: usize,
    #[serde(flatten)]
    pub errors: ViewErrors,
}

/// The data a run was evaluated on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// Shard folder.
    pub dir: String,
    /// `synthetic`, `imagenet` or `fashion-mnist` (the manifest's source kind).
    pub source: String,
    /// The source tree the shards were made from.
    pub source_path: String,
    /// Human-readable description.
    pub description: String,
    pub num_classes: usize,
    pub train: usize,
    pub val: usize,
    /// Validation images evaluated (`--limit`).
    pub val_evaluated: usize,
    /// S: stored images are S x S.
    pub image_size: usize,
    /// Network input side (center crop and patches).
    pub crop: usize,
}

/// How the run was trained (from config.json and the metrics logs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingInfo {
    pub models: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub schedule: String,
    pub device: String,
    pub precision: String,
    pub seed: u64,
    pub init_from: Option<String>,
    /// Sum over models of the epochs' `seconds`.
    pub seconds: f64,
    /// Mean of every epoch's `img_per_s` over all models.
    pub img_per_s: Option<f64>,
}

/// Picture file names, relative to the run folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pictures {
    pub curves: String,
    pub conv1_filters: String,
    /// Name of the drawn layer, its weight shape and the number of panels (conv2's groups).
    pub conv1_layer: String,
    pub conv1_shape: Vec<usize>,
    pub conv1_panels: usize,
}

/// Everything in `report.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub run: String,
    /// `--preset` as given at training time, and the network's name.
    pub preset: String,
    pub network: String,
    /// Device of this evaluation.
    pub device: String,
    pub dataset: DatasetInfo,
    /// Classes in label order.
    pub classes: Vec<ClassEntry>,
    pub models: Vec<ModelResult>,
    pub ensembles: Vec<EnsembleResult>,
    pub training: TrainingInfo,
    /// Wall time of this evaluation (all models, both views).
    pub evaluation_seconds: f64,
    pub pictures: Pictures,
    pub tool_version: String,
}

/// File names inside the run folder.
pub const REPORT_JSON: &str = "report.json";
pub const REPORT_MD: &str = "report.md";
pub const CURVES_SVG: &str = "curves.svg";
pub const FILTERS_PNG: &str = "conv1_filters.png";

/// The `final.safetensors` of every model of `cfg`, or a one-line error naming the first missing.
pub fn final_files(run: &Path, cfg: &RunConfig) -> Result<Vec<PathBuf>> {
    if cfg.models == 0 {
        bail!("{}: the run has 0 models", RunConfig::path(run).display());
    }
    (0..cfg.models)
        .map(|k| {
            let f = RunConfig::model_dir(run, k).join("final.safetensors");
            if f.is_file() {
                Ok(f)
            } else {
                bail!(
                    "model-{k} has no final.safetensors ({} is missing): finish training with \
                     `cargo xtask train --resume --run {}`",
                    f.display(),
                    run.display()
                )
            }
        })
        .collect()
}

/// Loads a model's parameters and checks them against the run's network and classes.
pub fn load_model(
    path: &Path,
    cfg: &RunConfig,
    plan: &alexnet_tensor::spec::Plan,
) -> Result<(Vec<f32>, FileInfo)> {
    let loaded = checkpoint::load(path, plan)?;
    let info = FileInfo::from_metadata(path, &loaded.metadata)?;
    if info.num_classes != cfg.num_classes {
        bail!(
            "{}: trained for {} classes, the run's config.json says {}",
            path.display(),
            info.num_classes,
            cfg.num_classes
        );
    }
    Ok((loaded.params, info))
}

/// Opens the run's shards, with an error naming the run when they are missing.
pub fn open_data(run: &Path, cfg: &RunConfig) -> Result<Dataset> {
    let ds = Dataset::open(&cfg.data).with_context(|| {
        format!(
            "run {}: cannot open its data {} (config.json's `data`)",
            run.display(),
            cfg.data.display()
        )
    })?;
    if ds.num_classes() != cfg.num_classes {
        bail!(
            "{}: {} classes, but run {} was trained on {}: wrong data folder",
            cfg.data.display(),
            ds.num_classes(),
            run.display(),
            cfg.num_classes
        );
    }
    Ok(ds)
}

/// Progress bar on stderr, hidden when `quiet` or stderr is not a terminal.
pub(crate) fn progress_bar(quiet: bool, len: u64) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix:>18} [{bar:30}] {pos}/{len} img-views {msg} eta {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

/// Softmax probabilities `(n, classes)` of the first `n` validation images with `view`, the views
/// of each image averaged with [`crate::average::average_views`]; also the labels
/// ([`alexnet_train::evaluate::predict_split`], the trainer's validation, with a progress bar).
pub fn eval_view(
    backend: &mut Backend,
    ds: &Dataset,
    n: usize,
    crop: usize,
    view: View,
    batch: usize,
    pb: &ProgressBar,
) -> Result<(Vec<f32>, Vec<u32>)> {
    let views = view.count() as u64;
    predict_split(backend, ds, Split::Val, crop, view, batch, Some(n), |k| {
        pb.inc(k as u64 * views)
    })
}

fn describe_source(ds: &Dataset) -> String {
    let m = &ds.manifest;
    let c = m.classes.len();
    match m.source.kind.as_str() {
        "synthetic" => format!(
            "the embedded synthetic ILSVRC-layout set ({c} classes of drawn shapes{}, not photographs)",
            m.source.seed.map_or(String::new(), |s| format!(", seed {s}"))
        ),
        "imagenet" if c == 1000 => format!("ImageNet ILSVRC-2012 layout from {}", m.source.path),
        "imagenet" => format!("an ImageNet-layout subset ({c} classes) from {}", m.source.path),
        "fashion-mnist" => "Fashion-MNIST (10 classes of grey 28x28 clothing images)".to_string(),
        other => format!("`{other}` data from {}", m.source.path),
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Evaluates the run and writes the report files; returns the path of `report.md`. Prints
/// per-model lines (unless `--quiet`) and, last, `report: <path>` to stdout.
pub fn report(args: &ReportArgs) -> Result<PathBuf> {
    let run = &args.run;
    let cfg = RunConfig::load(run)?;
    let finals = final_files(run, &cfg)?;
    let ds = open_data(run, &cfg)?;
    let plan = cfg.spec.plan(cfg.num_classes).with_context(|| {
        format!(
            "{}: the network in it cannot be built",
            RunConfig::path(run).display()
        )
    })?;
    let device = DeviceChoice::parse(&args.device)?;
    let crop = cfg.spec.input.crop;
    let batch = args.batch.max(1);
    let mut backend = Backend::new(&plan, device, batch.max(10), "f32")?;
    let val_len = ds.split(Split::Val).len();
    let n = args.limit.map_or(val_len, |l| l.min(val_len));
    if n == 0 {
        bail!(
            "{}: the validation split has no images to evaluate",
            cfg.data.display()
        );
    }
    let classes = ds.num_classes();
    let t0 = Instant::now();
    let pb = progress_bar(args.quiet, (cfg.models * 11 * n) as u64);
    let (mut ens_c, mut ens_t) = (EnsembleMean::new(), EnsembleMean::new());
    let mut labels0: Option<Vec<u32>> = None;
    let mut models = Vec::new();
    let mut ensembles = Vec::new();
    let mut curves = Vec::new();
    let mut conv1 = None;
    let mut train_secs = 0.0;
    let mut all_ips = Vec::new();
    for (k, path) in finals.iter().enumerate() {
        let (params, _info) = load_model(path, &cfg, &plan)?;
        if k == 0 {
            conv1 = Some(first_conv(&plan, &params)?);
        }
        backend.set_params(&params)?;
        pb.set_prefix(format!("model {k} center"));
        let (pc, labels) = eval_view(&mut backend, &ds, n, crop, View::Center, batch, &pb)?;
        pb.set_prefix(format!("model {k} 10-patch"));
        let (pt, _) = eval_view(&mut backend, &ds, n, crop, View::TenCrop, batch, &pb)?;
        let labels = labels0.get_or_insert(labels);
        let errs = |c: &[f32], t: &[f32]| {
            let (a, b) = errors(c, labels, classes);
            let (x, y) = errors(t, labels, classes);
            ViewErrors {
                top1_err_center: a,
                top5_err_center: b,
                top1_err_10crop: x,
                top5_err_10crop: y,
            }
        };
        let e = errs(&pc, &pt);
        ens_c.add(&pc)?;
        ens_t.add(&pt)?;
        let ee = errs(&ens_c.mean(), &ens_t.mean());
        let mc = ModelCurves::read(&RunConfig::model_dir(run, k).join("metrics.jsonl"))?;
        let secs: f64 = mc.epochs.iter().filter_map(|e| e.seconds).sum();
        let ips: Vec<f64> = mc.epochs.iter().filter_map(|e| e.img_per_s).collect();
        train_secs += secs;
        all_ips.extend_from_slice(&ips);
        if !args.quiet {
            pb.suspend(|| {
                println!(
                    "model {k}: top-1/top-5 error {:.2}%/{:.2}% (center), {:.2}%/{:.2}% (10 patches); \
                     ensemble of {}: {:.2}%/{:.2}%, {:.2}%/{:.2}%",
                    100.0 * e.top1_err_center,
                    100.0 * e.top5_err_center,
                    100.0 * e.top1_err_10crop,
                    100.0 * e.top5_err_10crop,
                    k + 1,
                    100.0 * ee.top1_err_center,
                    100.0 * ee.top5_err_center,
                    100.0 * ee.top1_err_10crop,
                    100.0 * ee.top5_err_10crop,
                )
            });
        }
        models.push(ModelResult {
            model: k,
            errors: e,
            epochs: mc.epochs.len(),
            train_seconds: secs,
            img_per_s: mean(&ips),
            final_train_loss: mc.epochs.last().map(|e| e.loss).filter(|l| l.is_finite()),
        });
        ensembles.push(EnsembleResult {
            size: k + 1,
            errors: ee,
        });
        curves.push(mc);
    }
    pb.finish_and_clear();
    let evaluation_seconds = t0.elapsed().as_secs_f64();

    // Pictures.
    let title = format!(
        "{} ({} model{}): {}",
        run.display(),
        cfg.models,
        plural(cfg.models),
        cfg.preset
    );
    write_curves(&run.join(CURVES_SVG), &curves, &title)?;
    // Invariant: models >= 1 (checked by final_files), and model 0 set `conv1`.
    let (layer, shape, weight, groups) = conv1.context("no model was evaluated")?;
    let groups = if groups > 0 && shape[0] % groups == 0 {
        groups
    } else {
        1
    };
    write_filter_png(&run.join(FILTERS_PNG), &weight, shape, groups)?;

    let m = &ds.manifest;
    let rep = Report {
        run: run.display().to_string(),
        preset: cfg.preset.clone(),
        network: cfg.spec.name.clone(),
        device: device.label(),
        dataset: DatasetInfo {
            dir: cfg.data.display().to_string(),
            source: m.source.kind.clone(),
            source_path: m.source.path.clone(),
            description: describe_source(&ds),
            num_classes: classes,
            train: ds.split(Split::Train).len(),
            val: val_len,
            val_evaluated: n,
            image_size: ds.image_size(),
            crop,
        },
        classes: m.classes.clone(),
        models,
        ensembles,
        training: TrainingInfo {
            models: cfg.models,
            epochs: cfg.epochs,
            batch_size: cfg.batch_size,
            lr: cfg.lr,
            schedule: cfg.schedule.clone(),
            device: cfg.device.clone(),
            precision: cfg.precision.clone(),
            seed: cfg.seed,
            init_from: cfg.init_from.as_ref().map(|p| p.display().to_string()),
            seconds: train_secs,
            img_per_s: mean(&all_ips),
        },
        evaluation_seconds,
        pictures: Pictures {
            curves: CURVES_SVG.into(),
            conv1_filters: FILTERS_PNG.into(),
            conv1_layer: layer,
            conv1_shape: shape.to_vec(),
            conv1_panels: groups,
        },
        tool_version: env!("CARGO_PKG_VERSION").into(),
    };
    let json = serde_json::to_string_pretty(&rep)?;
    write_file(&run.join(REPORT_JSON), json.as_bytes())?;
    let md_path = run.join(REPORT_MD);
    write_file(&md_path, render_markdown(&rep).as_bytes())?;
    if !args.quiet {
        if let Some(last) = rep.ensembles.last() {
            println!(
                "evaluated {} model{} on {n} validation images in {evaluation_seconds:.1} s; \
                 ensemble of {}: top-1 error {:.2}% (10 patches)",
                cfg.models,
                plural(cfg.models),
                last.size,
                100.0 * last.errors.top1_err_10crop
            );
        }
    }
    println!("report: {}", md_path.display());
    Ok(md_path)
}

pub(crate) fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
