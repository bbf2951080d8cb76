//! The training loop of one ensemble member: epochs of shuffled, augmented batches, SGD with the
//! paper's rule, validation error per epoch driving the schedule, metrics, checkpoints and exact
//! resume.

use crate::backend::{Backend, DeviceChoice};
use crate::checkpoint::{self, FileInfo, TrainState};
use crate::config::RunConfig;
use crate::evaluate::{errors, predict_split};
use crate::metrics::{append_jsonl, topk_misses};
use crate::schedule::Schedule;
use alexnet_data::{
    batches_per_epoch, Batch, Dataset, LoaderConfig, Pixels, Split, TrainLoader, View,
};
use alexnet_layers::Model;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Options that are not part of the run's identity.
pub struct TrainOptions {
    pub device: DeviceChoice,
    /// Show progress bars.
    pub progress: bool,
    /// Stop after this many steps of this invocation (tests use it to simulate a kill).
    pub stop_after_steps: Option<u64>,
    /// On a device that augments itself (CUDA): take the CPU loader's f32 batches instead of
    /// uploading u8 records (the same numbers; for comparison and debugging).
    pub cpu_augment: bool,
}

/// What happened to one model.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Finished,
    AlreadyFinished,
    Stopped,
}

fn state_metadata(
    info: &FileInfo,
    state: &TrainState,
) -> Result<std::collections::HashMap<String, String>> {
    let mut i = info.clone();
    i.state = Some(state.clone());
    i.to_metadata()
}

fn loader_config(cfg: &RunConfig, seed: u64, raw: bool) -> LoaderConfig {
    LoaderConfig {
        raw,
        batch_size: cfg.batch_size,
        crop: cfg.spec.input.crop,
        seed,
        flip: cfg.flip,
        pca_std: cfg.pca_std,
        drop_last: true,
        prefetch: 3,
        subset: cfg.train_subset,
    }
}

fn bar(progress: bool, len: u64, prefix: String) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")
            // Invariant: the template above is a valid indicatif template.
            .expect("valid progress template")
            .progress_chars("=> "),
    );
    pb.set_prefix(prefix);
    pb
}

