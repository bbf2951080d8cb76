//! cuDNN plans: the descriptors and algorithms of one convolution shape, built once per
//! (shape, precision, algorithm search, layout) and cached in the
//! [`CudnnState`](super::CudnnState), by cuDNN's heuristics or by timing
//! ([`AlgoSearch::Timed`]), and the timed picks a run keeps and pins ([`TimedPick`],
//! [`timed_algorithms`], [`pin_timed_algorithms`]).

use super::shape_name;
use crate::error::{no_panic, CudaError};
use crate::gpu::{AlgoSearch, Gpu, Precision};
use crate::ops::conv::ConvShape;
use cudarc::cudnn::{result, sys};
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::c_int;

/// Largest workspace one algorithm may ask for.
pub const WORKSPACE_LIMIT: usize = 1 << 30;

/// Descriptors and chosen algorithms of one convolution shape.
pub(super) struct Plan {
    pub(super) x: sys::cudnnTensorDescriptor_t,
    pub(super) y: sys::cudnnTensorDescriptor_t,
    pub(super) w: sys::cudnnFilterDescriptor_t,
    pub(super) conv: sys::cudnnConvolutionDescriptor_t,
    pub(super) fwd: sys::cudnnConvolutionFwdAlgo_t,
    pub(super) bwd_data: sys::cudnnConvolutionBwdDataAlgo_t,
    pub(super) bwd_filter: sys::cudnnConvolutionBwdFilterAlgo_t,
    /// Bytes of workspace of the three algorithms (fwd, data, filter).
    pub(super) ws: [usize; 3],
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

/// (shape, precision, algorithm search, NHWC): what a [`Plan`] is built for.
pub(super) type PlanKey = (ConvShape, Precision, AlgoSearch, bool);

/// (shape, precision, NHWC): what a pinned choice of algorithms is for.
pub(super) type PinKey = (ConvShape, Precision, bool);

fn int(op: &'static str, v: usize) -> Result<c_int, CudaError> {
    c_int::try_from(v).map_err(|_| CudaError::invalid(op, format!("dimension {v} exceeds i32")))
}

/// The cached plan of `s` at precision `p` (built on first use). A free function over the
/// plan map, so callers can hold it while they borrow the state's scratch buffers.
pub(super) fn plan_for<'a>(
    plans: &'a mut HashMap<PlanKey, Plan>,
    handle: sys::cudnnHandle_t,
    pinned: &HashMap<PinKey, [u32; 3]>,
    key: PlanKey,
) -> Result<&'a Plan, CudaError> {
    let pin = pinned.get(&(key.0, key.1, key.3)).copied();
    Ok(match plans.entry(key) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(v) => v.insert(no_panic("cudnn plan", || build_plan(handle, key, pin))?),
    })
}

