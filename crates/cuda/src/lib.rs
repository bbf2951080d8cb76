//! `alexnet-cuda`: the CUDA backend.
//!
//! - [`Gpu`]: context, one stream, NVRTC-compiled kernel modules (`kernels/*.cu`, compiled once
//!   per process and cached by [`kernels::KernelFile`]), a cuBLAS handle, and a cuDNN handle
//!   with its convolution plans (created on first use; see [`ConvImpl`]).
//! - [`ops`]: one module per op family with the launch code of its kernels (`ops::conv_cudnn`
//!   for the cuDNN convolutions).
//! - [`GpuNet`]: a whole [`alexnet_tensor::spec::Plan`] on the device, with flat parameter,
//!   gradient and momentum buffers laid out exactly like the plan (checkpoints interchangeable
//!   with the CPU path).
//! - [`check_kernels`]: NVRTC-compiles every kernel (needs libnvrtc only, no GPU);
//!   [`cubin`] reads the registers and stack frame the GPU compiler gave each kernel.
//!
//! Everything loads the CUDA libraries at run time (cudarc dynamic loading): the crate builds
//! and its CPU-side tests pass on machines without CUDA; [`Gpu::new`] then returns an error and
//! [`device_count`] returns 0, never a panic.

pub mod cubin;
pub mod emu;
pub mod error;
pub mod gpu;
pub mod hash;
pub mod kernels;
pub mod net;
pub mod ops;
pub mod parity;

pub use error::CudaError;
pub use gpu::{
    cublas_available, cudnn_available, device_count, driver_available, AlgoSearch, ConvImpl,
    ConvLayout, Gpu, Precision, ALGO_ENV, CONV_ENV, GRAPH_ENV, LAYOUT_ENV, LRN_ENV, NUMERIC_ENVS,
    S2D_ENV, WINO_TILE_ENV,
};
pub use kernels::{check_kernels, nvrtc_available};
pub use net::{GpuNet, Staged};
pub use ops::augment::{AugmentParams, AugmentSample};
