//! Winograd convolution F(m x m, r x r) for stride-1 convolutions with r = 3 (the paper's
//! conv3-5) and r = 5 (conv2), with m = 2 or 4 outputs per tile side (`tile_m`): each m x m
//! block of outputs costs a^2 = (m + r - 1)^2 products per (input, output) channel pair
//! instead of m^2 r^2. On AlexNet's planes, whose tiles overhang the edges: F(2, 3) 1.9x fewer
//! multiply-adds than the direct form on 13x13 (tiles cover 14x14), F(4, 3) 2.6x (16x16),
//! F(2, 5) 2.6x on 27x27 and F(4, 5) 5.8x (both 28x28). Lavin & Gray, "Fast Algorithms for
//! Convolutional Neural Networks" (2016).
//!
//! With g an r x r filter, d an a x a input patch (tiles m apart) and the Toom-Cook matrices
//! A^T (m, a), G (a, r) and B^T (a, a) of `Transforms`, the forward is
//! `Y = A^T [sum_c (G g G^T) . (B^T d B)] A` (`.` elementwise): with `U = G g G^T` and
//! `V = B^T d B`, one GEMM per element xi of the a x a grid, `M[xi] = V[xi] U[xi]^T` (tiles x
//! channels). The backward is the exact transpose of that computation: `dM = A dY A^T`,
//! `dU[xi]^T = V[xi]^T dM[xi]` (then `dg = G^T dU G`) and `dV[xi] = dM[xi] U[xi]` (then
//! `dd = B dV B^T`, added into the overlapping patches). Tests hold both directions to the f64
//! definition at 1e-12 for both m, and f32 to a relative error of the order of im2col's.
//!
//! Layouts, channels last: U and dU^T `[g][xi][c'][o']`, V and dV `[xi][p][c']`, M and dM
//! `[xi][p][o']`, with a chunk's tile index `p = (sample, ti, tj)`; the input (and its
//! gradient) is copied into a zero-padded channels-last plane of (m th + r - 1) x (m tw + r - 1)
//! whose columns are stored apart by their phase col % m, `[sample][col % m][row][col / m][c']`.
//! Then the columns m tj + c of a whole tile row are consecutive, and every transform step is one
//! vector operation over a tile row (tw tiles x C/g or O/g channels: 1,000-2,700 elements on
//! AlexNet's layers), whatever r: the transforms are written once, over Toom-Cook matrices.
//!
//! Used where it pays on 2 cores: 3x3 and 5x5 stride-1 layers with at least
//! [`MIN_CHANNELS`] input channels per group (the paper's conv2-5 and the small net's
//! conv3-5; the small net's conv2, 12 channels per group, stays on im2col, where Winograd's
//! GEMMs would have K = 12).

use crate::conv::{grow, lane_sum, ConvShape};
use crate::error::LayerError;
use crate::relu::relu_mask;
use alexnet_tensor::gemm::{f32_backend, gemm_ld, F32Backend, Float};
use alexnet_tensor::toom_cook::ToomCook;
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

/// Target number of tiles per chunk (the GEMMs' row count P).
const TILES_PER_CHUNK: usize = 256;
/// Number of parts the batch is split into (fixed, for determinism).
const PARTS: usize = 8;
/// Channels moved together between NCHW and the channels-last planes (a 64-byte line of f32).
const CHANNEL_BLOCK: usize = 16;
/// Input channels per group below which a layer stays on im2col: the GEMMs' K is C/g, and the
/// transforms cost per channel what the GEMMs save (the small net's conv2, C/g = 12: 1.2-1.6x
/// slower by Winograd; its conv3-5, 48-64: faster).
pub const MIN_CHANNELS: usize = 32;
/// Input and output channels per group from which 3x3 layers use F(4x4, 3x3): the paper's
/// conv3-5 (192-384 channels) gain 1.1-1.3x per layer, the small net's conv3-5 (32-96) lose
/// about 10%.
const M4_MIN_CHANNELS: usize = 128;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the Winograd path for 3x3 and 5x5 stride-1 convolutions on (the default) or off
/// (process-wide; off means im2col + GEMM for every convolution, as `--cpu-conv im2col`).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether [`set_enabled`] left the Winograd path on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

static LARGE_TILES: AtomicBool = AtomicBool::new(true);

/// Lets `tile_m` pick F(4x4, r x r) where it pays (the default), or keeps every layer on
/// F(2x2, r x r) (process-wide; `--cpu-conv winograd2`, for comparison).
pub fn set_large_tiles(on: bool) {
    LARGE_TILES.store(on, Ordering::Relaxed);
}

/// Whether [`set_large_tiles`] left F(4x4, r x r) allowed.
pub fn large_tiles() -> bool {
    LARGE_TILES.load(Ordering::Relaxed)
}

/// The m of F(m x m, r x r) for shape `s`: 4 for 5x5 filters (F(4, 5) has 4 products per
/// output and pair of channels where F(2, 5) has 9) and for 3x3 ones with at least
/// [`M4_MIN_CHANNELS`] input and output channels per group; 2 otherwise. Bigger tiles cut the
/// GEMMs' work (on 13x13 planes by 1.36x for 3x3: 16 tiles of 6x6 instead of 49 of 4x4) but
/// cost more per channel in the transforms, which is why narrow layers keep m = 2. With the
/// AMX precisions every layer keeps m = 2: F(4, 5)'s larger transform coefficients amplify
/// bf16x3's product errors (the conv2-like fixture's dx: 8.9e-5 against its 1e-4, 3.6e-5 with
/// F(2, 5)).
fn tile_m(s: &ConvShape) -> usize {
    let f32_gemm = matches!(f32_backend(), F32Backend::Gemm | F32Backend::Matrixmultiply);
    if f32_gemm && large_tiles() && (s.k == 5 || s.cg().min(s.og()) >= M4_MIN_CHANNELS) {
        4
    } else {
        2
    }
}

/// Whether a convolution of shape `s` runs through this module.
pub(crate) fn applies(s: &ConvShape) -> bool {
    (s.k == 3 || s.k == 5) && s.stride == 1 && s.cg() >= MIN_CHANNELS && enabled()
}

