//! Overlapping max-pooling (kernel 3, stride 2 in the paper), no padding, floor mode.

use crate::error::{check_len, LayerError};
use crate::relu::relu_mask;
use alexnet_tensor::gemm::Float;
use rayon::prelude::*;

/// Pooling geometry for planes of H x W.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolShape {
    /// Number of planes (N*C).
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
}

impl PoolShape {
    pub fn ho(&self) -> usize {
        (self.h - self.k) / self.stride + 1
    }
    pub fn wo(&self) -> usize {
        (self.w - self.k) / self.stride + 1
    }
    fn check(&self) -> Result<(), LayerError> {
        if self.k == 0 || self.stride == 0 || self.h < self.k || self.w < self.k {
            return Err(LayerError::Param {
                op: "maxpool",
                detail: format!(
                    "kernel {} stride {} on {}x{}",
                    self.k, self.stride, self.h, self.w
                ),
            });
        }
        Ok(())
    }
    fn desc(&self) -> String {
        let s = self;
        format!("{} planes {}x{} k{} s{}", s.planes, s.h, s.w, s.k, s.stride)
    }
    /// Checks the geometry and the x / y lengths of a forward pass; returns (Ho, Wo).
    fn check_forward(&self, x: usize, y: usize) -> Result<(usize, usize), LayerError> {
        self.check()?;
        let (ho, wo) = (self.ho(), self.wo());
        check_len("maxpool", "x", x, self.planes * self.h * self.w, || {
            self.desc()
        })?;
        check_len("maxpool", "y", y, self.planes * ho * wo, || self.desc())?;
        Ok((ho, wo))
    }
}

/// Forward. x: (planes, H, W) -> y: (planes, Ho, Wo); `arg` gets each window's argmax (index
/// within the plane; the first maximum on ties).
pub fn maxpool_forward<T: Float>(
    x: &[T],
    y: &mut [T],
    arg: &mut [u32],
    s: &PoolShape,
) -> Result<(), LayerError> {
    let (ho, wo) = s.check_forward(x.len(), y.len())?;
    check_len("maxpool", "arg", arg.len(), s.planes * ho * wo, || s.desc())?;
    let (w, k, st) = (s.w, s.k, s.stride);
    // Separable: for each output row, first the maximum over the window's k rows for every
    // column (`cv`, with its plane index in `ci`), then over k columns. Keeping the smaller
    // plane index on equal values makes both passes pick the first maximum in row-major
    // window order, exactly as a direct k x k scan does. Both passes are elementwise
    // (max + index blend by mask), so they vectorise: for the column pass the row maxima are
    // first split into `stride` phases (phase p holds columns p, p + stride, ...), so window
    // column v of output j is element j + v / stride of phase v % stride.
    let pw = w.div_ceil(st);
    let s2 = s2_applies(w, st, wo);
    y.par_chunks_mut(ho * wo)
        .zip(arg.par_chunks_mut(ho * wo))
        .enumerate()
        .for_each_init(
            || {
                // Column maxima: one row of them (the general path) or all Ho rows (stride 2).
                let len = if s2 { s2_scratch(w, ho) } else { w };
                let row = (vec![T::zero(); len], vec![0u32; len]);
                (row, (vec![T::zero(); st * pw], vec![0u32; st * pw]))
            },
            |((cv, ci), (pv, pa)), (pi, (yp, ap))| {
                let xp = &x[pi * s.h * w..(pi + 1) * s.h * w];
                if s2 {
                    pool_plane_s2(xp, yp, ap, cv, ci, [w, k, ho, wo]);
                } else {
                    pool_plane(xp, yp, ap, [cv, pv], [ci, pa], [w, k, st, ho, wo]);
                }
            },
        );
    Ok(())
}

