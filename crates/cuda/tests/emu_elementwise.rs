//! kernels/elementwise.cu on the CPU emulator (no GPU) against the layers crate's ReLU and
//! dropout and, where the layers crate has no separate function, references written from the
//! definitions (bias epilogues, NCHW <-> CNHW transposes, row / column / channel sums): every
//! kernel with the launch configuration of src/ops/elementwise.rs, then the grid-stride kernels
//! again on a grid much smaller than the data, the dropout keep threshold at its boundary, and
//! the block reductions with other power-of-two block sizes.

#[path = "emu/common.rs"]
mod common;

use alexnet_cuda::emu::{arg, Emu};
use alexnet_cuda::gpu::grid_for;
use alexnet_cuda::hash;
use alexnet_cuda::kernels::KernelFile;
use alexnet_cuda::ops::elementwise::{dropout_threshold, row_sum_split};
use alexnet_layers::dropout::{dropout_backward, dropout_forward};
use alexnet_layers::relu::{relu_backward, relu_forward};
use common::{emu, f64s, normal, rel_l2};
use cudarc::driver::LaunchConfig;

const N: usize = 3;
const C: usize = 5;
const HW: usize = 7 * 9;
/// 945 elements: 4 blocks of 256 under `grid_for`, the last one partial.
const LEN: usize = N * C * HW;

/// How a check launches a grid-stride kernel over `n` elements.
type Cfg = fn(usize) -> LaunchConfig;

/// The launch of src/ops/elementwise.rs.
fn launch_grid(n: usize) -> LaunchConfig {
    grid_for(n as u64).unwrap()
}

/// 3 blocks of 64 threads, whatever the size: every thread takes several elements.
fn small_grid(_: usize) -> LaunchConfig {
    block_cfg(3, 64)
}

fn block_cfg(blocks: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Index of (sample s, channel ch, pixel p) in (N, C, HW).
fn nchw(s: usize, ch: usize, p: usize) -> usize {
    (s * C + ch) * HW + p
}

/// Index of (channel ch, sample s, pixel p) in (C, N, HW).
fn cnhw(ch: usize, s: usize, p: usize) -> usize {
    (ch * N + s) * HW + p
}

fn relu(v: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0f32; v.len()];
    relu_forward(v, &mut y).unwrap();
    y
}

/// t: (C, N, HW) -> y: (N, C, HW) + b[c], ReLU when `relu`, by the definition.
fn bias_reference(t: &[f32], b: &[f32], from_cnhw: bool, act: bool) -> Vec<f32> {
    let mut y = vec![0.0f32; LEN];
    for s in 0..N {
        for ch in 0..C {
            for p in 0..HW {
                let src = if from_cnhw {
                    cnhw(ch, s, p)
                } else {
                    nchw(s, ch, p)
                };
                y[nchw(s, ch, p)] = t[src] + b[ch];
            }
        }
    }
    if act {
        relu(&y)
    } else {
        y
    }
}

fn bias_act(e: &Emu, cfg: Cfg, act: bool) {
    let y0 = normal(LEN, 31, 1.0);
    let b = normal(C, 32, 0.5);
    let want = bias_reference(&y0, &b, false, act);
    let mut y = y0.clone();
    let (yp, bp) = (y.as_mut_ptr(), b.as_ptr());
    let (n, c, hw, r) = (N as u64, C as u64, HW as u64, act as i32);
    let args = [arg(&yp), arg(&bp), arg(&n), arg(&c), arg(&hw), arg(&r)];
    // SAFETY: y holds N*C*HW floats and b holds C, the extents the kernel indexes.
    unsafe { e.launch("bias_act", &cfg(LEN), &args) }.unwrap();
    // One f32 addition per element, as in the reference: bit-identical.
    assert_eq!(y, want, "bias_act relu={act}");
}

