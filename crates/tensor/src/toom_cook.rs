//! The Toom-Cook matrices of Winograd's minimal filtering algorithm F(m x m, r x r), shared by
//! the CPU convolutions (`alexnet-layers`' winograd module) and the CUDA ones (`alexnet-cuda`'s
//! `ops::winograd`), so that both devices transform with the same coefficients.
//!
//! With a = m + r - 1, a filter g (r x r), an input patch d (a x a) and an output tile y
//! (m x m): `y = A^T [(G g G^T) . (B^T d B)] A` (`.` elementwise). Lavin & Gray, "Fast
//! Algorithms for Convolutional Neural Networks" (2016).

/// The matrices of F(m, r) in f64, row-major: `at` = A^T (m, a), `g` = G (a, r),
/// `bt` = B^T (a, a).
#[derive(Clone, Debug, PartialEq)]
pub struct ToomCook {
    /// Outputs per tile side (the m of F(m x m, r x r)), filter side r, tile side a = m + r - 1.
    pub m: usize,
    pub r: usize,
    pub a: usize,
    pub at: Vec<f64>,
    pub g: Vec<f64>,
    pub bt: Vec<f64>,
}

/// The interpolation points, in the order they are taken (then infinity): at most 7 finite
/// points, so a = m + r - 1 <= 8.
pub const POINTS: [f64; 7] = [0.0, 1.0, -1.0, 2.0, -0.5, -2.0, 0.5];

impl ToomCook {
    /// F(m, r) by Toom-Cook on a - 1 of [`POINTS`] and infinity: with the a x a Vandermonde
    /// matrix W (row i = powers of point i; the last row, for infinity, picks the leading
    /// coefficient), `G` = W's first r columns, `A^T` = W's first m columns transposed, and
    /// `B^T = W^-T`, so that the linear convolution `s = W^-1 [(G g) . (W_2 h)]` transposes
    /// into the correlation `y = A^T [(G g) . (B^T d)]`. Exact in f64 for these small integers
    /// and their inverse's fractions. `None` unless m, r >= 1 and a <= 8.
    pub fn new(m: usize, r: usize) -> Option<ToomCook> {
        let a = (r + m).checked_sub(1)?;
        if m == 0 || r == 0 || a > POINTS.len() + 1 {
            return None;
        }
        // 2 and -1/2 rather than +-2: f32 errors of F(2, 5) 0.6-0.7x those of +-2 (layers'
        // tests). 2 and -1/2 before -2 and 1/2: F(4, 3)'s f32 errors with 0, +-1, 2, -1/2 are
        // 0.8x those with 0, +-1, +-2 (Lavin's) and 0.7x those with 0, +-1, +-1/2.
        // W (a, a): rows for the a - 1 finite points, then infinity.
        let w = |i: usize, j: usize| -> f64 {
            if i + 1 == a {
                if j + 1 == a {
                    1.0
                } else {
                    0.0
                }
            } else {
                POINTS[i].powi(j as i32)
            }
        };
        // The truncated Vandermonde W_k (a, k): finite rows as W's, infinity picks the
        // coefficient of degree k - 1.
        let wk = |k: usize, i: usize, j: usize| -> f64 {
            if i + 1 == a {
                if j + 1 == k {
                    1.0
                } else {
                    0.0
                }
            } else {
                w(i, j)
            }
        };
        let inv = invert((0..a * a).map(|e| w(e / a, e % a)).collect(), a);
        // B^T = W^-T (B^T[i][j] = W^-1[j][i]), each row i scaled by d_i so that its smallest
        // nonzero entry is +-1, and row i of G by 1 / d_i (the product's factor i is
        // unchanged): the data transforms then mostly add and subtract, and the divisions
        // land in G, applied once per filter (for r = 3 this gives Lavin's matrices).
        let bt: Vec<f64> = (0..a * a).map(|e| inv[(e % a) * a + e / a]).collect();
        let d: Vec<f64> = (0..a)
            .map(|i| {
                let row = &bt[i * a..(i + 1) * a];
                let min = row
                    .iter()
                    .filter(|v| **v != 0.0)
                    .fold(f64::INFINITY, |m, v| m.min(v.abs()));
                1.0 / min
            })
            .collect();
        Some(ToomCook {
            m,
            r,
            a,
            at: (0..m * a).map(|e| wk(m, e % a, e / a)).collect(),
            g: (0..a * r).map(|e| wk(r, e / r, e % r) / d[e / r]).collect(),
            bt: (0..a * a).map(|e| bt[e] * d[e / a]).collect(),
        })
    }
}