/// Forward without the argmax, for inference (nothing to go back through): y exactly as
/// [`maxpool_forward`] computes it (the same maxima in the same order), at less cost.
pub fn maxpool_forward_values<T: Float>(
    x: &[T],
    y: &mut [T],
    s: &PoolShape,
) -> Result<(), LayerError> {
    let (ho, wo) = s.check_forward(x.len(), y.len())?;
    let (w, k, st) = (s.w, s.k, s.stride);
    let pw = w.div_ceil(st);
    let s2 = s2_applies(w, st, wo);
    y.par_chunks_mut(ho * wo).enumerate().for_each_init(
        || {
            let len = if s2 { s2_scratch(w, ho) } else { w };
            (vec![T::zero(); len], vec![T::zero(); st * pw])
        },
        |(cv, pv), (pi, yp)| {
            let xp = &x[pi * s.h * w..(pi + 1) * s.h * w];
            if s2 {
                pool_plane_s2(xp, yp, &mut [], cv, &mut [], [w, k, ho, wo]);
            } else {
                pool_plane_values(xp, yp, [cv, pv], [w, k, st, ho, wo]);
            }
        },
    );
    Ok(())
}

alexnet_tensor::multiversion! {
    /// [`pool_plane`] without the indices.
    fn pool_plane_values<T: Float>(xp: &[T], yp: &mut [T], vals: [&mut [T]; 2], dims: [usize; 5]) {
        let [cv, pv] = vals;
        let [w, k, st, ho, wo] = dims;
        let pw = w.div_ceil(st);
        for i in 0..ho {
            let r0 = i * st;
            cv.copy_from_slice(&xp[r0 * w..(r0 + 1) * w]);
            for u in 1..k {
                let row = &xp[(r0 + u) * w..(r0 + u + 1) * w];
                for (m, &v) in cv.iter_mut().zip(row) {
                    *m = m.max(v);
                }
            }
            for p in 0..st.min(w) {
                for t in 0..(w - p).div_ceil(st) {
                    pv[p * pw + t] = cv[p + st * t];
                }
            }
            let yr = &mut yp[i * wo..(i + 1) * wo];
            yr.copy_from_slice(&pv[..wo]);
            for v in 1..k {
                let o = (v % st) * pw + v / st;
                for (yo, &m) in yr.iter_mut().zip(&pv[o..o + wo]) {
                    *yo = yo.max(m);
                }
            }
        }
    }
}

alexnet_tensor::multiversion! {
    /// One plane of [`maxpool_forward`]: xp (H*W) -> yp, ap (Ho*Wo); `vals` = [cv (W),
    /// pv (stride * ceil(W / stride))] and `idx` the matching index scratch; `dims` = [W, k,
    /// stride, Ho, Wo].
    fn pool_plane<T: Float>(
        xp: &[T],
        yp: &mut [T],
        ap: &mut [u32],
        vals: [&mut [T]; 2],
        idx: [&mut [u32]; 2],
        dims: [usize; 5],
    ) {
        let [cv, pv] = vals;
        let [ci, pa] = idx;
        let [w, k, st, ho, wo] = dims;
        let pw = w.div_ceil(st);
        for i in 0..ho {
            let r0 = i * st;
            cv.copy_from_slice(&xp[r0 * w..(r0 + 1) * w]);
            // Plane indices fit u32: check_len bounds the planes' size by the buffers.
            let base = (r0 * w) as u32;
            ci.iter_mut()
                .enumerate()
                .for_each(|(c, a)| *a = base + c as u32);
            for u in 1..k {
                let row = &xp[(r0 + u) * w..(r0 + u + 1) * w];
                let base = ((r0 + u) * w) as u32;
                for (c, ((m, a), &v)) in
                    cv.iter_mut().zip(ci.iter_mut()).zip(row).enumerate()
                {
                    blend(m, a, v, base + c as u32, v > *m);
                }
            }
            // (A stride wider than the plane leaves phases past w empty.)
            for p in 0..st.min(w) {
                for t in 0..(w - p).div_ceil(st) {
                    pv[p * pw + t] = cv[p + st * t];
                    pa[p * pw + t] = ci[p + st * t];
                }
            }
            let (yr, ar) = (&mut yp[i * wo..(i + 1) * wo], &mut ap[i * wo..(i + 1) * wo]);
            yr.copy_from_slice(&pv[..wo]);
            ar.copy_from_slice(&pa[..wo]);
            for v in 1..k {
                let o = (v % st) * pw + v / st;
                for ((yo, ao), (&m, &a)) in yr
                    .iter_mut()
                    .zip(ar.iter_mut())
                    .zip(pv[o..o + wo].iter().zip(&pa[o..o + wo]))
                {
                    blend(yo, ao, m, a, (m > *yo) | ((m == *yo) & (a < *ao)));
                }
            }
        }
    }
}

