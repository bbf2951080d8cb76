//! f32 GEMM for few rows of C and a row-major B that is read once: the fully connected
//! layers' input gradient at small batch, `dx (N, in) = dy (N, out) x W (out, in)` with N = 32
//! (paper fc6: W is 151 MB). The gemm crate does not pack B for so few rows and runs its
//! kernel on W in place, 6 columns (24 bytes of a 36 KB row) at a time, down all 4096 rows:
//! every load is on another page and the prefetchers do not follow. Here B goes by blocks of
//! `KB` rows: each register tile reads 48 columns of them, the next tile the next 48, so each
//! of the block's rows is read front to back while it is in use (few enough rows for the
//! hardware prefetcher to follow them all), and each tile's B is used by every row group of C
//! while it is in L1. Paper fc6 input gradient, 2 threads: 41-48 ms in the gemm crate, 20-26
//! ms here (KB = 128: 44 ms, as slow as the gemm crate; 16: 22-27 ms).
//!
//! C (m x n) = alpha A (m x k) B (k x n) + beta C, with A at any strides and B, C row-major
//! (column stride 1).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Rows of B per block (a tile's B, 32 x 48 columns, is 6 KB).
const KB: usize = 32;
/// Rows of C per register tile: 8 x 3 accumulators of 16 lanes.
const MR: usize = 8;
/// Columns of C per register tile (three 16-lane vectors).
const NR: usize = 48;

/// Whether [`sgemm`] takes this GEMM: few rows, a long k and a wide row-major B and C, on a
/// CPU with AVX-512 (the paper's fc6 / fc7 / fc8 input gradients at batch <= 64).
pub fn applies(m: usize, k: usize, n: usize, csb: isize, csc: isize) -> bool {
    (1..=64).contains(&m)
        && k >= 1024
        && n >= 256
        && csb == 1
        && csc == 1
        && crate::simd::level() == crate::simd::Level::V4
}

/// `C = alpha A B + beta C` (C is not read when beta is 0).
///
/// # Safety
/// [`applies`] returned true for these sizes and strides (so the CPU has AVX-512F); every
/// element `a[i*rsa + p*csa]`, `b[p*rsb + j]`, `c[i*rsc + j]` (i < m, p < k, j < n) lies
/// inside its buffer, and C aliases neither A nor B.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
pub unsafe fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
) {
    // C = beta C first (zeros when beta is 0, never reading C); the blocks then add.
    for i in 0..m {
        // SAFETY: row i of C, n elements, inside C by the caller's contract.
        let row = unsafe { std::slice::from_raw_parts_mut(c.offset(i as isize * rsc), n) };
        if beta == 0.0 {
            row.fill(0.0);
        } else if beta != 1.0 {
            row.iter_mut().for_each(|e| *e *= beta);
        }
    }
    for p0 in (0..k).step_by(KB) {
        let kb = KB.min(k - p0);
        for j0 in (0..n).step_by(NR) {
            let masks = lane_masks(n - j0);
            for i0 in (0..m).step_by(MR) {
                let at = |i: usize, p: usize| i as isize * rsa + p as isize * csa;
                // SAFETY: the tile's rows i0.., columns j0.. (masked to n) and block rows p0..
                // lie inside A, B and C by the caller's contract.
                unsafe {
                    let (ap, bp) = (
                        a.offset(at(i0, p0)),
                        b.offset(p0 as isize * rsb + j0 as isize),
                    );
                    let cp = c.offset(i0 as isize * rsc + j0 as isize);
                    let t = Tile {
                        kb,
                        alpha,
                        a: ap,
                        rsa,
                        csa,
                        b: bp,
                        rsb,
                        c: cp,
                        rsc,
                        masks,
                    };
                    match m - i0 {
                        1 => tile::<1>(&t),
                        2 => tile::<2>(&t),
                        3 => tile::<3>(&t),
                        4 => tile::<4>(&t),
                        5 => tile::<5>(&t),
                        6 => tile::<6>(&t),
                        7 => tile::<7>(&t),
                        _ => tile::<MR>(&t),
                    }
                }
            }
        }
    }
}

/// Load masks of the tile's three 16-lane column vectors with `left` columns remaining.
fn lane_masks(left: usize) -> [u16; 3] {
    let lanes = |v: usize| left.saturating_sub(16 * v).min(16);
    // 16 lanes: all bits; fewer: the low `lanes` bits.
    [0, 1, 2].map(|v| ((1u32 << lanes(v)) - 1) as u16)
}

/// One register tile's operands: `a` at (i0, p0), `b` at (p0, j0), `c` at (i0, j0).
struct Tile {
    kb: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    c: *mut f32,
    rsc: isize,
    masks: [u16; 3],
}

