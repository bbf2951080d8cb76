//! Convolution through cuDNN: forward, backward data and backward filter with groups. Bias
//! (+ReLU) stays in our own epilogue kernel; the bias gradient is our own deterministic
//! per-channel sum.
//!
//! Layouts ([`crate::ConvLayout`], `ALEXNET_CONV_LAYOUT`): NCHW f32 (f32 and TF32 by default),
//! or NHWC (bf16 by default): the operands are transposed into NHWC scratch buffers
//! (`ops::layout`; f32, or bf16 at [`Precision::Bf16`]) and the results back, for cuDNN's
//! tensor-core kernels, which work in NHWC (its bf16 kernels in NCHW were 5-20x slower).
//! Strided convolutions run in space-to-depth form (`ops::space_to_depth`) where
//! [`Gpu::space_to_depth`] says so, in either layout.
//!
//! Algorithms come by default from cuDNN's heuristics (`cudnnGet*Algorithm_v7`), not from timing
//! runs: the choice is then a function of the shape and the card, so two processes pick the same
//! algorithms and a resumed run stays bit-identical to an uninterrupted one.
//! [`AlgoSearch::Timed`](crate::gpu::AlgoSearch::Timed) (`ALEXNET_CUDNN_ALGO=timed`, `bench
//! --cudnn-algo timed`) has cuDNN time every algorithm instead (`cudnnFind*`, PyTorch's
//! `cudnn.benchmark`); its picks can differ between processes, so [`timed_algorithms`] lists
//! them for a training run to keep and [`pin_timed_algorithms`] makes a resumed run take them
//! again. Either way only algorithms that cuDNN reports as deterministic and that fit
//! [`WORKSPACE_LIMIT`] are used. Strict f32 sets `CUDNN_FMA_MATH` (no TF32 tensor cores) and
//! keeps to the GEMM-formulated algorithms (no FFT or Winograd); TF32 and bf16 allow tensor-op
//! math and every deterministic algorithm.
//!
//! Descriptors and algorithms are built once per (shape, precision, search, layout) and cached
//! (`plan.rs`); the workspace and the scratch buffers grow on demand. The handle and plans sit
//! behind one mutex on the [`Gpu`], held for each cuDNN call.

use super::check_len;
use super::conv::{BackwardInputs, ConvShape, ForwardInputs};
use super::elementwise::{bias_act, channel_sum};
use super::layout::{
    from_nhwc, mask_sums_nchw, mask_sums_nhwc, partial_sums_dims, partial_sums_len, to_nhwc,
    NhwcElem,
};
use super::space_to_depth::{self, s2d_for, S2dScratch};
use crate::error::{no_panic, CudaError};
use crate::gpu::{Gpu, Precision};
use cudarc::cudnn::{result, sys};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr, DevicePtrMut};
use std::collections::HashMap;
use std::ffi::c_void;

mod plan;

pub use plan::{pin_timed_algorithms, timed_algorithms, TimedPick, WORKSPACE_LIMIT};
use plan::{plan_for, PinKey, Plan, PlanKey};

/// The cuDNN handle, the plan cache and the scratch buffers of one [`Gpu`].
pub(crate) struct CudnnState {
    handle: sys::cudnnHandle_t,
    plans: HashMap<PlanKey, Plan>,
    /// Algorithms timed plans take instead of timing ([`pin_timed_algorithms`]).
    pinned: HashMap<PinKey, [u32; 3]>,
    workspace: Option<CudaSlice<u8>>,
    /// Taken out of the state while a convolution runs (see [`with_scratch`]).
    scratch: ConvScratch,
}

/// Scratch buffers of the convolutions, grown on demand.
#[derive(Default)]
struct ConvScratch {
    s2d: S2dScratch,
    direct: DirectScratch,
}

/// The masked output gradient (dy * ReLU mask, for a fused conv + ReLU, in NCHW), the bias
/// gradient's partial sums and the NHWC copies.
#[derive(Default)]
struct DirectScratch {
    masked: Option<CudaSlice<f32>>,
    part: Option<CudaSlice<f32>>,
    nhwc: NhwcScratch,
}

/// The NHWC copies of x, w, y (then the output gradient), dw and dx. f32 buffers that hold
/// bf16 in their first half at [`Precision::Bf16`].
#[derive(Default)]
struct NhwcScratch {
    x: Option<CudaSlice<f32>>,
    w: Option<CudaSlice<f32>>,
    y: Option<CudaSlice<f32>>,
    dw: Option<CudaSlice<f32>>,
    dx: Option<CudaSlice<f32>>,
}

