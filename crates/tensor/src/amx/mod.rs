//! f32 GEMM on Intel AMX tiles (Sapphire Rapids and newer), two precisions:
//!
//! - [`AmxPrecision::Bf16`]: both operands rounded to bf16 (8-bit mantissa), products summed in
//!   f32: what `torch.autocast(dtype=bfloat16)` gives a matmul on the CPU.
//! - [`AmxPrecision::Bf16x3`]: each operand split into a bf16 high part and a bf16 low part
//!   (`x ~ hi + lo`, 16 mantissa bits) and `a b ~ ah bh + ah bl + al bh` (three tile products):
//!   about 1e-5 relative error per product instead of f32's 6e-8; on AlexNet's large
//!   convolutions 1.0-1.9x the f32 AVX-512 GEMM's speed on this project's Xeon, bf16 2-3.5x
//!   (`cargo run --release -p alexnet-tensor --example amx_speed`; the spread is the shared
//!   machine's, whose AMX throughput itself varies 1-2.2 TFLOP/s from minute to minute).
//!
//! Like the hardware, bf16 inputs below 2^-126 count as zero (only the low parts of values
//! under ~1e-36 are affected).
//!
//! Layout (`tile.rs`): C is computed in blocks of 32 x 32 (2 x 2 tiles of 16 x 16 f32) over K
//! in chunks of 32 (one tile row of bf16). Both operands are packed per call (`pack.rs`): A
//! whole, as `[32-row block][K chunk][32 rows][32 k]`; B per panel of KC x NC, as
//! `[32-column block][K chunk][16-column tile][16 k pairs][16 columns][2]` (the VNNI pairs
//! `tdpbf16ps` reads). Padding rows, columns and k are zeros. The partial sums of a column
//! block (M x NC f32) stay in L2 until it is written out as `alpha * acc + beta * C` through C's
//! strides.
//!
//! The x86_64 code lives in `pack.rs` (AVX-512 conversion to bf16) and `tile.rs` (the tile
//! micro-kernel, inline assembly); elsewhere [`available`] says no and nothing else runs.

use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
mod pack;
#[cfg(target_arch = "x86_64")]
mod tile;

/// Which bf16 scheme the AMX GEMM uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AmxPrecision {
    /// One bf16 x bf16 product per term (8-bit mantissas), f32 sums.
    Bf16,
    /// Three bf16 products per term (hi hi + hi lo + lo hi), about f32 minus 7 bits.
    Bf16x3,
}

/// A strided matrix operand: element (i, j) at `ptr + i*rs + j*cs`.
#[derive(Clone, Copy)]
struct Strided<P> {
    ptr: P,
    rs: isize,
    cs: isize,
}

impl Strided<*mut f32> {
    /// The same matrix from column `j` on (the pointer is only offset, not dereferenced).
    #[cfg(target_arch = "x86_64")]
    fn offset_cols(self, j: usize) -> Self {
        Strided {
            ptr: self.ptr.wrapping_offset(j as isize * self.cs),
            ..self
        }
    }
}

/// Rows (and f32 columns) of a tile.
const TILE: usize = 16;
/// bf16 elements of K in one tile row.
const KT: usize = 32;
/// Rows / columns of C per micro-kernel call (2 x 2 tiles).
const MR: usize = 32;
const NR: usize = 32;
/// K per packed block (a multiple of KT): a B block (hi + lo) is 32 KB, L1-sized.
const KC: usize = 256;
/// Columns of C per block: the partial sums (M x NC f32) and B's panel stay in L2.
const NC: usize = 256;