/// Block widths of the stride-2 path: its column pass runs over plane rows VB values at a
/// time, its row pass over output rows HB outputs at a time, each block a fixed-size array
/// (so it compiles to whole vectors, with no scalar remainder loop).
const VB: usize = 16;
const HB: usize = 8;

/// Whether [`pool_plane_s2`] takes a plane: stride 2, at least VB columns and HB outputs per
/// row (AlexNet's pool1 and pool2; pool5's 13 x 13 -> 6 x 6 planes take the general path).
fn s2_applies(w: usize, stride: usize, wo: usize) -> bool {
    stride == 2 && w >= VB && wo >= HB
}

/// Scratch values (and as many indices) [`pool_plane_s2`] needs for a plane: the column maxima
/// (Ho rows of W rounded up to even) and their even / odd split (as many).
fn s2_scratch(w: usize, ho: usize) -> usize {
    2 * ho * w.next_multiple_of(2)
}

/// Start offsets of `b`-wide blocks covering `0..len` (`len >= b`), the last one moved back to
/// end at `len`. The passes write a separate output, so the overlap is computed twice with
/// the same result.
fn block_starts(len: usize, b: usize) -> impl Iterator<Item = usize> {
    (0..len.div_ceil(b)).map(move |i| (i * b).min(len - b))
}

alexnet_tensor::multiversion! {
    /// One plane of [`maxpool_forward`] (or, with empty `ap` / `idx`, of
    /// [`maxpool_forward_values`]) for stride 2, in three passes: the maximum over each
    /// window's k rows for every column of every output row (Ho rows of W, stored at an even
    /// pitch), the even and odd columns of the whole result split apart (one long loop), then
    /// the maximum over k columns, whose window column v is element j + v / 2 of the even
    /// (v even) or odd split. Same ties rule as [`pool_plane`], so the same values and
    /// indices. `vals` / `idx`: [`s2_scratch`] long; `dims` = [W, k, Ho, Wo].
    fn pool_plane_s2<T: Float>(
        xp: &[T],
        yp: &mut [T],
        ap: &mut [u32],
        vals: &mut [T],
        idx: &mut [u32],
        dims: [usize; 4],
    ) {
        if ap.is_empty() {
            s2_passes::<T, false>(xp, yp, ap, vals, idx, dims);
        } else {
            s2_passes::<T, true>(xp, yp, ap, vals, idx, dims);
        }
    }
}

