//! [`GpuNet`]: a planned network on one GPU. Parameters, gradients and momentum are single flat
//! device buffers with exactly the [`Plan`]'s offsets, so a checkpoint taken on the GPU loads on
//! the CPU and back.
//!
//! Fusions: conv + ReLU and linear + ReLU (bias and ReLU in the GEMM epilogue), LRN + max-pool
//! (one kernel each way with the column LRN kernels, the default: the LRN output and its
//! gradient are never stored, the backward recomputes the LRN from its input), SGD over the
//! whole flat buffer in one launch.

mod graph;
mod pass;
mod stages;
mod staging;

pub use staging::Staged;

use crate::error::CudaError;
use crate::gpu::{Gpu, Precision};
use crate::ops::augment::{AugmentParams, AugmentSample};
use crate::ops::conv::ConvWorkspace;
use alexnet_tensor::spec::Plan;
use cudarc::driver::{CudaSlice, PinnedHostSlice};
use pass::DropSeeds;
use stages::{build_stages, Stage};
use std::sync::Arc;

/// Elements of the convolution column buffer above which convolutions run in sample chunks.
pub const COL_BUDGET: usize = 1 << 26;

/// A planned network on one GPU (see the module docs).
pub struct GpuNet {
    gpu: Arc<Gpu>,
    plan: Plan,
    batch: usize,
    precision: Precision,
    stages: Vec<Stage>,
    /// `acts[0]` is the input; each stage writes its own output buffer.
    acts: Vec<CudaSlice<f32>>,
    /// Per-sample element count of each activation buffer.
    act_len: Vec<usize>,
    args: Vec<CudaSlice<i32>>,
    params: CudaSlice<f32>,
    grads: CudaSlice<f32>,
    momentum: CudaSlice<f32>,
    /// Ping-pong gradient buffers (each as large as the largest activation).
    gbuf: [CudaSlice<f32>; 2],
    ws: ConvWorkspace,
    labels: CudaSlice<u32>,
    row_loss: CudaSlice<f32>,
    mean: Option<(CudaSlice<f32>, usize, usize)>,
    input_grad: bool,
    /// Which of `gbuf` holds the input gradient after the last backward (when enabled).
    input_grad_at: Option<usize>,
    /// Samples of the last forward.
    last_n: usize,
    /// Samples whose input and labels the last training upload left on the device.
    resident: usize,
    /// Page-locked staging of full f32 input batches (allocated on first use).
    pinned_in: Option<PinnedHostSlice<f32>>,
    /// Double-buffered u8 batch uploads on a copy stream (the augment path).
    stager: staging::Stager,
    /// Samples of a training step queued by [`GpuNet::launch_train_staged`] whose loss has
    /// not been read yet.
    pending_loss: Option<usize>,
    /// Samples of the inference queued by `launch_predict_staged`, whose logits are not read.
    pending_logits: Option<usize>,
    /// Per-stage [forward, backward] seconds, then [input, 0], [loss, 0], [sgd, 0] (profiling).
    prof: Option<Vec<[f64; 2]>>,
    /// Per stage: the dropout seed of the current step (read by the kernels of a CUDA graph).
    seeds: CudaSlice<u64>,
    /// CUDA graphs of the training pass ([`crate::gpu::GRAPH_ENV`]).
    graphs: graph::StepGraphs,
}

impl std::fmt::Debug for GpuNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuNet")
            .field("batch", &self.batch)
            .field("precision", &self.precision)
            .field("stages", &self.stages.len())
            .finish()
    }
}

