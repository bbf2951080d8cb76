//! Shard files and the memory-mapped [`Dataset`].
//!
//! Shard layout (all integers little-endian):
//! - header, 32 bytes: magic `ALXSHRD\0`, version u32, storage u32 (0 raw, 1 jpeg),
//!   image_size u32 (S), reserved u32, count u64;
//! - `raw`: `count` fixed-size records of `4 + S*S*3` bytes: label u32, then S x S x 3 u8 HWC RGB;
//! - `jpeg`: offsets u64 x (count+1) (relative to the blob), labels u32 x count, then the blob of
//!   q90 S x S JPEGs (record i is `blob[offsets[i]..offsets[i+1]]`).
//!
//! The file size is fully determined by the header (raw) or header + offsets (jpeg), so a truncated
//! shard is rejected by [`Dataset::open`]; `prepare --verify` re-checks the crc32 checksums.

use std::borrow::Cow;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::DataError;
use crate::manifest::{Manifest, ShardInfo, Storage};
use crate::stats::Stats;

/// Magic bytes at the start of every shard.
pub const MAGIC: &[u8; 8] = b"ALXSHRD\0";
/// Shard header size in bytes.
pub const HEADER_LEN: usize = 32;
const VERSION: u32 = 1;

/// Which split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// Training split.
    Train,
    /// Validation split.
    Val,
}

impl Split {
    /// `train` / `val`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

/// Writes `bytes` to `path` atomically: `path.tmp`, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let tmp = tmp_path(path);
    let mut f = File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| DataError::io(&tmp, e))?;
    f.sync_all().map_err(|e| DataError::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))
}

/// `path` with `.tmp` appended.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// `crc32:<8 hex>` of a byte slice.
pub fn crc_string(bytes: &[u8]) -> String {
    format!("crc32:{:08x}", crc32fast::hash(bytes))
}

/// Serialises one shard (see the module docs) from `(label, record)` pairs. For `raw` every
/// record must be `S*S*3` bytes; for `jpeg` a JPEG stream.
pub fn encode_shard(
    storage: Storage,
    image_size: u32,
    records: &[(u32, Vec<u8>)],
) -> Result<Vec<u8>, DataError> {
    let n = records.len();
    let rec = (image_size as usize).pow(2) * 3;
    let mut out = Vec::with_capacity(HEADER_LEN + n * (rec + 4));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(storage as u32).to_le_bytes());
    out.extend_from_slice(&image_size.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(n as u64).to_le_bytes());
    match storage {
        Storage::Raw => {
            for (label, px) in records {
                if px.len() != rec {
                    return Err(DataError::InvalidArg(format!(
                        "raw record of {} bytes, expected {rec}",
                        px.len()
                    )));
                }
                out.extend_from_slice(&label.to_le_bytes());
                out.extend_from_slice(px);
            }
        }
        Storage::Jpeg => {
            let mut off = 0u64;
            out.extend_from_slice(&off.to_le_bytes());
            for (_, b) in records {
                off += b.len() as u64;
                out.extend_from_slice(&off.to_le_bytes());
            }
            for (label, _) in records {
                out.extend_from_slice(&label.to_le_bytes());
            }
            for (_, b) in records {
                out.extend_from_slice(b);
            }
        }
    }
    Ok(out)
}

