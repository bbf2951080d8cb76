//! The AMX driver and micro-kernel: blocking over C and K, tile configuration, and the
//! `tdpbf16ps` loop in inline assembly.

use super::pack::{pack_a, pack_b};
use super::{AmxPrecision, Strided, KC, KT, MR, NC, NR, TILE};
use std::arch::asm;
use std::cell::RefCell;

/// Per-thread packing buffers, kept between calls (64-byte aligned views are cut from them).
#[derive(Default)]
struct Scratch {
    ah: Vec<u16>,
    al: Vec<u16>,
    bh: Vec<u32>,
    bl: Vec<u32>,
    acc: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// A 64-byte aligned window of `len` elements in `v` (grown as needed).
fn aligned<T: Copy + Default>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    let extra = 64 / std::mem::size_of::<T>();
    if v.len() < len + extra {
        v.resize(len + extra, T::default());
    }
    let off = v.as_ptr().align_offset(64).min(extra);
    &mut v[off..off + len]
}

/// Tile configuration (palette 1): tiles 0-7 all 16 rows x 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn all_full() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t] = 64; // bytes per row
            c[48 + t] = TILE as u8; // rows
        }
        TileConfig(c)
    }
}

/// [`super::sgemm`] on this thread's packing buffers.
///
/// # Safety
/// As [`super::sgemm`].
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm(
    prec: AmxPrecision,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: Strided<*const f32>,
    b: Strided<*const f32>,
    beta: f32,
    c: Strided<*mut f32>,
) {
    SCRATCH.with(|s| {
        let s = &mut *s.borrow_mut();
        let x3 = prec == AmxPrecision::Bf16x3;
        let mp = m.div_ceil(MR) * MR;
        let kp = k.div_ceil(KT) * KT;
        let nchk = kp / KT;
        // A whole, packed once (read per column block from L2/L3).
        let ah = aligned(&mut s.ah, mp * kp);
        let al = aligned(&mut s.al, if x3 { mp * kp } else { 0 });
        // SAFETY: rows < m and columns < k stay inside A (caller's contract).
        unsafe { pack_a(a, m, 0, k, nchk, ah, al, x3) };
        let acc = aligned(&mut s.acc, mp * NC);
        let cfg = TileConfig::all_full();
        // SAFETY: AMX is available (caller's contract); the configuration is a valid palette-1
        // layout that every tile instruction below stays within.
        unsafe { asm!("ldtilecfg [{0}]", in(reg) cfg.0.as_ptr(), options(nostack)) };
        // Columns in blocks of NC, K in blocks of KC: B's (KC x NC) panel packed, then each 32-row
        // block of A (KC deep, L1-sized) against the panel's 32-column blocks; the partial sums
        // (M x NC) stay in L2 until the column block is written out.
        for jc in (0..n).step_by(NC) {
            let ncb = NC.min(n - jc);
            let nbl = ncb.div_ceil(NR);
            if k == 0 {
                acc.fill(0.0);
            }
            let mut k0 = 0;
            while k0 < k {
                let kc = KC.min(k - k0);
                let nch = kc.div_ceil(KT);
                let blk = nch * KT * NR / 2;
                let bh = aligned(&mut s.bh, nbl * blk);
                let bl = aligned(&mut s.bl, if x3 { nbl * blk } else { 0 });
                // SAFETY: k0..k0+kc <= k and jc..jc+ncb <= n stay inside B.
                unsafe { pack_b(b, k0, kc, jc, ncb, nch, bh, bl, x3) };
                for i0 in (0..m).step_by(MR) {
                    let ablk = ((i0 / MR) * nchk + k0 / KT) * KT * MR;
                    for jb in 0..nbl {
                        let accp = acc[i0 * NC + jb * NR..].as_mut_ptr();
                        // SAFETY: from these offsets the packed A holds nch chunks of 2 KB (this
                        // row block, k0..k0+kc), the packed B likewise; acc holds rows i0..i0+32 of
                        // NC columns from jb*32.
                        unsafe {
                            kernel(
                                ah[ablk..].as_ptr(),
                                if x3 {
                                    al[ablk..].as_ptr()
                                } else {
                                    std::ptr::null()
                                },
                                bh[jb * blk..].as_ptr().cast(),
                                if x3 {
                                    bl[jb * blk..].as_ptr().cast()
                                } else {
                                    std::ptr::null()
                                },
                                nch,
                                accp,
                                NC * 4,
                                k0 == 0,
                            )
                        };
                    }
                }
                k0 += kc;
            }
            // SAFETY: C holds rows i < m, columns jc..jc+ncb < n at these strides (caller's
            // contract), and does not alias the scratch.
            unsafe { write_c(acc, NC, m, ncb, alpha, beta, c.offset_cols(jc)) };
        }
        // SAFETY: releases the tile state this call configured.
        unsafe { asm!("tilerelease", options(nostack)) };
    });
}

