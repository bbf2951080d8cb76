//! Training-split statistics: the per-pixel mean image and the RGB covariance eigen-decomposition
//! (for PCA lighting), computed in one pass over the training shards and stored beside them as
//! `stats.json` + `mean.bin`.

use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::manifest::Manifest;
use crate::shards::{crc_string, write_atomic, SplitData};

/// Default statistics JSON file name.
pub const STATS_FILE: &str = "stats.json";
/// Default mean-image file name (raw little-endian f32, S*S*3 HWC).
pub const MEAN_FILE: &str = "mean.bin";

/// Statistics of the training split.
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    /// Per-pixel mean image, S*S*3 HWC, 0..255 scale.
    pub mean: Vec<f32>,
    /// PCA-lighting eigenvalues, descending: `255 * eig(cov(rgb / 255))` = `eig(cov(rgb)) / 255`
    /// (the scale of the usual ImageNet constants 55.46, 4.794, 1.148, for images on 0..255).
    pub eigval: [f32; 3],
    /// Eigenvectors as COLUMNS (`eigvec[c][j]` = component c of eigenvector j), unit length, each
    /// signed so that its largest-magnitude component is positive.
    pub eigvec: [[f32; 3]; 3],
}

#[derive(Serialize, Deserialize)]
struct StatsJson {
    eigval: [f32; 3],
    eigvec: [[f32; 3]; 3],
    /// RGB covariance on the 0..255 scale (row-major 3x3).
    covariance: [[f64; 3]; 3],
    channel_mean: [f64; 3],
    pixels: u64,
    images: u64,
    mean_file: String,
    mean_checksum: String,
}

/// Symmetric 3x3 eigen-decomposition by cyclic Jacobi rotations. Returns eigenvalues in descending
/// order and the eigenvectors as columns (`v[c][j]`).
#[allow(clippy::needless_range_loop)] // explicit (row, col) indices mirror the math
pub fn jacobi_eigen(a: [[f64; 3]; 3]) -> ([f64; 3], [[f64; 3]; 3]) {
    let mut a = a;
    let mut v = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    for _sweep in 0..64 {
        let off = a[0][1].powi(2) + a[0][2].powi(2) + a[1][2].powi(2);
        let scale = (0..3).map(|i| a[i][i].powi(2)).sum::<f64>().max(1e-300);
        if off <= 1e-30 * scale {
            break;
        }
        for (p, q) in [(0, 1), (0, 2), (1, 2)] {
            if a[p][q].abs() < 1e-300 {
                continue;
            }
            let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
            let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
            let t = if theta == 0.0 { 1.0 } else { t };
            let c = 1.0 / (t * t + 1.0).sqrt();
            let s = t * c;
            // A <- J^T A J with J the rotation in the (p, q) plane.
            for k in 0..3 {
                let (akp, akq) = (a[k][p], a[k][q]);
                a[k][p] = c * akp - s * akq;
                a[k][q] = s * akp + c * akq;
            }
            for k in 0..3 {
                let (apk, aqk) = (a[p][k], a[q][k]);
                a[p][k] = c * apk - s * aqk;
                a[q][k] = s * apk + c * aqk;
            }
            for row in v.iter_mut() {
                let (vp, vq) = (row[p], row[q]);
                row[p] = c * vp - s * vq;
                row[q] = s * vp + c * vq;
            }
        }
    }
    let mut order = [0usize, 1, 2];
    order.sort_by(|&i, &j| a[j][j].total_cmp(&a[i][i]));
    let mut vals = [0.0; 3];
    let mut vecs = [[0.0; 3]; 3];
    for (jn, &jo) in order.iter().enumerate() {
        vals[jn] = a[jo][jo];
        let mut col = [v[0][jo], v[1][jo], v[2][jo]];
        let big = col
            .iter()
            .copied()
            .fold(0.0f64, |m, x| if x.abs() > m.abs() { x } else { m });
        if big < 0.0 {
            col.iter_mut().for_each(|x| *x = -*x);
        }
        for c in 0..3 {
            vecs[c][jn] = col[c];
        }
    }
    (vals, vecs)
}

struct Acc {
    sum: Vec<u64>,
    s: [u64; 3],
    ss: [u64; 6],
    images: u64,
}

impl Acc {
    fn new(n: usize) -> Self {
        Acc {
            sum: vec![0; n],
            s: [0; 3],
            ss: [0; 6],
            images: 0,
        }
    }
    fn add(&mut self, px: &[u8]) {
        let mut ss = [0u64; 6];
        let mut s = [0u64; 3];
        for (dst, p) in self.sum.chunks_exact_mut(3).zip(px.chunks_exact(3)) {
            let (r, g, b) = (p[0] as u64, p[1] as u64, p[2] as u64);
            dst[0] += r;
            dst[1] += g;
            dst[2] += b;
            s[0] += r;
            s[1] += g;
            s[2] += b;
            ss[0] += r * r;
            ss[1] += r * g;
            ss[2] += r * b;
            ss[3] += g * g;
            ss[4] += g * b;
            ss[5] += b * b;
        }
        self.s.iter_mut().zip(s).for_each(|(a, b)| *a += b);
        self.ss.iter_mut().zip(ss).for_each(|(a, b)| *a += b);
        self.images += 1;
    }
    fn merge(mut self, o: Acc) -> Acc {
        self.sum.iter_mut().zip(&o.sum).for_each(|(a, b)| *a += b);
        (0..3).for_each(|k| self.s[k] += o.s[k]);
        (0..6).for_each(|k| self.ss[k] += o.ss[k]);
        self.images += o.images;
        self
    }
}

