//! Winograd convolutions F(m x m, r x r) for the 3x3 and 5x5 stride-1 layers, and strided ones in
//! space-to-depth form (the paper's conv1), with `--conv winograd` ([`crate::ConvImpl::Winograd`];
//! f32 GEMMs in f32, TF32 ones in TF32 and bf16): the transforms are our kernels
//! (`kernels/winograd.cu`), the products one strided-batched cuBLAS GEMM per pass, over the a^2
//! positions of the transformed tiles and the groups. Forward, data and filter gradients all run in
//! the transformed domain, as on the CPU (`alexnet-layers`' winograd module, whose Toom-Cook
//! matrices these are): with F(4x4, 5x5) conv2 costs 5.8x fewer multiply-adds than the direct form
//! on its 27x27 planes, and F(4x4, 3x3) conv3-5 2.6x fewer on 13x13 (tiles overhang the edges),
//! against ~1e-6 relative error in f32 (cuDNN's Winograd and FFT algorithms, which strict f32
//! leaves out, moved gradients by up to 4e-4).
//!
//! The batch runs in chunks of samples so that the transformed tensors stay within [`WINO_BUDGET`]
//! elements; the filter gradient accumulates over the chunks in the transformed domain (the GEMM's
//! beta) and is transformed back once.

use super::conv::{BackwardInputs, ConvShape, ConvWorkspace, ForwardInputs};
use super::elementwise::{nchw_to_cnhw_mask, row_sum};
use super::gemm::gemm_batched;
use super::space_to_depth;
use super::{check_len, sub, sub_mut};
use crate::error::CudaError;
use crate::gpu::{grid_for, Gpu, Precision};
use crate::kernels::KernelFile;
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, PushKernelArg};

mod geom;

use geom::aligned;
pub use geom::{
    chunk, chunks, gemm_precision, tile_m, winograd_shape, Pass, Products, Transform, WinoGeom,
    WinoMats, WINO_BUDGET,
};

const F: KernelFile = KernelFile::Winograd;
const OP: &str = "winograd conv2d";

/// The [`winograd_shape`] of `s`, or an error naming it.
fn stride1_shape(gpu: &Gpu, s: &ConvShape) -> Result<ConvShape, CudaError> {
    winograd_shape(s, gpu.space_to_depth())
        .ok_or_else(|| CudaError::invalid(OP, format!("no Winograd form for {s:?}")))
}

/// The parts of the workspace, in the order of [`WinoGeom::workspace_len`].
struct Parts<'a> {
    u: CudaViewMut<'a, f32>,
    du: CudaViewMut<'a, f32>,
    v: CudaViewMut<'a, f32>,
    dv: CudaViewMut<'a, f32>,
    mm: CudaViewMut<'a, f32>,
    t: CudaViewMut<'a, f32>,
}

