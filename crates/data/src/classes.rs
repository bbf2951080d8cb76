//! The ILSVRC-2012 class table (`data/classes.tsv`, embedded at build time).

use std::sync::OnceLock;

use crate::error::DataError;

const TABLE: &str = include_str!("../../../data/classes.tsv");

/// One row of `data/classes.tsv`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassRow {
    /// Label we train with: position of the wnid in sorted order (0..999).
    pub index: u32,
    /// WordNet id, e.g. `n01440764`.
    pub wnid: String,
    /// The devkit's ILSVRC2012_ID (1..1000), used by the validation ground truth.
    pub ilsvrc2012_id: u32,
    /// First WordNet lemma, e.g. `tench`.
    pub name: String,
}

fn parse(text: &str) -> Result<Vec<ClassRow>, String> {
    let mut rows = Vec::with_capacity(1000);
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 4 {
            return Err(format!("line {}: expected 4 tab-separated fields", i + 1));
        }
        let num = |s: &str| {
            s.trim()
                .parse::<u32>()
                .map_err(|e| format!("line {}: {e}", i + 1))
        };
        rows.push(ClassRow {
            index: num(f[0])?,
            wnid: f[1].trim().to_string(),
            ilsvrc2012_id: num(f[2])?,
            name: f[3].split(',').next().unwrap_or("").trim().to_string(),
        });
    }
    Ok(rows)
}

/// The 1000 classes in label order.
pub fn table() -> Result<&'static [ClassRow], DataError> {
    static CELL: OnceLock<Result<Vec<ClassRow>, String>> = OnceLock::new();
    match CELL.get_or_init(|| parse(TABLE)) {
        Ok(v) => Ok(v.as_slice()),
        Err(msg) => Err(DataError::BadLabels {
            path: "data/classes.tsv".into(),
            line: 0,
            msg: msg.clone(),
        }),
    }
}

/// Looks a class up by wnid.
pub fn by_wnid(wnid: &str) -> Result<Option<&'static ClassRow>, DataError> {
    Ok(table()?.iter().find(|r| r.wnid == wnid))
}

/// Looks a class up by the devkit's ILSVRC2012_ID (1..1000).
pub fn by_devkit_id(id: u32) -> Result<Option<&'static ClassRow>, DataError> {
    Ok(table()?.iter().find(|r| r.ilsvrc2012_id == id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_facts() {
        let t = table().expect("embedded table parses");
        assert_eq!(t.len(), 1000);
        assert_eq!(t[0].wnid, "n01440764");
        assert_eq!(t[0].ilsvrc2012_id, 449);
        assert_eq!(t[0].name, "tench");
        assert_eq!(
            by_devkit_id(1).ok().flatten().map(|r| r.wnid.as_str()),
            Some("n02119789")
        );
        assert!(t.windows(2).all(|w| w[0].wnid < w[1].wnid));
    }
}