fn cnhw_to_nchw_bias_act(e: &Emu, cfg: Cfg, act: bool) {
    let t = normal(LEN, 33, 1.0);
    let b = normal(C, 34, 0.5);
    let want = bias_reference(&t, &b, true, act);
    let mut y = vec![f32::NAN; LEN];
    let (tp, bp, yp) = (t.as_ptr(), b.as_ptr(), y.as_mut_ptr());
    let (nb, c, hw, r) = (N as u64, C as u64, HW as u64, act as i32);
    let args = [
        arg(&tp),
        arg(&bp),
        arg(&yp),
        arg(&nb),
        arg(&c),
        arg(&hw),
        arg(&r),
    ];
    // SAFETY: t and y hold N*C*HW floats, b holds C.
    unsafe { e.launch("cnhw_to_nchw_bias_act", &cfg(LEN), &args) }.unwrap();
    assert_eq!(y, want, "cnhw_to_nchw_bias_act relu={act}");
}

fn nchw_to_cnhw_mask(e: &Emu, cfg: Cfg, act: bool) {
    let dy = normal(LEN, 35, 1.0);
    // A ReLU output: about half of it exactly zero.
    let y = relu(&normal(LEN, 36, 1.0));
    let g = if act {
        let mut g = vec![0.0f32; LEN];
        relu_backward(&y, &dy, &mut g).unwrap();
        g
    } else {
        dy.clone()
    };
    let mut want = vec![0.0f32; LEN];
    for s in 0..N {
        for ch in 0..C {
            for p in 0..HW {
                want[cnhw(ch, s, p)] = g[nchw(s, ch, p)];
            }
        }
    }
    let mut t = vec![f32::NAN; LEN];
    // Without the mask the launch passes dy in y's place, as src/ops/elementwise.rs does.
    let (dyp, tp) = (dy.as_ptr(), t.as_mut_ptr());
    let yp = if act { y.as_ptr() } else { dyp };
    let (nb, c, hw, r) = (N as u64, C as u64, HW as u64, act as i32);
    let args = [
        arg(&dyp),
        arg(&yp),
        arg(&tp),
        arg(&nb),
        arg(&c),
        arg(&hw),
        arg(&r),
    ];
    // SAFETY: dy, y and t hold N*C*HW floats.
    unsafe { e.launch("nchw_to_cnhw_mask", &cfg(LEN), &args) }.unwrap();
    assert_eq!(t, want, "nchw_to_cnhw_mask relu={act}");
}

fn relu_kernels(e: &Emu, cfg: Cfg) {
    let x = normal(LEN, 37, 1.0);
    let n = LEN as u64;
    let want = relu(&x);

    let mut y = vec![f32::NAN; LEN];
    let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
    // SAFETY: x and y hold n floats.
    unsafe { e.launch("relu_fwd", &cfg(LEN), &[arg(&xp), arg(&yp), arg(&n)]) }.unwrap();
    assert_eq!(y, want, "relu_fwd");

    // In place (x and y alias, as the op allows).
    let mut z = x.clone();
    let zp = z.as_mut_ptr();
    let zc = zp as *const f32;
    // SAFETY: z holds n floats; the kernel reads and writes element i in the same thread.
    unsafe { e.launch("relu_fwd", &cfg(LEN), &[arg(&zc), arg(&zp), arg(&n)]) }.unwrap();
    assert_eq!(z, want, "relu_fwd in place");

    let dy = normal(LEN, 38, 1.0);
    let mut dx_ref = vec![0.0f32; LEN];
    relu_backward(&want, &dy, &mut dx_ref).unwrap();

    let mut g = dy.clone();
    let (wp, gp) = (want.as_ptr(), g.as_mut_ptr());
    // SAFETY: y and g hold n floats.
    unsafe { e.launch("relu_mask", &cfg(LEN), &[arg(&wp), arg(&gp), arg(&n)]) }.unwrap();
    assert_eq!(g, dx_ref, "relu_mask");
}

