//! 2-D convolution (cross-correlation) with stride, zero padding and groups, via im2col + GEMM.
//!
//! Samples are processed in fixed chunks (sized from the shapes, never from the thread count);
//! weight gradients are accumulated per fixed group of chunks and summed in order, so results
//! are bit-identical whatever the number of rayon threads.

use crate::error::{check_len, LayerError};
use crate::relu::relu_mask;
use alexnet_tensor::gemm::{gemm, gemm_ld, Float};
use rayon::prelude::*;

/// Shapes and hyper-parameters of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// Number of partial weight-gradient accumulators (fixed, for determinism).
const GRAD_PARTS: usize = 8;
/// Target number of output pixels per chunk (im2col columns per GEMM).
const CHUNK_COLUMNS: usize = 2048;
/// Target im2col elements per block of output rows, for planes larger than a chunk (one
/// sample at a time): 512 KiB of f32, so that the block stays in L2 between im2col and GEMM.
const ROW_BLOCK_ELEMENTS: usize = 1 << 17;

impl ConvShape {
    /// Output height.
    pub fn ho(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }
    /// Output width.
    pub fn wo(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }
    pub(crate) fn cg(&self) -> usize {
        self.c / self.groups
    }
    pub(crate) fn og(&self) -> usize {
        self.o / self.groups
    }
    /// Rows of one group's im2col matrix: C/g * k * k.
    fn kdim(&self) -> usize {
        self.cg() * self.k * self.k
    }
    fn desc(&self) -> String {
        format!(
            "x ({},{},{},{}) w ({},{},{},{}) stride {} pad {} groups {}",
            self.n,
            self.c,
            self.h,
            self.w,
            self.o,
            self.cg(),
            self.k,
            self.k,
            self.stride,
            self.pad,
            self.groups
        )
    }

    /// Validates hyper-parameters and buffer lengths.
    fn check(&self, x: usize, w: usize, b: usize, y: usize) -> Result<(), LayerError> {
        let s = *self;
        if s.groups == 0 || !s.c.is_multiple_of(s.groups) || !s.o.is_multiple_of(s.groups) {
            return Err(LayerError::Param {
                op: "conv2d",
                detail: format!("groups {} must divide C={} and O={}", s.groups, s.c, s.o),
            });
        }
        if s.k == 0 || s.stride == 0 || s.h + 2 * s.pad < s.k || s.w + 2 * s.pad < s.k {
            return Err(LayerError::Param {
                op: "conv2d",
                detail: format!("kernel does not fit: {}", s.desc()),
            });
        }
        let (ho, wo) = (s.ho(), s.wo());
        check_len("conv2d", "x", x, s.n * s.c * s.h * s.w, || s.desc())?;
        check_len("conv2d", "w", w, s.o * s.kdim(), || s.desc())?;
        check_len("conv2d", "b", b, s.o, || s.desc())?;
        check_len("conv2d", "y", y, s.n * s.o * ho * wo, || s.desc())
    }

    /// Per part of the batch, the scratch lengths of the im2col / dcol matrix (K, chunk
    /// columns) and of the GEMM-side copy (O/g, chunk columns: the forward's output, the
    /// backward's gathered dy; none for one-sample chunks, which use y / dy in place).
    fn part_scratch(&self) -> (usize, usize) {
        let (chunk, cols) = (self.chunk(), self.chunk() * self.ho() * self.wo());
        (
            self.kdim() * cols,
            if chunk > 1 { self.og() * cols } else { 0 },
        )
    }

    /// The blocks [i0, i1) of output rows that one-sample chunks are computed in: about
    /// ROW_BLOCK_ELEMENTS im2col elements each (the whole plane for multi-sample chunks).
    fn row_blocks(&self, nb: usize) -> impl Iterator<Item = [usize; 2]> {
        let ho = self.ho();
        let rows = if nb > 1 {
            ho
        } else {
            (ROW_BLOCK_ELEMENTS / (self.kdim() * self.wo()).max(1)).clamp(1, ho.max(1))
        };
        (0..ho)
            .step_by(rows)
            .map(move |i0| [i0, (i0 + rows).min(ho)])
    }

    /// Samples per chunk: enough that one im2col matrix has about CHUNK_COLUMNS columns.
    fn chunk(&self) -> usize {
        (CHUNK_COLUMNS / (self.ho() * self.wo()).max(1)).clamp(1, self.n.max(1))
    }
}

/// The output columns `j` whose input column `j*stride + v - pad` lies inside `[0, w)`.
#[inline]
fn valid_cols(wo: usize, w: usize, stride: usize, v: usize, pad: usize) -> (usize, usize) {
    // j*stride + v >= pad  and  j*stride + v < w + pad
    let j0 = if pad > v {
        (pad - v).div_ceil(stride)
    } else {
        0
    };
    let j1 = if w + pad > v {
        (w + pad - v).div_ceil(stride)
    } else {
        0
    };
    (j0.min(wo), j1.clamp(j0.min(wo), wo))
}

/// Stride 1 with "same" padding (2 pad = k - 1): output planes are as large as input planes, so
/// a kernel tap (u, v) maps output pixel m to input pixel m + (u - pad) W + (v - pad) over the
/// whole plane, not just within a row.
fn same_plane(s: &ConvShape) -> bool {
    s.stride == 1 && 2 * s.pad + 1 == s.k
}

