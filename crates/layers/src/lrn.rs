//! Local response normalisation across channels (the paper's section 3.3):
//!
//! `y[c] = x[c] / s[c]^beta`, `s[c] = k + alpha * sum_{j in W(c)} x[j]^2`, where W(c) is the
//! window of `size` channels centred on c, clipped at the ends. `alpha` multiplies the plain sum
//! of squares (it is not divided by `size`; see data/paper.toml for the paper's value).

use crate::error::{check_len, LayerError};
use crate::relu::mask_by_output;
use alexnet_tensor::gemm::Float;
use rayon::prelude::*;

/// LRN hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrnParams {
    pub size: usize,
    pub alpha: f64,
    pub beta: f64,
    pub k: f64,
}

fn check(p: &LrnParams, n: usize, c: usize, hw: usize, lens: &[usize]) -> Result<(), LayerError> {
    if p.size == 0 {
        return Err(LayerError::Param {
            op: "lrn",
            detail: "size must be > 0".into(),
        });
    }
    if c == 0 || hw == 0 {
        return Err(LayerError::Param {
            op: "lrn",
            detail: format!("empty planes: (N,C,HW)=({n},{c},{hw})"),
        });
    }
    for &l in lens {
        check_len("lrn", "buffer", l, n * c * hw, || {
            format!("(N,C,HW)=({n},{c},{hw})")
        })?;
    }
    Ok(())
}

/// `out[i] = v[i] * s[i]^-beta`. The paper's beta = 0.75 is computed with two square roots and a
/// division (exact enough, and it vectorises); the branch is outside the loops.
#[inline(always)]
fn mul_pow_neg_beta<T: Float>(out: &mut [T], v: &[T], s: &[T], beta: T, three_quarters: bool) {
    if three_quarters {
        for ((o, &vi), &si) in out.iter_mut().zip(v).zip(s) {
            let r = si.sqrt();
            *o = vi / (r * r.sqrt());
        }
    } else {
        for ((o, &vi), &si) in out.iter_mut().zip(v).zip(s) {
            *o = vi * si.powf(-beta);
        }
    }
}

/// Forward. x, y, scale: (N,C,H,W) with `hw` = H*W. `scale` receives s (for the backward).
pub fn lrn_forward<T: Float>(
    x: &[T],
    y: &mut [T],
    scale: &mut [T],
    n: usize,
    c: usize,
    hw: usize,
    p: &LrnParams,
) -> Result<(), LayerError> {
    check(p, n, c, hw, &[x.len(), y.len(), scale.len()])?;
    let half = p.size / 2;
    let (alpha, beta, k) = (T::of(p.alpha), T::of(p.beta), T::of(p.k));
    let tq = p.beta == 0.75;
    y.par_chunks_mut(c * hw)
        .zip(scale.par_chunks_mut(c * hw))
        .enumerate()
        .for_each(|(ni, (yn, sn))| {
            let xn = &x[ni * c * hw..(ni + 1) * c * hw];
            lrn_forward_sample(xn, yn, sn, [c, hw, half], [alpha, beta, k], tq);
        });
    Ok(())
}

/// Forward without keeping s, for inference: y exactly as [`lrn_forward`] computes it, without
/// writing the (N,C,H,W) scale buffer.
pub fn lrn_forward_values<T: Float>(
    x: &[T],
    y: &mut [T],
    n: usize,
    c: usize,
    hw: usize,
    p: &LrnParams,
) -> Result<(), LayerError> {
    check(p, n, c, hw, &[x.len(), y.len()])?;
    let half = p.size / 2;
    let (alpha, beta, k) = (T::of(p.alpha), T::of(p.beta), T::of(p.k));
    let tq = p.beta == 0.75;
    y.par_chunks_mut(c * hw).enumerate().for_each_init(
        || vec![T::zero(); hw],
        |sc, (ni, yn)| {
            let xn = &x[ni * c * hw..(ni + 1) * c * hw];
            lrn_forward_sample(xn, yn, sc, [c, hw, half], [alpha, beta, k], tq);
        },
    );
    Ok(())
}

/// Backward: `dx[i] = dy[i] s[i]^-beta - 2 alpha beta x[i] sum_{j in W(i)} dy[j] y[j] / s[j]`,
/// with `y[j] / s[j]` computed as `x[j] s[j]^(-beta-1)` (so y is not read).
#[allow(clippy::too_many_arguments)]
pub fn lrn_backward<T: Float>(
    x: &[T],
    scale: &[T],
    dy: &[T],
    dx: &mut [T],
    n: usize,
    c: usize,
    hw: usize,
    p: &LrnParams,
) -> Result<(), LayerError> {
    lrn_backward_relu(x, scale, dy, dx, [n, c, hw], p, false)
}

/// [`lrn_backward`], with `relu` followed by the backward of the ReLU whose output x is
/// (`dx = 0` where `x <= 0`), fused into the write of dx: the same bits as the two passes.
/// `dims` = [N, C, H*W].
pub fn lrn_backward_relu<T: Float>(
    x: &[T],
    scale: &[T],
    dy: &[T],
    dx: &mut [T],
    dims: [usize; 3],
    p: &LrnParams,
    relu: bool,
) -> Result<(), LayerError> {
    let [n, c, hw] = dims;
    check(p, n, c, hw, &[x.len(), scale.len(), dy.len(), dx.len()])?;
    let half = p.size / 2;
    let (beta, tq) = (T::of(p.beta), p.beta == 0.75);
    let coef = T::of(2.0 * p.alpha * p.beta);
    // Per-sample scratch r (C*HW), allocated once per rayon job.
    dx.par_chunks_mut(c * hw).enumerate().for_each_init(
        || vec![T::zero(); c * hw],
        |r, (ni, dxn)| {
            let base = ni * c * hw;
            let xsd = [
                &x[base..base + c * hw],
                &scale[base..base + c * hw],
                &dy[base..base + c * hw],
            ];
            lrn_backward_sample(xsd, dxn, r, [c, hw, half], [beta, coef], [tq, relu]);
        },
    );
    Ok(())
}

