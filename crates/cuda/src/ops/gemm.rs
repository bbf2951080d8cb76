//! Row-major GEMM on cuBLAS in the three precisions.
//!
//! cuBLAS is column-major; a row-major matrix is the column-major view of its transpose, so the
//! row-major product C = op(A) op(B) is computed as the column-major C^T = op(B)^T op(A)^T, i.e.
//! cuBLAS is called with the operands swapped and the same transpose flags.

use super::check_len;
use crate::error::CudaError;
use crate::gpu::{Gpu, Precision};
use crate::ops::convert::f32_to_bf16;
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::{CudaView, CudaViewMut, DevicePtr, DevicePtrMut};
use std::ffi::c_void;

/// A stored row-major matrix `rows x cols` with row stride `ld`, used transposed when `trans`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatDesc {
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
    pub trans: bool,
}

impl MatDesc {
    /// A dense row-major matrix (ld = cols).
    pub fn new(rows: usize, cols: usize) -> Self {
        MatDesc {
            rows,
            cols,
            ld: cols,
            trans: false,
        }
    }

    /// The same storage used transposed.
    pub fn t(self) -> Self {
        MatDesc {
            trans: !self.trans,
            ..self
        }
    }

    /// Elements spanned by the storage.
    pub fn extent(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.ld + self.cols
        }
    }

    /// Shape of op(M).
    pub fn op_shape(&self) -> (usize, usize) {
        if self.trans {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }

    fn op(&self) -> cublasOperation_t {
        if self.trans {
            cublasOperation_t::CUBLAS_OP_T
        } else {
            cublasOperation_t::CUBLAS_OP_N
        }
    }
}

fn int(v: usize) -> Result<i32, CudaError> {
    i32::try_from(v).map_err(|_| CudaError::invalid("gemm", format!("dimension {v} exceeds i32")))
}

/// Checks the shapes of C = op(A) op(B); returns (M, N, K).
pub fn gemm_dims(a: MatDesc, b: MatDesc, c: MatDesc) -> Result<(usize, usize, usize), CudaError> {
    let (m, k) = a.op_shape();
    let (k2, n) = b.op_shape();
    if k != k2 || c.trans || c.rows != m || c.cols != n {
        return Err(CudaError::shape(
            "gemm",
            format!(
                "op(A) {m}x{k}, op(B) {k2}x{n}, C {}x{} (trans {})",
                c.rows, c.cols, c.trans
            ),
        ));
    }
    for d in [a, b, c] {
        if d.ld < d.cols {
            return Err(CudaError::shape(
                "gemm",
                format!("ld {} < cols {}", d.ld, d.cols),
            ));
        }
    }
    Ok((m, n, k))
}

/// cuBLAS's integer arguments of a row-major C = op(A) op(B) of dims (m, n, k): the dims
/// (swapped to n, m, k for column-major) and the leading dimensions of A, B, C.
fn blas_dims(
    (m, n, k): (usize, usize, usize),
    ad: MatDesc,
    bd: MatDesc,
    cd: MatDesc,
) -> Result<([i32; 3], [i32; 3]), CudaError> {
    Ok((
        [int(n)?, int(m)?, int(k.max(1))?],
        [int(ad.ld.max(1))?, int(bd.ld.max(1))?, int(cd.ld.max(1))?],
    ))
}

/// cuBLAS's compute type for f32 operands at `prec` (TF32 tensor cores or strict f32).
fn compute_type(prec: Precision) -> cublasComputeType_t {
    match prec {
        Precision::Tf32 => cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
        _ => cublasComputeType_t::CUBLAS_COMPUTE_32F,
    }
}

