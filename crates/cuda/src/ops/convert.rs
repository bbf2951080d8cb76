//! Launches of `kernels/convert.cu`: f32 <-> bf16 (raw u16 bits).

use super::check_len;
use crate::error::CudaError;
use crate::gpu::{grid_for, Gpu};
use crate::kernels::KernelFile;
use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

/// x: (n) f32 -> y: (n) bf16 bits (round to nearest even).
pub fn f32_to_bf16(
    gpu: &Gpu,
    x: &CudaView<f32>,
    y: &mut CudaViewMut<u16>,
    n: usize,
) -> Result<(), CudaError> {
    check_len("f32_to_bf16", "x", x.len(), n)?;
    check_len("f32_to_bf16", "y", y.len(), n)?;
    let Some(cfg) = grid_for(n as u64) else {
        return Ok(());
    };
    let f = gpu.function(KernelFile::Convert, "f32_to_bf16")?;
    let n = n as u64;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(x).arg(y).arg(&n);
    // SAFETY: types match `f32_to_bf16(const float*, unsigned short*, u64)`; sizes checked.
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver("f32_to_bf16"))
        .map(|_| ())
}

/// x: (n) bf16 bits -> y: (n) f32.
pub fn bf16_to_f32(
    gpu: &Gpu,
    x: &CudaView<u16>,
    y: &mut CudaViewMut<f32>,
    n: usize,
) -> Result<(), CudaError> {
    check_len("bf16_to_f32", "x", x.len(), n)?;
    check_len("bf16_to_f32", "y", y.len(), n)?;
    let Some(cfg) = grid_for(n as u64) else {
        return Ok(());
    };
    let f = gpu.function(KernelFile::Convert, "bf16_to_f32")?;
    let n = n as u64;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(x).arg(y).arg(&n);
    // SAFETY: types match `bf16_to_f32(const unsigned short*, float*, u64)`; sizes checked.
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver("bf16_to_f32"))
        .map(|_| ())
}

/// CPU mirror of the kernel's rounding (for tests and host-side conversions).
pub fn f32_to_bf16_bits(f: f32) -> u16 {
    let x = f.to_bits();
    if (x & 0x7fff_ffff) > 0x7f80_0000 {
        return ((x >> 16) | 0x40) as u16;
    }
    let lsb = (x >> 16) & 1;
    (x.wrapping_add(0x7fff + lsb) >> 16) as u16
}
