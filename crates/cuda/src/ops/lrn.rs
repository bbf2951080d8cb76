//! Launches of `kernels/lrn_pool.cu`: LRN forward/backward (paper convention: alpha times the
//! plain sum of squares), max-pool forward/backward (argmax), and the fused (ReLU +) LRN + pool
//! forward.

use super::{check_len, u32_of};
use crate::error::CudaError;
use crate::gpu::{grid_for, Gpu};
use crate::kernels::KernelFile;
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr, PushKernelArg};

const F: KernelFile = KernelFile::LrnPool;

/// `LrnParams` of kernels/lrn_pool.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrnParams {
    pub n: u32,
    pub c: u32,
    pub hw: u32,
    pub half: u32,
    pub alpha: f32,
    pub beta: f32,
    pub k: f32,
    pub relu_input: i32,
}

// SAFETY: `#[repr(C)]` of u32/f32/i32 fields, identical to the C struct `LrnParams`.
unsafe impl DeviceRepr for LrnParams {}

impl LrnParams {
    /// LRN over x: (N, C, H*W) with window `size` (half-width floor(size/2)).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        n: usize,
        c: usize,
        hw: usize,
        size: usize,
        alpha: f32,
        beta: f32,
        k: f32,
        relu_input: bool,
    ) -> Result<Self, CudaError> {
        if size == 0 {
            return Err(CudaError::invalid("lrn", "size must be > 0"));
        }
        // The kernels index with 32-bit arithmetic (64-bit division is slow on the GPU).
        super::idx32("lrn", "n * c * hw", n * c * hw)?;
        Ok(LrnParams {
            n: u32_of("lrn", "n", n)?,
            c: u32_of("lrn", "c", c)?,
            hw: u32_of("lrn", "hw", hw)?,
            half: u32_of("lrn", "size", size / 2)?,
            alpha,
            beta,
            k,
            relu_input: relu_input as i32,
        })
    }
    fn len(&self) -> usize {
        self.n as usize * self.c as usize * self.hw as usize
    }
}

/// `PoolGeom` of kernels/lrn_pool.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeom {
    pub planes: u32,
    pub h: u32,
    pub w: u32,
    pub k: u32,
    pub stride: u32,
    pub ho: u32,
    pub wo: u32,
    pub pad_: u32,
}

// SAFETY: `#[repr(C)]` of u32 fields, identical to the C struct `PoolGeom`.
unsafe impl DeviceRepr for PoolGeom {}

impl PoolGeom {
    /// Max-pool `k`/`stride` (no padding, floor mode) over `planes` planes of h x w.
    pub fn new(
        planes: usize,
        h: usize,
        w: usize,
        k: usize,
        stride: usize,
    ) -> Result<Self, CudaError> {
        if k == 0 || stride == 0 || h < k || w < k {
            return Err(CudaError::invalid(
                "maxpool",
                format!("pool {k}/{stride} does not fit {h}x{w}"),
            ));
        }
        let u = |what, v| u32_of("maxpool", what, v);
        // The kernels index with 32-bit arithmetic (64-bit division is slow on the GPU).
        super::idx32("maxpool", "planes * h * w", planes * h * w)?;
        Ok(PoolGeom {
            planes: u("planes", planes)?,
            h: u("h", h)?,
            w: u("w", w)?,
            k: u("k", k)?,
            stride: u("stride", stride)?,
            ho: u("ho", (h - k) / stride + 1)?,
            wo: u("wo", (w - k) / stride + 1)?,
            pad_: 0,
        })
    }
    /// Input elements.
    pub fn in_len(&self) -> usize {
        self.planes as usize * self.h as usize * self.w as usize
    }
    /// Output elements.
    pub fn out_len(&self) -> usize {
        self.planes as usize * self.ho as usize * self.wo as usize
    }
}