/// Grows `slot` (the workspace's `wino`) to the workspace of `g` (the largest chunk) and runs
/// `f` on its parts.
fn with_parts<R>(
    gpu: &Gpu,
    slot: &mut Option<CudaSlice<f32>>,
    g: &WinoGeom,
    f: impl FnOnce(Parts<'_>) -> Result<R, CudaError>,
) -> Result<R, CudaError> {
    let buf = gpu.grow(slot, g.workspace_len(), "winograd workspace")?;
    let bad = || CudaError::invalid(OP, "workspace smaller than its parts");
    let [lu, _, lv, _, lm, _] = g.parts().map(aligned);
    let mut all = buf.as_view_mut();
    let (u, mut rest) = all.try_split_at_mut(lu).ok_or_else(bad)?;
    let (du, mut rest) = rest.try_split_at_mut(lu).ok_or_else(bad)?;
    let (v, mut rest) = rest.try_split_at_mut(lv).ok_or_else(bad)?;
    let (dv, mut rest) = rest.try_split_at_mut(lv).ok_or_else(bad)?;
    let (mm, t) = rest.try_split_at_mut(lm).ok_or_else(bad)?;
    f(Parts {
        u,
        du,
        v,
        dv,
        mm,
        t,
    })
}

/// The batched GEMM of `pass` over chunk `g` on cuBLAS.
#[allow(clippy::too_many_arguments)]
fn products(
    gpu: &Gpu,
    prec: Precision,
    g: &WinoGeom,
    pass: Pass,
    a: &CudaView<f32>,
    b: &CudaView<f32>,
    beta: f32,
    c: &mut CudaViewMut<f32>,
) -> Result<(), CudaError> {
    let pr = Products::of(g, pass);
    gemm_batched(
        gpu,
        gemm_precision(prec),
        1.0,
        (a, pr.a),
        (b, pr.b),
        beta,
        (c, pr.c),
        pr.batch,
    )
}

/// y = conv(x, w) + b (then ReLU when `relu`) by Winograd F(m x m, k x k) ([`tile_m`]), a strided
/// convolution in its space-to-depth form ([`winograd_shape`]): x (N, C, H, W),
/// w (O, C/g, K, K), b (O), y (N, O, HO, WO).
pub fn forward(
    gpu: &Gpu,
    prec: Precision,
    s: &ConvShape,
    (x, w, b): ForwardInputs,
    y: &mut CudaViewMut<f32>,
    relu: bool,
    ws: &mut ConvWorkspace,
) -> Result<(), CudaError> {
    stride1_shape(gpu, s)?;
    space_to_depth::forward_in_form(gpu, s, x, w, &mut ws.s2d, |t, xs, wt| {
        forward_stride1(gpu, prec, t, (xs, wt, b), y, relu, &mut ws.wino)
    })
}

/// [`forward`] of a stride-1 convolution (3x3 or 5x5).
fn forward_stride1(
    gpu: &Gpu,
    prec: Precision,
    s: &ConvShape,
    (x, w, b): ForwardInputs,
    y: &mut CudaViewMut<f32>,
    relu: bool,
    slot: &mut Option<CudaSlice<f32>>,
) -> Result<(), CudaError> {
    let m = tile_m(prec, s.k, gpu.winograd_tile());
    let t = WinoMats::new(m, s.k)?;
    let (full, parts) = chunks(s, m, WINO_BUDGET)?;
    let (chw, ohw) = (s.c * s.h * s.w, s.o * s.ho() * s.wo());
    with_parts(gpu, slot, &full, |mut ps| {
        // w (O, C/g, k, k) -> U [g][xi][o'][c']
        transform(gpu, Transform::Filter, (w, &mut ps.u), (&full, &t))?;
        for (n0, g) in parts {
            let nb = g.nb as usize;
            let xc = sub(OP, x, n0 * chw, nb * chw)?;
            // x chunk (nb, C, H, W) -> V [g][xi][c'][p]
            transform(gpu, Transform::Input, (&xc, &mut ps.v), (&g, &t))?;
            // M = U V
            let (u, v) = (ps.u.as_view(), ps.v.as_view());
            products(gpu, prec, &g, Pass::Forward, &u, &v, 0.0, &mut ps.mm)?;
            let mut yc = sub_mut(OP, y, n0 * ohw, nb * ohw)?;
            // M -> y chunk (nb, O, HO, WO) + b (ReLU)
            output(gpu, &ps.mm.as_view(), b, &mut yc, &g, &t, relu)?;
        }
        Ok(())
    })
}

/// Gradients of a convolution (+ReLU when `y`, the layer's ReLU output, is given) by Winograd
/// F(m x m, k x k) ([`tile_m`]), a strided convolution in its space-to-depth form
/// ([`winograd_shape`]): dy (N, O, HO, WO) -> dw (O, C/g, K, K) and db (O) overwritten,
/// dx (N, C, H, W) overwritten when given.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    gpu: &Gpu,
    prec: Precision,
    s: &ConvShape,
    (x, w, y, dy): BackwardInputs,
    dx: Option<&mut CudaViewMut<f32>>,
    dw: &mut CudaViewMut<f32>,
    db: &mut CudaViewMut<f32>,
    ws: &mut ConvWorkspace,
) -> Result<(), CudaError> {
    stride1_shape(gpu, s)?;
    let slot = &mut ws.wino;
    space_to_depth::backward_in_form(
        gpu,
        s,
        (x, w),
        dx,
        dw,
        &mut ws.s2d,
        |t, (xs, wt), dxs, dwt| backward_stride1(gpu, prec, t, (xs, wt, y, dy), dxs, dwt, db, slot),
    )
}

