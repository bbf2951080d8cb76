//! The parity check: runs every `*.safetensors` fixture of a folder through our CPU code, taking
//! every shape and hyper-parameter from the file, and compares each reference tensor by relative
//! L2 error (schema: tests/fixtures/parity/README.md).

use alexnet_data::augment::pca_lighting;
use alexnet_layers::conv::{conv2d_backward, conv2d_forward, ConvShape};
use alexnet_layers::linear::{linear_backward, linear_forward};
use alexnet_layers::loss::softmax_cross_entropy;
use alexnet_layers::lrn::{lrn_backward, lrn_forward, LrnParams};
use alexnet_layers::pool::{maxpool_backward, maxpool_forward, PoolShape};
use alexnet_layers::relu::{relu_backward, relu_forward};
use alexnet_layers::sgd::sgd_step;
use alexnet_layers::{Mode, Model};
use alexnet_tensor::fixture::Fixture;
use alexnet_tensor::rel_l2;
use alexnet_tensor::spec::{InitSpec, LayerSpec, Plan};
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};

/// The outcome of one fixture file.
#[derive(Debug)]
pub struct CaseResult {
    pub file: PathBuf,
    pub case: String,
    pub op: String,
    /// Each compared reference tensor with its relative L2 error.
    pub errors: Vec<(String, f64)>,
    pub tolerance: f64,
    /// Set when the case could not be run at all (bad file, unknown op).
    pub failure: Option<String>,
}

impl CaseResult {
    /// The largest relative error and its tensor.
    pub fn worst(&self) -> Option<(&str, f64)> {
        self.errors
            .iter()
            .map(|(n, e)| (n.as_str(), *e))
            .fold(None, |acc, (n, e)| match acc {
                Some((_, best)) if best >= e || e.is_nan() && best.is_nan() => acc,
                _ => Some((n, e)),
            })
    }

    /// True when the case ran and every tensor is within tolerance.
    pub fn passed(&self) -> bool {
        self.failure.is_none()
            && !self.errors.is_empty()
            && self.errors.iter().all(|(_, e)| *e <= self.tolerance)
    }

    /// One line: `PASS case (op) worst rel L2 1.2e-7 (tensor)`.
    pub fn line(&self) -> String {
        let status = if self.passed() { "PASS" } else { "FAIL" };
        match (&self.failure, self.worst()) {
            (Some(f), _) => format!("{status} {} ({}): {f}", self.case, self.op),
            (None, Some((t, e))) => format!(
                "{status} {} ({}): worst rel L2 {e:.2e} in {t} (tolerance {:.0e})",
                self.case, self.op, self.tolerance
            ),
            (None, None) => format!("{status} {} ({}): nothing compared", self.case, self.op),
        }
    }
}

/// Every `*.safetensors` file of `dir`, sorted.
pub fn fixture_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).with_context(|| {
        format!(
            "{}: cannot read the fixture folder (pass --dir DIR)",
            dir.display()
        )
    })?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!(
            "{}: no *.safetensors fixtures in this folder",
            dir.display()
        );
    }
    Ok(files)
}

/// Runs the CPU's GEMMs in `precision` for the rest of the process: `f32` or `bf16x3` (every
/// GEMM on AMX tiles, whatever its size, so that the fixtures check that precision's
/// numerics at their own tolerance). bf16 is refused: its 8-bit mantissas give ~2.5e-3 per op
/// and 0.17 on the model fixture's conv1 weight gradient, far from the fixtures' 1e-4.
pub fn set_precision(precision: &str) -> Result<()> {
    use alexnet_tensor::gemm::{cpu_backend_for, set_amx_min_side, set_f32_backend, F32Backend};
    let backend = cpu_backend_for(precision)?;
    if backend == F32Backend::AmxBf16 {
        bail!(
            "--precision bf16: its 8-bit mantissas miss the fixtures' 1e-4 (about 2.5e-3 per op); \
             parity checks f32 and bf16x3"
        );
    }
    set_f32_backend(backend)?;
    if backend != F32Backend::Gemm {
        set_amx_min_side(1);
    }
    Ok(())
}

