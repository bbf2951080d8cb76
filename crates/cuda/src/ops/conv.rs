//! Convolution (cross-correlation, zero padding, groups). Each call runs where
//! [`super::conv_route`] says for the implementation ([`Gpu::conv_impl`]), precision, shape and
//! layout: on cuDNN ([`super::conv_cudnn`]; by default TF32 and bf16), by Winograd
//! ([`super::winograd`]) for 3x3 and 5x5 stride-1 layers (and conv1 in space-to-depth form) with
//! `--conv winograd`, on whichever was timed fastest with `--conv timed`; otherwise as im2col and
//! cuBLAS GEMMs, processed in chunks of samples so the column buffer stays bounded. Forward fuses
//! bias (+ReLU) into the CNHW -> NCHW epilogue; backward fuses the ReLU mask into the NCHW ->
//! CNHW transpose.

use super::conv_route::{route_and_run, ConvCall, Route};
use super::elementwise::{cnhw_to_nchw_bias_act, nchw_to_cnhw_mask, row_sum};
use super::gemm::{gemm, MatDesc};
use super::space_to_depth::S2dScratch;
use super::{check_len, sub, sub_mut, u32_of};
use crate::error::CudaError;
use crate::gpu::{grid_for, Gpu, Precision};
use crate::kernels::KernelFile;
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DeviceRepr, PushKernelArg};

/// Shape of one convolution over a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvShape {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
}

impl ConvShape {
    /// n, c, h, w, o, k, stride, pad, groups: how run folders keep a shape.
    pub fn to_array(&self) -> [usize; 9] {
        let s = self;
        [s.n, s.c, s.h, s.w, s.o, s.k, s.stride, s.pad, s.groups]
    }

    /// The shape [`ConvShape::to_array`] wrote, validated.
    pub fn from_array(a: [usize; 9]) -> Result<ConvShape, CudaError> {
        let [n, c, h, w, o, k, stride, pad, groups] = a;
        let s = ConvShape {
            n,
            c,
            h,
            w,
            o,
            k,
            stride,
            pad,
            groups,
        };
        s.validate()?;
        Ok(s)
    }

    /// Output height (floor mode).
    pub fn ho(&self) -> usize {
        (self.h + 2 * self.pad).saturating_sub(self.k) / self.stride.max(1) + 1
    }
    /// Output width.
    pub fn wo(&self) -> usize {
        (self.w + 2 * self.pad).saturating_sub(self.k) / self.stride.max(1) + 1
    }
    /// Rows of one group's column block: (C/g) * k * k.
    pub fn kdim(&self) -> usize {
        self.c / self.groups.max(1) * self.k * self.k
    }
    /// Checks divisibility and sizes.
    pub fn validate(&self) -> Result<(), CudaError> {
        let s = self;
        if s.groups == 0 || s.c / s.groups * s.groups != s.c || s.o / s.groups * s.groups != s.o {
            return Err(CudaError::invalid(
                "conv2d",
                format!("groups {} must divide C={} and O={}", s.groups, s.c, s.o),
            ));
        }
        if s.k == 0 || s.stride == 0 || s.h + 2 * s.pad < s.k || s.w + 2 * s.pad < s.k {
            return Err(CudaError::invalid(
                "conv2d",
                format!(
                    "kernel {} stride {} does not fit {}x{} pad {}",
                    s.k, s.stride, s.h, s.w, s.pad
                ),
            ));
        }
        Ok(())
    }
    /// Samples per chunk for column/transposition buffers of `col_cap` / `tmp_cap` elements.
    pub fn chunk(&self, col_cap: usize, tmp_cap: usize) -> usize {
        let hw = self.ho() * self.wo();
        let per_col = (self.c * self.k * self.k * hw).max(1);
        let per_tmp = (self.o * hw).max(1);
        (col_cap / per_col)
            .min(tmp_cap / per_tmp)
            .min(self.n)
            .max(1)
    }
}

/// The inputs of a forward pass: x, w, b.
pub(crate) type ForwardInputs<'a, 'b> = (
    &'a CudaView<'b, f32>,
    &'a CudaView<'b, f32>,
    &'a CudaView<'b, f32>,
);

/// The inputs of a backward pass: x, w, the ReLU output y of a fused conv + ReLU, dy.
pub(crate) type BackwardInputs<'a, 'b> = (
    &'a CudaView<'b, f32>,
    &'a CudaView<'b, f32>,
    Option<&'a CudaView<'b, f32>>,
    &'a CudaView<'b, f32>,
);