/// `C = alpha * acc + beta * C` (C not read when beta is 0); contiguous rows take a loop the
/// compiler vectorises.
///
/// # Safety
/// `c + i*rsc + j*csc` must be writable (and readable when beta is not 0) for i < m, j < n,
/// and not overlap `acc`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn write_c(
    acc: &[f32],
    np: usize,
    m: usize,
    n: usize,
    alpha: f32,
    beta: f32,
    c: Strided<*mut f32>,
) {
    let (rsc, csc) = (c.rs, c.cs);
    for i in 0..m {
        let row = &acc[i * np..i * np + n];
        let ci = c.ptr.wrapping_offset(i as isize * rsc);
        if csc == 1 {
            // SAFETY: row i of C, n contiguous elements (contract).
            let out = unsafe { std::slice::from_raw_parts_mut(ci, n) };
            if beta == 0.0 {
                out.iter_mut().zip(row).for_each(|(o, &v)| *o = alpha * v);
            } else {
                out.iter_mut()
                    .zip(row)
                    .for_each(|(o, &v)| *o = alpha * v + beta * *o);
            }
            continue;
        }
        for (j, &v) in row.iter().enumerate() {
            // SAFETY: i < m, j < n: inside C (contract); read only when beta is not 0.
            unsafe {
                let cij = ci.offset(j as isize * csc);
                *cij = if beta == 0.0 {
                    alpha * v
                } else {
                    alpha * v + beta * *cij
                };
            }
        }
    }
}

/// 32 x 32 block of `acc` (row stride `ldc` bytes) += A block x B block over `nch` chunks of
/// 32 k (with `first`, `acc` is not read: `=` instead of `+=`). With `al`/`bl` non-null, adds
/// the three products hi hi + hi lo + lo hi.
///
/// # Safety
/// Tiles configured by [`TileConfig::all_full`]; `nch > 0`; `ah`/`al` hold `nch` chunks of 32 x 32 bf16,
/// `bh`/`bl` likewise; `acc` holds 32 rows of `ldc` bytes with 32 f32 columns from it.
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(
    ah: *const u16,
    al: *const u16,
    bh: *const u16,
    bl: *const u16,
    nch: usize,
    acc: *mut f32,
    ldc: usize,
    first: bool,
) {
    // The loops below run at least once (dec; jnz).
    debug_assert!(nch > 0);
    let acc_lo = acc.wrapping_add(TILE * ldc / 4);
    // SAFETY: see the function's contract; every tile access covers 16 rows of 64 bytes at
    // the given stride inside those buffers. tmm0-3 hold C, tmm4-5 A, tmm6-7 B.
    unsafe {
        if first {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack)
            );
        } else {
            asm!(
                "tileloadd tmm0, [{c} + {s}*1]",
                "tileloadd tmm1, [{c} + {s}*1 + 64]",
                "tileloadd tmm2, [{d} + {s}*1]",
                "tileloadd tmm3, [{d} + {s}*1 + 64]",
                c = in(reg) acc, d = in(reg) acc_lo, s = in(reg) ldc,
                options(nostack, readonly),
            );
        }
        if al.is_null() {
            asm!(
                "2:",
                "tileloadd tmm4, [{a} + {s}*1]",
                "tileloadd tmm5, [{a} + {s}*1 + 1024]",
                "tileloadd tmm6, [{b} + {s}*1]",
                "tileloadd tmm7, [{b} + {s}*1 + 1024]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "add {a}, 2048",
                "add {b}, 2048",
                "dec {n}",
                "jnz 2b",
                a = inout(reg) ah => _, b = inout(reg) bh => _, n = inout(reg) nch => _,
                s = in(reg) 64usize,
                options(nostack, readonly),
            );
        } else {
            asm!(
                "2:",
                "tileloadd tmm4, [{a} + {s}*1]",
                "tileloadd tmm5, [{a} + {s}*1 + 1024]",
                "tileloadd tmm6, [{b} + {s}*1]",
                "tileloadd tmm7, [{b} + {s}*1 + 1024]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "tileloadd tmm4, [{al} + {s}*1]",
                "tileloadd tmm5, [{al} + {s}*1 + 1024]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "tileloadd tmm6, [{bl} + {s}*1]",
                "tileloadd tmm7, [{bl} + {s}*1 + 1024]",
                "tileloadd tmm4, [{a} + {s}*1]",
                "tileloadd tmm5, [{a} + {s}*1 + 1024]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "add {a}, 2048",
                "add {al}, 2048",
                "add {b}, 2048",
                "add {bl}, 2048",
                "dec {n}",
                "jnz 2b",
                a = inout(reg) ah => _, al = inout(reg) al => _,
                b = inout(reg) bh => _, bl = inout(reg) bl => _,
                n = inout(reg) nch => _, s = in(reg) 64usize,
                options(nostack, readonly),
            );
        }
        asm!(
            "tilestored [{c} + {s}*1], tmm0",
            "tilestored [{c} + {s}*1 + 64], tmm1",
            "tilestored [{d} + {s}*1], tmm2",
            "tilestored [{d} + {s}*1 + 64], tmm3",
            c = in(reg) acc, d = in(reg) acc_lo, s = in(reg) ldc,
            options(nostack),
        );
    }
}
