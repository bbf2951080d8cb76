//! Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions (the paper's conv3-5): each 2x2 block
//! of outputs costs 16 products per (input, output) channel pair instead of 36, so the GEMMs
//! do 2.25x fewer multiply-adds than im2col's (1.9x on 13x13 planes, whose 7x7 tiles cover
//! 14x14). Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016).
//!
//! With g the 3x3 filter, d a 4x4 input patch (tiles 2 apart) and the transforms
//!
//! ```text
//!       [1  0 -1  0]        [ 1    0    0 ]        [1  1  1  0]
//! B^T = [0  1  1  0]    G = [1/2  1/2  1/2]  A^T = [0  1 -1 -1]
//!       [0 -1  1  0]        [1/2 -1/2  1/2]
//!       [0  1  0 -1]        [ 0    0    1 ]
//! ```
//!
//! the forward is `Y = A^T [sum_c (G g G^T) . (B^T d B)] A` (`.` elementwise): with
//! `U = G g G^T` and `V = B^T d B`, one GEMM per element xi of the 4x4 grid,
//! `M[xi] = V[xi] U[xi]^T` (tiles x channels). The backward is the exact transpose of that
//! computation: `dM = A dY A^T`, `dU[xi]^T = V[xi]^T dM[xi]` (then `dg = G^T dU G`) and
//! `dV[xi] = dM[xi] U[xi]` (then `dd = B dV B^T`, added into the overlapping patches). The
//! transforms are additions and halvings, so results agree with im2col's to a few ulp of the
//! sums (tests: the f64 definition at 1e-12, f32 at the same relative error as im2col).
//!
//! Layouts, channels last so that every transform is a vector operation over channels:
//! U and dU^T `[g][xi][c'][o']`, V and dV `[xi][p][c']`, M and dM `[xi][p][o']`, with a
//! chunk's tile index `p = (sample, ti, tj)`; the input (and its gradient) is copied into a
//! zero-padded channels-last plane `[sample][row][col][c']` of (2 th + 2) x (2 tw + 2).

use crate::conv::{grow, lane_sum, ConvShape};
use crate::error::LayerError;
use crate::relu::relu_mask;
use alexnet_tensor::gemm::{gemm_ld, Float};
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

/// Target number of tiles per chunk (the GEMMs' row count P).
const TILES_PER_CHUNK: usize = 256;
/// Number of parts the batch is split into (fixed, for determinism).
const PARTS: usize = 8;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the Winograd path for 3x3 stride-1 convolutions on (the default) or off
/// (process-wide; off means im2col + GEMM for every convolution, as `--cpu-conv im2col`).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether [`set_enabled`] left the Winograd path on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether a convolution of shape `s` runs through this module.
pub(crate) fn applies(s: &ConvShape) -> bool {
    s.k == 3 && s.stride == 1 && enabled()
}

/// Tile geometry of one shape.
#[derive(Clone, Copy)]
struct Geo {
    /// Tiles per column and per row of the output plane.
    th: usize,
    tw: usize,
    /// Rows and columns of the padded plane (2 th + 2, 2 tw + 2).
    ph: usize,
    pw: usize,
    /// Samples per chunk.
    chunk: usize,
}

impl Geo {
    fn new(s: &ConvShape) -> Self {
        let (th, tw) = (s.ho().div_ceil(2), s.wo().div_ceil(2));
        let chunk = (TILES_PER_CHUNK / (th * tw)).clamp(1, s.n.max(1));
        Geo {
            th,
            tw,
            ph: 2 * th + 2,
            pw: 2 * tw + 2,
            chunk,
        }
    }
    fn tiles(&self) -> usize {
        self.th * self.tw
    }
    /// Scratch of one part: V / dV (16, P, C/g), M / dM (16, P, O/g), the padded plane.
    fn part_len(&self, s: &ConvShape) -> usize {
        let p = self.chunk * self.tiles();
        16 * (s.cg() + s.og()) * p + self.chunk * self.ph * self.pw * s.cg()
    }
    /// Samples per part, a whole number of chunks.
    fn per_part(&self, s: &ConvShape) -> usize {
        s.n.div_ceil(self.chunk).div_ceil(PARTS).max(1) * self.chunk
    }
}