/// The matrices of F(m, r), a = m + r - 1 ([`ToomCook`], shared with the CUDA convolutions),
/// rounded once from f64 to T. Row-major.
struct Transforms<T> {
    /// Outputs per tile side (the m of F(m x m, r x r)), filter side r, tile side a = m + r - 1.
    m: usize,
    a: usize,
    r: usize,
    /// A^T (m, a), G (a, r), B^T (a, a).
    at: Vec<T>,
    g: Vec<T>,
    bt: Vec<T>,
}

impl<T: Float> Transforms<T> {
    /// F(m, r) for the m of `tile_m` (2 or 4) and r = 3 or 5 (a <= 8, which [`ToomCook`]
    /// supports).
    fn new(m: usize, r: usize) -> Self {
        // Invariant: callers pass m in {2, 4} and r in {3, 5} (`applies`), so a <= 8.
        let t = ToomCook::new(m, r).expect("F(m, r) with m + r - 1 <= 8");
        let cast = |v: &[f64]| -> Vec<T> {
            v.iter()
                .map(|&e| T::from_f64(e).unwrap_or_else(T::nan))
                .collect()
        };
        Transforms {
            m,
            a: t.a,
            r,
            at: cast(&t.at),
            g: cast(&t.g),
            bt: cast(&t.bt),
        }
    }
}

/// Tile geometry of one shape.
#[derive(Clone, Copy)]
struct Geo {
    /// Outputs per tile side.
    m: usize,
    /// Tiles per column and per row of the output plane.
    th: usize,
    tw: usize,
    /// Tile side a = m + r - 1.
    a: usize,
    /// Rows of the padded plane (m th + r - 1), and columns of each phase held (tw + (a - 1) / m,
    /// enough for the m tw + r - 1 columns the tiles read).
    ph: usize,
    half: usize,
    /// Samples per chunk.
    chunk: usize,
}

impl Geo {
    fn new(s: &ConvShape, m: usize) -> Self {
        let (th, tw) = (s.ho().div_ceil(m), s.wo().div_ceil(m));
        let chunk = (TILES_PER_CHUNK / (th * tw)).clamp(1, s.n.max(1));
        let a = s.k + m - 1;
        Geo {
            m,
            th,
            tw,
            a,
            ph: m * th + s.k - 1,
            half: tw + (a - 1) / m,
            chunk,
        }
    }
    fn tiles(&self) -> usize {
        self.th * self.tw
    }
    /// Elements of one sample's padded plane `[col % m][row][col / m][c']`.
    fn plane_len(&self, cg: usize) -> usize {
        self.m * self.ph * self.half * cg
    }
    /// Offset in a padded plane of padded pixel (row, col): its column's phase plane (col %
    /// m), at col / m; so the columns m tj + c of tiles tj = 0, 1, ... are consecutive from
    /// `at([row, c])`.
    fn at(&self, [row, col]: [usize; 2], cg: usize) -> usize {
        (((col % self.m) * self.ph + row) * self.half + col / self.m) * cg
    }
    /// Scratch of one part: V / dV (a^2, P, C/g), M / dM (a^2, P, O/g), the padded planes.
    fn part_len(&self, s: &ConvShape) -> usize {
        let p = self.chunk * self.tiles();
        self.a * self.a * (s.cg() + s.og()) * p + self.chunk * self.plane_len(s.cg())
    }
    /// Samples per part, a whole number of chunks.
    fn per_part(&self, s: &ConvShape) -> usize {
        s.n.div_ceil(self.chunk).div_ceil(PARTS).max(1) * self.chunk
    }
    /// Scratch of the tile-row transforms: rows of tw x `width` channels, as many as the
    /// largest of them needs (the input's row pass: ph a).
    fn tmp_len(&self, width: usize) -> usize {
        (self.ph + self.a + 1) * self.a * self.tw * width
    }
}

/// `out = sum_j c(j) x(j)` for j < n over rows of channels, skipping zero coefficients and
/// adding or subtracting for +-1.
#[inline(always)]
fn lin<'x, T: Float + 'x>(
    out: &mut [T],
    n: usize,
    c: impl Fn(usize) -> T,
    x: impl Fn(usize) -> &'x [T],
) {
    let mut first = true;
    for j in 0..n {
        let cj = c(j);
        if cj == T::zero() {
            continue;
        }
        let o = out.iter_mut().zip(x(j));
        match (first, cj == T::one(), cj == -T::one()) {
            (true, true, _) => o.for_each(|(o, &v)| *o = v),
            (true, _, true) => o.for_each(|(o, &v)| *o = -v),
            (true, _, _) => o.for_each(|(o, &v)| *o = cj * v),
            (false, true, _) => o.for_each(|(o, &v)| *o = *o + v),
            (false, _, true) => o.for_each(|(o, &v)| *o = *o - v),
            (false, _, _) => o.for_each(|(o, &v)| *o = *o + cj * v),
        }
        first = false;
    }
    if first {
        out.fill(T::zero());
    }
}

/// The two-sided transform of one tile over rows of `len` channels:
/// `out[i][j] = sum_k sum_l c1(i, k) x(k, l) c2(j, l)`, with scratch `t` for the
/// `c1 x` half. `dims` = [rows out, rows in, cols out, cols in]; row (i, j) of the result is
/// written at `dst[at(i, j)..][..len]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn two_sided<'x, T: Float + 'x>(
    dims: [usize; 4],
    len: usize,
    c1: impl Fn(usize, usize) -> T,
    c2: impl Fn(usize, usize) -> T,
    x: impl Fn(usize, usize) -> &'x [T],
    t: &mut [T],
    dst: &mut [T],
    at: impl Fn(usize, usize) -> usize,
) {
    let [ro, ri, co, ci] = dims;
    // t[i][l] = sum_k c1(i, k) x(k, l)
    for (e, row) in t[..ro * ci * len].chunks_exact_mut(len).enumerate() {
        let (i, l) = (e / ci, e % ci);
        lin(row, ri, |k| c1(i, k), |k| x(k, l));
    }
    let t: &[T] = t;
    for i in 0..ro {
        for j in 0..co {
            let out = &mut dst[at(i, j)..][..len];
            lin(out, ci, |l| c2(j, l), |l| &t[(i * ci + l) * len..][..len]);
        }
    }
}

