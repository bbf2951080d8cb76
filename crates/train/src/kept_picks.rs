//! Timed picks a run keeps, one JSON file each: `RUN/cudnn_algos.json`, the cuDNN algorithms a
//! run timed (`ALEXNET_CUDNN_ALGO=timed`), and `RUN/conv_picks.json`, the implementation each
//! convolution call was timed fastest on (`--conv timed`). Timing can pick otherwise in another
//! process, and other picks round differently, so a resumed run pins the picks of the processes
//! before it: with them, a timed run killed and resumed ends bit-identical to an uninterrupted
//! one, as heuristic runs do. A file grows as new shapes are timed (evaluation batches, a later
//! ensemble member).

use alexnet_cuda::ops::conv_cudnn::TimedPick;
use alexnet_cuda::ops::conv_route::ConvPick;
use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A kind of pick a run keeps in a file of its own.
pub trait Kept: Serialize + DeserializeOwned + Clone + PartialEq {
    /// The file's name in the run folder.
    const FILE: &'static str;
    /// What the file lists, for errors.
    const WHAT: &'static str;
    /// What one pick is for: a new pick replaces the old one with the same key.
    type Key: Ord;
    fn key(&self) -> Self::Key;
}

impl Kept for TimedPick {
    const FILE: &'static str = "cudnn_algos.json";
    const WHAT: &'static str = "cuDNN algorithm picks";
    type Key = ([usize; 9], String, bool);
    fn key(&self) -> Self::Key {
        (self.shape, self.precision.clone(), self.nhwc)
    }
}

impl Kept for ConvPick {
    const FILE: &'static str = "conv_picks.json";
    const WHAT: &'static str = "convolution implementation picks";
    type Key = ([usize; 9], String, String);
    fn key(&self) -> Self::Key {
        (self.shape, self.precision.clone(), self.call.clone())
    }
}

/// The file of picks `T` of the run in `run`.
pub fn path<T: Kept>(run: &Path) -> PathBuf {
    run.join(T::FILE)
}

/// The picks in `path`; none when it does not exist.
pub fn read<T: Kept>(path: &Path) -> Result<Vec<T>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not a list of {} (delete it to time them again)",
            path.display(),
            T::WHAT
        )
    })
}

/// `old` with `new` added: a pick with the key of one already there replaces it. Sorted by
/// key, so the file's text depends only on its contents.
pub fn merge<T: Kept>(old: Vec<T>, new: &[T]) -> Vec<T> {
    let mut out: Vec<T> = old
        .into_iter()
        .filter(|o| !new.iter().any(|n| n.key() == o.key()))
        .chain(new.iter().cloned())
        .collect();
    out.sort_by_key(|p| p.key());
    out
}

/// Adds `new` to the file at `path` (written atomically, and only when something changed).
pub fn record<T: Kept>(path: &Path, new: &[T]) -> Result<()> {
    if new.is_empty() {
        return Ok(());
    }
    let old = read::<T>(path)?;
    let all = merge(old.clone(), new);
    if all == old {
        return Ok(());
    }
    let text = serde_json::to_string_pretty(&all)?;
    alexnet_tensor::io::write_atomic(path, text.as_bytes())
        .with_context(|| format!("{}: cannot write", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(c: usize, precision: &str, algos: [u32; 3]) -> TimedPick {
        TimedPick {
            shape: [128, c, 13, 13, 384, 3, 1, 1, 1],
            precision: precision.into(),
            nhwc: false,
            algos,
        }
    }

    #[test]
    fn picks_accumulate_replace_and_round_trip() {
        let dir = std::env::temp_dir().join(format!("cudnn-algos-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = path::<TimedPick>(&dir);
        let _ = std::fs::remove_file(&p);
        assert!(read::<TimedPick>(&p).unwrap().is_empty());
        record(&p, &[pick(256, "tf32", [1, 1, 1])]).unwrap();
        record(
            &p,
            &[pick(192, "tf32", [6, 0, 3]), pick(256, "f32", [0, 0, 0])],
        )
        .unwrap();
        // The same key again replaces its algorithms.
        record(&p, &[pick(256, "tf32", [2, 1, 1])]).unwrap();
        let got = read::<TimedPick>(&p).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[0],
            pick(192, "tf32", [6, 0, 3]),
            "sorted by shape first"
        );
        assert!(got.contains(&pick(256, "tf32", [2, 1, 1])));
        assert!(got.contains(&pick(256, "f32", [0, 0, 0])));
        // Nothing new: the file is left as it is.
        let before = std::fs::metadata(&p).unwrap().modified().unwrap();
        record(&p, &[pick(256, "f32", [0, 0, 0])]).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().modified().unwrap(), before);
        // A damaged file is a one-line error naming the file and the fix.
        std::fs::write(&p, "{ not json").unwrap();
        let e = format!("{:#}", read::<TimedPick>(&p).unwrap_err());
        assert!(
            e.contains("cudnn_algos.json") && e.contains("delete it"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn conv_picks_keep_one_implementation_per_call() {
        let dir = std::env::temp_dir().join(format!("conv-picks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = path::<ConvPick>(&dir);
        assert!(p.ends_with("conv_picks.json"));
        let _ = std::fs::remove_file(&p);
        let pick = |call: &str, conv: &str| ConvPick {
            shape: [128, 96, 27, 27, 256, 5, 1, 2, 2],
            precision: "tf32".into(),
            call: call.into(),
            conv: conv.into(),
            times_ms: vec![(conv.into(), 0.5)],
            failed: Vec::new(),
        };
        record(
            &p,
            &[pick("forward", "winograd"), pick("backward", "cudnn")],
        )
        .unwrap();
        // Forward again with another pick replaces it; backward stays.
        record(&p, &[pick("forward", "im2col")]).unwrap();
        let got = read::<ConvPick>(&p).unwrap();
        assert_eq!(
            got,
            vec![pick("backward", "cudnn"), pick("forward", "im2col")]
        );
        std::fs::write(&p, "[1, 2]").unwrap();
        let e = format!("{:#}", read::<ConvPick>(&p).unwrap_err());
        assert!(
            e.contains("conv_picks.json") && e.contains("convolution implementation"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
