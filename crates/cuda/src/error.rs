//! Errors of the CUDA backend. Every message names the op (and the shapes where they matter).

use thiserror::Error;

/// Errors raised by the CUDA backend.
#[derive(Debug, Error)]
pub enum CudaError {
    /// No CUDA driver library (libcuda) could be loaded, or it reports no device.
    #[error("no CUDA device: {0}")]
    NoDevice(String),
    /// libnvrtc could not be loaded (see crates/cuda/README.md for how to install it).
    #[error(
        "libnvrtc not found: pip install nvidia-cuda-nvrtc and put its lib folder on LD_LIBRARY_PATH"
    )]
    NoNvrtc,
    /// A kernel file failed to compile; `log` is NVRTC's log.
    #[error("NVRTC failed to compile kernels/{file} ({options}): {log}")]
    Compile {
        file: &'static str,
        options: String,
        log: String,
    },
    /// A CUDA driver call failed.
    #[error("CUDA driver error in {op}: {detail}")]
    Driver { op: String, detail: String },
    /// A cuBLAS call failed.
    #[error("cuBLAS error in {op}: {detail}")]
    Blas { op: String, detail: String },
    /// A cuDNN call failed (the op names the convolution shape).
    #[error("cuDNN error in {op}: {detail}")]
    Cudnn { op: String, detail: String },
    /// Buffers or shapes that must agree do not.
    #[error("{op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },
    /// An invalid argument (hyper-parameter, label, batch size...).
    #[error("{op}: {detail}")]
    Invalid { op: &'static str, detail: String },
    /// A library call panicked (e.g. a missing symbol in a dynamically loaded library).
    #[error("{op}: the CUDA library panicked: {detail}")]
    Panic { op: &'static str, detail: String },
    /// Errors of the tensor layer (plans, fixtures).
    #[error(transparent)]
    Tensor(#[from] alexnet_tensor::TensorError),
}

impl CudaError {
    /// Maps a driver error of `op`.
    pub(crate) fn driver(
        op: impl Into<String>,
    ) -> impl FnOnce(cudarc::driver::DriverError) -> Self {
        let op = op.into();
        move |e| CudaError::Driver {
            op,
            detail: format!("{e:?}"),
        }
    }

    /// Maps a cuBLAS error of `op`.
    pub(crate) fn blas(
        op: impl Into<String>,
    ) -> impl FnOnce(cudarc::cublas::result::CublasError) -> Self {
        let op = op.into();
        move |e| CudaError::Blas {
            op,
            detail: format!("{e:?}"),
        }
    }

    /// Maps a cuDNN error of `op` (the convolution shape and call).
    pub(crate) fn cudnn(
        op: impl Into<String>,
    ) -> impl FnOnce(cudarc::cudnn::result::CudnnError) -> Self {
        let op = op.into();
        move |e| CudaError::Cudnn {
            op,
            detail: format!("{e:?}"),
        }
    }

    /// A shape error.
    pub(crate) fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        CudaError::Shape {
            op,
            detail: detail.into(),
        }
    }

    /// An invalid-argument error.
    pub(crate) fn invalid(op: &'static str, detail: impl Into<String>) -> Self {
        CudaError::Invalid {
            op,
            detail: detail.into(),
        }
    }
}

/// Runs `f`, turning a panic inside a CUDA library wrapper into [`CudaError::Panic`].
pub(crate) fn no_panic<T>(
    op: &'static str,
    f: impl FnOnce() -> Result<T, CudaError>,
) -> Result<T, CudaError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let detail = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(CudaError::Panic { op, detail })
        }
    }
}
