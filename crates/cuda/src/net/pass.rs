//! Forward, loss and backward passes of [`GpuNet`] over its stage list.

use super::stages::{Span, Stage};
use super::GpuNet;
use crate::error::CudaError;
use crate::hash::layer_seed;
use crate::ops::conv::{conv_backward, conv_forward, ConvShape};
use crate::ops::elementwise::{
    bias_act, col_sum, dropout_apply, dropout_apply_at, relu_fwd, relu_mask,
};
use crate::ops::gemm::{gemm, MatDesc};
use crate::ops::lrn::{
    columns, lrn_bwd_cols, lrn_bwd_inplace, lrn_fwd, lrn_pool_bwd_cols, lrn_pool_fwd_cols,
    maxpool_bwd, maxpool_fwd, LrnCols, LrnParams, PoolGeom, PoolTile, LRN_CHUNK, LRN_POOL_THREADS,
};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
use std::time::Instant;

/// Where a pass's dropout stages take their seeds from.
#[derive(Clone, Copy, Debug)]
pub(super) enum DropSeeds {
    /// Derived from the step's seed on the host (`layer_seed`) and passed by value.
    Host(u64),
    /// Read by the kernels from `GpuNet::seeds` (written by `GpuNet::upload_seeds`), as a
    /// CUDA graph replays them.
    Device,
}

/// Dropout (or its backward, the same kernel) of stage `si`, network layer `layer`, over `len`
/// elements, its seed as `seeds` says (`buf`: the device seeds, one per stage).
#[allow(clippy::too_many_arguments)]
fn dropout(
    gpu: &crate::gpu::Gpu,
    seeds: DropSeeds,
    buf: &CudaSlice<u64>,
    (si, layer): (usize, usize),
    x: &CudaView<f32>,
    y: &mut CudaViewMut<f32>,
    len: usize,
    p: f32,
) -> Result<(), CudaError> {
    match seeds {
        DropSeeds::Host(seed) => dropout_apply(gpu, x, y, len, p, layer_seed(seed, layer)),
        DropSeeds::Device => dropout_apply_at(gpu, x, y, len, p, &buf.slice(si..si + 1)),
    }
}

/// With profiling on: synchronises and returns the start time of a stage.
pub(super) fn tick(gpu: &crate::gpu::Gpu, on: bool) -> Result<Option<Instant>, CudaError> {
    if !on {
        return Ok(None);
    }
    gpu.synchronize()?;
    Ok(Some(Instant::now()))
}

/// With profiling on: synchronises and adds the seconds since `t0` to `acc`.
pub(super) fn tock(
    gpu: &crate::gpu::Gpu,
    t0: Option<Instant>,
    acc: &mut f64,
) -> Result<(), CudaError> {
    if let Some(t0) = t0 {
        gpu.synchronize()?;
        *acc += t0.elapsed().as_secs_f64();
    }
    Ok(())
}

/// `(&bufs[i], &mut bufs[o])` for i < o.
fn in_out<T>(
    bufs: &mut [CudaSlice<T>],
    i: usize,
    o: usize,
) -> Result<(&CudaSlice<T>, &mut CudaSlice<T>), CudaError> {
    if i >= o || o >= bufs.len() {
        return Err(CudaError::invalid(
            "GpuNet",
            format!("buffer order {i} -> {o}"),
        ));
    }
    let (lo, hi) = bufs.split_at_mut(o);
    Ok((&lo[i], &mut hi[0]))
}

