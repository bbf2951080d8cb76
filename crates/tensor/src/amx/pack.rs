//! Packing f32 operands into the bf16 layouts the tile kernel reads (AVX-512 BF16
//! conversion for full blocks, a scalar path for the edges).

use super::{bf16_bits, split, Strided, KT, MR, NR, TILE};

/// VNNI pairs per 32-k tile row.
const PAIRS: usize = KT / 2;
use std::arch::x86_64::*;

/// The 512 bits of a bf16 vector as integers.
#[inline(always)]
fn bits(v: __m512bh) -> __m512i {
    // SAFETY: both are 512-bit plain-data vectors; every bit pattern is valid for either.
    unsafe { std::mem::transmute::<__m512bh, __m512i>(v) }
}

/// 32 f32 (`v0` then `v1`) -> 32 bf16 in order (hi), and the bf16 of what rounding left (lo,
/// when `x3`). The hardware's round-to-nearest-even gives what [`bf16_bits`] gives, except that
/// it flushes denormals, which the tiles read as zero anyway.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
fn cvt32(v0: __m512, v1: __m512, x3: bool) -> (__m512i, __m512i) {
    let h = _mm512_cvtne2ps_pbh(v1, v0);
    let hi = bits(h);
    if !x3 {
        return (hi, _mm512_setzero_si512());
    }
    let widen = |x: __m256i| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(x)));
    let h0 = widen(_mm512_castsi512_si256(hi));
    let h1 = widen(_mm512_extracti64x4_epi64::<1>(hi));
    let l = _mm512_cvtne2ps_pbh(_mm512_sub_ps(v1, h1), _mm512_sub_ps(v0, h0));
    (hi, bits(l))
}

/// Two bf16 values as one VNNI pair (the even k in the low half).
#[inline(always)]
fn pair(even: u16, odd: u16) -> u32 {
    even as u32 | (odd as u32) << 16
}

/// `dst (cols x rows) = src (rows x cols)` transposed, both row-major.
#[inline(always)]
fn transpose<T: Copy>(src: &[T], rows: usize, cols: usize, dst: &mut [T]) {
    for c in 0..cols {
        for r in 0..rows {
            dst[c * rows + r] = src[r * cols + c];
        }
    }
}

/// Packs A's rows 0..m, columns k0..k0+kc into `[32-row block][chunk][32 rows][32 k]` (hi, and
/// lo when `x3`); padding is zero.
///
/// # Safety
/// `a + i*rsa + p*csa` must be readable for i < m, k0 <= p < k0 + kc.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
pub(super) unsafe fn pack_a(
    a: Strided<*const f32>,
    m: usize,
    k0: usize,
    kc: usize,
    nch: usize,
    ah: &mut [u16],
    al: &mut [u16],
    x3: bool,
) {
    if nch == 0 {
        return; // k = 0: nothing to pack
    }
    let (a, rsa, csa) = (a.ptr, a.rs, a.cs);
    let mp = ah.len() / (nch * KT);
    let (mut th, mut tl) = ([0u16; MR * KT], [0u16; MR * KT]);
    for i0 in (0..mp).step_by(MR) {
        for ch in 0..nch {
            let o = ((i0 / MR) * nch + ch) * MR * KT;
            let hi = &mut ah[o..o + MR * KT];
            let lo = if x3 {
                &mut al[o..o + MR * KT]
            } else {
                &mut [][..]
            };
            let src = a.wrapping_offset(i0 as isize * rsa + (k0 + ch * KT) as isize * csa);
            let full = i0 + MR <= m && ch * KT + KT <= kc;
            if full && csa == 1 {
                for r in 0..MR {
                    // SAFETY: rows i0..i0+32 < m and 32 k from k0 + ch*32 < k0 + kc, contiguous;
                    // the 32-element rows of hi/lo are in bounds (o + 32*32 <= len).
                    unsafe {
                        let p = src.offset(r as isize * rsa);
                        let (h, l) = cvt32(_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)), x3);
                        _mm512_storeu_si512(hi.as_mut_ptr().add(r * KT).cast(), h);
                        if x3 {
                            _mm512_storeu_si512(lo.as_mut_ptr().add(r * KT).cast(), l);
                        }
                    }
                }
            } else if full && rsa == 1 {
                // Column-major A: convert each k's 32 contiguous rows, then transpose.
                for p in 0..KT {
                    // SAFETY: as above, the 32 rows of column k0 + ch*32 + p are contiguous;
                    // th/tl hold 32 x 32.
                    unsafe {
                        let q = src.offset(p as isize * csa);
                        let (h, l) = cvt32(_mm512_loadu_ps(q), _mm512_loadu_ps(q.add(16)), x3);
                        _mm512_storeu_si512(th.as_mut_ptr().add(p * MR).cast(), h);
                        _mm512_storeu_si512(tl.as_mut_ptr().add(p * MR).cast(), l);
                    }
                }
                transpose(&th, KT, MR, hi);
                if x3 {
                    transpose(&tl, KT, MR, lo);
                }
            } else {
                let rows = MR.min(m.saturating_sub(i0));
                let kk = KT.min(kc - ch * KT);
                for r in 0..MR {
                    for t in 0..KT {
                        let v = if r < rows && t < kk {
                            // SAFETY: row i0 + r < m, k0 + ch*32 + t < k0 + kc.
                            unsafe { *src.offset(r as isize * rsa + t as isize * csa) }
                        } else {
                            0.0
                        };
                        let (h, l) = if x3 { split(v) } else { (bf16_bits(v), 0) };
                        hi[r * KT + t] = h;
                        if x3 {
                            lo[r * KT + t] = l;
                        }
                    }
                }
            }
        }
    }
}