impl GpuNet {
    /// Allocates the network for batches of at most `batch` samples. Parameters start at zero:
    /// upload them with [`GpuNet::upload_params`].
    pub fn new(
        gpu: Arc<Gpu>,
        plan: &Plan,
        batch: usize,
        precision: Precision,
    ) -> Result<Self, CudaError> {
        if batch == 0 {
            return Err(CudaError::invalid("GpuNet::new", "batch must be > 0"));
        }
        let built = build_stages(plan, batch)?;
        let mut acts = Vec::with_capacity(built.act_len.len());
        for &l in &built.act_len {
            acts.push(gpu.zeros(l * batch)?);
        }
        let mut args = Vec::with_capacity(built.arg_len.len());
        for &l in &built.arg_len {
            args.push(
                gpu.stream
                    .alloc_zeros::<i32>((l * batch).max(1))
                    .map_err(CudaError::driver("alloc argmax"))?,
            );
        }
        let max_act = built.act_len.iter().copied().max().unwrap_or(1) * batch;
        let gbuf = [gpu.zeros(max_act)?, gpu.zeros(max_act)?];
        let ws = ConvWorkspace::new(&gpu, built.col_cap, built.tmp_cap)?;
        let total = plan.total;
        let seeds = gpu
            .stream
            .alloc_zeros::<u64>(built.stages.len().max(1))
            .map_err(CudaError::driver("alloc dropout seeds"))?;
        Ok(GpuNet {
            params: gpu.zeros(total)?,
            grads: gpu.zeros(total)?,
            momentum: gpu.zeros(total)?,
            labels: gpu
                .stream
                .alloc_zeros::<u32>(batch)
                .map_err(CudaError::driver("alloc labels"))?,
            row_loss: gpu.zeros(batch)?,
            plan: plan.clone(),
            batch,
            precision,
            stages: built.stages,
            acts,
            act_len: built.act_len,
            args,
            gbuf,
            ws,
            mean: None,
            input_grad: false,
            input_grad_at: None,
            last_n: 0,
            resident: 0,
            pinned_in: None,
            stager: staging::Stager::default(),
            pending_loss: None,
            pending_logits: None,
            prof: None,
            seeds,
            graphs: graph::StepGraphs::default(),
            gpu,
        })
    }

    /// Starts (or restarts) per-stage timing: every stage is then device-synchronised and timed
    /// (slower; for `bench --profile` only).
    pub fn enable_profile(&mut self) {
        self.prof = Some(vec![[0.0; 2]; self.stages.len() + 3]);
    }

    /// Accumulated (stage name, forward s, backward s) since [`GpuNet::enable_profile`]; the
    /// last three rows are the input upload (+ augmentation), the loss and the SGD step.
    pub fn profile(&self) -> Option<Vec<(String, f64, f64)>> {
        let p = self.prof.as_ref()?;
        let mut rows: Vec<(String, f64, f64)> = self
            .stages
            .iter()
            .zip(p)
            .map(|(s, t)| (s.label(), t[0], t[1]))
            .collect();
        let k = self.stages.len();
        for (i, name) in ["input upload", "loss", "sgd"].iter().enumerate() {
            rows.push((name.to_string(), p[k + i][0], 0.0));
        }
        Some(rows)
    }

    /// Adds the seconds since `t0` to the extra profile row `row` (0 input, 1 loss, 2 sgd).
    fn prof_extra(&mut self, row: usize, t0: Option<std::time::Instant>) -> Result<(), CudaError> {
        let mut acc = 0.0;
        pass::tock(&self.gpu, t0, &mut acc)?;
        if let Some(p) = self.prof.as_mut() {
            let k = p.len() - 3;
            p[k + row][0] += acc;
        }
        Ok(())
    }

    /// For every convolution stage: (layer names, cuDNN forward, backward-data and
    /// backward-filter algorithms at the full batch and the current precision). Errors when
    /// cuDNN is not in use.
    pub fn conv_algorithms(&self) -> Result<Vec<[String; 4]>, CudaError> {
        let mut out = Vec::new();
        for st in &self.stages {
            if let Stage::Conv { shape, .. } = st {
                let (f, d, w) = crate::ops::conv_cudnn::chosen_algorithms(
                    &self.gpu,
                    &crate::ops::conv::ConvShape {
                        n: self.batch,
                        ..*shape
                    },
                    self.precision,
                )?;
                out.push([st.label(), f, d, w]);
            }
        }
        Ok(out)
    }

    /// The plan this network runs.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The largest batch.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The GEMM precision.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Changes the GEMM precision.
    pub fn set_precision(&mut self, p: Precision) {
        self.precision = p;
    }