fn half<T: Float>() -> T {
    T::one() / (T::one() + T::one())
}

// Vector operations over one channel row (all slices the same length): the closures inline,
// and each loop vectorises over channels.

/// o[k] = f(a[k], b[k])
#[inline(always)]
fn map2<T: Float>(o: &mut [T], a: &[T], b: &[T], f: impl Fn(T, T) -> T) {
    for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
        *o = f(a, b);
    }
}
/// o[k] = f(a[k], b[k], c[k])
#[inline(always)]
fn map3<T: Float>(o: &mut [T], a: &[T], b: &[T], c: &[T], f: impl Fn(T, T, T) -> T) {
    for (((o, &a), &b), &c) in o.iter_mut().zip(a).zip(b).zip(c) {
        *o = f(a, b, c);
    }
}
/// o = a - b
#[inline(always)]
fn sub<T: Float>(o: &mut [T], a: &[T], b: &[T]) {
    map2(o, a, b, |a, b| a - b);
}
/// o = a + b
#[inline(always)]
fn add<T: Float>(o: &mut [T], a: &[T], b: &[T]) {
    map2(o, a, b, |a, b| a + b);
}
/// o = a + b + c
#[inline(always)]
fn add3<T: Float>(o: &mut [T], a: &[T], b: &[T], c: &[T]) {
    map3(o, a, b, c, |a, b, c| a + b + c);
}
/// o = a - b - c
#[inline(always)]
fn sub2<T: Float>(o: &mut [T], a: &[T], b: &[T], c: &[T]) {
    map3(o, a, b, c, |a, b, c| a - b - c);
}
/// o = a - b + c
#[inline(always)]
fn sub_add<T: Float>(o: &mut [T], a: &[T], b: &[T], c: &[T]) {
    map3(o, a, b, c, |a, b, c| a - b + c);
}
/// o = a + b - c
#[inline(always)]
fn add_sub<T: Float>(o: &mut [T], a: &[T], b: &[T], c: &[T]) {
    map3(o, a, b, c, |a, b, c| a + b - c);
}
/// o[k] += f(a[k], b[k], c[k])
#[inline(always)]
fn acc3<T: Float>(o: &mut [T], a: &[T], b: &[T], c: &[T], f: impl Fn(T, T, T) -> T) {
    for (((o, &a), &b), &c) in o.iter_mut().zip(a).zip(b).zip(c) {
        *o = *o + f(a, b, c);
    }
}
/// o += a
#[inline(always)]
fn acc<T: Float>(o: &mut [T], a: &[T]) {
    o.iter_mut().zip(a).for_each(|(o, &a)| *o = *o + a);
}
/// o -= a
#[inline(always)]
fn dec<T: Float>(o: &mut [T], a: &[T]) {
    o.iter_mut().zip(a).for_each(|(o, &a)| *o = *o - a);
}

/// Rows `[0, n)` of length `len` of `buf` as separate slices.
#[inline(always)]
fn rows<T>(buf: &mut [T], len: usize) -> std::slice::ChunksExactMut<'_, T> {
    buf.chunks_exact_mut(len)
}

alexnet_tensor::multiversion! {
    /// U = G g G^T for every filter: w (O, C/g, 3, 3) -> u `[g][xi][c'][o']` (one group: `w`
    /// and `u` are the group's parts).
    fn filter_transform<T: Float>(w: &[T], cg: usize, og: usize, u: &mut [T]) {
        let mut f = vec![T::zero(); 9 * og];
        let mut t = vec![T::zero(); 12 * og];
        for cc in 0..cg {
            // f[uv][o'] = w[o', cc, u, v]
            for (oo, wf) in w.chunks_exact(9 * cg).enumerate() {
                for (uv, &e) in wf[9 * cc..9 * cc + 9].iter().enumerate() {
                    f[uv * og + oo] = e;
                }
            }
            let fr = |uv: usize| &f[uv * og..(uv + 1) * og];
            // t = G f: t[a][v] for column v of f.
            for v in 0..3 {
                let mut tr = t.chunks_exact_mut(og).skip(v).step_by(3);
                g_rows(std::array::from_fn(|_| tr.next().unwrap_or_default()), [fr(v), fr(3 + v), fr(6 + v)]);
            }
            // U = t G^T: row a of t -> U[a][b], rows (a 4 + b, cc) of u.
            for a in 0..4 {
                let tr = |v: usize| &t[(a * 3 + v) * og..][..og];
                let mut ur = u.chunks_exact_mut(og).skip(a * 4 * cg + cc).step_by(cg);
                g_rows(std::array::from_fn(|_| ur.next().unwrap_or_default()), [tr(0), tr(1), tr(2)]);
            }
        }
    }
}