// SAFETY: the raw cuDNN handle and descriptors are only used while the owning `Gpu`'s mutex is
// held, so never from two threads at once; cuDNN allows a handle to be used from any thread
// when calls are serialised and the context is current (`Gpu::new` binds it; cudarc binds the
// context on every stream operation).
unsafe impl Send for CudnnState {}

impl Drop for CudnnState {
    fn drop(&mut self) {
        self.plans.clear();
        // SAFETY: the handle was created in `CudnnState::new` and is destroyed once, here.
        unsafe {
            let _ = result::destroy_handle(self.handle);
        }
    }
}

fn shape_name(s: &ConvShape) -> String {
    format!(
        "cudnn conv {}x{}x{}x{} -> {} k{} s{} p{} g{}",
        s.n, s.c, s.h, s.w, s.o, s.k, s.stride, s.pad, s.groups
    )
}

impl CudnnState {
    pub(crate) fn new(gpu: &Gpu) -> Result<Self, CudaError> {
        no_panic("cudnn init", || {
            gpu.ctx
                .bind_to_thread()
                .map_err(CudaError::driver("bind context"))?;
            let handle = result::create_handle().map_err(CudaError::cudnn("cudnnCreate"))?;
            // SAFETY: the handle was just created and the stream is alive for the Gpu's life
            // (the state is owned by the Gpu and dropped with it).
            unsafe { result::set_stream(handle, gpu.stream.cu_stream() as sys::cudaStream_t) }
                .map_err(CudaError::cudnn("cudnnSetStream"))?;
            Ok(CudnnState {
                handle,
                plans: HashMap::new(),
                pinned: HashMap::new(),
                workspace: None,
                scratch: ConvScratch::default(),
            })
        })
    }
}

/// A device pointer as cuDNN takes it.
fn vp(p: u64) -> *const c_void {
    p as usize as *const c_void
}

/// A mutable device pointer as cuDNN takes it.
fn vpm(p: u64) -> *mut c_void {
    p as usize as *mut c_void
}

/// Runs `f` with the scratch buffers taken out of the cuDNN state (so that each cuDNN call can
/// lock the state), and puts them back.
fn with_scratch<R>(
    gpu: &Gpu,
    f: impl FnOnce(&mut ConvScratch) -> Result<R, CudaError>,
) -> Result<R, CudaError> {
    let mut sc = gpu.with_cudnn(|st| Ok(std::mem::take(&mut st.scratch)))?;
    let r = f(&mut sc);
    gpu.with_cudnn(|st| {
        st.scratch = sc;
        Ok(())
    })?;
    r
}

/// One cuDNN convolution call of a plan.
#[derive(Clone, Copy)]
enum Call {
    /// (x, w) -> y
    Forward,
    /// (w, dy) -> dx
    BackwardData,
    /// (x, dy) -> dw
    BackwardFilter,
}

/// Runs `call` of the plan of `s` (at precision `prec`, in NHWC when `nhwc`) on the device
/// buffers at `a`, `b` (the call's two inputs, in the order above) and `out`, which hold the
/// plan's element type and layout.
fn run(
    gpu: &Gpu,
    prec: Precision,
    s: &ConvShape,
    nhwc: bool,
    call: Call,
    (a, b, out): (u64, u64, u64),
) -> Result<(), CudaError> {
    gpu.with_cudnn(|st| {
        let h = st.handle;
        let plan = plan_for(
            &mut st.plans,
            h,
            &st.pinned,
            (*s, prec, gpu.algo_search(), nhwc),
        )?;
        let i = call as usize;
        let ws = gpu.grow(&mut st.workspace, plan.ws[i], "cuDNN workspace")?;
        let ws_len = ws.len();
        let (pws, _gws) = ws.device_ptr_mut(&gpu.stream);
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (al, be) = (
            (&alpha) as *const f32 as *const c_void,
            (&beta) as *const f32 as *const c_void,
        );
        // SAFETY: the callers pass buffers of the plan's descriptors' element counts, types and
        // layouts (checked by `ops::conv` and the transposes); the workspace holds at least the
        // algorithm's size; alpha/beta are f32 as the f32 compute type needs; all work is on the
        // one stream the handle is bound to.
        let r = unsafe {
            match call {
                Call::Forward => result::convolution_forward(
                    h,
                    al,
                    plan.x,
                    vp(a),
                    plan.w,
                    vp(b),
                    plan.conv,
                    plan.fwd,
                    vpm(pws),
                    ws_len,
                    be,
                    plan.y,
                    vpm(out),
                ),
                Call::BackwardData => result::convolution_backward_data(
                    h,
                    al,
                    plan.w,
                    vp(a),
                    plan.y,
                    vp(b),
                    plan.conv,
                    plan.bwd_data,
                    vpm(pws),
                    ws_len,
                    be,
                    plan.x,
                    vpm(out),
                ),
                Call::BackwardFilter => result::convolution_backward_filter(
                    h,
                    al,
                    plan.x,
                    vp(a),
                    plan.y,
                    vp(b),
                    plan.conv,
                    plan.bwd_filter,
                    vpm(pws),
                    ws_len,
                    be,
                    plan.w,
                    vpm(out),
                ),
            }
        };
        let what = ["forward", "backward data", "backward filter"][i];
        r.map_err(CudaError::cudnn(format!("{} {what}", shape_name(s))))
    })
}

