//! `RUN/cudnn_algos.json`: the cuDNN algorithms a run timed (`ALEXNET_CUDNN_ALGO=timed`).
//! Timing can pick other algorithms in another process, and other algorithms round
//! differently, so a resumed run pins the picks of the processes before it: with them, a timed
//! run killed and resumed ends bit-identical to an uninterrupted one, as heuristic runs do.
//! The file grows as new shapes are timed (evaluation batches, a later ensemble member).

use alexnet_cuda::ops::conv_cudnn::TimedPick;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The file of the run in `run`.
pub fn path(run: &Path) -> PathBuf {
    run.join("cudnn_algos.json")
}

/// The picks in `path`; none when it does not exist.
pub fn read(path: &Path) -> Result<Vec<TimedPick>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not a list of cuDNN algorithm picks (delete it to time them again)",
            path.display()
        )
    })
}

/// `old` with `new` added: a pick for a (shape, precision, layout) already there is replaced.
/// Sorted, so the file's text depends only on its contents.
pub fn merge(old: Vec<TimedPick>, new: &[TimedPick]) -> Vec<TimedPick> {
    let key = |p: &TimedPick| (p.shape, p.precision.clone(), p.nhwc);
    let mut out: Vec<TimedPick> = old
        .into_iter()
        .filter(|o| !new.iter().any(|n| key(n) == key(o)))
        .chain(new.iter().cloned())
        .collect();
    out.sort_by_key(key);
    out
}

/// Adds `new` to the file at `path` (written atomically, and only when something changed).
pub fn record(path: &Path, new: &[TimedPick]) -> Result<()> {
    if new.is_empty() {
        return Ok(());
    }
    let old = read(path)?;
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
        let p = path(&dir);
        let _ = std::fs::remove_file(&p);
        assert!(read(&p).unwrap().is_empty());
        record(&p, &[pick(256, "tf32", [1, 1, 1])]).unwrap();
        record(
            &p,
            &[pick(192, "tf32", [6, 0, 3]), pick(256, "f32", [0, 0, 0])],
        )
        .unwrap();
        // The same key again replaces its algorithms.
        record(&p, &[pick(256, "tf32", [2, 1, 1])]).unwrap();
        let got = read(&p).unwrap();
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
        let e = format!("{:#}", read(&p).unwrap_err());
        assert!(
            e.contains("cudnn_algos.json") && e.contains("delete it"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
