//! Probability averaging: over the views of one sample (the paper's 10-patch test) and over the
//! members of an ensemble (the paper's "5 CNNs" rows). Both are plain arithmetic means of softmax
//! probabilities.

pub use alexnet_train::evaluate::average_views;

/// Running mean of ensemble members' probabilities (all `(N, classes)` of the same length).
/// `mean()` after adding members `0..k` is the ensemble of size k.
#[derive(Clone, Debug, Default)]
pub struct EnsembleMean {
    sum: Vec<f64>,
    members: usize,
}

impl EnsembleMean {
    /// An empty ensemble.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one member's probabilities; a member of another length than the first is an error.
    pub fn add(&mut self, probs: &[f32]) -> anyhow::Result<()> {
        if self.members == 0 {
            self.sum = vec![0.0; probs.len()];
        } else if probs.len() != self.sum.len() {
            anyhow::bail!(
                "ensemble member {} has {} probabilities, the others {}",
                self.members,
                probs.len(),
                self.sum.len()
            );
        }
        self.sum
            .iter_mut()
            .zip(probs)
            .for_each(|(s, &p)| *s += p as f64);
        self.members += 1;
        Ok(())
    }

    /// Members added so far.
    pub fn len(&self) -> usize {
        self.members
    }

    /// True before the first member.
    pub fn is_empty(&self) -> bool {
        self.members == 0
    }

    /// The mean of the members added so far (f32). With one member it equals that member
    /// exactly.
    pub fn mean(&self) -> Vec<f32> {
        let k = self.members.max(1) as f64;
        self.sum.iter().map(|&s| (s / k) as f32).collect()
    }
}

/// The mean of several members' probabilities (see [`EnsembleMean`]).
pub fn average_models(members: &[&[f32]]) -> anyhow::Result<Vec<f32>> {
    let mut e = EnsembleMean::new();
    for m in members {
        e.add(m)?;
    }
    Ok(e.mean())
}

/// The `top` highest-probability classes of one row, best first: `(class, probability)`.
/// Ties keep the lower class index first.
pub fn top_k(row: &[f32], top: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.into_iter().take(top).map(|i| (i, row[i])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_hand_case() {
        // 1 sample, 2 views, 3 classes.
        let p = [0.2, 0.3, 0.5, 0.6, 0.3, 0.1];
        let a = average_views(&p, 2, 3);
        let want = [0.4, 0.3, 0.3];
        for (x, y) in a.iter().zip(want) {
            assert!((x - y).abs() < 1e-7);
        }
    }

    #[test]
    fn topk_order() {
        assert_eq!(
            top_k(&[0.1, 0.5, 0.1, 0.3], 3),
            vec![(1, 0.5), (3, 0.3), (0, 0.1)]
        );
    }
}
