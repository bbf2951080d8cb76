//! Winograd convolutions F(m x m, r x r) for the 3x3 and 5x5 stride-1 layers, and strided ones in
//! space-to-depth form (the paper's conv1), with `--conv winograd` ([`crate::ConvImpl::Winograd`];
//! f32 GEMMs in f32, TF32 ones in TF32 and bf16): the transforms are our kernels
//! (`kernels/winograd.cu`), the products one strided-batched cuBLAS GEMM per pass, over the a^2
//! positions of the transformed tiles and the groups. Forward, data and filter gradients all run in
//! the transformed domain, as on the CPU (`alexnet-layers`' winograd module, whose Toom-Cook
//! matrices these are): with F(4x4, 5x5) conv2 costs 5.8x fewer multiply-adds than the direct form
//! on its 27x27 planes, and F(4x4, 3x3) conv3-5 2.6x fewer on 13x13 (tiles overhang the edges),
//! against ~1e-6 relative error in f32 (cuDNN's Winograd and FFT algorithms, which strict f32
//! leaves out, moved gradients by up to 4e-4).
//!
//! The batch runs in chunks of samples so that the transformed tensors stay within [`WINO_BUDGET`]
//! elements; the filter gradient accumulates over the chunks in the transformed domain (the GEMM's
//! beta) and is transformed back once.

use super::conv::{BackwardInputs, ConvShape, ConvWorkspace};
use super::elementwise::{nchw_to_cnhw_mask, row_sum};
use super::gemm::{gemm_batched, Batch, MatDesc};
use super::space_to_depth::{self, s2d_shape};
use super::{check_len, sub, sub_mut, u32_of};
use crate::error::CudaError;
use crate::gpu::{grid_for, ConvImpl, Gpu, Precision};
use crate::kernels::KernelFile;
use alexnet_tensor::toom_cook::ToomCook;
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DeviceRepr, PushKernelArg};

const F: KernelFile = KernelFile::Winograd;
const OP: &str = "winograd conv2d";

/// Outputs per tile side for a k x k kernel at precision `prec`: `forced` (the GPU's
/// [`Gpu::winograd_tile`]) if given, else 4 with f32 GEMMs, and with TF32 GEMMs
/// ([`gemm_precision`]) 4 for 3x3 and 2 for 5x5. The transforms amplify the GEMMs' rounding:
/// with TF32 operands (10 mantissa bits), against direct TF32's 2.9e-4, F(4x4, 3x3) gave
/// 2.0e-3, F(2x2, 5x5) 2.3e-3 and F(4x4, 5x5) 5.5e-3 relative error on the emulator
/// (`tests/emu_winograd.rs`; TF32's bound is 2e-2). In f32 all stay near 1e-6.
pub fn tile_m(prec: Precision, k: usize, forced: Option<usize>) -> usize {
    match (forced, gemm_precision(prec), k) {
        (Some(m), _, _) => m,
        (None, Precision::Tf32, 5) => 2,
        _ => 4,
    }
}

/// Elements of the chunk-sized buffers (V, dV, M and the masked gradient) together, above
/// which the batch runs in chunks of samples (512 MiB).
pub const WINO_BUDGET: usize = 1 << 27;

/// `WinoMats` of kernels/winograd.cu: the f32 Toom-Cook matrices of F(m, r), row-major, in
/// fixed-size arrays (a = m + r - 1 <= 8, m <= 6).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WinoMats {
    pub at: [f32; 48],
    pub g: [f32; 40],
    pub bt: [f32; 64],
}

// SAFETY: `#[repr(C)]` of f32 arrays, identical to the C struct `WinoMats`.
unsafe impl DeviceRepr for WinoMats {}

impl WinoMats {
    /// The matrices of F(m, r) (those of [`ToomCook`], rounded once to f32).
    pub fn new(m: usize, r: usize) -> Result<WinoMats, CudaError> {
        let t = ToomCook::new(m, r)
            .filter(|t| t.at.len() <= 48 && t.g.len() <= 40)
            .ok_or_else(|| CudaError::invalid(OP, format!("no F({m}, {r}) tiles")))?;
        let mut out = WinoMats {
            at: [0.0; 48],
            g: [0.0; 40],
            bt: [0.0; 64],
        };
        for (dst, src) in [
            (&mut out.at[..], &t.at),
            (&mut out.g[..], &t.g),
            (&mut out.bt[..], &t.bt),
        ] {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = *s as f32;
            }
        }
        Ok(out)
    }
}