/// Row-major C = alpha * op(A) op(B) + beta * C.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    gpu: &Gpu,
    prec: Precision,
    alpha: f32,
    a: &CudaView<f32>,
    ad: MatDesc,
    b: &CudaView<f32>,
    bd: MatDesc,
    beta: f32,
    c: &mut CudaViewMut<f32>,
    cd: MatDesc,
) -> Result<(), CudaError> {
    let (m, n, k) = gemm_dims(ad, bd, cd)?;
    check_len("gemm", "A", a.len(), ad.extent())?;
    check_len("gemm", "B", b.len(), bd.extent())?;
    check_len("gemm", "C", c.len(), cd.extent())?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let ([ni, mi, ki], [lda, ldb, ldc]) = blas_dims((m, n, k), ad, bd, cd)?;
    let s = &gpu.stream;
    let compute = compute_type(prec);
    let f32t = cudaDataType::CUDA_R_32F;
    let (pc, _gc) = c.device_ptr_mut(s);
    if prec == Precision::Bf16 {
        let (ea, eb) = (ad.extent(), bd.extent());
        let off_b = ea.div_ceil(64) * 64;
        let need = off_b + eb;
        let mut guard = gpu.bf16_scratch.lock().unwrap_or_else(|p| p.into_inner());
        let scratch = gpu.grow(&mut guard, need, "bf16 GEMM operands")?;
        {
            let mut sa = scratch.slice_mut(0..ea);
            f32_to_bf16(gpu, &super::sub("gemm", a, 0, ea)?, &mut sa, ea)?;
        }
        {
            let mut sb = scratch.slice_mut(off_b..off_b + eb);
            f32_to_bf16(gpu, &super::sub("gemm", b, 0, eb)?, &mut sb, eb)?;
        }
        let (sa, sb) = (scratch.slice(0..ea), scratch.slice(off_b..off_b + eb));
        let (pa, _ga) = sa.device_ptr(s);
        let (pb, _gb) = sb.device_ptr(s);
        let bft = cudaDataType::CUDA_R_16BF;
        // SAFETY: the bf16 copies hold the extents of A and B (same ld), C holds its extent
        // (checked above); dims fit in i32; alpha/beta are host f32 as CUBLAS_COMPUTE_32F needs.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *gpu.blas.handle(),
                bd.op(),
                ad.op(),
                ni,
                mi,
                ki,
                (&alpha) as *const f32 as *const c_void,
                pb as *const c_void,
                bft,
                ldb,
                pa as *const c_void,
                bft,
                lda,
                (&beta) as *const f32 as *const c_void,
                pc as *mut c_void,
                f32t,
                ldc,
                compute,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(CudaError::blas(format!("gemm bf16 {m}x{n}x{k}")))?;
        return Ok(());
    }
    let (pa, _ga) = a.device_ptr(s);
    let (pb, _gb) = b.device_ptr(s);
    // SAFETY: A, B, C hold their extents for the given leading dimensions (checked above), dims
    // fit in i32, alpha/beta are host f32 values matching the 32F compute type.
    unsafe {
        cudarc::cublas::result::gemm_ex(
            *gpu.blas.handle(),
            bd.op(),
            ad.op(),
            ni,
            mi,
            ki,
            (&alpha) as *const f32 as *const c_void,
            pb as *const c_void,
            f32t,
            ldb,
            pa as *const c_void,
            f32t,
            lda,
            (&beta) as *const f32 as *const c_void,
            pc as *mut c_void,
            f32t,
            ldc,
            compute,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(CudaError::blas(format!("gemm {m}x{n}x{k}")))
}

/// A strided batch of GEMMs: `count` products, the i-th operands `stride_*` elements after the
/// (i-1)-th.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    pub count: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
}

impl Batch {
    /// Checks that every A_i, B_i and C_i of the batch lies within buffers of `lens` elements
    /// (A, B, C) for the descriptors `descs`, and that the C_i do not overlap.
    pub fn check(&self, lens: [usize; 3], descs: [MatDesc; 3]) -> Result<(), CudaError> {
        let Some(last) = self.count.checked_sub(1) else {
            return Ok(());
        };
        let strides = [self.stride_a, self.stride_b, self.stride_c];
        for ((name, len), (stride, d)) in ["A", "B", "C"]
            .iter()
            .zip(lens)
            .zip(strides.iter().zip(descs))
        {
            check_len("batched gemm", name, len, last * stride + d.extent())?;
        }
        if self.count > 1 && self.stride_c < descs[2].extent() {
            return Err(CudaError::shape(
                "batched gemm",
                format!(
                    "C stride {} < its extent {}",
                    self.stride_c,
                    descs[2].extent()
                ),
            ));
        }
        Ok(())
    }
}

/// Row-major C_i = alpha * op(A_i) op(B_i) + beta * C_i for i < `batch.count`, in one cuBLAS
/// call (`cublasGemmStridedBatchedEx`); f32 (strict) or TF32 operands.
#[allow(clippy::too_many_arguments)]
pub fn gemm_batched(
    gpu: &Gpu,
    prec: Precision,
    alpha: f32,
    (a, ad): (&CudaView<f32>, MatDesc),
    (b, bd): (&CudaView<f32>, MatDesc),
    beta: f32,
    (c, cd): (&mut CudaViewMut<f32>, MatDesc),
    batch: Batch,
) -> Result<(), CudaError> {
    let (m, n, k) = gemm_dims(ad, bd, cd)?;
    if prec == Precision::Bf16 {
        return Err(CudaError::invalid(
            "batched gemm",
            "f32 or tf32 only (bf16 operands are not converted here)",
        ));
    }
    if batch.count == 0 || m == 0 || n == 0 {
        return Ok(());
    }
    batch.check([a.len(), b.len(), c.len()], [ad, bd, cd])?;
    let ([ni, mi, ki], [lda, ldb, ldc]) = blas_dims((m, n, k), ad, bd, cd)?;
    let count = int(batch.count)?;
    let stride = |v: usize| {
        i64::try_from(v).map_err(|_| CudaError::invalid("batched gemm", "stride exceeds i64"))
    };
    let (sa, sb, sc) = (
        stride(batch.stride_a)?,
        stride(batch.stride_b)?,
        stride(batch.stride_c)?,
    );
    let compute = compute_type(prec);
    let f32t = cudaDataType::CUDA_R_32F;
    let s = &gpu.stream;
    let (pc, _gc) = c.device_ptr_mut(s);
    let (pa, _ga) = a.device_ptr(s);
    let (pb, _gb) = b.device_ptr(s);
    // SAFETY: every A_i, B_i, C_i lies within its buffer for the given leading dimensions and
    // strides (checked above), the C_i do not overlap (stride >= extent), dims fit in i32, and
    // alpha/beta are host f32 values matching the 32F compute type. Operands swapped as in
    // [`gemm`] (row-major through column-major cuBLAS).
    unsafe {
        cudarc::cublas::result::gemm_strided_batched_ex(
            *gpu.blas.handle(),
            bd.op(),
            ad.op(),
            ni,
            mi,
            ki,
            (&alpha) as *const f32 as *const c_void,
            pb as *const c_void,
            f32t,
            ldb,
            sb,
            pa as *const c_void,
            f32t,
            lda,
            sa,
            (&beta) as *const f32 as *const c_void,
            pc as *mut c_void,
            f32t,
            ldc,
            sc,
            count,
            compute,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(CudaError::blas(format!(
        "batched gemm {}x {m}x{n}x{k}",
        batch.count
    )))
}
