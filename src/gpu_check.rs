//! `cargo xtask gpu-check` and the CUDA branch of `cargo xtask bench`.
//!
//! [`gpu_check`] is one prepared command for a GPU machine (a few minutes at most):
//!
//! 1. every parity fixture through the CUDA ops in f32 ([`alexnet_cuda::parity::run_fixture`]),
//!    judged at the fixture's own tolerance (`pca_lighting` is "n/a": its delta is computed on
//!    the host, the augment kernel only adds it);
//! 2. the whole model, CUDA against the CPU reference ([`alexnet_layers::Model`]), on the
//!    `small` preset (batch 8, 10 classes) and the `paper` preset (batch 4, 1000 classes): the
//!    same initial parameters on both, the logits in evaluation mode, the loss and every
//!    parameter gradient in training mode with the same dropout seed (the per-layer masks are
//!    identical by construction: `layer_seed` and the `hash >= p` rule are shared), then 5 SGD
//!    steps from the same start on fresh batches: the 5 losses, the final parameters and the
//!    total update (final - initial);
//! 3. the same logits / loss / gradients with TF32 and bf16 GEMMs against the f32 CPU reference;
//! 4. `N passed, M failed` over all of the above;
//! 5. a benchmark table (preset paper, synthetic input, f32 / TF32 / bf16 at batch 128 and bf16
//!    at 256) with the fraction of the compute limit reached.
//!
//! Bounds (relative L2 error against the CPU's f32 result):
//!
//! - f32 logits, losses and parameters: 1e-4 (the fixtures' strict bound).
//! - f32 gradients and SGD updates: 1e-4 on `small`, 1e-3 on `paper`. Both sides are f32 with
//!   different summation orders (cuBLAS vs the CPU GEMM) and the reference is not f64, so the
//!   difference carries both sides' rounding; at paper size the weight gradients sum tens of
//!   thousands of mixed-sign products (conv1: batch x 55 x 55 positions; fc6: 9216-wide rows)
//!   whose cancellation amplifies that rounding. A single ReLU on/off or max-pool argmax
//!   decision flipped by rounding (a pre-activation within ~1e-7 of zero, or two pool inputs
//!   within ~1e-7 of each other) moves one whole gradient term and can alone give ~1e-3 in an
//!   early layer's weight gradient: the check prints how many ReLU decisions differ, so such a
//!   FAIL can be told from a bug (a bug gives errors of order 1 in many tensors).
//! - TF32 and bf16: [`Precision::tolerance`] (5e-3 and 3e-2) for logits, loss and gradients.
//!
//! [`bench_cuda`] times training and inference on one GPU (see its docs).

use crate::bench::BenchResult;
use crate::parity::{fixture_files, CaseResult};
use crate::presets::load_preset;
use alexnet_cuda::ops::gemm::{gemm, MatDesc};
use alexnet_cuda::parity::{applicable, run_loaded};
use alexnet_cuda::{
    bench_train_step, device_count, driver_available, AugmentSample, CudaError, Gpu, GpuNet,
    Precision,
};
use alexnet_data::augment::pca_delta;
use alexnet_layers::{Mode, Model};
use alexnet_tensor::fixture::Fixture;
use alexnet_tensor::rel_l2;
use alexnet_tensor::rng::Rng;
use alexnet_tensor::spec::{Op, Plan};
use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// The one line printed by [`gpu_check`] on a machine without a CUDA device.
pub const NO_DEVICE_LINE: &str =
    "gpu-check: no CUDA device found; nothing to check (CPU parity: cargo xtask parity)";

/// FLOPs of one trained image of the paper network (forward + backward), the throughput limit.
pub const FLOP_PER_TRAINED_IMAGE: f64 = 4.35e9;

/// Dropout seed of the training-mode comparison.
const DROPOUT_SEED: u64 = 0x00D0_5EED;
/// Parameter initialisation seed of the model comparison.
const INIT_SEED: u64 = 2012;
/// SGD hyper-parameters of the 5-step comparison (the paper's).
const SGD: (f32, f32, f32) = (0.01, 0.9, 5e-4);
/// SGD steps compared.
const SGD_STEPS: u64 = 5;
/// Bound on logits, losses and parameters in f32.
const F32_BOUND: f64 = 1e-4;

