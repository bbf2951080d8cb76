//! Per-op parity of the CUDA kernels against every fixture in tests/fixtures/parity (f32, rel
//! L2 <= the fixture's tolerance), and the whole-model fixture through GpuNet. Skips with one
//! line without a CUDA device.

use alexnet_cuda::ops::conv::{conv_backward, conv_forward, ConvShape, ConvWorkspace};
use alexnet_cuda::ops::elementwise::{bias_act, col_sum, relu_fwd, relu_mask};
use alexnet_cuda::ops::gemm::{gemm, MatDesc};
use alexnet_cuda::ops::loss::softmax_ce;
use alexnet_cuda::ops::lrn::{lrn_bwd, lrn_fwd, maxpool_bwd, maxpool_fwd, LrnParams, PoolGeom};
use alexnet_cuda::ops::sgd::sgd_step;
use alexnet_cuda::{device_count, Gpu, GpuNet, Precision};
use alexnet_tensor::fixture::Fixture;
use alexnet_tensor::rel_l2;
use alexnet_tensor::spec::{InitSpec, LayerSpec, Plan};
use std::path::PathBuf;
use std::sync::Arc;

type R<T> = Result<T, Box<dyn std::error::Error>>;

fn fixtures() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/parity");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "safetensors"));
    v.sort();
    v
}

fn check(fx: &Fixture, name: &str, out: &[f32], errors: &mut Vec<String>) -> R<()> {
    let r = rel_l2(out, fx.tensor(name)?.data());
    if r.is_nan() || r > fx.tolerance {
        errors.push(format!(
            "{}: {name} rel L2 {r:.3e} > {:.0e}",
            fx.case, fx.tolerance
        ));
    }
    Ok(())
}

fn t<'a>(fx: &'a Fixture, name: &str) -> R<&'a [f32]> {
    Ok(fx.tensor(name)?.data())
}

fn shape(fx: &Fixture, name: &str) -> R<Vec<usize>> {
    Ok(fx.tensor(name)?.shape().to_vec())
}

fn conv(gpu: &Arc<Gpu>, fx: &Fixture, e: &mut Vec<String>) -> R<()> {
    let (xs, ws) = (shape(fx, "x")?, shape(fx, "w")?);
    let (stride, pad, groups) = (
        fx.param_usize("stride")?,
        fx.param_usize("padding")?,
        fx.param_usize("groups")?,
    );
    let s = ConvShape {
        n: xs[0],
        c: xs[1],
        h: xs[2],
        w: xs[3],
        o: ws[0],
        k: ws[2],
        stride,
        pad,
        groups,
    };
    let (x, w, b, dy) = (
        gpu.upload(t(fx, "x")?)?,
        gpu.upload(t(fx, "w")?)?,
        gpu.upload(t(fx, "b")?)?,
        gpu.upload(t(fx, "dy")?)?,
    );
    let ylen = s.n * s.o * s.ho() * s.wo();
    let (mut y, mut dx) = (gpu.zeros(ylen)?, gpu.zeros(s.n * s.c * s.h * s.w)?);
    let (mut dw, mut db) = (gpu.zeros(w.len())?, gpu.zeros(s.o)?);
    // Chunks of half the batch exercise the chunked accumulation of dw and db.
    let mut ws_ = ConvWorkspace::for_shape(gpu, &s, s.n.div_ceil(2))?;
    conv_forward(
        gpu,
        Precision::F32,
        &s,
        &x.as_view(),
        &w.as_view(),
        &b.as_view(),
        &mut y.as_view_mut(),
        false,
        &mut ws_,
    )?;
    let mut dxv = dx.as_view_mut();
    conv_backward(
        gpu,
        Precision::F32,
        &s,
        &x.as_view(),
        &w.as_view(),
        None,
        &dy.as_view(),
        Some(&mut dxv),
        &mut dw.as_view_mut(),
        &mut db.as_view_mut(),
        &mut ws_,
    )?;
    check(fx, "y", &gpu.download(&y)?, e)?;
    check(fx, "dx", &gpu.download(&dx)?, e)?;
    check(fx, "dw", &gpu.download(&dw)?, e)?;
    check(fx, "db", &gpu.download(&db)?, e)
}

fn relu(gpu: &Arc<Gpu>, fx: &Fixture, e: &mut Vec<String>) -> R<()> {
    let x = gpu.upload(t(fx, "x")?)?;
    let mut g = gpu.upload(t(fx, "dy")?)?;
    let mut y = gpu.zeros(x.len())?;
    relu_fwd(gpu, &x.as_view(), &mut y.as_view_mut(), x.len())?;
    relu_mask(gpu, &y.as_view(), &mut g.as_view_mut(), x.len())?;
    check(fx, "y", &gpu.download(&y)?, e)?;
    check(fx, "dx", &gpu.download(&g)?, e)
}

