//! Convolution through cuDNN (f32 and TF32; bf16 stays on im2col, see `ops::conv`): forward,
//! backward data and backward filter with groups, NCHW. Bias (+ReLU) stays in our own epilogue kernel; the bias gradient is our own
//! deterministic per-channel sum.
//!
//! Algorithms come by default from cuDNN's heuristics (`cudnnGet*Algorithm_v7`), not from timing
//! runs: the choice is then a function of the shape and the card, so two processes pick the same
//! algorithms and a resumed run stays bit-identical to an uninterrupted one.
//! [`AlgoSearch::Timed`] (`ALEXNET_CUDNN_ALGO=timed`, `bench --cudnn-algo timed`) has cuDNN time
//! every algorithm instead (`cudnnFind*`, PyTorch's `cudnn.benchmark`). Either way only algorithms
//! that cuDNN reports as deterministic and that fit [`WORKSPACE_LIMIT`] are used. Strict f32
//! sets `CUDNN_FMA_MATH` (no TF32 tensor cores) and keeps to the GEMM-formulated algorithms (no
//! FFT or Winograd); TF32 allows tensor-op math and every deterministic algorithm.
//!
//! Descriptors and algorithms are built once per (shape, precision) and cached; the workspace
//! and the masked-gradient scratch grow on demand. Everything sits behind one mutex on the
//! [`Gpu`], which also serialises the use of the cuDNN handle.

use super::check_len;
use super::conv::ConvShape;
use super::elementwise::{bias_act, channel_sum, relu_mask_to};
use super::space_to_depth::{self, s2d_shape};
use crate::error::{no_panic, CudaError};
use crate::gpu::{AlgoSearch, Gpu, Precision};
use cudarc::cudnn::{result, sys};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr, DevicePtrMut};
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::{c_int, c_void};

/// Largest workspace one algorithm may ask for.
pub const WORKSPACE_LIMIT: usize = 1 << 30;

/// Descriptors and chosen algorithms of one convolution shape.
struct Plan {
    x: sys::cudnnTensorDescriptor_t,
    y: sys::cudnnTensorDescriptor_t,
    w: sys::cudnnFilterDescriptor_t,
    conv: sys::cudnnConvolutionDescriptor_t,
    fwd: sys::cudnnConvolutionFwdAlgo_t,
    bwd_data: sys::cudnnConvolutionBwdDataAlgo_t,
    bwd_filter: sys::cudnnConvolutionBwdFilterAlgo_t,
    /// Bytes of workspace of the three algorithms (fwd, data, filter).
    ws: [usize; 3],
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each descriptor was created by this plan and is destroyed once, here. Errors
        // on destruction cannot be acted upon and are ignored.
        unsafe {
            let _ = result::destroy_tensor_descriptor(self.x);
            let _ = result::destroy_tensor_descriptor(self.y);
            let _ = result::destroy_filter_descriptor(self.w);
            let _ = result::destroy_convolution_descriptor(self.conv);
        }
    }
}

/// The cuDNN handle, the plan cache and the scratch buffers of one [`Gpu`].
pub(crate) struct CudnnState {
    handle: sys::cudnnHandle_t,
    plans: HashMap<(ConvShape, Precision, AlgoSearch), Plan>,
    workspace: Option<CudaSlice<u8>>,
    /// dy * ReLU mask, for the backward of a fused conv + ReLU.
    masked: Option<CudaSlice<f32>>,
    /// Operands of the space-to-depth form (see [`S2dScratch`]).
    s2d: S2dScratch,
}

/// The regrouped operands of a convolution in space-to-depth form (`ops::space_to_depth`):
/// input, input gradient, weights and weight gradient. Taken out of the state while in use, so
/// the convolution itself can lock the state again.
#[derive(Default)]
struct S2dScratch {
    x: Option<CudaSlice<f32>>,
    dx: Option<CudaSlice<f32>>,
    w: Option<CudaSlice<f32>>,
    dw: Option<CudaSlice<f32>>,
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

fn int(op: &'static str, v: usize) -> Result<c_int, CudaError> {
    c_int::try_from(v).map_err(|_| CudaError::invalid(op, format!("dimension {v} exceeds i32")))
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
                workspace: None,
                masked: None,
                s2d: S2dScratch::default(),
            })
        })
    }
}

