//! Launch of `kernels/sgd.cu`: the paper's SGD over the whole flat parameter buffer.

use super::check_len;
use crate::error::CudaError;
use crate::gpu::{grid_for, Gpu};
use crate::kernels::KernelFile;
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr, PushKernelArg};

/// `SgdParams` of kernels/sgd.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdParams {
    pub n: u64,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub pad_: f32,
}

// SAFETY: `#[repr(C)]`, u64 then four f32, identical to the C struct `SgdParams` (24 bytes).
unsafe impl DeviceRepr for SgdParams {}

/// v = momentum*v - weight_decay*lr*w - lr*g; w += v. w, g, v: (n).
pub fn sgd_step(
    gpu: &Gpu,
    w: &mut CudaViewMut<f32>,
    g: &CudaView<f32>,
    v: &mut CudaViewMut<f32>,
    n: usize,
    (lr, momentum, weight_decay): (f32, f32, f32),
) -> Result<(), CudaError> {
    for (name, x) in [
        ("lr", lr),
        ("momentum", momentum),
        ("weight_decay", weight_decay),
    ] {
        if !x.is_finite() {
            return Err(CudaError::invalid(
                "sgd_step",
                format!("{name} = {x} is not finite"),
            ));
        }
    }
    check_len("sgd_step", "w", w.len(), n)?;
    check_len("sgd_step", "grad", g.len(), n)?;
    check_len("sgd_step", "momentum buffer", v.len(), n)?;
    let Some(cfg) = grid_for(n as u64) else {
        return Ok(());
    };
    let p = SgdParams {
        n: n as u64,
        lr,
        momentum,
        weight_decay,
        pad_: 0.0,
    };
    let f = gpu.function(KernelFile::Sgd, "sgd_step")?;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(w).arg(g).arg(v).arg(&p);
    // SAFETY: types match `sgd_step(float*, const float*, float*, SgdParams)`; sizes checked.
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver("sgd_step"))
        .map(|_| ())
}
