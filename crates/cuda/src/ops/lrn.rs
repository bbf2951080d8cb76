//! Launches of `kernels/lrn_pool.cu`: LRN forward/backward (paper convention: alpha times the
//! plain sum of squares; column kernels for windows up to 5, see [`LrnCols`], per-element ones
//! otherwise and for comparison) and max-pool forward/backward (argmax; the backward also as a
//! plain-division reference kernel). Index decompositions use [`FastDiv`]: on an H200 it took the
//! max-pool backward from 0.37 to 0.28 ms and the LRN forward from 0.30 to 0.26 ms (paper conv1
//! shapes, batch 128).

use super::{check_len, u32_of, FastDiv};
use crate::error::CudaError;
use crate::gpu::{grid_for, Gpu};
use crate::kernels::KernelFile;
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr, LaunchConfig, PushKernelArg};

const F: KernelFile = KernelFile::LrnPool;

/// `LrnParams` of kernels/lrn_pool.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrnParams {
    pub n: u32,
    pub c: u32,
    pub hw: u32,
    pub half: u32,
    pub alpha: f32,
    pub beta: f32,
    pub k: f32,
    pub relu_input: i32,
    /// Division by hw and c (see [`FastDiv`]).
    pub div_hw: FastDiv,
    pub div_c: FastDiv,
}

// SAFETY: `#[repr(C)]` of u32/f32/i32 fields (FastDiv: two u32), identical to the C struct
// `LrnParams`.
unsafe impl DeviceRepr for LrnParams {}

impl LrnParams {
    /// LRN over x: (N, C, H*W) with window `size` (half-width floor(size/2)).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        n: usize,
        c: usize,
        hw: usize,
        size: usize,
        alpha: f32,
        beta: f32,
        k: f32,
        relu_input: bool,
    ) -> Result<Self, CudaError> {
        if size == 0 {
            return Err(CudaError::invalid("lrn", "size must be > 0"));
        }
        // The kernels index with 32-bit arithmetic (64-bit division is slow on the GPU).
        super::idx32("lrn", "n * c * hw", n * c * hw)?;
        let (c32, hw32) = (u32_of("lrn", "c", c)?, u32_of("lrn", "hw", hw)?);
        Ok(LrnParams {
            n: u32_of("lrn", "n", n)?,
            c: c32,
            hw: hw32,
            half: u32_of("lrn", "size", size / 2)?,
            alpha,
            beta,
            k,
            relu_input: relu_input as i32,
            div_hw: FastDiv::new("lrn", hw32.max(1))?,
            div_c: FastDiv::new("lrn", c32.max(1))?,
        })
    }
    fn len(&self) -> usize {
        self.n as usize * self.c as usize * self.hw as usize
    }
}

/// Largest LRN half-width (floor(size / 2)) of the column kernels (`lrn_fwd_cols`,
/// `lrn_bwd_cols`); wider windows run on the per-element kernels.
pub const LRN_COLS_MAX_HALF: u32 = 2;

/// Channels per thread of the column kernels (see [`LrnCols`]).
pub const LRN_CHUNK: usize = 32;

/// `LrnCols` of kernels/lrn_pool.cu: the column kernels give each thread one pixel of one sample
/// and `chunk` consecutive channels (the last chunk may be shorter).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LrnCols {
    pub chunk: u32,
    pub chunks: u32,
    /// Division by `chunks` (see [`FastDiv`]).
    pub div_chunks: FastDiv,
}

// SAFETY: `#[repr(C)]` of u32 fields (FastDiv: two u32), identical to the C struct `LrnCols`.
unsafe impl DeviceRepr for LrnCols {}