/// Runs one fixture file; never fails (a broken file is a failed case).
pub fn run_file(path: &Path) -> CaseResult {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match Fixture::load(path) {
        Err(e) => CaseResult {
            file: path.into(),
            case: stem,
            op: "?".into(),
            errors: vec![],
            tolerance: 1e-4,
            failure: Some(e.to_string()),
        },
        Ok(fx) => {
            let mut errors = Vec::new();
            let failure = run_op(&fx, &mut errors).err().map(|e| format!("{e:#}"));
            CaseResult {
                file: path.into(),
                case: fx.case.clone(),
                op: fx.op.clone(),
                errors,
                tolerance: fx.tolerance,
                failure,
            }
        }
    }
}

fn cmp(errors: &mut Vec<(String, f64)>, fx: &Fixture, name: &str, out: &[f32]) -> Result<()> {
    let r = fx.tensor(name)?;
    if r.len() != out.len() {
        bail!(
            "{name}: we produced {} elements, the reference has {}",
            out.len(),
            r.len()
        );
    }
    errors.push((name.to_string(), rel_l2(out, r.data())));
    Ok(())
}

fn dims<const D: usize>(fx: &Fixture, name: &str) -> Result<[usize; D]> {
    let s = fx.tensor(name)?.shape();
    s.try_into()
        .map_err(|_| anyhow!("tensor {name} has shape {s:?}, expected {D} dimensions"))
}

fn labels(fx: &Fixture) -> Result<Vec<u32>> {
    fx.ints("labels")?
        .iter()
        .map(|&l| u32::try_from(l).map_err(|_| anyhow!("label {l} is negative")))
        .collect()
}

