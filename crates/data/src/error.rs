//! The crate's error type. Every message is one line that names the file involved and the fix.

use std::path::{Path, PathBuf};

/// Errors of the data pipeline. `Display` is a single line naming the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An I/O operation on `path` failed.
    #[error("I/O error on {path}: {source} (check that it exists and is readable/writable)")]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The prepared-data directory has no `manifest.json`.
    #[error(
        "no manifest.json in {dir}: run `cargo xtask prepare-data` first (or pass --data DIR)"
    )]
    MissingManifest {
        /// Directory that was opened.
        dir: PathBuf,
    },
    /// A JSON file (manifest, stats, marker) could not be parsed.
    #[error("{path} is not valid ({msg}): re-run `cargo xtask prepare-data`")]
    BadJson {
        /// File involved.
        path: PathBuf,
        /// Parser message.
        msg: String,
    },
    /// A shard file does not match its manifest entry or is malformed.
    #[error("shard {path} is corrupt ({msg}): re-run `cargo xtask prepare-data`")]
    BadShard {
        /// Shard file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A shard's checksum does not match the manifest.
    #[error(
        "shard {path} checksum {actual} != manifest {expected}: re-run `cargo xtask prepare-data`"
    )]
    Checksum {
        /// Shard file.
        path: PathBuf,
        /// Checksum recorded in the manifest.
        expected: String,
        /// Checksum computed now.
        actual: String,
    },
    /// The statistics files beside the shards are missing or malformed.
    #[error("statistics {path} missing or malformed ({msg}): re-run `cargo xtask prepare-data`")]
    BadStats {
        /// File involved.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The source directory is missing.
    #[error("source directory {path} does not exist: pass an existing dataset directory")]
    SourceMissing {
        /// Directory given.
        path: PathBuf,
    },
    /// The source directory holds no usable images.
    #[error("no images under {path}: expected {expected}")]
    SourceEmpty {
        /// Directory given.
        path: PathBuf,
        /// Description of the expected layout.
        expected: String,
    },
    /// Flat validation images without a ground-truth file.
    #[error("val images in {path} are flat but {gt} does not exist: pass --val-ground-truth FILE")]
    ValLabelsMissing {
        /// The val directory.
        path: PathBuf,
        /// Where the ground truth was looked for.
        gt: PathBuf,
    },
    /// The devkit ground-truth file or a class table is malformed.
    #[error("{path}:{line}: {msg}: fix or replace the file")]
    BadLabels {
        /// File involved.
        path: PathBuf,
        /// 1-based line number (0 when not line-specific).
        line: usize,
        /// What is wrong.
        msg: String,
    },
    /// A Fashion-MNIST IDX file is malformed.
    #[error("{path} is not a valid IDX file ({msg}): reinstall dataset-fashion-mnist or pass the right directory")]
    Idx {
        /// File involved.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// An image could not be decoded or encoded.
    #[error("image {path}: {msg}: replace or remove the file")]
    Image {
        /// File (or shard record) involved.
        path: PathBuf,
        /// Decoder message.
        msg: String,
    },
    /// Invalid argument combination.
    #[error("invalid argument: {0}")]
    InvalidArg(String),
}

impl DataError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// A malformed-shard error.
    pub fn shard(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        DataError::BadShard {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    /// A malformed-JSON error.
    pub fn json(path: impl AsRef<Path>, msg: impl std::fmt::Display) -> Self {
        DataError::BadJson {
            path: path.as_ref().to_path_buf(),
            msg: msg.to_string(),
        }
    }
}