/// The valid output rows [i0, i1) and columns [j0, j1) of tap (u, v) for [`same_plane`]
/// shapes, and the input offset of output pixel 0 (negative values allowed).
#[inline(always)]
fn shifted_ranges(s: &ConvShape, u: usize, v: usize) -> ([usize; 4], isize) {
    let (du, dv) = (u as isize - s.pad as isize, v as isize - s.pad as isize);
    let (h, w) = (s.h as isize, s.w as isize);
    let (i0, i1) = ((-du).max(0), (h - du).min(h));
    let (j0, j1) = ((-dv).max(0), (w - dv).min(w));
    let r = [i0, i1.max(i0), j0, j1.max(j0)].map(|e| e as usize);
    (r, du * w + dv)
}

/// One im2col row of one sample for [`same_plane`] shapes: dst (H*W) gets the input plane
/// shifted by tap (u, v), zeros where the tap falls in the padding. One contiguous copy for all
/// valid rows; the columns that wrapped around from the neighbouring row are then zeroed.
#[inline(always)]
fn shifted_copy<T: Float>(plane: &[T], dst: &mut [T], s: &ConvShape, u: usize, v: usize) {
    let w = s.w;
    let ([i0, i1, j0, j1], off) = shifted_ranges(s, u, v);
    if i0 >= i1 || j0 >= j1 {
        dst.iter_mut().for_each(|e| *e = T::zero());
        return;
    }
    let (m0, m1) = (i0 * w + j0, (i1 - 1) * w + j1);
    // m0 + off >= 0: it is the input pixel (i0 + du, j0 + dv), inside the plane.
    let src0 = (m0 as isize + off) as usize;
    dst[..m0].iter_mut().for_each(|e| *e = T::zero());
    dst[m0..m1].copy_from_slice(&plane[src0..src0 + (m1 - m0)]);
    dst[m1..].iter_mut().for_each(|e| *e = T::zero());
    for i in i0..i1 - 1 {
        zero_short(&mut dst[i * w + j1..(i + 1) * w + j0]);
    }
}

/// Zeroes a segment of |v - pad| <= pad elements (the wrapped columns between two rows). The
/// first two are explicit stores: a plain loop would become a `memset` call, which for one or
/// two elements per row costs more than the row's copy.
#[inline(always)]
fn zero_short<T: Float>(seg: &mut [T]) {
    match seg {
        [] => {}
        [a] => *a = T::zero(),
        [a, b] => (*a, *b) = (T::zero(), T::zero()),
        _ => seg.iter_mut().for_each(|e| *e = T::zero()),
    }
}

/// The transpose of [`shifted_copy`]: adds one im2col row of one sample into the input-gradient
/// plane. The wrapped-around columns of `src` are zeroed first (src is scratch), so the valid
/// rows are one contiguous add.
#[inline(always)]
fn shifted_add<T: Float>(src: &mut [T], plane: &mut [T], s: &ConvShape, u: usize, v: usize) {
    let w = s.w;
    let ([i0, i1, j0, j1], off) = shifted_ranges(s, u, v);
    if i0 >= i1 || j0 >= j1 {
        return;
    }
    for i in i0..i1 - 1 {
        zero_short(&mut src[i * w + j1..(i + 1) * w + j0]);
    }
    let (m0, m1) = (i0 * w + j0, (i1 - 1) * w + j1);
    let dst0 = (m0 as isize + off) as usize;
    for (d, &e) in plane[dst0..dst0 + (m1 - m0)].iter_mut().zip(&src[m0..m1]) {
        *d = *d + e;
    }
}

alexnet_tensor::multiversion! {
    /// im2col of samples `x[n0..n0+nb]`, group `g`, output rows `rows` = [i0, i1): col (K,
    /// nb*(i1-i0)*Wo) with K = C/g*k*k, row `(c', u, v)`, column `(sample, i - i0, j)`.
    fn im2col<T: Float>(
        x: &[T],
        s: &ConvShape,
        n0: usize,
        nb: usize,
        g: usize,
        rows: [usize; 2],
        col: &mut [T],
    ) {
        let (ho, wo) = (s.ho(), s.wo());
        let [i0, i1] = rows;
        let hw = ho * wo;
        let bw = (i1 - i0) * wo;
        let cols = nb * bw;
        let (k, st, pad) = (s.k, s.stride, s.pad);
        if st > 1 {
            im2col_strided(x, s, [n0, nb, g], rows, col);
            return;
        }
        let same = same_plane(s) && rows == [0, ho];
        for cc in 0..s.cg() {
            let ch = g * s.cg() + cc;
            for u in 0..k {
                for v in 0..k {
                    let row = (cc * k + u) * k + v;
                    let dst = &mut col[row * cols..(row + 1) * cols];
                    let (j0, j1) = valid_cols(wo, s.w, st, v, pad);
                    if same {
                        for sn in 0..nb {
                            let plane = &x[((n0 + sn) * s.c + ch) * hw..][..hw];
                            shifted_copy(plane, &mut dst[sn * hw..(sn + 1) * hw], s, u, v);
                        }
                        continue;
                    }
                    for sn in 0..nb {
                        let plane = &x[((n0 + sn) * s.c + ch) * s.h * s.w..][..s.h * s.w];
                        for i in i0..i1 {
                            let d = &mut dst[sn * bw + (i - i0) * wo..][..wo];
                            let hi = i + u;
                            if hi < pad || hi >= s.h + pad || j0 >= j1 {
                                d.fill(T::zero());
                                continue;
                            }
                            let src = &plane[(hi - pad) * s.w..(hi - pad + 1) * s.w];
                            d[..j0].fill(T::zero());
                            d[j1..].fill(T::zero());
                            // Input column of output column j: j + v - pad (>= 0 for j >= j0).
                            let first = j0 + v - pad;
                            d[j0..j1].copy_from_slice(&src[first..first + (j1 - j0)]);
                        }
                    }
                }
            }
        }
    }
}