/// Thread mapping of the LRN forward and two-pass backward kernels. Both forms compute the
/// same arithmetic in the same order (identical results; `gpu-check` verifies it); they differ
/// in speed only. Measured on an H200 on the paper shapes at batch 128 (`gpu-check`): the
/// channel form's forward takes 0.235 / 0.153 ms against 0.301 / 0.197 (LRN 1 / LRN 2), its
/// backward 0.743 / 0.488 against 0.709 / 0.463, so the network runs the channel form forward
/// ([`lrn_fwd`]) and the element form backward ([`lrn_bwd_inplace`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LrnForm {
    /// One thread per element (`lrn_fwd`, `lrn_bwd_prep`, `lrn_bwd_finish`).
    Element,
    /// One thread per (n, chunk of 16 channels, pixel) walking its channels (`*_cc`).
    Channel,
}

impl LrnForm {
    /// Kernel name of `base` in this form.
    fn kernel(self, base: &'static str) -> &'static str {
        match (self, base) {
            (LrnForm::Element, b) => b,
            (LrnForm::Channel, "lrn_fwd") => "lrn_fwd_cc",
            (LrnForm::Channel, "lrn_bwd_prep") => "lrn_bwd_prep_cc",
            (LrnForm::Channel, _) => "lrn_bwd_finish_cc",
        }
    }

    /// Threads of one launch (`LRN_CHUNK` of kernels/lrn_pool.cu for the channel form).
    fn threads(self, q: &LrnParams) -> u64 {
        match self {
            LrnForm::Element => q.len() as u64,
            LrnForm::Channel => q.n as u64 * (q.c as u64).div_ceil(LRN_CHUNK) * q.hw as u64,
        }
    }
}

/// `LRN_CHUNK` of kernels/lrn_pool.cu: channels per thread of the channel-loop kernels.
pub const LRN_CHUNK: u64 = 16;

/// x, y: (N, C, H, W): y = LRN(x) (channel-loop form, see [`LrnForm`]).
pub fn lrn_fwd(
    gpu: &Gpu,
    x: &CudaView<f32>,
    y: &mut CudaViewMut<f32>,
    q: LrnParams,
) -> Result<(), CudaError> {
    lrn_fwd_form(gpu, x, y, q, LrnForm::Channel)
}

/// [`lrn_fwd`] in the given thread mapping.
pub fn lrn_fwd_form(
    gpu: &Gpu,
    x: &CudaView<f32>,
    y: &mut CudaViewMut<f32>,
    q: LrnParams,
    form: LrnForm,
) -> Result<(), CudaError> {
    check_len("lrn", "x", x.len(), q.len())?;
    check_len("lrn", "y", y.len(), q.len())?;
    let Some(cfg) = grid_for(form.threads(&q)) else {
        return Ok(());
    };
    let name = form.kernel("lrn_fwd");
    let f = gpu.function(F, name)?;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(x).arg(y).arg(&q);
    // SAFETY: types match `lrn_fwd[_cc](const float*, float*, LrnParams)`; sizes checked.
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver(name))
        .map(|_| ())
}

/// x (the LRN input), dy, dx: (N, C, H, W): dx = LRN'(x)^T dy (times the ReLU mask when
/// `q.relu_input`).
pub fn lrn_bwd(
    gpu: &Gpu,
    x: &CudaView<f32>,
    dy: &CudaView<f32>,
    dx: &mut CudaViewMut<f32>,
    q: LrnParams,
) -> Result<(), CudaError> {
    check_len("lrn backward", "x", x.len(), q.len())?;
    check_len("lrn backward", "dy", dy.len(), q.len())?;
    check_len("lrn backward", "dx", dx.len(), q.len())?;
    let Some(cfg) = grid_for(q.len() as u64) else {
        return Ok(());
    };
    let f = gpu.function(F, "lrn_bwd")?;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(x).arg(dy).arg(dx).arg(&q);
    // SAFETY: types match `lrn_bwd(const float*, const float*, float*, LrnParams)`; sizes checked.
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver("lrn_bwd"))
        .map(|_| ())
}