fn lrn(gpu: &Arc<Gpu>, fx: &Fixture, e: &mut Vec<String>) -> R<()> {
    let xs = shape(fx, "x")?;
    let q = LrnParams::new(
        xs[0],
        xs[1],
        xs[2] * xs[3],
        fx.param_usize("size")?,
        fx.param_f64("alpha")? as f32,
        fx.param_f64("beta")? as f32,
        fx.param_f64("k")? as f32,
        false,
    )?;
    let (x, dy) = (gpu.upload(t(fx, "x")?)?, gpu.upload(t(fx, "dy")?)?);
    let (mut y, mut dx) = (gpu.zeros(x.len())?, gpu.zeros(x.len())?);
    lrn_fwd(gpu, &x.as_view(), &mut y.as_view_mut(), q)?;
    lrn_bwd(gpu, &x.as_view(), &dy.as_view(), &mut dx.as_view_mut(), q)?;
    check(fx, "y", &gpu.download(&y)?, e)?;
    check(fx, "dx", &gpu.download(&dx)?, e)
}

fn maxpool(gpu: &Arc<Gpu>, fx: &Fixture, e: &mut Vec<String>) -> R<()> {
    let xs = shape(fx, "x")?;
    let g = PoolGeom::new(
        xs[0] * xs[1],
        xs[2],
        xs[3],
        fx.param_usize("kernel")?,
        fx.param_usize("stride")?,
    )?;
    let (x, dy) = (gpu.upload(t(fx, "x")?)?, gpu.upload(t(fx, "dy")?)?);
    let (mut y, mut dx) = (gpu.zeros(g.out_len())?, gpu.zeros(g.in_len())?);
    let mut arg = gpu
        .stream()
        .alloc_zeros::<i32>(g.out_len())
        .map_err(|e| format!("{e:?}"))?;
    maxpool_fwd(
        gpu,
        &x.as_view(),
        &mut y.as_view_mut(),
        &mut arg.as_view_mut(),
        g,
    )?;
    maxpool_bwd(gpu, &dy.as_view(), &arg.as_view(), &mut dx.as_view_mut(), g)?;
    check(fx, "y", &gpu.download(&y)?, e)?;
    check(fx, "dx", &gpu.download(&dx)?, e)
}

fn linear(gpu: &Arc<Gpu>, fx: &Fixture, e: &mut Vec<String>) -> R<()> {
    let (xs, ws) = (shape(fx, "x")?, shape(fx, "w")?);
    let (n, fin, fout) = (xs[0], xs[1], ws[0]);
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
    let p = Precision::F32;
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
        &mut y.as_view_mut(),
        MatDesc::new(n, fout),
    )?;
    bias_act(gpu, &mut y.as_view_mut(), &b.as_view(), (n, fout, 1), false)?;
    gemm(
        gpu,
        p,
        1.0,
        &dy.as_view(),
        MatDesc::new(n, fout),
        &w.as_view(),
        MatDesc::new(fout, fin),
        0.0,
        &mut dx.as_view_mut(),
        MatDesc::new(n, fin),
    )?;
    gemm(
        gpu,
        p,
        1.0,
        &dy.as_view(),
        MatDesc::new(n, fout).t(),
        &x.as_view(),
        MatDesc::new(n, fin),
        0.0,
        &mut dw.as_view_mut(),
        MatDesc::new(fout, fin),
    )?;
    col_sum(gpu, &dy.as_view(), &mut db.as_view_mut(), (n, fout))?;
    check(fx, "y", &gpu.download(&y)?, e)?;
    check(fx, "dx", &gpu.download(&dx)?, e)?;
    check(fx, "dw", &gpu.download(&dw)?, e)?;
    check(fx, "db", &gpu.download(&db)?, e)
}

fn softmax(gpu: &Arc<Gpu>, fx: &Fixture, e: &mut Vec<String>) -> R<()> {
    let ls = shape(fx, "logits")?;
    let (b, c) = (ls[0], ls[1]);
    let labels: Vec<u32> = fx.ints("labels")?.iter().map(|&l| l as u32).collect();
    let (lg, lb) = (gpu.upload(t(fx, "logits")?)?, gpu.upload(&labels)?);
    let (mut d, mut rows) = (gpu.zeros(b * c)?, gpu.zeros(b)?);
    softmax_ce(
        gpu,
        &lg.as_view(),
        &lb.as_view(),
        &mut d.as_view_mut(),
        &mut rows.as_view_mut(),
        (b, c),
    )?;
    let loss = gpu.download(&rows)?.iter().map(|&r| r as f64).sum::<f64>() / b as f64;
    check(fx, "loss", &[loss as f32], e)?;
    check(fx, "dlogits", &gpu.download(&d)?, e)
}