/// `WinoGeom` of kernels/winograd.cu: one chunk of `nb` samples of a convolution.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WinoGeom {
    pub nb: u32,
    pub c: u32,
    pub h: u32,
    pub w: u32,
    pub o: u32,
    pub ho: u32,
    pub wo: u32,
    pub pad: u32,
    pub m: u32,
    pub r: u32,
    pub a: u32,
    pub groups: u32,
    /// Tiles per column and per row of an output plane; p = nb th tw.
    pub th: u32,
    pub tw: u32,
    pub p: u32,
    /// The row stride of the tiles in V, dV, M and dM: p rounded up to a multiple of 8, so that
    /// every row the GEMMs read starts 32-byte aligned (cuBLAS's vectorised and tensor-core
    /// paths want it; p = 83 x 49 tiles for conv2's chunks is odd).
    pub ps: u32,
}

// SAFETY: `#[repr(C)]` of u32 fields, identical to the C struct `WinoGeom`.
unsafe impl DeviceRepr for WinoGeom {}

impl WinoGeom {
    /// The geometry of `nb` samples of `s` with m x m output tiles. Errors unless the kernels
    /// have an instance for (m, k) (m in {2, 4}, k in {3, 5}), the stride is 1 and every buffer
    /// fits 32-bit indices.
    pub fn new(s: &ConvShape, nb: usize, m: usize) -> Result<WinoGeom, CudaError> {
        s.validate()?;
        if !matches!(m, 2 | 4) || !matches!(s.k, 3 | 5) || s.stride != 1 {
            return Err(CudaError::invalid(
                OP,
                format!(
                    "F({m}x{m}, {k}x{k}) stride {}: needs m 2 or 4, a 3x3 or 5x5 kernel, stride 1",
                    s.stride,
                    k = s.k
                ),
            ));
        }
        let u = |what, v| u32_of(OP, what, v);
        let (ho, wo) = (s.ho(), s.wo());
        let (th, tw) = (ho.div_ceil(m), wo.div_ceil(m));
        let g = WinoGeom {
            nb: u("nb", nb)?,
            c: u("c", s.c)?,
            h: u("h", s.h)?,
            w: u("w", s.w)?,
            o: u("o", s.o)?,
            ho: u("ho", ho)?,
            wo: u("wo", wo)?,
            pad: u("pad", s.pad)?,
            m: u("m", m)?,
            r: u("k", s.k)?,
            a: u("a", m + s.k - 1)?,
            groups: u("groups", s.groups)?,
            th: u("th", th)?,
            tw: u("tw", tw)?,
            p: u("tiles", nb * th * tw)?,
            ps: u("tiles", (nb * th * tw).next_multiple_of(8))?,
        };
        // The kernels index with 32-bit arithmetic.
        for (what, len) in [
            ("V", g.v_len()),
            ("M", g.m_len()),
            ("U", g.u_len()),
            ("x", nb * s.c * s.h * s.w),
            ("y", nb * s.o * ho * wo),
        ] {
            super::idx32(OP, what, len)?;
        }
        Ok(g)
    }
    fn a2(&self) -> usize {
        (self.a * self.a) as usize
    }
    /// U and dU: a^2 O (C/g).
    pub fn u_len(&self) -> usize {
        self.a2() * self.o as usize * (self.c / self.groups.max(1)) as usize
    }
    /// V, dV and the patches' gradients: a^2 C rows of `ps`.
    pub fn v_len(&self) -> usize {
        self.a2() * self.c as usize * self.ps as usize
    }
    /// M and dM: a^2 O rows of `ps`.
    pub fn m_len(&self) -> usize {
        self.a2() * self.o as usize * self.ps as usize
    }
    /// The masked output gradient, (O, nb, HO, WO).
    pub fn t_len(&self) -> usize {
        self.o as usize * self.nb as usize * self.ho as usize * self.wo as usize
    }
    /// The workspace of [`forward`] and [`backward`] at this chunk size: U, dU, V, dV, M, t,
    /// each starting at a multiple of 8 elements.
    pub fn workspace_len(&self) -> usize {
        self.parts().iter().map(|&n| aligned(n)).sum()
    }
    /// The lengths of U, dU, V, dV, M and t.
    fn parts(&self) -> [usize; 6] {
        let (u, v) = (self.u_len(), self.v_len());
        [u, u, v, v, self.m_len(), self.t_len()]
    }
}