/// Whether this process can run AMX code: the CPU has AMX-TILE and AMX-BF16 and the kernel
/// granted the tile state (Linux `arch_prctl(ARCH_REQ_XCOMP_PERM)`). Checked once.
pub fn available() -> Result<(), String> {
    static ONCE: OnceLock<Result<(), String>> = OnceLock::new();
    ONCE.get_or_init(detect).clone()
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> Result<(), String> {
    // CPUID leaf 7, subleaf 0: EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE.
    let r = std::arch::x86_64::__cpuid_count(7, 0);
    if (r.edx >> 22) & 1 == 0 || (r.edx >> 24) & 1 == 0 {
        return Err("this CPU has no AMX-BF16 (Intel Sapphire Rapids or newer has it)".into());
    }
    // The packing converts with AVX-512 (every AMX CPU so far has these).
    if !(is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512bf16"))
    {
        return Err("this CPU has AMX but not AVX-512 BF16, which the packing uses".into());
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with ARCH_REQ_XCOMP_PERM only reads its two integer arguments; it
    // asks the kernel to allow this process the AMX tile register state.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    if rc != 0 {
        return Err(format!(
            "the kernel did not grant the AMX tile state (arch_prctl: {}); Linux 5.16+ is needed",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> Result<(), String> {
    Err("AMX needs an x86_64 CPU running Linux".into())
}

/// f32 -> bf16, round to nearest even; NaN stays a (quiet) NaN.
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    // Branch-free so that the packing loops vectorise.
    if x.is_nan() {
        ((b >> 16) | 0x40) as u16
    } else {
        rounded
    }
}

/// bf16 bits -> f32 (exact).
#[inline(always)]
pub fn bf16_value(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// `x ~ hi + lo`, both bf16 (lo is `x - hi`, rounded). An infinite x gives a NaN lo, so a
/// bf16x3 product with an infinity is NaN (f32 would give an infinity or NaN).
#[inline(always)]
pub(crate) fn split(x: f32) -> (u16, u16) {
    let hi = bf16_bits(x);
    (hi, bf16_bits(x - bf16_value(hi)))
}

/// `C (m x n) = alpha * A (m x k) * B (k x n) + beta * C` with element strides as in
/// matrixmultiply's contract; C is not read when beta is 0.
///
/// # Safety
/// [`available`] must have returned `Ok`. Every index `i*rs + p*cs` formed for the given sizes
/// must lie inside the pointed-to buffers, and C must not alias A or B.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(
    prec: AmxPrecision,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded (this function's contract).
    unsafe {
        let a = Strided {
            ptr: a,
            rs: rsa,
            cs: csa,
        };
        let b = Strided {
            ptr: b,
            rs: rsb,
            cs: csb,
        };
        tile::gemm(
            prec,
            m,
            k,
            n,
            alpha,
            a,
            b,
            beta,
            Strided {
                ptr: c,
                rs: rsc,
                cs: csc,
            },
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("amx::available() is an error on this target, so sgemm is never called")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact-ish C = A B and sum |a||b| per element (the scale of rounding errors).
    fn naive(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], t: [bool; 2]) -> Vec<(f64, f64)> {
        let mut c = vec![(0.0, 0.0); m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let av = if t[0] { a[p * m + i] } else { a[i * k + p] } as f64;
                    let bv = if t[1] { b[j * k + p] } else { b[p * n + j] } as f64;
                    c[i * n + j].0 += av * bv;
                    c[i * n + j].1 += (av * bv).abs();
                }
            }
        }
        c
    }

    #[test]
    fn bf16_rounding_hand_cases() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between bf16 1.0 and 1 + 2^-7: ties to even (1.0).
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: ties to even (up).
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16_bits(-2.0), 0xc000);
        assert!(bf16_value(bf16_bits(f32::NAN)).is_nan());
        let (h, l) = split(1.0 + 1.0 / 1024.0 + 1.0 / 65536.0);
        assert_eq!(
            bf16_value(h) + bf16_value(l),
            1.0 + 1.0 / 1024.0 + 1.0 / 65536.0
        );
    }

    #[test]
    fn matches_f64_reference_within_precision() {
        if let Err(e) = available() {
            println!("skipped: no AMX here ({e})");
            return;
        }
        // Sizes straddling the 32-row/column blocks, the 32-k chunks, the 256-k blocks and the
        // 256-column blocks; the larger ones take the AVX-512 packing of full blocks.
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 5, 7),
            (64, 70, 200),
            (33, 47, 300),
            (64, 96, 513),
            (100, 20, 40),
            (70, 300, 600),
        ] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 300.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 104729 % 997) as f32 - 498.0) / 250.0)
                .collect();
            for ta in [false, true] {
                for tb in [false, true] {
                    let want = naive(m, n, k, &a, &b, [ta, tb]);
                    let (rsa, csa) = if ta { (1, m as isize) } else { (k as isize, 1) };
                    let (rsb, csb) = if tb { (1, k as isize) } else { (n as isize, 1) };
                    // Per element: |c - exact| <= tol * alpha * sum |a b|, with tol = the
                    // operands' rounding (2 x 2^-9 for bf16; hi+lo keeps 16 bits, 3 x 2^-17)
                    // plus f32 summation (k x 2^-24); three (alpha, beta) pairs.
                    let f32_sum = k as f64 * 6e-8;
                    let precs = [(AmxPrecision::Bf16x3, 2.3e-5), (AmxPrecision::Bf16, 4e-3)];
                    for ((prec, tol), (alpha, beta)) in precs
                        .into_iter()
                        .flat_map(|p| [(2.0f32, -1.0f32), (1.0, 0.0), (1.0, 1.0)].map(|ab| (p, ab)))
                    {
                        let mut c = vec![0.5f32; m * n];
                        // SAFETY: AMX is available; strides describe a (m x k), b (k x n) and
                        // c (m x n) exactly.
                        unsafe {
                            sgemm(
                                prec,
                                m,
                                k,
                                n,
                                alpha,
                                a.as_ptr(),
                                rsa,
                                csa,
                                b.as_ptr(),
                                rsb,
                                csb,
                                beta,
                                c.as_mut_ptr(),
                                n as isize,
                                1,
                            )
                        };
                        for (i, &(v, s)) in want.iter().enumerate() {
                            let exact = alpha as f64 * v + beta as f64 * 0.5;
                            let err = (c[i] as f64 - exact).abs();
                            let bound = alpha as f64 * (tol + f32_sum) * s + 1e-6;
                            assert!(
                                err <= bound,
                                "{prec:?} a={alpha} b={beta} {m}x{n}x{k} ta={ta} tb={tb} [{i}]: \
                                 {err:e} > {bound:e}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn general_strides_and_beta_zero_ignores_c() {
        if let Err(e) = available() {
            println!("skipped: no AMX here ({e})");
            return;
        }
        // A and B as windows of wider matrices (leading dimensions 75 and 301, neither unit
        // stride the packing specialises), C with a leading dimension of 90, prefilled with
        // NaN: beta = 0 must not read it.
        let (m, n, k) = (64, 80, 70);
        let (lda, ldb, ldc) = (75, 301, 90);
        let a: Vec<f32> = (0..m * lda)
            .map(|i| ((i * 31 % 97) as f32 - 48.0) / 40.0)
            .collect();
        let b: Vec<f32> = (0..n * ldb)
            .map(|i| ((i * 17 % 89) as f32 - 44.0) / 30.0)
            .collect();
        // op(A)(i, p) = a[i * lda + p]; op(B)(p, j) = b[j * ldb + 2 * p] (column-major, stride 2).
        for prec in [AmxPrecision::Bf16x3, AmxPrecision::Bf16] {
            let mut c = vec![f32::NAN; m * ldc];
            // SAFETY: AMX is available; the largest indices formed are (m-1)*lda + k-1 in a,
            // (n-1)*ldb + 2*(k-1) in b and (m-1)*ldc + n-1 in c, all inside.
            unsafe {
                sgemm(
                    prec,
                    m,
                    k,
                    n,
                    1.0,
                    a.as_ptr(),
                    lda as isize,
                    1,
                    b.as_ptr(),
                    2,
                    ldb as isize,
                    0.0,
                    c.as_mut_ptr(),
                    ldc as isize,
                    1,
                )
            };
            let tol = if prec == AmxPrecision::Bf16x3 {
                2.3e-5
            } else {
                4e-3
            } + k as f64 * 6e-8;
            for i in 0..m {
                for j in 0..n {
                    let (mut want, mut scale) = (0.0f64, 0.0f64);
                    for p in 0..k {
                        let t = a[i * lda + p] as f64 * b[j * ldb + 2 * p] as f64;
                        want += t;
                        scale += t.abs();
                    }
                    let got = c[i * ldc + j] as f64;
                    assert!(
                        (got - want).abs() <= tol * scale + 1e-6,
                        "{prec:?} ({i},{j}): {got} vs {want}"
                    );
                }
                // Columns n.. of C were not ours: still NaN.
                assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|v| v.is_nan()));
            }
        }
    }

    #[test]
    fn empty_k_scales_c_by_beta() {
        if let Err(e) = available() {
            println!("skipped: no AMX here ({e})");
            return;
        }
        let (m, n) = (64, 64);
        for (beta, want) in [(0.0f32, 0.0f32), (1.0, 1.5), (2.0, 3.0)] {
            let mut c = vec![1.5f32; m * n];
            // SAFETY: AMX is available; k = 0 reads nothing of A or B; c is m x n.
            unsafe {
                sgemm(
                    AmxPrecision::Bf16x3,
                    m,
                    0,
                    n,
                    1.0,
                    [].as_ptr(),
                    0,
                    1,
                    [].as_ptr(),
                    n as isize,
                    1,
                    beta,
                    c.as_mut_ptr(),
                    n as isize,
                    1,
                )
            };
            assert!(c.iter().all(|&v| v == want), "beta {beta}");
        }
    }
}