    /// The device.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Also compute the gradient of the input in `forward_backward` (off by default: training
    /// does not need it).
    pub fn set_input_grad(&mut self, on: bool) {
        self.input_grad = on;
    }

    fn upload_flat(&mut self, which: u8, v: &[f32]) -> Result<(), CudaError> {
        if v.len() != self.plan.total {
            return Err(CudaError::shape(
                "upload",
                format!(
                    "{} values for a plan of {} parameters",
                    v.len(),
                    self.plan.total
                ),
            ));
        }
        let s = self.gpu.stream.clone();
        let dst = if which == 0 {
            &mut self.params
        } else {
            &mut self.momentum
        };
        s.memcpy_htod(v, dst)
            .map_err(CudaError::driver("upload flat buffer"))
    }

    /// Uploads the flat parameter buffer (the plan's layout).
    pub fn upload_params(&mut self, params: &[f32]) -> Result<(), CudaError> {
        self.upload_flat(0, params)
    }

    /// Uploads the momentum (velocity) buffer (the plan's layout).
    pub fn upload_momentum(&mut self, v: &[f32]) -> Result<(), CudaError> {
        self.upload_flat(1, v)
    }

    /// Downloads the flat parameter buffer.
    pub fn download_params(&self) -> Result<Vec<f32>, CudaError> {
        self.gpu.download(&self.params.slice(0..self.plan.total))
    }

    /// Downloads the gradients of the last `forward_backward`.
    pub fn download_grads(&self) -> Result<Vec<f32>, CudaError> {
        self.gpu.download(&self.grads.slice(0..self.plan.total))
    }

    /// Downloads the momentum buffer.
    pub fn download_momentum(&self) -> Result<Vec<f32>, CudaError> {
        self.gpu.download(&self.momentum.slice(0..self.plan.total))
    }

    /// Zeroes the momentum buffer.
    pub fn reset_momentum(&mut self) -> Result<(), CudaError> {
        let s = self.gpu.stream.clone();
        s.memset_zeros(&mut self.momentum)
            .map_err(CudaError::driver("zero momentum"))
    }

    /// Uploads the per-pixel mean image (HWC, f32, `h` x `w` x 3) used by the u8 path.
    pub fn set_mean_image(&mut self, mean: &[f32], h: usize, w: usize) -> Result<(), CudaError> {
        if mean.len() != h * w * 3 || mean.is_empty() {
            return Err(CudaError::shape(
                "set_mean_image",
                format!("{} values for {h}x{w}x3", mean.len()),
            ));
        }
        self.mean = Some((self.gpu.upload(mean)?, h, w));
        Ok(())
    }

    /// The output of layer `name` in the last forward ((n, per-sample shape) row-major), for
    /// locating mismatches. Layers fused into a later stage that is not stored (the LRN before a
    /// pool) are an error; a fused ReLU returns its conv/linear stage output (= the ReLU output).
    pub fn download_activation(&self, name: &str) -> Result<Vec<f32>, CudaError> {
        let idx = self
            .stages
            .iter()
            .find_map(|s| s.names().iter().any(|n| n == name).then_some(s.out()))
            .ok_or_else(|| {
                CudaError::invalid(
                    "download_activation",
                    format!("no stored output for layer {name:?}"),
                )
            })?;
        let len = self.act_len[idx] * self.last_n;
        self.gpu.download(&self.acts[idx].slice(0..len))
    }

    /// The argmax of max-pool layer `name` in the last forward (index within the plane per
    /// output, (n, C, HO, WO) row-major, the first maximum on ties as on the CPU).
    pub fn download_pool_argmax(&self, name: &str) -> Result<Vec<u32>, CudaError> {
        let (arg, out) = self
            .stages
            .iter()
            .find_map(|s| match s {
                Stage::Pool {
                    names, arg, out, ..
                }
                | Stage::LrnPool {
                    names, arg, out, ..
                } if names.iter().any(|n| n == name) => Some((*arg, *out)),
                _ => None,
            })
            .ok_or_else(|| {
                CudaError::invalid(
                    "download_pool_argmax",
                    format!("{name:?} is not a max-pool layer"),
                )
            })?;
        let len = self.act_len[out] * self.last_n;
        let v: Vec<i32> = self.gpu.download(&self.args[arg].slice(0..len))?;
        v.into_iter()
            .map(|a| {
                u32::try_from(a).map_err(|_| {
                    CudaError::invalid("download_pool_argmax", format!("{name}: index {a}"))
                })
            })
            .collect()
    }