/// `n` rounded up to a multiple of 8 elements (32 bytes), where the workspace's parts start.
fn aligned(n: usize) -> usize {
    n.next_multiple_of(8)
}

/// The stride-1 convolution that runs by Winograd for `s`: `s` itself when it is a 3x3 or 5x5
/// stride-1 convolution; with `s2d`, a strided one whose space-to-depth form
/// ([`s2d_shape`]) is (the paper's conv1: 48 channels, 3x3 over 57x57); else `None`.
pub fn winograd_shape(s: &ConvShape, s2d: bool) -> Option<ConvShape> {
    let t = match s.stride {
        1 => *s,
        _ if s2d => s2d_shape(s)?,
        _ => return None,
    };
    (matches!(t.k, 3 | 5) && t.stride == 1).then_some(t)
}

/// Whether a convolution of shape `s` runs here: `--conv winograd` and a [`winograd_shape`]
/// (space-to-depth as [`Gpu::space_to_depth`] says), at any precision ([`gemm_precision`]).
pub fn applies(gpu: &Gpu, s: &ConvShape) -> bool {
    gpu.conv_impl() == ConvImpl::Winograd && winograd_shape(s, gpu.space_to_depth()).is_some()
}

/// The precision of the transformed-domain GEMMs at network precision `prec`: f32 in f32, TF32
/// in TF32 and in bf16. With bf16 operands the transforms amplify bf16's rounding to 1.6e-2
/// (F(4x4, 3x3)), 1.8e-2 (F(2x2, 5x5)) and 4.3e-2 (F(4x4, 5x5)) relative error on the emulator,
/// against 2.3e-3 for direct bf16 and bf16's 3e-2 bound; TF32 operands give 2.0e-3 and 2.3e-3.
pub fn gemm_precision(prec: Precision) -> Precision {
    match prec {
        Precision::F32 => Precision::F32,
        Precision::Tf32 | Precision::Bf16 => Precision::Tf32,
    }
}

/// The [`winograd_shape`] of `s`, or an error naming it.
fn stride1_shape(gpu: &Gpu, s: &ConvShape) -> Result<ConvShape, CudaError> {
    winograd_shape(s, gpu.space_to_depth())
        .ok_or_else(|| CudaError::invalid(OP, format!("no Winograd form for {s:?}")))
}

/// Samples per chunk: as many as keep [`WinoGeom::workspace_len`] within `budget` elements
/// ([`WINO_BUDGET`] on the GPU; at least one sample), at most `s.n`.
pub fn chunk(s: &ConvShape, m: usize, budget: usize) -> Result<usize, CudaError> {
    let one = WinoGeom::new(s, 1, m)?;
    let fixed = 2 * one.u_len();
    // Per sample without the rows' padding to `ps` (an upper bound on the count), then down
    // until the padded workspace fits.
    let tiles = (one.th * one.tw) as usize;
    let per = one.a2() * (2 * s.c + s.o) * tiles + one.t_len();
    let mut nb = (budget.saturating_sub(fixed) / per.max(1)).clamp(1, s.n.max(1));
    while nb > 1 && WinoGeom::new(s, nb, m)?.workspace_len() > budget {
        nb -= 1;
    }
    Ok(nb)
}

/// The parts of the workspace, in the order of [`WinoGeom::workspace_len`].
struct Parts<'a> {
    u: CudaViewMut<'a, f32>,
    du: CudaViewMut<'a, f32>,
    v: CudaViewMut<'a, f32>,
    dv: CudaViewMut<'a, f32>,
    mm: CudaViewMut<'a, f32>,
    t: CudaViewMut<'a, f32>,
}