/// Trains (or resumes) ensemble member `k` of the run in `run`.
pub fn train_model(
    run: &Path,
    cfg: &RunConfig,
    k: usize,
    dataset: &Arc<Dataset>,
    opts: &TrainOptions,
) -> Result<Outcome> {
    let dir = RunConfig::model_dir(run, k);
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let ckpt = dir.join("checkpoint.safetensors");
    let metrics = dir.join("metrics.jsonl");
    let plan = cfg.spec.plan(cfg.num_classes)?;
    let classes: Vec<String> = dataset
        .manifest
        .classes
        .iter()
        .map(|c| c.name.clone())
        .collect();
    let info = FileInfo::new(&cfg.spec, classes);
    let mut backend = Backend::new(&plan, opts.device, cfg.batch_size, &cfg.precision)?;
    if let Some(c) = &cfg.conv {
        backend.set_conv(c)?;
    }
    if let Some(a) = &cfg.cudnn_algo {
        backend.set_cudnn_algo(a)?;
    }
    // Timed cuDNN algorithms and convolutions: the picks of the run's earlier processes
    // (exact resume).
    backend.pin_timed_picks(run)?;
    // Raw u8 batches when the device augments (CUDA): a third of the f32 batch's bytes to
    // upload, and the crop, flip, lighting and mean run on the device.
    let raw = backend.augments_on_device() && !opts.cpu_augment;
    if raw {
        backend.set_augment_stats(&dataset.stats, dataset.image_size())?;
    }

    let mut state = if ckpt.exists() {
        let loaded = checkpoint::load(&ckpt, &plan)?;
        let fi = FileInfo::from_metadata(&ckpt, &loaded.metadata)?;
        let state = fi.state.with_context(|| {
            format!(
                "{}: no training state; delete it to start model {k} again",
                ckpt.display()
            )
        })?;
        backend.set_params(&loaded.params)?;
        let v = loaded
            .momentum
            .with_context(|| format!("{}: no momentum tensors", ckpt.display()))?;
        backend.set_momentum(&v)?;
        // Drop log lines written after this checkpoint: the resumed run writes them again.
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&metrics) {
            f.set_len(state.metrics_len)
                .with_context(|| format!("{}: cannot truncate", metrics.display()))?;
        }
        state
    } else {
        let seed = cfg.model_seed(k);
        let mut m: Model<f32> = Model::new(plan.clone());
        m.init(seed);
        if let Some(src) = &cfg.init_from {
            let (copied, fresh) = checkpoint::load_matching(src, &plan, &mut m.params)?;
            eprintln!(
                "model {k}: fine-tuning from {}: {} tensors loaded, re-initialised: {}",
                src.display(),
                copied.len(),
                if fresh.is_empty() {
                    "none".to_string()
                } else {
                    fresh.join(", ")
                }
            );
        }
        backend.set_params(&m.params)?;
        backend.set_momentum(&m.momentum)?;
        let _ = std::fs::remove_file(&metrics);
        TrainState {
            seed,
            epoch: 0,
            next_batch: 0,
            step: 0,
            schedule: Schedule::parse(&cfg.schedule, cfg.lr)?,
            epoch_loss_sum: 0.0,
            epoch_top1_miss: 0,
            epoch_top5_miss: 0,
            epoch_seen: 0,
            train_seconds: 0.0,
            metrics_len: 0,
            finished: false,
        }
    };
    if state.finished && dir.join("final.safetensors").exists() {
        return Ok(Outcome::AlreadyFinished);
    }

    let train_len = cfg
        .train_subset
        .map_or(dataset.split(Split::Train).len(), |s| {
            s.min(dataset.split(Split::Train).len())
        });
    let nb = batches_per_epoch(train_len, cfg.batch_size, true);
    if nb == 0 {
        bail!(
            "{} training images are fewer than one batch of {}: lower --batch-size",
            train_len,
            cfg.batch_size
        );
    }
    let classes_n = cfg.num_classes;
    let mut steps_this_run = 0u64;
    let save_ckpt = |backend: &Backend, state: &mut TrainState| -> Result<()> {
        backend.record_timed_picks(run)?;
        state.metrics_len = std::fs::metadata(&metrics).map(|m| m.len()).unwrap_or(0);
        let params = backend.params()?;
        let v = backend.momentum()?;
        checkpoint::save(
            &ckpt,
            &plan,
            &params,
            Some(&v),
            &state_metadata(&info, state)?,
        )
    };

    while state.epoch < cfg.epochs {
        let epoch = state.epoch;
        let pb = bar(
            opts.progress,
            nb as u64,
            format!("model {k} epoch {}/{}", epoch + 1, cfg.epochs),
        );
        pb.set_position(state.next_batch as u64);
        let mut loader = TrainLoader::new(
            dataset.clone(),
            loader_config(cfg, state.seed, raw),
            epoch as u64,
            state.next_batch,
        )?;
        let t_epoch = Instant::now();
        let mut imgs_epoch = 0usize;
        // The raw path stages the next batch's upload while the device computes this one, and
        // hands each batch's record buffer back to the loader once its upload is staged.
        let recycler = loader.recycler();
        let mut batches = loader.by_ref().peekable();
        let mut staged = None;
        while let Some(batch) = batches.next() {
            let t = Instant::now();
            let lr = state.schedule.lr;
            let step_seed = alexnet_tensor::rng::Rng::derive(state.seed, &[state.step]).next_u64();
            let hyper = (lr, cfg.momentum, cfg.weight_decay);
            let (loss, logits) = match &batch.pixels {
                Pixels::F32(x) => backend.train_step(x, &batch.labels, step_seed, hyper)?,
                Pixels::U8 { records, draws } => {
                    let current = match staged.take() {
                        Some(st) => st,
                        None => backend.stage_u8(records)?,
                    };
                    let next = match batches.peek() {
                        Some(Batch {
                            pixels: Pixels::U8 { records, .. },
                            ..
                        }) => Some(records.as_slice()),
                        _ => None,
                    };
                    let (loss, next) = backend.train_step_staged(
                        current,
                        dataset.image_size(),
                        draws,
                        &dataset.stats,
                        &batch.labels,
                        step_seed,
                        hyper,
                        next,
                    )?;
                    staged = next;
                    (loss, Vec::new())
                }
            };
            if !loss.is_finite() {
                pb.abandon();
                bail!(
                    "model {k}: the loss became {loss} at epoch {} step {}; stopped without \
                     saving, the last good checkpoint is {} (lower --lr and --resume)",
                    epoch + 1,
                    state.step,
                    ckpt.display()
                );
            }
            let n = batch.labels.len();
            state.epoch_loss_sum += loss as f64 * n as f64;
            state.epoch_seen += n as u64;
            if !logits.is_empty() {
                state.epoch_top1_miss += topk_misses(&logits, &batch.labels, classes_n, 1) as u64;
                state.epoch_top5_miss +=
                    topk_misses(&logits, &batch.labels, classes_n, 5.min(classes_n)) as u64;
            }
            state.step += 1;
            state.next_batch = batch.index + 1;
            if let Pixels::U8 { records, .. } = batch.pixels {
                // Its upload was staged (copied to page-locked memory) before this step ran.
                recycler.give(records);
            }
            steps_this_run += 1;
            imgs_epoch += n;
            let ips = n as f64 / t.elapsed().as_secs_f64().max(1e-9);
            pb.set_position(state.next_batch as u64);
            pb.set_message(format!("loss {loss:.4} lr {lr:.1e} {ips:.0} img/s"));
            if state.step % cfg.log_every == 0 {
                append_jsonl(
                    &metrics,
                    &json!({"kind": "step", "epoch": epoch + 1, "step": state.step,
                            "loss": loss, "lr": lr, "img_per_s": ips}),
                )?;
            }
            if state.step % cfg.checkpoint_every == 0 {
                save_ckpt(&backend, &mut state)?;
            }
            if opts.stop_after_steps.is_some_and(|s| steps_this_run >= s) {
                pb.abandon_with_message("stopped");
                return Ok(Outcome::Stopped);
            }
        }
        if let Some(e) = loader.take_error() {
            pb.abandon();
            return Err(e).context(format!("model {k}: reading the training data"));
        }
        let seconds = t_epoch.elapsed().as_secs_f64();
        state.train_seconds += seconds;
        pb.set_message("validating");
        let (probs, labels) = predict_split(
            &mut backend,
            dataset,
            Split::Val,
            cfg.spec.input.crop,
            View::Center,
            cfg.batch_size,
            None,
            |_| {},
        )?;
        let (v1, v5) = errors(&probs, &labels, classes_n);
        let seen = state.epoch_seen.max(1) as f64;
        let train_loss = state.epoch_loss_sum / seen;
        let lr = state.schedule.lr;
        // The CUDA path does not download training logits, so it has no training error.
        let (t1, t5) = if opts.device == DeviceChoice::Cpu {
            (
                Some(state.epoch_top1_miss as f64 / seen),
                Some(state.epoch_top5_miss as f64 / seen),
            )
        } else {
            (None, None)
        };
        let ips = imgs_epoch as f64 / seconds.max(1e-9);
        append_jsonl(
            &metrics,
            &json!({"kind": "epoch", "epoch": epoch + 1, "step": state.step, "loss": train_loss,
                    "lr": lr, "img_per_s": ips, "train_top1_err": t1, "train_top5_err": t5,
                    "val_top1_err": v1, "val_top5_err": v5, "seconds": seconds}),
        )?;
        let next_lr = state.schedule.end_epoch(epoch + 1, v1);
        pb.finish_and_clear();
        if opts.progress {
            eprintln!(
                "model {k} epoch {}/{}: loss {train_loss:.4}, train top-1 err {}, val top-1/top-5 err {:.1}%/{:.1}%, lr {lr:.1e}{}, {ips:.0} img/s, {seconds:.0} s",
                epoch + 1,
                cfg.epochs,
                t1.map_or("n/a".into(), |v| format!("{:.1}%", v * 100.0)),
                v1 * 100.0,
                v5 * 100.0,
                if next_lr != lr { format!(" -> {next_lr:.1e}") } else { String::new() },
            );
        }
        state.epoch += 1;
        state.next_batch = 0;
        state.epoch_loss_sum = 0.0;
        state.epoch_top1_miss = 0;
        state.epoch_top5_miss = 0;
        state.epoch_seen = 0;
        save_ckpt(&backend, &mut state)?;
    }
    state.finished = true;
    let params = backend.params()?;
    checkpoint::save(
        &dir.join("final.safetensors"),
        &plan,
        &params,
        None,
        &info.to_metadata()?,
    )?;
    save_ckpt(&backend, &mut state)?;
    Ok(Outcome::Finished)
}