/// The cached plan of `s` at precision `p` (built on first use). A free function over the
/// plan map, so callers can hold it while they borrow the state's scratch buffers.
fn plan_for<'a>(
    plans: &'a mut HashMap<(ConvShape, Precision, AlgoSearch), Plan>,
    handle: sys::cudnnHandle_t,
    s: &ConvShape,
    (p, a): (Precision, AlgoSearch),
) -> Result<&'a Plan, CudaError> {
    Ok(match plans.entry((*s, p, a)) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(v) => v.insert(no_panic("cudnn plan", || build_plan(handle, s, p, a))?),
    })
}

/// Creates the descriptors of `s` and picks the algorithms (by heuristics or by timing, `a`).
fn build_plan(
    h: sys::cudnnHandle_t,
    s: &ConvShape,
    p: Precision,
    a: AlgoSearch,
) -> Result<Plan, CudaError> {
    let op = "cudnn conv plan";
    let name = shape_name(s);
    let e = |what: &str| CudaError::cudnn(format!("{name}: {what}"));
    let f32t = sys::cudnnDataType_t::CUDNN_DATA_FLOAT;
    if p == Precision::Bf16 {
        return Err(CudaError::invalid(
            "cudnn",
            "bf16 convolutions run as im2col + bf16 GEMMs (see ops::conv)",
        ));
    }
    let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
    let (n, c, hh, ww) = (int(op, s.n)?, int(op, s.c)?, int(op, s.h)?, int(op, s.w)?);
    let (o, k, g) = (int(op, s.o)?, int(op, s.k)?, int(op, s.groups)?);
    let (ho, wo) = (int(op, s.ho())?, int(op, s.wo())?);
    let (pad, stride) = (int(op, s.pad)?, int(op, s.stride)?);
    let x = result::create_tensor_descriptor().map_err(e("create x"))?;
    let y = result::create_tensor_descriptor().map_err(e("create y"))?;
    let w = result::create_filter_descriptor().map_err(e("create w"))?;
    let conv = result::create_convolution_descriptor().map_err(e("create conv"))?;
    // From here the plan owns the descriptors (its Drop destroys them on an early return).
    let mut plan = Plan {
        x,
        y,
        w,
        conv,
        fwd: sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
        bwd_data: sys::cudnnConvolutionBwdDataAlgo_t::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
        bwd_filter: sys::cudnnConvolutionBwdFilterAlgo_t::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
        ws: [0; 3],
    };
    let math = match p {
        Precision::F32 => sys::cudnnMathType_t::CUDNN_FMA_MATH,
        _ => sys::cudnnMathType_t::CUDNN_DEFAULT_MATH,
    };
    // SAFETY: the descriptors were just created; the dims are positive i32 (validated shape).
    unsafe {
        result::set_tensor4d_descriptor(x, nchw, f32t, [n, c, hh, ww]).map_err(e("set x"))?;
        result::set_tensor4d_descriptor(y, nchw, f32t, [n, o, ho, wo]).map_err(e("set y"))?;
        result::set_filter4d_descriptor(w, f32t, nchw, [o, c / g, k, k]).map_err(e("set w"))?;
        result::set_convolution2d_descriptor(
            conv,
            pad,
            pad,
            stride,
            stride,
            1,
            1,
            sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
            f32t,
        )
        .map_err(e("set conv"))?;
        result::set_convolution_group_count(conv, g).map_err(e("set groups"))?;
        result::set_convolution_math_type(conv, math).map_err(e("set math"))?;
    }
    let det = sys::cudnnDeterminism_t::CUDNN_DETERMINISTIC;
    let ok = sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS;
    let strict_ok = |m: sys::cudnnMathType_t| {
        p != Precision::F32
            || matches!(
                m,
                sys::cudnnMathType_t::CUDNN_FMA_MATH | sys::cudnnMathType_t::CUDNN_DEFAULT_MATH
            )
    };
    // Strict f32 also keeps to the GEMM-formulated algorithms: FFT and Winograd transform the
    // operands and were measured on an H200 to move gradients by ~4e-4 (above the 1e-4 parity
    // bound) for no speed gain on this network.
    let strict = p == Precision::F32;
    use sys::cudnnConvolutionBwdDataAlgo_t as D;
    use sys::cudnnConvolutionBwdFilterAlgo_t as W;
    use sys::cudnnConvolutionFwdAlgo_t as F;
    let fwd_ok = |a: F| {
        !strict
            || matches!(
                a,
                F::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM
                    | F::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM
                    | F::CUDNN_CONVOLUTION_FWD_ALGO_GEMM
            )
    };
    let data_ok = |a: D| {
        !strict
            || matches!(
                a,
                D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_0 | D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1
            )
    };
    let filter_ok = |a: W| {
        !strict
            || matches!(
                a,
                W::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0
                    | W::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1
                    | W::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3
            )
    };
    // The first usable algorithm of cuDNN's ranked list: the heuristics' ranking, or the
    // measured times (`cudnnFind*` runs every algorithm on scratch buffers it allocates and
    // returns them fastest first). One macro for the three directions: their perf structs are
    // distinct types with the same fields.
    let timed = a == AlgoSearch::Timed;
    macro_rules! pick {
        ($perf:ty, $get:path, $find:path, ($a:expr, $b:expr, $c:expr, $d:expr), $algo_ok:expr, $what:expr) => {{
            const N: usize = 16;
            let mut cnt: c_int = 0;
            // SAFETY: zeroed perf structs are valid plain data; the call writes at most N.
            let mut perf: [$perf; N] = unsafe { std::mem::zeroed() };
            // SAFETY: handle and descriptors are valid; `perf` holds N entries.
            unsafe {
                if timed {
                    $find(h, $a, $b, $c, $d, N as c_int, &mut cnt, perf.as_mut_ptr()).result()
                } else {
                    $get(h, $a, $b, $c, $d, N as c_int, &mut cnt, perf.as_mut_ptr())
                }
            }
            .map_err(e(if timed {
                concat!($what, " timing (cudnnFind)")
            } else {
                concat!($what, " heuristics")
            }))?;
            let best = perf[..(cnt.max(0) as usize).min(N)]
                .iter()
                .find(|r| {
                    r.status == ok
                        && r.determinism == det
                        && r.memory <= WORKSPACE_LIMIT
                        && strict_ok(r.mathType)
                        && $algo_ok(r.algo)
                })
                .ok_or_else(|| CudaError::Cudnn {
                    op: name.clone(),
                    detail: concat!("no deterministic ", $what, " algorithm").into(),
                })?;
            (best.algo, best.memory)
        }};
    }
    (plan.fwd, plan.ws[0]) = pick!(
        sys::cudnnConvolutionFwdAlgoPerf_t,
        result::get_convolution_forward_algorithm,
        sys::cudnnFindConvolutionForwardAlgorithm,
        (x, w, conv, y),
        fwd_ok,
        "forward"
    );
    (plan.bwd_data, plan.ws[1]) = pick!(
        sys::cudnnConvolutionBwdDataAlgoPerf_t,
        result::get_convolution_backward_data_algorithm,
        sys::cudnnFindConvolutionBackwardDataAlgorithm,
        (w, y, conv, x),
        data_ok,
        "backward-data"
    );
    (plan.bwd_filter, plan.ws[2]) = pick!(
        sys::cudnnConvolutionBwdFilterAlgoPerf_t,
        result::get_convolution_backward_filter_algorithm,
        sys::cudnnFindConvolutionBackwardFilterAlgorithm,
        (x, y, conv, w),
        filter_ok,
        "backward-filter"
    );
    // The heuristics' memory figure is an estimate: ask for the exact sizes.
    // SAFETY: handle, descriptors and algorithms are valid.
    unsafe {
        plan.ws[0] = plan.ws[0].max(
            result::get_convolution_forward_workspace_size(h, x, w, conv, y, plan.fwd)
                .map_err(e("forward workspace"))?,
        );
        plan.ws[1] = plan.ws[1].max(
            result::get_convolution_backward_data_workspace_size(h, w, y, conv, x, plan.bwd_data)
                .map_err(e("backward-data workspace"))?,
        );
        plan.ws[2] = plan.ws[2].max(
            result::get_convolution_backward_filter_workspace_size(
                h,
                x,
                y,
                conv,
                w,
                plan.bwd_filter,
            )
            .map_err(e("backward-filter workspace"))?,
        );
    }
    Ok(plan)
}

