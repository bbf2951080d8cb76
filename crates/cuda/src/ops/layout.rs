//! NCHW <-> NHWC transposes (kernels `nchw_to_nhwc_*` / `nhwc_to_nchw_*` in
//! `kernels/convert.cu`) for the NHWC convolution path of `ops::conv_cudnn`: the network keeps
//! f32 NCHW activations; cuDNN's tensor-core kernels work in NHWC, in f32 or bf16. The NHWC side
//! is f32 or bf16 ([`NhwcElem`]); the way back can add a bias and apply a ReLU. For the backward,
//! `mask_sums_nhwc` / `mask_sums_nchw` build the output gradient (ReLU mask applied, in NHWC
//! or left in NCHW) and the bias gradient's partial sums in one pass.

use super::check_len;
use crate::error::CudaError;
use crate::gpu::Gpu;
use crate::kernels::KernelFile;
use cudarc::driver::{
    CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig,
    PushKernelArg, SyncOnDrop,
};

/// An element type of the NHWC side: f32, or bf16 as its raw u16 bits.
pub trait NhwcElem: DeviceRepr {
    /// The kernel NCHW f32 -> NHWC of this type.
    const TO: &'static str;
    /// The kernel NHWC of this type -> NCHW f32.
    const FROM: &'static str;
    /// The kernel of `mask_sums_nhwc` for this type.
    const MASK: &'static str;
}

impl NhwcElem for f32 {
    const TO: &'static str = "nchw_to_nhwc_f32";
    const FROM: &'static str = "nhwc_to_nchw_f32";
    const MASK: &'static str = "relu_mask_sum_nhwc_f32";
}

impl NhwcElem for u16 {
    const TO: &'static str = "nchw_to_nhwc_bf16";
    const FROM: &'static str = "nhwc_to_nchw_bf16";
    const MASK: &'static str = "relu_mask_sum_nhwc_bf16";
}

/// The kernel of `mask_sums_nchw`.
pub const MASK_NCHW: &str = "relu_mask_sum_nchw";

/// The shape of the partial sums of `mask_sums_nhwc` / `mask_sums_nchw` over (N, C, HW):
/// (N, C, ceil(HW / 32)), one per 32-pixel tile and channel; the bias gradient is
/// `channel_sum` over this shape.
pub fn partial_sums_dims((n, c, hw): (usize, usize, usize)) -> (usize, usize, usize) {
    (n, c, hw.div_ceil(32))
}

/// Elements of the partial sums over (N, C, HW) ([`partial_sums_dims`]).
pub fn partial_sums_len(dims: (usize, usize, usize)) -> usize {
    let (n, c, tiles) = partial_sums_dims(dims);
    n * c * tiles
}

/// The tiled launch over (N, C, HW): grid (ceil(HW/32), ceil(C/32), N), block (32, 8); `None`
/// when there is nothing to do. Public for the emulator tests, which launch as this does.
pub fn tiles(
    op: &'static str,
    (n, c, hw): (usize, usize, usize),
) -> Result<Option<LaunchConfig>, CudaError> {
    if n == 0 || c == 0 || hw == 0 {
        return Ok(None);
    }
    super::idx32(op, "one sample", c * hw)?;
    let gx = u32::try_from(hw.div_ceil(32)).map_err(|_| CudaError::invalid(op, "HW too large"))?;
    let (gy, gz) = (c.div_ceil(32), n);
    if gy > 65_535 || gz > 65_535 {
        return Err(CudaError::invalid(
            op,
            format!(
                "{n} samples x {c} channels: at most 65,535 samples and 2 M channels per launch"
            ),
        ));
    }
    Ok(Some(LaunchConfig {
        grid_dim: (gx, gy as u32, gz as u32),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    }))
}

/// x: (N, C, HW) f32 -> y: (N, HW, C) of `T`.
pub(crate) fn to_nhwc<T: NhwcElem>(
    gpu: &Gpu,
    x: &CudaView<f32>,
    y: &mut CudaViewMut<T>,
    dims: (usize, usize, usize),
) -> Result<(), CudaError> {
    let (n, c, hw) = dims;
    check_len(T::TO, "x", x.len(), n * c * hw)?;
    check_len(T::TO, "y", y.len(), n * c * hw)?;
    let Some(cfg) = tiles(T::TO, dims)? else {
        return Ok(());
    };
    let (c32, hw32) = (c as u32, hw as u32);
    let f = gpu.function(KernelFile::Convert, T::TO)?;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(x).arg(y).arg(&c32).arg(&hw32);
    // SAFETY: both buffers hold n*c*hw elements (checked), `tiles` bounds the grid and the
    // per-sample index; the types match `(const float*, T*, unsigned, unsigned)`.
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver(T::TO))
        .map(|_| ())
}

/// An optional input as a kernel's nullable pointer argument: the view's device address, or 0
/// (null) for none, with the guard that keeps the address valid while it is held.
fn nullable<'a, T>(
    v: Option<&'a CudaView<'_, T>>,
    stream: &'a CudaStream,
) -> (u64, Option<SyncOnDrop<'a>>) {
    match v {
        Some(v) => {
            let (p, g) = v.device_ptr(stream);
            (p, Some(g))
        }
        None => (0, None),
    }
}

