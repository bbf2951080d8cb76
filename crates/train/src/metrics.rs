//! Top-k errors and the metrics log (`metrics.jsonl`, one JSON object per line).

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// Number of samples whose label is not among the `k` highest scores of its row.
/// scores: (N, classes).
pub fn topk_misses(scores: &[f32], labels: &[u32], classes: usize, k: usize) -> usize {
    scores
        .chunks(classes)
        .zip(labels)
        .filter(|(row, &label)| {
            let target = row[label as usize];
            // Rank = number of classes scoring strictly higher (ties count in the label's favour).
            let higher = row.iter().filter(|&&v| v > target).count();
            higher >= k || target.is_nan()
        })
        .count()
}

/// Appends one JSON object as a line to `path`.
pub fn append_jsonl(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("{}: cannot open the metrics log", path.display()))?;
    writeln!(f, "{value}").with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}

/// Reads every line of a metrics log (skipping none: a bad line is an error naming it).
pub fn read_jsonl(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the metrics log", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not a JSON object", path.display(), i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topk_hand_cases() {
        // Row 0: label 2 is the best -> top-1 hit. Row 1: label 0 (0.5) is 2nd after 0.6.
        let s = [0.1, 0.2, 0.7, 0.0, 0.5, 0.3, 0.2, 0.6];
        assert_eq!(topk_misses(&s, &[2, 0], 4, 1), 1);
        assert_eq!(topk_misses(&s, &[2, 0], 4, 2), 0);
        // Row 1, label 2 (0.2) is 4th: a top-3 miss, a top-4 hit.
        assert_eq!(topk_misses(&s, &[2, 2], 4, 3), 1);
        assert_eq!(topk_misses(&s, &[2, 2], 4, 4), 0);
    }
}
