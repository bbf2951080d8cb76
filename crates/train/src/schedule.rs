//! Learning-rate schedules: the paper's "divide by 10 when the validation error stops
//! improving" (`plateau`), or fixed steps (`step:E1,E2,...`: divide by 10 at those epochs).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// A schedule and its state (saved in checkpoints, so a resumed run continues it exactly).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub kind: ScheduleKind,
    /// Current learning rate.
    pub lr: f64,
    /// Best validation top-1 error so far (plateau).
    pub best: Option<f64>,
    /// Epochs since `best` improved (plateau).
    pub stale: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ScheduleKind {
    /// Divide by 10 after `patience` epochs without a better validation error.
    Plateau { patience: usize },
    /// Divide by 10 at the start of each listed epoch (1-based epoch numbers).
    Step { epochs: Vec<usize> },
}

impl Schedule {
    /// Parses `plateau`, `plateau:P` or `step:E1,E2,...`.
    pub fn parse(s: &str, lr: f64) -> Result<Schedule> {
        let kind = if s == "plateau" {
            ScheduleKind::Plateau { patience: 1 }
        } else if let Some(p) = s.strip_prefix("plateau:") {
            match p.parse() {
                Ok(patience) => ScheduleKind::Plateau { patience },
                Err(_) => bail!("--schedule {s}: expected plateau:PATIENCE (an integer)"),
            }
        } else if let Some(list) = s.strip_prefix("step:") {
            let epochs: Result<Vec<usize>, _> = list.split(',').map(|e| e.trim().parse()).collect();
            match epochs {
                Ok(e) if !e.is_empty() => ScheduleKind::Step { epochs: e },
                _ => bail!("--schedule {s}: expected step:E1,E2,... (epoch numbers)"),
            }
        } else {
            bail!("--schedule {s}: expected plateau, plateau:PATIENCE or step:E1,E2,...");
        };
        if !(lr > 0.0 && lr.is_finite()) {
            bail!("--lr {lr}: must be a positive number");
        }
        Ok(Schedule {
            kind,
            lr,
            best: None,
            stale: 0,
        })
    }

    /// Updates the state after epoch `epoch` (1-based) with its validation top-1 error;
    /// returns the learning rate for the next epoch.
    pub fn end_epoch(&mut self, epoch: usize, val_err: f64) -> f64 {
        match &self.kind {
            ScheduleKind::Plateau { patience } => {
                // "Stops improving": no gain of at least 0.1 percentage point.
                if self.best.is_none_or(|b| val_err < b - 1e-3) {
                    self.best = Some(val_err);
                    self.stale = 0;
                } else {
                    self.stale += 1;
                    if self.stale >= *patience {
                        self.lr /= 10.0;
                        self.stale = 0;
                    }
                }
            }
            ScheduleKind::Step { epochs } => {
                if epochs.contains(&(epoch + 1)) {
                    self.lr /= 10.0;
                }
            }
        }
        self.lr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plateau_divides_after_a_stall() {
        let mut s = Schedule::parse("plateau", 0.01).unwrap();
        assert_eq!(s.end_epoch(1, 0.5), 0.01);
        assert_eq!(s.end_epoch(2, 0.4), 0.01);
        assert!((s.end_epoch(3, 0.4005) - 0.001).abs() < 1e-12);
        assert!((s.end_epoch(4, 0.3) - 0.001).abs() < 1e-12);
    }

    #[test]
    fn step_and_bad_flags() {
        let mut s = Schedule::parse("step:3,5", 0.1).unwrap();
        assert_eq!(s.end_epoch(1, 0.0), 0.1);
        assert!((s.end_epoch(2, 0.0) - 0.01).abs() < 1e-12);
        assert!((s.end_epoch(4, 0.0) - 0.001).abs() < 1e-12);
        assert!(Schedule::parse("step:", 0.1).is_err());
        assert!(Schedule::parse("cosine", 0.1)
            .unwrap_err()
            .to_string()
            .contains("--schedule"));
        assert!(Schedule::parse("plateau", -1.0).is_err());
    }
}