/// Timed steps per row of the benchmark table.
const BENCH_STEPS: usize = 20;
/// GEMM size used to measure the card's peak per precision.
const PEAK_GEMM: usize = 8192;

/// Whole-model comparison settings for one preset.
struct ModelCase {
    preset: &'static str,
    batch: usize,
    classes: usize,
    /// Bound on f32 gradients and SGD updates (see the module docs).
    grad_bound: f64,
}

const MODEL_CASES: [ModelCase; 2] = [
    ModelCase {
        preset: "small",
        batch: 8,
        classes: 10,
        grad_bound: 1e-4,
    },
    ModelCase {
        preset: "paper",
        batch: 4,
        classes: 1000,
        grad_bound: 1e-3,
    },
];

/// Counts PASS / FAIL lines.
#[derive(Debug, Default)]
struct Tally {
    passed: usize,
    failed: usize,
}

impl Tally {
    fn record(&mut self, ok: bool) {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
    }

    /// Prints `PASS|FAIL what: rel L2 e (bound b)`; NaN fails.
    fn check(&mut self, what: &str, rel: f64, bound: f64) -> bool {
        let ok = rel <= bound;
        let status = if ok { "PASS" } else { "FAIL" };
        println!("{status} {what}: rel L2 {rel:.2e} (bound {bound:.0e})");
        self.record(ok);
        ok
    }
}

fn precision_name(p: Precision) -> &'static str {
    match p {
        Precision::F32 => "f32",
        Precision::Tf32 => "tf32",
        Precision::Bf16 => "bf16",
    }
}

/// Why there is no usable device, in one line starting "no CUDA device".
fn no_device_reason() -> String {
    if driver_available() {
        "no CUDA device: the NVIDIA driver reports no device".into()
    } else {
        "no CUDA device: libcuda could not be loaded (no NVIDIA driver on this machine)".into()
    }
}

/// Opens device 0, or a one-line "no CUDA device: ..." error.
fn open_gpu() -> Result<Arc<Gpu>> {
    if device_count() == 0 {
        bail!("{}", no_device_reason());
    }
    match Gpu::new(0) {
        Ok(g) => Ok(Arc::new(g)),
        Err(e @ CudaError::NoDevice(_)) => Err(anyhow!("{e}")),
        Err(e) => Err(anyhow!("no CUDA device: device 0 cannot be opened: {e}")),
    }
}

