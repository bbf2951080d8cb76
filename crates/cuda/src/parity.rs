//! Per-op parity of the CUDA kernels against the reference fixtures
//! (`tests/fixtures/parity/*.safetensors`, schema in that folder's README).
//!
//! [`run_fixture`] runs one fixture file through the CUDA ops at a given [`Precision`], taking
//! every shape and hyper-parameter from the file, and returns the relative L2 error of each
//! reference tensor it compared. Judging the errors (the fixture's `tolerance_rel_l2` in f32, a
//! documented looser bound such as [`Precision::tolerance`] for TF32 / bf16) is the caller's:
//! `cargo xtask gpu-check` and `crates/cuda/tests/parity.rs` both use this module.
//!
//! Ops: conv2d, relu, lrn, maxpool, linear, softmax_cross_entropy, sgd_step and model (the whole
//! network through [`GpuNet`]). `pca_lighting` returns an empty list (not applicable): the PCA
//! delta `eigvec @ (alpha * eigval)` is computed on the host and only added by the augment
//! kernel, so there is no CUDA computation to compare; callers report it as "n/a".

use crate::error::CudaError;
use crate::gpu::{Gpu, Precision};
use crate::net::GpuNet;
use crate::ops::conv::{conv_backward, conv_forward, ConvShape, ConvWorkspace};
use crate::ops::elementwise::{bias_act, col_sum, relu_fwd, relu_mask};
use crate::ops::gemm::{gemm, MatDesc};
use crate::ops::loss::softmax_ce;
use crate::ops::lrn::{
    lrn_bwd, lrn_bwd_cols, lrn_bwd_inplace, lrn_fwd_cols, lrn_fwd_elems, maxpool_bwd, maxpool_fwd,
    LrnCols, LrnParams, PoolGeom, LRN_CHUNK, LRN_COLS_MAX_HALF,
};
use crate::ops::sgd::sgd_step;
use alexnet_tensor::fixture::Fixture;
use alexnet_tensor::rel_l2;
use alexnet_tensor::spec::{InitSpec, LayerSpec, Op, Plan};
use std::path::Path;
use std::sync::Arc;

/// Each compared reference tensor of a fixture with its relative L2 error.
pub type Errors = Vec<(String, f64)>;

/// Runs the fixture at `path` on `gpu` with GEMMs (convolutions, linear layers, the model) in
/// `precision`; returns every compared reference tensor's relative L2 error, in the order
/// compared. An empty list means the op has no CUDA computation to compare (`pca_lighting`).
/// Errors: an unreadable fixture, a missing tensor or param, an unknown op, or a CUDA failure.
pub fn run_fixture(
    gpu: &Arc<Gpu>,
    path: &Path,
    precision: Precision,
) -> Result<Vec<(String, f64)>, CudaError> {
    let fx = Fixture::load(path)?;
    run_loaded(gpu, &fx, precision)
}

/// [`run_fixture`] on an already loaded fixture.
pub fn run_loaded(
    gpu: &Arc<Gpu>,
    fx: &Fixture,
    precision: Precision,
) -> Result<Vec<(String, f64)>, CudaError> {
    let mut e = Vec::new();
    match fx.op.as_str() {
        "conv2d" => conv(gpu, fx, precision, &mut e)?,
        "relu" => relu(gpu, fx, &mut e)?,
        "lrn" => lrn(gpu, fx, &mut e)?,
        "maxpool" => maxpool(gpu, fx, &mut e)?,
        "linear" => linear(gpu, fx, precision, &mut e)?,
        "softmax_cross_entropy" => softmax(gpu, fx, &mut e)?,
        "sgd_step" => sgd(gpu, fx, &mut e)?,
        "model" => model(gpu, fx, precision, &mut e)?,
        "pca_lighting" => {}
        other => {
            return Err(CudaError::invalid(
                "parity",
                format!("{}: unknown op `{other}`", fx.path.display()),
            ))
        }
    }
    Ok(e)
}

/// True when the op has a CUDA computation to compare (every op but `pca_lighting`).
pub fn applicable(op: &str) -> bool {
    op != "pca_lighting"
}

fn bad(fx: &Fixture, detail: String) -> CudaError {
    CudaError::invalid("parity", format!("{}: {detail}", fx.path.display()))
}