/// A device pointer as cuDNN takes it.
fn vp(p: u64) -> *const c_void {
    p as usize as *const c_void
}

/// A mutable device pointer as cuDNN takes it.
fn vpm(p: u64) -> *mut c_void {
    p as usize as *mut c_void
}

/// The shape `s` runs as: its space-to-depth form where that applies and is on.
fn s2d_for(gpu: &Gpu, s: &ConvShape) -> Option<ConvShape> {
    gpu.space_to_depth().then(|| s2d_shape(s)).flatten()
}

/// Runs `f` with the space-to-depth scratch taken out of the cuDNN state, and puts it back.
fn with_s2d<R>(
    gpu: &Gpu,
    f: impl FnOnce(&mut S2dScratch) -> Result<R, CudaError>,
) -> Result<R, CudaError> {
    let mut sc = gpu.with_cudnn(|st| Ok(std::mem::take(&mut st.s2d)))?;
    let r = f(&mut sc);
    gpu.with_cudnn(|st| {
        st.s2d = sc;
        Ok(())
    })?;
    r
}

/// y = conv(x, w) + b (then ReLU when `relu`). x: (N,C,H,W), w: (O,C/g,k,k), b: (O),
/// y: (N,O,HO,WO). Lengths are checked by the caller (`ops::conv`). Strided convolutions run in
/// space-to-depth form where [`s2d_for`] says so.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    gpu: &Gpu,
    prec: Precision,
    s: &ConvShape,
    x: &CudaView<f32>,
    w: &CudaView<f32>,
    b: &CudaView<f32>,
    y: &mut CudaViewMut<f32>,
    relu: bool,
) -> Result<(), CudaError> {
    let Some(t) = s2d_for(gpu, s) else {
        return forward_direct(gpu, prec, s, x, w, b, y, relu);
    };
    with_s2d(gpu, |sc| {
        let xs = gpu.grow(&mut sc.x, t.n * t.c * t.h * t.w, "space-to-depth input")?;
        let ws = gpu.grow(&mut sc.w, t.o * t.kdim(), "space-to-depth weights")?;
        // x: (N,C,H,W) -> xs: (N,C*S*S,HS,WS); w: (O,C/g,K,K) -> ws: (O,C/g*S*S,KS,KS)
        space_to_depth::input(gpu, s, x, &mut xs.as_view_mut())?;
        space_to_depth::weight(gpu, s, w, &mut ws.as_view_mut())?;
        forward_direct(gpu, prec, &t, &xs.as_view(), &ws.as_view(), b, y, relu)
    })
}