    /// The first `n` samples of the input buffer (n, C, H, W), e.g. what [`GpuNet::augment_input`]
    /// built (for checking it against the CPU loader).
    pub fn download_input(&self, n: usize) -> Result<Vec<f32>, CudaError> {
        if n == 0 || n > self.batch {
            return Err(CudaError::invalid(
                "download_input",
                format!("{n} samples for a batch of {}", self.batch),
            ));
        }
        self.gpu
            .download(&self.acts[0].slice(0..self.act_len[0] * n))
    }

    /// The gradient of the input (N, C, H, W) of the last `forward_backward` (needs
    /// [`GpuNet::set_input_grad`]).
    pub fn download_input_grad(&self) -> Result<Vec<f32>, CudaError> {
        let at = self.input_grad_at.ok_or_else(|| {
            CudaError::invalid(
                "download_input_grad",
                "enable set_input_grad before forward_backward",
            )
        })?;
        let len = self.act_len[0] * self.last_n;
        self.gpu.download(&self.gbuf[at].slice(0..len))
    }

    /// Uploads x: (n, C, H, W) into the input buffer; returns n.
    fn load_input(&mut self, x: &[f32]) -> Result<usize, CudaError> {
        let per = self.act_len[0];
        if per == 0 || x.is_empty() || x.len() / per * per != x.len() || x.len() / per > self.batch
        {
            return Err(CudaError::shape(
                "forward",
                format!(
                    "input of {} values is not n x {per} with 1 <= n <= {}",
                    x.len(),
                    self.batch
                ),
            ));
        }
        self.resident = 0;
        let t0 = pass::tick(&self.gpu, self.prof.is_some())?;
        let s = self.gpu.stream.clone();
        let mut dst = self.acts[0].slice_mut(0..x.len());
        if x.len() == per * self.batch {
            // A full batch goes through the page-locked staging buffer (a parallel host copy,
            // then DMA at full bus speed); partial batches copy from pageable memory. No upload
            // still reads the buffer: both callers wait for the stream before they return
            // (`forward` downloads the logits, `forward_backward` reads the loss).
            let pin = staging::pinned(&self.gpu, &mut self.pinned_in, x.len())?;
            staging::par_copy(x, pin)?;
            s.memcpy_htod(pin, &mut dst)
        } else {
            s.memcpy_htod(x, &mut dst)
        }
        .map_err(CudaError::driver("upload input"))?;
        self.prof_extra(0, t0)?;
        Ok(x.len() / per)
    }

    fn load_labels(&mut self, labels: &[u32], n: usize) -> Result<(), CudaError> {
        if labels.len() != n {
            return Err(CudaError::shape(
                "forward_backward",
                format!("{} labels for {n} samples", labels.len()),
            ));
        }
        let c = self.plan.num_classes;
        if let Some(bad) = labels.iter().find(|&&l| l as usize >= c) {
            return Err(CudaError::invalid(
                "forward_backward",
                format!("label {bad} >= {c} classes"),
            ));
        }
        let s = self.gpu.stream.clone();
        let mut dst = self.labels.slice_mut(0..n);
        s.memcpy_htod(labels, &mut dst)
            .map_err(CudaError::driver("upload labels"))?;
        self.resident = n;
        Ok(())
    }

    /// Forward pass of x: (n, C, H, W), n <= batch; returns the logits (n, classes). With
    /// `train`, dropout draws its mask from `dropout_seed`; otherwise dropout is the identity.
    pub fn forward(
        &mut self,
        x: &[f32],
        train: bool,
        dropout_seed: u64,
    ) -> Result<Vec<f32>, CudaError> {
        let n = self.load_input(x)?;
        self.run_forward(n, train, DropSeeds::Host(dropout_seed))?;
        let last = self.stages.last().map(|s| s.out()).unwrap_or(0);
        self.gpu
            .download(&self.acts[last].slice(0..n * self.plan.num_classes))
    }

