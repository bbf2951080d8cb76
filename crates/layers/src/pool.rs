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
}

/// Forward. x: (planes, H, W) -> y: (planes, Ho, Wo); `arg` gets each window's argmax (index
/// within the plane; the first maximum on ties).
pub fn maxpool_forward<T: Float>(
    x: &[T],
    y: &mut [T],
    arg: &mut [u32],
    s: &PoolShape,
) -> Result<(), LayerError> {
    s.check()?;
    let (ho, wo) = (s.ho(), s.wo());
    let d = || format!("{} planes {}x{} k{} s{}", s.planes, s.h, s.w, s.k, s.stride);
    check_len("maxpool", "x", x.len(), s.planes * s.h * s.w, d)?;
    check_len("maxpool", "y", y.len(), s.planes * ho * wo, d)?;
    check_len("maxpool", "arg", arg.len(), s.planes * ho * wo, d)?;
    y.par_chunks_mut(ho * wo)
        .zip(arg.par_chunks_mut(ho * wo))
        .enumerate()
        .for_each(|(pi, (yp, ap))| {
            let xp = &x[pi * s.h * s.w..(pi + 1) * s.h * s.w];
            for i in 0..ho {
                for j in 0..wo {
                    let first = i * s.stride * s.w + j * s.stride;
                    let mut best = xp[first];
                    let mut bi = first;
                    for u in 0..s.k {
                        let row = first + u * s.w;
                        for (v, &val) in xp[row..row + s.k].iter().enumerate() {
                            // Branch-free select: which element is the maximum is
                            // unpredictable, so a branch here mispredicts about half the time.
                            let gt = val > best;
                            best = if gt { val } else { best };
                            bi = if gt { row + v } else { bi };
                        }
                    }
                    yp[i * wo + j] = best;
                    ap[i * wo + j] = bi as u32;
                }
            }
        });
    Ok(())
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
    let d = || format!("{} planes {}x{} k{} s{}", s.planes, s.h, s.w, s.k, s.stride);
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