/// The kernel-side geometry (`ConvGeom` in kernels/im2col.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub nb: u32,
    pub c: u32,
    pub h: u32,
    pub w: u32,
    pub k: u32,
    pub stride: u32,
    pub pad: u32,
    pub ho: u32,
    pub wo: u32,
}

// SAFETY: `ConvGeom` is `#[repr(C)]`, plain u32 fields, identical to the C struct `ConvGeom`.
unsafe impl DeviceRepr for ConvGeom {}

impl ConvGeom {
    pub(crate) fn of(s: &ConvShape, nb: usize) -> Result<ConvGeom, CudaError> {
        let u = |what, v| u32_of("conv2d", what, v);
        // The kernels index with 32-bit arithmetic.
        super::idx32(
            "conv2d",
            "column buffer",
            s.c * s.k * s.k * nb * s.ho() * s.wo(),
        )?;
        super::idx32("conv2d", "input chunk", nb * s.c * s.h * s.w)?;
        Ok(ConvGeom {
            nb: u("nb", nb)?,
            c: u("c", s.c)?,
            h: u("h", s.h)?,
            w: u("w", s.w)?,
            k: u("k", s.k)?,
            stride: u("stride", s.stride)?,
            pad: u("pad", s.pad)?,
            ho: u("ho", s.ho())?,
            wo: u("wo", s.wo())?,
        })
    }
}

/// Scratch for the GEMM formulation: `col` holds (C*k*k, NB*HO*WO), `tmp` (O, NB*HO*WO);
/// `wino` and `s2d`, grown on first use, the transformed tensors of [`super::winograd`] and the
/// space-to-depth copies of the strided convolutions it runs.
pub struct ConvWorkspace {
    pub col: CudaSlice<f32>,
    pub tmp: CudaSlice<f32>,
    pub wino: Option<CudaSlice<f32>>,
    pub s2d: S2dScratch,
}

impl ConvWorkspace {
    /// Allocates a workspace of the given capacities (elements).
    pub fn new(gpu: &Gpu, col_cap: usize, tmp_cap: usize) -> Result<Self, CudaError> {
        Ok(ConvWorkspace {
            col: gpu.zeros(col_cap)?,
            tmp: gpu.zeros(tmp_cap)?,
            wino: None,
            s2d: S2dScratch::default(),
        })
    }
    /// A workspace that processes `s` in chunks of at most `chunk` samples.
    pub fn for_shape(gpu: &Gpu, s: &ConvShape, chunk: usize) -> Result<Self, CudaError> {
        let hw = s.ho() * s.wo();
        let nb = chunk.clamp(1, s.n.max(1));
        Self::new(gpu, s.c * s.k * s.k * hw * nb, s.o * hw * nb)
    }
}

fn im2col(
    gpu: &Gpu,
    x: &CudaView<f32>,
    col: &mut CudaViewMut<f32>,
    g: ConvGeom,
) -> Result<(), CudaError> {
    let total = g.c as u64 * g.k as u64 * g.k as u64 * g.nb as u64 * g.ho as u64 * g.wo as u64;
    let Some(cfg) = grid_for(total) else {
        return Ok(());
    };
    let f = gpu.function(KernelFile::Im2col, "im2col")?;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(x).arg(col).arg(&g);
    // SAFETY: callers check x holds nb*c*h*w and col holds c*k*k*nb*ho*wo elements; the types
    // match `im2col(const float*, float*, ConvGeom)`.
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver("im2col"))
        .map(|_| ())
}

fn col2im(
    gpu: &Gpu,
    col: &CudaView<f32>,
    dx: &mut CudaViewMut<f32>,
    g: ConvGeom,
) -> Result<(), CudaError> {
    let total = g.nb as u64 * g.c as u64 * g.h as u64 * g.w as u64;
    let Some(cfg) = grid_for(total) else {
        return Ok(());
    };
    let f = gpu.function(KernelFile::Im2col, "col2im")?;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(col).arg(dx).arg(&g);
    // SAFETY: as `im2col`, with the roles of the buffers swapped.
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver("col2im"))
        .map(|_| ())
}

fn check_io(s: &ConvShape, x: usize, w: usize, b: usize, y: usize) -> Result<(), CudaError> {
    s.validate()?;
    check_len("conv2d", "x", x, s.n * s.c * s.h * s.w)?;
    check_len("conv2d", "w", w, s.o * s.kdim())?;
    check_len("conv2d", "b", b, s.o)?;
    check_len("conv2d", "y", y, s.n * s.o * s.ho() * s.wo())
}

