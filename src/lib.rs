//! `alexnet`: the orchestration layer over the workspace crates. The `alexnet` binary (run
//! through `cargo xtask <command>`) calls into these modules.

pub mod bench;
pub mod flow;
pub mod gpu_check;
pub mod parity;
pub use alexnet_train::presets;