alexnet_tensor::multiversion! {
    /// U = G g G^T for every filter of one group: w (O/g, C/g, r, r) -> u `[xi][c'][o']`.
    fn filter_transform<T: Float>(w: &[T], tf: &Transforms<T>, cg_og: [usize; 2], u: &mut [T]) {
        let [cg, og] = cg_og;
        let (a, r) = (tf.a, tf.r);
        let mut f = vec![T::zero(); r * r * og];
        let mut t = vec![T::zero(); a * r * og];
        for cc in 0..cg {
            // f[uv][o'] = w[o', cc, u, v]
            for (oo, wf) in w.chunks_exact(r * r * cg).enumerate() {
                for (uv, &e) in wf[r * r * cc..][..r * r].iter().enumerate() {
                    f[uv * og + oo] = e;
                }
            }
            let g = |i: usize, k: usize| tf.g[i * r + k];
            let f: &[T] = &f;
            let fk = |k: usize, l: usize| &f[(k * r + l) * og..][..og];
            two_sided([a, r, a, r], og, g, g, fk, &mut t, u, |i, j| ((i * a + j) * cg + cc) * og);
        }
    }
}

alexnet_tensor::multiversion! {
    /// dg = G^T dU G: one group's accumulated dU^T `[xi][c'][o']` -> its dw (O/g, C/g, r, r).
    fn filter_gradient<T: Float>(dut: &[T], tf: &Transforms<T>, cg_og: [usize; 2], dw: &mut [T]) {
        let [cg, og] = cg_og;
        let (a, r) = (tf.a, tf.r);
        let mut t = vec![T::zero(); r * a * og];
        let mut res = vec![T::zero(); r * r * og];
        for cc in 0..cg {
            let gt = |i: usize, k: usize| tf.g[k * r + i];
            let dk = |k: usize, l: usize| &dut[((k * a + l) * cg + cc) * og..][..og];
            two_sided([r, a, r, a], og, gt, gt, dk, &mut t, &mut res, |i, j| (i * r + j) * og);
            for (oo, wf) in dw.chunks_exact_mut(r * r * cg).enumerate() {
                for (uv, e) in wf[r * r * cc..][..r * r].iter_mut().enumerate() {
                    *e = res[uv * og + oo];
                }
            }
        }
    }
}

/// Calls `f(at, off, cb)` for every input pixel and block of `cb` <= CHANNEL_BLOCK channels of
/// one sample's group: `at` is the block's offset in the padded channels-last plane, `off` its
/// first channel's offset in the NCHW group (the others follow at strides of H W). Blocks
/// outermost, so that the NCHW lines touched stay in L1 while they are used.
#[inline(always)]
fn interior_blocks(s: &ConvShape, geo: &Geo, mut f: impl FnMut(usize, usize, usize)) {
    let cg = s.cg();
    for c0 in (0..cg).step_by(CHANNEL_BLOCK) {
        let cb = CHANNEL_BLOCK.min(cg - c0);
        for r in 0..s.h {
            for c in 0..s.w {
                f(
                    geo.at([r + s.pad, c + s.pad], cg) + c0,
                    (c0 * s.h + r) * s.w + c,
                    cb,
                );
            }
        }
    }
}

alexnet_tensor::multiversion! {
    /// Channels of group g of samples n0..n0+nb (`which` = [n0, nb, g]) -> the zero-padded,
    /// column-deinterleaved channels-last planes `xp` [sample][col % m][row][col / m][c'].
    fn pad_channels_last<T: Float>(x: &[T], s: &ConvShape, geo: &Geo, which: [usize; 3], xp: &mut [T]) {
        let [n0, nb, g] = which;
        let cg = s.cg();
        let plane = geo.plane_len(cg);
        let xp = &mut xp[..nb * plane];
        xp.fill(T::zero());
        for sn in 0..nb {
            let dst = &mut xp[sn * plane..][..plane];
            let src = &x[((n0 + sn) * s.c + g * cg) * s.h * s.w..][..cg * s.h * s.w];
            interior_blocks(s, geo, |at, off, cb| {
                let px = src[off..].iter().step_by(s.h * s.w);
                for (e, &v) in dst[at..at + cb].iter_mut().zip(px) {
                    *e = v;
                }
            });
        }
    }
}

alexnet_tensor::multiversion! {
    /// The inverse of [`pad_channels_last`] for the interior: group g's channels of dx for
    /// `nb` samples (`dx` is the chunk's slice starting at its first sample; overwritten).
    fn unpad_channels_last<T: Float>(xp: &[T], s: &ConvShape, geo: &Geo, nb_g: [usize; 2], dx: &mut [T]) {
        let [nb, g] = nb_g;
        let cg = s.cg();
        let plane = geo.plane_len(cg);
        for sn in 0..nb {
            let src = &xp[sn * plane..][..plane];
            let dst = &mut dx[(sn * s.c + g * cg) * s.h * s.w..][..cg * s.h * s.w];
            interior_blocks(s, geo, |at, off, cb| {
                let px = dst[off..].iter_mut().step_by(s.h * s.w);
                for (e, &v) in px.zip(&src[at..at + cb]) {
                    *e = v;
                }
            });
        }
    }
}

alexnet_tensor::multiversion! {
    /// V = B^T d B for every tile of `nb` padded samples `xp`: v `[xi][p][c']`. Each step is
    /// a vector operation over a whole tile row (tw tiles x C/g channels): the row pass
    /// `t[r][b] = sum_c B^T[b][c] d[r][m tj + c]` reads, for each c, tw consecutive columns of
    /// one phase; the column pass writes `V[a][b]` for the tile row, contiguous in v.
    fn input_transform<T: Float>(
        xp: &[T],
        tf: &Transforms<T>,
        cg_nb: [usize; 2],
        geo: &Geo,
        t: &mut [T],
        v: &mut [T],
    ) {
        let [cg, nb] = cg_nb;
        let (a, tw) = (geo.a, geo.tw);
        let (len, plane) = (tw * cg, geo.plane_len(cg));
        let p_len = nb * geo.tiles();
        let t = &mut t[..geo.ph * a * len];
        for sn in 0..nb {
            let xs = &xp[sn * plane..][..plane];
            // Row pass over every padded row: t[r][b] (tw, C/g).
            for (rb, row) in t.chunks_exact_mut(len).enumerate() {
                let (r, b) = (rb / a, rb % a);
                lin(row, a, |c| tf.bt[b * a + c], |c| &xs[geo.at([r, c], cg)..][..len]);
            }
            let t: &[T] = t;
            for ti in 0..geo.th {
                let p0 = (sn * geo.th + ti) * tw;
                for xi in 0..a * a {
                    let (i, b) = (xi / a, xi % a);
                    let out = &mut v[(xi * p_len + p0) * cg..][..len];
                    let tr = |k: usize| &t[((geo.m * ti + k) * a + b) * len..][..len];
                    lin(out, a, |k| tf.bt[i * a + k], tr);
                }
            }
        }
    }
}