/// Statistics plus the 0..255 RGB covariance and channel means.
pub type StatsWithMoments = (Stats, [[f64; 3]; 3], [f64; 3]);

/// Computes the statistics of a split in one parallel pass. Also returns the 0..255 covariance
/// and the per-channel means.
pub fn compute(split: &SplitData) -> Result<StatsWithMoments, DataError> {
    let s = split.image_size();
    let n = 3 * s * s;
    if split.is_empty() {
        return Err(DataError::InvalidArg(
            "cannot compute statistics of an empty split".into(),
        ));
    }
    let acc = (0..split.len())
        .into_par_iter()
        .try_fold(
            || Acc::new(n),
            |mut acc, i| -> Result<Acc, DataError> {
                acc.add(&split.image(i)?);
                Ok(acc)
            },
        )
        .try_reduce(|| Acc::new(n), |a, b| Ok(a.merge(b)))?;
    let images = acc.images as f64;
    let mean = acc
        .sum
        .iter()
        .map(|&x| (x as f64 / images) as f32)
        .collect();
    let pixels = acc.images as f64 * (s * s) as f64;
    let m = [0, 1, 2].map(|k| acc.s[k] as f64 / pixels);
    let e = |k: usize| acc.ss[k] as f64 / pixels;
    let c01 = e(1) - m[0] * m[1];
    let c02 = e(2) - m[0] * m[2];
    let c12 = e(4) - m[1] * m[2];
    let cov = [
        [e(0) - m[0] * m[0], c01, c02],
        [c01, e(3) - m[1] * m[1], c12],
        [c02, c12, e(5) - m[2] * m[2]],
    ];
    let (vals, vecs) = jacobi_eigen(cov);
    let stats = Stats {
        mean,
        eigval: vals.map(|x| (x.max(0.0) / 255.0) as f32),
        eigvec: vecs.map(|r| r.map(|x| x as f32)),
    };
    Ok((stats, cov, m))
}

/// Computes and writes `stats.json` + `mean.bin` for the training split into `dir`.
pub fn compute_and_save(split: &SplitData, dir: &Path) -> Result<Stats, DataError> {
    let (stats, cov, m) = compute(split)?;
    let bytes: Vec<u8> = stats.mean.iter().flat_map(|x| x.to_le_bytes()).collect();
    write_atomic(&dir.join(MEAN_FILE), &bytes)?;
    let s = split.image_size() as u64;
    let js = StatsJson {
        eigval: stats.eigval,
        eigvec: stats.eigvec,
        covariance: cov,
        channel_mean: m,
        pixels: split.len() as u64 * s * s,
        images: split.len() as u64,
        mean_file: MEAN_FILE.into(),
        mean_checksum: crc_string(&bytes),
    };
    let path = dir.join(STATS_FILE);
    let text = serde_json::to_vec_pretty(&js).map_err(|e| DataError::json(&path, e))?;
    write_atomic(&path, &text)?;
    Ok(stats)
}

impl Stats {
    /// Loads the statistics named by the manifest from `dir`.
    pub fn load(dir: &Path, m: &Manifest) -> Result<Stats, DataError> {
        let path = dir.join(&m.stats.file);
        let bad = |msg: String| DataError::BadStats {
            path: path.clone(),
            msg,
        };
        let text = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
        let js: StatsJson = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        let mpath = dir.join(&m.stats.mean);
        let bytes = std::fs::read(&mpath).map_err(|e| DataError::BadStats {
            path: mpath.clone(),
            msg: e.to_string(),
        })?;
        let n = 3 * (m.image_size as usize).pow(2);
        if bytes.len() != 4 * n || crc_string(&bytes) != js.mean_checksum {
            return Err(DataError::BadStats {
                path: mpath,
                msg: format!(
                    "{} bytes (expected {}) or checksum mismatch",
                    bytes.len(),
                    4 * n
                ),
            });
        }
        let mean = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Stats {
            mean,
            eigval: js.eigval,
            eigvec: js.eigvec,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_known_matrix() {
        // Eigen-decomposition of [[2,1,0],[1,2,0],[0,0,5]]: 5 (e3), 3 ((1,1,0)/sqrt2), 1.
        let (vals, v) = jacobi_eigen([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 5.0]]);
        assert!((vals[0] - 5.0).abs() < 1e-12 && (vals[1] - 3.0).abs() < 1e-12);
        assert!((vals[2] - 1.0).abs() < 1e-12);
        let h = 0.5f64.sqrt();
        assert!((v[2][0] - 1.0).abs() < 1e-12);
        assert!((v[0][1] - h).abs() < 1e-12 && (v[1][1] - h).abs() < 1e-12);
        assert!((v[0][2].abs() - h).abs() < 1e-12 && (v[0][2] + v[1][2]).abs() < 1e-12);
    }

    #[test]
    fn jacobi_reconstructs_random_spd() {
        let a = [[4.0, 1.5, 0.7], [1.5, 3.0, -0.4], [0.7, -0.4, 1.2]];
        let (vals, v) = jacobi_eigen(a);
        assert!(vals[0] >= vals[1] && vals[1] >= vals[2]);
        for i in 0..3 {
            for j in 0..3 {
                let r: f64 = (0..3).map(|k| v[i][k] * vals[k] * v[j][k]).sum();
                assert!((r - a[i][j]).abs() < 1e-10, "{i}{j}: {r} vs {}", a[i][j]);
            }
        }
    }
}