/// Runs `f` on mutable views of two disjoint spans (weight, bias) of the flat gradient buffer.
fn with_spans<R>(
    buf: &mut CudaSlice<f32>,
    a: Span,
    b: Span,
    f: impl FnOnce(&mut CudaViewMut<f32>, &mut CudaViewMut<f32>) -> Result<R, CudaError>,
) -> Result<R, CudaError> {
    let bad = || {
        CudaError::invalid(
            "GpuNet",
            format!("parameter spans {a:?} {b:?} overlap or exceed the buffer"),
        )
    };
    let len = buf.len();
    if a.0 + a.1 > len || b.0 + b.1 > len {
        return Err(bad());
    }
    if a.0 + a.1 <= b.0 {
        let (mut lo, mut hi) = buf.split_at_mut(b.0);
        let mut wa = lo.try_slice_mut(a.0..a.0 + a.1).ok_or_else(bad)?;
        let mut hb = hi.try_slice_mut(0..b.1).ok_or_else(bad)?;
        f(&mut wa, &mut hb)
    } else if b.0 + b.1 <= a.0 {
        let (mut lo, mut hi) = buf.split_at_mut(a.0);
        let mut wb = lo.try_slice_mut(b.0..b.0 + b.1).ok_or_else(bad)?;
        let mut ha = hi.try_slice_mut(0..a.1).ok_or_else(bad)?;
        f(&mut ha, &mut wb)
    } else {
        Err(bad())
    }
}

fn span_view(buf: &CudaSlice<f32>, s: Span) -> Result<CudaView<'_, f32>, CudaError> {
    buf.try_slice(s.0..s.0 + s.1)
        .ok_or_else(|| CudaError::invalid("GpuNet", format!("span {s:?} outside the buffer")))
}

fn lrn_q(
    n: usize,
    c: usize,
    hw: usize,
    size: usize,
    alpha: f32,
    beta: f32,
    k: f32,
) -> Result<LrnParams, CudaError> {
    LrnParams::new(n, c, hw, size, alpha, beta, k, false)
}

