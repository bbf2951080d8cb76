//! `manifest.json`: what a prepared-data directory holds.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::DataError;

/// File name of the manifest inside a prepared-data directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Version of the manifest/shard format.
pub const FORMAT_VERSION: u32 = 1;
/// Tool version recorded in manifests.
pub const TOOL_VERSION: &str = concat!("alexnet-data ", env!("CARGO_PKG_VERSION"));

/// One class: label index, wnid and a human-readable name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ClassEntry {
    /// Label (0-based, sorted wnid order).
    pub index: u32,
    /// WordNet id (or `fashion-mnist/<k>`).
    pub wnid: String,
    /// Name.
    pub name: String,
}

/// How images are stored in shards.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// Fixed-size records: label u32 + S*S*3 u8 HWC RGB.
    #[default]
    Raw,
    /// Re-encoded q90 S x S JPEGs with an offset table.
    Jpeg,
}

impl std::fmt::Display for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Storage::Raw => "raw",
            Storage::Jpeg => "jpeg",
        })
    }
}

/// One shard file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    /// File name relative to the manifest's directory.
    pub file: String,
    /// Number of records.
    pub count: u64,
    /// `crc32:<8 hex>` of the whole file.
    pub checksum: String,
}

/// A split's records.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct SplitInfo {
    /// Total records (sum over shards).
    pub count: u64,
    /// Shards in record order.
    pub shards: Vec<ShardInfo>,
}

/// Train and val splits.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Splits {
    /// Training split.
    pub train: SplitInfo,
    /// Validation split.
    pub val: SplitInfo,
}

/// A source file that was not ingested.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// `train` or `val`.
    pub split: String,
    /// Path relative to the source root.
    pub path: String,
    /// Why it was skipped.
    pub reason: String,
}

/// Provenance of the data.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SourceInfo {
    /// `synthetic`, `imagenet` or `fashion-mnist`.
    pub kind: String,
    /// Source directory as given.
    pub path: String,
    /// Seed (synthetic only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Ground-truth file used for a flat val directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_ground_truth: Option<String>,
}

/// Statistics file names (beside the shards).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StatsFiles {
    /// JSON with eigen-decomposition and covariance.
    pub file: String,
    /// Raw little-endian f32 mean image, S*S*3 HWC.
    pub mean: String,
}

/// The manifest. Written last by `prepare`, so its presence means the directory is complete.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Manifest {
    /// Format version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// Classes in label order.
    pub classes: Vec<ClassEntry>,
    /// S: records are S x S x 3.
    pub image_size: u32,
    /// Storage kind.
    pub storage: Storage,
    /// Splits.
    pub splits: Splits,
    /// Files that were skipped, with reasons.
    pub skipped: Vec<Skipped>,
    /// Provenance.
    pub source: SourceInfo,
    /// Tool that wrote it.
    pub tool_version: String,
    /// Statistics files.
    pub stats: StatsFiles,
}

impl Manifest {
    /// The exact bytes written to `manifest.json`.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain structs of strings/numbers cannot fail.
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// A hash of the manifest file (FNV-1a 64 over its bytes, 16 hex digits). The trainer records
    /// it to identify which data a run used.
    pub fn checksum(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.to_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{h:016x}")
    }

    /// Reads `dir/manifest.json`.
    pub fn load(dir: &Path) -> Result<Manifest, DataError> {
        let path = dir.join(MANIFEST_FILE);
        if !path.is_file() {
            return Err(DataError::MissingManifest {
                dir: dir.to_path_buf(),
            });
        }
        let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| DataError::json(&path, e))?;
        if m.format_version != FORMAT_VERSION {
            return Err(DataError::json(
                &path,
                format!("format_version {} != {}", m.format_version, FORMAT_VERSION),
            ));
        }
        Ok(m)
    }

    /// Writes `dir/manifest.json` atomically (temp file + rename).
    pub fn save(&self, dir: &Path) -> Result<(), DataError> {
        crate::shards::write_atomic(&dir.join(MANIFEST_FILE), &self.to_bytes())
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }
}