/// y = conv(x, w) + b (then ReLU when `relu`). x: (N,C,H,W), w: (O,C/g,k,k), b: (O),
/// y: (N,O,HO,WO).
#[allow(clippy::too_many_arguments)]
pub fn conv_forward(
    gpu: &Gpu,
    prec: Precision,
    s: &ConvShape,
    x: &CudaView<f32>,
    w: &CudaView<f32>,
    b: &CudaView<f32>,
    y: &mut CudaViewMut<f32>,
    relu: bool,
    ws: &mut ConvWorkspace,
) -> Result<(), CudaError> {
    check_io(s, x.len(), w.len(), b.len(), y.len())?;
    let mut run = |r: Route| match r {
        Route::Cudnn { prec: p, nhwc } => {
            super::conv_cudnn::forward(gpu, (p, nhwc), s, (x, w, b), y, relu)
        }
        Route::Winograd => super::winograd::forward(gpu, prec, s, (x, w, b), y, relu, ws),
        Route::Im2col => forward_im2col(gpu, prec, s, (x, w, b), y, relu, ws),
    };
    route_and_run(gpu, prec, s, ConvCall::Forward, &mut run)
}

/// [`conv_forward`] as im2col + cuBLAS GEMMs, in chunks of samples.
fn forward_im2col(
    gpu: &Gpu,
    prec: Precision,
    s: &ConvShape,
    (x, w, b): ForwardInputs,
    y: &mut CudaViewMut<f32>,
    relu: bool,
    ws: &mut ConvWorkspace,
) -> Result<(), CudaError> {
    let (hw, kd, og) = (s.ho() * s.wo(), s.kdim(), s.o / s.groups);
    let nb_max = s.chunk(ws.col.len(), ws.tmp.len());
    check_len(
        "conv2d",
        "workspace col",
        ws.col.len(),
        s.c * s.k * s.k * hw,
    )?;
    check_len("conv2d", "workspace tmp", ws.tmp.len(), s.o * hw)?;
    let (chw, ohw) = (s.c * s.h * s.w, s.o * hw);
    let mut n0 = 0;
    while n0 < s.n {
        let nb = nb_max.min(s.n - n0);
        let p = nb * hw;
        let geom = ConvGeom::of(s, nb)?;
        let xc = sub("conv2d", x, n0 * chw, nb * chw)?;
        // x chunk: (nb, C, H, W) -> col: (C*k*k, nb*HO*WO)
        im2col(
            gpu,
            &xc,
            &mut ws.col.slice_mut(0..s.c * s.k * s.k * p),
            geom,
        )?;
        for g in 0..s.groups {
            let wg = sub("conv2d", w, g * og * kd, og * kd)?;
            let colg = sub("conv2d", &ws.col.as_view(), g * kd * p, kd * p)?;
            let mut tg = ws.tmp.slice_mut(g * og * p..(g + 1) * og * p);
            // tmp_g (Og, P) = w_g (Og, Kd) @ col_g (Kd, P)
            gemm(
                gpu,
                prec,
                1.0,
                &wg,
                MatDesc::new(og, kd),
                &colg,
                MatDesc::new(kd, p),
                0.0,
                &mut tg,
                MatDesc::new(og, p),
            )?;
        }
        let mut yc = sub_mut("conv2d", y, n0 * ohw, nb * ohw)?;
        // tmp: (O, nb, HO*WO) -> y chunk: (nb, O, HO, WO) + b (ReLU)
        cnhw_to_nchw_bias_act(
            gpu,
            &ws.tmp.slice(0..s.o * p),
            b,
            &mut yc,
            (nb, s.o, hw),
            relu,
        )?;
        n0 += nb;
    }
    Ok(())
}

/// Gradients of a convolution (+ReLU when `y` is given: `y` is then the layer's ReLU output).
/// dy: (N,O,HO,WO) -> dw (O,C/g,k,k) and db (O) overwritten; dx (N,C,H,W) overwritten if given.
#[allow(clippy::too_many_arguments)]
pub fn conv_backward(
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
    ws: &mut ConvWorkspace,
) -> Result<(), CudaError> {
    check_io(s, x.len(), w.len(), db.len(), dy.len())?;
    check_len("conv2d backward", "dw", dw.len(), s.o * s.kdim())?;
    if let Some(y) = y {
        check_len("conv2d backward", "y", y.len(), s.n * s.o * s.ho() * s.wo())?;
    }
    let mut dx = dx;
    if let Some(d) = dx.as_deref() {
        check_len("conv2d backward", "dx", d.len(), s.n * s.c * s.h * s.w)?;
    }
    let call = if dx.is_some() {
        ConvCall::Backward
    } else {
        ConvCall::BackwardNoDx
    };
    let mut run = |r: Route| {
        let dx = dx.as_deref_mut();
        match r {
            Route::Cudnn { prec: p, nhwc } => {
                super::conv_cudnn::backward(gpu, (p, nhwc), s, (x, w, y, dy), dx, dw, db)
            }
            Route::Winograd => {
                super::winograd::backward(gpu, prec, s, (x, w, y, dy), dx, dw, db, ws)
            }
            Route::Im2col => backward_im2col(gpu, prec, s, (x, w, y, dy), dx, dw, db, ws),
        }
    };
    route_and_run(gpu, prec, s, call, &mut run)
}