/// C[R rows, 48 columns] += alpha A[R, kb] B[kb, 48]: R x 3 accumulators, one B row (three
/// masked loads) and R broadcasts of A per step of p.
///
/// # Safety
/// AVX-512F; every masked-in element of the tile lies inside its buffer (masked-out lanes are
/// neither read nor written: AVX-512 suppresses their faults).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tile<const R: usize>(t: &Tile) {
    let [m0, m1, m2] = t.masks;
    let mut acc = [[_mm512_setzero_ps(); 3]; R];
    for p in 0..t.kb {
        // SAFETY: row p of the block, its masked-in columns inside B (caller's contract).
        let (b0, b1, b2) = unsafe {
            let bp = t.b.offset(p as isize * t.rsb);
            (
                _mm512_maskz_loadu_ps(m0, bp),
                _mm512_maskz_loadu_ps(m1, bp.add(16)),
                _mm512_maskz_loadu_ps(m2, bp.add(32)),
            )
        };
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: element (i, p) of the tile's rows of A (caller's contract).
            let av =
                _mm512_set1_ps(unsafe { *t.a.offset(i as isize * t.rsa + p as isize * t.csa) });
            acc[0] = _mm512_fmadd_ps(av, b0, acc[0]);
            acc[1] = _mm512_fmadd_ps(av, b1, acc[1]);
            acc[2] = _mm512_fmadd_ps(av, b2, acc[2]);
        }
    }
    let al = _mm512_set1_ps(t.alpha);
    for (i, acc) in acc.iter().enumerate() {
        for (v, (&x, mask)) in acc.iter().zip([m0, m1, m2]).enumerate() {
            // SAFETY: row i of the tile's C, its masked-in columns (caller's contract).
            unsafe {
                let cp = t.c.offset(i as isize * t.rsc).add(16 * v);
                let cv = _mm512_maskz_loadu_ps(mask, cp);
                _mm512_mask_storeu_ps(cp, mask, _mm512_fmadd_ps(al, x, cv));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_an_f64_product_at_every_edge() {
        if crate::simd::level() != crate::simd::Level::V4 {
            println!("few_rows skipped: no AVX-512 on this CPU");
            return;
        }
        // Rows around the 8-row tile, columns around 48, k off the 32-row blocks; A
        // row-major and transposed; C wider than n (rsc > n) with NaN outside: untouched.
        for &(m, k, n) in &[
            (32, 1030, 300),
            (5, 1024, 257),
            (13, 1100, 48),
            (64, 1153, 95),
        ] {
            for ta in [false, true] {
                let a: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
                    .collect();
                let b: Vec<f32> = (0..k * n)
                    .map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0)
                    .collect();
                let (rsa, csa) = if ta { (1, m as isize) } else { (k as isize, 1) };
                let ldc = n + 3;
                for (alpha, beta) in [(1.0f32, 0.0f32), (0.5, 1.0), (2.0, -0.25)] {
                    let mut c = vec![f32::NAN; m * ldc];
                    for i in 0..m {
                        for j in 0..n {
                            c[i * ldc + j] = if beta == 0.0 {
                                f32::NAN
                            } else {
                                (i + j) as f32
                            };
                        }
                    }
                    // SAFETY: sizes and strides match the buffers; AVX-512 checked above.
                    unsafe {
                        sgemm(
                            m,
                            k,
                            n,
                            alpha,
                            a.as_ptr(),
                            rsa,
                            csa,
                            b.as_ptr(),
                            n as isize,
                            beta,
                            c.as_mut_ptr(),
                            ldc as isize,
                        )
                    };
                    for i in 0..m {
                        for j in 0..n {
                            let (mut s, mut mag) = (0.0f64, 0.0f64);
                            for p in 0..k {
                                let av = a[(i as isize * rsa + p as isize * csa) as usize];
                                s += av as f64 * b[p * n + j] as f64;
                                mag += (av as f64 * b[p * n + j] as f64).abs();
                            }
                            let c0 = if beta == 0.0 { 0.0 } else { (i + j) as f64 };
                            let want = alpha as f64 * s + beta as f64 * c0;
                            let got = c[i * ldc + j] as f64;
                            let tol = 1e-6 * (alpha.abs() as f64 * mag + c0.abs()) + 1e-6;
                            assert!((got - want).abs() <= tol, "{m}x{k}x{n} ta {ta} ({i},{j})");
                        }
                        assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|e| e.is_nan()));
                    }
                }
            }
        }
        assert!(applies(32, 4096, 9216, 1, 1) && applies(1, 1024, 256, 1, 1));
        assert!(!applies(65, 4096, 4096, 1, 1) && !applies(32, 512, 4096, 1, 1));
        assert!(!applies(32, 4096, 4096, 32, 1));
    }
}