/// The device address of a view (valid while the view is; one stream, no event tracking).
fn addr<T>(gpu: &Gpu, v: &CudaView<T>) -> u64 {
    v.device_ptr(&gpu.stream).0
}

/// The device address of a mutable view.
fn addr_mut<T>(gpu: &Gpu, v: &mut CudaViewMut<T>) -> u64 {
    v.device_ptr_mut(&gpu.stream).0
}

/// A scratch slot grown to `n` elements of `T` (f32 slots hold bf16 in their first half).
fn scratch<'a, T>(
    gpu: &Gpu,
    slot: &'a mut Option<CudaSlice<f32>>,
    n: usize,
    what: &str,
) -> Result<CudaViewMut<'a, T>, CudaError> {
    let buf = gpu.grow(slot, n, what)?;
    // SAFETY: T is f32 or u16 (plain data, any bit pattern valid); the slot holds n f32, at
    // least n elements of T.
    unsafe { buf.transmute_mut::<T>(n) }
        .ok_or_else(|| CudaError::invalid("cudnn conv", format!("{what}: scratch too small")))
}

/// y = conv(x, w) + b (then ReLU when `relu`). x: (N,C,H,W), w: (O,C/g,k,k), b: (O),
/// y: (N,O,HO,WO), at `form` = (precision, through NHWC copies). Lengths are checked by the
/// caller (`ops::conv`). Strided convolutions run in space-to-depth form where
/// `space_to_depth::s2d_for` says so.
pub(crate) fn forward(
    gpu: &Gpu,
    form: (Precision, bool),
    s: &ConvShape,
    (x, w, b): ForwardInputs,
    y: &mut CudaViewMut<f32>,
    relu: bool,
) -> Result<(), CudaError> {
    with_scratch(gpu, |sc| {
        let nhwc = &mut sc.direct.nhwc;
        space_to_depth::forward_in_form(gpu, s, x, w, &mut sc.s2d, |t, xs, ws| {
            forward_direct(gpu, form, t, (xs, ws, b), y, relu, nhwc)
        })
    })
}

/// Gradients of a convolution (+ReLU when `y` is given: `y` is then the layer's ReLU output).
/// dy: (N,O,HO,WO) -> dw (O,C/g,k,k) and db (O) overwritten; dx (N,C,H,W) overwritten if given.
/// At `form` = (precision, through NHWC copies); in space-to-depth form where
/// `space_to_depth::s2d_for` says so.
pub(crate) fn backward(
    gpu: &Gpu,
    form: (Precision, bool),
    s: &ConvShape,
    (x, w, y, dy): BackwardInputs,
    dx: Option<&mut CudaViewMut<f32>>,
    dw: &mut CudaViewMut<f32>,
    db: &mut CudaViewMut<f32>,
) -> Result<(), CudaError> {
    with_scratch(gpu, |sc| {
        let direct = &mut sc.direct;
        space_to_depth::backward_in_form(
            gpu,
            s,
            (x, w),
            dx,
            dw,
            &mut sc.s2d,
            |t, (xs, ws), dxs, dws| {
                backward_direct(gpu, form, t, (xs, ws, y, dy), dxs, dws, db, direct)
            },
        )
    })
}