/// G x for three rows x: `[x0, (x0 + x1 + x2) / 2, (x0 - x1 + x2) / 2, x2]`.
#[inline(always)]
fn g_rows<T: Float>(out: [&mut [T]; 4], x: [&[T]; 3]) {
    let h = half::<T>();
    let [o0, o1, o2, o3] = out;
    o0.copy_from_slice(x[0]);
    map3(o1, x[0], x[1], x[2], |a, b, c| (a + b + c) * h);
    map3(o2, x[0], x[1], x[2], |a, b, c| (a - b + c) * h);
    o3.copy_from_slice(x[2]);
}

alexnet_tensor::multiversion! {
    /// dg = G^T dU G: one group's accumulated dU^T `[xi][c'][o']` -> its dw (O/g, C/g, 3, 3).
    fn filter_gradient<T: Float>(dut: &[T], cg: usize, og: usize, dw: &mut [T]) {
        let h = half::<T>();
        let mut t = vec![T::zero(); 12 * og];
        let mut r = vec![T::zero(); 9 * og];
        for cc in 0..cg {
            let d = |xi: usize| &dut[(xi * cg + cc) * og..][..og];
            // t = G^T dU (3 x 4 rows of og): [d0 + (d1 + d2)/2, (d1 - d2)/2, (d1 + d2)/2 + d3].
            for b in 0..4 {
                let (d0, d1, d2, d3) = (d(b), d(4 + b), d(8 + b), d(12 + b));
                for k in 0..og {
                    let (p, m) = ((d1[k] + d2[k]) * h, (d1[k] - d2[k]) * h);
                    t[b * og + k] = d0[k] + p;
                    t[(4 + b) * og + k] = m;
                    t[(8 + b) * og + k] = p + d3[k];
                }
            }
            // dg = t G (3 x 3 rows of og).
            for uu in 0..3 {
                let tr = |b: usize| &t[(uu * 4 + b) * og..][..og];
                let (t0, t1, t2, t3) = (tr(0), tr(1), tr(2), tr(3));
                for k in 0..og {
                    let (p, m) = ((t1[k] + t2[k]) * h, (t1[k] - t2[k]) * h);
                    r[(uu * 3) * og + k] = t0[k] + p;
                    r[(uu * 3 + 1) * og + k] = m;
                    r[(uu * 3 + 2) * og + k] = p + t3[k];
                }
            }
            for (oo, wf) in dw.chunks_exact_mut(9 * cg).enumerate() {
                for (uv, e) in wf[9 * cc..9 * cc + 9].iter_mut().enumerate() {
                    *e = r[uv * og + oo];
                }
            }
        }
    }
}

alexnet_tensor::multiversion! {
    /// Channels of group g of samples n0..n0+nb (`which` = [n0, nb, g]) -> the zero-padded
    /// channels-last planes `xp` [sample][row][col][c'].
    fn pad_channels_last<T: Float>(x: &[T], s: &ConvShape, geo: &Geo, which: [usize; 3], xp: &mut [T]) {
        let [n0, nb, g] = which;
        let cg = s.cg();
        let xp = &mut xp[..nb * geo.ph * geo.pw * cg];
        xp.fill(T::zero());
        for sn in 0..nb {
            let dst = &mut xp[sn * geo.ph * geo.pw * cg..][..geo.ph * geo.pw * cg];
            let src = &x[((n0 + sn) * s.c + g * cg) * s.h * s.w..][..cg * s.h * s.w];
            // Pixel by pixel: one contiguous row of channels written from a strided gather
            // (strided stores, one cache line each, cost more).
            for r in 0..s.h {
                for c in 0..s.w {
                    let at = ((r + s.pad) * geo.pw + c + s.pad) * cg;
                    let px = &src[r * s.w + c..];
                    for (e, &v) in dst[at..at + cg].iter_mut().zip(px.iter().step_by(s.h * s.w)) {
                        *e = v;
                    }
                }
            }
        }
    }
}

