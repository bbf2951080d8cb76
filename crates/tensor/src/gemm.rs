//! GEMM on row-major slices: f64 (gradient checks) through `matrixmultiply`; f32 through the
//! `gemm` crate (AVX-512 where the CPU has it) or `matrixmultiply` ([`set_f32_backend`]).
//!
//! `C (m x n) = alpha * op(A) * op(B) + beta * C`, where `op(A)` is `m x k` and `op(B)` is `k x n`.
//! With `ta == false` A is stored `[m, k]`; with `ta == true` it is stored `[k, m]` (so op(A) is
//! its transpose); likewise B is stored `[k, n]` or `[n, k]`. C is always stored `[m, n]`.

use crate::TensorError;
use rayon::prelude::*;

/// The element types the layers run in: f32 for training, f64 for gradient checks.
pub trait Float:
    num_traits::Float + num_traits::FromPrimitive + Default + Send + Sync + std::fmt::Debug + 'static
{
    /// Raw GEMM with explicit strides (matrixmultiply's contract).
    ///
    /// # Safety
    /// Every index `i*rs + p*cs` formed for the given sizes must lie inside the pointed-to
    /// buffers, and C must not alias A or B.
    #[allow(clippy::too_many_arguments)]
    unsafe fn raw_gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
    /// Conversion used by tests and the f64 gradient checks.
    fn of(x: f64) -> Self {
        <Self as num_traits::FromPrimitive>::from_f64(x).unwrap_or_else(Self::nan)
    }
}

/// Which f32 GEMM kernel library runs (see [`set_f32_backend`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum F32Backend {
    /// The `gemm` crate: runtime-dispatched AVX-512 kernels on CPUs that have them (the
    /// default; 1.2-1.6x matrixmultiply on AlexNet's conv shapes on this project's Xeon).
    Gemm,
    /// `matrixmultiply` (AVX2/FMA kernels): the portable reference.
    Matrixmultiply,
    /// Intel AMX tiles, each operand split into two bf16 parts, three products
    /// ([`crate::amx`]): about 1e-5 relative error per product. Shapes too small to pay for
    /// the packing ([`amx_pays`]) stay on the gemm crate, in f32.
    AmxBf16x3,
    /// Intel AMX tiles, operands rounded to bf16, f32 sums (`torch.autocast` on a CPU).
    AmxBf16,
}