impl LrnCols {
    /// Chunks of `chunk` channels (at least 1) over the channels of `q`. Errors when the
    /// thread count N * chunks * HW does not fit the kernels' 32-bit indices.
    pub fn new(q: &LrnParams, chunk: usize) -> Result<Self, CudaError> {
        let chunk = u32_of("lrn", "chunk", chunk.max(1))?;
        let chunks = q.c.div_ceil(chunk).max(1);
        super::idx32(
            "lrn",
            "n * chunks * hw",
            q.n as usize * chunks as usize * q.hw as usize,
        )?;
        Ok(LrnCols {
            chunk,
            chunks,
            div_chunks: FastDiv::new("lrn", chunks)?,
        })
    }

    /// Threads of a launch over `q`.
    pub fn threads(&self, q: &LrnParams) -> usize {
        q.n as usize * self.chunks as usize * q.hw as usize
    }
}

/// `PoolGeom` of kernels/lrn_pool.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeom {
    pub planes: u32,
    pub h: u32,
    pub w: u32,
    pub k: u32,
    pub stride: u32,
    pub ho: u32,
    pub wo: u32,
    pub pad_: u32,
    /// Division by w, h and stride (see [`FastDiv`]).
    pub div_w: FastDiv,
    pub div_h: FastDiv,
    pub div_stride: FastDiv,
}

// SAFETY: `#[repr(C)]` of u32 fields (FastDiv: two u32), identical to the C struct `PoolGeom`.
unsafe impl DeviceRepr for PoolGeom {}

impl PoolGeom {
    /// Max-pool `k`/`stride` (no padding, floor mode) over `planes` planes of h x w.
    pub fn new(
        planes: usize,
        h: usize,
        w: usize,
        k: usize,
        stride: usize,
    ) -> Result<Self, CudaError> {
        if k == 0 || stride == 0 || h < k || w < k {
            return Err(CudaError::invalid(
                "maxpool",
                format!("pool {k}/{stride} does not fit {h}x{w}"),
            ));
        }
        let u = |what, v| u32_of("maxpool", what, v);
        // The kernels index with 32-bit arithmetic (64-bit division is slow on the GPU).
        super::idx32("maxpool", "planes * h * w", planes * h * w)?;
        Ok(PoolGeom {
            planes: u("planes", planes)?,
            h: u("h", h)?,
            w: u("w", w)?,
            k: u("k", k)?,
            stride: u("stride", stride)?,
            ho: u("ho", (h - k) / stride + 1)?,
            wo: u("wo", (w - k) / stride + 1)?,
            pad_: 0,
            div_w: FastDiv::new("maxpool", u("w", w)?)?,
            div_h: FastDiv::new("maxpool", u("h", h)?)?,
            div_stride: FastDiv::new("maxpool", u("stride", stride)?)?,
        })
    }
    /// Input elements.
    pub fn in_len(&self) -> usize {
        self.planes as usize * self.h as usize * self.w as usize
    }
    /// Output elements.
    pub fn out_len(&self) -> usize {
        self.planes as usize * self.ho as usize * self.wo as usize
    }
}

/// Whether the LRN of `q` runs on the column kernels: [`Gpu::lrn_columns`] (default) and a
/// window up to 2 * [`LRN_COLS_MAX_HALF`] + 1.
pub fn columns(gpu: &Gpu, q: &LrnParams) -> bool {
    gpu.lrn_columns() && q.half <= LRN_COLS_MAX_HALF
}

/// x, y: (N, C, H, W): y = LRN(x). The column kernel (chunks of [`LRN_CHUNK`] channels) where
/// [`columns`] says so, else the per-element kernel.
pub fn lrn_fwd(
    gpu: &Gpu,
    x: &CudaView<f32>,
    y: &mut CudaViewMut<f32>,
    q: LrnParams,
) -> Result<(), CudaError> {
    if columns(gpu, &q) {
        lrn_fwd_cols(gpu, x, y, q, LrnCols::new(&q, LRN_CHUNK)?)
    } else {
        lrn_fwd_elems(gpu, x, y, q)
    }
}

