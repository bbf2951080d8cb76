//! Softmax cross-entropy with mean reduction.

use crate::error::{check_len, LayerError};
use alexnet_tensor::gemm::Float;

/// Returns the mean loss over the batch and writes `dlogits = (softmax - onehot) / N`.
/// logits, dlogits: (N, C); labels: (N) in [0, C).
pub fn softmax_cross_entropy<T: Float>(
    logits: &[T],
    labels: &[u32],
    dlogits: &mut [T],
    classes: usize,
) -> Result<T, LayerError> {
    let n = labels.len();
    let d = || format!("logits ({n},{classes})");
    check_len(
        "softmax_cross_entropy",
        "logits",
        logits.len(),
        n * classes,
        d,
    )?;
    check_len(
        "softmax_cross_entropy",
        "dlogits",
        dlogits.len(),
        n * classes,
        d,
    )?;
    if n == 0 {
        return Err(LayerError::Param {
            op: "softmax_cross_entropy",
            detail: "empty batch".into(),
        });
    }
    let inv_n = T::one() / T::of(n as f64);
    let mut total = 0.0f64;
    for (bi, (row, drow)) in logits
        .chunks(classes)
        .zip(dlogits.chunks_mut(classes))
        .enumerate()
    {
        let label = labels[bi] as usize;
        if label >= classes {
            return Err(LayerError::Param {
                op: "softmax_cross_entropy",
                detail: format!("label {label} of sample {bi} is not below {classes} classes"),
            });
        }
        let max = row
            .iter()
            .fold(T::neg_infinity(), |m, &v| if v > m { v } else { m });
        let mut sum = T::zero();
        for (dv, &v) in drow.iter_mut().zip(row) {
            *dv = (v - max).exp();
            sum = sum + *dv;
        }
        // loss_b = logsumexp - logit[label] = ln(sum) + max - logit[label]
        total += (sum.ln() + max - row[label]).to_f64().unwrap_or(f64::NAN);
        let inv = T::one() / sum;
        for dv in drow.iter_mut() {
            *dv = *dv * inv * inv_n;
        }
        drow[label] = drow[label] - inv_n;
    }
    Ok(T::of(total / n as f64))
}

/// Softmax of each row (for evaluation), numerically stable.
pub fn softmax_rows(logits: &[f32], classes: usize) -> Vec<f32> {
    let mut out = logits.to_vec();
    for row in out.chunks_mut(classes) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        row.iter_mut().for_each(|v| *v /= sum);
    }
    out
}