    /// Forward + backward of x: (n, C, H, W) with `labels` (n) at training mode; fills the
    /// gradients (overwritten, not accumulated) and returns the mean cross-entropy.
    pub fn forward_backward(
        &mut self,
        x: &[f32],
        labels: &[u32],
        dropout_seed: u64,
    ) -> Result<f32, CudaError> {
        let n = self.load_input(x)?;
        self.load_labels(labels, n)?;
        self.train_pass(n, dropout_seed)
    }

    /// Forward, loss and backward of the first `n` samples of the input and labels already on
    /// the device. The loss is read after the backward is queued, so the device does not wait
    /// for the host in between.
    fn train_pass(&mut self, n: usize, dropout_seed: u64) -> Result<f32, CudaError> {
        self.launch_pass(n, dropout_seed)?;
        self.read_loss(n)
    }

    /// Queues forward, loss and backward of the first `n` samples already on the device: as
    /// a CUDA graph when they are on ([`Gpu::graphs`]) and the pass is not profiled.
    fn launch_pass(&mut self, n: usize, dropout_seed: u64) -> Result<(), CudaError> {
        // A replayed graph skips `run_forward`'s bookkeeping: the logits of a queued inference
        // are overwritten here either way.
        self.pending_loss = None;
        self.pending_logits = None;
        if self.gpu.graphs() && self.prof.is_none() {
            self.graph_pass(n, dropout_seed)
        } else {
            self.direct_pass(n, DropSeeds::Host(dropout_seed))
        }
    }

    /// Forward, loss and backward, every launch queued one by one.
    fn direct_pass(&mut self, n: usize, seeds: DropSeeds) -> Result<(), CudaError> {
        self.run_forward(n, true, seeds)?;
        let t0 = pass::tick(&self.gpu, self.prof.is_some())?;
        self.launch_loss(n)?;
        self.prof_extra(1, t0)?;
        self.run_backward(n, seeds)
    }

    /// Compute only (benchmarks): [`GpuNet::forward_backward`] again on the input and labels
    /// that the last upload left on the device (the last `n` of a [`GpuNet::forward_backward`]
    /// or [`GpuNet::forward_backward_u8`]).
    pub fn forward_backward_resident(&mut self, dropout_seed: u64) -> Result<f32, CudaError> {
        let n = self.resident("forward_backward_resident")?;
        self.train_pass(n, dropout_seed)
    }

    /// Compute only (benchmarks): an inference forward of the resident input (see
    /// [`GpuNet::forward_backward_resident`]); the logits stay on the device.
    pub fn forward_resident(&mut self) -> Result<(), CudaError> {
        let n = self.resident("forward_resident")?;
        self.run_forward(n, false, DropSeeds::Host(0))
    }

    /// Samples of the resident batch, or an error naming `op` when there is none.
    fn resident(&self, op: &'static str) -> Result<usize, CudaError> {
        match self.resident {
            0 => Err(CudaError::invalid(
                op,
                "no batch on the device yet (upload one with forward_backward)",
            )),
            n => Ok(n),
        }
    }

    /// One SGD step (the paper's rule) over the whole flat buffer in one launch.
    pub fn sgd_step(&mut self, lr: f32, momentum: f32, weight_decay: f32) -> Result<(), CudaError> {
        let t0 = pass::tick(&self.gpu, self.prof.is_some())?;
        let n = self.plan.total;
        let g = self.grads.slice(0..n);
        crate::ops::sgd::sgd_step(
            &self.gpu,
            &mut self.params.slice_mut(0..n),
            &g,
            &mut self.momentum.slice_mut(0..n),
            n,
            (lr, momentum, weight_decay),
        )?;
        self.prof_extra(2, t0)
    }

