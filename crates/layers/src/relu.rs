//! ReLU: y = max(x, 0); dx = dy where x > 0, else 0.

use crate::error::{check_len, LayerError};
use alexnet_tensor::gemm::Float;
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

/// Forward. x, y: any shape, same length.
pub fn relu_forward<T: Float>(x: &[T], y: &mut [T]) -> Result<(), LayerError> {
    check_len("relu", "y", y.len(), x.len(), || {
        format!("x of {} elements", x.len())
    })?;
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(yc, xc)| relu_chunk(xc, yc));
    Ok(())
}

/// Backward from the forward *output* y (y > 0 exactly where x > 0): dx = dy * `[y > 0]`.
pub fn relu_backward<T: Float>(y: &[T], dy: &[T], dx: &mut [T]) -> Result<(), LayerError> {
    let shape = || format!("y of {} elements", y.len());
    check_len("relu", "dy", dy.len(), y.len(), shape)?;
    check_len("relu", "dx", dx.len(), y.len(), shape)?;
    dx.par_chunks_mut(CHUNK)
        .zip(y.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
        .for_each(|(dxc, (yc, dyc))| relu_grad_chunk(yc, dyc, dxc));
    Ok(())
}

alexnet_tensor::multiversion! {
    fn relu_chunk<T: Float>(x: &[T], y: &mut [T]) {
        for (o, &i) in y.iter_mut().zip(x) {
            *o = if i > T::zero() { i } else { T::zero() };
        }
    }
}

alexnet_tensor::multiversion! {
    fn relu_grad_chunk<T: Float>(y: &[T], dy: &[T], dx: &mut [T]) {
        for ((d, &o), &g) in dx.iter_mut().zip(y).zip(dy) {
            *d = if o > T::zero() { g } else { T::zero() };
        }
    }
}

/// `dx = dx * [y > 0]` in place: the backward of a ReLU whose output is `y`, applied to a
/// gradient another layer's backward has just written (fused there while it is in cache). The
/// same bits as [`relu_backward`].
#[inline(always)]
pub(crate) fn mask_by_output<T: Float>(y: &[T], dx: &mut [T]) {
    for (d, &o) in dx.iter_mut().zip(y) {
        *d = if o > T::zero() { *d } else { T::zero() };
    }
}

alexnet_tensor::multiversion! {
    /// [`mask_by_output`] as a dispatched function, for callers outside a multiversioned loop.
    pub(crate) fn relu_mask<T: Float>(y: &[T], dx: &mut [T]) {
        mask_by_output(y, dx);
    }
}