alexnet_tensor::multiversion! {
    /// V = B^T d B for every tile of `nb` padded samples `xp`: v `[xi][p][c']`.
    fn input_transform<T: Float>(xp: &[T], cg: usize, geo: &Geo, nb: usize, t: &mut [T], v: &mut [T]) {
        let p_len = nb * geo.tiles();
        let t = &mut t[..16 * cg];
        for sn in 0..nb {
            for ti in 0..geo.th {
                for tj in 0..geo.tw {
                    let p = (sn * geo.th + ti) * geo.tw + tj;
                    let d = |r: usize, c: usize| {
                        &xp[((sn * geo.ph + 2 * ti + r) * geo.pw + 2 * tj + c) * cg..][..cg]
                    };
                    // Rows: t[r][b] = (d B)[r][b].
                    {
                        let mut tr = rows(t, cg);
                        for r in 0..4 {
                            let (Some(t0), Some(t1), Some(t2), Some(t3)) =
                                (tr.next(), tr.next(), tr.next(), tr.next())
                            else {
                                break;
                            };
                            sub(t0, d(r, 0), d(r, 2));
                            add(t1, d(r, 1), d(r, 2));
                            sub(t2, d(r, 2), d(r, 1));
                            sub(t3, d(r, 1), d(r, 3));
                        }
                    }
                    // Columns: V[a][b] = (B^T t)[a][b].
                    for b in 0..4 {
                        let tr = |r: usize| &t[(r * 4 + b) * cg..][..cg];
                        let out = |a: usize| ((a * 4 + b) * p_len + p) * cg;
                        let (o0, o1, o2, o3) = (out(0), out(1), out(2), out(3));
                        sub(&mut v[o0..o0 + cg], tr(0), tr(2));
                        add(&mut v[o1..o1 + cg], tr(1), tr(2));
                        sub(&mut v[o2..o2 + cg], tr(2), tr(1));
                        sub(&mut v[o3..o3 + cg], tr(1), tr(3));
                    }
                }
            }
        }
    }
}

alexnet_tensor::multiversion! {
    /// Y = A^T M A (+ bias, then ReLU if `relu`) for group g of samples n0..n0+nb
    /// (`which` = [n0, nb, g]): m `[xi][p][o']` -> y (N, O, Ho, Wo), cropping the last tile
    /// row / column where Ho / Wo is odd. `t` is scratch of 12 O/g.
    #[allow(clippy::too_many_arguments)]
    fn output_transform<T: Float>(
        m: &[T],
        s: &ConvShape,
        geo: &Geo,
        which: [usize; 3],
        b: &[T],
        relu: bool,
        t: &mut [T],
        y: &mut [T],
    ) {
        let [n0, nb, g] = which;
        let og = s.og();
        let (ho, wo) = (s.ho(), s.wo());
        let p_len = nb * geo.tiles();
        let bias = &b[g * og..(g + 1) * og];
        let t = &mut t[..12 * og];
        for sn in 0..nb {
            let yp = &mut y[((n0 + sn) * s.o + g * og) * ho * wo..][..og * ho * wo];
            for ti in 0..geo.th {
                for tj in 0..geo.tw {
                    let p = (sn * geo.th + ti) * geo.tw + tj;
                    let mx = |xi: usize| &m[(xi * p_len + p) * og..][..og];
                    let (u, yv) = t.split_at_mut(8 * og);
                    // u[di][b] = (A^T M)[di][b]
                    {
                        let mut ur = rows(u, og);
                        for bb in 0..4 {
                            let (Some(u0), Some(u1)) = (ur.next(), ur.next()) else {
                                break;
                            };
                            add3(u0, mx(bb), mx(4 + bb), mx(8 + bb));
                            sub2(u1, mx(4 + bb), mx(8 + bb), mx(12 + bb));
                        }
                    }
                    // y[di][dj] = (u A)[di][dj] + bias
                    let ur = |bb: usize, di: usize| &u[(bb * 2 + di) * og..][..og];
                    {
                        let mut yr = rows(yv, og);
                        for di in 0..2 {
                            let (Some(y0), Some(y1)) = (yr.next(), yr.next()) else {
                                break;
                            };
                            add3(y0, ur(0, di), ur(1, di), ur(2, di));
                            sub2(y1, ur(1, di), ur(2, di), ur(3, di));
                            acc(y0, bias);
                            acc(y1, bias);
                        }
                    }
                    for q in 0..4 {
                        let (i, j) = (2 * ti + q / 2, 2 * tj + q % 2);
                        if i >= ho || j >= wo {
                            continue;
                        }
                        let src = &yv[q * og..][..og];
                        for (dst, &val) in yp[i * wo + j..].iter_mut().step_by(ho * wo).zip(src) {
                            // As relu_forward: max(e, 0) with NaN and -0 mapped to +0.
                            *dst = if !relu || val > T::zero() { val } else { T::zero() };
                        }
                    }
                }
            }
        }
    }
}