/// Pixels per block of the per-channel loops: the window sum of a block stays in registers
/// (four AVX-512 vectors) while the window's 2 * half + 1 planes stream through L1.
const BLOCK: usize = 64;

/// Window sum of one block: `acc[p] = (..((0 + f(w_lo[p])) + f(w_lo+1[p])) ..) + f(w_hi[p])`
/// over the planes `lo..=hi` of `src` (planes of `hw`, block at pixel `p0`, `acc.len()` long),
/// with `f` = square (forward) or identity (backward). Summed in this order, the same bits as
/// a plane-at-a-time accumulation.
#[inline(always)]
fn window_sum<T: Float>(
    acc: &mut [T],
    src: &[T],
    hw: usize,
    p0: usize,
    lohi: [usize; 2],
    sq: bool,
) {
    let [lo, hi] = lohi;
    let len = acc.len();
    acc.iter_mut().for_each(|e| *e = T::zero());
    for j in lo..=hi {
        let plane = &src[j * hw + p0..j * hw + p0 + len];
        if sq {
            for (e, &v) in acc.iter_mut().zip(plane) {
                *e = *e + v * v;
            }
        } else {
            for (e, &v) in acc.iter_mut().zip(plane) {
                *e = *e + v;
            }
        }
    }
}

alexnet_tensor::multiversion! {
    /// One sample of [`lrn_forward`]: xn, yn (C*HW), sn (C*HW, or HW scratch when s is not
    /// kept); `dims` = [C, HW, size / 2],
    /// `abk` = [alpha, beta, k]. Block by block of [`BLOCK`] pixels, so that the window sum
    /// never leaves registers.
    fn lrn_forward_sample<T: Float>(
        xn: &[T],
        yn: &mut [T],
        sn: &mut [T],
        dims: [usize; 3],
        abk: [T; 3],
        tq: bool,
    ) {
        let [c, hw, half] = dims;
        let [alpha, beta, k] = abk;
        let keep = sn.len() == c * hw;
        let mut acc = [T::zero(); BLOCK];
        for ci in 0..c {
            let lohi = [ci.saturating_sub(half), (ci + half).min(c - 1)];
            let o = ci * hw;
            // sn holds every channel's s (kept for the backward) or one channel's (inference).
            let s = if keep { &mut sn[o..o + hw] } else { &mut sn[..hw] };
            let (xc, yc) = (&xn[o..o + hw], &mut yn[o..o + hw]);
            for p0 in (0..hw).step_by(BLOCK) {
                let len = BLOCK.min(hw - p0);
                let acc = &mut acc[..len];
                window_sum(acc, xn, hw, p0, lohi, true);
                let sb = &mut s[p0..p0 + len];
                for (e, &a) in sb.iter_mut().zip(acc.iter()) {
                    *e = k + alpha * a;
                }
                mul_pow_neg_beta(&mut yc[p0..p0 + len], &xc[p0..p0 + len], sb, beta, tq);
            }
        }
    }
}

alexnet_tensor::multiversion! {
    /// One sample of [`lrn_backward`]: `xsd` = [x, scale, dy] (C*HW each), r (C*HW)
    /// scratch; `dims` = [C, HW, size / 2], `bc` = [beta, 2 alpha beta], `flags` = [beta is
    /// 0.75, mask by x > 0 (a ReLU before)]. Two passes: every element's `r = dy x s^(-beta-1)`
    /// and `dx = dy s^-beta`, then, block by block of [`BLOCK`] pixels, `dx -= 2 alpha beta x
    /// (window sum of r)`.
    fn lrn_backward_sample<T: Float>(
        xsd: [&[T]; 3],
        dxn: &mut [T],
        r: &mut [T],
        dims: [usize; 3],
        bc: [T; 2],
        flags: [bool; 2],
    ) {
        let [tq, relu] = flags;
        let [c, hw, half] = dims;
        let [xn, sn, dyn_] = xsd;
        let [beta, coef] = bc;
        let elems = dxn.iter_mut().zip(r.iter_mut()).zip(xn.iter().zip(sn).zip(dyn_));
        if tq {
            // s^-0.75 = 1 / (sqrt(s) sqrt(sqrt(s))), as the forward computes it, and
            // s^-1.75 = (s^-0.75)^3 sqrt(s): one division per element.
            for ((d, ri), ((&xi, &si), &g)) in elems {
                let q = si.sqrt();
                let t = T::one() / (q * q.sqrt());
                *ri = g * xi * (t * t * t * q);
                *d = g * t;
            }
        } else {
            for ((d, ri), ((&xi, &si), &g)) in elems {
                let t = si.powf(-beta);
                *ri = g * xi * (t / si);
                *d = g * t;
            }
        }
        let mut acc = [T::zero(); BLOCK];
        for ci in 0..c {
            let lohi = [ci.saturating_sub(half), (ci + half).min(c - 1)];
            for p0 in (0..hw).step_by(BLOCK) {
                let len = BLOCK.min(hw - p0);
                let acc = &mut acc[..len];
                window_sum(acc, r, hw, p0, lohi, false);
                let o = ci * hw + p0;
                let d = &mut dxn[o..o + len];
                let xb = &xn[o..o + len];
                for ((di, &xi), &ai) in d.iter_mut().zip(xb).zip(acc.iter()) {
                    *di = *di - coef * xi * ai;
                }
                if relu {
                    mask_by_output(xb, d);
                }
            }
        }
    }
}