fn run_op(fx: &Fixture, errors: &mut Vec<(String, f64)>) -> Result<()> {
    match fx.op.as_str() {
        "conv2d" => {
            let [n, c, h, w] = dims(fx, "x")?;
            let [o, _, k, _] = dims(fx, "w")?;
            let s = ConvShape {
                n,
                c,
                h,
                w,
                o,
                k,
                stride: fx.param_usize("stride")?,
                pad: fx.param_usize("padding")?,
                groups: fx.param_usize("groups")?,
            };
            let (x, wt, b, dy) = (
                fx.tensor("x")?,
                fx.tensor("w")?,
                fx.tensor("b")?,
                fx.tensor("dy")?,
            );
            let mut y = vec![0.0; n * o * s.ho() * s.wo()];
            conv2d_forward(x.data(), wt.data(), b.data(), &mut y, &s)?;
            let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; wt.len()], vec![0.0; o]);
            conv2d_backward(
                x.data(),
                wt.data(),
                dy.data(),
                &mut dx,
                &mut dw,
                &mut db,
                &s,
            )?;
            cmp(errors, fx, "y", &y)?;
            cmp(errors, fx, "dx", &dx)?;
            cmp(errors, fx, "dw", &dw)?;
            cmp(errors, fx, "db", &db)
        }
        "relu" => {
            let (x, dy) = (fx.tensor("x")?, fx.tensor("dy")?);
            let mut y = vec![0.0; x.len()];
            relu_forward(x.data(), &mut y)?;
            let mut dx = vec![0.0; x.len()];
            relu_backward(&y, dy.data(), &mut dx)?;
            cmp(errors, fx, "y", &y)?;
            cmp(errors, fx, "dx", &dx)
        }
        "lrn" => {
            let [n, c, h, w] = dims(fx, "x")?;
            let p = LrnParams {
                size: fx.param_usize("size")?,
                alpha: fx.param_f64("alpha")?,
                beta: fx.param_f64("beta")?,
                k: fx.param_f64("k")?,
            };
            let (x, dy) = (fx.tensor("x")?, fx.tensor("dy")?);
            let (mut y, mut s, mut dx) =
                (vec![0.0; x.len()], vec![0.0; x.len()], vec![0.0; x.len()]);
            lrn_forward(x.data(), &mut y, &mut s, n, c, h * w, &p)?;
            lrn_backward(x.data(), &s, dy.data(), &mut dx, n, c, h * w, &p)?;
            cmp(errors, fx, "y", &y)?;
            cmp(errors, fx, "dx", &dx)
        }
        "maxpool" => {
            let [n, c, h, w] = dims(fx, "x")?;
            let s = PoolShape {
                planes: n * c,
                h,
                w,
                k: fx.param_usize("kernel")?,
                stride: fx.param_usize("stride")?,
            };
            let (x, dy) = (fx.tensor("x")?, fx.tensor("dy")?);
            let m = n * c * s.ho() * s.wo();
            let (mut y, mut arg, mut dx) = (vec![0.0; m], vec![0u32; m], vec![0.0; x.len()]);
            maxpool_forward(x.data(), &mut y, &mut arg, &s)?;
            maxpool_backward(dy.data(), &arg, &mut dx, &s)?;
            cmp(errors, fx, "y", &y)?;
            cmp(errors, fx, "dx", &dx)
        }
        "linear" => {
            let [n, fin] = dims(fx, "x")?;
            let [fout, _] = dims(fx, "w")?;
            let (x, wt, b, dy) = (
                fx.tensor("x")?,
                fx.tensor("w")?,
                fx.tensor("b")?,
                fx.tensor("dy")?,
            );
            let mut y = vec![0.0; n * fout];
            linear_forward(x.data(), wt.data(), b.data(), &mut y, n, fin, fout)?;
            let (mut dx, mut dw, mut db) =
                (vec![0.0; x.len()], vec![0.0; wt.len()], vec![0.0; fout]);
            linear_backward(
                x.data(),
                wt.data(),
                dy.data(),
                Some(&mut dx),
                &mut dw,
                &mut db,
                n,
                fin,
                fout,
            )?;
            cmp(errors, fx, "y", &y)?;
            cmp(errors, fx, "dx", &dx)?;
            cmp(errors, fx, "dw", &dw)?;
            cmp(errors, fx, "db", &db)
        }
        "softmax_cross_entropy" => {
            let [_, classes] = dims(fx, "logits")?;
            let logits = fx.tensor("logits")?;
            let mut d = vec![0.0; logits.len()];
            let loss = softmax_cross_entropy(logits.data(), &labels(fx)?, &mut d, classes)?;
            cmp(errors, fx, "loss", &[loss])?;
            cmp(errors, fx, "dlogits", &d)
        }
        "sgd_step" => run_sgd(fx, errors),
        "pca_lighting" => {
            let mut img = fx.tensor("image")?.data().to_vec();
            let ev = fx.tensor("eigvec")?.data();
            if ev.len() != 9 {
                bail!("eigvec must be 3x3");
            }
            let eigvec = [
                [ev[0], ev[1], ev[2]],
                [ev[3], ev[4], ev[5]],
                [ev[6], ev[7], ev[8]],
            ];
            let eigval: [f32; 3] = fx.tensor("eigval")?.data().try_into()?;
            let alpha: [f32; 3] = fx.tensor("alpha")?.data().try_into()?;
            let delta = pca_lighting(&mut img, &eigvec, &eigval, &alpha);
            cmp(errors, fx, "delta", &delta)?;
            cmp(errors, fx, "out", &img)
        }
        "model" => run_model(fx, errors),
        other => bail!("unknown op `{other}`"),
    }
}