impl GpuNet {
    pub(super) fn run_forward(
        &mut self,
        n: usize,
        train: bool,
        seeds: DropSeeds,
    ) -> Result<(), CudaError> {
        self.last_n = n;
        self.input_grad_at = None;
        self.pending_logits = None;
        let gpu = self.gpu.clone();
        let prec = self.precision;
        let profiling = self.prof.is_some();
        let mut times = vec![0.0f64; self.stages.len()];
        for (si, st) in self.stages.iter().enumerate() {
            let t0 = tick(&gpu, profiling)?;
            let (inp, out) = (st.inp(), st.out());
            let (xs, ys) = in_out(&mut self.acts, inp, out)?;
            let x = xs.as_view();
            let mut y = ys.as_view_mut();
            match st {
                Stage::Conv {
                    shape, relu, w, b, ..
                } => {
                    let s = ConvShape { n, ..*shape };
                    let (wv, bv) = (span_view(&self.params, *w)?, span_view(&self.params, *b)?);
                    // x: (n, C, H, W) -> y: (n, O, HO, WO)
                    conv_forward(&gpu, prec, &s, &x, &wv, &bv, &mut y, *relu, &mut self.ws)?;
                }
                Stage::Linear {
                    fin,
                    fout,
                    relu,
                    w,
                    b,
                    ..
                } => {
                    let (wv, bv) = (span_view(&self.params, *w)?, span_view(&self.params, *b)?);
                    // y (n, out) = x (n, in) @ W^T (in, out)
                    gemm(
                        &gpu,
                        prec,
                        1.0,
                        &x,
                        MatDesc::new(n, *fin),
                        &wv,
                        MatDesc::new(*fout, *fin).t(),
                        0.0,
                        &mut y,
                        MatDesc::new(n, *fout),
                    )?;
                    // y (n, out, 1) += b (+ReLU)
                    bias_act(&gpu, &mut y, &bv, (n, *fout, 1), *relu)?;
                }
                Stage::Relu { len, .. } => relu_fwd(&gpu, &x, &mut y, n * len)?, // (n * len)
                Stage::Lrn {
                    c,
                    hw,
                    size,
                    alpha,
                    beta,
                    k,
                    ..
                } => {
                    // x, y: (n, C, H, W)
                    lrn_fwd(
                        &gpu,
                        &x,
                        &mut y,
                        lrn_q(n, *c, *hw, *size, *alpha, *beta, *k)?,
                    )?;
                }
                Stage::Pool {
                    c,
                    h,
                    w,
                    k,
                    stride,
                    arg,
                    ..
                } => {
                    let g = PoolGeom::new(n * c, *h, *w, *k, *stride)?;
                    // x: (n*C, H, W) -> y, arg: (n*C, HO, WO)
                    maxpool_fwd(&gpu, &x, &mut y, &mut self.args[*arg].as_view_mut(), g)?;
                }
                Stage::LrnPool {
                    c,
                    h,
                    w,
                    size,
                    alpha,
                    beta,
                    k,
                    pk,
                    pstride,
                    arg,
                    ..
                } => {
                    let q = lrn_q(n, *c, h * w, *size, *alpha, *beta, *k)?;
                    let g = PoolGeom::new(n * c, *h, *w, *pk, *pstride)?;
                    let tile = PoolTile::new(&g, LRN_POOL_THREADS);
                    if let (true, Some(tile)) = (columns(&gpu, &q), tile) {
                        // x: (n, C, H, W) -> y, arg: (n*C, HO, WO), one kernel: the LRN
                        // output stays in shared memory
                        let cols = LrnCols::new(&q, LRN_CHUNK)?;
                        let a = &mut self.args[*arg].as_view_mut();
                        lrn_pool_fwd_cols(&gpu, &x, &mut y, a, q, cols, g, tile)?;
                    } else {
                        let len = n * c * h * w;
                        // The LRN output goes to the (free during the forward) gradient buffer:
                        // x: (n, C, H, W) -> l: (n, C, H, W) -> y, arg: (n, C, HO, WO). Two
                        // memory-bound passes beat recomputing the LRN at every overlapping
                        // window.
                        let mut l = self.gbuf[0].slice_mut(0..len);
                        lrn_fwd(&gpu, &x, &mut l, q)?;
                        maxpool_fwd(
                            &gpu,
                            &self.gbuf[0].slice(0..len),
                            &mut y,
                            &mut self.args[*arg].as_view_mut(),
                            g,
                        )?;
                    }
                }
                Stage::Dropout { len, p, layer, .. } => {
                    if train && *p > 0.0 {
                        // x, y: (n * len)
                        let at = (si, *layer);
                        dropout(&gpu, seeds, &self.seeds, at, &x, &mut y, n * len, *p)?;
                    } else {
                        let s = gpu.stream.clone();
                        s.memcpy_dtod(&x.slice(0..n * len), &mut y.slice_mut(0..n * len))
                            .map_err(CudaError::driver("dropout (eval copy)"))?;
                    }
                }
            }
            tock(&gpu, t0, &mut times[si])?;
        }
        if let Some(p) = self.prof.as_mut() {
            for (acc, t) in p.iter_mut().zip(&times) {
                acc[0] += t;
            }
        }
        Ok(())
    }

    /// Each stage's dropout seed for the step seed `seed` (0 for the other stages): what
    /// [`DropSeeds::Device`] passes read.
    pub(super) fn stage_seeds(&self, seed: u64) -> Vec<u64> {
        self.stages
            .iter()
            .map(|st| match st {
                Stage::Dropout { layer, .. } => layer_seed(seed, *layer),
                _ => 0,
            })
            .collect()
    }

    /// Softmax cross-entropy of the last stage's output: writes dlogits into `gbuf[0]` and the
    /// per-sample losses into `row_loss` (read by [`GpuNet::read_loss`]).
    pub(super) fn launch_loss(&mut self, n: usize) -> Result<(), CudaError> {
        let c = self.plan.num_classes;
        let last = self.stages.last().map(|s| s.out()).unwrap_or(0);
        let logits = self.acts[last].slice(0..n * c);
        let labels = self.labels.slice(0..n);
        // logits: (n, classes) -> dlogits: (n, classes), row_loss: (n)
        crate::ops::loss::softmax_ce(
            &self.gpu,
            &logits,
            &labels,
            &mut self.gbuf[0].slice_mut(0..n * c),
            &mut self.row_loss.slice_mut(0..n),
            (n, c),
        )
    }