alexnet_tensor::multiversion! {
    /// Y = A^T M A (+ bias, then ReLU if `relu`) for group g of samples n0..n0+nb
    /// (`which` = [n0, nb, g]): m `[xi][p][o']` -> y (N, O, Ho, Wo), a tile row at a time,
    /// cropping the last tile row / column where m does not divide Ho / Wo. `t` is scratch of
    /// [`Geo::tmp_len`].
    #[allow(clippy::too_many_arguments)]
    fn output_transform<T: Float>(
        m: &[T],
        tf: &Transforms<T>,
        s: &ConvShape,
        geo: &Geo,
        which: [usize; 3],
        b_relu: (&[T], bool),
        t: &mut [T],
        y: &mut [T],
    ) {
        let [n0, nb, g] = which;
        let (b, relu) = b_relu;
        let (og, a, tw, mt) = (s.og(), geo.a, geo.tw, geo.m);
        let (ho, wo) = (s.ho(), s.wo());
        let len = tw * og;
        let p_len = nb * geo.tiles();
        let bias = &b[g * og..(g + 1) * og];
        let (u, yv) = t.split_at_mut(mt * a * len);
        let yv = &mut yv[..mt * mt * len];
        for sn in 0..nb {
            let yp = &mut y[((n0 + sn) * s.o + g * og) * ho * wo..][..og * ho * wo];
            for ti in 0..geo.th {
                let p0 = (sn * geo.th + ti) * tw;
                // u[i][l] = sum_k A^T[i][k] M[k][l], then y[i][j] = sum_l A^T[j][l] u[i][l].
                for (il, row) in u.chunks_exact_mut(len).enumerate() {
                    let (i, l) = (il / a, il % a);
                    let mk = |k: usize| &m[((k * a + l) * p_len + p0) * og..][..len];
                    lin(row, a, |k| tf.at[i * a + k], mk);
                }
                let u: &[T] = u;
                for (ij, row) in yv.chunks_exact_mut(len).enumerate() {
                    let (i, j) = (ij / mt, ij % mt);
                    lin(row, a, |l| tf.at[j * a + l], |l| &u[(i * a + l) * len..][..len]);
                }
                // Bias and ReLU, vectorised over the channels of each pixel.
                for px in yv.chunks_exact_mut(og) {
                    for (e, &bv) in px.iter_mut().zip(bias) {
                        let val = *e + bv;
                        // As relu_forward: max(e, 0) with NaN and -0 mapped to +0.
                        *e = if !relu || val > T::zero() { val } else { T::zero() };
                    }
                }
                // To NCHW, CHANNEL_BLOCK channels at a time, so that the lines written stay
                // in L1 until they are full.
                for o0 in (0..og).step_by(CHANNEL_BLOCK) {
                    let ob = CHANNEL_BLOCK.min(og - o0);
                    for q in 0..mt * mt {
                        let i = mt * ti + q / mt;
                        if i >= ho {
                            continue;
                        }
                        for tj in 0..tw {
                            let j = mt * tj + q % mt;
                            if j >= wo {
                                continue;
                            }
                            let src = &yv[q * len + tj * og + o0..][..ob];
                            let dst = yp[o0 * ho * wo + i * wo + j..].iter_mut().step_by(ho * wo);
                            for (d, &v) in dst.zip(src) {
                                *d = v;
                            }
                        }
                    }
                }
            }
        }
    }
}

alexnet_tensor::multiversion! {
    /// dM = A dY A^T for group g of samples n0..n0+nb (`which` = [n0, nb, g]): dy (N, O, Ho,
    /// Wo) -> dm `[xi][p][o']`, a tile row at a time, with zeros for the cropped outputs of
    /// edge tiles. `t` is scratch of [`Geo::tmp_len`].
    #[allow(clippy::too_many_arguments)]
    fn grad_transform<T: Float>(
        dy: &[T],
        tf: &Transforms<T>,
        s: &ConvShape,
        geo: &Geo,
        which: [usize; 3],
        t: &mut [T],
        dm: &mut [T],
    ) {
        let [n0, nb, g] = which;
        let (og, a, tw, m) = (s.og(), geo.a, geo.tw, geo.m);
        let (ho, wo) = (s.ho(), s.wo());
        let len = tw * og;
        let p_len = nb * geo.tiles();
        let (d, c) = t.split_at_mut(m * m * len);
        let c = &mut c[..a * m * len];
        for sn in 0..nb {
            let dp = &dy[((n0 + sn) * s.o + g * og) * ho * wo..][..og * ho * wo];
            for ti in 0..geo.th {
                let p0 = (sn * geo.th + ti) * tw;
                // d[q] (tw, O/g) = dY[m ti + q / m][m tj + q % m], zero outside the plane.
                // CHANNEL_BLOCK channels at a time, so that the lines read stay in L1.
                for o0 in (0..og).step_by(CHANNEL_BLOCK) {
                    let ob = CHANNEL_BLOCK.min(og - o0);
                    for (q, dq) in d.chunks_exact_mut(len).enumerate() {
                        let i = m * ti + q / m;
                        for (tj, dt) in dq.chunks_exact_mut(og).enumerate() {
                            let j = m * tj + q % m;
                            let dt = &mut dt[o0..o0 + ob];
                            if i >= ho || j >= wo {
                                dt.fill(T::zero());
                                continue;
                            }
                            let src = dp[o0 * ho * wo + i * wo + j..].iter().step_by(ho * wo);
                            for (e, &v) in dt.iter_mut().zip(src) {
                                *e = v;
                            }
                        }
                    }
                }
                let d: &[T] = d;
                // c[i][l] = sum_k A[i][k] dY[k][l], then dM[i][j] = sum_l A[j][l] c[i][l].
                for (il, row) in c.chunks_exact_mut(len).enumerate() {
                    let (i, l) = (il / m, il % m);
                    lin(row, m, |k| tf.at[k * a + i], |k| &d[(k * m + l) * len..][..len]);
                }
                let c: &[T] = c;
                for xi in 0..a * a {
                    let (i, j) = (xi / a, xi % a);
                    let out = &mut dm[(xi * p_len + p0) * og..][..len];
                    lin(out, m, |l| tf.at[l * a + j], |l| &c[(i * m + l) * len..][..len]);
                }
            }
        }
    }
}

