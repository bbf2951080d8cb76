//! One module per op family, each with the launch code of its kernels (`kernels/*.cu`).
//!
//! Conventions: every function takes device views whose lengths are checked against the shapes
//! before any launch (a mismatch is a [`CudaError::Shape`], never an out-of-bounds access), and
//! every launch carries a shape comment.

pub mod augment;
pub mod conv;
pub mod conv_cudnn;
pub mod conv_route;
pub mod convert;
pub mod elementwise;
pub mod gemm;
pub mod layout;
pub mod loss;
pub mod lrn;
pub mod sgd;
pub mod space_to_depth;
pub mod winograd;

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

/// Division by a divisor fixed at launch, as a multiply-high and a shift (`FastDiv` of the
/// kernels, mirrored here): exact for every dividend below 2^31, which `idx32` guarantees for
/// kernel indices. A 32-bit integer division costs the GPU about twenty instructions; the
/// index decompositions of the memory-bound kernels were bound by them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastDiv {
    pub m: u32,
    pub shift: u32,
}

// SAFETY: `#[repr(C)]` of two u32, identical to the C struct `FastDiv`.
unsafe impl cudarc::driver::DeviceRepr for FastDiv {}

impl FastDiv {
    /// The multiplier and shift of division by `d` (d >= 1): with s = ceil(log2 d),
    /// m = floor(2^32 (2^s - d) / d) + 1 (the scheme of Granlund and Montgomery).
    pub fn new(op: &'static str, d: u32) -> Result<FastDiv, CudaError> {
        if d == 0 {
            return Err(CudaError::invalid(op, "division by zero"));
        }
        let shift = 32 - (d - 1).leading_zeros(); // ceil(log2 d); 0 for d = 1
        let m = ((1u64 << 32) * ((1u64 << shift) - d as u64)) / d as u64 + 1;
        Ok(FastDiv {
            // m < 2^32: (2^s - d) < d, so the quotient is below 2^32.
            m: u32::try_from(m).map_err(|_| CudaError::invalid(op, "divisor multiplier"))?,
            shift,
        })
    }

    /// n / d exactly as the kernels compute it (for n < 2^31).
    pub fn div(&self, n: u32) -> u32 {
        let hi = ((n as u64 * self.m as u64) >> 32) as u32;
        // hi <= n < 2^31, so the sum fits in 32 bits.
        (hi + n) >> self.shift
    }
}