/// The inverse of the n x n matrix `m` (row-major) by Gauss-Jordan elimination with partial
/// pivoting; `m` is a Vandermonde matrix on distinct points, so it is invertible.
fn invert(mut m: Vec<f64>, n: usize) -> Vec<f64> {
    let mut inv: Vec<f64> = (0..n * n)
        .map(|e| if e / n == e % n { 1.0 } else { 0.0 })
        .collect();
    for col in 0..n {
        let piv = (col..n)
            .max_by(|&i, &j| m[i * n + col].abs().total_cmp(&m[j * n + col].abs()))
            .unwrap_or(col);
        for j in 0..n {
            m.swap(col * n + j, piv * n + j);
            inv.swap(col * n + j, piv * n + j);
        }
        let d = m[col * n + col];
        for j in 0..n {
            m[col * n + j] /= d;
            inv[col * n + j] /= d;
        }
        for i in (0..n).filter(|&i| i != col) {
            let f = m[i * n + col];
            if f != 0.0 {
                for j in 0..n {
                    m[i * n + j] -= f * m[col * n + j];
                    inv[i * n + j] -= f * inv[col * n + j];
                }
            }
        }
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1D correlation of d (a) with g (r) through the matrices: A^T [(G g) . (B^T d)].
    fn winograd_1d(t: &ToomCook, d: &[f64], g: &[f64]) -> Vec<f64> {
        let a = t.a;
        let gg: Vec<f64> = (0..a)
            .map(|i| (0..t.r).map(|k| t.g[i * t.r + k] * g[k]).sum())
            .collect();
        let bd: Vec<f64> = (0..a)
            .map(|i| (0..a).map(|k| t.bt[i * a + k] * d[k]).sum())
            .collect();
        (0..t.m)
            .map(|i| (0..a).map(|k| t.at[i * a + k] * gg[k] * bd[k]).sum())
            .collect()
    }

    #[test]
    fn every_tile_computes_the_correlation() {
        for (m, r) in [(2, 3), (4, 3), (6, 3), (2, 5), (4, 5), (3, 2), (1, 1)] {
            let t = ToomCook::new(m, r).unwrap();
            let d: Vec<f64> = (0..t.a).map(|i| (i as f64 * 0.7).sin() + 0.3).collect();
            let g: Vec<f64> = (0..r).map(|i| (i as f64 * 1.3).cos() - 0.2).collect();
            let got = winograd_1d(&t, &d, &g);
            for (i, y) in got.iter().enumerate() {
                let want: f64 = (0..r).map(|k| d[i + k] * g[k]).sum();
                assert!((y - want).abs() < 1e-12, "F({m}, {r}) y[{i}] {y} vs {want}");
            }
        }
    }

    #[test]
    fn lavins_matrices_for_f2_3_and_sizes_checked() {
        let t = ToomCook::new(2, 3).unwrap();
        // Lavin & Gray's matrices for F(2, 3) (points 0, 1, -1 and infinity), with the last
        // row of B^T and the last column of A^T negated (the product is unchanged).
        let bt = [
            1., 0., -1., 0., 0., 1., 1., 0., 0., -1., 1., 0., 0., -1., 0., 1.,
        ];
        assert_eq!(t.bt, bt);
        let g = [1., 0., 0., 0.5, 0.5, 0.5, 0.5, -0.5, 0.5, 0., 0., 1.];
        assert_eq!(t.g, g);
        assert_eq!(t.at, [1., 1., 1., 0., 0., 1., -1., 1.]);
        assert_eq!((t.at.len(), t.g.len(), t.bt.len()), (8, 12, 16));
        assert!(ToomCook::new(6, 4).is_none(), "a = 9 needs 8 finite points");
        assert!(ToomCook::new(0, 3).is_none());
    }
}