/// Grows `slot` (the workspace's `wino`) to the workspace of `g` (the largest chunk) and runs
/// `f` on its parts.
fn with_parts<R>(
    gpu: &Gpu,
    slot: &mut Option<CudaSlice<f32>>,
    g: &WinoGeom,
    f: impl FnOnce(Parts<'_>) -> Result<R, CudaError>,
) -> Result<R, CudaError> {
    let buf = gpu.grow(slot, g.workspace_len(), "winograd workspace")?;
    let bad = || CudaError::invalid(OP, "workspace smaller than its parts");
    let [lu, _, lv, _, lm, _] = g.parts().map(aligned);
    let mut all = buf.as_view_mut();
    let (u, mut rest) = all.try_split_at_mut(lu).ok_or_else(bad)?;
    let (du, mut rest) = rest.try_split_at_mut(lu).ok_or_else(bad)?;
    let (v, mut rest) = rest.try_split_at_mut(lv).ok_or_else(bad)?;
    let (dv, mut rest) = rest.try_split_at_mut(lv).ok_or_else(bad)?;
    let (mm, t) = rest.try_split_at_mut(lm).ok_or_else(bad)?;
    f(Parts {
        u,
        du,
        v,
        dv,
        mm,
        t,
    })
}

/// The three products of the transformed domain, per group and position xi of the a x a grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// `M[g][xi] (O/g, P) = U[g][xi] (O/g, C/g) V[g][xi] (C/g, P)`.
    Forward,
    /// `dU[g][xi] (O/g, C/g) (+)= dM[g][xi] (O/g, P) V[g][xi]^T (P, C/g)`.
    FilterGrad,
    /// `dV[g][xi] (C/g, P) = U[g][xi]^T (C/g, O/g) dM[g][xi] (O/g, P)`.
    InputGrad,
}

/// One strided-batched GEMM: C_i = op(A_i) op(B_i) (+ beta C_i) for i < `batch.count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Products {
    pub a: MatDesc,
    pub b: MatDesc,
    pub c: MatDesc,
    pub batch: Batch,
}

impl Products {
    /// The GEMM of `pass` over chunk `g`: one product per group and xi, the operands stored
    /// densely one after another in the layouts of kernels/winograd.cu.
    pub fn of(g: &WinoGeom, pass: Pass) -> Products {
        let groups = g.groups.max(1);
        let (cg, og) = ((g.c / groups) as usize, (g.o / groups) as usize);
        let (p, ps) = (g.p as usize, g.ps as usize);
        // V and M: rows of the chunk's p tiles, ps apart.
        let tiles = |rows| MatDesc {
            rows,
            cols: p,
            ld: ps,
            trans: false,
        };
        let (u, v, mm) = (MatDesc::new(og, cg), tiles(cg), tiles(og));
        let (a, b, c) = match pass {
            Pass::Forward => (u, v, mm),
            Pass::FilterGrad => (mm, v.t(), u),
            Pass::InputGrad => (u.t(), mm, v),
        };
        let size = |d: MatDesc| d.rows * d.ld;
        Products {
            a,
            b,
            c,
            batch: Batch {
                count: g.a2() * groups as usize,
                stride_a: size(a),
                stride_b: size(b),
                stride_c: size(c),
            },
        }
    }
}

/// The batched GEMM of `pass` over chunk `g` on cuBLAS.
#[allow(clippy::too_many_arguments)]
fn products(
    gpu: &Gpu,
    prec: Precision,
    g: &WinoGeom,
    pass: Pass,
    a: &CudaView<f32>,
    b: &CudaView<f32>,
    beta: f32,
    c: &mut CudaViewMut<f32>,
) -> Result<(), CudaError> {
    let pr = Products::of(g, pass);
    gemm_batched(
        gpu,
        gemm_precision(prec),
        1.0,
        (a, pr.a),
        (b, pr.b),
        beta,
        (c, pr.c),
        pr.batch,
    )
}

/// The chunks of samples the batch of `s` runs in with m x m tiles and a workspace of `budget`
/// elements ([`chunk`]): the geometry of the largest (which sizes the workspace), then each
/// chunk's first sample and geometry.
pub fn chunks(
    s: &ConvShape,
    m: usize,
    budget: usize,
) -> Result<(WinoGeom, Vec<(usize, WinoGeom)>), CudaError> {
    let nb_max = chunk(s, m, budget)?;
    let full = WinoGeom::new(s, nb_max, m)?;
    let mut out = Vec::with_capacity(s.n.div_ceil(nb_max));
    let mut n0 = 0;
    while n0 < s.n {
        let nb = nb_max.min(s.n - n0);
        out.push((n0, WinoGeom::new(s, nb, m)?));
        n0 += nb;
    }
    Ok((full, out))
}