/// x, y: (N, C, H, W): y = LRN(x), the column kernel with chunks `g` (q.half <= 2).
pub fn lrn_fwd_cols(
    gpu: &Gpu,
    x: &CudaView<f32>,
    y: &mut CudaViewMut<f32>,
    q: LrnParams,
    g: LrnCols,
) -> Result<(), CudaError> {
    check_cols("lrn", &q)?;
    check_len("lrn", "x", x.len(), q.len())?;
    check_len("lrn", "y", y.len(), q.len())?;
    let Some(cfg) = grid_for(g.threads(&q) as u64) else {
        return Ok(());
    };
    let f = gpu.function(F, "lrn_fwd_cols")?;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(x).arg(y).arg(&q).arg(&g);
    // SAFETY: types match `lrn_fwd_cols(const float*, float*, LrnParams, LrnCols)`; x and y hold
    // q.len() elements (checked) and the threads cover the chunks of g.
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver("lrn_fwd_cols"))
        .map(|_| ())
}

/// x (the LRN input), dy -> dx: (N, C, H, W), dx a buffer other than dy (times the ReLU mask
/// when `q.relu_input`), in one pass of the column kernel with chunks `g` (q.half <= 2).
pub fn lrn_bwd_cols(
    gpu: &Gpu,
    x: &CudaView<f32>,
    dy: &CudaView<f32>,
    dx: &mut CudaViewMut<f32>,
    q: LrnParams,
    g: LrnCols,
) -> Result<(), CudaError> {
    check_cols("lrn backward", &q)?;
    check_len("lrn backward", "x", x.len(), q.len())?;
    check_len("lrn backward", "dy", dy.len(), q.len())?;
    check_len("lrn backward", "dx", dx.len(), q.len())?;
    let Some(cfg) = grid_for(g.threads(&q) as u64) else {
        return Ok(());
    };
    let f = gpu.function(F, "lrn_bwd_cols")?;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(x).arg(dy).arg(dx).arg(&q).arg(&g);
    // SAFETY: types match `lrn_bwd_cols(const float*, const float*, float*, LrnParams,
    // LrnCols)`; every buffer holds q.len() elements (checked); dy and dx are distinct views
    // (one shared and one exclusive borrow).
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver("lrn_bwd_cols"))
        .map(|_| ())
}

/// The network's LRN + max-pool backward in one pass: x (the LRN input), pdy and arg (the pool
/// output's gradient and argmax, (N*C, HO, WO)) -> dx: (N, C, H, W). The pool's backward is
/// gathered per pixel inside the column LRN backward (`lrn_pool_bwd_cols`): the same values
/// as [`maxpool_bwd`] then [`lrn_bwd_cols`], without the full-size intermediate. q.half <= 2.
#[allow(clippy::too_many_arguments)]
pub fn lrn_pool_bwd_cols(
    gpu: &Gpu,
    x: &CudaView<f32>,
    pdy: &CudaView<f32>,
    arg: &CudaView<i32>,
    dx: &mut CudaViewMut<f32>,
    q: LrnParams,
    cols: LrnCols,
    g: PoolGeom,
) -> Result<(), CudaError> {
    const OP: &str = "lrn + maxpool backward";
    check_cols(OP, &q)?;
    check_pool_planes(OP, &q, &g)?;
    check_len(OP, "x", x.len(), q.len())?;
    check_len(OP, "dy", pdy.len(), g.out_len())?;
    check_len(OP, "argmax", arg.len(), g.out_len())?;
    check_len(OP, "dx", dx.len(), q.len())?;
    let Some(cfg) = grid_for(cols.threads(&q) as u64) else {
        return Ok(());
    };
    let f = gpu.function(F, "lrn_pool_bwd_cols")?;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(x)
        .arg(pdy)
        .arg(arg)
        .arg(dx)
        .arg(&q)
        .arg(&cols)
        .arg(&g);
    // SAFETY: types match `lrn_pool_bwd_cols(const float*, const float*, const int*, float*,
    // LrnParams, LrnCols, PoolGeom)`; x and dx hold q.len() elements, dy and arg the pool's
    // output (checked), and the pool's planes are the LRN's (checked).
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver("lrn_pool_bwd_cols"))
        .map(|_| ())
}