/// [`conv_backward`] as im2col + cuBLAS GEMMs, in chunks of samples.
#[allow(clippy::too_many_arguments)]
fn backward_im2col(
    gpu: &Gpu,
    prec: Precision,
    s: &ConvShape,
    (x, w, y, dy): BackwardInputs,
    mut dx: Option<&mut CudaViewMut<f32>>,
    dw: &mut CudaViewMut<f32>,
    db: &mut CudaViewMut<f32>,
    ws: &mut ConvWorkspace,
) -> Result<(), CudaError> {
    let (hw, kd, og) = (s.ho() * s.wo(), s.kdim(), s.o / s.groups);
    let (chw, ohw) = (s.c * s.h * s.w, s.o * hw);
    check_len(
        "conv2d",
        "workspace col",
        ws.col.len(),
        s.c * s.k * s.k * hw,
    )?;
    check_len("conv2d", "workspace tmp", ws.tmp.len(), s.o * hw)?;
    let nb_max = s.chunk(ws.col.len(), ws.tmp.len());
    let mut n0 = 0;
    while n0 < s.n {
        let nb = nb_max.min(s.n - n0);
        let p = nb * hw;
        let first = n0 == 0;
        let geom = ConvGeom::of(s, nb)?;
        let dyc = sub("conv2d backward", dy, n0 * ohw, nb * ohw)?;
        let yc = match y {
            Some(y) => Some(sub("conv2d backward", y, n0 * ohw, nb * ohw)?),
            None => None,
        };
        // dy chunk: (nb, O, HO, WO) (* ReLU mask) -> tmp: (O, nb*HO*WO)
        nchw_to_cnhw_mask(
            gpu,
            &dyc,
            yc.as_ref(),
            &mut ws.tmp.slice_mut(0..s.o * p),
            (nb, s.o, hw),
        )?;
        // db (O) (+)= row sums of tmp (O, P)
        row_sum(gpu, &ws.tmp.slice(0..s.o * p), db, (s.o, p), !first)?;
        let xc = sub("conv2d backward", x, n0 * chw, nb * chw)?;
        // x chunk -> col: (C*k*k, P)
        im2col(
            gpu,
            &xc,
            &mut ws.col.slice_mut(0..s.c * s.k * s.k * p),
            geom,
        )?;
        for g in 0..s.groups {
            let tg = ws.tmp.slice(g * og * p..(g + 1) * og * p);
            let colg = ws.col.slice(g * kd * p..(g + 1) * kd * p);
            let mut dwg = sub_mut("conv2d backward", dw, g * og * kd, og * kd)?;
            let beta = if first { 0.0 } else { 1.0 };
            // dw_g (Og, Kd) (+)= tmp_g (Og, P) @ col_g^T (P, Kd)
            gemm(
                gpu,
                prec,
                1.0,
                &tg,
                MatDesc::new(og, p),
                &colg,
                MatDesc::new(kd, p).t(),
                beta,
                &mut dwg,
                MatDesc::new(og, kd),
            )?;
        }
        if let Some(dxv) = dx.as_deref_mut() {
            for g in 0..s.groups {
                let tg = ws.tmp.slice(g * og * p..(g + 1) * og * p);
                let wg = sub("conv2d backward", w, g * og * kd, og * kd)?;
                let mut dcol = ws.col.slice_mut(g * kd * p..(g + 1) * kd * p);
                // dcol_g (Kd, P) = w_g^T (Kd, Og) @ tmp_g (Og, P)
                gemm(
                    gpu,
                    prec,
                    1.0,
                    &wg,
                    MatDesc::new(og, kd).t(),
                    &tg,
                    MatDesc::new(og, p),
                    0.0,
                    &mut dcol,
                    MatDesc::new(kd, p),
                )?;
            }
            let mut dxc = sub_mut("conv2d backward", dxv, n0 * chw, nb * chw)?;
            // dcol: (C*k*k, P) -> dx chunk: (nb, C, H, W)
            col2im(gpu, &ws.col.slice(0..s.c * s.k * s.k * p), &mut dxc, geom)?;
        }
        n0 += nb;
    }
    Ok(())
}