alexnet_tensor::multiversion! {
    /// dd = B dV B^T, added into the overlapping patches of the padded planes `xp` (zeroed
    /// first), for the `nb` samples of dv `[xi][p][c']`, a tile row at a time: `q[r][b] =
    /// sum_a B[r][a] dV[a][b]`, then for each patch column c, `sum_b B[c][b] q[r][b]` is added
    /// to tw consecutive columns of one phase of padded row m ti + r. `t` is scratch of
    /// [`Geo::tmp_len`].
    fn scatter_transform<T: Float>(
        dv: &[T],
        tf: &Transforms<T>,
        cg_nb: [usize; 2],
        geo: &Geo,
        t: &mut [T],
        xp: &mut [T],
    ) {
        let [cg, nb] = cg_nb;
        let (a, tw) = (geo.a, geo.tw);
        let (len, plane) = (tw * cg, geo.plane_len(cg));
        let p_len = nb * geo.tiles();
        let xp = &mut xp[..nb * plane];
        xp.fill(T::zero());
        let (q, dd) = t.split_at_mut(a * a * len);
        let dd = &mut dd[..len];
        for sn in 0..nb {
            let xs = &mut xp[sn * plane..][..plane];
            for ti in 0..geo.th {
                let p0 = (sn * geo.th + ti) * tw;
                for (rb, row) in q.chunks_exact_mut(len).enumerate() {
                    let (r, b) = (rb / a, rb % a);
                    let dvk = |k: usize| &dv[((k * a + b) * p_len + p0) * cg..][..len];
                    lin(row, a, |k| tf.bt[k * a + r], dvk);
                }
                let q: &[T] = q;
                for r in 0..a {
                    for c in 0..a {
                        lin(dd, a, |b| tf.bt[b * a + c], |b| &q[(r * a + b) * len..][..len]);
                        let at = geo.at([geo.m * ti + r, c], cg);
                        for (e, &v) in xs[at..at + len].iter_mut().zip(dd.iter()) {
                            *e = *e + v;
                        }
                    }
                }
            }
        }
    }
}

/// Forward, as [`crate::conv::conv2d_forward_act`] (shapes already checked; `s.k == 3`,
/// `s.stride == 1`).
pub(crate) fn forward<T: Float>(
    x: &[T],
    w: &[T],
    b: &[T],
    y: &mut [T],
    s: &ConvShape,
    relu: bool,
    scratch: &mut Vec<T>,
) -> Result<(), LayerError> {
    let tf = Transforms::new(tile_m(s), s.k);
    forward_with(x, w, b, y, s, (relu, &tf), scratch)
}

/// [`forward`] with the given transforms (the tests run both kinds); `relu_tf` = (relu, tf).
fn forward_with<T: Float>(
    x: &[T],
    w: &[T],
    b: &[T],
    y: &mut [T],
    s: &ConvShape,
    relu_tf: (bool, &Transforms<T>),
    scratch: &mut Vec<T>,
) -> Result<(), LayerError> {
    let (relu, tf) = relu_tf;
    let geo = Geo::new(s, tf.m);
    let (og, cg, tiles, a2) = (s.og(), s.cg(), geo.tiles(), geo.a * geo.a);
    let per_part = geo.per_part(s);
    let part_len = geo.part_len(s);
    let u_len = a2 * s.o * cg;
    grow(scratch, u_len + s.n.div_ceil(per_part) * part_len);
    let (u, parts) = scratch.split_at_mut(u_len);
    u.par_chunks_mut(a2 * cg * og)
        .zip(w.par_chunks(og * cg * s.k * s.k))
        .for_each(|(ug, wg)| filter_transform(wg, tf, [cg, og], ug));
    let u: &[T] = u;
    let ohw = s.o * s.ho() * s.wo();
    y.par_chunks_mut(per_part * ohw)
        .zip(parts.par_chunks_mut(part_len))
        .enumerate()
        .try_for_each(|(pi, (yp, sp))| {
            let mut t = vec![T::zero(); geo.tmp_len(cg.max(og))];
            let (v, rest) = sp.split_at_mut(a2 * cg * geo.chunk * tiles);
            let (m, xp) = rest.split_at_mut(a2 * og * geo.chunk * tiles);
            let np = yp.len() / ohw;
            for c0 in (0..np).step_by(geo.chunk) {
                let nb = geo.chunk.min(np - c0);
                let n0 = pi * per_part + c0;
                let p = nb * tiles;
                for g in 0..s.groups {
                    pad_channels_last(x, s, &geo, [n0, nb, g], xp);
                    input_transform(xp, tf, [cg, nb], &geo, &mut t, v);
                    let ug = &u[g * a2 * cg * og..][..a2 * cg * og];
                    for xi in 0..a2 {
                        // M[xi] (P, O/g) = V[xi] (P, C/g) x U[xi]^T (C/g, O/g)
                        gemm_ld(
                            false,
                            false,
                            p,
                            og,
                            cg,
                            T::one(),
                            &v[xi * p * cg..][..p * cg],
                            cg,
                            &ug[xi * cg * og..][..cg * og],
                            og,
                            T::zero(),
                            &mut m[xi * p * og..][..p * og],
                            og,
                        )?;
                    }
                    output_transform(m, tf, s, &geo, [c0, nb, g], (b, relu), &mut t, yp);
                }
            }
            Ok::<(), LayerError>(())
        })
}