/// Threads per block of `lrn_pool_fwd_cols` (one per input pixel of a tile).
pub const LRN_POOL_THREADS: u32 = 256;

/// `PoolTile` of kernels/lrn_pool.cu: the pool outputs one block of `lrn_pool_fwd_cols` takes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolTile {
    pub to_y: u32,
    pub to_x: u32,
    /// The block size the tile was made for (the launch's).
    pub threads: u32,
    pub pad_: u32,
}

// SAFETY: `#[repr(C)]` of four u32, identical to the C struct `PoolTile`.
unsafe impl DeviceRepr for PoolTile {}

impl PoolTile {
    /// The widest tile of `g`'s outputs whose input pixels fit `threads` (at most 1024): rows of
    /// up to 32 input pixels (coalesced loads), then as many rows as fit. `None` when not even
    /// one window fits.
    pub fn new(g: &PoolGeom, threads: u32) -> Option<PoolTile> {
        let (k, s) = (g.k, g.stride);
        if threads > 1024 || k * k > threads {
            return None;
        }
        let ti = |to: u32| (to - 1) * s + k;
        let mut to_x = ((32u32.max(k) - k) / s + 1).min(g.wo).max(1);
        // Narrower rows until k of them fit (to_x = 1 always does: k * k <= threads).
        while to_x > 1 && threads / ti(to_x) < k {
            to_x -= 1;
        }
        let rows = threads / ti(to_x);
        let to_y = ((rows - k) / s + 1).min(g.ho).max(1);
        Some(PoolTile {
            to_y,
            to_x,
            threads,
            pad_: 0,
        })
    }

    /// Input pixels of a tile (threads with a pixel).
    pub fn pixels(&self, g: &PoolGeom) -> u32 {
        ((self.to_y - 1) * g.stride + g.k) * ((self.to_x - 1) * g.stride + g.k)
    }

    /// Tiles over one plane's outputs.
    pub fn tiles(&self, g: &PoolGeom) -> u32 {
        g.ho.div_ceil(self.to_y) * g.wo.div_ceil(self.to_x)
    }
}

/// The network's LRN + max-pool forward in one kernel: x: (N, C, H, W) -> y, arg: (N*C, HO, WO)
/// with the LRN output never stored (`lrn_pool_fwd_cols`; the same values and argmax as
/// [`lrn_fwd_cols`] then [`maxpool_fwd`]). Blocks of `tile.threads` over (tiles, chunks, N).
#[allow(clippy::too_many_arguments)]
pub fn lrn_pool_fwd_cols(
    gpu: &Gpu,
    x: &CudaView<f32>,
    y: &mut CudaViewMut<f32>,
    arg: &mut CudaViewMut<i32>,
    q: LrnParams,
    cols: LrnCols,
    g: PoolGeom,
    tile: PoolTile,
) -> Result<(), CudaError> {
    const OP: &str = "lrn + maxpool";
    check_cols(OP, &q)?;
    check_pool_planes(OP, &q, &g)?;
    check_len(OP, "x", x.len(), q.len())?;
    check_len(OP, "y", y.len(), g.out_len())?;
    check_len(OP, "argmax", arg.len(), g.out_len())?;
    if tile.to_y == 0 || tile.to_x == 0 || tile.pixels(&g) > tile.threads || tile.threads > 1024 {
        return Err(CudaError::invalid(
            OP,
            format!("tile {tile:?} does not fit its block"),
        ));
    }
    if q.n > 65_535 || cols.chunks > 65_535 {
        return Err(CudaError::invalid(
            OP,
            format!(
                "grid of {} chunks x {} samples exceeds 65535",
                cols.chunks, q.n
            ),
        ));
    }
    if q.len() == 0 || g.out_len() == 0 {
        return Ok(());
    }
    let cfg = LaunchConfig {
        grid_dim: (tile.tiles(&g), cols.chunks, q.n),
        block_dim: (tile.threads, 1, 1),
        shared_mem_bytes: 0,
    };
    let f = gpu.function(F, "lrn_pool_fwd_cols")?;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(x)
        .arg(y)
        .arg(arg)
        .arg(&q)
        .arg(&cols)
        .arg(&g)
        .arg(&tile);
    // SAFETY: types match `lrn_pool_fwd_cols(const float*, float*, int*, LrnParams, LrnCols,
    // PoolGeom, PoolTile)`; x holds q.len() elements, y and arg the pool's output (checked); the
    // pool's planes are the LRN's and the tile's pixels fit the block and the kernel's
    // 1024-float shared tile (checked).
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver("lrn_pool_fwd_cols"))
        .map(|_| ())
}