alexnet_tensor::multiversion! {
    /// dM = A dY A^T for group g of samples n0..n0+nb (`which` = [n0, nb, g]): dy (N, O, Ho,
    /// Wo) -> dm `[xi][p][o']`, with zeros for the cropped outputs of edge tiles. `t` is
    /// scratch of 12 O/g.
    fn grad_transform<T: Float>(
        dy: &[T],
        s: &ConvShape,
        geo: &Geo,
        which: [usize; 3],
        t: &mut [T],
        dm: &mut [T],
    ) {
        let [n0, nb, g] = which;
        let og = s.og();
        let (ho, wo) = (s.ho(), s.wo());
        let p_len = nb * geo.tiles();
        let t = &mut t[..12 * og];
        for sn in 0..nb {
            let dp = &dy[((n0 + sn) * s.o + g * og) * ho * wo..][..og * ho * wo];
            for ti in 0..geo.th {
                for tj in 0..geo.tw {
                    let p = (sn * geo.th + ti) * geo.tw + tj;
                    let (d, c) = t.split_at_mut(4 * og);
                    // d[q] = dY[2ti + q/2][2tj + q%2] over o', zero outside the plane.
                    for (q, dq) in rows(d, og).enumerate() {
                        let (i, j) = (2 * ti + q / 2, 2 * tj + q % 2);
                        if i >= ho || j >= wo {
                            dq.fill(T::zero());
                            continue;
                        }
                        for (e, &v) in dq.iter_mut().zip(dp[i * wo + j..].iter().step_by(ho * wo)) {
                            *e = v;
                        }
                    }
                    let dr = |q: usize| &d[q * og..][..og];
                    // c[a][dj] = (A dY)[a][dj] for a = 1, 2 (rows 0 and 3 are dY's rows 0 and
                    // -1).
                    {
                        let mut cr = rows(c, og);
                        for dj in 0..2 {
                            let (Some(c1), Some(c2)) = (cr.next(), cr.next()) else {
                                break;
                            };
                            add(c1, dr(dj), dr(2 + dj));
                            sub(c2, dr(dj), dr(2 + dj));
                        }
                    }
                    let cr = |a: usize, dj: usize| -> &[T] {
                        match a {
                            0 => dr(dj),
                            1 => &c[(dj * 2) * og..][..og],
                            2 => &c[(dj * 2 + 1) * og..][..og],
                            _ => dr(2 + dj),
                        }
                    };
                    for a in 0..4 {
                        // Row a of A dY A^T: [x0, x0 + x1, x0 - x1, -x1], row 3 negated.
                        let (x0, x1) = (cr(a, 0), cr(a, 1));
                        let out = |b: usize| ((a * 4 + b) * p_len + p) * og;
                        let neg = a == 3;
                        let sign = |v: T| if neg { -v } else { v };
                        let (o0, o1, o2, o3) = (out(0), out(1), out(2), out(3));
                        for (e, &v) in dm[o0..o0 + og].iter_mut().zip(x0) {
                            *e = sign(v);
                        }
                        for ((e, &v0), &v1) in dm[o1..o1 + og].iter_mut().zip(x0).zip(x1) {
                            *e = sign(v0 + v1);
                        }
                        for ((e, &v0), &v1) in dm[o2..o2 + og].iter_mut().zip(x0).zip(x1) {
                            *e = sign(v0 - v1);
                        }
                        for (e, &v) in dm[o3..o3 + og].iter_mut().zip(x1) {
                            *e = -sign(v);
                        }
                    }
                }
            }
        }
    }
}