/// Packs B's rows k0..k0+kc, columns j0..j0+nj (one panel) into `[32-column block][chunk][16-column
/// tile][16 k pairs][16 columns]` of VNNI pairs, `blk` elements per block (hi, and lo when
/// `x3`); padding is zero. Row-major B (the forward's im2col matrix) is read a pair of rows at a
/// time across the whole panel, so that each row is one sequential run.
///
/// # Safety
/// `b + p*rsb + j*csb` must be readable for k0 <= p < k0 + kc, j0 <= j < j0 + nj.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
pub(super) unsafe fn pack_b(
    b: Strided<*const f32>,
    k0: usize,
    kc: usize,
    j0: usize,
    nj: usize,
    nch: usize,
    bh: &mut [u32],
    bl: &mut [u32],
    x3: bool,
) {
    let tiles = nj.div_ceil(NR) * (NR / TILE);
    let blk = nch * KT * NR / 2;
    // Offset of (chunk, 16-column tile) in the packed panel.
    let at = |ch: usize, tt: usize| (tt / 2) * blk + ch * KT * NR / 2 + (tt % 2) * PAIRS * TILE;
    for ch in 0..nch {
        let full_chunk = ch * KT + KT <= kc;
        let row_major = full_chunk && b.cs == 1;
        for tt in 0..tiles {
            let cols = TILE.min(nj.saturating_sub(tt * TILE));
            if row_major && cols == TILE {
                continue; // the row pass below
            }
            let o = at(ch, tt);
            let lo = if x3 {
                &mut bl[o..o + PAIRS * TILE]
            } else {
                &mut [][..]
            };
            let src = b
                .ptr
                .wrapping_offset((k0 + ch * KT) as isize * b.rs + (j0 + tt * TILE) as isize * b.cs);
            let kk = KT.min(kc - ch * KT);
            // SAFETY: rows k0 + ch*32 + kk <= k0 + kc, columns j0 + tt*16 + cols <= j0 + nj.
            unsafe { pack_b_tile(src, b.rs, b.cs, kk, cols, &mut bh[o..o + PAIRS * TILE], lo) };
        }
        if !row_major {
            continue;
        }
        let full_tiles = nj / TILE;
        for t2 in 0..PAIRS {
            let r0 = b
                .ptr
                .wrapping_offset((k0 + ch * KT + 2 * t2) as isize * b.rs + j0 as isize);
            let r1 = r0.wrapping_offset(b.rs);
            for tt in 0..full_tiles {
                let o = at(ch, tt) + t2 * TILE;
                // SAFETY: rows k0 + ch*32 + 2*t2 (+1) < k0 + kc, 16 contiguous columns from
                // j0 + tt*16, inside nj; 16 pairs at o are inside the panel.
                unsafe {
                    let v0 = _mm512_loadu_ps(r0.add(tt * TILE));
                    let v1 = _mm512_loadu_ps(r1.add(tt * TILE));
                    let (h, l) = cvt32(v0, v1, x3);
                    _mm512_storeu_si512(bh.as_mut_ptr().add(o).cast(), interleave(h));
                    if x3 {
                        _mm512_storeu_si512(bl.as_mut_ptr().add(o).cast(), interleave(l));
                    }
                }
            }
        }
    }
}

/// 32 bf16 (16 of row k, then 16 of row k+1) -> 16 VNNI pairs (row k [c], row k+1 [c]).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn interleave(v: __m512i) -> __m512i {
    let idx = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
        19, 3, 18, 2, 17, 1, 16, 0,
    );
    _mm512_permutexvar_epi16(idx, v)
}

/// One 32-k x 16-column tile of B (`kk` rows and `cols` columns of it present, the rest zero)
/// as 16 x 16 VNNI pairs: column-major B through a convert-and-transpose, anything else (and
/// the edges) element by element. `lo` is empty unless bf16x3.
///
/// # Safety
/// `src + t*rsb + c*csb` must be readable for t < kk, c < cols.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn pack_b_tile(
    src: *const f32,
    rsb: isize,
    csb: isize,
    kk: usize,
    cols: usize,
    hi: &mut [u32],
    lo: &mut [u32],
) {
    let x3 = !lo.is_empty();
    if kk == KT && cols == TILE && rsb == 1 {
        // Each column's 32 k are contiguous, i.e. already in pairs.
        let (mut tp, mut tq) = ([0u32; TILE * PAIRS], [0u32; TILE * PAIRS]);
        for c in 0..TILE {
            // SAFETY: column c < cols, 32 contiguous k (contract); tp/tq hold 16 x 16 pairs.
            unsafe {
                let q = src.offset(c as isize * csb);
                let (h, l) = cvt32(_mm512_loadu_ps(q), _mm512_loadu_ps(q.add(16)), x3);
                _mm512_storeu_si512(tp.as_mut_ptr().add(c * PAIRS).cast(), h);
                _mm512_storeu_si512(tq.as_mut_ptr().add(c * PAIRS).cast(), l);
            }
        }
        transpose(&tp, TILE, PAIRS, hi);
        if x3 {
            transpose(&tq, TILE, PAIRS, lo);
        }
        return;
    }
    for t2 in 0..PAIRS {
        for c in 0..TILE {
            let get = |t: usize| {
                if c < cols && t < kk {
                    // SAFETY: t < kk, c < cols (contract).
                    unsafe { *src.offset(t as isize * rsb + c as isize * csb) }
                } else {
                    0.0
                }
            };
            let (e, od) = (split(get(2 * t2)), split(get(2 * t2 + 1)));
            hi[t2 * TILE + c] = pair(e.0, od.0);
            if x3 {
                lo[t2 * TILE + c] = pair(e.1, od.1);
            }
        }
    }
}
