//! Fashion-MNIST IDX files (as Debian's `dataset-fashion-mnist` installs them, gzipped or not).

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::DataError;

/// The 10 Fashion-MNIST class names, label order.
pub const NAMES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// One split: `count` grey images of `rows x cols` (row-major u8) and their labels.
#[derive(Debug)]
pub struct IdxSplit {
    /// Image height.
    pub rows: usize,
    /// Image width.
    pub cols: usize,
    /// `count * rows * cols` grey pixels.
    pub pixels: Vec<u8>,
    /// `count` labels (0..9).
    pub labels: Vec<u8>,
}

impl IdxSplit {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True if there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

fn find(dir: &Path, stem: &str) -> Result<PathBuf, DataError> {
    for name in [format!("{stem}.gz"), stem.to_string()] {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(DataError::SourceEmpty {
        path: dir.to_path_buf(),
        expected: format!("{stem}(.gz) (install dataset-fashion-mnist or pass its directory)"),
    })
}

fn read_all(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .take(1 << 30)
            .read_to_end(&mut out)
            .map_err(|e| DataError::Idx {
                path: path.to_path_buf(),
                msg: format!("gzip: {e}"),
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an IDX file: returns the dimensions and the payload (u8 data only).
pub fn parse_idx(path: &Path, bytes: &[u8]) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let bad = |msg: String| DataError::Idx {
        path: path.to_path_buf(),
        msg,
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("missing IDX magic".into()));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!(
            "element type 0x{:02x}, expected 0x08 (u8)",
            bytes[2]
        )));
    }
    let nd = bytes[3] as usize;
    let head = 4 + 4 * nd;
    if bytes.len() < head {
        return Err(bad("truncated header".into()));
    }
    let dims: Vec<usize> = (0..nd)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let n: usize = dims.iter().product();
    if bytes.len() != head + n {
        return Err(bad(format!(
            "{} data bytes, header says {n}",
            bytes.len() - head
        )));
    }
    Ok((dims, bytes[head..].to_vec()))
}

/// Loads `train` (`train-*`) or `t10k` (`t10k-*`) from `dir`.
pub fn load(dir: &Path, prefix: &str) -> Result<IdxSplit, DataError> {
    let ip = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let lp = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let (idims, pixels) = parse_idx(&ip, &read_all(&ip)?)?;
    let (ldims, labels) = parse_idx(&lp, &read_all(&lp)?)?;
    if idims.len() != 3 || ldims.len() != 1 || idims[0] != ldims[0] {
        return Err(DataError::Idx {
            path: ip,
            msg: format!("dims {idims:?} do not match labels {ldims:?}"),
        });
    }
    if let Some(&l) = labels.iter().find(|&&l| l > 9) {
        return Err(DataError::Idx {
            path: lp,
            msg: format!("label {l} out of range 0..9"),
        });
    }
    Ok(IdxSplit {
        rows: idims[1],
        cols: idims[2],
        pixels,
        labels,
    })
}