/// y: (N, HW, C) of `T` -> x: (N, C, HW) f32, plus `b[c]` when given, then ReLU when `relu`.
pub(crate) fn from_nhwc<T: NhwcElem>(
    gpu: &Gpu,
    y: &CudaView<T>,
    b: Option<&CudaView<f32>>,
    x: &mut CudaViewMut<f32>,
    dims: (usize, usize, usize),
    relu: bool,
) -> Result<(), CudaError> {
    let (n, c, hw) = dims;
    check_len(T::FROM, "y", y.len(), n * c * hw)?;
    check_len(T::FROM, "x", x.len(), n * c * hw)?;
    if let Some(b) = b {
        check_len(T::FROM, "b", b.len(), c)?;
    }
    let Some(cfg) = tiles(T::FROM, dims)? else {
        return Ok(());
    };
    let (c32, hw32, r) = (c as u32, hw as u32, relu as i32);
    let stream = &gpu.stream;
    let (pb, _guard) = nullable(b, stream);
    let f = gpu.function(KernelFile::Convert, T::FROM)?;
    let mut l = stream.launch_builder(&f);
    l.arg(y).arg(&pb).arg(x).arg(&c32).arg(&hw32).arg(&r);
    // SAFETY: x and y hold n*c*hw elements and b (when not null) c (checked); `tiles` bounds the
    // grid and the per-sample index; the types match `(const T*, const float*, float*, unsigned,
    // unsigned, int)`, the bias pointer passed as the 64-bit device address.
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver(T::FROM))
        .map(|_| ())
}

/// The launch of [`mask_sums_nhwc`] / [`mask_sums_nchw`]: kernel `op`, output gradient at `pout`
/// (0: not written; NCHW only), ReLU output at `y` (none: no mask).
#[allow(clippy::too_many_arguments)]
fn mask_sums(
    gpu: &Gpu,
    op: &'static str,
    dy: &CudaView<f32>,
    y: Option<&CudaView<f32>>,
    pout: u64,
    part: &mut CudaViewMut<f32>,
    dims: (usize, usize, usize),
) -> Result<(), CudaError> {
    let (n, c, hw) = dims;
    check_len(op, "dy", dy.len(), n * c * hw)?;
    if let Some(y) = y {
        check_len(op, "y", y.len(), n * c * hw)?;
    }
    check_len(op, "partial sums", part.len(), partial_sums_len(dims))?;
    let Some(cfg) = tiles(op, dims)? else {
        return Ok(());
    };
    let (c32, hw32) = (c as u32, hw as u32);
    let stream = &gpu.stream;
    let (py, _guard) = nullable(y, stream);
    let f = gpu.function(KernelFile::Convert, op)?;
    let mut l = stream.launch_builder(&f);
    l.arg(dy).arg(&py).arg(&pout).arg(part).arg(&c32).arg(&hw32);
    // SAFETY: dy (and y when not null) hold n*c*hw elements, part the partial sums of `dims`
    // (checked here) and the output (when not null) n*c*hw (checked by the callers); `tiles`
    // bounds the grid and the per-sample index; the types match `(const float*, const float*,
    // T*, float*, unsigned, unsigned)`, the nullable pointers passed as 64-bit device addresses.
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver(op))
        .map(|_| ())
}

/// dy: (N, C, HW) f32, masked by the ReLU output y (N, C, HW) when given (g = dy * (y > 0)),
/// -> out: (N, HW, C) of `T`, and part: the per-channel sums of g over each 32-pixel tile,
/// (N, C, ceil(HW/32)) (the bias gradient is `channel_sum` over them).
pub(crate) fn mask_sums_nhwc<T: NhwcElem>(
    gpu: &Gpu,
    dy: &CudaView<f32>,
    y: Option<&CudaView<f32>>,
    out: &mut CudaViewMut<T>,
    part: &mut CudaViewMut<f32>,
    dims: (usize, usize, usize),
) -> Result<(), CudaError> {
    let (n, c, hw) = dims;
    check_len(T::MASK, "out", out.len(), n * c * hw)?;
    let (pout, _guard) = out.device_ptr_mut(&gpu.stream);
    mask_sums(gpu, T::MASK, dy, y, pout, part, dims)
}

/// As [`mask_sums_nhwc`], the masked gradient left in NCHW f32 (`out`; not written when `None`,
/// for a convolution without a fused ReLU, whose gradient is dy itself).
pub(crate) fn mask_sums_nchw(
    gpu: &Gpu,
    dy: &CudaView<f32>,
    y: Option<&CudaView<f32>>,
    out: Option<&mut CudaViewMut<f32>>,
    part: &mut CudaViewMut<f32>,
    dims: (usize, usize, usize),
) -> Result<(), CudaError> {
    let (n, c, hw) = dims;
    let (pout, _guard) = match out {
        Some(o) => {
            check_len(MASK_NCHW, "out", o.len(), n * c * hw)?;
            let (p, g) = o.device_ptr_mut(&gpu.stream);
            (p, Some(g))
        }
        None => (0u64, None),
    };
    mask_sums(gpu, MASK_NCHW, dy, y, pout, part, dims)
}