/// Backward, as [`crate::conv::conv2d_backward_opt`] (shapes already checked).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<T: Float>(
    x: &[T],
    w: &[T],
    dy: &[T],
    dx: Option<&mut [T]>,
    dw: &mut [T],
    db: &mut [T],
    s: &ConvShape,
    scratch: &mut Vec<T>,
    relu_x: bool,
) -> Result<(), LayerError> {
    let tf = Transforms::new(tile_m(s), s.k);
    backward_with(x, w, dy, dx, dw, db, s, scratch, (relu_x, &tf))
}

/// [`backward`] with the given transforms; `relu_tf` = (relu_x, tf).
#[allow(clippy::too_many_arguments)]
fn backward_with<T: Float>(
    x: &[T],
    w: &[T],
    dy: &[T],
    dx: Option<&mut [T]>,
    dw: &mut [T],
    db: &mut [T],
    s: &ConvShape,
    scratch: &mut Vec<T>,
    relu_tf: (bool, &Transforms<T>),
) -> Result<(), LayerError> {
    let (relu_x, tf) = relu_tf;
    let geo = Geo::new(s, tf.m);
    let (og, cg, tiles, a2) = (s.og(), s.cg(), geo.tiles(), geo.a * geo.a);
    let per_part = geo.per_part(s);
    let nparts = s.n.div_ceil(per_part);
    // Per part, before the forward's scratch: its dU^T accumulator `[g][xi][c'][o']`.
    let dut_len = a2 * s.o * cg;
    let part_len = geo.part_len(s) + dut_len;
    let u_len = a2 * s.o * cg;
    let sample = s.c * s.h * s.w;
    let hw = s.ho() * s.wo();
    grow(scratch, u_len + nparts * part_len);
    let (u, parts) = scratch.split_at_mut(u_len);
    let need_dx = dx.is_some();
    if need_dx {
        u.par_chunks_mut(a2 * cg * og)
            .zip(w.par_chunks(og * cg * s.k * s.k))
            .for_each(|(ug, wg)| filter_transform(wg, tf, [cg, og], ug));
    }
    let u: &[T] = u;
    let dx_parts: Vec<Option<&mut [T]>> = match dx {
        Some(dx) => dx.chunks_mut(per_part * sample).map(Some).collect(),
        None => (0..nparts).map(|_| None).collect(),
    };
    let parts = &mut parts[..nparts * part_len];
    let sums: Vec<Vec<T>> = dx_parts
        .into_par_iter()
        .zip(parts.par_chunks_mut(part_len))
        .enumerate()
        .map(|(pi, (mut dxp, sp))| {
            let (dut, sp) = sp.split_at_mut(dut_len);
            dut.fill(T::zero());
            let mut pdb = vec![T::zero(); s.o];
            let mut t = vec![T::zero(); geo.tmp_len(cg.max(og))];
            let (v, rest) = sp.split_at_mut(a2 * cg * geo.chunk * tiles);
            let (dm, xp) = rest.split_at_mut(a2 * og * geo.chunk * tiles);
            let p0 = pi * per_part;
            let p1 = (p0 + per_part).min(s.n);
            for n0 in (p0..p1).step_by(geo.chunk) {
                let nb = geo.chunk.min(p1 - n0);
                let p = nb * tiles;
                for sn in n0..n0 + nb {
                    for (o, d) in pdb.iter_mut().enumerate() {
                        *d = *d + lane_sum(&dy[(sn * s.o + o) * hw..][..hw]);
                    }
                }
                for g in 0..s.groups {
                    pad_channels_last(x, s, &geo, [n0, nb, g], xp);
                    grad_transform(dy, tf, s, &geo, [n0, nb, g], &mut t, dm);
                    input_transform(xp, tf, [cg, nb], &geo, &mut t, v);
                    let ug = &u[g * a2 * cg * og..][..a2 * cg * og];
                    for xi in 0..a2 {
                        let vx = &mut v[xi * p * cg..][..p * cg];
                        let dmx = &dm[xi * p * og..][..p * og];
                        // dU[xi]^T (C/g, O/g) += V[xi]^T (C/g, P) x dM[xi] (P, O/g)
                        let dux = &mut dut[(g * a2 + xi) * cg * og..][..cg * og];
                        gemm_ld(
                            true,
                            false,
                            cg,
                            og,
                            p,
                            T::one(),
                            vx,
                            cg,
                            dmx,
                            og,
                            T::one(),
                            dux,
                            og,
                        )?;
                        if need_dx {
                            // dV[xi] (P, C/g) = dM[xi] (P, O/g) x U[xi] (O/g, C/g), over V.
                            gemm_ld(
                                false,
                                true,
                                p,
                                cg,
                                og,
                                T::one(),
                                dmx,
                                og,
                                &ug[xi * cg * og..][..cg * og],
                                og,
                                T::zero(),
                                vx,
                                cg,
                            )?;
                        }
                    }
                    if let Some(dxp) = dxp.as_deref_mut() {
                        scatter_transform(v, tf, [cg, nb], &geo, &mut t, xp);
                        let dxc = &mut dxp[(n0 - p0) * sample..][..nb * sample];
                        unpad_channels_last(xp, s, &geo, [nb, g], dxc);
                    }
                }
                if let (true, Some(dxp)) = (relu_x, dxp.as_deref_mut()) {
                    let dxc = &mut dxp[(n0 - p0) * sample..][..nb * sample];
                    relu_mask(&x[n0 * sample..(n0 + nb) * sample], dxc);
                }
            }
            Ok(pdb)
        })
        .collect::<Result<_, LayerError>>()?;
    // Sum the parts in order into the first (the same bits for any thread count), then
    // dg = G^T dU G.
    db.iter_mut().for_each(|e| *e = T::zero());
    for pdb in &sums {
        db.iter_mut().zip(pdb).for_each(|(a, &e)| *a = *a + e);
    }
    let (first, rest) = parts.split_at_mut(part_len);
    let total = &mut first[..dut_len];
    for other in rest.chunks(part_len) {
        total
            .iter_mut()
            .zip(&other[..dut_len])
            .for_each(|(a, &e)| *a = *a + e);
    }
    dw.par_chunks_mut(og * cg * s.k * s.k)
        .zip(total.par_chunks(a2 * cg * og))
        .for_each(|(dwg, tg)| filter_gradient(tg, tf, [cg, og], dwg));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::tests::conv_direct;
    use crate::conv::{im2col_backward, im2col_forward};

    /// A 3x3 shape; `.k = 5` etc. via [`k5`].
    fn shape(n: usize, c: usize, hw: [usize; 2], o: usize, pad: usize, groups: usize) -> ConvShape {
        ConvShape {
            n,
            c,
            h: hw[0],
            w: hw[1],
            o,
            k: 3,
            stride: 1,
            pad,
            groups,
        }
    }

    fn k5(s: ConvShape) -> ConvShape {
        ConvShape { k: 5, ..s }
    }

    fn wave(len: usize, f: f64) -> Vec<f64> {
        (0..len).map(|i| (i as f64 * f).sin()).collect()
    }

    /// The ways a convolution can run here: Winograd with m outputs per tile side, or im2col.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Path {
        Winograd(usize),
        Im2col,
    }

    /// y, dx, dw, db of one path, with the given ReLU options.
    fn run(
        path: Path,
        [x, w, b, dy]: [&[f64]; 4],
        s: &ConvShape,
        relu: bool,
        want_dx: bool,
    ) -> [Vec<f64>; 4] {
        let mut scratch = Vec::new();
        let mut y = vec![f64::NAN; s.n * s.o * s.ho() * s.wo()];
        let (mut dx, mut dw, mut db) = (
            vec![f64::NAN; x.len()],
            vec![f64::NAN; w.len()],
            vec![f64::NAN; s.o],
        );
        let dxo = want_dx.then_some(&mut dx[..]);
        let sc = &mut scratch;
        match path {
            Path::Winograd(m) => {
                let tf = Transforms::new(m, s.k);
                forward_with(x, w, b, &mut y, s, (relu, &tf), sc).unwrap();
                backward_with(x, w, dy, dxo, &mut dw, &mut db, s, sc, (relu, &tf)).unwrap();
            }
            Path::Im2col => {
                im2col_forward(x, w, b, &mut y, s, relu, sc).unwrap();
                im2col_backward(x, w, dy, dxo, &mut dw, &mut db, s, sc, relu).unwrap();
            }
        }
        [y, dx, dw, db]
    }

    fn max_err(got: &[f64], want: &[f64]) -> f64 {
        assert_eq!(got.len(), want.len());
        got.iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn winograd_and_im2col_match_the_direct_convolution() {
        // Odd and even planes (cropped edge tiles), non-square ones, pads 0-2, a 1x1 output,
        // groups, more samples than one chunk (9 tiles: 28 per chunk) and more parts than
        // threads, and the paper's 13x13 conv3-5 planes.
        let shapes = [
            shape(3, 4, [13, 13], 6, 1, 2),
            shape(2, 3, [6, 5], 4, 1, 1),
            shape(2, 2, [3, 3], 2, 0, 1),
            shape(2, 3, [7, 4], 5, 2, 1),
            shape(61, 2, [5, 6], 3, 1, 1),
            shape(12, 4, [14, 14], 4, 1, 2),
            shape(1, 6, [4, 9], 9, 0, 3),
            // 5x5 (6x6 tiles): conv2-like "same" padding, odd and even planes, one output.
            k5(shape(2, 4, [9, 9], 6, 2, 2)),
            k5(shape(3, 3, [6, 7], 4, 2, 1)),
            k5(shape(2, 2, [5, 5], 3, 0, 1)),
            k5(shape(30, 2, [4, 4], 3, 1, 1)),
        ];
        for s in shapes {
            let x = wave(s.n * s.c * s.h * s.w, 0.37);
            let w = wave(s.o * s.cg() * s.k * s.k, 0.11);
            let b = wave(s.o, 1.3);
            let dy = wave(s.n * s.o * s.ho() * s.wo(), 0.53);
            let (y, dx, dw, db) = conv_direct(&x, &w, &b, &dy, &s);
            let relu_y: Vec<f64> = y.iter().map(|&v| v.max(0.0)).collect();
            // With relu = true, dx is also masked where x <= 0 (x is a ReLU's output).
            let masked: Vec<f64> = dx
                .iter()
                .zip(&x)
                .map(|(&d, &xv)| if xv > 0.0 { d } else { 0.0 })
                .collect();
            for path in [Path::Winograd(2), Path::Winograd(4), Path::Im2col] {
                for relu in [false, true] {
                    let got = run(path, [&x, &w, &b, &dy], &s, relu, true);
                    let want = if relu {
                        [&relu_y, &masked, &dw, &db]
                    } else {
                        [&y, &dx, &dw, &db]
                    };
                    for (what, g, wv) in ["y", "dx", "dw", "db"]
                        .iter()
                        .zip(&got)
                        .zip(want)
                        .map(|((a, b), c)| (a, b, c))
                    {
                        let err = max_err(g, wv);
                        assert!(err < 1e-12, "{what} {path:?} relu {relu} {s:?}: {err}");
                    }
                }
            }
            // Without dx, the weight and bias gradients are the same bits.
            for m in [2, 4] {
                let full = run(Path::Winograd(m), [&x, &w, &b, &dy], &s, false, true);
                let nodx = run(Path::Winograd(m), [&x, &w, &b, &dy], &s, false, false);
                assert_eq!(full[2], nodx[2]);
                assert_eq!(full[3], nodx[3]);
                assert!(
                    nodx[1].iter().all(|v| v.is_nan()),
                    "dx untouched when not asked for"
                );
            }
        }
    }

    #[test]
    fn f32_winograd_is_as_accurate_as_f32_im2col() {
        // conv4-like: 13x13, 64 -> 48 channels in 2 groups, and conv2-like: 5x5 on 15x15.
        // Relative L2 error of each f32 path against the f64 definition, for y and the input
        // and weight gradients; Winograd's transforms add a few roundings per value, so it may
        // be somewhat worse than im2col, but stays far below the fixtures' 1e-4.
        for s in [
            shape(4, 64, [13, 13], 48, 1, 2),
            k5(shape(2, 32, [15, 15], 32, 2, 2)),
        ] {
            f32_errors(&s);
        }
    }

    /// The relative L2 errors of [`f32_winograd_is_as_accurate_as_f32_im2col`] for one shape.
    fn f32_errors(s: &ConvShape) {
        let s = *s;
        let x = wave(s.n * s.c * s.h * s.w, 0.37);
        let w: Vec<f64> = wave(s.o * s.cg() * s.k * s.k, 0.11)
            .iter()
            .map(|v| v * 0.05)
            .collect();
        let b = wave(s.o, 1.3);
        let dy = wave(s.n * s.o * s.ho() * s.wo(), 0.53);
        let want = {
            let (y, dx, dw, db) = conv_direct(&x, &w, &b, &dy, &s);
            [y, dx, dw, db]
        };
        let f = |v: &[f64]| v.iter().map(|&e| e as f32).collect::<Vec<f32>>();
        let (xf, wf, bf, dyf) = (f(&x), f(&w), f(&b), f(&dy));
        for path in [Path::Winograd(2), Path::Winograd(4), Path::Im2col] {
            let mut scratch = Vec::new();
            let mut y = vec![0f32; want[0].len()];
            let (mut dx, mut dw, mut db) =
                (vec![0f32; x.len()], vec![0f32; w.len()], vec![0f32; s.o]);
            if let Path::Winograd(m) = path {
                let tf = Transforms::new(m, s.k);
                let sc = &mut scratch;
                forward_with(&xf, &wf, &bf, &mut y, &s, (false, &tf), sc).unwrap();
                let dxo = Some(&mut dx[..]);
                backward_with(&xf, &wf, &dyf, dxo, &mut dw, &mut db, &s, sc, (false, &tf)).unwrap();
            } else {
                im2col_forward(&xf, &wf, &bf, &mut y, &s, false, &mut scratch).unwrap();
                let dxo = Some(&mut dx[..]);
                im2col_backward(
                    &xf,
                    &wf,
                    &dyf,
                    dxo,
                    &mut dw,
                    &mut db,
                    &s,
                    &mut scratch,
                    false,
                )
                .unwrap();
            }
            for (what, got, want) in [
                ("y", &y, &want[0]),
                ("dx", &dx, &want[1]),
                ("dw", &dw, &want[2]),
            ] {
                let num: f64 = got
                    .iter()
                    .zip(want)
                    .map(|(&a, &b)| (a as f64 - b).powi(2))
                    .sum();
                let den: f64 = want.iter().map(|b| b * b).sum();
                let rel = (num / den).sqrt();
                // Measured (y / dx / dw): 3x3 F(2, 3) 1.1e-7 / 6.4e-7 / 8.6e-7, F(4, 3) 3.8e-7 /
                // 3.5e-6 / 3.5e-6, im2col 1.0e-7 / 1.7e-7 / 8.2e-7; 5x5 F(2, 5) 4.5e-7 /
                // 1.4e-6 / 3.0e-6, F(4, 5) 8.3e-7 / 3.0e-6 / 2.8e-6, im2col 1.7e-7 / 1.9e-7 /
                // 6.5e-7.
                let bound = match (path, s.k) {
                    (Path::Im2col, _) | (Path::Winograd(2), 3) => 2e-6,
                    (Path::Winograd(4), 3) => 7e-6,
                    _ => 6e-6,
                };
                assert!(rel < bound, "k{} {what} {path:?}: relative L2 {rel}", s.k);
            }
        }
    }

    #[test]
    fn runs_where_it_pays() {
        let paper2 = k5(shape(32, 96, [27, 27], 256, 2, 2));
        let small2 = k5(shape(128, 24, [27, 27], 64, 2, 2));
        let conv1 = ConvShape {
            k: 11,
            stride: 4,
            ..shape(32, 3, [227, 227], 96, 2, 1)
        };
        let paper3 = shape(32, 256, [13, 13], 384, 1, 1);
        let paper5 = shape(32, 384, [13, 13], 256, 1, 2);
        let small3 = shape(128, 64, [13, 13], 96, 1, 1);
        assert!(applies(&paper2) && applies(&paper3) && applies(&small3));
        assert!(!applies(&small2) && !applies(&conv1));
        // F(4, r) for 5x5 and the wide 3x3 layers, F(2, 3) for the small net's.
        assert_eq!(
            [paper2, paper3, paper5, small3].map(|s| tile_m(&s)),
            [4, 4, 4, 2]
        );
    }

    #[test]
    fn the_same_bits_on_one_thread_as_on_several() {
        let s = shape(23, 8, [13, 13], 6, 1, 2);
        let x: Vec<f32> = (0..s.n * s.c * 169)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let w: Vec<f32> = (0..s.o * s.cg() * 9)
            .map(|i| (i as f32 * 0.11).cos())
            .collect();
        let b = [0.1f32, -0.2, 0.0, 0.3, -0.1, 0.05];
        let dy: Vec<f32> = (0..s.n * s.o * 169)
            .map(|i| (i as f32 * 0.53).cos())
            .collect();
        let go = |m: usize| {
            let tf = Transforms::new(m, s.k);
            let mut scratch = Vec::new();
            let mut y = vec![0f32; dy.len()];
            let (mut dx, mut dw, mut db) =
                (vec![0f32; x.len()], vec![0f32; w.len()], vec![0f32; 6]);
            let sc = &mut scratch;
            forward_with(&x, &w, &b, &mut y, &s, (true, &tf), sc).unwrap();
            let dxo = Some(&mut dx[..]);
            backward_with(&x, &w, &dy, dxo, &mut dw, &mut db, &s, sc, (true, &tf)).unwrap();
            [y, dx, dw, db].map(|v| v.iter().map(|e| e.to_bits()).collect::<Vec<u32>>())
        };
        let pool = |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        };
        for m in [2, 4] {
            let one = pool(1).install(|| go(m));
            let three = pool(3).install(|| go(m));
            assert_eq!(one, three, "m = {m}");
            assert!(Geo::new(&s, m).per_part(&s) < s.n, "several parts");
        }
    }
}