/// Gradients of a convolution (+ReLU when `y` is given), as [`backward_direct`], in
/// space-to-depth form where [`s2d_for`] says so.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    gpu: &Gpu,
    prec: Precision,
    s: &ConvShape,
    x: &CudaView<f32>,
    w: &CudaView<f32>,
    y: Option<&CudaView<f32>>,
    dy: &CudaView<f32>,
    dx: Option<&mut CudaViewMut<f32>>,
    dw: &mut CudaViewMut<f32>,
    db: &mut CudaViewMut<f32>,
) -> Result<(), CudaError> {
    let Some(t) = s2d_for(gpu, s) else {
        return backward_direct(gpu, prec, s, x, w, y, dy, dx, dw, db);
    };
    with_s2d(gpu, |sc| {
        let nxs = t.n * t.c * t.h * t.w;
        let xs = gpu.grow(&mut sc.x, nxs, "space-to-depth input")?;
        let ws = gpu.grow(&mut sc.w, t.o * t.kdim(), "space-to-depth weights")?;
        let dws = gpu.grow(&mut sc.dw, t.o * t.kdim(), "space-to-depth weight gradient")?;
        // The forward's regrouped operands are not kept: regrouping again costs one pass.
        space_to_depth::input(gpu, s, x, &mut xs.as_view_mut())?;
        space_to_depth::weight(gpu, s, w, &mut ws.as_view_mut())?;
        let (xs, ws) = (xs.as_view(), ws.as_view());
        match dx {
            Some(dx) => {
                let dxs = gpu.grow(&mut sc.dx, nxs, "space-to-depth input gradient")?;
                let mut dxs = dxs.as_view_mut();
                let mut dwsv = dws.as_view_mut();
                backward_direct(
                    gpu,
                    prec,
                    &t,
                    &xs,
                    &ws,
                    y,
                    dy,
                    Some(&mut dxs),
                    &mut dwsv,
                    db,
                )?;
                // dxs: (N,C*S*S,HS,WS) -> dx: (N,C,H,W)
                space_to_depth::input_grad(gpu, s, &dxs.as_view(), dx)?;
            }
            None => {
                let mut dwsv = dws.as_view_mut();
                backward_direct(gpu, prec, &t, &xs, &ws, y, dy, None, &mut dwsv, db)?;
            }
        }
        // dws: (O,C/g*S*S,KS,KS) -> dw: (O,C/g,K,K)
        space_to_depth::weight_grad(gpu, s, &dws.as_view(), dw)
    })
}