alexnet_tensor::multiversion! {
    /// dd = B dV B^T, added into the overlapping 4x4 patches of the zero-initialised padded
    /// planes `xp` [sample][row][col][c'], for the `nb` samples of dv `[xi][p][c']`. `t` is
    /// scratch of 16 C/g.
    fn scatter_transform<T: Float>(dv: &[T], cg: usize, geo: &Geo, nb: usize, t: &mut [T], xp: &mut [T]) {
        let p_len = nb * geo.tiles();
        let t = &mut t[..16 * cg];
        let xp = &mut xp[..nb * geo.ph * geo.pw * cg];
        xp.fill(T::zero());
        for sn in 0..nb {
            for ti in 0..geo.th {
                for tj in 0..geo.tw {
                    let p = (sn * geo.th + ti) * geo.tw + tj;
                    let dvx = |xi: usize| &dv[(xi * p_len + p) * cg..][..cg];
                    // Columns: q[r][b] = (B dV)[r][b]: [d0, d1 - d2 + d3, d1 + d2 - d0, -d3].
                    {
                        let mut qr = rows(t, cg);
                        let q: [&mut [T]; 16] =
                            std::array::from_fn(|_| qr.next().unwrap_or_default());
                        for b in 0..4 {
                            let (d0, d1, d2, d3) = (dvx(b), dvx(4 + b), dvx(8 + b), dvx(12 + b));
                            q[b].copy_from_slice(d0);
                            sub_add(q[4 + b], d1, d2, d3);
                            add_sub(q[8 + b], d1, d2, d0);
                            map2(q[12 + b], d3, d3, |a, _| -a);
                        }
                    }
                    // Rows: dd[r][c] = (q B^T)[r][c], added into the patch.
                    for r in 0..4 {
                        let qv = |b: usize| &t[(r * 4 + b) * cg..][..cg];
                        let at = |c: usize| ((sn * geo.ph + 2 * ti + r) * geo.pw + 2 * tj + c) * cg;
                        let (q0, q1, q2, q3) = (qv(0), qv(1), qv(2), qv(3));
                        let patch = &mut xp[at(0)..at(0) + 4 * cg];
                        let (p0, rest) = patch.split_at_mut(cg);
                        let (p1, rest) = rest.split_at_mut(cg);
                        let (p2, p3) = rest.split_at_mut(cg);
                        acc(p0, q0);
                        acc3(p1, q1, q2, q3, |a, b, c| a - b + c);
                        acc3(p2, q1, q2, q0, |a, b, c| a + b - c);
                        dec(p3, q3);
                    }
                }
            }
        }
    }
}