/// The passes of [`pool_plane_s2`], with (`IDX`) or without the argmax.
#[inline(always)]
fn s2_passes<T: Float, const IDX: bool>(
    xp: &[T],
    yp: &mut [T],
    ap: &mut [u32],
    vals: &mut [T],
    idx: &mut [u32],
    dims: [usize; 4],
) {
    let [w, k, ho, wo] = dims;
    let wp = w.next_multiple_of(2);
    let pw = wp / 2;
    let (cv, split) = vals.split_at_mut(ho * wp);
    let (ci, split_i) = if IDX {
        idx.split_at_mut(ho * wp)
    } else {
        (&mut [][..], &mut [][..])
    };
    // Column pass: cv[i, c] = max over u < k of x[2i + u, c], the first (smallest u) on ties.
    for i in 0..ho {
        for o in block_starts(w, VB) {
            let at = |u: usize| (2 * i + u) * w + o;
            let mut m = [T::zero(); VB];
            m.copy_from_slice(&xp[at(0)..at(0) + VB]);
            // Plane indices fit u32: check_len bounds the planes' size by the buffers.
            let mut a = [0u32; VB];
            for (c, e) in a.iter_mut().enumerate() {
                *e = (at(0) + c) as u32;
            }
            for u in 1..k {
                let row = &xp[at(u)..at(u) + VB];
                for c in 0..VB {
                    if IDX {
                        let take = row[c] > m[c];
                        blend(&mut m[c], &mut a[c], row[c], (at(u) + c) as u32, take);
                    } else {
                        m[c] = m[c].max(row[c]);
                    }
                }
            }
            cv[i * wp + o..i * wp + o + VB].copy_from_slice(&m);
            if IDX {
                ci[i * wp + o..i * wp + o + VB].copy_from_slice(&a);
            }
        }
    }
    // Even / odd split of the whole (Ho x Wp) block: row i's even columns are ev[i*pw..],
    // its odd ones od[i*pw..]. (With W odd, each row's last odd entry is the unused pad.)
    let (ev, od) = split.split_at_mut(ho * pw);
    for ((e, o), p) in ev.iter_mut().zip(od.iter_mut()).zip(cv.chunks_exact(2)) {
        *e = p[0];
        *o = p[1];
    }
    let (evi, odi) = split_i.split_at_mut(split_i.len() / 2);
    if IDX {
        for ((e, o), p) in evi.iter_mut().zip(odi.iter_mut()).zip(ci.chunks_exact(2)) {
            *e = p[0];
            *o = p[1];
        }
    }
    // Row pass: y[i, j] = max over v < k of cv[i, 2j + v] (2 (Wo - 1) + k - 1 <= W - 1, so
    // inside the row); on ties the smaller plane index, the first in row-major window order.
    for i in 0..ho {
        for o in block_starts(wo, HB) {
            // Window column v of outputs o.. is the even (v even) or odd split at o + v / 2.
            let at = |v: usize| i * pw + o + v / 2;
            let pick = |v: usize| if v & 1 == 0 { (&ev, &evi) } else { (&od, &odi) };
            let mut m = [T::zero(); HB];
            m.copy_from_slice(&ev[at(0)..at(0) + HB]);
            let mut a = [0u32; HB];
            if IDX {
                a.copy_from_slice(&evi[at(0)..at(0) + HB]);
            }
            for v in 1..k {
                let (vals, inds) = pick(v);
                let cand = &vals[at(v)..at(v) + HB];
                let cand_i = if IDX {
                    &inds[at(v)..at(v) + HB]
                } else {
                    &[][..]
                };
                for c in 0..HB {
                    if IDX {
                        let take = (cand[c] > m[c]) | ((cand[c] == m[c]) & (cand_i[c] < a[c]));
                        blend(&mut m[c], &mut a[c], cand[c], cand_i[c], take);
                    } else {
                        m[c] = m[c].max(cand[c]);
                    }
                }
            }
            let out = i * wo + o;
            yp[out..out + HB].copy_from_slice(&m);
            if IDX {
                ap[out..out + HB].copy_from_slice(&a);
            }
        }
    }
}

/// `(m, a) = (max(m, v), if take { i } else { a })` without a branch or a conditional store
/// (which element wins is unpredictable); `take` implies `v >= m`.
#[inline(always)]
fn blend<T: Float>(m: &mut T, a: &mut u32, v: T, i: u32, take: bool) {
    let mask = 0u32.wrapping_sub(u32::from(take));
    *a ^= (*a ^ i) & mask;
    *m = m.max(v);
}

/// Backward: each dy is added to its window's argmax position; dx is overwritten.
pub fn maxpool_backward<T: Float>(
    dy: &[T],
    arg: &[u32],
    dx: &mut [T],
    s: &PoolShape,
) -> Result<(), LayerError> {
    maxpool_backward_relu(dy, arg, dx, s, None)
}

