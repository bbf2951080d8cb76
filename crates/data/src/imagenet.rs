//! Listing of ILSVRC-2012 source trees: class-folder train/val, or flat val with the devkit's
//! ground truth mapped through `data/classes.tsv`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::DataError;
use crate::manifest::{ClassEntry, Skipped};

/// One unit of input: a file (path relative to `root`) or an in-memory Fashion-MNIST image.
pub(crate) struct Item {
    pub(crate) rel: String,
    pub(crate) label: u32,
    pub(crate) key: String,
}

pub(crate) fn list_files(dir: &Path) -> Result<Vec<String>, DataError> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let e = e.map_err(|e| DataError::io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && e.path().is_file() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn subdirs(dir: &Path) -> Result<Vec<String>, DataError> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let e = e.map_err(|e| DataError::io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && e.path().is_dir() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn file_key(p: &Path) -> String {
    std::fs::metadata(p)
        .map(|m| m.len().to_string())
        .unwrap_or_default()
}

/// Lists an ImageNet-layout tree: classes, train items, val items, pre-ingestion skips.
pub(crate) type Listing = (
    Vec<ClassEntry>,
    Vec<Item>,
    Vec<Item>,
    Vec<Skipped>,
    Option<PathBuf>,
);

pub(crate) fn list_imagenet(dir: &Path, gt: Option<&Path>) -> Result<Listing, DataError> {
    if !dir.is_dir() {
        return Err(DataError::SourceMissing {
            path: dir.to_path_buf(),
        });
    }
    let expected = "train/<wnid>/*.JPEG (ILSVRC-2012 layout)".to_string();
    let tdir = dir.join("train");
    if !tdir.is_dir() {
        return Err(DataError::SourceEmpty {
            path: dir.to_path_buf(),
            expected,
        });
    }
    let wnids = subdirs(&tdir)?;
    let mut classes = Vec::new();
    let mut index = BTreeMap::new();
    for (i, w) in wnids.iter().enumerate() {
        let name = crate::classes::by_wnid(w)?
            .map(|r| r.name.clone())
            .unwrap_or(w.clone());
        classes.push(ClassEntry {
            index: i as u32,
            wnid: w.clone(),
            name,
        });
        index.insert(w.clone(), i as u32);
    }
    let mut train = Vec::new();
    for (i, w) in wnids.iter().enumerate() {
        for f in list_files(&tdir.join(w))? {
            let rel = format!("train/{w}/{f}");
            train.push(Item {
                key: file_key(&dir.join(&rel)),
                rel,
                label: i as u32,
            });
        }
    }
    if train.is_empty() {
        return Err(DataError::SourceEmpty {
            path: tdir,
            expected,
        });
    }
    let mut val = Vec::new();
    let mut skipped = Vec::new();
    let vdir = dir.join("val");
    let mut gt_used = None;
    if vdir.is_dir() {
        for w in subdirs(&vdir)? {
            for f in list_files(&vdir.join(&w))? {
                let rel = format!("val/{w}/{f}");
                match index.get(&w) {
                    Some(&label) => val.push(Item {
                        key: file_key(&dir.join(&rel)),
                        rel,
                        label,
                    }),
                    None => skipped.push(Skipped {
                        split: "val".into(),
                        path: rel,
                        reason: format!("class {w} has no train/ folder"),
                    }),
                }
            }
        }
        let flat = list_files(&vdir)?;
        if !flat.is_empty() {
            let gt_path = gt.map(Path::to_path_buf).unwrap_or_else(|| {
                dir.join("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt")
            });
            if !gt_path.is_file() {
                return Err(DataError::ValLabelsMissing {
                    path: vdir,
                    gt: gt_path,
                });
            }
            let ids = read_ground_truth(&gt_path)?;
            for f in flat {
                let rel = format!("val/{f}");
                let label = val_label(&f, &ids, &index)?;
                match label {
                    Ok(label) => val.push(Item {
                        key: file_key(&dir.join(&rel)),
                        rel,
                        label,
                    }),
                    Err(reason) => skipped.push(Skipped {
                        split: "val".into(),
                        path: rel,
                        reason,
                    }),
                }
            }
            gt_used = Some(gt_path);
        }
    }
    Ok((classes, train, val, skipped, gt_used))
}

type LabelResult = Result<u32, String>;

fn val_label(
    f: &str,
    ids: &[u32],
    index: &BTreeMap<String, u32>,
) -> Result<LabelResult, DataError> {
    let num = f
        .strip_prefix("ILSVRC2012_val_")
        .and_then(|r| r.split('.').next())
        .and_then(|n| n.parse::<usize>().ok());
    let Some(n) = num else {
        return Ok(Err(
            "flat val file name is not ILSVRC2012_val_<n>.<ext>".into()
        ));
    };
    let Some(&id) = n.checked_sub(1).and_then(|i| ids.get(i)) else {
        return Ok(Err(format!(
            "no ground-truth line {n} ({} lines)",
            ids.len()
        )));
    };
    let Some(row) = crate::classes::by_devkit_id(id)? else {
        return Ok(Err(format!(
            "ground-truth id {id} is not an ILSVRC2012_ID (1..1000)"
        )));
    };
    Ok(match index.get(&row.wnid) {
        Some(&l) => Ok(l),
        None => Err(format!(
            "label {} ({}) has no train/ folder",
            row.wnid, row.name
        )),
    })
}

/// Reads the devkit's validation ground truth: one ILSVRC2012_ID (1..1000) per line.
pub fn read_ground_truth(path: &Path) -> Result<Vec<u32>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let mut ids = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        match t.parse::<u32>() {
            Ok(id) if (1..=1000).contains(&id) => ids.push(id),
            _ => {
                return Err(DataError::BadLabels {
                    path: path.to_path_buf(),
                    line: i + 1,
                    msg: format!("expected an ILSVRC2012_ID 1..1000, got {t:?}"),
                })
            }
        }
    }
    Ok(ids)
}