/// `cargo xtask gpu-check` (see the module docs). Without a CUDA device prints
/// [`NO_DEVICE_LINE`] and returns `Ok(true)`. Returns `Ok(false)` when any check failed (or a
/// benchmark row could not run).
pub fn gpu_check(fixture_dir: &Path) -> Result<bool> {
    if device_count() == 0 {
        println!("{NO_DEVICE_LINE}");
        return Ok(true);
    }
    let gpu = open_gpu()?;
    let (major, minor) = gpu.compute_capability();
    println!(
        "gpu-check: {} (compute capability {major}.{minor})",
        gpu.name()
    );
    let started = Instant::now();
    let mut tally = Tally::default();

    println!(
        "-- CUDA parity with the fixtures in {} (f32)",
        fixture_dir.display()
    );
    for path in fixture_files(fixture_dir)? {
        if let Some(r) = fixture_case(&gpu, &path) {
            println!("{}", r.line());
            tally.record(r.passed());
        }
    }

    for case in &MODEL_CASES {
        println!(
            "-- whole model CUDA vs CPU: preset {}, batch {}, {} classes",
            case.preset, case.batch, case.classes
        );
        if let Err(e) = model_checks(&gpu, case, &mut tally) {
            println!("FAIL {} model comparison: {e:#}", case.preset);
            tally.record(false);
        }
    }
    println!("{} passed, {} failed", tally.passed, tally.failed);

    let bench_ok = bench_table(&gpu)?;
    println!(
        "gpu-check: done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(tally.failed == 0 && bench_ok)
}

/// One fixture in f32; `None` (after printing an "n/a" line) when the op has no CUDA path.
fn fixture_case(gpu: &Arc<Gpu>, path: &Path) -> Option<CaseResult> {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let fx = match Fixture::load(path) {
        Ok(f) => f,
        Err(e) => {
            return Some(CaseResult {
                file: path.into(),
                case: stem,
                op: "?".into(),
                errors: vec![],
                tolerance: 1e-4,
                failure: Some(e.to_string()),
            })
        }
    };
    if !applicable(&fx.op) {
        println!(
            "n/a  {} ({}): computed on the host; the augment kernel only adds the delta",
            fx.case, fx.op
        );
        return None;
    }
    let (errors, failure) = match run_loaded(gpu, &fx, Precision::F32) {
        Ok(v) => (v, None),
        Err(e) => (vec![], Some(e.to_string())),
    };
    Some(CaseResult {
        file: path.into(),
        case: fx.case.clone(),
        op: fx.op.clone(),
        errors,
        tolerance: fx.tolerance,
        failure,
    })
}

/// Input batches like the loader's (mean-subtracted 0..255 pixels): N(0, 50^2).
fn draw_batch(rng: &mut Rng, plan: &Plan, n: usize) -> (Vec<f32>, Vec<u32>) {
    let per: usize = plan.input.iter().product();
    let x = (0..n * per).map(|_| rng.normal() * 50.0).collect();
    let labels = (0..n)
        .map(|_| rng.below(plan.num_classes as u64) as u32)
        .collect();
    (x, labels)
}

/// Relative error of one scalar (relative L2 of a 1-vector).
fn rel1(a: f32, reference: f32) -> f64 {
    rel_l2(&[a], &[reference])
}

/// The whole-model comparison of one preset (see the module docs).
fn model_checks(gpu: &Arc<Gpu>, case: &ModelCase, t: &mut Tally) -> Result<()> {
    let spec = load_preset(case.preset)?;
    let plan = spec.plan(case.classes)?;
    let n = case.batch;
    let mut cpu: Model<f32> = Model::new(plan.clone());
    cpu.init(INIT_SEED);
    let params0 = cpu.params.clone();
    let mut rng = Rng::new(0xC0DA_0001);
    let (x, labels) = draw_batch(&mut rng, &plan, n);

    // The CPU reference: eval logits, then a training-mode forward + backward.
    let logits_ref = cpu.forward(&x, n, Mode::Eval)?.to_vec();
    cpu.forward(&x, n, Mode::Train { seed: DROPOUT_SEED })?;
    let relu_names: Vec<&str> = plan
        .layers
        .iter()
        .filter(|l| matches!(l.op, Op::Relu))
        .map(|l| l.name.as_str())
        .collect();
    let relu_ref: Vec<Vec<f32>> = relu_names
        .iter()
        .map(|name| {
            cpu.activation(name)
                .map(<[f32]>::to_vec)
                .unwrap_or_default()
        })
        .collect();
    let loss_ref = cpu.loss_backward(&labels)?;
    let grads_ref = cpu.grads.clone();

    let mut net = GpuNet::new(gpu.clone(), &plan, n, Precision::F32)?;
    for p in [Precision::F32, Precision::Tf32, Precision::Bf16] {
        net.set_precision(p);
        net.upload_params(&params0)?;
        let (bound, grad_bound) = match p {
            Precision::F32 => (F32_BOUND, case.grad_bound),
            _ => (p.tolerance(), p.tolerance()),
        };
        let tag = format!("{} {}", case.preset, precision_name(p));
        let logits = net.forward(&x, false, 0)?;
        t.check(
            &format!("{tag} logits (eval)"),
            rel_l2(&logits, &logits_ref),
            bound,
        );
        if p == Precision::F32 {
            // The training-mode forward alone, to compare ReLU decisions (diagnostic only).
            net.forward(&x, true, DROPOUT_SEED)?;
            let (mut differ, mut total) = (0usize, 0usize);
            for (name, r) in relu_names.iter().zip(&relu_ref) {
                // Err: a ReLU whose output the network does not store separately.
                if let Ok(g) = net.download_activation(name) {
                    if g.len() == r.len() {
                        total += g.len();
                        differ += g
                            .iter()
                            .zip(r)
                            .filter(|(a, b)| (**a > 0.0) != (**b > 0.0))
                            .count();
                    }
                }
            }
            println!(
                "info {tag}: {differ} of {total} ReLU on/off decisions differ between CUDA and \
                 CPU (each legitimately perturbs the gradients below it)"
            );
        }
        let loss = net.forward_backward(&x, &labels, DROPOUT_SEED)?;
        t.check(
            &format!("{tag} loss (train, dropout seed shared): {loss:.6} vs CPU {loss_ref:.6}"),
            rel1(loss, loss_ref),
            bound,
        );
        let grads = net.download_grads()?;
        let mut worst: Option<(&str, f64)> = None;
        for pe in &plan.params {
            let r = rel_l2(
                &grads[pe.offset..pe.offset + pe.len],
                &grads_ref[pe.offset..pe.offset + pe.len],
            );
            if p == Precision::F32 {
                t.check(&format!("{tag} grad.{}", pe.name), r, grad_bound);
            } else if worst.is_none_or(|(_, w)| r > w || r.is_nan()) {
                worst = Some((pe.name.as_str(), r));
            }
        }
        if let Some((name, r)) = worst {
            t.check(
                &format!(
                    "{tag} gradients (worst of {} tensors: grad.{name})",
                    plan.params.len()
                ),
                r,
                grad_bound,
            );
        }
    }

    // 5 SGD steps from the same start on fresh batches, f32.
    net.set_precision(Precision::F32);
    net.upload_params(&params0)?;
    net.reset_momentum()?;
    cpu.params.copy_from_slice(&params0);
    cpu.momentum.iter_mut().for_each(|v| *v = 0.0);
    let (lr, m, wd) = SGD;
    let tag = format!("{} f32", case.preset);
    for step in 0..SGD_STEPS {
        let (xs, ls) = draw_batch(&mut rng, &plan, n);
        let seed = DROPOUT_SEED + 1 + step;
        cpu.forward(&xs, n, Mode::Train { seed })?;
        let lc = cpu.loss_backward(&ls)?;
        cpu.sgd(lr as f64, m as f64, wd as f64)?;
        let lg = net.forward_backward(&xs, &ls, seed)?;
        net.sgd_step(lr, m, wd)?;
        t.check(
            &format!("{tag} SGD step {}: loss {lg:.6} vs CPU {lc:.6}", step + 1),
            rel1(lg, lc),
            F32_BOUND,
        );
    }
    let pg = net.download_params()?;
    t.check(
        &format!("{tag} parameters after {SGD_STEPS} SGD steps"),
        rel_l2(&pg, &cpu.params),
        F32_BOUND,
    );
    let du_g: Vec<f32> = pg.iter().zip(&params0).map(|(a, b)| a - b).collect();
    let du_c: Vec<f32> = cpu
        .params
        .iter()
        .zip(&params0)
        .map(|(a, b)| a - b)
        .collect();
    t.check(
        &format!("{tag} total update (final - initial) after {SGD_STEPS} SGD steps"),
        rel_l2(&du_g, &du_c),
        case.grad_bound,
    );
    Ok(())
}

/// Measured TFLOP/s of one `PEAK_GEMM`^3 GEMM through `ops::gemm` (bf16: including the casts of
/// the operands), the median of 5 after 2 warm-up runs.
fn gemm_peak(gpu: &Arc<Gpu>, p: Precision) -> Result<f64, CudaError> {
    let n = PEAK_GEMM;
    // Non-trivial operand values (zeros would let the card run cooler and faster).
    let host: Vec<f32> = (0..n * n)
        .map(|i| ((i as u64).wrapping_mul(2_654_435_761) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let (a, b) = (gpu.upload(&host)?, gpu.upload(&host)?);
    drop(host);
    let mut c = gpu.zeros(n * n)?;
    let d = MatDesc::new(n, n);
    let mut times = Vec::new();
    for rep in 0..7 {
        gpu.synchronize()?;
        let t0 = Instant::now();
        gemm(
            gpu,
            p,
            1.0,
            &a.as_view(),
            d,
            &b.as_view(),
            d,
            0.0,
            &mut c.as_view_mut(),
            d,
        )?;
        gpu.synchronize()?;
        if rep >= 2 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(2.0 * (n as f64).powi(3) / times[times.len() / 2] / 1e12)
}

/// The benchmark table of `gpu-check`; false when a row could not run.
fn bench_table(gpu: &Arc<Gpu>) -> Result<bool> {
    let plan = load_preset("paper")?.plan(1000)?;
    println!(
        "-- benchmark: preset paper, synthetic input on the host, median of {BENCH_STEPS} timed \
         steps after {} warm-up, {}",
        alexnet_cuda::bench::WARMUP,
        gpu.name()
    );
    println!(
        "{:<6} {:>6} {:>12} {:>12} {:>9} {:>10} {:>9}",
        "prec", "batch", "train img/s", "infer img/s", "TFLOP/s", "GEMM peak", "of limit"
    );
    let mut ok = true;
    let mut peaks: Vec<(Precision, f64)> = Vec::new();
    for (p, batch) in [
        (Precision::F32, 128),
        (Precision::Tf32, 128),
        (Precision::Bf16, 128),
        (Precision::Bf16, 256),
    ] {
        let peak = match peaks.iter().find(|(q, _)| *q == p) {
            Some(&(_, v)) => Some(v),
            None => {
                let v = gemm_peak(gpu, p).ok();
                if let Some(v) = v {
                    peaks.push((p, v));
                }
                v
            }
        };
        match bench_train_step(gpu, &plan, batch, p, BENCH_STEPS) {
            Ok((train, infer)) => {
                let achieved = train * FLOP_PER_TRAINED_IMAGE / 1e12;
                let (peak_s, frac_s) = match peak {
                    Some(pk) => (format!("{pk:.1}"), format!("{:.1}%", 100.0 * achieved / pk)),
                    None => ("?".into(), "?".into()),
                };
                println!(
                    "{:<6} {batch:>6} {train:>12.0} {infer:>12.0} {achieved:>9.1} {peak_s:>10} {frac_s:>9}",
                    precision_name(p)
                );
            }
            Err(e) => {
                ok = false;
                println!("{:<6} {batch:>6} error: {e}", precision_name(p));
            }
        }
    }
    println!(
        "limit: {:.2} GFLOP per trained image; TFLOP/s = train img/s x {:.2e}; GEMM peak = \
         measured {PEAK_GEMM}^3 GEMM through our cuBLAS path (bf16 including the operand casts)",
        FLOP_PER_TRAINED_IMAGE / 1e9,
        FLOP_PER_TRAINED_IMAGE
    );
    Ok(ok)
}

/// ImageNet RGB PCA (0..255 scale; eigenvectors are the columns), the usual published values.
/// Stand-ins for the dataset's own decomposition: they do not change the timing.
const EIGVAL: [f32; 3] = [55.46, 4.794, 1.148];
const EIGVEC: [[f32; 3]; 3] = [
    [-0.5675, 0.7192, 0.4009],
    [-0.5808, -0.0045, -0.8140],
    [-0.5836, -0.6948, 0.4203],
];

/// A pool of random u8 images standing in for the memory-mapped shards.
struct ImagePool {
    side: usize,
    images: Vec<u8>,
    labels: Vec<u32>,
    mean: Vec<f32>,
}

impl ImagePool {
    fn new(rng: &mut Rng, count: usize, side: usize, classes: usize) -> Self {
        let rec = side * side * 3;
        let mut images = vec![0u8; count * rec];
        for chunk in images.chunks_mut(8) {
            let v = rng.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        let labels = (0..count)
            .map(|_| rng.below(classes as u64) as u32)
            .collect();
        let mut mean = vec![0.0f32; rec];
        for img in images.chunks(rec) {
            for (m, &v) in mean.iter_mut().zip(img) {
                *m += v as f32;
            }
        }
        mean.iter_mut().for_each(|m| *m /= count as f32);
        ImagePool {
            side,
            images,
            labels,
            mean,
        }
    }

    fn record(&self, i: usize) -> &[u8] {
        let rec = self.side * self.side * 3;
        &self.images[i * rec..(i + 1) * rec]
    }

    /// One training batch as the loader hands it to the GPU path: `n` S x S u8 HWC records
    /// copied into one buffer, with per-sample crop offset, flip and PCA-lighting delta.
    fn train_batch(
        &self,
        rng: &mut Rng,
        n: usize,
        crop: usize,
        buf: &mut Vec<u8>,
    ) -> (Vec<AugmentSample>, Vec<u32>) {
        buf.clear();
        let (mut samples, mut labels) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let span = (self.side - crop + 1) as u64;
        for _ in 0..n {
            let i = rng.below(self.labels.len() as u64) as usize;
            buf.extend_from_slice(self.record(i));
            labels.push(self.labels[i]);
            let (ox, oy) = (rng.below(span) as u32, rng.below(span) as u32);
            let alpha = [0.1 * rng.normal(), 0.1 * rng.normal(), 0.1 * rng.normal()];
            samples.push(AugmentSample {
                ox,
                oy,
                mox: ox,
                moy: oy,
                flip: rng.below(2) as u32,
                delta: pca_delta(&EIGVEC, &EIGVAL, &alpha),
            });
        }
        (samples, labels)
    }

    /// One evaluation batch as the CPU loader prepares it: the centre crop minus the mean
    /// image, f32 NCHW.
    fn eval_batch(&self, rng: &mut Rng, n: usize, crop: usize, x: &mut [f32]) {
        let s = self.side;
        let o = (s - crop) / 2;
        let plane = crop * crop;
        for k in 0..n {
            let img = self.record(rng.below(self.labels.len() as u64) as usize);
            let out = &mut x[k * 3 * plane..(k + 1) * 3 * plane];
            for i in 0..crop {
                for j in 0..crop {
                    let src = ((o + i) * s + o + j) * 3;
                    for c in 0..3 {
                        out[c * plane + i * crop + j] = img[src + c] as f32 - self.mean[src + c];
                    }
                }
            }
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Random N(0, std^2) weights / constant biases as the plan asks (what `Model::init` draws,
/// without allocating a CPU model).
fn init_params(plan: &Plan, seed: u64) -> Vec<f32> {
    let mut params = vec![0.0f32; plan.total];
    for (i, p) in plan.params.iter().enumerate() {
        let mut rng = Rng::derive(seed, &[i as u64]);
        for v in &mut params[p.offset..p.offset + p.len] {
            *v = if p.init_std > 0.0 {
                p.init_std * rng.normal()
            } else {
                p.init_constant
            };
        }
    }
    params
}

/// `cargo xtask bench --device cuda`: training (forward + backward + SGD) and inference img/s on
/// device 0, each the median of `steps` timed steps after `warmup` untimed ones, with the device
/// synchronised before and after every timed step.
///
/// - `synthetic_data == false` (the default of the command: the loader in the loop): a pool of
///   random S x S u8 images stands in for the shards; every training step gathers `batch`
///   records into one buffer on the host, draws each sample's crop offset, flip and PCA-lighting
///   delta ([`alexnet_tensor::rng::Rng`]), and calls [`GpuNet::train_step_u8`] (upload of the u8
///   batch, augmentation on the GPU, forward, backward, SGD), all inside the timed step. Every
///   inference step builds the centre crops minus the mean image as f32 on the host and runs
///   [`GpuNet::forward`]. The host work is single-threaded and not overlapped with the GPU (a
///   conservative bound on what the prefetching loader achieves).
/// - `synthetic_data == true`: one random f32 batch prepared once on the host; training is
///   [`GpuNet::forward_backward`] + [`GpuNet::sgd_step`], inference [`GpuNet::forward`] (both
///   include the host-to-device copy of the f32 batch).
///
/// Without a CUDA device: a one-line "no CUDA device: ..." error.
pub fn bench_cuda(
    preset: &str,
    batch: usize,
    classes: usize,
    precision: &str,
    synthetic_data: bool,
    warmup: usize,
    steps: usize,
) -> Result<BenchResult> {
    if batch == 0 || steps == 0 {
        bail!("--batch and --steps must be at least 1");
    }
    let p = Precision::parse(precision).map_err(|e| anyhow!("--{e}"))?;
    let gpu = open_gpu()?;
    let spec = load_preset(preset)?;
    let plan = spec.plan(classes)?;
    let mut net = GpuNet::new(gpu.clone(), &plan, batch, p)
        .with_context(|| format!("preset {preset} at batch {batch} on {}", gpu.name()))?;
    net.upload_params(&init_params(&plan, 1))?;
    let [c, h, w] = plan.input;
    let mut rng = Rng::new(0x0BE4_C0DA);
    // A tiny lr keeps the weights (and so the work) essentially fixed.
    let (lr, m, wd) = (1e-4f32, 0.9f32, 5e-4f32);
    let timed = |f: &mut dyn FnMut(u64) -> Result<()>| -> Result<f64> {
        let mut t = Vec::with_capacity(steps);
        for step in 0..warmup + steps {
            gpu.synchronize()?;
            let t0 = Instant::now();
            f(step as u64)?;
            gpu.synchronize()?;
            if step >= warmup {
                t.push(t0.elapsed().as_secs_f64());
            }
        }
        Ok(batch as f64 / median(t))
    };
    let (train, infer) = if synthetic_data {
        let (x, labels) = draw_batch(&mut rng, &plan, batch);
        let train = timed(&mut |step| {
            net.forward_backward(&x, &labels, step)?;
            net.sgd_step(lr, m, wd)?;
            Ok(())
        })?;
        let infer = timed(&mut |_| {
            net.forward(&x, false, 0)?;
            Ok(())
        })?;
        (train, infer)
    } else {
        let side = spec.input.image_size;
        if c != 3 || h != w || h > side {
            bail!(
                "preset {preset}: input {c}x{h}x{w} is not 3 x crop x crop with crop <= image size \
                 {side}; use --synthetic-data"
            );
        }
        let pool = ImagePool::new(&mut rng, (2 * batch).max(64), side, classes);
        net.set_mean_image(&pool.mean, side, side)?;
        let mut buf = Vec::with_capacity(batch * side * side * 3);
        let train = timed(&mut |step| {
            let (samples, labels) = pool.train_batch(&mut rng, batch, h, &mut buf);
            net.train_step_u8(&buf, (side, side), &samples, &labels, step, (lr, m, wd))?;
            Ok(())
        })?;
        let mut x = vec![0.0f32; batch * c * h * w];
        let infer = timed(&mut |_| {
            pool.eval_batch(&mut rng, batch, h, &mut x);
            net.forward(&x, false, 0)?;
            Ok(())
        })?;
        (train, infer)
    };
    Ok(BenchResult {
        train_img_per_s: train,
        infer_img_per_s: infer,
        preset: spec.name,
        batch,
        device: format!("cuda:0 ({})", gpu.name()),
        threads: 1,
        precision: precision_name(p).into(),
        timed_steps: steps,
        layers: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alexnet_cuda::AugmentParams;

    #[test]
    fn without_a_device_gpu_check_passes_and_bench_says_why() {
        if device_count() > 0 {
            println!("skipped: a CUDA device is present (run `cargo xtask gpu-check`)");
            return;
        }
        assert!(gpu_check(Path::new("no/such/dir")).unwrap());
        let e = bench_cuda("small", 4, 10, "f32", false, 1, 1).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.starts_with("no CUDA device: "), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        let e = bench_cuda("small", 4, 10, "fp8", true, 1, 1).unwrap_err();
        assert!(format!("{e:#}").contains("precision"), "{e:#}");
    }

    #[test]
    fn loader_stand_in_draws_valid_crops() {
        let mut rng = Rng::new(3);
        let (side, crop, n) = (12, 9, 5);
        let pool = ImagePool::new(&mut rng, 7, side, 4);
        assert_eq!(pool.mean.len(), side * side * 3);
        let mut buf = Vec::new();
        let (samples, labels) = pool.train_batch(&mut rng, n, crop, &mut buf);
        assert_eq!((buf.len(), labels.len()), (n * side * side * 3, n));
        assert!(labels.iter().all(|&l| l < 4));
        let p = AugmentParams::square(n, side, crop, side).unwrap();
        p.validate(&samples).unwrap();
        assert!(samples
            .iter()
            .all(|s| s.flip <= 1 && s.delta.iter().all(|d| d.is_finite())));

        // The centre crop of a one-image pool, minus the mean (= the image itself): all zero.
        let one = ImagePool::new(&mut rng, 1, side, 4);
        let mut x = vec![1.0f32; 2 * 3 * crop * crop];
        one.eval_batch(&mut rng, 2, crop, &mut x);
        assert!(x.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn init_params_follow_the_plan() {
        let plan = load_preset("small").unwrap().plan(10).unwrap();
        let p = init_params(&plan, 1);
        for e in &plan.params {
            let v = &p[e.offset..e.offset + e.len];
            if e.init_std > 0.0 {
                assert!(v.iter().any(|&x| x != 0.0), "{}", e.name);
            } else {
                assert!(v.iter().all(|&x| x == e.init_constant), "{}", e.name);
            }
        }
    }
}