fn sgd(gpu: &Arc<Gpu>, fx: &Fixture, e: &mut Vec<String>) -> R<()> {
    let (m, wd) = (
        fx.param_f64("momentum")? as f32,
        fx.param_f64("weight_decay")? as f32,
    );
    let (mut w, mut v) = (gpu.upload(t(fx, "w")?)?, gpu.upload(t(fx, "v")?)?);
    let n = w.len();
    if fx.param_usize("steps")? == 2 {
        let (g1, g2) = (gpu.upload(t(fx, "grad1")?)?, gpu.upload(t(fx, "grad2")?)?);
        sgd_step(
            gpu,
            &mut w.as_view_mut(),
            &g1.as_view(),
            &mut v.as_view_mut(),
            n,
            (fx.param_f64("lr1")? as f32, m, wd),
        )?;
        check(fx, "w_mid", &gpu.download(&w)?, e)?;
        check(fx, "v_mid", &gpu.download(&v)?, e)?;
        // Step 2 starts from the stored f32 state, as the fixture defines.
        let (mut w, mut v) = (gpu.upload(t(fx, "w_mid")?)?, gpu.upload(t(fx, "v_mid")?)?);
        sgd_step(
            gpu,
            &mut w.as_view_mut(),
            &g2.as_view(),
            &mut v.as_view_mut(),
            n,
            (fx.param_f64("lr2")? as f32, m, wd),
        )?;
        check(fx, "w_new", &gpu.download(&w)?, e)?;
        return check(fx, "v_new", &gpu.download(&v)?, e);
    }
    let g = gpu.upload(t(fx, "grad")?)?;
    sgd_step(
        gpu,
        &mut w.as_view_mut(),
        &g.as_view(),
        &mut v.as_view_mut(),
        n,
        (fx.param_f64("lr")? as f32, m, wd),
    )?;
    check(fx, "w_new", &gpu.download(&w)?, e)?;
    check(fx, "v_new", &gpu.download(&v)?, e)
}

fn model(gpu: &Arc<Gpu>, fx: &Fixture, e: &mut Vec<String>) -> R<()> {
    let layers: Vec<LayerSpec> = serde_json::from_value(fx.params["layers"].clone())?;
    let xs = shape(fx, "x")?;
    let classes = fx.param_usize("num_classes")?;
    let plan = Plan::new(
        &layers,
        [xs[1], xs[2], xs[3]],
        classes,
        &InitSpec {
            weight_std: 0.01,
            bias: 0.0,
        },
    )?;
    let mut flat = vec![0.0f32; plan.total];
    for p in &plan.params {
        flat[p.offset..p.offset + p.len].copy_from_slice(t(fx, &p.name)?);
    }
    let mut net = GpuNet::new(gpu.clone(), &plan, xs[0], Precision::F32)?;
    net.upload_params(&flat)?;
    net.set_input_grad(true);
    let x = t(fx, "x")?;
    check(fx, "logits", &net.forward(x, false, 0)?, e)?;
    for a in [
        "pool1", "pool2", "relu3", "relu4", "pool5", "relu6", "relu7",
    ] {
        check(fx, &format!("act.{a}"), &net.download_activation(a)?, e)?;
    }
    let labels: Vec<u32> = fx.ints("labels")?.iter().map(|&l| l as u32).collect();
    let loss = net.forward_backward(x, &labels, 0)?;
    check(fx, "loss", &[loss], e)?;
    let grads = net.download_grads()?;
    for p in &plan.params {
        check(
            fx,
            &format!("grad.{}", p.name),
            &grads[p.offset..p.offset + p.len],
            e,
        )?;
    }
    check(fx, "grad.x", &net.download_input_grad()?, e)
}

#[test]
fn cuda_parity_with_every_fixture() {
    if device_count() == 0 {
        println!("skipped: no CUDA device");
        return;
    }
    let gpu = match Gpu::new(0) {
        Ok(g) => Arc::new(g),
        Err(e) => panic!("a CUDA device is present but cannot be opened: {e}"),
    };
    let (mut passed, mut failed, mut errors) = (0, 0, Vec::new());
    for path in fixtures() {
        let fx = match Fixture::load(&path) {
            Ok(f) => f,
            Err(e) => panic!("{e}"),
        };
        let mut errs = Vec::new();
        let r: R<()> = match fx.op.as_str() {
            "conv2d" => conv(&gpu, &fx, &mut errs),
            "relu" => relu(&gpu, &fx, &mut errs),
            "lrn" => lrn(&gpu, &fx, &mut errs),
            "maxpool" => maxpool(&gpu, &fx, &mut errs),
            "linear" => linear(&gpu, &fx, &mut errs),
            "softmax_cross_entropy" => softmax(&gpu, &fx, &mut errs),
            "sgd_step" => sgd(&gpu, &fx, &mut errs),
            "model" => model(&gpu, &fx, &mut errs),
            _ => continue,
        };
        if let Err(err) = r {
            errs.push(format!("{}: {err}", fx.case));
        }
        if errs.is_empty() {
            passed += 1;
        } else {
            failed += 1;
            errors.extend(errs);
        }
    }
    println!("cuda parity: {passed} passed, {failed} failed");
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}
