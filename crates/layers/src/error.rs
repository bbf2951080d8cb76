//! Layer errors: each names the op and the shapes involved.

use thiserror::Error;

/// An error from a layer or the model.
#[derive(Debug, Error)]
pub enum LayerError {
    /// A buffer's length does not match the shape the op was given.
    #[error("{op}: {what} has {got} elements, expected {expected} for {shape}")]
    Len {
        op: &'static str,
        what: &'static str,
        got: usize,
        expected: usize,
        shape: String,
    },
    /// Hyper-parameters that make no sense for this op.
    #[error("{op}: {detail}")]
    Param { op: &'static str, detail: String },
    /// An error from the tensor layer (GEMM, spec).
    #[error(transparent)]
    Tensor(#[from] alexnet_tensor::TensorError),
}

/// Checks that `buf` holds `expected` elements.
pub(crate) fn check_len(
    op: &'static str,
    what: &'static str,
    got: usize,
    expected: usize,
    shape: impl FnOnce() -> String,
) -> Result<(), LayerError> {
    if got == expected {
        Ok(())
    } else {
        Err(LayerError::Len {
            op,
            what,
            got,
            expected,
            shape: shape(),
        })
    }
}