/// Dropout with drop probability `p` (f64, as the launch widens its f32 `p`): forward against
/// the layers crate's `dropout_forward`, the mask against `alexnet_cuda::hash::keeps`, the
/// same kernel as backward against `dropout_backward`, and the keep rate.
fn dropout(e: &Emu, cfg: Cfg, p: f64, seed: u64) {
    let x = normal(LEN, 51, 1.0);
    let (mut y_ref, mut mask) = (vec![0.0f32; LEN], vec![0.0f32; LEN]);
    dropout_forward(&x, &mut y_ref, &mut mask, p, seed).unwrap();
    let (n, thr, scale) = (LEN as u64, dropout_threshold(p), (1.0 / (1.0 - p)) as f32);

    let mut y = vec![f32::NAN; LEN];
    let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
    let args = [
        arg(&xp),
        arg(&yp),
        arg(&n),
        arg(&seed),
        arg(&thr),
        arg(&scale),
    ];
    // SAFETY: x and y hold n floats.
    unsafe { e.launch("dropout_apply", &cfg(LEN), &args) }.unwrap();
    // Same mask, same f32 product x * (1 / (1 - p)): bit-identical.
    assert_eq!(y, y_ref, "dropout_apply p={p} seed={seed}");
    // The device-seed form (CUDA graphs) reads the same seed from memory: the same output.
    let mut y_at = vec![f32::NAN; LEN];
    let seed_mem = [seed];
    let (yap, sp) = (y_at.as_mut_ptr(), seed_mem.as_ptr());
    let args = [
        arg(&xp),
        arg(&yap),
        arg(&n),
        arg(&sp),
        arg(&thr),
        arg(&scale),
    ];
    // SAFETY: x and y_at hold n floats, seed_mem one u64.
    unsafe { e.launch("dropout_apply_at", &cfg(LEN), &args) }.unwrap();
    assert_eq!(y_at, y_ref, "dropout_apply_at p={p} seed={seed}");
    // x is never exactly 0, so y != 0 is the mask.
    for (i, v) in y.iter().enumerate() {
        assert_eq!(*v != 0.0, hash::keeps(seed, i as u64, p), "mask {i} p={p}");
    }

    let dy = normal(LEN, 52, 1.0);
    let mut dx_ref = vec![0.0f32; LEN];
    dropout_backward(&dy, &mask, &mut dx_ref).unwrap();
    let mut dx = vec![f32::NAN; LEN];
    let (dyp, dxp) = (dy.as_ptr(), dx.as_mut_ptr());
    let args = [
        arg(&dyp),
        arg(&dxp),
        arg(&n),
        arg(&seed),
        arg(&thr),
        arg(&scale),
    ];
    // SAFETY: dy and dx hold n floats.
    unsafe { e.launch("dropout_apply", &cfg(LEN), &args) }.unwrap();
    assert_eq!(dx, dx_ref, "dropout_apply as backward p={p}");

    // Binomial(LEN, 1 - p): within 5 standard deviations.
    let kept = y.iter().filter(|v| **v != 0.0).count() as f64;
    let (mean, sd) = (LEN as f64 * (1.0 - p), (LEN as f64 * p * (1.0 - p)).sqrt());
    assert!(
        (kept - mean).abs() <= 5.0 * sd + 0.5,
        "kept {kept} of {LEN} at p={p}"
    );
}

fn dropouts(e: &Emu, cfg: Cfg) {
    // The launch takes p as f32 and widens it: 0.3f32 is not 0.3.
    for (p, seed) in [(0.5f32, 42u64), (0.3, u64::MAX - 5), (0.0, 7), (0.9, 1234)] {
        dropout(e, cfg, p as f64, seed);
    }
}

/// Every grid-stride kernel of the file under `cfg`.
fn grid_stride_checks(e: &Emu, cfg: Cfg) {
    for act in [false, true] {
        bias_act(e, cfg, act);
        cnhw_to_nchw_bias_act(e, cfg, act);
        nchw_to_cnhw_mask(e, cfg, act);
    }
    relu_kernels(e, cfg);
    dropouts(e, cfg);
    col_sum(e, cfg, 37, 300, false);
    col_sum(e, cfg, 37, 300, true);
    col_sum(e, cfg, 1, 5, false);
}

/// Normal data, or (`integers`) small integers, whose sums are exact in f32 in any order.
fn data(n: usize, seed: u64, integers: bool) -> Vec<f32> {
    let v = normal(n, seed, if integers { 8.0 } else { 1.0 });
    if integers {
        v.iter().map(|x| x.round()).collect()
    } else {
        v
    }
}

fn check_sums(got: &[f32], want: &[f64], integers: bool, what: &str) {
    if integers {
        // Every partial sum is an integer below 2^24: exact in f32, whatever the order.
        assert_eq!(f64s(got), want, "{what}");
    } else {
        let err = rel_l2(got, want);
        // f32 sums of at most ~1000 unit normals against f64: the rounding of a few dozen
        // additions in a row (measured up to 1.2e-7).
        assert!(err < 1e-6, "{what}: rel L2 {err:e}");
    }
}

