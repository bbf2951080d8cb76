//! Dropout with inverted scaling: at training time each unit is kept with probability 1 - p and
//! scaled by 1 / (1 - p); at evaluation it is the identity. (The paper instead multiplies the
//! outputs by 1 - p = 0.5 at test time; both give the same expected activations, and inverted
//! scaling leaves evaluation untouched.)
//!
//! The mask is a pure function of (seed, element index) through a counter-based hash, so it is
//! reproducible, parallel, and independent of the thread count.

use crate::error::{check_len, LayerError};
use alexnet_tensor::gemm::Float;
use rayon::prelude::*;

/// splitmix64 finaliser of (seed, index): a counter-based uniform random stream.
#[inline]
pub fn hash_uniform(seed: u64, index: u64) -> f64 {
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Training forward: y = x * mask, `mask[i]` = 1/(1-p) with probability 1-p, else 0.
pub fn dropout_forward<T: Float>(
    x: &[T],
    y: &mut [T],
    mask: &mut [T],
    p: f64,
    seed: u64,
) -> Result<(), LayerError> {
    if !(0.0..1.0).contains(&p) {
        return Err(LayerError::Param {
            op: "dropout",
            detail: format!("p={p} not in [0, 1)"),
        });
    }
    let d = || format!("x of {} elements", x.len());
    check_len("dropout", "y", y.len(), x.len(), d)?;
    check_len("dropout", "mask", mask.len(), x.len(), d)?;
    let keep = T::of(1.0 / (1.0 - p));
    mask.par_iter_mut()
        .zip(y.par_iter_mut())
        .zip(x.par_iter())
        .enumerate()
        .for_each(|(i, ((m, o), &v))| {
            *m = if hash_uniform(seed, i as u64) >= p {
                keep
            } else {
                T::zero()
            };
            *o = v * *m;
        });
    Ok(())
}

/// Backward: dx = dy * mask.
pub fn dropout_backward<T: Float>(dy: &[T], mask: &[T], dx: &mut [T]) -> Result<(), LayerError> {
    let d = || format!("dy of {} elements", dy.len());
    check_len("dropout", "mask", mask.len(), dy.len(), d)?;
    check_len("dropout", "dx", dx.len(), dy.len(), d)?;
    dx.par_iter_mut()
        .zip(dy.par_iter().zip(mask.par_iter()))
        .for_each(|(d, (&g, &m))| {
            *d = g * m;
        });
    Ok(())
}
