//! Local response normalisation across channels (the paper's section 3.3):
//!
//! `y[c] = x[c] / s[c]^beta`, `s[c] = k + alpha * sum_{j in W(c)} x[j]^2`, where W(c) is the
//! window of `size` channels centred on c, clipped at the ends. `alpha` multiplies the plain sum
//! of squares (it is not divided by `size`; see data/paper.toml for the paper's value).

use crate::error::{check_len, LayerError};
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

/// Backward: `dx[i] = dy[i] * s[i]^-beta - 2 alpha beta x[i] sum_{j in W(i)} dy[j] y[j] / s[j]`.
#[allow(clippy::too_many_arguments)]
pub fn lrn_backward<T: Float>(
    x: &[T],
    y: &[T],
    scale: &[T],
    dy: &[T],
    dx: &mut [T],
    n: usize,
    c: usize,
    hw: usize,
    p: &LrnParams,
) -> Result<(), LayerError> {
    check(
        p,
        n,
        c,
        hw,
        &[x.len(), y.len(), scale.len(), dy.len(), dx.len()],
    )?;
    let half = p.size / 2;
    let (beta, tq) = (T::of(p.beta), p.beta == 0.75);
    let coef = T::of(2.0 * p.alpha * p.beta);
    // Per-sample scratch: r (C*HW) and the window sum (HW), allocated once per rayon job.
    let scratch = || (vec![T::zero(); c * hw], vec![T::zero(); hw]);
    dx.par_chunks_mut(c * hw)
        .enumerate()
        .for_each_init(scratch, |(r, acc), (ni, dxn)| {
            let base = ni * c * hw;
            let xyd = [
                &x[base..base + c * hw],
                &y[base..base + c * hw],
                &scale[base..base + c * hw],
                &dy[base..base + c * hw],
            ];
            lrn_backward_sample(xyd, dxn, r, acc, [c, hw, half], [beta, coef], tq);
        });
    Ok(())
}

alexnet_tensor::multiversion! {
    /// One sample of [`lrn_forward`]: xn, yn (C*HW), sn (C*HW, or HW scratch when s is not
    /// kept); `dims` = [C, HW, size / 2],
    /// `abk` = [alpha, beta, k].
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
        for ci in 0..c {
            let lo = ci.saturating_sub(half);
            let hi = (ci + half).min(c - 1);
            // sn holds every channel's s (kept for the backward) or one channel's (inference).
            let s = if sn.len() == c * hw {
                &mut sn[ci * hw..(ci + 1) * hw]
            } else {
                &mut sn[..hw]
            };
            s.iter_mut().for_each(|e| *e = T::zero());
            for j in lo..=hi {
                for (e, &v) in s.iter_mut().zip(&xn[j * hw..(j + 1) * hw]) {
                    *e = *e + v * v;
                }
            }
            s.iter_mut().for_each(|e| *e = k + alpha * *e);
            let yc = &mut yn[ci * hw..(ci + 1) * hw];
            mul_pow_neg_beta(yc, &xn[ci * hw..(ci + 1) * hw], s, beta, tq);
        }
    }
}

alexnet_tensor::multiversion! {
    /// One sample of [`lrn_backward`]: `xyd` = [x, y, scale, dy] (C*HW each), r (C*HW) and
    /// acc (HW) scratch; `dims` = [C, HW, size / 2], `bc` = [beta, 2 alpha beta].
    fn lrn_backward_sample<T: Float>(
        xyd: [&[T]; 4],
        dxn: &mut [T],
        r: &mut [T],
        acc: &mut [T],
        dims: [usize; 3],
        bc: [T; 2],
        tq: bool,
    ) {
        let [c, hw, half] = dims;
        let [xn, yn, sn, dyn_] = xyd;
        let [beta, coef] = bc;
        // r[j] = dy[j] * y[j] / s[j]
        for (((ri, &g), &yi), &si) in r.iter_mut().zip(dyn_).zip(yn).zip(sn) {
            *ri = g * yi / si;
        }
        for ci in 0..c {
            let lo = ci.saturating_sub(half);
            let hi = (ci + half).min(c - 1);
            acc.iter_mut().for_each(|e| *e = T::zero());
            for j in lo..=hi {
                for (a, &v) in acc.iter_mut().zip(&r[j * hw..(j + 1) * hw]) {
                    *a = *a + v;
                }
            }
            let o = ci * hw;
            let d = &mut dxn[o..o + hw];
            mul_pow_neg_beta(d, &dyn_[o..o + hw], &sn[o..o + hw], beta, tq);
            for ((di, &xi), &ai) in d.iter_mut().zip(&xn[o..o + hw]).zip(acc.iter()) {
                *di = *di - coef * xi * ai;
            }
        }
    }
}