/// Compares `out` with the reference tensor `name` (a length mismatch is an error).
fn cmp(fx: &Fixture, name: &str, out: &[f32], e: &mut Errors) -> Result<(), CudaError> {
    let r = fx.tensor(name)?;
    if r.len() != out.len() {
        return Err(bad(
            fx,
            format!(
                "{name}: CUDA produced {} elements, the reference has {}",
                out.len(),
                r.len()
            ),
        ));
    }
    e.push((name.to_string(), rel_l2(out, r.data())));
    Ok(())
}

fn t<'a>(fx: &'a Fixture, name: &str) -> Result<&'a [f32], CudaError> {
    Ok(fx.tensor(name)?.data())
}

fn dims<const D: usize>(fx: &Fixture, name: &str) -> Result<[usize; D], CudaError> {
    let s = fx.tensor(name)?.shape();
    s.try_into().map_err(|_| {
        bad(
            fx,
            format!("tensor {name} has shape {s:?}, expected {D} dimensions"),
        )
    })
}

fn labels(fx: &Fixture) -> Result<Vec<u32>, CudaError> {
    fx.ints("labels")?
        .iter()
        .map(|&l| u32::try_from(l).map_err(|_| bad(fx, format!("label {l} is negative"))))
        .collect()
}

fn conv(gpu: &Arc<Gpu>, fx: &Fixture, p: Precision, e: &mut Errors) -> Result<(), CudaError> {
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
    s.validate()?;
    let (x, wt, b, dy) = (
        gpu.upload(t(fx, "x")?)?,
        gpu.upload(t(fx, "w")?)?,
        gpu.upload(t(fx, "b")?)?,
        gpu.upload(t(fx, "dy")?)?,
    );
    let ylen = n * o * s.ho() * s.wo();
    let (mut y, mut dx) = (gpu.zeros(ylen)?, gpu.zeros(n * c * h * w)?);
    let (mut dw, mut db) = (gpu.zeros(wt.len())?, gpu.zeros(o)?);
    // Chunks of half the batch exercise the chunked accumulation of dw and db.
    let mut ws = ConvWorkspace::for_shape(gpu, &s, n.div_ceil(2))?;
    conv_forward(
        gpu,
        p,
        &s,
        &x.as_view(),
        &wt.as_view(),
        &b.as_view(),
        &mut y.slice_mut(0..ylen),
        false,
        &mut ws,
    )?;
    let mut dxv = dx.slice_mut(0..n * c * h * w);
    conv_backward(
        gpu,
        p,
        &s,
        &x.as_view(),
        &wt.as_view(),
        None,
        &dy.as_view(),
        Some(&mut dxv),
        &mut dw.as_view_mut(),
        &mut db.slice_mut(0..o),
        &mut ws,
    )?;
    cmp(fx, "y", &gpu.download(&y.slice(0..ylen))?, e)?;
    cmp(fx, "dx", &gpu.download(&dx.slice(0..n * c * h * w))?, e)?;
    cmp(fx, "dw", &gpu.download(&dw)?, e)?;
    cmp(fx, "db", &gpu.download(&db.slice(0..o))?, e)
}

fn relu(gpu: &Arc<Gpu>, fx: &Fixture, e: &mut Errors) -> Result<(), CudaError> {
    let x = gpu.upload(t(fx, "x")?)?;
    let mut g = gpu.upload(t(fx, "dy")?)?;
    let n = x.len();
    if g.len() != n {
        return Err(bad(fx, format!("dy has {} elements, x {n}", g.len())));
    }
    let mut y = gpu.zeros(n)?;
    relu_fwd(gpu, &x.as_view(), &mut y.slice_mut(0..n), n)?;
    relu_mask(gpu, &y.slice(0..n), &mut g.as_view_mut(), n)?;
    cmp(fx, "y", &gpu.download(&y.slice(0..n))?, e)?;
    cmp(fx, "dx", &gpu.download(&g)?, e)
}