/// y = conv(x, w) + b (then ReLU when `relu`) as one cuDNN convolution of shape `s`.
#[allow(clippy::too_many_arguments)]
fn forward_direct(
    gpu: &Gpu,
    prec: Precision,
    s: &ConvShape,
    x: &CudaView<f32>,
    w: &CudaView<f32>,
    b: &CudaView<f32>,
    y: &mut CudaViewMut<f32>,
    relu: bool,
) -> Result<(), CudaError> {
    let ny = s.n * s.o * s.ho() * s.wo();
    let mut yv = y.slice_mut(0..ny);
    gpu.with_cudnn(|st| {
        let h = st.handle;
        let plan = plan_for(&mut st.plans, h, s, (prec, gpu.algo_search()))?;
        let ws = gpu.grow(&mut st.workspace, plan.ws[0], "cuDNN workspace")?;
        let ws_len = ws.len();
        let stream = &gpu.stream;
        // Raw operand pointers (event tracking is off: everything runs on the one stream).
        let (px, _gx) = x.device_ptr(stream);
        let (pw, _gw) = w.device_ptr(stream);
        let (py, _gy) = yv.device_ptr_mut(stream);
        let (pws, _gws) = ws.device_ptr_mut(stream);
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: x, w, y point at f32 buffers of the descriptors' element counts (checked by
        // `ops::conv`), the workspace holds at least the algorithm's size; alpha/beta are f32 as
        // the f32 compute type needs; all work is on the one stream the handle is bound to.
        unsafe {
            result::convolution_forward(
                h,
                (&alpha) as *const f32 as *const c_void,
                plan.x,
                vp(px),
                plan.w,
                vp(pw),
                plan.conv,
                plan.fwd,
                vpm(pws),
                ws_len,
                (&beta) as *const f32 as *const c_void,
                plan.y,
                vpm(py),
            )
        }
        .map_err(CudaError::cudnn(format!("{} forward", shape_name(s))))
    })?;
    // y (N, O, HO*WO) += b (ReLU)
    bias_act(gpu, &mut yv, b, (s.n, s.o, s.ho() * s.wo()), relu)
}

