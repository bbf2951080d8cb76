//! `cargo xtask predict IMAGE...`: the top-N classes of image files from a trained run.
//!
//! Each image goes through the same preprocessing as ingestion (`alexnet_data::decode::ingest`:
//! decode any JPEG/PNG, grey/CMYK/RGBA to RGB, shorter side to S, central S x S crop), then the
//! paper's test-time averaging: the 10 patches (4 corners + center, and their mirror images) of
//! the network's input size, minus the training mean image, exactly like `report`'s 10-patch view.
//! Every model of the run scores the patches; the softmax is averaged over the 10 patches and
//! then over the models (the ensemble).

use crate::average::{average_views, top_k, EnsembleMean};
use crate::report::{final_files, load_model};
use alexnet_data::augment::patch_to_chw;
use alexnet_data::decode::ingest;
use alexnet_data::loader::view_patches;
use alexnet_data::{Manifest, Stats, View};
use alexnet_layers::loss::softmax_rows;
use alexnet_train::{Backend, DeviceChoice, RunConfig};
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `predict` arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct PredictArgs {
    /// Image files (JPEG or PNG; any size, grey or colour).
    #[arg(required = true, num_args = 1..)]
    pub images: Vec<PathBuf>,
    /// Run folder (written by `cargo xtask train`).
    #[arg(long, default_value = "runs/default")]
    pub run: PathBuf,
    /// Device: auto (CUDA when present), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Classes to show per image.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
}

/// One image's best classes.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    pub image: PathBuf,
    /// (label, wnid, name, probability), best first.
    pub top: Vec<(usize, String, String, f32)>,
}

/// Images per forward pass (10 patches each).
const IMAGES_PER_PASS: usize = 12;

/// Reads one image and applies the ingestion preprocessing (S x S x 3 u8 HWC).
pub fn load_image(path: &Path, s: usize) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("{}: cannot read the image file", path.display()))?;
    let mut resizer = fast_image_resize::Resizer::new();
    ingest(&bytes, s as u32, &mut resizer)
        .map_err(|e| anyhow::anyhow!("{}: not a usable image: {e}", path.display()))
}

/// Runs [`predict`], writing its lines to `out`; returns the predictions.
pub fn predict_to(args: &PredictArgs, out: &mut dyn Write) -> Result<Vec<Prediction>> {
    if args.images.is_empty() {
        bail!("predict: give at least one image file");
    }
    let run = &args.run;
    let cfg = RunConfig::load(run)?;
    let finals = final_files(run, &cfg)?;
    let manifest = Manifest::load(&cfg.data).with_context(|| {
        format!(
            "run {}: cannot open its data {} (needed for the mean image)",
            run.display(),
            cfg.data.display()
        )
    })?;
    let stats = Stats::load(&cfg.data, &manifest)
        .with_context(|| format!("run {}: reading its data statistics", run.display()))?;
    let s = manifest.image_size as usize;
    let crop = cfg.spec.input.crop;
    if crop > s {
        bail!(
            "{}: crop {crop} is larger than the data's image size {s}",
            cfg.data.display()
        );
    }
    // Decode everything first: a bad file fails before any model is loaded.
    let images: Vec<Vec<u8>> = args
        .images
        .iter()
        .map(|p| load_image(p, s))
        .collect::<Result<_>>()?;

    let classes = cfg.num_classes;
    let plan = cfg.spec.plan(classes).with_context(|| {
        format!(
            "{}: the network in it cannot be built",
            RunConfig::path(run).display()
        )
    })?;
    let device = DeviceChoice::parse(&args.device)?;
    let patches = view_patches(s, crop, View::TenCrop);
    let views = patches.len();
    let mut backend = Backend::new(&plan, device, IMAGES_PER_PASS * views, "f32")?;
    let per_view = 3 * crop * crop;
    let mut x = vec![0f32; images.len() * views * per_view];
    for (img, dst) in images.iter().zip(x.chunks_exact_mut(views * per_view)) {
        for (p, o) in patches.iter().zip(dst.chunks_exact_mut(per_view)) {
            patch_to_chw(img, &stats.mean, s, crop, *p, [0.0; 3], o);
        }
    }
    let mut ens = EnsembleMean::new();
    let mut names: Vec<String> = Vec::new();
    for path in &finals {
        let (params, info) = load_model(path, &cfg, &plan)?;
        if names.is_empty() {
            names = info.classes;
        }
        backend.set_params(&params)?;
        let mut probs = Vec::with_capacity(images.len() * classes);
        for chunk in x.chunks(IMAGES_PER_PASS * views * per_view) {
            let n = chunk.len() / per_view;
            let logits = backend.predict(chunk, n)?;
            probs.extend(average_views(
                &softmax_rows(&logits, classes),
                views,
                classes,
            ));
        }
        ens.add(&probs)?;
    }
    let probs = ens.mean();
    let mut preds = Vec::new();
    let write = |out: &mut dyn Write, line: String| -> Result<()> {
        writeln!(out, "{line}").context("cannot write the predictions")
    };
    for (i, path) in args.images.iter().enumerate() {
        let row = &probs[i * classes..(i + 1) * classes];
        let top: Vec<(usize, String, String, f32)> = top_k(row, args.top.max(1))
            .into_iter()
            .map(|(c, p)| {
                let wnid = manifest
                    .classes
                    .get(c)
                    .map_or(String::new(), |e| e.wnid.clone());
                let name = names
                    .get(c)
                    .cloned()
                    .or_else(|| manifest.classes.get(c).map(|e| e.name.clone()))
                    .unwrap_or_else(|| format!("class {c}"));
                (c, wnid, name, p)
            })
            .collect();
        write(
            out,
            format!(
                "{} ({} model{}, 10-patch average):",
                path.display(),
                finals.len(),
                crate::report::plural(finals.len())
            ),
        )?;
        for (r, (_, wnid, name, p)) in top.iter().enumerate() {
            write(
                out,
                format!("  {}. {:6.2}%  {name} ({wnid})", r + 1, 100.0 * p),
            )?;
        }
        preds.push(Prediction {
            image: path.clone(),
            top,
        });
    }
    Ok(preds)
}

/// Prints the top-N classes (names and probabilities) of each image from the run's ensemble.
pub fn predict(args: &PredictArgs) -> Result<()> {
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    predict_to(args, &mut lock)?;
    Ok(())
}