static F32_BACKEND: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Selects the f32 GEMM library for the whole process (benchmarks compare them; the CPU's
/// `--precision` picks an AMX one). An AMX backend needs [`crate::amx::available`]: without
/// it this returns that error and leaves the backend as it was.
pub fn set_f32_backend(b: F32Backend) -> Result<(), TensorError> {
    if matches!(b, F32Backend::AmxBf16 | F32Backend::AmxBf16x3) {
        crate::amx::available().map_err(|e| TensorError::Unsupported(format!("{b:?}: {e}")))?;
    }
    F32_BACKEND.store(b as u8, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// The f32 GEMM library in use.
pub fn f32_backend() -> F32Backend {
    match F32_BACKEND.load(std::sync::atomic::Ordering::Relaxed) {
        0 => F32Backend::Gemm,
        1 => F32Backend::Matrixmultiply,
        2 => F32Backend::AmxBf16x3,
        _ => F32Backend::AmxBf16,
    }
}

impl F32Backend {
    /// The CPU `--precision` this backend computes in (`f32` for both f32 libraries).
    pub fn precision(self) -> &'static str {
        match self {
            F32Backend::Gemm | F32Backend::Matrixmultiply => "f32",
            F32Backend::AmxBf16x3 => "bf16x3",
            F32Backend::AmxBf16 => "bf16",
        }
    }
}

/// The f32 GEMM backend for a CPU `--precision`: `f32` (strict, the gemm crate), `bf16x3` or
/// `bf16` (AMX). Checks that this machine can run it.
pub fn cpu_backend_for(precision: &str) -> Result<F32Backend, TensorError> {
    const TF32: &str =
        "--precision tf32 is a CUDA precision; on the CPU use f32, bf16x3 or bf16 (AMX)";
    let b = match precision.to_ascii_lowercase().as_str() {
        "f32" | "fp32" => F32Backend::Gemm,
        "bf16x3" => F32Backend::AmxBf16x3,
        "bf16" => F32Backend::AmxBf16,
        "tf32" => return Err(TensorError::Unsupported(TF32.into())),
        other => {
            return Err(TensorError::Unsupported(format!(
                "--precision {other}: unknown; the CPU has f32, bf16x3 and bf16"
            )))
        }
    };
    if b != F32Backend::Gemm {
        crate::amx::available().map_err(|e| {
            TensorError::Unsupported(format!(
                "--precision {precision} needs Intel AMX: {e}; use --precision f32"
            ))
        })?;
    }
    Ok(b)
}

/// 0: the per-precision default of [`amx_pays`].
static AMX_MIN_SIDE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Whether an AMX GEMM of this shape beats the gemm crate: m, n and k all at least 64 in
/// bf16x3, 48 in bf16. The packing of A and B is paid per call and amortised over the other
/// side: fc6 at batch 32 (n = 32) runs at 0.5x in bf16x3 and 1.1x in bf16; the paper's conv1
/// (48 filters per group) at 0.6-1.1x in bf16x3 and 1.0-1.7x in bf16 (`amx_speed` example).
/// [`set_amx_min_side`] overrides the bound.
pub fn amx_pays(p: crate::amx::AmxPrecision, m: usize, k: usize, n: usize) -> bool {
    let min = match AMX_MIN_SIDE.load(std::sync::atomic::Ordering::Relaxed) {
        0 if p == crate::amx::AmxPrecision::Bf16 => 48,
        0 => 64,
        set => set,
    };
    m >= min && n >= min && k >= min
}

/// Sets the smallest m, n and k an AMX backend takes (0: the defaults of [`amx_pays`]); 1
/// sends every GEMM to AMX (the parity check of a precision does, so that its numerics are
/// what is checked).
pub fn set_amx_min_side(min: usize) {
    AMX_MIN_SIDE.store(min, std::sync::atomic::Ordering::Relaxed);
}

impl Float for f32 {
    unsafe fn raw_gemm(
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
        let backend = f32_backend();
        let amx = match backend {
            F32Backend::AmxBf16x3 => Some(crate::amx::AmxPrecision::Bf16x3),
            F32Backend::AmxBf16 => Some(crate::amx::AmxPrecision::Bf16),
            _ => None,
        }
        .filter(|&p| amx_pays(p, m, k, n));
        if let Some(p) = amx {
            // SAFETY: set_f32_backend admitted an AMX backend only after `amx::available`;
            // the caller upholds the bounds and aliasing contract, forwarded.
            return unsafe {
                crate::amx::sgemm(
                    p, m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc,
                )
            };
        }
        #[cfg(target_arch = "x86_64")]
        if backend != F32Backend::Matrixmultiply && crate::few_rows::applies(m, k, n, csb, csc) {
            // SAFETY: `applies` checked the CPU (AVX-512F) and that B and C are row-major, as
            // few_rows::sgemm needs; the caller upholds the bounds and aliasing contract.
            return unsafe {
                crate::few_rows::sgemm(m, k, n, alpha, a, rsa, csa, b, rsb, beta, c, rsc)
            };
        }
        match backend {
            // SAFETY: forwarded; the caller upholds the bounds and aliasing contract. The gemm
            // crate computes dst = a*dst + b*lhs*rhs, so our beta is its alpha (dst is not read
            // when beta is 0) and our alpha its beta.
            F32Backend::Gemm | F32Backend::AmxBf16x3 | F32Backend::AmxBf16 => unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    c,
                    csc,
                    rsc,
                    beta != 0.0,
                    a,
                    csa,
                    rsa,
                    b,
                    csb,
                    rsb,
                    beta,
                    alpha,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            },
            // SAFETY: forwarded; the caller upholds matrixmultiply's bounds and aliasing contract.
            F32Backend::Matrixmultiply => unsafe {
                matrixmultiply::sgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
            },
        }
    }
}

impl Float for f64 {
    unsafe fn raw_gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: f64,
        a: *const f64,
        rsa: isize,
        csa: isize,
        b: *const f64,
        rsb: isize,
        csb: isize,
        beta: f64,
        c: *mut f64,
        rsc: isize,
        csc: isize,
    ) {
        // SAFETY: forwarded; the caller upholds matrixmultiply's bounds and aliasing contract.
        unsafe {
            matrixmultiply::dgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
        }
    }
}