fn run_sgd(fx: &Fixture, errors: &mut Vec<(String, f64)>) -> Result<()> {
    let steps = fx.param_usize("steps").unwrap_or(1);
    let (m, wd) = (fx.param_f64("momentum")?, fx.param_f64("weight_decay")?);
    let mut w = fx.tensor("w")?.data().to_vec();
    let mut v = fx.tensor("v")?.data().to_vec();
    if steps == 1 {
        sgd_step(
            &mut w,
            fx.tensor("grad")?.data(),
            &mut v,
            fx.param_f64("lr")?,
            m,
            wd,
        )?;
    } else if steps == 2 {
        sgd_step(
            &mut w,
            fx.tensor("grad1")?.data(),
            &mut v,
            fx.param_f64("lr1")?,
            m,
            wd,
        )?;
        cmp(errors, fx, "w_mid", &w)?;
        cmp(errors, fx, "v_mid", &v)?;
        // Step 2 starts from the stored float32 state, as the reference does.
        w = fx.tensor("w_mid")?.data().to_vec();
        v = fx.tensor("v_mid")?.data().to_vec();
        sgd_step(
            &mut w,
            fx.tensor("grad2")?.data(),
            &mut v,
            fx.param_f64("lr2")?,
            m,
            wd,
        )?;
    } else {
        bail!("steps = {steps} is not supported (1 or 2)");
    }
    cmp(errors, fx, "w_new", &w)?;
    cmp(errors, fx, "v_new", &v)
}

/// Builds the fixture's network from `params.layers` (the same layer list a preset has).
pub fn model_plan(fx: &Fixture) -> Result<Plan> {
    let layers: Vec<LayerSpec> = serde_json::from_value(
        fx.params
            .get("layers")
            .cloned()
            .ok_or_else(|| anyhow!("params has no `layers`"))?,
    )
    .context("params.layers is not a valid layer list")?;
    let shape: Vec<usize> = serde_json::from_value(
        fx.params
            .get("input_shape")
            .cloned()
            .ok_or_else(|| anyhow!("params has no input_shape"))?,
    )?;
    let [_, c, h, w]: [usize; 4] = shape
        .clone()
        .try_into()
        .map_err(|_| anyhow!("input_shape {shape:?} is not NCHW"))?;
    if h != w {
        bail!("input_shape {shape:?}: only square inputs are supported");
    }
    let classes = fx.param_usize("num_classes")?;
    Ok(Plan::new(
        &layers,
        [c, h, w],
        classes,
        &InitSpec {
            weight_std: 0.0,
            bias: 0.0,
        },
    )?)
}

fn run_model(fx: &Fixture, errors: &mut Vec<(String, f64)>) -> Result<()> {
    let plan = model_plan(fx)?;
    let mut model: Model<f32> = Model::new(plan.clone());
    for e in &plan.params {
        let t = fx.tensor(&e.name)?;
        if t.shape() != e.shape.as_slice() {
            bail!(
                "{}: file shape {:?}, network expects {:?}",
                e.name,
                t.shape(),
                e.shape
            );
        }
        model.params[e.offset..e.offset + e.len].copy_from_slice(t.data());
    }
    let x = fx.tensor("x")?;
    let n = x.shape()[0];
    model.forward(x.data(), n, Mode::Eval)?;
    let logits = model.logits().to_vec();
    let mut dlogits = vec![0.0; logits.len()];
    let loss = softmax_cross_entropy(&logits, &labels(fx)?, &mut dlogits, plan.num_classes)?;
    let dx = model.backward(&dlogits, true)?.unwrap_or_default();
    cmp(errors, fx, "logits", &logits)?;
    cmp(errors, fx, "loss", &[loss])?;
    cmp(errors, fx, "grad.x", &dx)?;
    for e in &plan.params {
        cmp(
            errors,
            fx,
            &format!("grad.{}", e.name),
            &model.grads[e.offset..e.offset + e.len],
        )?;
    }
    for name in fx.file.f32s.keys().filter_map(|k| k.strip_prefix("act.")) {
        let act = model
            .activation(name)
            .ok_or_else(|| anyhow!("reference act.{name} names no layer of the network"))?
            .to_vec();
        cmp(errors, fx, &format!("act.{name}"), &act)?;
    }
    Ok(())
}