/// [`backward`] of a stride-1 convolution (3x3 or 5x5).
#[allow(clippy::too_many_arguments)]
fn backward_stride1(
    gpu: &Gpu,
    prec: Precision,
    s: &ConvShape,
    (x, w, y, dy): BackwardInputs,
    dx: Option<&mut CudaViewMut<f32>>,
    dw: &mut CudaViewMut<f32>,
    db: &mut CudaViewMut<f32>,
    slot: &mut Option<CudaSlice<f32>>,
) -> Result<(), CudaError> {
    let m = tile_m(prec, s.k, gpu.winograd_tile());
    let t = WinoMats::new(m, s.k)?;
    let (full, parts) = chunks(s, m, WINO_BUDGET)?;
    let hw = s.ho() * s.wo();
    let (chw, ohw) = (s.c * s.h * s.w, s.o * hw);
    let mut dx = dx;
    with_parts(gpu, slot, &full, |mut ps| {
        if dx.is_some() {
            // w -> U, for dV
            transform(gpu, Transform::Filter, (w, &mut ps.u), (&full, &t))?;
        }
        for (n0, g) in parts {
            let nb = g.nb as usize;
            let first = n0 == 0;
            let dyc = sub(OP, dy, n0 * ohw, nb * ohw)?;
            let yc = match y {
                Some(y) => Some(sub(OP, y, n0 * ohw, nb * ohw)?),
                None => None,
            };
            let mut tc = sub_mut(OP, &mut ps.t, 0, g.t_len())?;
            // dy chunk (nb, O, HO, WO) (* ReLU mask) -> t (O, nb, HO, WO)
            nchw_to_cnhw_mask(gpu, &dyc, yc.as_ref(), &mut tc, (nb, s.o, hw))?;
            // db (O) (+)= row sums of t (O, nb HO WO)
            row_sum(gpu, &tc.as_view(), db, (s.o, nb * hw), !first)?;
            let xc = sub(OP, x, n0 * chw, nb * chw)?;
            // x chunk -> V [g][xi][c'][p]
            transform(gpu, Transform::Input, (&xc, &mut ps.v), (&g, &t))?;
            // t -> dM [g][xi][o'][p]
            let dy_t = tc.as_view();
            transform(gpu, Transform::OutputGrad, (&dy_t, &mut ps.mm), (&g, &t))?;
            // dU (+)= dM V^T, accumulated over the chunks
            let (dm, v) = (ps.mm.as_view(), ps.v.as_view());
            let beta = if first { 0.0 } else { 1.0 };
            products(gpu, prec, &g, Pass::FilterGrad, &dm, &v, beta, &mut ps.du)?;
            if let Some(dxv) = dx.as_deref_mut() {
                // dV = U^T dM
                let u = ps.u.as_view();
                products(gpu, prec, &g, Pass::InputGrad, &u, &dm, 0.0, &mut ps.dv)?;
                // dV -> the patches' gradients, into V's buffer (V is no longer read)
                let (tiles, dv) = (Transform::InputGradTiles, ps.dv.as_view());
                transform(gpu, tiles, (&dv, &mut ps.v), (&g, &t))?;
                let mut dxc = sub_mut(OP, dxv, n0 * chw, nb * chw)?;
                // patches -> dx chunk (nb, C, H, W)
                input_grad(gpu, &ps.v.as_view(), &mut dxc, &g)?;
            }
        }
        // dU -> dw (O, C/g, k, k)
        transform(
            gpu,
            Transform::FilterGrad,
            (&ps.du.as_view(), dw),
            (&full, &t),
        )
    })
}

/// One launch of transform `tr` from `src` into `dst` over chunk `g`, after checking that they
/// hold the elements it reads and writes.
fn transform(
    gpu: &Gpu,
    tr: Transform,
    (src, dst): (&CudaView<f32>, &mut CudaViewMut<f32>),
    (g, t): (&WinoGeom, &WinoMats),
) -> Result<(), CudaError> {
    let (name, [ls, ld]) = (tr.kernel(), tr.lens(g));
    check_len(OP, name, src.len(), ls)?;
    check_len(OP, name, dst.len(), ld)?;
    let Some(cfg) = grid_for(tr.threads(g)) else {
        return Ok(());
    };
    let f = gpu.function(F, name)?;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(src).arg(dst).arg(g).arg(t);
    // SAFETY: every transform kernel has the signature `(const float*, float*, WinoGeom,
    // WinoMats)`; src and dst hold the lengths the kernel reads and writes over its threads
    // (`Transform::lens`, checked above), and they are distinct (one shared, one exclusive
    // borrow).
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver(name))
        .map(|_| ())
}

/// mm [g][xi][o'][p] -> y chunk (nb, O, HO, WO) (y = A^T M A + b, ReLU when `relu`).
fn output(
    gpu: &Gpu,
    mm: &CudaView<f32>,
    b: &CudaView<f32>,
    y: &mut CudaViewMut<f32>,
    g: &WinoGeom,
    t: &WinoMats,
    relu: bool,
) -> Result<(), CudaError> {
    check_len(OP, "M", mm.len(), g.m_len())?;
    check_len(OP, "b", b.len(), g.o as usize)?;
    check_len(OP, "y", y.len(), g.t_len())?;
    let Some(cfg) = grid_for(g.o as u64 * g.p as u64) else {
        return Ok(());
    };
    let f = gpu.function(F, "wino_output")?;
    let relu = relu as i32;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(mm).arg(b).arg(y).arg(g).arg(t).arg(&relu);
    // SAFETY: types match `wino_output(const float*, const float*, float*, WinoGeom, WinoMats,
    // int)`; mm holds a^2 O P, b O and y the output chunk (checked).
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver("wino_output"))
        .map(|_| ())
}

/// The patches' gradients -> dx chunk (nb, C, H, W), summed per pixel in a fixed order.
fn input_grad(
    gpu: &Gpu,
    dd: &CudaView<f32>,
    dx: &mut CudaViewMut<f32>,
    g: &WinoGeom,
) -> Result<(), CudaError> {
    check_len(OP, "patches", dd.len(), g.v_len())?;
    check_len(OP, "dx", dx.len(), g.x_len())?;
    let Some(cfg) = grid_for(g.x_len() as u64) else {
        return Ok(());
    };
    let f = gpu.function(F, "wino_input_grad")?;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(dd).arg(dx).arg(g);
    // SAFETY: types match `wino_input_grad(const float*, float*, WinoGeom)`; dd holds a^2 C P
    // and dx nb C H W elements (checked).
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver("wino_input_grad"))
        .map(|_| ())
}