/// y = conv(x, w) + b (then ReLU when `relu`) by Winograd F(m x m, k x k) ([`tile_m`]), a strided
/// convolution in its space-to-depth form ([`winograd_shape`]): x (N, C, H, W),
/// w (O, C/g, K, K), b (O), y (N, O, HO, WO).
#[allow(clippy::too_many_arguments)]
pub fn forward(
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
    if stride1_shape(gpu, s)? == *s {
        return forward_stride1(gpu, prec, s, x, w, b, y, relu, &mut ws.wino);
    }
    space_to_depth::forward_via(gpu, s, x, w, &mut ws.s2d, |t, xs, wt| {
        forward_stride1(gpu, prec, t, xs, wt, b, y, relu, &mut ws.wino)
    })
}

/// [`forward`] of a stride-1 convolution (3x3 or 5x5).
#[allow(clippy::too_many_arguments)]
fn forward_stride1(
    gpu: &Gpu,
    prec: Precision,
    s: &ConvShape,
    x: &CudaView<f32>,
    w: &CudaView<f32>,
    b: &CudaView<f32>,
    y: &mut CudaViewMut<f32>,
    relu: bool,
    slot: &mut Option<CudaSlice<f32>>,
) -> Result<(), CudaError> {
    let m = tile_m(prec, s.k, gpu.winograd_tile());
    let t = WinoMats::new(m, s.k)?;
    let (full, parts) = chunks(s, m, WINO_BUDGET)?;
    let (chw, ohw) = (s.c * s.h * s.w, s.o * s.ho() * s.wo());
    with_parts(gpu, slot, &full, |mut ps| {
        // w (O, C/g, k, k) -> U [g][xi][o'][c']
        filter(gpu, w, &mut ps.u, &full, &t)?;
        for (n0, g) in parts {
            let nb = g.nb as usize;
            let xc = sub(OP, x, n0 * chw, nb * chw)?;
            // x chunk (nb, C, H, W) -> V [g][xi][c'][p]
            input(gpu, &xc, &mut ps.v, &g, &t)?;
            // M = U V
            let (u, v) = (ps.u.as_view(), ps.v.as_view());
            products(gpu, prec, &g, Pass::Forward, &u, &v, 0.0, &mut ps.mm)?;
            let mut yc = sub_mut(OP, y, n0 * ohw, nb * ohw)?;
            // M -> y chunk (nb, O, HO, WO) + b (ReLU)
            output(gpu, &ps.mm.as_view(), b, &mut yc, &g, &t, relu)?;
        }
        Ok(())
    })
}

/// Gradients of a convolution (+ReLU when `y`, the layer's ReLU output, is given) by Winograd
/// F(m x m, k x k) ([`tile_m`]), a strided convolution in its space-to-depth form
/// ([`winograd_shape`]): dy (N, O, HO, WO) -> dw (O, C/g, K, K) and db (O) overwritten,
/// dx (N, C, H, W) overwritten when given.
#[allow(clippy::too_many_arguments)]
pub fn backward(
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
    if stride1_shape(gpu, s)? == *s {
        return backward_stride1(gpu, prec, s, (x, w, y, dy), dx, dw, db, &mut ws.wino);
    }
    space_to_depth::backward_via(
        gpu,
        s,
        (x, w),
        dx,
        dw,
        &mut ws.s2d,
        |t, (xs, wt), dxs, dwt| {
            backward_stride1(gpu, prec, t, (xs, wt, y, dy), dxs, dwt, db, &mut ws.wino)
        },
    )
}