/// Writes a shard atomically to `dir/file` and returns its manifest entry.
pub fn write_shard(
    dir: &Path,
    file: &str,
    storage: Storage,
    image_size: u32,
    records: &[(u32, Vec<u8>)],
) -> Result<ShardInfo, DataError> {
    let bytes = encode_shard(storage, image_size, records)?;
    write_atomic(&dir.join(file), &bytes)?;
    Ok(ShardInfo {
        file: file.to_string(),
        count: records.len() as u64,
        checksum: crc_string(&bytes),
    })
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// One memory-mapped, validated shard.
#[derive(Debug)]
struct ShardMap {
    path: PathBuf,
    map: Mmap,
    count: usize,
}

impl ShardMap {
    fn open(path: &Path, storage: Storage, size: u32, info: &ShardInfo) -> Result<Self, DataError> {
        let f = File::open(path).map_err(|e| DataError::io(path, e))?;
        // SAFETY: the file is opened read-only and shards are only ever replaced by rename
        // (never modified in place), so the mapping's contents do not change under us.
        let map = unsafe { Mmap::map(&f) }.map_err(|e| DataError::io(path, e))?;
        let len = map.len();
        if len < HEADER_LEN || &map[..8] != MAGIC {
            return Err(DataError::shard(
                path,
                format!("{len} bytes, no shard header"),
            ));
        }
        let (ver, st, s, count) = (
            le_u32(&map, 8),
            le_u32(&map, 12),
            le_u32(&map, 16),
            le_u64(&map, 24),
        );
        if ver != VERSION || st != storage as u32 || s != size || count != info.count {
            return Err(DataError::shard(
                path,
                format!(
                    "header version {ver} storage {st} size {s} count {count} does not match \
                     manifest (storage {storage}, size {size}, count {})",
                    info.count
                ),
            ));
        }
        let n = count as usize;
        let expected = match storage {
            Storage::Raw => HEADER_LEN as u64 + count * (4 + 3 * (s as u64).pow(2)),
            Storage::Jpeg => {
                let table = HEADER_LEN + 8 * (n + 1) + 4 * n;
                if len < table {
                    return Err(DataError::shard(
                        path,
                        format!("{len} bytes, offsets truncated"),
                    ));
                }
                let mut prev = 0;
                for i in 0..=n {
                    let o = le_u64(&map, HEADER_LEN + 8 * i);
                    if o < prev {
                        return Err(DataError::shard(path, "offsets not increasing"));
                    }
                    prev = o;
                }
                table as u64 + prev
            }
        };
        if len as u64 != expected {
            return Err(DataError::shard(
                path,
                format!("{len} bytes, expected {expected} (truncated or overwritten)"),
            ));
        }
        Ok(ShardMap {
            path: path.to_path_buf(),
            map,
            count: n,
        })
    }
}

/// One split's records, across its shards. Records are S x S x 3 u8 HWC RGB.
#[derive(Debug)]
pub struct SplitData {
    shards: Vec<ShardMap>,
    /// `starts[k]` = global index of shard k's first record; last entry = len.
    starts: Vec<usize>,
    storage: Storage,
    image_size: usize,
}

impl SplitData {
    pub(crate) fn open(dir: &Path, m: &Manifest, shards: &[ShardInfo]) -> Result<Self, DataError> {
        let mut maps = Vec::with_capacity(shards.len());
        let mut starts = vec![0];
        for info in shards {
            let sm = ShardMap::open(&dir.join(&info.file), m.storage, m.image_size, info)?;
            starts.push(starts[starts.len() - 1] + sm.count);
            maps.push(sm);
        }
        Ok(SplitData {
            shards: maps,
            starts,
            storage: m.storage,
            image_size: m.image_size as usize,
        })
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.starts[self.starts.len() - 1]
    }

    /// True when the split has no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// S (records are S x S x 3).
    pub fn image_size(&self) -> usize {
        self.image_size
    }

    fn locate(&self, i: usize) -> (&ShardMap, usize) {
        let k = self.starts.partition_point(|&s| s <= i) - 1;
        (&self.shards[k], i - self.starts[k])
    }

    /// Label of record `i`. Panics if `i >= len()` (like slice indexing).
    pub fn label(&self, i: usize) -> u32 {
        assert!(
            i < self.len(),
            "record {i} out of range (len {})",
            self.len()
        );
        let (sm, j) = self.locate(i);
        match self.storage {
            Storage::Raw => le_u32(&sm.map, HEADER_LEN + j * (4 + 3 * self.image_size.pow(2))),
            Storage::Jpeg => le_u32(&sm.map, HEADER_LEN + 8 * (sm.count + 1) + 4 * j),
        }
    }

    /// Pixels of record `i`: S*S*3 u8, HWC RGB. Borrowed from the mapping for `raw`, decoded for
    /// `jpeg`. Errors for an out-of-range index or an undecodable JPEG record.
    pub fn image(&self, i: usize) -> Result<Cow<'_, [u8]>, DataError> {
        if i >= self.len() {
            return Err(DataError::InvalidArg(format!(
                "record {i} out of range ({})",
                self.len()
            )));
        }
        let (sm, j) = self.locate(i);
        let px = 3 * self.image_size.pow(2);
        match self.storage {
            Storage::Raw => {
                let at = HEADER_LEN + j * (4 + px) + 4;
                Ok(Cow::Borrowed(&sm.map[at..at + px]))
            }
            Storage::Jpeg => {
                let o0 = le_u64(&sm.map, HEADER_LEN + 8 * j) as usize;
                let o1 = le_u64(&sm.map, HEADER_LEN + 8 * (j + 1)) as usize;
                let base = HEADER_LEN + 8 * (sm.count + 1) + 4 * sm.count;
                let s = self.image_size as u32;
                let img = crate::decode::decode_square(&sm.map[base + o0..base + o1], s).map_err(
                    |msg| DataError::Image {
                        path: sm.path.join(format!("#{j}")),
                        msg,
                    },
                )?;
                Ok(Cow::Owned(img))
            }
        }
    }
}

/// A prepared-data directory: manifest, memory-mapped shards and statistics.
#[derive(Debug)]
pub struct Dataset {
    /// The manifest as read.
    pub manifest: Manifest,
    /// Mean image and PCA eigen-decomposition of the training split.
    pub stats: Stats,
    /// Directory it was opened from.
    pub dir: PathBuf,
    train: SplitData,
    val: SplitData,
}

impl Dataset {
    /// Opens `dir` (with `manifest.json`, shards and statistics), validating each shard's header and
    /// size against the manifest. Checksums are not read here (see `prepare::verify`).
    pub fn open(dir: &Path) -> Result<Dataset, DataError> {
        let manifest = Manifest::load(dir)?;
        let train = SplitData::open(dir, &manifest, &manifest.splits.train.shards)?;
        let val = SplitData::open(dir, &manifest, &manifest.splits.val.shards)?;
        let stats = Stats::load(dir, &manifest)?;
        Ok(Dataset {
            manifest,
            stats,
            dir: dir.to_path_buf(),
            train,
            val,
        })
    }

    /// The records of a split.
    pub fn split(&self, split: Split) -> &SplitData {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }

    /// S (records are S x S x 3).
    pub fn image_size(&self) -> usize {
        self.manifest.image_size as usize
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.manifest.classes.len()
    }
}
