//! alexnet-data: the data pipeline of the AlexNet reproduction.
//!
//! - [`synthetic`]: the embedded synthetic set in the ILSVRC-2012 file layout;
//! - [`mod@prepare`]: source tree -> memory-mapped shards + statistics + `manifest.json`;
//! - [`shards`]: the shard format and [`shards::Dataset`] (records are S x S x 3 u8 HWC RGB);
//! - [`loader`]: shuffled, augmented f32 NCHW training batches and the eval views;
//! - [`augment`]: PCA lighting and crop/flip helpers;
//! - [`cli`]: `prepare-data` / `bench-data` arguments for the xtask and the CLI.

pub mod augment;
pub mod classes;
pub mod cli;
pub mod decode;
pub mod error;
pub mod fashion;
mod imagenet;
pub mod loader;
pub mod manifest;
pub mod prepare;
pub mod rng;
pub mod shards;
pub mod stats;
pub mod synthetic;

pub use error::DataError;
pub use loader::{
    batches_per_epoch, epoch_order, eval_batch, eval_records, view_patches, Batch, Draw,
    LoaderConfig, Pixels, Recycler, TrainLoader, View,
};
pub use manifest::{ClassEntry, Manifest, ShardInfo, Skipped, SplitInfo, Storage};
pub use prepare::{prepare, verify, PrepareOptions, Source, VerifyReport};
pub use shards::{Dataset, Split, SplitData};
pub use stats::Stats;
pub use synthetic::{SyntheticOptions, SyntheticSummary};