/// The pool's planes must be the LRN's (N*C planes of H*W = HW).
fn check_pool_planes(op: &'static str, q: &LrnParams, g: &PoolGeom) -> Result<(), CudaError> {
    if g.planes != q.n * q.c || g.h as usize * g.w as usize != q.hw as usize {
        return Err(CudaError::shape(
            op,
            format!(
                "pool over {} planes of {}x{}, LRN over (N, C, HW) = ({}, {}, {})",
                g.planes, g.h, g.w, q.n, q.c, q.hw
            ),
        ));
    }
    Ok(())
}

fn check_cols(op: &'static str, q: &LrnParams) -> Result<(), CudaError> {
    if q.half > LRN_COLS_MAX_HALF {
        return Err(CudaError::invalid(
            op,
            format!(
                "the column kernels take windows up to {}, not {}",
                2 * LRN_COLS_MAX_HALF + 1,
                2 * q.half + 1
            ),
        ));
    }
    Ok(())
}

/// x, y: (N, C, H, W): y = LRN(x), one thread per element (any window size).
pub fn lrn_fwd_elems(
    gpu: &Gpu,
    x: &CudaView<f32>,
    y: &mut CudaViewMut<f32>,
    q: LrnParams,
) -> Result<(), CudaError> {
    check_len("lrn", "x", x.len(), q.len())?;
    check_len("lrn", "y", y.len(), q.len())?;
    let Some(cfg) = grid_for(q.len() as u64) else {
        return Ok(());
    };
    let f = gpu.function(F, "lrn_fwd")?;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(x).arg(y).arg(&q);
    // SAFETY: types match `lrn_fwd(const float*, float*, LrnParams)`; sizes checked.
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver("lrn_fwd"))
        .map(|_| ())
}

/// x (the LRN input), dy, dx: (N, C, H, W): dx = LRN'(x)^T dy (times the ReLU mask when
/// `q.relu_input`).
pub fn lrn_bwd(
    gpu: &Gpu,
    x: &CudaView<f32>,
    dy: &CudaView<f32>,
    dx: &mut CudaViewMut<f32>,
    q: LrnParams,
) -> Result<(), CudaError> {
    check_len("lrn backward", "x", x.len(), q.len())?;
    check_len("lrn backward", "dy", dy.len(), q.len())?;
    check_len("lrn backward", "dx", dx.len(), q.len())?;
    let Some(cfg) = grid_for(q.len() as u64) else {
        return Ok(());
    };
    let f = gpu.function(F, "lrn_bwd")?;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(x).arg(dy).arg(dx).arg(&q);
    // SAFETY: types match `lrn_bwd(const float*, const float*, float*, LrnParams)`; sizes checked.
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver("lrn_bwd"))
        .map(|_| ())
}