/// y = conv(x, w) + b (then ReLU when `relu`) as one cuDNN convolution of shape `s`, in NCHW or
/// through NHWC copies.
fn forward_direct(
    gpu: &Gpu,
    (prec, nhwc): (Precision, bool),
    s: &ConvShape,
    (x, w, b): ForwardInputs,
    y: &mut CudaViewMut<f32>,
    relu: bool,
    sc: &mut NhwcScratch,
) -> Result<(), CudaError> {
    let (hw, ny) = (s.ho() * s.wo(), s.n * s.o * s.ho() * s.wo());
    let mut yv = y.slice_mut(0..ny);
    if nhwc {
        return match prec {
            Precision::Bf16 => forward_nhwc::<u16>(gpu, prec, s, (x, w, b), &mut yv, relu, sc),
            _ => forward_nhwc::<f32>(gpu, prec, s, (x, w, b), &mut yv, relu, sc),
        };
    }
    let (px, pw, py) = (addr(gpu, x), addr(gpu, w), addr_mut(gpu, &mut yv));
    run(gpu, prec, s, false, Call::Forward, (px, pw, py))?;
    // y (N, O, HO*WO) += b (ReLU)
    bias_act(gpu, &mut yv, b, (s.n, s.o, hw), relu)
}

/// [`forward_direct`] through NHWC copies of element type `T`.
fn forward_nhwc<T: NhwcElem>(
    gpu: &Gpu,
    prec: Precision,
    s: &ConvShape,
    (x, w, b): ForwardInputs,
    y: &mut CudaViewMut<f32>,
    relu: bool,
    sc: &mut NhwcScratch,
) -> Result<(), CudaError> {
    let (hw, cg, kk) = (s.ho() * s.wo(), s.c / s.groups, s.k * s.k);
    let (nx, nw, ny) = (s.n * s.c * s.h * s.w, s.o * s.kdim(), s.n * s.o * hw);
    let mut xh = scratch::<T>(gpu, &mut sc.x, nx, "NHWC input")?;
    let mut wh = scratch::<T>(gpu, &mut sc.w, nw, "NHWC weights")?;
    let mut yh = scratch::<T>(gpu, &mut sc.y, ny, "NHWC output")?;
    // x: (N,C,H,W) -> (N,H,W,C); w: (O,C/g,K,K) -> (O,K,K,C/g)
    to_nhwc(gpu, x, &mut xh, (s.n, s.c, s.h * s.w))?;
    to_nhwc(gpu, w, &mut wh, (s.o, cg, kk))?;
    let p = (
        addr_mut(gpu, &mut xh),
        addr_mut(gpu, &mut wh),
        addr_mut(gpu, &mut yh),
    );
    run(gpu, prec, s, true, Call::Forward, p)?;
    // y: (N,HO,WO,O) -> (N,O,HO,WO) + b (ReLU)
    from_nhwc(gpu, &yh.as_view(), Some(b), y, (s.n, s.o, hw), relu)
}

/// Gradients of one cuDNN convolution of shape `s` (see [`backward`]), in NCHW or through NHWC
/// copies.
#[allow(clippy::too_many_arguments)]
fn backward_direct(
    gpu: &Gpu,
    (prec, nhwc): (Precision, bool),
    s: &ConvShape,
    (x, w, y, dy): BackwardInputs,
    dx: Option<&mut CudaViewMut<f32>>,
    dw: &mut CudaViewMut<f32>,
    db: &mut CudaViewMut<f32>,
    sc: &mut DirectScratch,
) -> Result<(), CudaError> {
    let ny = s.n * s.o * s.ho() * s.wo();
    let dims = (s.n, s.o, s.ho() * s.wo());
    let dy = dy.slice(0..ny);
    let y = match y {
        Some(yv) => {
            check_len("conv2d backward", "y", yv.len(), ny)?;
            Some(yv.slice(0..ny))
        }
        None => None,
    };
    let np = partial_sums_len(dims);
    let part = gpu.grow(&mut sc.part, np, "the conv bias partial sums")?;
    let mut part = part.slice_mut(0..np);
    if nhwc {
        let h = &mut sc.nhwc;
        let io = (x, w, y.as_ref(), &dy);
        return match prec {
            Precision::Bf16 => backward_nhwc::<u16>(gpu, prec, s, io, dx, dw, db, &mut part, h),
            _ => backward_nhwc::<f32>(gpu, prec, s, io, dx, dw, db, &mut part, h),
        };
    }
    // The gradient at the conv output: dy, or dy * (y > 0) for a fused ReLU; and the partial
    // sums of the bias gradient, in one pass.
    let g: CudaView<f32> = match &y {
        Some(yv) => {
            let m = gpu.grow(&mut sc.masked, ny, "the masked conv gradient")?;
            let mut mv = m.slice_mut(0..ny);
            mask_sums_nchw(gpu, &dy, Some(yv), Some(&mut mv), &mut part, dims)?;
            m.slice(0..ny)
        }
        None => {
            mask_sums_nchw(gpu, &dy, None, None, &mut part, dims)?;
            dy.slice(0..ny)
        }
    };
    // db (O) = sums of the partial sums (N, O, tiles)
    channel_sum(gpu, &part.as_view(), db, partial_sums_dims(dims))?;
    let (px, pw, pg) = (addr(gpu, x), addr(gpu, w), addr(gpu, &g));
    let pdw = addr_mut(gpu, dw);
    run(gpu, prec, s, false, Call::BackwardFilter, (px, pg, pdw))?;
    if let Some(dx) = dx {
        let pdx = addr_mut(gpu, dx);
        run(gpu, prec, s, false, Call::BackwardData, (pw, pg, pdx))?;
    }
    Ok(())
}