/// [`im2col`] for stride > 1 (the paper's conv1, stride 4); `which` = [n0, nb, g]. Each padded
/// input row is split once into its `st` phases (phase p holds padded columns p, p + st,
/// p + 2 st, ...): tap v of output column j reads padded column j st + v, which is element
/// j + v / st of phase v % st, so every (tap, output row) is one contiguous copy of Wo elements
/// instead of a strided gather, and the padding's zeros come with the phases.
#[inline(always)]
fn im2col_strided<T: Float>(
    x: &[T],
    s: &ConvShape,
    which: [usize; 3],
    rows: [usize; 2],
    col: &mut [T],
) {
    let [n0, nb, g] = which;
    let [i0, i1] = rows;
    let wo = s.wo();
    let bw = (i1 - i0) * wo;
    let cols = nb * bw;
    let (k, st, pad) = (s.k, s.stride, s.pad);
    // Phase length: output column wo - 1 of tap k - 1 reads element wo - 1 + (k - 1) / st.
    let plen = wo + (k - 1) / st;
    let mut phases = vec![T::zero(); st * plen];
    // The padded rows hi = i st + u that output rows [i0, i1) read: [i0 st, (i1 - 1) st + k).
    let (h0, h1) = (i0 * st, (i1.max(i0 + 1) - 1) * st + k);
    for cc in 0..s.cg() {
        let ch = g * s.cg() + cc;
        for sn in 0..nb {
            let plane = &x[((n0 + sn) * s.c + ch) * s.h * s.w..][..s.h * s.w];
            let out = |u: usize, v: usize| (cc * k + u) * k + v;
            let at = |i: usize| sn * bw + (i - i0) * wo;
            // Zeros where output row i and tap row u read a padding row.
            for i in i0..i1 {
                for u in 0..k {
                    let hi = i * st + u;
                    if hi < pad || hi >= s.h + pad {
                        for v in 0..k {
                            col[out(u, v) * cols + at(i)..][..wo].fill(T::zero());
                        }
                    }
                }
            }
            // Every input row r (padded row r + pad) read by the block: split once, copied to
            // all its (i, u, v).
            for hi in h0.max(pad)..h1.min(s.h + pad) {
                let src = &plane[(hi - pad) * s.w..][..s.w];
                for (p, ph) in phases.chunks_mut(plen).enumerate() {
                    for (m, e) in ph.iter_mut().enumerate() {
                        // Padded column m st + p is input column m st + p - pad.
                        let q = (m * st + p).wrapping_sub(pad);
                        *e = if q < s.w { src[q] } else { T::zero() };
                    }
                }
                for u in (0..k.min(hi + 1)).filter(|&u| (hi - u) % st == 0) {
                    let i = (hi - u) / st;
                    if i < i0 || i >= i1 {
                        continue;
                    }
                    for v in 0..k {
                        let ph = &phases[(v % st) * plen + v / st..][..wo];
                        col[out(u, v) * cols + at(i)..][..wo].copy_from_slice(ph);
                    }
                }
            }
        }
    }
}