/// [`maxpool_backward`], with `relu_x` (the pool's input x, a ReLU's output) followed by that
/// ReLU's backward (`dx = 0` where `x <= 0`), plane by plane while dx is in cache: the same
/// bits as the two passes.
pub fn maxpool_backward_relu<T: Float>(
    dy: &[T],
    arg: &[u32],
    dx: &mut [T],
    s: &PoolShape,
    relu_x: Option<&[T]>,
) -> Result<(), LayerError> {
    s.check()?;
    let hw_out = s.ho() * s.wo();
    let d = || s.desc();
    check_len("maxpool", "dy", dy.len(), s.planes * hw_out, d)?;
    check_len("maxpool", "arg", arg.len(), s.planes * hw_out, d)?;
    check_len("maxpool", "dx", dx.len(), s.planes * s.h * s.w, d)?;
    if let Some(x) = relu_x {
        check_len("maxpool", "x", x.len(), s.planes * s.h * s.w, d)?;
    }
    let hw = s.h * s.w;
    dx.par_chunks_mut(hw).enumerate().for_each(|(pi, dxp)| {
        dxp.iter_mut().for_each(|e| *e = T::zero());
        let base = pi * hw_out;
        for (&g, &a) in dy[base..base + hw_out]
            .iter()
            .zip(&arg[base..base + hw_out])
        {
            dxp[a as usize] = dxp[a as usize] + g;
        }
        if let Some(x) = relu_x {
            relu_mask(&x[pi * hw..(pi + 1) * hw], dxp);
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct k x k scan: first maximum in row-major window order.
    fn direct(x: &[f32], s: &PoolShape) -> (Vec<f32>, Vec<u32>) {
        let (ho, wo) = (s.ho(), s.wo());
        let (mut y, mut a) = (vec![], vec![]);
        for p in 0..s.planes {
            let xp = &x[p * s.h * s.w..][..s.h * s.w];
            for i in 0..ho {
                for j in 0..wo {
                    let mut bi = i * s.stride * s.w + j * s.stride;
                    for u in 0..s.k {
                        for v in 0..s.k {
                            let idx = (i * s.stride + u) * s.w + j * s.stride + v;
                            if xp[idx] > xp[bi] {
                                bi = idx;
                            }
                        }
                    }
                    y.push(xp[bi]);
                    a.push(bi as u32);
                }
            }
        }
        (y, a)
    }

    #[test]
    fn separable_passes_pick_the_same_argmax_as_a_direct_scan_even_with_ties() {
        let mut state = 12345u64;
        for &(h, w, k, stride) in &[
            (13, 13, 3, 2),
            (8, 11, 2, 2),
            (9, 7, 3, 1),
            (10, 10, 3, 3),
            (5, 3, 2, 5),
            // The stride-2 path: AlexNet's pool1 (55 and 56 wide) and pool2, a non-square
            // plane, k = 2, 4 and 5, the narrowest plane it takes (17 wide, 8 outputs) and a
            // single output row.
            (55, 55, 3, 2),
            (56, 56, 3, 2),
            (27, 27, 3, 2),
            (21, 40, 3, 2),
            (9, 33, 2, 2),
            (12, 35, 4, 2),
            (7, 17, 3, 2),
            (11, 21, 5, 2),
            (3, 17, 3, 2),
        ] {
            // Values from {0, 1, 2}: most windows hold ties, as post-ReLU zeros do.
            let planes = 5;
            let x: Vec<f32> = (0..planes * h * w)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 33) % 3) as f32
                })
                .collect();
            let s = PoolShape {
                planes,
                h,
                w,
                k,
                stride,
            };
            let n = planes * s.ho() * s.wo();
            let (mut y, mut a) = (vec![0.0; n], vec![0u32; n]);
            maxpool_forward(&x, &mut y, &mut a, &s).unwrap();
            let (ry, ra) = direct(&x, &s);
            assert_eq!(y, ry, "{h}x{w} k{k} s{stride}");
            assert_eq!(a, ra, "{h}x{w} k{k} s{stride}");
            let mut yv = vec![f32::NAN; n];
            maxpool_forward_values(&x, &mut yv, &s).unwrap();
            assert_eq!(yv, ry, "values only: {h}x{w} k{k} s{stride}");
        }
    }
}
