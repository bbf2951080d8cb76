//! `alexnet-layers`: the layers of AlexNet on the CPU, each an explicit forward/backward pair
//! over row-major slices (activations NCHW), and the network built from a preset.
//!
//! Every layer is generic over [`Float`](alexnet_tensor::gemm::Float) so the same code runs in
//! f32 (training) and f64 (finite-difference gradient checks).

pub mod conv;
pub mod dropout;
pub mod error;
pub mod linear;
pub mod loss;
pub mod lrn;
pub mod model;
pub mod pool;
pub mod relu;
pub mod sgd;
pub mod winograd;

pub use error::LayerError;
pub use model::{Mode, Model};