alexnet_tensor::multiversion! {
    /// col2im: adds col (K, nb*(i1-i0)*Wo) of group `g`, output rows `rows` = [i0, i1), back
    /// into `dx` for samples n0..n0+nb (`dx` here is the chunk's slice starting at sample n0).
    fn col2im<T: Float>(
        col: &mut [T],
        s: &ConvShape,
        nb: usize,
        g: usize,
        rows: [usize; 2],
        dx: &mut [T],
    ) {
        let (ho, wo) = (s.ho(), s.wo());
        let [i0, i1] = rows;
        let hw = ho * wo;
        let bw = (i1 - i0) * wo;
        let cols = nb * bw;
        let (k, st, pad) = (s.k, s.stride, s.pad);
        let same = same_plane(s) && rows == [0, ho];
        for cc in 0..s.cg() {
            let ch = g * s.cg() + cc;
            for u in 0..k {
                for v in 0..k {
                    let row = (cc * k + u) * k + v;
                    if same {
                        let srcrow = &mut col[row * cols..(row + 1) * cols];
                        for sn in 0..nb {
                            let plane = &mut dx[(sn * s.c + ch) * hw..][..hw];
                            shifted_add(&mut srcrow[sn * hw..(sn + 1) * hw], plane, s, u, v);
                        }
                        continue;
                    }
                    let srcrow = &col[row * cols..(row + 1) * cols];
                    let (j0, j1) = valid_cols(wo, s.w, st, v, pad);
                    if j0 >= j1 {
                        continue;
                    }
                    let first = j0 * st + v - pad;
                    for sn in 0..nb {
                        let plane = &mut dx[(sn * s.c + ch) * s.h * s.w..][..s.h * s.w];
                        for i in i0..i1 {
                            let hi = i * st + u;
                            if hi < pad || hi >= s.h + pad {
                                continue;
                            }
                            let dst = &mut plane[(hi - pad) * s.w..(hi - pad + 1) * s.w];
                            let src = &srcrow[sn * bw + (i - i0) * wo..][j0..j1];
                            if st == 1 {
                                for (d, &e) in dst[first..first + src.len()].iter_mut().zip(src) {
                                    *d = *d + e;
                                }
                            } else {
                                for (d, &e) in dst[first..].iter_mut().step_by(st).zip(src) {
                                    *d = *d + e;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Makes `scratch` at least `len` long (never shorter: its contents are never read before
/// being written, so a longer one from an earlier layer serves as it is).
pub(crate) fn grow<T: Float>(scratch: &mut Vec<T>, len: usize) {
    if scratch.len() < len {
        scratch.resize(len, T::zero());
    }
}

/// Forward: `y[n,o,i,j] = b[o] + sum w[o,c',u,v] * xpad[n, G*C/g + c', i*s+u, j*s+v]`.
///
/// x: (N,C,H,W), w: (O,C/g,k,k), b: (O), y: (N,O,Ho,Wo).
pub fn conv2d_forward<T: Float>(
    x: &[T],
    w: &[T],
    b: &[T],
    y: &mut [T],
    s: &ConvShape,
) -> Result<(), LayerError> {
    conv2d_forward_act(x, w, b, y, s, false, &mut Vec::new())
}

/// [`conv2d_forward`], with `relu` applying ReLU to the output as it is written (for inference,
/// where the pre-activation output is not needed): the same bits as a separate ReLU pass.
/// `scratch` holds the im2col and GEMM-output buffers; it grows as needed and is best kept
/// between calls (a fresh buffer costs a zero fill or page faults on every call; its contents
/// are never read before being written).
pub fn conv2d_forward_act<T: Float>(
    x: &[T],
    w: &[T],
    b: &[T],
    y: &mut [T],
    s: &ConvShape,
    relu: bool,
    scratch: &mut Vec<T>,
) -> Result<(), LayerError> {
    s.check(x.len(), w.len(), b.len(), y.len())?;
    if crate::winograd::applies(s) {
        return crate::winograd::forward(x, w, b, y, s, relu, scratch);
    }
    im2col_forward(x, w, b, y, s, relu, scratch)
}

/// The im2col + GEMM forward (shapes already checked).
pub(crate) fn im2col_forward<T: Float>(
    x: &[T],
    w: &[T],
    b: &[T],
    y: &mut [T],
    s: &ConvShape,
    relu: bool,
    scratch: &mut Vec<T>,
) -> Result<(), LayerError> {
    let (og, kd, hw) = (s.og(), s.kdim(), s.ho() * s.wo());
    let chunk = s.chunk();
    let per_part = s.n.div_ceil(chunk).div_ceil(GRAD_PARTS).max(1) * chunk;
    // Parts of consecutive chunks, each with its own slice of the scratch: im2col then GEMM
    // output.
    let (col_len, out_len) = s.part_scratch();
    let part_len = col_len + out_len;
    grow(scratch, s.n.div_ceil(per_part) * part_len);
    y.par_chunks_mut(per_part * s.o * hw)
        .zip(scratch.par_chunks_mut(part_len))
        .enumerate()
        .try_for_each(|(pi, (yp, sp))| {
            let (col, out) = sp.split_at_mut(col_len);
            for (ci, yc) in yp.chunks_mut(chunk * s.o * hw).enumerate() {
                let n0 = pi * per_part + ci * chunk;
                let nb = yc.len() / (s.o * hw);
                let col = &mut col[..kd * nb * hw];
                for g in 0..s.groups {
                    let wg = &w[g * og * kd..][..og * kd];
                    if nb == 1 {
                        // One sample: the GEMM's (O/g, HW) output is this group's slice of y,
                        // computed in blocks of output rows (columns of y, rows hw apart).
                        let yg = &mut yc[g * og * hw..][..og * hw];
                        for (oo, row) in yg.chunks_mut(hw).enumerate() {
                            row.fill(b[g * og + oo]);
                        }
                        for [i0, i1] in s.row_blocks(nb) {
                            let bw = (i1 - i0) * s.wo();
                            let col = &mut col[..kd * bw];
                            im2col(x, s, n0, nb, g, [i0, i1], col);
                            let yb = &mut yg[i0 * s.wo()..];
                            gemm_ld(
                                false,
                                false,
                                og,
                                bw,
                                kd,
                                T::one(),
                                wg,
                                kd,
                                col,
                                bw,
                                T::one(),
                                yb,
                                hw,
                            )?;
                        }
                        if relu {
                            relu_in_place(yg);
                        }
                        continue;
                    }
                    im2col(x, s, n0, nb, g, [0, s.ho()], col);
                    let out = &mut out[..og * nb * hw];
                    // out (O/g, nb*HW) = w_g (O/g, K) x col (K, nb*HW)
                    gemm(
                        false,
                        false,
                        og,
                        nb * hw,
                        kd,
                        T::one(),
                        wg,
                        col,
                        T::zero(),
                        out,
                    )?;
                    let bg = &b[g * og..(g + 1) * og];
                    scatter_bias(out, yc, bg, [nb, s.o, g * og, hw], relu);
                }
            }
            Ok::<(), LayerError>(())
        })
}

alexnet_tensor::multiversion! {
    /// out (O/g, nb*HW), one group's GEMM output -> its channels of y (nb, O, HW) plus the
    /// bias `bg` (O/g), then ReLU if `relu`; `dims` = [nb, O, first channel of the group, HW].
    fn scatter_bias<T: Float>(out: &[T], y: &mut [T], bg: &[T], dims: [usize; 4], relu: bool) {
        let [nb, o, g0, hw] = dims;
        for (oo, &bias) in bg.iter().enumerate() {
            for sn in 0..nb {
                let dst = &mut y[(sn * o + g0 + oo) * hw..][..hw];
                let src = &out[(oo * nb + sn) * hw..][..hw];
                if relu {
                    for (d, &v) in dst.iter_mut().zip(src) {
                        let e = v + bias;
                        // As relu_forward: max(e, 0) with NaN and -0 mapped to +0.
                        *d = if e > T::zero() { e } else { T::zero() };
                    }
                } else {
                    for (d, &v) in dst.iter_mut().zip(src) {
                        *d = v + bias;
                    }
                }
            }
        }
    }
}

alexnet_tensor::multiversion! {
    /// ReLU in place, as relu_forward computes it.
    fn relu_in_place<T: Float>(y: &mut [T]) {
        for e in y.iter_mut() {
            *e = if *e > T::zero() { *e } else { T::zero() };
        }
    }
}

alexnet_tensor::multiversion! {
    /// dy (nb, O, HW) -> dyg (O/g, nb*HW), one group's output gradient with the samples side by
    /// side (not copied for nb = 1, where dy's slice is used as it is), and adds each row's
    /// sum to `pdbg` (O/g); `dims` = [nb, O, first channel of the group, HW].
    fn gather_dy<T: Float>(dy: &[T], dyg: &mut [T], pdbg: &mut [T], dims: [usize; 4]) {
        let [nb, o, g0, hw] = dims;
        for (oo, db) in pdbg.iter_mut().enumerate() {
            for sn in 0..nb {
                let src = &dy[(sn * o + g0 + oo) * hw..][..hw];
                if nb > 1 {
                    dyg[(oo * nb + sn) * hw..][..hw].copy_from_slice(src);
                }
                *db = *db + lane_sum(src);
            }
        }
    }
}

/// The sum of `v` as 16 interleaved partial sums (lane i adds elements i, i + 16, ...), then
/// added pairwise: a fixed order, so the same bits every run, and 16 independent additions per
/// step instead of one dependency chain (a plain fold cannot be vectorised: float addition is
/// not associative).
#[inline(always)]
pub(crate) fn lane_sum<T: Float>(v: &[T]) -> T {
    let mut acc = [T::zero(); 16];
    let mut chunks = v.chunks_exact(16);
    for c in &mut chunks {
        for (a, &e) in acc.iter_mut().zip(c) {
            *a = *a + e;
        }
    }
    for (a, &e) in acc.iter_mut().zip(chunks.remainder()) {
        *a = *a + e;
    }
    let mut width = 16;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            acc[i] = acc[i] + acc[i + width];
        }
    }
    acc[0]
}

/// Backward: given dy (N,O,Ho,Wo), writes dx (N,C,H,W), dw (O,C/g,k,k) and db (O)
/// (all overwritten, not accumulated).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward<T: Float>(
    x: &[T],
    w: &[T],
    dy: &[T],
    dx: &mut [T],
    dw: &mut [T],
    db: &mut [T],
    s: &ConvShape,
) -> Result<(), LayerError> {
    check_len("conv2d", "dx", dx.len(), x.len(), || s.desc())?;
    conv2d_backward_opt(x, w, dy, Some(dx), dw, db, s, &mut Vec::new(), false)
}

/// [`conv2d_backward`] with an optional dx: the first layer needs no input gradient, which
/// saves a GEMM and the col2im. `scratch` as for [`conv2d_forward_act`]. With `relu_x`, dx is
/// also put through the backward of the ReLU whose output x is (`dx = 0` where `x <= 0`),
/// chunk by chunk while it is in cache: the same bits as a separate pass.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward_opt<T: Float>(
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
    s.check(x.len(), w.len(), db.len(), dy.len())?;
    if let Some(dx) = &dx {
        check_len("conv2d", "dx", dx.len(), x.len(), || s.desc())?;
    }
    check_len("conv2d", "dw", dw.len(), w.len(), || s.desc())?;
    if crate::winograd::applies(s) {
        return crate::winograd::backward(x, w, dy, dx, dw, db, s, scratch, relu_x);
    }
    im2col_backward(x, w, dy, dx, dw, db, s, scratch, relu_x)
}

/// The im2col + GEMM backward (shapes already checked).
#[allow(clippy::too_many_arguments)]
pub(crate) fn im2col_backward<T: Float>(
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
    let (og, kd, hw) = (s.og(), s.kdim(), s.ho() * s.wo());
    let chunk = s.chunk();
    let nchunks = s.n.div_ceil(chunk);
    let per_part = nchunks.div_ceil(GRAD_PARTS).max(1);
    let sample = s.c * s.h * s.w;
    // Each part owns a contiguous run of chunks: its dx slice and its own dw/db partials.
    let part_samples = per_part * chunk;
    let nparts = s.n.div_ceil(part_samples);
    let dx_parts: Vec<Option<&mut [T]>> = match dx {
        Some(dx) => dx.chunks_mut(part_samples * sample).map(Some).collect(),
        None => (0..nparts).map(|_| None).collect(),
    };
    // Per part: im2col / dcol, then the gathered dy.
    let (col_len, dyg_len) = s.part_scratch();
    let part_len = col_len + dyg_len;
    grow(scratch, nparts * part_len);
    let parts: Vec<(Vec<T>, Vec<T>)> = dx_parts
        .into_par_iter()
        .zip(scratch.par_chunks_mut(part_len))
        .enumerate()
        .map(|(pi, (mut dxp, sp))| {
            // This part's dw, stored per group transposed, (K, O/g): the GEMM below is 1.3-2x
            // faster writing dw^T = col x dyg^T than dw = dyg x col^T (gemm crate, AVX-512).
            let mut pdw = vec![T::zero(); w.len()];
            let mut pdb = vec![T::zero(); s.o];
            let (col, dyg) = sp.split_at_mut(col_len);
            if let Some(d) = dxp.as_deref_mut() {
                d.fill(T::zero());
            }
            let p0 = pi * part_samples;
            let p1 = (p0 + part_samples).min(s.n);
            for (cj, n0) in (p0..p1).step_by(chunk).enumerate() {
                let nb = chunk.min(p1 - n0);
                let cols = nb * hw;
                for g in 0..s.groups {
                    // dyg (O/g, nb*HW): this group's output gradient, samples side by side
                    // (for one sample, that is a slice of dy as it is).
                    let dyc = &dy[n0 * s.o * hw..(n0 + nb) * s.o * hw];
                    let pdbg = &mut pdb[g * og..(g + 1) * og];
                    gather_dy(dyc, dyg, pdbg, [nb, s.o, g * og, hw]);
                    let dyg: &[T] = if nb == 1 {
                        &dy[(n0 * s.o + g * og) * hw..][..og * hw]
                    } else {
                        &dyg[..og * cols]
                    };
                    // One-sample chunks go by blocks of output rows (dyg's columns, rows
                    // hw apart), others as a whole; ldy is dyg's row length either way.
                    let ldy = if nb == 1 { hw } else { cols };
                    for [i0, i1] in s.row_blocks(nb) {
                        let bw = nb * (i1 - i0) * s.wo();
                        let col = &mut col[..kd * bw];
                        let dyb = &dyg[i0 * s.wo()..];
                        im2col(x, s, n0, nb, g, [i0, i1], col);
                        // dw_g^T (K, O/g) += col (K, bw) x dyb^T (bw, O/g)
                        let pdwg = &mut pdw[g * og * kd..][..og * kd];
                        gemm_ld(
                            false,
                            true,
                            kd,
                            og,
                            bw,
                            T::one(),
                            col,
                            bw,
                            dyb,
                            ldy,
                            T::one(),
                            pdwg,
                            og,
                        )?;
                        let Some(dxp) = dxp.as_deref_mut() else {
                            continue;
                        };
                        let dxc = &mut dxp[cj * chunk * sample..][..nb * sample];
                        // dcol (K, bw) = w_g^T (K, O/g) x dyb (O/g, bw)
                        let wg = &w[g * og * kd..][..og * kd];
                        gemm_ld(
                            true,
                            false,
                            kd,
                            bw,
                            og,
                            T::one(),
                            wg,
                            kd,
                            dyb,
                            ldy,
                            T::zero(),
                            col,
                            bw,
                        )?;
                        col2im(col, s, nb, g, [i0, i1], dxc);
                    }
                }
                if let (true, Some(dxp)) = (relu_x, dxp.as_deref_mut()) {
                    // The chunk's dx is complete (every group added) and still in cache.
                    let dxc = &mut dxp[cj * chunk * sample..][..nb * sample];
                    relu_mask(&x[n0 * sample..(n0 + nb) * sample], dxc);
                }
            }
            Ok((pdw, pdb))
        })
        .collect::<Result<_, LayerError>>()?;
    dw.iter_mut().for_each(|e| *e = T::zero());
    db.iter_mut().for_each(|e| *e = T::zero());
    for (pdw, pdb) in &parts {
        for (dwg, pg) in dw.chunks_mut(og * kd).zip(pdw.chunks(og * kd)) {
            for (o, row) in dwg.chunks_mut(kd).enumerate() {
                for (r, a) in row.iter_mut().enumerate() {
                    *a = *a + pg[r * og + o];
                }
            }
        }
        db.iter_mut().zip(pdb).for_each(|(a, &b)| *a = *a + b);
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// im2col by its definition: col[(c', u, v), (sample, i, j)] = xpad[sample, g C/g + c',
    /// i s + u, j s + v].
    fn im2col_direct(x: &[f64], s: &ConvShape, n0: usize, nb: usize, g: usize) -> Vec<f64> {
        let (ho, wo, k) = (s.ho(), s.wo(), s.k);
        let mut col = vec![];
        for cc in 0..s.cg() {
            for u in 0..k {
                for v in 0..k {
                    for sn in 0..nb {
                        for i in 0..ho {
                            for j in 0..wo {
                                let (hi, wi) = (i * s.stride + u, j * s.stride + v);
                                let inside = hi >= s.pad
                                    && hi < s.h + s.pad
                                    && wi >= s.pad
                                    && wi < s.w + s.pad;
                                let ch = g * s.cg() + cc;
                                col.push(if inside {
                                    x[(((n0 + sn) * s.c + ch) * s.h + hi - s.pad) * s.w + wi
                                        - s.pad]
                                } else {
                                    0.0
                                });
                            }
                        }
                    }
                }
            }
        }
        col
    }

    #[test]
    fn im2col_and_col2im_match_the_definition_and_are_adjoint() {
        // "Same" stride-1 shapes (the whole-plane shifted copy), including non-square planes,
        // k = 1 and planes smaller than the kernel, and two shapes of the row-by-row path.
        let shapes = [
            (5, 7, 3, 1, 1),
            (6, 4, 5, 2, 1),
            (3, 3, 7, 3, 1),
            (4, 5, 1, 0, 1),
            (2, 9, 5, 2, 1),
            (7, 6, 3, 0, 1),
            (9, 8, 3, 1, 2),
            // Strided shapes (phase-split rows): conv1-like k11 s4 p2, k < stride, k = stride,
            // and sizes where the last window does not reach the padded edge.
            (23, 21, 11, 2, 4),
            (12, 13, 5, 1, 3),
            (8, 8, 3, 0, 2),
            (9, 10, 1, 0, 2),
            (10, 11, 2, 1, 3),
            (7, 9, 2, 0, 2),
        ];
        for &(h, w, k, pad, stride) in &shapes {
            let s = ConvShape {
                n: 3,
                c: 4,
                h,
                w,
                o: 2,
                k,
                stride,
                pad,
                groups: 2,
            };
            let x: Vec<f64> = (0..s.n * s.c * h * w)
                .map(|i| (i as f64 * 0.37).sin())
                .collect();
            let (n0, nb, g) = (1, 2, 1);
            let rows = s.kdim() * nb * s.ho() * s.wo();
            let mut col = vec![f64::NAN; rows];
            im2col(&x, &s, n0, nb, g, [0, s.ho()], &mut col);
            let want = im2col_direct(&x, &s, n0, nb, g);
            assert_eq!(col, want, "im2col {h}x{w} k{k} p{pad} s{stride}");
            // <im2col(x), c> == <x, col2im(c)> for the chunk's samples.
            let c: Vec<f64> = (0..rows).map(|i| (i as f64 * 0.71).cos()).collect();
            let mut dx = vec![0.0; nb * s.c * h * w];
            col2im(&mut c.clone(), &s, nb, g, [0, s.ho()], &mut dx);
            let lhs: f64 = col.iter().zip(&c).map(|(a, b)| a * b).sum();
            let xs = &x[n0 * s.c * h * w..(n0 + nb) * s.c * h * w];
            let rhs: f64 = xs.iter().zip(&dx).map(|(a, b)| a * b).sum();
            assert!(
                (lhs - rhs).abs() < 1e-9 * lhs.abs().max(1.0),
                "col2im {h}x{w} k{k}"
            );
            assert!(dx.iter().any(|&v| v != 0.0));
            // Blocks of output rows: the matching columns of the whole matrix, and col2im of
            // the blocks adds up to col2im of the whole.
            let (ho, wo, kd) = (s.ho(), s.wo(), s.kdim());
            let mut dxb = vec![0.0; nb * s.c * h * w];
            let blocks = [
                [0, 1],
                [1, ho.min(3)],
                [ho.min(3), ho],
                [ho / 2, ho / 2 + 1],
            ];
            for (bi, [i0, i1]) in blocks.into_iter().enumerate() {
                let bw = (i1 - i0) * wo;
                let mut blk = vec![f64::NAN; kd * nb * bw];
                im2col(&x, &s, n0, nb, g, [i0, i1], &mut blk);
                let mut cb = vec![0.0; blk.len()];
                for r in 0..kd {
                    for sn in 0..nb {
                        let whole = r * nb * ho * wo + sn * ho * wo + i0 * wo;
                        let part = (r * nb + sn) * bw;
                        assert_eq!(blk[part..][..bw], want[whole..][..bw], "rows {i0}..{i1}");
                        cb[part..][..bw].copy_from_slice(&c[whole..][..bw]);
                    }
                }
                if bi == 3 {
                    continue; // a repeat of a row above: not part of the partition
                }
                col2im(&mut cb, &s, nb, g, [i0, i1], &mut dxb);
            }
            for (a, b) in dx.iter().zip(&dxb) {
                assert!(
                    (a - b).abs() < 1e-12,
                    "col2im by blocks {h}x{w} k{k} s{stride}"
                );
            }
        }
    }

    /// Convolution by its definition in f64: y (N, O, Ho, Wo), and for `dy` the gradients
    /// (dx, dw, db).
    #[allow(clippy::type_complexity)]
    pub(crate) fn conv_direct(
        x: &[f64],
        w: &[f64],
        b: &[f64],
        dy: &[f64],
        s: &ConvShape,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (ho, wo, cg, og, k) = (s.ho(), s.wo(), s.cg(), s.og(), s.k);
        let mut y = vec![0.0; s.n * s.o * ho * wo];
        let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; s.o]);
        for n in 0..s.n {
            for o in 0..s.o {
                let g = o / og;
                for i in 0..ho {
                    for j in 0..wo {
                        let yi = ((n * s.o + o) * ho + i) * wo + j;
                        let mut acc = b[o];
                        db[o] += dy[yi];
                        for cc in 0..cg {
                            for u in 0..k {
                                for v in 0..k {
                                    let (hi, wi) = (i * s.stride + u, j * s.stride + v);
                                    if hi < s.pad || wi < s.pad {
                                        continue;
                                    }
                                    let (hi, wi) = (hi - s.pad, wi - s.pad);
                                    if hi >= s.h || wi >= s.w {
                                        continue;
                                    }
                                    let xi = ((n * s.c + g * cg + cc) * s.h + hi) * s.w + wi;
                                    let wi = ((o * cg + cc) * k + u) * k + v;
                                    acc += w[wi] * x[xi];
                                    dw[wi] += dy[yi] * x[xi];
                                    dx[xi] += dy[yi] * w[wi];
                                }
                            }
                        }
                        y[yi] = acc;
                    }
                }
            }
        }
        (y, dx, dw, db)
    }

    #[test]
    fn lane_sum_adds_every_element_once() {
        // Lengths around the 16-lane width; powers of two are exact in f32, so any element
        // missed or added twice shows.
        for len in [0, 1, 15, 16, 17, 33, 100] {
            let v: Vec<f32> = (0..len).map(|i| (1u32 << (i % 20)) as f32).collect();
            let want: f64 = v.iter().map(|&e| e as f64).sum();
            assert_eq!(lane_sum(&v) as f64, want, "len {len}");
        }
    }

    #[test]
    fn one_sample_chunks_in_row_blocks_match_the_definition() {
        // Planes above CHUNK_COLUMNS outputs go one sample at a time, in blocks of output rows
        // (several here): conv1-like stride 4 (phase-split im2col), and stride 1 "same" (the
        // row-by-row im2col and col2im, as the whole-plane copy needs the whole plane).
        for (h, k, stride, pad, c, groups) in [(190, 11, 4, 2, 3, 1), (64, 5, 1, 2, 4, 2)] {
            let s = ConvShape {
                n: 2,
                c,
                h,
                w: h - 3,
                o: 4,
                k,
                stride,
                pad,
                groups,
            };
            assert_eq!(s.chunk(), 1);
            assert!(s.row_blocks(1).count() > 1, "{}", s.desc());
            let r = |len: usize, f: f64| -> Vec<f64> {
                (0..len).map(|i| (i as f64 * f).sin()).collect()
            };
            let x = r(s.n * s.c * s.h * s.w, 0.37);
            let w = r(s.o * s.kdim(), 0.11);
            let b = r(s.o, 1.3);
            let dy = r(s.n * s.o * s.ho() * s.wo(), 0.53);
            let (y_want, dx_want, dw_want, db_want) = conv_direct(&x, &w, &b, &dy, &s);
            let mut y = vec![f64::NAN; y_want.len()];
            conv2d_forward_act(&x, &w, &b, &mut y, &s, false, &mut Vec::new()).unwrap();
            let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; 4]);
            let mut scratch = Vec::new();
            conv2d_backward_opt(
                &x,
                &w,
                &dy,
                Some(&mut dx),
                &mut dw,
                &mut db,
                &s,
                &mut scratch,
                false,
            )
            .unwrap();
            for (what, got, want) in [
                ("y", &y, &y_want),
                ("dx", &dx, &dx_want),
                ("dw", &dw, &dw_want),
                ("db", &db, &db_want),
            ] {
                let err = got
                    .iter()
                    .zip(want.iter())
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max);
                assert!(err < 1e-10, "{what} {}: max error {err}", s.desc());
            }
        }
    }

    /// A grouped (2) convolution of 4 -> 6 channels on n samples of h x h, with smooth
    /// pseudo-random x and w and a fixed bias.
    fn case(n: usize, h: usize, k: usize, stride: usize, pad: usize) -> Case {
        let s = ConvShape {
            n,
            c: 4,
            h,
            w: h,
            o: 6,
            k,
            stride,
            pad,
            groups: 2,
        };
        let x = (0..n * s.c * h * h)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let w = (0..s.o * 2 * k * k)
            .map(|i| (i as f32 * 0.11).cos())
            .collect();
        (s, x, w, [0.1, -0.2, 0.0, 0.3, -0.1, 0.05])
    }
    type Case = (ConvShape, Vec<f32>, Vec<f32>, [f32; 6]);

    #[test]
    fn fused_relu_matches_a_separate_relu_pass() {
        // 50x50 outputs: one sample per chunk (the GEMM writes y directly); 6x6: several.
        for (h, k, pad) in [(50, 3, 1), (6, 3, 1)] {
            let (s, x, w, b) = case(3, h, k, 1, pad);
            let len = s.n * s.o * s.ho() * s.wo();
            let (mut y, mut yr) = (vec![0.0; len], vec![0.0; len]);
            conv2d_forward(&x, &w, &b, &mut y, &s).unwrap();
            conv2d_forward_act(&x, &w, &b, &mut yr, &s, true, &mut Vec::new()).unwrap();
            let want: Vec<f32> = y.iter().map(|&v| if v > 0.0 { v } else { 0.0 }).collect();
            assert_eq!(yr, want, "{h}x{h}");
            assert!(y.iter().any(|&v| v < 0.0) && yr.iter().any(|&v| v > 0.0));
        }
    }

    #[test]
    fn a_reused_scratch_with_stale_contents_gives_the_same_bits_as_a_fresh_one() {
        // One-sample chunks over several parts (50x50 planes), multi-sample chunks with a
        // short last chunk (20x20, 23 samples), and a strided shape.
        for (n, h, k, stride, pad) in [(10, 50, 3, 1, 1), (23, 20, 5, 1, 2), (9, 23, 4, 2, 1)] {
            let (s, x, w, b) = case(n, h, k, stride, pad);
            let ylen = n * s.o * s.ho() * s.wo();
            let dy: Vec<f32> = (0..ylen).map(|i| (i as f32 * 0.53).cos()).collect();
            let run = |scratch: &mut Vec<f32>| {
                let mut y = vec![0.0; ylen];
                conv2d_forward_act(&x, &w, &b, &mut y, &s, false, scratch).unwrap();
                let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; w.len()], [0.0; 6]);
                let dxo = Some(&mut dx[..]);
                conv2d_backward_opt(&x, &w, &dy, dxo, &mut dw, &mut db, &s, scratch, false)
                    .unwrap();
                [y, dx, dw, db.to_vec()].map(|v| v.iter().map(|e| e.to_bits()).collect::<Vec<_>>())
            };
            let fresh = run(&mut Vec::new());
            let mut stale = vec![f32::NAN; 1 << 20];
            assert_eq!(run(&mut stale), fresh, "{n}x{h}x{h} k{k} s{stride}");
            assert_eq!(
                stale.len(),
                1 << 20,
                "a large enough scratch is not reallocated"
            );
            assert!(fresh
                .iter()
                .all(|v| v.iter().all(|&e| f32::from_bits(e).is_finite())));
        }
    }
}
