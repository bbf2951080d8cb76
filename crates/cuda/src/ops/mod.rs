//! One module per op family, each with the launch code of its kernels (`kernels/*.cu`).
//!
//! Conventions: every function takes device views whose lengths are checked against the shapes
//! before any launch (a mismatch is a [`CudaError::Shape`], never an out-of-bounds access), and
//! every launch carries a shape comment.

pub mod augment;
pub mod conv;
pub mod conv_cudnn;
pub mod convert;
pub mod elementwise;
pub mod gemm;
pub mod loss;
pub mod lrn;
pub mod sgd;

use crate::error::CudaError;
use cudarc::driver::{CudaView, CudaViewMut};

/// Checks that a buffer holds at least `need` elements.
pub(crate) fn check_len(
    op: &'static str,
    what: &str,
    have: usize,
    need: usize,
) -> Result<(), CudaError> {
    if have < need {
        return Err(CudaError::shape(
            op,
            format!("{what} holds {have} elements, needs {need}"),
        ));
    }
    Ok(())
}

/// `v[start..start + len]` or a shape error.
pub(crate) fn sub<'a, T>(
    op: &'static str,
    v: &CudaView<'a, T>,
    start: usize,
    len: usize,
) -> Result<CudaView<'a, T>, CudaError> {
    v.try_slice(start..start + len).ok_or_else(|| {
        CudaError::shape(
            op,
            format!("range {start}..{} of a view of {}", start + len, v.len()),
        )
    })
}

/// `v[start..start + len]` (mutable) or a shape error.
pub(crate) fn sub_mut<'b, T>(
    op: &'static str,
    v: &'b mut CudaViewMut<'_, T>,
    start: usize,
    len: usize,
) -> Result<CudaViewMut<'b, T>, CudaError> {
    let n = v.len();
    v.try_slice_mut(start..start + len).ok_or_else(|| {
        CudaError::shape(
            op,
            format!("range {start}..{} of a view of {n}", start + len),
        )
    })
}

/// Converts a size to the u32 of a kernel parameter struct.
pub(crate) fn u32_of(op: &'static str, what: &str, v: usize) -> Result<u32, CudaError> {
    u32::try_from(v).map_err(|_| CudaError::invalid(op, format!("{what} = {v} exceeds u32")))
}

/// Checks that a kernel may index `v` elements with 32-bit arithmetic, grid-stride increments
/// included (v < 2^31 leaves room for any grid of at most 2^24 threads).
pub(crate) fn idx32(op: &'static str, what: &str, v: usize) -> Result<(), CudaError> {
    if v >= 1 << 31 {
        return Err(CudaError::invalid(
            op,
            format!("{what} = {v} elements: too large for one launch (at most 2^31 - 1)"),
        ));
    }
    Ok(())
}
