//! Overlapping max-pooling (kernel 3, stride 2 in the paper), no padding, floor mode.

use crate::error::{check_len, LayerError};
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
    y.par_chunks_mut(ho * wo)
        .zip(arg.par_chunks_mut(ho * wo))
        .enumerate()
        .for_each_init(
            || {
                let row = (vec![T::zero(); w], vec![0u32; w]);
                (row, (vec![T::zero(); st * pw], vec![0u32; st * pw]))
            },
            |((cv, ci), (pv, pa)), (pi, (yp, ap))| {
                let xp = &x[pi * s.h * w..(pi + 1) * s.h * w];
                pool_plane(xp, yp, ap, [cv, pv], [ci, pa], [w, k, st, ho, wo]);
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
    y.par_chunks_mut(ho * wo).enumerate().for_each_init(
        || (vec![T::zero(); w], vec![T::zero(); st * pw]),
        |(cv, pv), (pi, yp)| {
            let xp = &x[pi * s.h * w..(pi + 1) * s.h * w];
            pool_plane_values(xp, yp, [cv, pv], [w, k, st, ho, wo]);
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
    s.check()?;
    let hw_out = s.ho() * s.wo();
    let d = || s.desc();
    check_len("maxpool", "dy", dy.len(), s.planes * hw_out, d)?;
    check_len("maxpool", "arg", arg.len(), s.planes * hw_out, d)?;
    check_len("maxpool", "dx", dx.len(), s.planes * s.h * s.w, d)?;
    dx.par_chunks_mut(s.h * s.w)
        .enumerate()
        .for_each(|(pi, dxp)| {
            dxp.iter_mut().for_each(|e| *e = T::zero());
            let base = pi * hw_out;
            for (&g, &a) in dy[base..base + hw_out]
                .iter()
                .zip(&arg[base..base + hw_out])
            {
                dxp[a as usize] = dxp[a as usize] + g;
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