/// [`backward`] of a stride-1 convolution (3x3 or 5x5).
#[allow(clippy::too_many_arguments)]
fn backward_stride1(
    gpu: &Gpu,
    prec: Precision,
    s: &ConvShape,
    (x, w, y, dy): BackwardInputs,
    dx: Option<&mut CudaViewMut<f32>>,
    dw: &mut CudaViewMut<f32>,
    db: &mut CudaViewMut<f32>,
    slot: &mut Option<CudaSlice<f32>>,
) -> Result<(), CudaError> {
    let m = tile_m(prec, s.k, gpu.winograd_tile());
    let t = WinoMats::new(m, s.k)?;
    let (full, parts) = chunks(s, m, WINO_BUDGET)?;
    let hw = s.ho() * s.wo();
    let (chw, ohw) = (s.c * s.h * s.w, s.o * hw);
    let mut dx = dx;
    with_parts(gpu, slot, &full, |mut ps| {
        if dx.is_some() {
            // w -> U, for dV
            filter(gpu, w, &mut ps.u, &full, &t)?;
        }
        for (n0, g) in parts {
            let nb = g.nb as usize;
            let first = n0 == 0;
            let dyc = sub(OP, dy, n0 * ohw, nb * ohw)?;
            let yc = match y {
                Some(y) => Some(sub(OP, y, n0 * ohw, nb * ohw)?),
                None => None,
            };
            let mut tc = sub_mut(OP, &mut ps.t, 0, g.t_len())?;
            // dy chunk (nb, O, HO, WO) (* ReLU mask) -> t (O, nb, HO, WO)
            nchw_to_cnhw_mask(gpu, &dyc, yc.as_ref(), &mut tc, (nb, s.o, hw))?;
            // db (O) (+)= row sums of t (O, nb HO WO)
            row_sum(gpu, &tc.as_view(), db, (s.o, nb * hw), !first)?;
            let xc = sub(OP, x, n0 * chw, nb * chw)?;
            // x chunk -> V [g][xi][c'][p]
            input(gpu, &xc, &mut ps.v, &g, &t)?;
            // t -> dM [g][xi][o'][p]
            output_grad(gpu, &tc.as_view(), &mut ps.mm, &g, &t)?;
            // dU (+)= dM V^T, accumulated over the chunks
            let (dm, v) = (ps.mm.as_view(), ps.v.as_view());
            let beta = if first { 0.0 } else { 1.0 };
            products(gpu, prec, &g, Pass::FilterGrad, &dm, &v, beta, &mut ps.du)?;
            if let Some(dxv) = dx.as_deref_mut() {
                // dV = U^T dM
                let u = ps.u.as_view();
                products(gpu, prec, &g, Pass::InputGrad, &u, &dm, 0.0, &mut ps.dv)?;
                // dV -> the patches' gradients, into V's buffer (V is no longer read)
                input_grad_tiles(gpu, &ps.dv.as_view(), &mut ps.v, &g, &t)?;
                let mut dxc = sub_mut(OP, dxv, n0 * chw, nb * chw)?;
                // patches -> dx chunk (nb, C, H, W)
                input_grad(gpu, &ps.v.as_view(), &mut dxc, &g)?;
            }
        }
        // dU -> dw (O, C/g, k, k)
        filter_grad(gpu, &ps.du.as_view(), dw, &full, &t)
    })
}

/// Threads of the per-filter kernels (one per (o, c')).
fn filter_threads(g: &WinoGeom) -> u64 {
    g.o as u64 * (g.c / g.groups.max(1)) as u64
}

/// One launch of the transform kernel `name(const float* src, float* dst, WinoGeom, WinoMats)`
/// over `threads` threads, after checking that src and dst hold `lens` elements.
fn transform(
    gpu: &Gpu,
    name: &'static str,
    (src, dst): (&CudaView<f32>, &mut CudaViewMut<f32>),
    (g, t): (&WinoGeom, &WinoMats),
    lens: [usize; 2],
    threads: u64,
) -> Result<(), CudaError> {
    check_len(OP, name, src.len(), lens[0])?;
    check_len(OP, name, dst.len(), lens[1])?;
    let Some(cfg) = grid_for(threads) else {
        return Ok(());
    };
    let f = gpu.function(F, name)?;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(src).arg(dst).arg(g).arg(t);
    // SAFETY: every transform kernel has the signature `(const float*, float*, WinoGeom,
    // WinoMats)`; the callers give the lengths the kernel reads and writes over `threads`
    // threads (checked above), and src and dst are distinct (one shared, one exclusive borrow).
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver(name))
        .map(|_| ())
}

/// Elements of the filters w (O, C/g, k, k).
fn w_len(g: &WinoGeom) -> usize {
    filter_threads(g) as usize * (g.r * g.r) as usize
}

/// Elements of the input chunk (nb, C, H, W).
fn x_len(g: &WinoGeom) -> usize {
    (g.nb * g.c * g.h * g.w) as usize
}

/// w (O, C/g, k, k) -> u [g][xi][o'][c'] (U = G w G^T).
fn filter(
    gpu: &Gpu,
    w: &CudaView<f32>,
    u: &mut CudaViewMut<f32>,
    g: &WinoGeom,
    t: &WinoMats,
) -> Result<(), CudaError> {
    let lens = [w_len(g), g.u_len()];
    transform(gpu, "wino_filter", (w, u), (g, t), lens, filter_threads(g))
}

