//! Launch of `kernels/loss.cu`: softmax cross-entropy forward + backward.

use super::{check_len, u32_of};
use crate::error::CudaError;
use crate::gpu::Gpu;
use crate::kernels::KernelFile;
use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

/// logits: (B, C), labels: (B) -> dlogits: (B, C) = (softmax - onehot) / B, row_loss: (B).
/// Labels must be < C (checked on the host by the callers that upload them).
pub fn softmax_ce(
    gpu: &Gpu,
    logits: &CudaView<f32>,
    labels: &CudaView<u32>,
    dlogits: &mut CudaViewMut<f32>,
    row_loss: &mut CudaViewMut<f32>,
    (b, c): (usize, usize),
) -> Result<(), CudaError> {
    check_len("softmax_ce", "logits", logits.len(), b * c)?;
    check_len("softmax_ce", "labels", labels.len(), b)?;
    check_len("softmax_ce", "dlogits", dlogits.len(), b * c)?;
    check_len("softmax_ce", "row_loss", row_loss.len(), b)?;
    if b == 0 || c == 0 {
        return Err(CudaError::invalid(
            "softmax_ce",
            format!("empty logits ({b}, {c})"),
        ));
    }
    let cfg = LaunchConfig {
        grid_dim: (u32_of("softmax_ce", "batch", b)?, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let f = gpu.function(KernelFile::Loss, "softmax_ce")?;
    let (classes, inv_b) = (c as u64, 1.0f32 / b as f32);
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(logits)
        .arg(labels)
        .arg(dlogits)
        .arg(row_loss)
        .arg(&classes)
        .arg(&inv_b);
    // SAFETY: types match `softmax_ce(const float*, const unsigned*, float*, float*, u64, float)`;
    // sizes checked; block 256 is a power of two <= 1024 as the reduction needs.
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver("softmax_ce"))
        .map(|_| ())
}
