//! The host side of the Winograd convolutions: the tile side per precision ([`tile_m`]), the
//! transform matrices and chunk geometry passed to the kernels ([`WinoMats`], [`WinoGeom`],
//! both mirrored in `kernels/winograd.cu`), the chunking of the batch ([`chunks`]) and the
//! descriptors of the three batched GEMMs ([`Products`]). No device calls: the emulator tests
//! compose the kernels with exactly these.

use super::OP;
use crate::error::CudaError;
use crate::gpu::Precision;
use crate::ops::conv::ConvShape;
use crate::ops::gemm::{Batch, MatDesc};
use crate::ops::space_to_depth::s2d_shape;
use crate::ops::u32_of;
use alexnet_tensor::toom_cook::ToomCook;
use cudarc::driver::DeviceRepr;

/// Outputs per tile side for a k x k kernel at precision `prec`: `forced` (the GPU's
/// [`Gpu::winograd_tile`](crate::gpu::Gpu::winograd_tile)) if given, else 4 with f32 GEMMs,
/// and with TF32 GEMMs ([`gemm_precision`]) 4 for 3x3 and 2 for 5x5. The transforms amplify
/// the GEMMs' rounding: with TF32 operands (10 mantissa bits), against direct TF32's 2.9e-4,
/// F(4x4, 3x3) gave 2.0e-3, F(2x2, 5x5) 2.3e-3 and F(4x4, 5x5) 5.5e-3 relative error on the
/// emulator (`tests/emu_winograd.rs`; TF32's bound is 2e-2). In f32 all stay near 1e-6.
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
            crate::ops::idx32(OP, what, len)?;
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
    /// The filters w and their gradient, (O, C/g, r, r).
    pub fn w_len(&self) -> usize {
        self.filters() as usize * (self.r * self.r) as usize
    }
    /// The input chunk and its gradient, (nb, C, H, W).
    pub fn x_len(&self) -> usize {
        (self.nb * self.c * self.h * self.w) as usize
    }
    /// O (C/g): the filter transforms' threads, one per (o, c').
    fn filters(&self) -> u64 {
        self.o as u64 * (self.c / self.groups.max(1)) as u64
    }
    /// The workspace of [`forward`](super::forward) and [`backward`](super::backward) at this
    /// chunk size: U, dU, V, dV, M, t, each starting at a multiple of 8 elements.
    pub fn workspace_len(&self) -> usize {
        self.parts().iter().map(|&n| aligned(n)).sum()
    }
    /// The lengths of U, dU, V, dV, M and t.
    pub(super) fn parts(&self) -> [usize; 6] {
        let (u, v) = (self.u_len(), self.v_len());
        [u, u, v, v, self.m_len(), self.t_len()]
    }
}

/// The transform kernels of signature `(const float* src, float* dst, WinoGeom, WinoMats)`:
/// their names, the elements they read and write, and their threads, for the launch code and
/// the emulator tests alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transform {
    /// w (O, C/g, k, k) -> `u[g][xi][o'][c']` (U = G w G^T), a thread per (o, c').
    Filter,
    /// `du[g][xi][o'][c']` -> dw (O, C/g, k, k) (dg = G^T dU G), a thread per (o, c').
    FilterGrad,
    /// x chunk (nb, C, H, W) -> `v[g][xi][c'][p]` (V = B^T d B), a thread per (c, p).
    Input,
    /// The masked output gradient (O, nb, HO, WO) -> `dm[g][xi][o'][p]` (dM = A dy A^T), a
    /// thread per (o, p).
    OutputGrad,
    /// `dv[g][xi][c'][p]` -> the patches' gradients `dd[c][n][ti a + i][tj a + j]`
    /// (B dV B^T), a thread per (c, p).
    InputGradTiles,
}

impl Transform {
    /// The kernel's name in `kernels/winograd.cu`.
    pub fn kernel(self) -> &'static str {
        match self {
            Transform::Filter => "wino_filter",
            Transform::FilterGrad => "wino_filter_grad",
            Transform::Input => "wino_input",
            Transform::OutputGrad => "wino_output_grad",
            Transform::InputGradTiles => "wino_input_grad_tiles",
        }
    }

    /// (elements read, elements written) for chunk `g`.
    pub fn lens(self, g: &WinoGeom) -> [usize; 2] {
        match self {
            Transform::Filter => [g.w_len(), g.u_len()],
            Transform::FilterGrad => [g.u_len(), g.w_len()],
            Transform::Input => [g.x_len(), g.v_len()],
            Transform::OutputGrad => [g.t_len(), g.m_len()],
            Transform::InputGradTiles => [g.v_len(), g.v_len()],
        }
    }

    /// Threads of one launch over chunk `g`.
    pub fn threads(self, g: &WinoGeom) -> u64 {
        match self {
            Transform::Filter | Transform::FilterGrad => g.filters(),
            Transform::Input | Transform::InputGradTiles => g.c as u64 * g.p as u64,
            Transform::OutputGrad => g.o as u64 * g.p as u64,
        }
    }
}

/// `n` rounded up to a multiple of 8 elements (32 bytes), where the workspace's parts start.
pub(super) fn aligned(n: usize) -> usize {
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