    /// The mean of the `n` per-sample losses of the last [`GpuNet::launch_loss`] (summed in f64
    /// on the host; waits for the stream).
    pub(super) fn read_loss(&self, n: usize) -> Result<f32, CudaError> {
        let rows = self.gpu.download(&self.row_loss.slice(0..n))?;
        let sum: f64 = rows.iter().map(|&r| r as f64).sum();
        Ok((sum / n as f64) as f32)
    }

    /// Backward from the loss gradient in `gbuf[0]` down to the first stage.
    pub(super) fn run_backward(&mut self, n: usize, seeds: DropSeeds) -> Result<(), CudaError> {
        let gpu = self.gpu.clone();
        let prec = self.precision;
        let mut cur = 0usize;
        let profiling = self.prof.is_some();
        let mut times = vec![0.0f64; self.stages.len()];
        for (si, st) in self.stages.iter().enumerate().rev() {
            let t0 = tick(&gpu, profiling)?;
            let need_dx = si > 0 || self.input_grad;
            let (x, y) = (&self.acts[st.inp()], &self.acts[st.out()]);
            let (g0, g1) = self.gbuf.split_at_mut(1);
            let (gc, go) = if cur == 0 {
                (&mut g0[0], &mut g1[0])
            } else {
                (&mut g1[0], &mut g0[0])
            };
            let mut swap = true;
            match st {
                Stage::Conv {
                    shape, relu, w, b, ..
                } => {
                    let s = ConvShape { n, ..*shape };
                    let wv = span_view(&self.params, *w)?;
                    let ym = if *relu { Some(y.as_view()) } else { None };
                    let mut dx = go.as_view_mut();
                    let ws = &mut self.ws;
                    with_spans(&mut self.grads, *w, *b, |dw, db| {
                        // dy: (n, O, HO, WO) -> dw, db, dx: (n, C, H, W)
                        conv_backward(
                            &gpu,
                            prec,
                            &s,
                            &x.as_view(),
                            &wv,
                            ym.as_ref(),
                            &gc.as_view(),
                            need_dx.then_some(&mut dx),
                            dw,
                            db,
                            ws,
                        )
                    })?;
                    swap = need_dx;
                }
                Stage::Linear {
                    fin,
                    fout,
                    relu,
                    w,
                    b,
                    ..
                } => {
                    if *relu {
                        // g (n * out) *= (y > 0)
                        relu_mask(&gpu, &y.as_view(), &mut gc.as_view_mut(), n * fout)?;
                    }
                    let wv = span_view(&self.params, *w)?;
                    let g = gc.as_view();
                    with_spans(&mut self.grads, *w, *b, |dw, db| {
                        // db (out) = column sums of g (n, out)
                        col_sum(&gpu, &g, db, (n, *fout))?;
                        // dW (out, in) = g^T (out, n) @ x (n, in)
                        gemm(
                            &gpu,
                            prec,
                            1.0,
                            &g,
                            MatDesc::new(n, *fout).t(),
                            &x.as_view(),
                            MatDesc::new(n, *fin),
                            0.0,
                            dw,
                            MatDesc::new(*fout, *fin),
                        )
                    })?;
                    if need_dx {
                        // dx (n, in) = g (n, out) @ W (out, in)
                        gemm(
                            &gpu,
                            prec,
                            1.0,
                            &g,
                            MatDesc::new(n, *fout),
                            &wv,
                            MatDesc::new(*fout, *fin),
                            0.0,
                            &mut go.as_view_mut(),
                            MatDesc::new(n, *fin),
                        )?;
                    }
                    swap = need_dx;
                }
                Stage::Relu { len, .. } => {
                    // g (n * len) *= (y > 0), in place
                    relu_mask(&gpu, &y.as_view(), &mut gc.as_view_mut(), n * len)?;
                    swap = false;
                }
                Stage::Lrn {
                    c,
                    hw,
                    size,
                    alpha,
                    beta,
                    k,
                    ..
                } => {
                    let q = lrn_q(n, *c, *hw, *size, *alpha, *beta, *k)?;
                    let len = n * c * hw;
                    if columns(&gpu, &q) {
                        // x, dy: (n, C, H, W) -> dx: (n, C, H, W) in the other buffer
                        lrn_bwd_cols(
                            &gpu,
                            &x.as_view(),
                            &gc.slice(0..len),
                            &mut go.slice_mut(0..len),
                            q,
                            LrnCols::new(&q, LRN_CHUNK)?,
                        )?;
                    } else {
                        // x, g: (n, C, H, W): dy -> dx in place, the other buffer as scratch
                        lrn_bwd_inplace(
                            &gpu,
                            &x.as_view(),
                            &mut gc.slice_mut(0..len),
                            &mut go.slice_mut(0..len),
                            q,
                        )?;
                        swap = false;
                    }
                }
                Stage::Pool {
                    c,
                    h,
                    w,
                    k,
                    stride,
                    arg,
                    ..
                } => {
                    let g = PoolGeom::new(n * c, *h, *w, *k, *stride)?;
                    // dy, arg: (n*C, HO, WO) -> dx: (n*C, H, W)
                    maxpool_bwd(
                        &gpu,
                        &gc.as_view(),
                        &self.args[*arg].as_view(),
                        &mut go.as_view_mut(),
                        g,
                    )?;
                }
                Stage::LrnPool {
                    c,
                    h,
                    w,
                    size,
                    alpha,
                    beta,
                    k,
                    pk,
                    pstride,
                    arg,
                    ..
                } => {
                    let g = PoolGeom::new(n * c, *h, *w, *pk, *pstride)?;
                    let q = lrn_q(n, *c, h * w, *size, *alpha, *beta, *k)?;
                    let len = n * c * h * w;
                    if columns(&gpu, &q) {
                        // x: (n, C, H, W), dy, arg: (n*C, HO, WO) -> dx: (n, C, H, W) in the
                        // other buffer, the pool's backward gathered inside the LRN's
                        lrn_pool_bwd_cols(
                            &gpu,
                            &x.as_view(),
                            &gc.as_view(),
                            &self.args[*arg].as_view(),
                            &mut go.slice_mut(0..len),
                            q,
                            LrnCols::new(&q, LRN_CHUNK)?,
                            g,
                        )?;
                    } else {
                        // dy, arg: (n*C, HO, WO) -> d(LRN out): (n, C, H, W) in the other buffer
                        maxpool_bwd(
                            &gpu,
                            &gc.as_view(),
                            &self.args[*arg].as_view(),
                            &mut go.as_view_mut(),
                            g,
                        )?;
                        // x, d(LRN out) -> dx: (n, C, H, W) in place in the other buffer (the
                        // current one, no longer needed, is the scratch)
                        lrn_bwd_inplace(
                            &gpu,
                            &x.as_view(),
                            &mut go.slice_mut(0..len),
                            &mut gc.slice_mut(0..len),
                            q,
                        )?;
                    }
                }
                Stage::Dropout { len, p, layer, .. } => {
                    if *p > 0.0 {
                        // dy, dx: (n * len), same mask as the forward
                        let (dy, mut dx) = (gc.as_view(), go.as_view_mut());
                        let at = (si, *layer);
                        dropout(&gpu, seeds, &self.seeds, at, &dy, &mut dx, n * len, *p)?;
                    } else {
                        swap = false;
                    }
                }
            }
            if swap {
                cur = 1 - cur;
            }
            if si == 0 && self.input_grad {
                self.input_grad_at = Some(cur);
            }
            tock(&gpu, t0, &mut times[si])?;
        }
        if let Some(p) = self.prof.as_mut() {
            for (acc, t) in p.iter_mut().zip(&times) {
                acc[1] += t;
            }
        }
        Ok(())
    }
}