fn row_sum(e: &Emu, rows: usize, cols: usize, block: u32, accumulate: bool, integers: bool) {
    let what = format!("row_sum {rows}x{cols} block {block} accumulate={accumulate}");
    let m = data(rows * cols, 41 + cols as u64, integers);
    let out0 = data(rows, 42, integers);
    let want: Vec<f64> = (0..rows)
        .map(|r| {
            let s: f64 = m[r * cols..(r + 1) * cols].iter().map(|&v| v as f64).sum();
            if accumulate {
                out0[r] as f64 + s
            } else {
                s
            }
        })
        .collect();
    let mut out = if accumulate {
        out0.clone()
    } else {
        vec![f32::NAN; rows]
    };
    let (mp, op) = (m.as_ptr(), out.as_mut_ptr());
    let (cols64, acc) = (cols as u64, accumulate as i32);
    // One block per row, as src/ops/elementwise.rs launches it (with a block of 256 there).
    let cfg = block_cfg(rows, block);
    // SAFETY: m holds rows*cols floats and out rows; block is a power of two <= 1024.
    unsafe {
        e.launch(
            "row_sum",
            &cfg,
            &[arg(&mp), arg(&op), arg(&cols64), arg(&acc)],
        )
    }
    .unwrap();
    check_sums(&out, &want, integers, &what);
}

/// `row_sum` as `ops::elementwise::row_sum` composes it for few long rows: per
/// [`row_sum_split`], segments summed by one block each, then the segments of each row.
fn row_sum_split_rows(e: &Emu, rows: usize, cols: usize, accumulate: bool, integers: bool) {
    let split = row_sum_split(rows, cols);
    assert!(split > 1, "{rows}x{cols} is cut into segments");
    let what = format!("row_sum {rows}x{cols} in {split} segments, accumulate={accumulate}");
    let m = data(rows * cols, 45 + cols as u64, integers);
    let out0 = data(rows, 46, integers);
    let want: Vec<f64> = (0..rows)
        .map(|r| {
            let s: f64 = m[r * cols..(r + 1) * cols].iter().map(|&v| v as f64).sum();
            s + if accumulate { out0[r] as f64 } else { 0.0 }
        })
        .collect();
    let mut part = vec![f32::NAN; rows * split];
    let mut out = out0.clone();
    let passes = [
        (m.as_ptr(), part.as_mut_ptr(), rows * split, cols / split, 0),
        (
            part.as_ptr(),
            out.as_mut_ptr(),
            rows,
            split,
            accumulate as i32,
        ),
    ];
    for (mp, op, r, c, acc) in passes {
        let c64 = c as u64;
        // SAFETY: mp holds r*c floats and op r (m, part and out above, sized so).
        unsafe {
            e.launch(
                "row_sum",
                &block_cfg(r, 256),
                &[arg(&mp), arg(&op), arg(&c64), arg(&acc)],
            )
        }
        .unwrap();
    }
    check_sums(&out, &want, integers, &what);
}

fn col_sum(e: &Emu, cfg: Cfg, rows: usize, cols: usize, integers: bool) {
    let m = data(rows * cols, 43 + rows as u64, integers);
    let want: Vec<f64> = (0..cols)
        .map(|j| (0..rows).map(|r| m[r * cols + j] as f64).sum())
        .collect();
    let mut out = vec![f32::NAN; cols];
    let (mp, op) = (m.as_ptr(), out.as_mut_ptr());
    let (r64, c64) = (rows as u64, cols as u64);
    // SAFETY: m holds rows*cols floats and out cols.
    unsafe {
        e.launch(
            "col_sum",
            &cfg(cols),
            &[arg(&mp), arg(&op), arg(&r64), arg(&c64)],
        )
    }
    .unwrap();
    check_sums(&out, &want, integers, &format!("col_sum {rows}x{cols}"));
}