alexnet_tensor::multiversion! {
    /// The interior of the padded planes `xp` -> group g's channels of dx for `nb` samples
    /// (`dx` is the chunk's slice starting at its first sample; overwritten).
    fn unpad_channels_last<T: Float>(xp: &[T], s: &ConvShape, geo: &Geo, nb_g: [usize; 2], dx: &mut [T]) {
        let [nb, g] = nb_g;
        let cg = s.cg();
        for sn in 0..nb {
            let src = &xp[sn * geo.ph * geo.pw * cg..][..geo.ph * geo.pw * cg];
            let dst = &mut dx[(sn * s.c + g * cg) * s.h * s.w..][..cg * s.h * s.w];
            for r in 0..s.h {
                for c in 0..s.w {
                    let at = ((r + s.pad) * geo.pw + c + s.pad) * cg;
                    let px = dst[r * s.w + c..].iter_mut().step_by(s.h * s.w);
                    for (e, &v) in px.zip(&src[at..at + cg]) {
                        *e = v;
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
    let geo = Geo::new(s);
    let (og, cg, tiles) = (s.og(), s.cg(), geo.tiles());
    let per_part = geo.per_part(s);
    let part_len = geo.part_len(s);
    let u_len = 16 * s.o * cg;
    grow(scratch, u_len + s.n.div_ceil(per_part) * part_len);
    let (u, parts) = scratch.split_at_mut(u_len);
    u.par_chunks_mut(16 * cg * og)
        .zip(w.par_chunks(og * cg * 9))
        .for_each(|(ug, wg)| filter_transform(wg, cg, og, ug));
    let u: &[T] = u;
    let ohw = s.o * s.ho() * s.wo();
    y.par_chunks_mut(per_part * ohw)
        .zip(parts.par_chunks_mut(part_len))
        .enumerate()
        .try_for_each(|(pi, (yp, sp))| {
            let mut t = vec![T::zero(); 16 * cg.max(og)];
            let (v, rest) = sp.split_at_mut(16 * cg * geo.chunk * tiles);
            let (m, xp) = rest.split_at_mut(16 * og * geo.chunk * tiles);
            let np = yp.len() / ohw;
            for c0 in (0..np).step_by(geo.chunk) {
                let nb = geo.chunk.min(np - c0);
                let n0 = pi * per_part + c0;
                let p = nb * tiles;
                for g in 0..s.groups {
                    pad_channels_last(x, s, &geo, [n0, nb, g], xp);
                    input_transform(xp, cg, &geo, nb, &mut t, v);
                    let ug = &u[g * 16 * cg * og..][..16 * cg * og];
                    for xi in 0..16 {
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
                    output_transform(m, s, &geo, [c0, nb, g], b, relu, &mut t, yp);
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
    let geo = Geo::new(s);
    let (og, cg, tiles) = (s.og(), s.cg(), geo.tiles());
    let per_part = geo.per_part(s);
    let nparts = s.n.div_ceil(per_part);
    // Per part, after the forward's scratch: its dU^T accumulator `[g][xi][c'][o']`.
    let dut_len = 16 * s.o * cg;
    let part_len = geo.part_len(s) + dut_len;
    let u_len = 16 * s.o * cg;
    let sample = s.c * s.h * s.w;
    let hw = s.ho() * s.wo();
    grow(scratch, u_len + nparts * part_len);
    let (u, parts) = scratch.split_at_mut(u_len);
    let need_dx = dx.is_some();
    if need_dx {
        u.par_chunks_mut(16 * cg * og)
            .zip(w.par_chunks(og * cg * 9))
            .for_each(|(ug, wg)| filter_transform(wg, cg, og, ug));
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
            let mut t = vec![T::zero(); 16 * cg.max(og)];
            let (v, rest) = sp.split_at_mut(16 * cg * geo.chunk * tiles);
            let (dm, xp) = rest.split_at_mut(16 * og * geo.chunk * tiles);
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
                    grad_transform(dy, s, &geo, [n0, nb, g], &mut t, dm);
                    pad_channels_last(x, s, &geo, [n0, nb, g], xp);
                    input_transform(xp, cg, &geo, nb, &mut t, v);
                    let ug = &u[g * 16 * cg * og..][..16 * cg * og];
                    for xi in 0..16 {
                        let vx = &mut v[xi * p * cg..][..p * cg];
                        let dmx = &dm[xi * p * og..][..p * og];
                        // dU[xi]^T (C/g, O/g) += V[xi]^T (C/g, P) x dM[xi] (P, O/g)
                        let dux = &mut dut[(g * 16 + xi) * cg * og..][..cg * og];
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
                        scatter_transform(v, cg, &geo, nb, &mut t, xp);
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
    dw.par_chunks_mut(og * cg * 9)
        .zip(total.par_chunks(16 * cg * og))
        .for_each(|(dwg, tg)| filter_gradient(tg, cg, og, dwg));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::tests::conv_direct;
    use crate::conv::{im2col_backward, im2col_forward};

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

    fn wave(len: usize, f: f64) -> Vec<f64> {
        (0..len).map(|i| (i as f64 * f).sin()).collect()
    }

    /// y, dx, dw, db of one path (`wino` or im2col), with the given ReLU options.
    #[allow(clippy::type_complexity)]
    fn run(
        wino: bool,
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
        if wino {
            forward(x, w, b, &mut y, s, relu, &mut scratch).unwrap();
            backward(x, w, dy, dxo, &mut dw, &mut db, s, &mut scratch, relu).unwrap();
        } else {
            im2col_forward(x, w, b, &mut y, s, relu, &mut scratch).unwrap();
            im2col_backward(x, w, dy, dxo, &mut dw, &mut db, s, &mut scratch, relu).unwrap();
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
        ];
        for s in shapes {
            let x = wave(s.n * s.c * s.h * s.w, 0.37);
            let w = wave(s.o * s.cg() * 9, 0.11);
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
            for wino in [true, false] {
                for relu in [false, true] {
                    let got = run(wino, [&x, &w, &b, &dy], &s, relu, true);
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
                        assert!(err < 1e-12, "{what} wino {wino} relu {relu} {s:?}: {err}");
                    }
                }
            }
            // Without dx, the weight and bias gradients are the same bits.
            let full = run(true, [&x, &w, &b, &dy], &s, false, true);
            let nodx = run(true, [&x, &w, &b, &dy], &s, false, false);
            assert_eq!(full[2], nodx[2]);
            assert_eq!(full[3], nodx[3]);
            assert!(
                nodx[1].iter().all(|v| v.is_nan()),
                "dx untouched when not asked for"
            );
        }
    }

    #[test]
    fn f32_winograd_is_as_accurate_as_f32_im2col() {
        // conv4-like: 13x13, 64 -> 48 channels in 2 groups. Relative L2 error of each f32 path
        // against the f64 definition, for y and all three gradients; Winograd's transforms add
        // a few roundings per value, so it may be somewhat worse than im2col, but stays far
        // below the fixtures' 1e-4.
        let s = shape(4, 64, [13, 13], 48, 1, 2);
        let x = wave(s.n * s.c * s.h * s.w, 0.37);
        let w: Vec<f64> = wave(s.o * s.cg() * 9, 0.11)
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
        for wino in [true, false] {
            let mut scratch = Vec::new();
            let mut y = vec![0f32; want[0].len()];
            let (mut dx, mut dw, mut db) =
                (vec![0f32; x.len()], vec![0f32; w.len()], vec![0f32; s.o]);
            if wino {
                forward(&xf, &wf, &bf, &mut y, &s, false, &mut scratch).unwrap();
                backward(
                    &xf,
                    &wf,
                    &dyf,
                    Some(&mut dx),
                    &mut dw,
                    &mut db,
                    &s,
                    &mut scratch,
                    false,
                )
                .unwrap();
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
                assert!(rel < 2e-6, "{what} wino {wino}: relative L2 {rel}");
            }
        }
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
        let go = || {
            let mut scratch = Vec::new();
            let mut y = vec![0f32; dy.len()];
            let (mut dx, mut dw, mut db) =
                (vec![0f32; x.len()], vec![0f32; w.len()], vec![0f32; 6]);
            forward(&x, &w, &b, &mut y, &s, true, &mut scratch).unwrap();
            backward(
                &x,
                &w,
                &dy,
                Some(&mut dx),
                &mut dw,
                &mut db,
                &s,
                &mut scratch,
                true,
            )
            .unwrap();
            [y, dx, dw, db].map(|v| v.iter().map(|e| e.to_bits()).collect::<Vec<u32>>())
        };
        let pool = |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        };
        let one = pool(1).install(go);
        let three = pool(3).install(go);
        assert_eq!(one, three);
        assert!(Geo::new(&s).per_part(&s) < s.n, "several parts");
    }
}