/// [`backward_direct`] through NHWC copies of type `T`: the masked output gradient goes
/// straight into its NHWC copy, with the bias gradient's partial sums in `part`.
#[allow(clippy::too_many_arguments)]
fn backward_nhwc<T: NhwcElem>(
    gpu: &Gpu,
    prec: Precision,
    s: &ConvShape,
    (x, w, y, dy): BackwardInputs,
    dx: Option<&mut CudaViewMut<f32>>,
    dw: &mut CudaViewMut<f32>,
    db: &mut CudaViewMut<f32>,
    part: &mut CudaViewMut<f32>,
    sc: &mut NhwcScratch,
) -> Result<(), CudaError> {
    let (hw, cg, kk) = (s.ho() * s.wo(), s.c / s.groups, s.k * s.k);
    let (nx, nw, ny) = (s.n * s.c * s.h * s.w, s.o * s.kdim(), s.n * s.o * hw);
    let mut xh = scratch::<T>(gpu, &mut sc.x, nx, "NHWC input")?;
    let mut gh = scratch::<T>(gpu, &mut sc.y, ny, "NHWC output gradient")?;
    let mut dwh = scratch::<T>(gpu, &mut sc.dw, nw, "NHWC weight gradient")?;
    // dy (* (y > 0)): (N,O,HO,WO) -> g: (N,HO,WO,O), + partial sums (N, O, tiles)
    mask_sums_nhwc(gpu, dy, y, &mut gh, part, (s.n, s.o, hw))?;
    // db (O) = sums of the partial sums
    channel_sum(gpu, &part.as_view(), db, partial_sums_dims((s.n, s.o, hw)))?;
    // x: (N,C,H,W) -> (N,H,W,C)
    to_nhwc(gpu, x, &mut xh, (s.n, s.c, s.h * s.w))?;
    let pg = addr_mut(gpu, &mut gh);
    let p = (addr_mut(gpu, &mut xh), pg, addr_mut(gpu, &mut dwh));
    run(gpu, prec, s, true, Call::BackwardFilter, p)?;
    // dw: (O,K,K,C/g) -> (O,C/g,K,K)
    from_nhwc(gpu, &dwh.as_view(), None, dw, (s.o, cg, kk), false)?;
    if let Some(dx) = dx {
        let mut wh = scratch::<T>(gpu, &mut sc.w, nw, "NHWC weights")?;
        let mut dxh = scratch::<T>(gpu, &mut sc.dx, nx, "NHWC input gradient")?;
        to_nhwc(gpu, w, &mut wh, (s.o, cg, kk))?;
        let p = (addr_mut(gpu, &mut wh), pg, addr_mut(gpu, &mut dxh));
        run(gpu, prec, s, true, Call::BackwardData, p)?;
        // dx: (N,H,W,C) -> (N,C,H,W)
        from_nhwc(gpu, &dxh.as_view(), None, dx, (s.n, s.c, s.h * s.w), false)?;
    }
    Ok(())
}

/// The algorithms cuDNN chose for `s` at `p` (for reports): (forward, backward data, backward
/// filter) as cuDNN's enum names.
pub fn chosen_algorithms(
    gpu: &Gpu,
    s: &ConvShape,
    p: Precision,
) -> Result<(String, String, String), CudaError> {
    let s = s2d_for(gpu, s).unwrap_or(*s);
    gpu.with_cudnn(|st| {
        let key = (s, p, gpu.algo_search(), gpu.conv_nhwc_for(p));
        let plan = plan_for(&mut st.plans, st.handle, &st.pinned, key)?;
        Ok((
            format!("{:?}", plan.fwd),
            format!("{:?}", plan.bwd_data),
            format!("{:?}", plan.bwd_filter),
        ))
    })
}