/// Strides (row, column) of op(X) for a row-major X stored untransposed `[r, c]` or transposed.
fn strides(trans: bool, rows: usize, cols: usize) -> (isize, isize) {
    // op(X) is rows x cols. Untransposed storage [rows, cols]: (cols, 1).
    // Transposed storage [cols, rows]: element (i, j) of op(X) is at j * rows + i.
    if trans {
        (1, rows as isize)
    } else {
        (cols as isize, 1)
    }
}

fn check<T>(m: usize, n: usize, k: usize, a: &[T], b: &[T], c: &[T]) -> Result<(), TensorError> {
    if a.len() < m * k || b.len() < k * n || c.len() < m * n {
        return Err(TensorError::Shape {
            op: "sgemm",
            detail: format!(
                "m={m} n={n} k={k} needs A {} B {} C {} elements, got {} {} {}",
                m * k,
                k * n,
                m * n,
                a.len(),
                b.len(),
                c.len()
            ),
        });
    }
    Ok(())
}

/// Checks that a stored `rows x cols` row-major matrix with rows `ld` apart fits in `len`
/// elements (`ld >= cols`; the last row needs only its `cols`).
fn check_ld(name: &str, rows: usize, cols: usize, ld: usize, len: usize) -> Result<(), String> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    if ld < cols {
        return Err(format!(
            "{name} ({rows} x {cols}) has leading dimension {ld} < {cols}"
        ));
    }
    let need = (rows - 1) * ld + cols;
    if len < need {
        return Err(format!(
            "{name} ({rows} x {cols}, leading dimension {ld}) needs {need} elements, got {len}"
        ));
    }
    Ok(())
}

/// [`gemm()`] on sub-matrices, as BLAS has them: each operand is stored row-major (A as
/// `[m, k]`, or `[k, m]` with `ta`; B as `[k, n]` or `[n, k]`; C as `[m, n]`) with its rows
/// `lda` / `ldb` / `ldc` elements apart, so that a block of columns of a wider matrix is an
/// operand as it is (the convolution's row blocks of y and dy).
#[allow(clippy::too_many_arguments)]
pub fn gemm_ld<T: Float>(
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: &[T],
    lda: usize,
    b: &[T],
    ldb: usize,
    beta: T,
    c: &mut [T],
    ldc: usize,
) -> Result<(), TensorError> {
    let (ar, ac) = if ta { (k, m) } else { (m, k) };
    let (br, bc) = if tb { (n, k) } else { (k, n) };
    check_ld("A", ar, ac, lda, a.len())
        .and_then(|_| check_ld("B", br, bc, ldb, b.len()))
        .and_then(|_| check_ld("C", m, n, ldc, c.len()))
        .map_err(|detail| TensorError::Shape {
            op: "sgemm",
            detail: format!("m={m} n={n} k={k}: {detail}"),
        })?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let ld = |t: bool, l: usize| if t { (1, l as isize) } else { (l as isize, 1) };
    let ((rsa, csa), (rsb, csb)) = (ld(ta, lda), ld(tb, ldb));
    // SAFETY: check_ld proved that every stored row r < rows and column j < cols of A, B and C,
    // at r*ld + j, lies inside its slice; op(X)'s element (i, p) is stored at i*rs + p*cs, one
    // of those. C is borrowed mutably, so it aliases neither A nor B.
    unsafe {
        T::raw_gemm(
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
            ldc as isize,
            1,
        );
    }
    Ok(())
}

/// f32 [`gemm()`].
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
) -> Result<(), TensorError> {
    gemm(ta, tb, m, n, k, alpha, a, b, beta, c)
}

/// f32 [`par_gemm`].
#[allow(clippy::too_many_arguments)]
pub fn par_sgemm(
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
) -> Result<(), TensorError> {
    par_gemm(ta, tb, m, n, k, alpha, a, b, beta, c)
}

/// `C = alpha * op(A) op(B) + beta * C` on one thread. See the module docs for layouts.
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Float>(
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: &[T],
    b: &[T],
    beta: T,
    c: &mut [T],
) -> Result<(), TensorError> {
    // Contiguous operands: each row as long as the stored matrix is wide.
    let lda = if ta { m } else { k };
    let ldb = if tb { k } else { n };
    gemm_ld(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, n)
}

