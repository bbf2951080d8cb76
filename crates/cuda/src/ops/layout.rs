//! NCHW <-> NHWC transposes (kernels `nchw_to_nhwc_*` / `nhwc_to_nchw_*` in
//! `kernels/convert.cu`) for the NHWC convolution path of `ops::conv_cudnn`: the network keeps
//! f32 NCHW activations; cuDNN's tensor-core kernels work in NHWC, in f32 or bf16. The NHWC side
//! is f32 or bf16 ([`NhwcElem`]); the way back can add a bias and apply a ReLU.

use super::check_len;
use crate::error::CudaError;
use crate::gpu::Gpu;
use crate::kernels::KernelFile;
use cudarc::driver::{CudaView, CudaViewMut, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};

/// An element type of the NHWC side: f32, or bf16 as its raw u16 bits.
pub trait NhwcElem: DeviceRepr {
    /// The kernel NCHW f32 -> NHWC of this type.
    const TO: &'static str;
    /// The kernel NHWC of this type -> NCHW f32.
    const FROM: &'static str;
}

impl NhwcElem for f32 {
    const TO: &'static str = "nchw_to_nhwc_f32";
    const FROM: &'static str = "nhwc_to_nchw_f32";
}

impl NhwcElem for u16 {
    const TO: &'static str = "nchw_to_nhwc_bf16";
    const FROM: &'static str = "nhwc_to_nchw_bf16";
}

/// The tiled launch over (N, C, HW): grid (ceil(HW/32), ceil(C/32), N), block (32, 8); `None`
/// when there is nothing to do.
fn tiles(
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
    // The bias as a raw device pointer, 0 (null) for none.
    let (pb, _guard) = match b {
        Some(b) => {
            let (p, g) = b.device_ptr(stream);
            (p, Some(g))
        }
        None => (0u64, None),
    };
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