/// du [g][xi][o'][c'] -> dw (O, C/g, k, k) (dg = G^T dU G).
fn filter_grad(
    gpu: &Gpu,
    du: &CudaView<f32>,
    dw: &mut CudaViewMut<f32>,
    g: &WinoGeom,
    t: &WinoMats,
) -> Result<(), CudaError> {
    let lens = [g.u_len(), w_len(g)];
    transform(
        gpu,
        "wino_filter_grad",
        (du, dw),
        (g, t),
        lens,
        filter_threads(g),
    )
}

/// x chunk (nb, C, H, W) -> v [g][xi][c'][p] (V = B^T d B).
fn input(
    gpu: &Gpu,
    x: &CudaView<f32>,
    v: &mut CudaViewMut<f32>,
    g: &WinoGeom,
    t: &WinoMats,
) -> Result<(), CudaError> {
    let (lens, threads) = ([x_len(g), g.v_len()], g.c as u64 * g.p as u64);
    transform(gpu, "wino_input", (x, v), (g, t), lens, threads)
}

/// The masked output gradient (O, nb, HO, WO) -> dm [g][xi][o'][p] (dM = A dy A^T).
fn output_grad(
    gpu: &Gpu,
    dy: &CudaView<f32>,
    dm: &mut CudaViewMut<f32>,
    g: &WinoGeom,
    t: &WinoMats,
) -> Result<(), CudaError> {
    let (lens, threads) = ([g.t_len(), g.m_len()], g.o as u64 * g.p as u64);
    transform(gpu, "wino_output_grad", (dy, dm), (g, t), lens, threads)
}

/// dv [g][xi][c'][p] -> dd [c][n][ti a + i][tj a + j] (the patches' gradients B dV B^T).
fn input_grad_tiles(
    gpu: &Gpu,
    dv: &CudaView<f32>,
    dd: &mut CudaViewMut<f32>,
    g: &WinoGeom,
    t: &WinoMats,
) -> Result<(), CudaError> {
    let (lens, threads) = ([g.v_len(), g.v_len()], g.c as u64 * g.p as u64);
    transform(
        gpu,
        "wino_input_grad_tiles",
        (dv, dd),
        (g, t),
        lens,
        threads,
    )
}

/// mm [g][xi][o'][p] -> y chunk (nb, O, HO, WO) (y = A^T M A + b, ReLU when `relu`).
fn output(
    gpu: &Gpu,
    mm: &CudaView<f32>,
    b: &CudaView<f32>,
    y: &mut CudaViewMut<f32>,
    g: &WinoGeom,
    t: &WinoMats,
    relu: bool,
) -> Result<(), CudaError> {
    check_len(OP, "M", mm.len(), g.m_len())?;
    check_len(OP, "b", b.len(), g.o as usize)?;
    check_len(OP, "y", y.len(), g.t_len())?;
    let Some(cfg) = grid_for(g.o as u64 * g.p as u64) else {
        return Ok(());
    };
    let f = gpu.function(F, "wino_output")?;
    let relu = relu as i32;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(mm).arg(b).arg(y).arg(g).arg(t).arg(&relu);
    // SAFETY: types match `wino_output(const float*, const float*, float*, WinoGeom, WinoMats,
    // int)`; mm holds a^2 O P, b O and y the output chunk (checked).
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver("wino_output"))
        .map(|_| ())
}

/// The patches' gradients -> dx chunk (nb, C, H, W), summed per pixel in a fixed order.
fn input_grad(
    gpu: &Gpu,
    dd: &CudaView<f32>,
    dx: &mut CudaViewMut<f32>,
    g: &WinoGeom,
) -> Result<(), CudaError> {
    check_len(OP, "patches", dd.len(), g.v_len())?;
    check_len(OP, "dx", dx.len(), x_len(g))?;
    let Some(cfg) = grid_for(x_len(g) as u64) else {
        return Ok(());
    };
    let f = gpu.function(F, "wino_input_grad")?;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(dd).arg(dx).arg(g);
    // SAFETY: types match `wino_input_grad(const float*, float*, WinoGeom)`; dd holds a^2 C P
    // and dx nb C H W elements (checked).
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver("wino_input_grad"))
        .map(|_| ())
}