/// Like [`gemm()`], split over rayon threads along the larger of m and n.
///
/// Each element of C is computed by exactly one call over the full k range, so the result does
/// not depend on the number of threads.
#[allow(clippy::too_many_arguments)]
pub fn par_gemm<T: Float>(
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: &[T],
    b: &[T],
    beta: T,
    c: &mut [T],
) -> Result<(), TensorError> {
    check(m, n, k, a, b, c)?;
    let threads = rayon::current_num_threads();
    let flops = m * n * k;
    if threads <= 1 || flops < (1 << 20) || m == 0 || n == 0 {
        return gemm(ta, tb, m, n, k, alpha, a, b, beta, c);
    }
    let (rsa, csa) = strides(ta, m, k);
    let (rsb, csb) = strides(tb, k, n);
    let parts = threads * 2;
    if m >= n {
        // Split rows of C: block [i0, i1) uses rows i0.. of op(A).
        let rows = m.div_ceil(parts).max(1);
        c[..m * n]
            .par_chunks_mut(rows * n)
            .enumerate()
            .for_each(|(ci, cblk)| {
                let i0 = ci * rows;
                let mi = cblk.len() / n;
                // SAFETY: A holds m*k elements (checked); rows i0..i0+mi of op(A) start at
                // i0*rsa and every index i*rsa + p*csa with i < mi, p < k stays below m*k. B is
                // whole; cblk is this task's own disjoint mi x n block of C.
                unsafe {
                    T::raw_gemm(
                        mi,
                        k,
                        n,
                        alpha,
                        a.as_ptr().offset(i0 as isize * rsa),
                        rsa,
                        csa,
                        b.as_ptr(),
                        rsb,
                        csb,
                        beta,
                        cblk.as_mut_ptr(),
                        n as isize,
                        1,
                    );
                }
            });
    } else {
        // Split columns of C: each task owns columns [j0, j1) of every row. The blocks are
        // not contiguous, so tasks write through a raw pointer into disjoint column ranges.
        let cols = n.div_ceil(parts).max(1);
        let cptr = SendPtr(c.as_mut_ptr());
        (0..n.div_ceil(cols)).into_par_iter().for_each(|ci| {
            let j0 = ci * cols;
            let nj = cols.min(n - j0);
            let cp = cptr;
            // SAFETY: B holds k*n elements (checked); columns j0..j0+nj of op(B) start at
            // j0*csb and stay inside it. Tasks write disjoint column ranges [j0, j0+nj) of C
            // (C holds m*n elements, checked), so no two tasks touch the same element, and the
            // caller's &mut borrow of C outlives the parallel loop.
            unsafe {
                T::raw_gemm(
                    m,
                    k,
                    nj,
                    alpha,
                    a.as_ptr(),
                    rsa,
                    csa,
                    b.as_ptr().offset(j0 as isize * csb),
                    rsb,
                    csb,
                    beta,
                    cp.0.add(j0),
                    n as isize,
                    1,
                );
            }
        });
    }
    Ok(())
}