fn lrn(gpu: &Arc<Gpu>, fx: &Fixture, e: &mut Errors) -> Result<(), CudaError> {
    let [n, c, h, w] = dims(fx, "x")?;
    let q = LrnParams::new(
        n,
        c,
        h * w,
        fx.param_usize("size")?,
        fx.param_f64("alpha")? as f32,
        fx.param_f64("beta")? as f32,
        fx.param_f64("k")? as f32,
        false,
    )?;
    let (x, dy) = (gpu.upload(t(fx, "x")?)?, gpu.upload(t(fx, "dy")?)?);
    let len = x.len();
    let (mut y, mut dx) = (gpu.zeros(len)?, gpu.zeros(len)?);
    lrn_fwd_elems(gpu, &x.as_view(), &mut y.slice_mut(0..len), q)?;
    lrn_bwd(
        gpu,
        &x.as_view(),
        &dy.as_view(),
        &mut dx.slice_mut(0..len),
        q,
    )?;
    cmp(fx, "y", &gpu.download(&y.slice(0..len))?, e)?;
    cmp(fx, "dx", &gpu.download(&dx.slice(0..len))?, e)?;
    // The two-pass in-place backward the network uses.
    let (mut g, mut scratch) = (gpu.upload(t(fx, "dy")?)?, gpu.zeros(len)?);
    lrn_bwd_inplace(
        gpu,
        &x.as_view(),
        &mut g.slice_mut(0..len),
        &mut scratch.slice_mut(0..len),
        q,
    )?;
    let mut e2 = Vec::new();
    cmp(fx, "dx", &gpu.download(&g.slice(0..len))?, &mut e2)?;
    e.extend(
        e2.into_iter()
            .map(|(name, v)| (format!("{name} (two-pass)"), v)),
    );
    // The column kernels the network uses (windows up to 5).
    if q.half <= LRN_COLS_MAX_HALF {
        let mut e3 = Vec::new();
        let cols = LrnCols::new(&q, LRN_CHUNK)?;
        lrn_fwd_cols(gpu, &x.as_view(), &mut y.slice_mut(0..len), q, cols)?;
        cmp(fx, "y", &gpu.download(&y.slice(0..len))?, &mut e3)?;
        let (xv, dyv) = (x.as_view(), dy.as_view());
        lrn_bwd_cols(gpu, &xv, &dyv, &mut dx.slice_mut(0..len), q, cols)?;
        cmp(fx, "dx", &gpu.download(&dx.slice(0..len))?, &mut e3)?;
        e.extend(
            e3.into_iter()
                .map(|(name, v)| (format!("{name} (column)"), v)),
        );
    }
    Ok(())
}

fn maxpool(gpu: &Arc<Gpu>, fx: &Fixture, e: &mut Errors) -> Result<(), CudaError> {
    let [n, c, h, w] = dims(fx, "x")?;
    let g = PoolGeom::new(
        n * c,
        h,
        w,
        fx.param_usize("kernel")?,
        fx.param_usize("stride")?,
    )?;
    let (x, dy) = (gpu.upload(t(fx, "x")?)?, gpu.upload(t(fx, "dy")?)?);
    let (out, inp) = (g.out_len(), g.in_len());
    let (mut y, mut dx) = (gpu.zeros(out)?, gpu.zeros(inp)?);
    let mut arg = gpu
        .stream()
        .alloc_zeros::<i32>(out.max(1))
        .map_err(CudaError::driver("alloc argmax"))?;
    maxpool_fwd(
        gpu,
        &x.as_view(),
        &mut y.slice_mut(0..out),
        &mut arg.slice_mut(0..out),
        g,
    )?;
    maxpool_bwd(
        gpu,
        &dy.as_view(),
        &arg.slice(0..out),
        &mut dx.slice_mut(0..inp),
        g,
    )?;
    cmp(fx, "y", &gpu.download(&y.slice(0..out))?, e)?;
    cmp(fx, "dx", &gpu.download(&dx.slice(0..inp))?, e)
}

