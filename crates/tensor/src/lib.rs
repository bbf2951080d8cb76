//! `alexnet-tensor`: the lowest layer of the workspace.
//!
//! - [`Tensor`]: a contiguous f32 tensor (row-major, NCHW for activations) over `ndarray`.
//! - [`gemm`]: single-precision GEMM through `matrixmultiply`, with a rayon-parallel variant.
//! - [`spec`]: the network description (layer list) shared by the CPU and CUDA paths, and the
//!   flat parameter layout (names, shapes, offsets) that both devices and the checkpoints use.
//! - [`fixture`]: the reader for the parity fixtures (safetensors + JSON params).
//! - [`rng`]: a small, serialisable, deterministic RNG (xoshiro256**).
//! - [`toom_cook`]: the Winograd transform matrices shared by the CPU and CUDA convolutions.
//! - [`simd`]: run-time dispatch of the layers' element-wise loops to AVX-512 / AVX2 code.

pub mod amx;
pub mod error;
mod few_rows;
pub mod fixture;
pub mod gemm;
pub mod io;
pub mod rng;
pub mod simd;
pub mod spec;
mod tensor;
pub mod toom_cook;

pub use error::TensorError;
pub use tensor::{rel_l2, Tensor};