struct SendPtr<T>(*mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: the pointer is only used to write disjoint column blocks of one C matrix from
// par_sgemm's tasks, while the caller's exclusive borrow keeps the buffer alive.
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as above; shared between tasks only to derive disjoint write ranges.
unsafe impl<T> Sync for SendPtr<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(ta: bool, tb: bool, m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for p in 0..k {
                    let av = if ta { a[p * m + i] } else { a[i * k + p] };
                    let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                    s += av as f64 * bv as f64;
                }
                c[i * n + j] = s as f32;
            }
        }
        c
    }

    #[test]
    fn hand_computed_2x2() {
        // [1 2; 3 4] * [5 6; 7 8] = [19 22; 43 50]
        let mut c = vec![0.0; 4];
        sgemm(
            false,
            false,
            2,
            2,
            2,
            1.0,
            &[1., 2., 3., 4.],
            &[5., 6., 7., 8.],
            0.0,
            &mut c,
        )
        .unwrap();
        assert_eq!(c, vec![19., 22., 43., 50.]);
    }

    #[test]
    fn all_transposes_and_parallel_match_naive() {
        for backend in [F32Backend::Matrixmultiply, F32Backend::Gemm] {
            set_f32_backend(backend).unwrap();
            check_all_shapes();
        }
        // bf16x3 meets the same 1e-3 bound (its error is ~1e-5); the last shape takes the AMX
        // path (amx_pays), the others fall back to the gemm crate.
        match set_f32_backend(F32Backend::AmxBf16x3) {
            Ok(()) => check_all_shapes(),
            Err(e) => println!("AMX part skipped: {e}"),
        }
        set_f32_backend(F32Backend::Gemm).unwrap();
    }

    fn check_all_shapes() {
        // (32, 1100, 1100): few rows, long k: untransposed B takes few_rows on AVX-512 CPUs,
        // par_sgemm handing it column blocks of a wider C.
        for &(m, n, k) in &[
            (3, 5, 7),
            (200, 33, 170),
            (17, 300, 250),
            (70, 90, 300),
            (32, 1100, 1100),
        ] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0)
                .collect();
            for ta in [false, true] {
                for tb in [false, true] {
                    let want = naive(ta, tb, m, n, k, &a, &b);
                    let mut c1 = vec![1.0; m * n];
                    sgemm(ta, tb, m, n, k, 1.0, &a, &b, 0.0, &mut c1).unwrap();
                    let mut c2 = vec![0.5; m * n];
                    par_sgemm(ta, tb, m, n, k, 1.0, &a, &b, 2.0, &mut c2).unwrap();
                    for i in 0..m * n {
                        assert!((c1[i] - want[i]).abs() < 1e-3 * (1.0 + want[i].abs()));
                        assert!((c2[i] - 1.0 - want[i]).abs() < 1e-3 * (1.0 + want[i].abs()));
                    }
                }
            }
        }
    }

    #[test]
    fn leading_dimensions_address_blocks_of_wider_matrices() {
        // Each operand is the block at column offset 2 of a wider matrix whose other entries
        // are NaN: gemm_ld must read only the block and write only C's block.
        let (m, n, k) = (5, 7, 6);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let embed = |x: &[f32], rows: usize, cols: usize, ld: usize| {
            let mut w = vec![f32::NAN; rows * ld];
            for r in 0..rows {
                w[r * ld + 2..r * ld + 2 + cols].copy_from_slice(&x[r * cols..(r + 1) * cols]);
            }
            w
        };
        for ta in [false, true] {
            for tb in [false, true] {
                let want = naive(ta, tb, m, n, k, &a, &b);
                let (ar, ac) = if ta { (k, m) } else { (m, k) };
                let (br, bc) = if tb { (n, k) } else { (k, n) };
                let (wa, wb) = (embed(&a, ar, ac, ac + 3), embed(&b, br, bc, bc + 4));
                let mut c = embed(&vec![1.0; m * n], m, n, n + 5);
                let ldc = n + 5;
                gemm_ld(
                    ta,
                    tb,
                    m,
                    n,
                    k,
                    2.0,
                    &wa[2..],
                    ac + 3,
                    &wb[2..],
                    bc + 4,
                    0.5,
                    &mut c[2..],
                    ldc,
                )
                .unwrap();
                for i in 0..m {
                    for j in 0..n {
                        let got = c[i * ldc + 2 + j];
                        let w = 2.0 * want[i * n + j] + 0.5;
                        assert!(
                            (got - w).abs() < 1e-4 * (1.0 + w.abs()),
                            "{ta} {tb} {i} {j}"
                        );
                    }
                    assert!(c[i * ldc].is_nan() && c[i * ldc + 2 + n].is_nan());
                }
            }
        }
        // A leading dimension below the row length, or a short buffer, is an error.
        let mut c = vec![0.0; 4];
        let e = gemm_ld(
            false, false, 2, 2, 2, 1.0, &[0.; 4], 1, &[0.; 4], 2, 0.0, &mut c, 2,
        );
        assert!(e.unwrap_err().to_string().contains("leading dimension 1"));
        let e = gemm_ld(
            false, false, 2, 2, 2, 1.0, &[0.; 4], 2, &[0.; 4], 2, 0.0, &mut c, 3,
        );
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("needs 5 elements, got 4"));
    }

    #[test]
    fn short_buffers_are_an_error() {
        let mut c = vec![0.0; 3];
        let e = sgemm(false, false, 2, 2, 2, 1.0, &[0.; 4], &[0.; 4], 0.0, &mut c).unwrap_err();
        assert!(e.to_string().contains("sgemm"), "{e}");
    }
}