fn linear(gpu: &Arc<Gpu>, fx: &Fixture, p: Precision, e: &mut Errors) -> Result<(), CudaError> {
    let [n, fin] = dims(fx, "x")?;
    let [fout, _] = dims(fx, "w")?;
    let (x, w, b, dy) = (
        gpu.upload(t(fx, "x")?)?,
        gpu.upload(t(fx, "w")?)?,
        gpu.upload(t(fx, "b")?)?,
        gpu.upload(t(fx, "dy")?)?,
    );
    let (mut y, mut dx, mut dw, mut db) = (
        gpu.zeros(n * fout)?,
        gpu.zeros(n * fin)?,
        gpu.zeros(fout * fin)?,
        gpu.zeros(fout)?,
    );
    // y (n, out) = x (n, in) @ W^T + b
    gemm(
        gpu,
        p,
        1.0,
        &x.as_view(),
        MatDesc::new(n, fin),
        &w.as_view(),
        MatDesc::new(fout, fin).t(),
        0.0,
        &mut y.slice_mut(0..n * fout),
        MatDesc::new(n, fout),
    )?;
    bias_act(
        gpu,
        &mut y.slice_mut(0..n * fout),
        &b.as_view(),
        (n, fout, 1),
        false,
    )?;
    // dx (n, in) = dy (n, out) @ W (out, in)
    gemm(
        gpu,
        p,
        1.0,
        &dy.as_view(),
        MatDesc::new(n, fout),
        &w.as_view(),
        MatDesc::new(fout, fin),
        0.0,
        &mut dx.slice_mut(0..n * fin),
        MatDesc::new(n, fin),
    )?;
    // dW (out, in) = dy^T @ x
    gemm(
        gpu,
        p,
        1.0,
        &dy.as_view(),
        MatDesc::new(n, fout).t(),
        &x.as_view(),
        MatDesc::new(n, fin),
        0.0,
        &mut dw.slice_mut(0..fout * fin),
        MatDesc::new(fout, fin),
    )?;
    col_sum(gpu, &dy.as_view(), &mut db.slice_mut(0..fout), (n, fout))?;
    cmp(fx, "y", &gpu.download(&y.slice(0..n * fout))?, e)?;
    cmp(fx, "dx", &gpu.download(&dx.slice(0..n * fin))?, e)?;
    cmp(fx, "dw", &gpu.download(&dw.slice(0..fout * fin))?, e)?;
    cmp(fx, "db", &gpu.download(&db.slice(0..fout))?, e)
}

fn softmax(gpu: &Arc<Gpu>, fx: &Fixture, e: &mut Errors) -> Result<(), CudaError> {
    let [b, c] = dims(fx, "logits")?;
    let labels = labels(fx)?;
    if labels.len() != b {
        return Err(bad(fx, format!("{} labels for {b} rows", labels.len())));
    }
    let (lg, lb) = (gpu.upload(t(fx, "logits")?)?, gpu.upload(&labels)?);
    let (mut d, mut rows) = (gpu.zeros(b * c)?, gpu.zeros(b)?);
    softmax_ce(
        gpu,
        &lg.as_view(),
        &lb.as_view(),
        &mut d.slice_mut(0..b * c),
        &mut rows.slice_mut(0..b),
        (b, c),
    )?;
    let rows = gpu.download(&rows.slice(0..b))?;
    let loss = rows.iter().map(|&r| r as f64).sum::<f64>() / b as f64;
    cmp(fx, "loss", &[loss as f32], e)?;
    cmp(fx, "dlogits", &gpu.download(&d.slice(0..b * c))?, e)
}

/// One SGD step on the device from host `w`, `v`, `g`; returns (w, v).
fn sgd_once(
    gpu: &Arc<Gpu>,
    (w, v, g): (&[f32], &[f32], &[f32]),
    hyper: (f32, f32, f32),
) -> Result<(Vec<f32>, Vec<f32>), CudaError> {
    let n = w.len();
    if v.len() != n || g.len() != n {
        return Err(CudaError::shape(
            "parity sgd_step",
            format!("w {n}, v {}, grad {}", v.len(), g.len()),
        ));
    }
    let (mut wd, mut vd, gd) = (gpu.upload(w)?, gpu.upload(v)?, gpu.upload(g)?);
    sgd_step(
        gpu,
        &mut wd.as_view_mut(),
        &gd.as_view(),
        &mut vd.as_view_mut(),
        n,
        hyper,
    )?;
    Ok((gpu.download(&wd)?, gpu.download(&vd)?))
}

