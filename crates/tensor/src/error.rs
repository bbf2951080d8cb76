//! Errors of the tensor layer. Every message names the op or file and the shapes involved.

use thiserror::Error;

/// Errors raised by tensor construction, specs and fixture reading.
#[derive(Debug, Error)]
pub enum TensorError {
    /// A buffer does not hold as many elements as its shape says.
    #[error("{op}: shape {shape:?} needs {expected} elements, got {got}")]
    Size {
        op: &'static str,
        shape: Vec<usize>,
        expected: usize,
        got: usize,
    },
    /// Two shapes that must agree do not.
    #[error("{op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },
    /// A network spec is inconsistent (a layer cannot be applied to its input).
    #[error("network spec: {0}")]
    Spec(String),
    /// This machine cannot run what was asked (e.g. an AMX GEMM on a CPU without AMX).
    #[error("{0}")]
    Unsupported(String),
    /// A file could not be read or parsed.
    #[error("{path}: {detail}")]
    File { path: String, detail: String },
}