    /// One training step from u8 images: [`GpuNet::forward_backward_u8`], then SGD.
    #[allow(clippy::too_many_arguments)]
    pub fn train_step_u8(
        &mut self,
        images: &[u8],
        src: (usize, usize),
        samples: &[AugmentSample],
        labels: &[u32],
        dropout_seed: u64,
        (lr, momentum, weight_decay): (f32, f32, f32),
    ) -> Result<f32, CudaError> {
        let loss = self.forward_backward_u8(images, src, samples, labels, dropout_seed)?;
        self.sgd_step(lr, momentum, weight_decay)?;
        Ok(loss)
    }

    /// [`GpuNet::forward_backward`] from u8 images: the augment kernel builds the input (crop,
    /// flip, PCA lighting, mean subtraction; see [`crate::ops::augment`]). images: (n, src_h,
    /// src_w, 3) u8 HWC; `samples` (n) gives each crop. Needs [`GpuNet::set_mean_image`].
    /// Returns the mean loss.
    pub fn forward_backward_u8(
        &mut self,
        images: &[u8],
        (src_h, src_w): (usize, usize),
        samples: &[AugmentSample],
        labels: &[u32],
        dropout_seed: u64,
    ) -> Result<f32, CudaError> {
        one_crop_per_image(images.len(), (src_h, src_w), samples.len())?;
        let n = self.augment_input(images, (src_h, src_w), samples)?;
        self.load_labels(labels, n)?;
        self.train_pass(n, dropout_seed)
    }

    /// Builds the input buffer from u8 images through the augment kernel; returns n.
    pub fn augment_input(
        &mut self,
        images: &[u8],
        src: (usize, usize),
        samples: &[AugmentSample],
    ) -> Result<usize, CudaError> {
        let t0 = pass::tick(&self.gpu, self.prof.is_some())?;
        let st = self.stage_u8(images)?;
        let n = self.augment_staged(st, src, samples)?;
        self.prof_extra(0, t0)?;
        Ok(n)
    }

    /// Starts the upload of a u8 batch (n, src_h, src_w, 3) for a later
    /// [`GpuNet::launch_train_staged`]: a host copy into page-locked memory, then an
    /// asynchronous upload on a copy stream that overlaps compute already queued. At most two
    /// staged batches are kept; staging a third overwrites the oldest.
    pub fn stage_u8(&mut self, images: &[u8]) -> Result<Staged, CudaError> {
        self.stager.stage(&self.gpu, images)
    }

    /// The augment kernel from a staged batch into the input buffer; returns n (one input per
    /// sample: each sample names its staged image, `src`).
    fn augment_staged(
        &mut self,
        st: Staged,
        (src_h, src_w): (usize, usize),
        samples: &[AugmentSample],
    ) -> Result<usize, CudaError> {
        let [c, h, w] = self.plan.input;
        if c != 3 || h != w {
            return Err(CudaError::invalid(
                "augment",
                format!("input {c}x{h}x{w} is not 3 x S x S"),
            ));
        }
        let n = samples.len();
        let (len, image) = (st.len(), src_h * src_w * 3);
        if n == 0 || n > self.batch || image == 0 || len % image != 0 {
            return Err(CudaError::shape(
                "augment",
                format!(
                    "{len} bytes / {n} samples for batch <= {} of {src_h}x{src_w}x3 images",
                    self.batch
                ),
            ));
        }
        let (mean, mh, mw) = self
            .mean
            .as_ref()
            .ok_or_else(|| CudaError::invalid("augment", "no mean image (call set_mean_image)"))?;
        let mut p = AugmentParams::square(n, src_h, h, *mh)?;
        p.src_w = crate::ops::u32_of("augment", "src_w", src_w)?;
        p.mean_w = crate::ops::u32_of("augment", "mean_w", *mw)?;
        p.records = crate::ops::u32_of("augment", "records", len / image)?;
        self.resident = 0;
        let dev = self.stager.take(&self.gpu, st)?;
        let src = dev.slice(0..len);
        let mut x = self.acts[0].slice_mut(0..n * c * h * w);
        crate::ops::augment::augment_u8(&self.gpu, &src, &mean.as_view(), samples, &mut x, p)?;
        self.stager.consumed(&self.gpu, st)?;
        Ok(n)
    }