/// Gradients of a convolution (+ReLU when `y` is given: `y` is then the layer's ReLU output).
/// dy: (N,O,HO,WO) -> dw (O,C/g,k,k) and db (O) overwritten; dx (N,C,H,W) overwritten if given.
#[allow(clippy::too_many_arguments)]
fn backward_direct(
    gpu: &Gpu,
    prec: Precision,
    s: &ConvShape,
    x: &CudaView<f32>,
    w: &CudaView<f32>,
    y: Option<&CudaView<f32>>,
    dy: &CudaView<f32>,
    dx: Option<&mut CudaViewMut<f32>>,
    dw: &mut CudaViewMut<f32>,
    db: &mut CudaViewMut<f32>,
) -> Result<(), CudaError> {
    let ny = s.n * s.o * s.ho() * s.wo();
    let hw = s.ho() * s.wo();
    let name = shape_name(s);
    gpu.with_cudnn(|st| {
        let h = st.handle;
        let plan = plan_for(&mut st.plans, h, s, (prec, gpu.algo_search()))?;
        let ws = gpu.grow(
            &mut st.workspace,
            plan.ws[1].max(plan.ws[2]),
            "cuDNN workspace",
        )?;
        // The gradient at the conv output: dy, or dy * (y > 0) for a fused ReLU.
        let g: CudaView<f32> = match y {
            Some(yv) => {
                check_len("conv2d backward", "y", yv.len(), ny)?;
                let m = gpu.grow(&mut st.masked, ny, "the masked conv gradient")?;
                relu_mask_to(gpu, yv, &dy.slice(0..ny), &mut m.slice_mut(0..ny), ny)?;
                let m: &CudaSlice<f32> = m;
                m.slice(0..ny)
            }
            None => dy.slice(0..ny),
        };
        // db (O) = per-channel sums of g (N, O, HO*WO)
        channel_sum(gpu, &g, db, (s.n, s.o, hw))?;
        let stream = &gpu.stream;
        let ws_len = ws.len();
        let (px, _gx) = x.device_ptr(stream);
        let (pw, _gw) = w.device_ptr(stream);
        let (pg, _gg) = g.device_ptr(stream);
        let (pws, _gws) = ws.device_ptr_mut(stream);
        let (alpha, beta) = (1.0f32, 0.0f32);
        {
            let (pdw, _gdw) = dw.device_ptr_mut(stream);
            // SAFETY: x, g, dw point at f32 buffers of the descriptors' element counts (checked
            // by `ops::conv`), the workspace holds at least the algorithm's size; alpha/beta are
            // f32; one stream.
            unsafe {
                result::convolution_backward_filter(
                    h,
                    (&alpha) as *const f32 as *const c_void,
                    plan.x,
                    vp(px),
                    plan.y,
                    vp(pg),
                    plan.conv,
                    plan.bwd_filter,
                    vpm(pws),
                    ws_len,
                    (&beta) as *const f32 as *const c_void,
                    plan.w,
                    vpm(pdw),
                )
            }
            .map_err(CudaError::cudnn(format!("{name} backward filter")))?;
        }
        if let Some(dx) = dx {
            let (pdx, _gdx) = dx.device_ptr_mut(stream);
            // SAFETY: w, g, dx point at f32 buffers of the descriptors' element counts (checked
            // by `ops::conv`), the workspace holds at least the algorithm's size; alpha/beta are
            // f32; one stream.
            unsafe {
                result::convolution_backward_data(
                    h,
                    (&alpha) as *const f32 as *const c_void,
                    plan.w,
                    vp(pw),
                    plan.y,
                    vp(pg),
                    plan.conv,
                    plan.bwd_data,
                    vpm(pws),
                    ws_len,
                    (&beta) as *const f32 as *const c_void,
                    plan.x,
                    vpm(pdx),
                )
            }
            .map_err(CudaError::cudnn(format!("{name} backward data")))?;
        }
        Ok(())
    })
}

/// The algorithms cuDNN chose for `s` at `p` (for reports): (forward, backward data, backward
/// filter) as cuDNN's enum names.
pub fn chosen_algorithms(
    gpu: &Gpu,
    s: &ConvShape,
    p: Precision,
) -> Result<(String, String, String), CudaError> {
    let s = &s2d_for(gpu, s).unwrap_or(*s);
    gpu.with_cudnn(|st| {
        let plan = plan_for(&mut st.plans, st.handle, s, (p, gpu.algo_search()))?;
        Ok((
            format!("{:?}", plan.fwd),
            format!("{:?}", plan.bwd_data),
            format!("{:?}", plan.bwd_filter),
        ))
    })
}
