//! The paper's update rule (section 5):
//! `v <- momentum * v - weight_decay * lr * w - lr * grad`, `w <- w + v`.
//! `v` already contains the learning rate, so changing lr between steps is exact.

use crate::error::{check_len, LayerError};
use alexnet_tensor::gemm::Float;
use rayon::prelude::*;

/// One SGD step over matching slices of weights, gradients and velocity.
pub fn sgd_step<T: Float>(
    w: &mut [T],
    grad: &[T],
    v: &mut [T],
    lr: f64,
    momentum: f64,
    weight_decay: f64,
) -> Result<(), LayerError> {
    let d = || format!("w of {} elements", w.len());
    check_len("sgd_step", "grad", grad.len(), w.len(), d)?;
    check_len("sgd_step", "v", v.len(), w.len(), d)?;
    let (lr, m, wd) = (T::of(lr), T::of(momentum), T::of(weight_decay));
    let wdlr = wd * lr;
    w.par_chunks_mut(1 << 14)
        .zip(v.par_chunks_mut(1 << 14))
        .zip(grad.par_chunks(1 << 14))
        .for_each(|((wc, vc), gc)| {
            for ((wi, vi), &g) in wc.iter_mut().zip(vc.iter_mut()).zip(gc) {
                *vi = m * *vi - wdlr * *wi - lr * g;
                *wi = *wi + *vi;
            }
        });
    Ok(())
}