/// LRN backward in place, in two passes (see `lrn_bwd_prep` / `lrn_bwd_finish`): `g` holds dy
/// on entry and dx on exit; `t` is scratch of the same size. x, g, t: (N, C, H, W).
pub fn lrn_bwd_inplace(
    gpu: &Gpu,
    x: &CudaView<f32>,
    g: &mut CudaViewMut<f32>,
    t: &mut CudaViewMut<f32>,
    q: LrnParams,
) -> Result<(), CudaError> {
    check_len("lrn backward", "x", x.len(), q.len())?;
    check_len("lrn backward", "g", g.len(), q.len())?;
    check_len("lrn backward", "scratch", t.len(), q.len())?;
    let Some(cfg) = grid_for(q.len() as u64) else {
        return Ok(());
    };
    let f = gpu.function(F, "lrn_bwd_prep")?;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(x).arg(&mut *g).arg(&mut *t).arg(&q);
    // SAFETY: types match `lrn_bwd_prep(const float*, float*, float*, LrnParams)`; x, g and t
    // hold q.len() elements (checked).
    unsafe { l.launch(cfg) }.map_err(CudaError::driver("lrn_bwd_prep"))?;
    let f = gpu.function(F, "lrn_bwd_finish")?;
    let tv = t.as_view();
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(x).arg(&tv).arg(&mut *g).arg(&q);
    // SAFETY: types match `lrn_bwd_finish(const float*, const float*, float*, LrnParams)`; sizes
    // checked above.
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver("lrn_bwd_finish"))
        .map(|_| ())
}

/// x: (planes, H, W) -> y, arg: (planes, HO, WO).
pub fn maxpool_fwd(
    gpu: &Gpu,
    x: &CudaView<f32>,
    y: &mut CudaViewMut<f32>,
    arg: &mut CudaViewMut<i32>,
    g: PoolGeom,
) -> Result<(), CudaError> {
    check_len("maxpool", "x", x.len(), g.in_len())?;
    check_len("maxpool", "y", y.len(), g.out_len())?;
    check_len("maxpool", "argmax", arg.len(), g.out_len())?;
    let Some(cfg) = grid_for(g.out_len() as u64) else {
        return Ok(());
    };
    let f = gpu.function(F, "maxpool_fwd")?;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(x).arg(y).arg(arg).arg(&g);
    // SAFETY: types match `maxpool_fwd(const float*, float*, int*, PoolGeom)`; sizes checked.
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver("maxpool_fwd"))
        .map(|_| ())
}

/// dy, arg: (planes, HO, WO) -> dx: (planes, H, W) (overwritten).
pub fn maxpool_bwd(
    gpu: &Gpu,
    dy: &CudaView<f32>,
    arg: &CudaView<i32>,
    dx: &mut CudaViewMut<f32>,
    g: PoolGeom,
) -> Result<(), CudaError> {
    maxpool_bwd_kernel(gpu, dy, arg, dx, g, "maxpool_bwd")
}

/// [`maxpool_bwd`] with plain integer division (the reference `gpu-check` compares against:
/// identical results, slower).
pub fn maxpool_bwd_ref(
    gpu: &Gpu,
    dy: &CudaView<f32>,
    arg: &CudaView<i32>,
    dx: &mut CudaViewMut<f32>,
    g: PoolGeom,
) -> Result<(), CudaError> {
    maxpool_bwd_kernel(gpu, dy, arg, dx, g, "maxpool_bwd_ref")
}

fn maxpool_bwd_kernel(
    gpu: &Gpu,
    dy: &CudaView<f32>,
    arg: &CudaView<i32>,
    dx: &mut CudaViewMut<f32>,
    g: PoolGeom,
    name: &'static str,
) -> Result<(), CudaError> {
    check_len("maxpool backward", "dy", dy.len(), g.out_len())?;
    check_len("maxpool backward", "argmax", arg.len(), g.out_len())?;
    check_len("maxpool backward", "dx", dx.len(), g.in_len())?;
    let Some(cfg) = grid_for(g.in_len() as u64) else {
        return Ok(());
    };
    let f = gpu.function(F, name)?;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(dy).arg(arg).arg(dx).arg(&g);
    // SAFETY: types match `maxpool_bwd[_ref](const float*, const int*, float*, PoolGeom)`;
    // sizes checked.
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver(name))
        .map(|_| ())
}