/// LRN backward in place, in two passes (see `lrn_bwd_prep` / `lrn_bwd_finish`): `g` holds dy
/// on entry and dx on exit; `t` is scratch of the same size. x, g, t: (N, C, H, W).
/// Element-wise form (see [`LrnForm`]).
pub fn lrn_bwd_inplace(
    gpu: &Gpu,
    x: &CudaView<f32>,
    g: &mut CudaViewMut<f32>,
    t: &mut CudaViewMut<f32>,
    q: LrnParams,
) -> Result<(), CudaError> {
    lrn_bwd_inplace_form(gpu, x, g, t, q, LrnForm::Element)
}

/// [`lrn_bwd_inplace`] in the given thread mapping.
pub fn lrn_bwd_inplace_form(
    gpu: &Gpu,
    x: &CudaView<f32>,
    g: &mut CudaViewMut<f32>,
    t: &mut CudaViewMut<f32>,
    q: LrnParams,
    form: LrnForm,
) -> Result<(), CudaError> {
    check_len("lrn backward", "x", x.len(), q.len())?;
    check_len("lrn backward", "g", g.len(), q.len())?;
    check_len("lrn backward", "scratch", t.len(), q.len())?;
    let Some(cfg) = grid_for(form.threads(&q)) else {
        return Ok(());
    };
    let name = form.kernel("lrn_bwd_prep");
    let f = gpu.function(F, name)?;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(x).arg(&mut *g).arg(&mut *t).arg(&q);
    // SAFETY: types match `lrn_bwd_prep[_cc](const float*, float*, float*, LrnParams)`; x, g
    // and t hold q.len() elements (checked).
    unsafe { l.launch(cfg) }.map_err(CudaError::driver(name))?;
    let name = form.kernel("lrn_bwd_finish");
    let f = gpu.function(F, name)?;
    let tv = t.as_view();
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(x).arg(&tv).arg(&mut *g).arg(&q);
    // SAFETY: types match `lrn_bwd_finish[_cc](const float*, const float*, float*, LrnParams)`;
    // sizes checked above.
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver(name))
        .map(|_| ())
}

/// x: (planes, H, W) -> y, arg: (planes, HO, WO).
pub fn maxpool_fwd(
    gpu: &Gpu,
    x: &CudaView<f32>,
    y: &mut CudaViewMut<f32>,
    arg: &mut CudaViewMut<i32>,
    g: PoolGeom,
) -> Result<(), CudaError> {
    check_len("maxpool", "x", x.len(), g.in_len())?;
    check_len("maxpool", "y", y.len(), g.out_len())?;
    check_len("maxpool", "argmax", arg.len(), g.out_len())?;
    let Some(cfg) = grid_for(g.out_len() as u64) else {
        return Ok(());
    };
    let f = gpu.function(F, "maxpool_fwd")?;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(x).arg(y).arg(arg).arg(&g);
    // SAFETY: types match `maxpool_fwd(const float*, float*, int*, PoolGeom)`; sizes checked.
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver("maxpool_fwd"))
        .map(|_| ())
}

/// dy, arg: (planes, HO, WO) -> dx: (planes, H, W) (overwritten).
pub fn maxpool_bwd(
    gpu: &Gpu,
    dy: &CudaView<f32>,
    arg: &CudaView<i32>,
    dx: &mut CudaViewMut<f32>,
    g: PoolGeom,
) -> Result<(), CudaError> {
    check_len("maxpool backward", "dy", dy.len(), g.out_len())?;
    check_len("maxpool backward", "argmax", arg.len(), g.out_len())?;
    check_len("maxpool backward", "dx", dx.len(), g.in_len())?;
    let Some(cfg) = grid_for(g.in_len() as u64) else {
        return Ok(());
    };
    let f = gpu.function(F, "maxpool_bwd")?;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(dy).arg(arg).arg(dx).arg(&g);
    // SAFETY: types match `maxpool_bwd(const float*, const int*, float*, PoolGeom)`; sizes checked.
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver("maxpool_bwd"))
        .map(|_| ())
}