fn sgd(gpu: &Arc<Gpu>, fx: &Fixture, e: &mut Errors) -> Result<(), CudaError> {
    let steps = fx.param_usize("steps").unwrap_or(1);
    let (m, wd) = (
        fx.param_f64("momentum")? as f32,
        fx.param_f64("weight_decay")? as f32,
    );
    let (w0, v0) = (t(fx, "w")?, t(fx, "v")?);
    match steps {
        1 => {
            let lr = fx.param_f64("lr")? as f32;
            let (w, v) = sgd_once(gpu, (w0, v0, t(fx, "grad")?), (lr, m, wd))?;
            cmp(fx, "w_new", &w, e)?;
            cmp(fx, "v_new", &v, e)
        }
        2 => {
            let lr1 = fx.param_f64("lr1")? as f32;
            let (w, v) = sgd_once(gpu, (w0, v0, t(fx, "grad1")?), (lr1, m, wd))?;
            cmp(fx, "w_mid", &w, e)?;
            cmp(fx, "v_mid", &v, e)?;
            // Step 2 starts from the stored f32 state, as the fixture defines.
            let lr2 = fx.param_f64("lr2")? as f32;
            let mid = (t(fx, "w_mid")?, t(fx, "v_mid")?, t(fx, "grad2")?);
            let (w, v) = sgd_once(gpu, mid, (lr2, m, wd))?;
            cmp(fx, "w_new", &w, e)?;
            cmp(fx, "v_new", &v, e)
        }
        other => Err(bad(
            fx,
            format!("steps = {other} is not supported (1 or 2)"),
        )),
    }
}

/// The fixture's network from `params.layers` and `params.input_shape` (or x's shape).
fn model_plan(fx: &Fixture) -> Result<Plan, CudaError> {
    let layers = fx
        .params
        .get("layers")
        .cloned()
        .ok_or_else(|| bad(fx, "params has no `layers`".into()))?;
    let layers: Vec<LayerSpec> = serde_json::from_value(layers).map_err(|err| {
        bad(
            fx,
            format!("params.layers is not a valid layer list: {err}"),
        )
    })?;
    let [_, c, h, w] = dims(fx, "x")?;
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

/// The whole network: logits (eval), every stored activation the file has (`act.NAME`),
/// the loss, every parameter gradient and the input gradient. The fixture lists no dropout
/// layers (so training mode equals evaluation mode). Activations of layers the CUDA network
/// fuses away (an LRN followed by a pool is never stored) are not compared: the logits and
/// gradients downstream of them are.
fn model(gpu: &Arc<Gpu>, fx: &Fixture, p: Precision, e: &mut Errors) -> Result<(), CudaError> {
    let plan = model_plan(fx)?;
    if let Some(d) = plan
        .layers
        .iter()
        .find(|l| matches!(l.op, Op::Dropout { .. }))
    {
        return Err(bad(
            fx,
            format!(
                "layer {}: the reference gradients are evaluation-mode, GpuNet's backward \
                 always applies dropout",
                d.name
            ),
        ));
    }
    let mut flat = vec![0.0f32; plan.total];
    for pe in &plan.params {
        let tensor = fx.tensor(&pe.name)?;
        if tensor.shape() != pe.shape.as_slice() {
            return Err(bad(
                fx,
                format!(
                    "{}: file shape {:?}, network expects {:?}",
                    pe.name,
                    tensor.shape(),
                    pe.shape
                ),
            ));
        }
        flat[pe.offset..pe.offset + pe.len].copy_from_slice(tensor.data());
    }
    let x = t(fx, "x")?;
    let n = dims::<4>(fx, "x")?[0];
    let mut net = GpuNet::new(gpu.clone(), &plan, n, p)?;
    net.upload_params(&flat)?;
    net.set_input_grad(true);
    let logits = net.forward(x, false, 0)?;
    cmp(fx, "logits", &logits, e)?;
    let mut acts: Vec<&str> = fx
        .file
        .f32s
        .keys()
        .filter_map(|k| k.strip_prefix("act."))
        .collect();
    acts.sort_unstable();
    for a in acts {
        if plan.layer(a).is_none() {
            return Err(bad(
                fx,
                format!("reference act.{a} names no layer of the network"),
            ));
        }
        // Err: the layer is fused into a later stage and never stored (see above).
        if let Ok(v) = net.download_activation(a) {
            cmp(fx, &format!("act.{a}"), &v, e)?;
        }
    }
    let labels = labels(fx)?;
    let loss = net.forward_backward(x, &labels, 0)?;
    cmp(fx, "loss", &[loss], e)?;
    let grads = net.download_grads()?;
    for pe in &plan.params {
        cmp(
            fx,
            &format!("grad.{}", pe.name),
            &grads[pe.offset..pe.offset + pe.len],
            e,
        )?;
    }
    cmp(fx, "grad.x", &net.download_input_grad()?, e)
}