/// Creates the descriptors of `s` and picks the algorithms (by heuristics or by timing, `a`),
/// in NHWC when `nhwc` (bf16 operands at [`Precision::Bf16`], which needs NHWC).
fn build_plan(
    h: sys::cudnnHandle_t,
    (shape, p, a, nhwc): PlanKey,
    pinned: Option<[u32; 3]>,
) -> Result<Plan, CudaError> {
    let s = &shape;
    let op = "cudnn conv plan";
    let name = format!("{}{}", shape_name(s), if nhwc { " nhwc" } else { "" });
    let e = |what: &str| CudaError::cudnn(format!("{name}: {what}"));
    // Compute type of the convolution: f32 in every precision.
    let f32t = sys::cudnnDataType_t::CUDNN_DATA_FLOAT;
    let data =
        match p {
            Precision::Bf16 if nhwc => sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
            Precision::Bf16 => return Err(CudaError::invalid(
                "cudnn",
                "bf16 convolutions run on cuDNN in NHWC only (ALEXNET_CONV_LAYOUT=nhwc); in NCHW \
                 they run as im2col + bf16 GEMMs (see ops::conv)",
            )),
            _ => f32t,
        };
    let nchw = if nhwc {
        sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC
    } else {
        sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW
    };
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
        Precision::Tf32 => sys::cudnnMathType_t::CUDNN_DEFAULT_MATH,
        Precision::Bf16 => sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
    };
    // SAFETY: the descriptors were just created; the dims are positive i32 (validated shape).
    // The dims are given as (N, C, H, W) in either format.
    unsafe {
        result::set_tensor4d_descriptor(x, nchw, data, [n, c, hh, ww]).map_err(e("set x"))?;
        result::set_tensor4d_descriptor(y, nchw, data, [n, o, ho, wo]).map_err(e("set y"))?;
        result::set_filter4d_descriptor(w, data, nchw, [o, c / g, k, k]).map_err(e("set w"))?;
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
    // returns them fastest first). A timed plan with `pinned` algorithms (a resumed run's
    // earlier timing, see [`pin_timed_algorithms`]) takes them instead of timing again, if the
    // heuristics' list has them usable (deterministic, within the workspace limit, strict f32's
    // rules). One macro for the three directions: their perf structs are distinct types with
    // the same fields.
    let timed = a == AlgoSearch::Timed && pinned.is_none();
    let pin = |i: usize| {
        pinned
            .filter(|_| a == AlgoSearch::Timed)
            .map(|codes| codes[i])
    };
    macro_rules! pick {
        ($perf:ty, $get:path, $find:path, ($a:expr, $b:expr, $c:expr, $d:expr), $algo_ok:expr, $what:expr, $want:expr) => {{
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
                        && $want.is_none_or(|w| r.algo as u32 == w)
                })
                .ok_or_else(|| CudaError::Cudnn {
                    op: name.clone(),
                    detail: match $want {
                        Some(w) => format!(
                            concat!(
                                "pinned ",
                                $what,
                                " algorithm {} is not usable here: delete \
                                     the run's cudnn_algos.json to time again"
                            ),
                            w
                        ),
                        None => concat!("no deterministic ", $what, " algorithm").into(),
                    },
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
        "forward",
        pin(0)
    );
    (plan.bwd_data, plan.ws[1]) = pick!(
        sys::cudnnConvolutionBwdDataAlgoPerf_t,
        result::get_convolution_backward_data_algorithm,
        sys::cudnnFindConvolutionBackwardDataAlgorithm,
        (w, y, conv, x),
        data_ok,
        "backward-data",
        pin(1)
    );
    (plan.bwd_filter, plan.ws[2]) = pick!(
        sys::cudnnConvolutionBwdFilterAlgoPerf_t,
        result::get_convolution_backward_filter_algorithm,
        sys::cudnnFindConvolutionBackwardFilterAlgorithm,
        (x, y, conv, w),
        filter_ok,
        "backward-filter",
        pin(2)
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

/// The algorithms a timed plan chose ([`AlgoSearch::Timed`]), as a run folder keeps them
/// (`cudnn_algos.json`): timing can pick differently in each process, so a resumed run pins
/// the first process's picks ([`pin_timed_algorithms`]) and stays bit-identical to an
/// uninterrupted one.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TimedPick {
    /// The convolution cuDNN runs: n, c, h, w, o, k, stride, pad, groups.
    pub shape: [usize; 9],
    /// `f32`, `tf32` or `bf16`.
    pub precision: String,
    pub nhwc: bool,
    /// cuDNN's enum values of the forward, backward-data and backward-filter algorithms.
    pub algos: [u32; 3],
}

impl TimedPick {
    fn key(&self) -> Result<PinKey, CudaError> {
        let shape = ConvShape::from_array(self.shape)?;
        Ok((shape, Precision::parse(&self.precision)?, self.nhwc))
    }
}

/// Every timed plan's algorithms so far, sorted (empty before cuDNN's first use).
pub fn timed_algorithms(gpu: &Gpu) -> Vec<TimedPick> {
    let mut picks: Vec<TimedPick> = gpu
        .with_cudnn_if_created(|st| {
            st.plans
                .iter()
                .filter(|(key, _)| key.2 == AlgoSearch::Timed)
                .map(|(&(s, p, _, nhwc), plan)| TimedPick {
                    shape: s.to_array(),
                    precision: p.name().into(),
                    nhwc,
                    algos: [
                        plan.fwd as u32,
                        plan.bwd_data as u32,
                        plan.bwd_filter as u32,
                    ],
                })
                .collect()
        })
        .unwrap_or_default();
    picks.sort_by(|a, b| (a.shape, &a.precision, a.nhwc).cmp(&(b.shape, &b.precision, b.nhwc)));
    picks
}

/// Makes timed plans built from now on take `picks` (checked against cuDNN's list when the
/// plan is built) instead of timing.
pub fn pin_timed_algorithms(gpu: &Gpu, picks: &[TimedPick]) -> Result<(), CudaError> {
    let keys = picks
        .iter()
        .map(|p| Ok((p.key()?, p.algos)))
        .collect::<Result<Vec<_>, CudaError>>()?;
    gpu.with_cudnn(|st| {
        st.pinned.extend(keys);
        Ok(())
    })
}