    /// Queues the inference of a batch staged by [`GpuNet::stage_u8`]: the augment kernel
    /// builds one input per sample (several may crop the same image: the evaluation views),
    /// then the forward with dropout off, without waiting; [`GpuNet::finish_logits`] returns
    /// the logits. In between, the host can stage the next batch.
    pub fn launch_predict_staged(
        &mut self,
        st: Staged,
        src: (usize, usize),
        samples: &[AugmentSample],
    ) -> Result<(), CudaError> {
        let t0 = pass::tick(&self.gpu, self.prof.is_some())?;
        let n = self.augment_staged(st, src, samples)?;
        self.prof_extra(0, t0)?;
        self.run_forward(n, false, DropSeeds::Host(0))?;
        self.pending_logits = Some(n);
        Ok(())
    }

    /// Waits for the inference queued by [`GpuNet::launch_predict_staged`] and returns its
    /// logits (n, classes).
    pub fn finish_logits(&mut self) -> Result<Vec<f32>, CudaError> {
        let n = self.pending_logits.take().ok_or_else(|| {
            CudaError::invalid(
                "finish_logits",
                "no inference queued (launch_predict_staged first)",
            )
        })?;
        let last = self.stages.last().map(|s| s.out()).unwrap_or(0);
        self.gpu
            .download(&self.acts[last].slice(0..n * self.plan.num_classes))
    }

    /// Queues augmentation (from a batch staged by [`GpuNet::stage_u8`]), forward, loss and
    /// backward of one training step without waiting for them; [`GpuNet::finish_loss`] returns
    /// the loss. In between, the host can stage the next batch: its upload then overlaps this
    /// step's compute.
    pub fn launch_train_staged(
        &mut self,
        st: Staged,
        src: (usize, usize),
        samples: &[AugmentSample],
        labels: &[u32],
        dropout_seed: u64,
    ) -> Result<(), CudaError> {
        one_crop_per_image(st.len(), src, samples.len())?;
        let t0 = pass::tick(&self.gpu, self.prof.is_some())?;
        let n = self.augment_staged(st, src, samples)?;
        self.prof_extra(0, t0)?;
        self.load_labels(labels, n)?;
        self.launch_pass(n, dropout_seed)?;
        self.pending_loss = Some(n);
        Ok(())
    }

    /// Waits for the step queued by [`GpuNet::launch_train_staged`] and returns its mean loss.
    pub fn finish_loss(&mut self) -> Result<f32, CudaError> {
        let n = self.pending_loss.take().ok_or_else(|| {
            CudaError::invalid("finish_loss", "no step queued (launch_train_staged first)")
        })?;
        self.read_loss(n)
    }

    /// Mutable access to the flat device buffers (params, grads) for callers that fuse their
    /// own kernels (e.g. multi-GPU gradient reduction).
    pub fn buffers_mut(&mut self) -> (&mut CudaSlice<f32>, &mut CudaSlice<f32>) {
        (&mut self.params, &mut self.grads)
    }
}

/// A training batch crops each image once: `bytes` must hold exactly `n` images of `src`
/// (the evaluation's several views per image are for inference only).
fn one_crop_per_image(bytes: usize, (h, w): (usize, usize), n: usize) -> Result<(), CudaError> {
    if bytes != n * h * w * 3 {
        return Err(CudaError::shape(
            "train from u8 images",
            format!("{bytes} bytes for {n} samples of {h}x{w}x3 (one crop per image)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::one_crop_per_image;

    #[test]
    fn a_training_batch_crops_each_staged_image_once() {
        assert!(one_crop_per_image(2 * 4 * 5 * 3, (4, 5), 2).is_ok());
        // Two samples of one staged image (evaluation views) are not a training batch.
        let e = one_crop_per_image(4 * 5 * 3, (4, 5), 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("60 bytes for 2 samples of 4x5x3"), "{e}");
        assert!(one_crop_per_image(3 * 4 * 5 * 3, (4, 5), 2).is_err());
    }
}
