//! Launches of `kernels/elementwise.cu`: bias (+ReLU), ReLU, dropout, bias-gradient sums and the
//! NCHW <-> CNHW transposes around the convolution GEMMs.

use super::check_len;
use crate::error::CudaError;
use crate::gpu::{grid_for, Gpu};
use crate::kernels::KernelFile;
use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

const F: KernelFile = KernelFile::Elementwise;

fn launch_err(op: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> CudaError {
    CudaError::driver(op)
}

/// y: (N, C, HW) in place: y += `b[c]`, then ReLU when `relu`.
pub fn bias_act(
    gpu: &Gpu,
    y: &mut CudaViewMut<f32>,
    b: &CudaView<f32>,
    (n, c, hw): (usize, usize, usize),
    relu: bool,
) -> Result<(), CudaError> {
    check_len("bias_act", "y", y.len(), n * c * hw)?;
    check_len("bias_act", "b", b.len(), c)?;
    super::idx32("bias_act", "n * c * hw", n * c * hw)?;
    let Some(cfg) = grid_for((n * c * hw) as u64) else {
        return Ok(());
    };
    let f = gpu.function(F, "bias_act")?;
    let (n, c, hw, r) = (n as u64, c as u64, hw as u64, relu as i32);
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(y).arg(b).arg(&n).arg(&c).arg(&hw).arg(&r);
    // SAFETY: argument types match `bias_act(float*, const float*, u64, u64, u64, int)` and the
    // buffers hold n*c*hw and c elements (checked above).
    unsafe { l.launch(cfg) }
        .map_err(launch_err("bias_act"))
        .map(|_| ())
}

/// t: (C, NB, HW) -> y: (NB, C, HW) + `b[c]` (ReLU when `relu`).
pub fn cnhw_to_nchw_bias_act(
    gpu: &Gpu,
    t: &CudaView<f32>,
    b: &CudaView<f32>,
    y: &mut CudaViewMut<f32>,
    (nb, c, hw): (usize, usize, usize),
    relu: bool,
) -> Result<(), CudaError> {
    let len = nb * c * hw;
    super::idx32("conv epilogue", "nb * c * hw", len)?;
    check_len("conv epilogue", "t", t.len(), len)?;
    check_len("conv epilogue", "y", y.len(), len)?;
    check_len("conv epilogue", "b", b.len(), c)?;
    let Some(cfg) = grid_for(len as u64) else {
        return Ok(());
    };
    let f = gpu.function(F, "cnhw_to_nchw_bias_act")?;
    let (nb, c, hw, r) = (nb as u64, c as u64, hw as u64, relu as i32);
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(t).arg(b).arg(y).arg(&nb).arg(&c).arg(&hw).arg(&r);
    // SAFETY: types match the kernel signature; t, y hold nb*c*hw and b holds c (checked).
    unsafe { l.launch(cfg) }
        .map_err(launch_err("cnhw_to_nchw_bias_act"))
        .map(|_| ())
}

/// dy: (NB, C, HW) -> t: (C, NB, HW), times the ReLU mask of `y` (same layout) when given.
pub fn nchw_to_cnhw_mask(
    gpu: &Gpu,
    dy: &CudaView<f32>,
    y: Option<&CudaView<f32>>,
    t: &mut CudaViewMut<f32>,
    (nb, c, hw): (usize, usize, usize),
) -> Result<(), CudaError> {
    let len = nb * c * hw;
    super::idx32("conv backward", "nb * c * hw", len)?;
    check_len("conv backward", "dy", dy.len(), len)?;
    check_len("conv backward", "t", t.len(), len)?;
    if let Some(y) = y {
        check_len("conv backward", "y", y.len(), len)?;
    }
    let Some(cfg) = grid_for(len as u64) else {
        return Ok(());
    };
    let f = gpu.function(F, "nchw_to_cnhw_mask")?;
    let (nb, c, hw, r) = (nb as u64, c as u64, hw as u64, y.is_some() as i32);
    let ymask = y.unwrap_or(dy);
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(dy)
        .arg(ymask)
        .arg(t)
        .arg(&nb)
        .arg(&c)
        .arg(&hw)
        .arg(&r);
    // SAFETY: types match; all three buffers hold nb*c*hw elements (checked; y is only read
    // when relu = 1, and then it is the checked mask).
    unsafe { l.launch(cfg) }
        .map_err(launch_err("nchw_to_cnhw_mask"))
        .map(|_| ())
}

/// y = max(x, 0); x, y: (n).
pub fn relu_fwd(
    gpu: &Gpu,
    x: &CudaView<f32>,
    y: &mut CudaViewMut<f32>,
    n: usize,
) -> Result<(), CudaError> {
    check_len("relu", "x", x.len(), n)?;
    check_len("relu", "y", y.len(), n)?;
    let Some(cfg) = grid_for(n as u64) else {
        return Ok(());
    };
    let f = gpu.function(F, "relu_fwd")?;
    let n = n as u64;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(x).arg(y).arg(&n);
    // SAFETY: types match `relu_fwd(const float*, float*, u64)`; both hold n (checked).
    unsafe { l.launch(cfg) }
        .map_err(launch_err("relu_fwd"))
        .map(|_| ())
}

/// g (n) in place: g = g where y > 0 else 0 (the ReLU backward, y the ReLU output).
pub fn relu_mask(
    gpu: &Gpu,
    y: &CudaView<f32>,
    g: &mut CudaViewMut<f32>,
    n: usize,
) -> Result<(), CudaError> {
    check_len("relu backward", "y", y.len(), n)?;
    check_len("relu backward", "g", g.len(), n)?;
    let Some(cfg) = grid_for(n as u64) else {
        return Ok(());
    };
    let f = gpu.function(F, "relu_mask")?;
    let n = n as u64;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(y).arg(g).arg(&n);
    // SAFETY: types match `relu_mask(const float*, float*, u64)`; both hold n (checked).
    unsafe { l.launch(cfg) }
        .map_err(launch_err("relu_mask"))
        .map(|_| ())
}

/// Keep threshold of the dropout hash for drop probability `p`: element i is kept iff
/// `(hash(seed, i) >> 11) >= threshold`, which equals `uniform53(seed, i) >= p` exactly.
pub fn dropout_threshold(p: f64) -> u64 {
    (p * (1u64 << 53) as f64).ceil() as u64
}

/// Inverted dropout (its own backward): y = x * keep / (1 - p); x, y: (n).
pub fn dropout_apply(
    gpu: &Gpu,
    x: &CudaView<f32>,
    y: &mut CudaViewMut<f32>,
    n: usize,
    p: f32,
    seed: u64,
) -> Result<(), CudaError> {
    dropout_launch(gpu, x, y, n, p, Seed::Value(seed))
}

/// [`dropout_apply`] with the seed read by the kernel from `seed` (one u64 on the device), so
/// that a captured CUDA graph replays with each step's seed written there.
pub fn dropout_apply_at(
    gpu: &Gpu,
    x: &CudaView<f32>,
    y: &mut CudaViewMut<f32>,
    n: usize,
    p: f32,
    seed: &CudaView<u64>,
) -> Result<(), CudaError> {
    check_len("dropout", "seed", seed.len(), 1)?;
    dropout_launch(gpu, x, y, n, p, Seed::Device(seed))
}

/// Where a dropout launch takes its seed from.
enum Seed<'a, 'b> {
    Value(u64),
    Device(&'a CudaView<'b, u64>),
}

fn dropout_launch(
    gpu: &Gpu,
    x: &CudaView<f32>,
    y: &mut CudaViewMut<f32>,
    n: usize,
    p: f32,
    seed: Seed,
) -> Result<(), CudaError> {
    if !(0.0..1.0).contains(&p) {
        return Err(CudaError::invalid(
            "dropout",
            format!("p={p} not in [0, 1)"),
        ));
    }
    check_len("dropout", "x", x.len(), n)?;
    check_len("dropout", "y", y.len(), n)?;
    let Some(cfg) = grid_for(n as u64) else {
        return Ok(());
    };
    let (n, thr, scale) = (
        n as u64,
        dropout_threshold(p as f64),
        (1.0 / (1.0 - p as f64)) as f32,
    );
    let name = match seed {
        Seed::Value(_) => "dropout_apply",
        Seed::Device(_) => "dropout_apply_at",
    };
    let f = gpu.function(F, name)?;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(x).arg(y).arg(&n);
    match &seed {
        Seed::Value(v) => l.arg(v),
        Seed::Device(v) => l.arg(*v),
    };
    l.arg(&thr).arg(&scale);
    // SAFETY: types match `dropout_apply(const float*, float*, u64, u64, u64, float)` and
    // `dropout_apply_at(const float*, float*, u64, const u64*, u64, float)`; x and y hold n
    // floats and a device seed one u64 (checked).
    unsafe { l.launch(cfg) }
        .map_err(launch_err(name))
        .map(|_| ())
}

/// Blocks [`row_sum`] aims for (a few per SM of an H100 / H200).
pub const ROW_SUM_BLOCKS: usize = 1024;
/// The shortest row segment one block of [`row_sum`] sums.
pub const ROW_SUM_MIN_SEGMENT: usize = 1024;

/// Segments per row for [`row_sum`] over (rows, cols): the largest divisor s of `cols` with
/// rows * s <= [`ROW_SUM_BLOCKS`] (rounded up to a whole segment per row) and segments of at
/// least [`ROW_SUM_MIN_SEGMENT`]; 1 (one block per row) when none is.
pub fn row_sum_split(rows: usize, cols: usize) -> usize {
    let want = ROW_SUM_BLOCKS.div_ceil(rows.max(1));
    (2..=want.min(cols / ROW_SUM_MIN_SEGMENT))
        .rev()
        .find(|s| cols.is_multiple_of(*s))
        .unwrap_or(1)
}

/// m: (rows, cols): `out[r] (+)= sum_j m[r, j]`, deterministic. With few long rows (a
/// convolution's bias gradient: one row per channel, hundreds of thousands of columns) one
/// block per row would leave most of the GPU idle, so the rows are cut into
/// [`row_sum_split`] segments summed by one block each into scratch, then summed per row.
pub fn row_sum(
    gpu: &Gpu,
    m: &CudaView<f32>,
    out: &mut CudaViewMut<f32>,
    (rows, cols): (usize, usize),
    accumulate: bool,
) -> Result<(), CudaError> {
    check_len("row_sum", "m", m.len(), rows * cols)?;
    check_len("row_sum", "out", out.len(), rows)?;
    let split = row_sum_split(rows, cols);
    if split == 1 {
        return row_sum_blocks(gpu, m, out, (rows, cols), accumulate);
    }
    let mut guard = gpu.sum_scratch.lock().unwrap_or_else(|p| p.into_inner());
    let part = gpu.grow(&mut guard, rows * split, "row sum segments")?;
    let mut pv = part.slice_mut(0..rows * split);
    // m: (rows * split, cols / split) -> part (rows, split) -> out (rows)
    row_sum_blocks(gpu, m, &mut pv, (rows * split, cols / split), false)?;
    row_sum_blocks(gpu, &pv.as_view(), out, (rows, split), accumulate)
}

/// [`row_sum`] with one block per row.
fn row_sum_blocks(
    gpu: &Gpu,
    m: &CudaView<f32>,
    out: &mut CudaViewMut<f32>,
    (rows, cols): (usize, usize),
    accumulate: bool,
) -> Result<(), CudaError> {
    check_len("row_sum", "m", m.len(), rows * cols)?;
    check_len("row_sum", "out", out.len(), rows)?;
    if rows == 0 {
        return Ok(());
    }
    let rows32 = super::u32_of("row_sum", "rows", rows)?;
    let cfg = LaunchConfig {
        grid_dim: (rows32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let f = gpu.function(F, "row_sum")?;
    let (cols, acc) = (cols as u64, accumulate as i32);
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(m).arg(out).arg(&cols).arg(&acc);
    // SAFETY: types match `row_sum(const float*, float*, u64, int)`; m holds rows*cols and out
    // rows (checked); block size 256 is a power of two <= the kernel's 1024 shared slots.
    unsafe { l.launch(cfg) }
        .map_err(launch_err("row_sum"))
        .map(|_| ())
}

/// m: (rows, cols) -> out: (cols) = column sums.
pub fn col_sum(
    gpu: &Gpu,
    m: &CudaView<f32>,
    out: &mut CudaViewMut<f32>,
    (rows, cols): (usize, usize),
) -> Result<(), CudaError> {
    check_len("col_sum", "m", m.len(), rows * cols)?;
    check_len("col_sum", "out", out.len(), cols)?;
    let Some(cfg) = grid_for(cols as u64) else {
        return Ok(());
    };
    let f = gpu.function(F, "col_sum")?;
    let (rows, cols) = (rows as u64, cols as u64);
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(m).arg(out).arg(&rows).arg(&cols);
    // SAFETY: types match `col_sum(const float*, float*, u64, u64)`; sizes checked.
    unsafe { l.launch(cfg) }
        .map_err(launch_err("col_sum"))
        .map(|_| ())
}

/// db (C) = per-channel sums of g: (n, C, hw) (the convolution bias gradient).
pub fn channel_sum(
    gpu: &Gpu,
    g: &CudaView<f32>,
    db: &mut CudaViewMut<f32>,
    (n, c, hw): (usize, usize, usize),
) -> Result<(), CudaError> {
    check_len("channel_sum", "g", g.len(), n * c * hw)?;
    check_len("channel_sum", "db", db.len(), c)?;
    if c == 0 {
        return Ok(());
    }
    let cfg = LaunchConfig {
        grid_dim: (super::u32_of("channel_sum", "channels", c)?, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let f = gpu.function(F, "channel_sum")?;
    let (n, c, hw) = (n as u64, c as u64, hw as u64);
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(g).arg(db).arg(&n).arg(&c).arg(&hw);
    // SAFETY: types match `channel_sum(const float*, float*, u64, u64, u64)`; g holds n*c*hw and
    // db c elements (checked); block size 256 is a power of two <= the 1024 shared slots.
    unsafe { l.launch(cfg) }
        .map_err(launch_err("channel_sum"))
        .map(|_| ())
}