fn channel_sum(e: &Emu, (n, c, hw): (usize, usize, usize), block: u32, integers: bool) {
    let g = data(n * c * hw, 44 + hw as u64, integers);
    let want: Vec<f64> = (0..c)
        .map(|ch| {
            (0..n)
                .flat_map(|s| &g[(s * c + ch) * hw..(s * c + ch + 1) * hw])
                .map(|&v| v as f64)
                .sum()
        })
        .collect();
    let mut db = vec![f32::NAN; c];
    let (gp, dbp) = (g.as_ptr(), db.as_mut_ptr());
    let (n64, c64, hw64) = (n as u64, c as u64, hw as u64);
    // One block per channel, as src/ops/elementwise.rs launches it (with a block of 256 there).
    let cfg = block_cfg(c, block);
    // SAFETY: g holds n*c*hw floats and db c; block is a power of two <= 1024.
    unsafe {
        e.launch(
            "channel_sum",
            &cfg,
            &[arg(&gp), arg(&dbp), arg(&n64), arg(&c64), arg(&hw64)],
        )
    }
    .unwrap();
    let what = format!("channel_sum ({n}, {c}, {hw}) block {block}");
    check_sums(&db, &want, integers, &what);
}

#[test]
fn elementwise_kernels_match_the_cpu_reference() {
    let Some(e) = emu(KernelFile::Elementwise) else {
        return;
    };
    grid_stride_checks(&e, launch_grid);
    // Rows shorter than the block (idle threads), longer (several elements per thread), a
    // single column; plain and accumulating.
    for integers in [true, false] {
        for cols in [100, 1000, 1] {
            for accumulate in [false, true] {
                row_sum(&e, 5, cols, 256, accumulate, integers);
            }
        }
        row_sum_split_rows(&e, 3, 11 * 1024, true, integers);
        row_sum_split_rows(&e, 2, 4096, false, integers);
        // Planes shorter and longer than the block, one a divisor of it, the paper's tile
        // counts (conv1 95, conv3-5 6 partial sums per channel and sample).
        channel_sum(&e, (3, 5, 300), 256, integers);
        channel_sum(&e, (2, 7, 13), 256, integers);
        channel_sum(&e, (9, 3, 32), 256, integers);
        channel_sum(&e, (40, 4, 95), 256, integers);
        channel_sum(&e, (130, 3, 6), 256, integers);
        channel_sum(&e, (1, 2, 1), 256, integers);
    }
    common::assert_all_launched(&e);
}

#[test]
fn row_sums_cut_long_rows_into_segments() {
    // The paper net's bias gradients: conv1 in chunks of 61 samples (55x55), conv3 at batch
    // 128 (13x13); short rows and many rows stay whole.
    assert_eq!(row_sum_split(96, 61 * 3025), 11);
    assert_eq!(row_sum_split(384, 128 * 169), 2);
    assert_eq!(row_sum_split(1, 4096), 4);
    assert_eq!(row_sum_split(5, 1000), 1);
    assert_eq!(row_sum_split(2048, 1 << 20), 1);
    // A prime number of columns has no segments.
    assert_eq!(row_sum_split(4, 65_537), 1);
}

#[test]
fn grid_stride_kernels_cover_data_larger_than_the_grid() {
    let Some(e) = emu(KernelFile::Elementwise) else {
        return;
    };
    grid_stride_checks(&e, small_grid);
}

#[test]
fn dropout_keeps_an_element_whose_hash_equals_the_threshold() {
    let Some(e) = emu(KernelFile::Elementwise) else {
        return;
    };
    // p = u * 2^-53 with u the 53-bit hash of element 17: exactly representable, so element 17
    // sits on the boundary "uniform >= p" (kept); one step higher it is dropped.
    let seed = 99u64;
    let u = hash::mix_hash(seed, 17) >> 11;
    for (p, kept) in [(u, true), (u + 1, false)] {
        let p = p as f64 / (1u64 << 53) as f64;
        assert_eq!(hash::keeps(seed, 17, p), kept);
        dropout(&e, launch_grid, p, seed);
    }
}

#[test]
fn block_reductions_work_for_every_power_of_two_block() {
    let Some(e) = emu(KernelFile::Elementwise) else {
        return;
    };
    for block in [1, 2, 32, 1024] {
        row_sum(&e, 3, 1500, block, true, true);
        channel_sum(&e, (2, 3, 1100), block, true);
        channel_sum(&e, (50, 3, 7), block, true);
    }
}
