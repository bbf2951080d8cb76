//! The benchmark side of `gpu-check` and `bench --device cuda`: the measured GEMM peak, the
//! benchmark table and [`bench_cuda`] with its stand-in for the loader ([`ImagePool`]).

use super::model::draw_batch;
use super::*;
use alexnet_cuda::ops::conv_route::conv_picks;
use alexnet_data::{view_patches, View};
use alexnet_train::backend::view_samples;

/// Measured TFLOP/s of one `PEAK_GEMM`^3 GEMM through `ops::gemm` (bf16: including the casts of
/// the operands), the median of 5 after 2 warm-up runs.
fn gemm_peak(gpu: &Arc<Gpu>, p: Precision) -> Result<f64> {
    let n = PEAK_GEMM;
    // Non-trivial operand values (zeros would let the card run cooler and faster).
    let host: Vec<f32> = (0..n * n)
        .map(|i| ((i as u64).wrapping_mul(2_654_435_761) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let (a, b) = (gpu.upload(&host)?, gpu.upload(&host)?);
    drop(host);
    let mut c = gpu.zeros(n * n)?;
    let d = MatDesc::new(n, n);
    let secs = median_secs(gpu, 2, 5, |_| {
        let (av, bv, mut cv) = (a.as_view(), b.as_view(), c.as_view_mut());
        Ok(gemm(gpu, p, 1.0, &av, d, &bv, d, 0.0, &mut cv, d)?)
    })?;
    Ok(2.0 * (n as f64).powi(3) / secs / 1e12)
}

/// The benchmark table of `gpu-check`; false when a row could not run. Each row is
/// [`bench_cuda`] on the paper preset with the loader in the loop (u8 batches uploaded and
/// augmented on the GPU) and, for the `synthetic` column, without it.
pub(super) fn bench_table(gpu: &Arc<Gpu>, impls: &[ConvImpl]) -> Result<bool> {
    println!(
        "-- benchmark: preset paper, median of {BENCH_STEPS} timed steps after {BENCH_WARMUP} \
         warm-up, {}",
        gpu.name()
    );
    println!(
        "{:<6} {:<22} {:>6} {:>12} {:>12} {:>12} {:>9} {:>10} {:>9}",
        "prec",
        "conv",
        "batch",
        "train img/s",
        "(synthetic)",
        "infer img/s",
        "TFLOP/s",
        "GEMM peak",
        "of limit"
    );
    if impls.contains(&ConvImpl::Cudnn) {
        gpu.set_conv_impl(ConvImpl::Cudnn)?;
        let plan = load_preset("paper")?.plan(1000)?;
        for a in [AlgoSearch::Heuristic, AlgoSearch::Timed] {
            gpu.set_algo_search(a);
            for p in [Precision::F32, Precision::Tf32] {
                let net = GpuNet::new(gpu.clone(), &plan, 128, p)?;
                for [name, f, d, w] in net.conv_algorithms()? {
                    let short = |s: &str| s.trim_start_matches("CUDNN_CONVOLUTION_").to_string();
                    println!(
                        "info cuDNN {} {} batch 128 {name}: {} / {} / {}",
                        a.name(),
                        precision_name(p),
                        short(&f),
                        short(&d),
                        short(&w)
                    );
                }
            }
        }
    }
    let mut ok = true;
    let mut peaks: Vec<(Precision, f64)> = Vec::new();
    // (precision, convolutions, algorithm search, batch, space-to-depth, layout): the defaults
    // (auto) beside cuDNN in NCHW and in NHWC, with the space-to-depth form of conv1 (the
    // default) and once without it, and im2col. bf16 runs on cuDNN in NHWC only (its default);
    // its NCHW row is im2col with conv1 on cuDNN in TF32.
    let mut rows: Vec<(Precision, ConvImpl, AlgoSearch, usize, bool, ConvLayout)> = Vec::new();
    // Rows run again with the per-element LRN kernels (ALEXNET_LRN=elements): the defaults of
    // each precision, the A/B of the column kernels.
    let mut elems_rows = Vec::new();
    let cudnn = impls.contains(&ConvImpl::Cudnn);
    let (h, t) = (AlgoSearch::Heuristic, AlgoSearch::Timed);
    let (f32_, tf32, bf16) = (Precision::F32, Precision::Tf32, Precision::Bf16);
    let (auto, nchw, nhwc) = (ConvLayout::Auto, ConvLayout::Nchw, ConvLayout::Nhwc);
    if cudnn {
        rows.push((f32_, ConvImpl::Cudnn, h, 128, true, nchw));
        rows.push((f32_, ConvImpl::Cudnn, h, 128, true, nhwc));
    }
    rows.push((f32_, ConvImpl::Im2col, h, 128, true, auto));
    elems_rows.push(rows.len() - 1);
    if cudnn {
        for lay in [nchw, nhwc] {
            if lay == nchw {
                elems_rows.push(rows.len());
            }
            rows.push((tf32, ConvImpl::Cudnn, h, 128, true, lay));
            rows.push((tf32, ConvImpl::Cudnn, t, 128, true, lay));
        }
        rows.push((tf32, ConvImpl::Cudnn, h, 128, false, nchw));
        // Larger batches (the bench's --batch is free; PyTorch's best bf16 figure is at 256).
        rows.push((tf32, ConvImpl::Cudnn, t, 256, true, nchw));
    }
    rows.push((tf32, ConvImpl::Im2col, h, 128, true, auto));
    if cudnn {
        rows.push((bf16, ConvImpl::Auto, h, 128, true, auto));
        elems_rows.push(rows.len() - 1);
        rows.push((bf16, ConvImpl::Auto, t, 128, true, auto));
        rows.push((bf16, ConvImpl::Auto, h, 256, true, auto));
        rows.push((bf16, ConvImpl::Auto, h, 512, true, auto));
        rows.push((bf16, ConvImpl::Auto, h, 128, true, nchw));
    }
    rows.push((bf16, ConvImpl::Im2col, h, 128, true, auto));
    let (s2d_default, layout_default) = (gpu.space_to_depth(), gpu.conv_layout());
    let lrn_default = gpu.lrn_columns();
    let runs: Vec<_> = (0..rows.len())
        .map(|i| (rows[i], true))
        .chain(elems_rows.iter().map(|&i| (rows[i], false)))
        .collect();
    for ((p, ci, a, batch, s2d, layout), lrn_cols) in runs {
        gpu.set_lrn_columns(lrn_cols);
        gpu.set_conv_impl(ci)?;
        gpu.set_algo_search(a);
        gpu.set_space_to_depth(s2d);
        gpu.set_conv_layout(layout);
        let nhwc = layout.nhwc_for(p);
        let mut conv_name = ci.name().to_string();
        if ci.uses_cudnn() {
            conv_name = format!("{conv_name} {}", a.name());
        }
        if !s2d {
            conv_name.push_str(" no-s2d");
        }
        if ci.uses_cudnn() {
            conv_name.push_str(if nhwc { " nhwc" } else { " nchw" });
        }
        if !lrn_cols {
            conv_name.push_str(" lrn-el");
        }
        let peak = match peaks.iter().find(|(q, _)| *q == p) {
            Some(&(_, v)) => Some(v),
            None => {
                let v = gemm_peak(gpu, p).ok();
                if let Some(v) = v {
                    peaks.push((p, v));
                }
                v
            }
        };
        let mut o = CudaBench::paper(p, batch);
        o.synthetic_data = false;
        // Set above on this device: one context for the whole table.
        let with_loader = bench_on(gpu, &o, p);
        o.synthetic_data = true;
        let synthetic = bench_on(gpu, &o, p);
        match (with_loader, synthetic) {
            (Ok(r), Ok(sy)) => {
                let train = r.train_img_per_s;
                let achieved = train * FLOP_PER_TRAINED_IMAGE / 1e12;
                let (peak_s, frac_s) = match peak {
                    Some(pk) => (format!("{pk:.1}"), format!("{:.1}%", 100.0 * achieved / pk)),
                    None => ("?".into(), "?".into()),
                };
                println!(
                    "{:<6} {conv_name:<22} {batch:>6} {train:>12.0} {:>12.0} {:>12.0} \
                     {achieved:>9.1} {peak_s:>10} {frac_s:>9}",
                    precision_name(p),
                    sy.train_img_per_s,
                    r.infer_img_per_s
                );
            }
            (Err(e), _) | (_, Err(e)) => {
                ok = false;
                println!(
                    "{:<6} {conv_name:<22} {batch:>6} error: {e:#}",
                    precision_name(p)
                );
            }
        }
    }
    gpu.set_space_to_depth(s2d_default);
    gpu.set_conv_layout(layout_default);
    gpu.set_lrn_columns(lrn_default);
    println!(
        "limit: {:.2} GFLOP per trained image; TFLOP/s = train img/s x {:.2e}; GEMM peak = \
         measured {PEAK_GEMM}^3 GEMM through our cuBLAS path (bf16 including the operand casts); \
         auto: cuDNN for TF32 (NCHW) and bf16 (NHWC), im2col + cuBLAS for f32; bf16 auto \
         nchw: im2col + bf16 GEMMs with conv1 on cuDNN in TF32; no-s2d: conv1 without the \
         space-to-depth form; nhwc: cuDNN on NHWC copies (bf16 for bf16); lrn-el: the \
         per-element LRN kernels and a separate pool backward (ALEXNET_LRN=elements) instead \
         of the column kernels",
        FLOP_PER_TRAINED_IMAGE / 1e9,
        FLOP_PER_TRAINED_IMAGE
    );
    Ok(ok)
}

/// The forward GEMM of every layer of the paper net at batch 128 as the im2col path runs it, one
/// group, `(name, m, n, k)`: conv: m = O/g, n = the output pixels of one sample chunk (whose
/// columns, all groups', stay within `COL_BUDGET` elements), k = C/g x K x K; linear: m = the
/// batch, n = out, k = in.
pub(super) fn im2col_gemm_shapes(plan: &Plan, batch: usize) -> Vec<(String, usize, usize, usize)> {
    let mut out = Vec::new();
    for l in &plan.layers {
        match l.op {
            Op::Conv {
                cin,
                cout,
                k,
                groups,
                ..
            } if groups > 0 && l.out_shape.len() == 3 => {
                let per = l.out_shape[1] * l.out_shape[2];
                // The column buffer holds every group's columns of a chunk (`net::stages`).
                let col1 = (cin * k * k * per).max(1);
                let chunk = (alexnet_cuda::net::COL_BUDGET / col1).clamp(1, batch);
                out.push((
                    l.name.clone(),
                    cout / groups,
                    chunk * per,
                    cin / groups * k * k,
                ));
            }
            Op::Linear { fin, fout } => out.push((l.name.clone(), batch, fout, fin)),
            _ => {}
        }
    }
    out
}

/// TFLOP/s of [`im2col_gemm_shapes`] through our cuBLAS path in f32 and TF32 (median of 5
/// after 2): how far strict f32 is from its 8192^3 peak on the network's own shapes, and
/// whether three TF32 products (f32 accuracy; "3xTF32") could beat one f32 product there.
pub(super) fn gemm_shape_rows(gpu: &Arc<Gpu>) -> Result<()> {
    let plan = load_preset("paper")?.plan(1000)?;
    println!(
        "-- GEMMs of the paper net's layers (im2col forward, batch 128, one group): TFLOP/s \
         ({:<6} {:>5} {:>7} {:>5} {:>8} {:>8} {:>10})",
        "layer", "m", "n", "k", "f32", "tf32", "tf32 / 3"
    );
    for (name, m, n, k) in im2col_gemm_shapes(&plan, 128) {
        let fill = |len: usize, seed: u64| -> Vec<f32> {
            (0..len as u64)
                .map(|i| ((i ^ seed).wrapping_mul(2_654_435_761) % 1000) as f32 / 1000.0 - 0.5)
                .collect()
        };
        let (a, b) = (gpu.upload(&fill(m * k, 1))?, gpu.upload(&fill(k * n, 2))?);
        let mut c = gpu.zeros(m * n)?;
        let mut rate = |p: Precision| -> Result<f64> {
            let secs = median_secs(gpu, 2, 5, |_| {
                let (av, bv, mut cv) = (a.as_view(), b.as_view(), c.as_view_mut());
                let (da, db, dc) = (MatDesc::new(m, k), MatDesc::new(k, n), MatDesc::new(m, n));
                Ok(gemm(gpu, p, 1.0, &av, da, &bv, db, 0.0, &mut cv, dc)?)
            })?;
            Ok(2.0 * (m * n * k) as f64 / secs / 1e12)
        };
        let (f, t) = (rate(Precision::F32)?, rate(Precision::Tf32)?);
        println!(
            "{name:<6} {m:>5} {n:>7} {k:>5} {f:>8.1} {t:>8.1} {:>10.1}",
            t / 3.0
        );
    }
    Ok(())
}

/// ImageNet RGB PCA (0..255 scale; eigenvectors are the columns), the usual published values.
/// Stand-ins for the dataset's own decomposition: they do not change the timing.
const EIGVAL: [f32; 3] = [55.46, 4.794, 1.148];
const EIGVEC: [[f32; 3]; 3] = [
    [-0.5675, 0.7192, 0.4009],
    [-0.5808, -0.0045, -0.8140],
    [-0.5836, -0.6948, 0.4203],
];

/// A pool of random u8 images standing in for the memory-mapped shards.
pub(super) struct ImagePool {
    side: usize,
    images: Vec<u8>,
    labels: Vec<u32>,
    pub(super) mean: Vec<f32>,
}

impl ImagePool {
    pub(super) fn new(rng: &mut Rng, count: usize, side: usize, classes: usize) -> Self {
        let rec = side * side * 3;
        let mut images = vec![0u8; count * rec];
        for chunk in images.chunks_mut(8) {
            let v = rng.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        let labels = (0..count)
            .map(|_| rng.below(classes as u64) as u32)
            .collect();
        let mut mean = vec![0.0f32; rec];
        for img in images.chunks(rec) {
            for (m, &v) in mean.iter_mut().zip(img) {
                *m += v as f32;
            }
        }
        mean.iter_mut().for_each(|m| *m /= count as f32);
        ImagePool {
            side,
            images,
            labels,
            mean,
        }
    }

    pub(super) fn record(&self, i: usize) -> &[u8] {
        let rec = self.side * self.side * 3;
        &self.images[i * rec..(i + 1) * rec]
    }

    /// One training batch as the loader hands it to the GPU path: `n` S x S u8 HWC records
    /// copied into one buffer (in parallel, as the real loader gathers), with per-sample crop
    /// offset, flip and PCA-lighting delta.
    pub(super) fn train_batch(
        &self,
        rng: &mut Rng,
        n: usize,
        crop: usize,
        buf: &mut Vec<u8>,
    ) -> (Vec<AugmentSample>, Vec<u32>) {
        let rec = self.side * self.side * 3;
        let (mut samples, mut labels) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut picks = Vec::with_capacity(n);
        let span = (self.side - crop + 1) as u64;
        for k in 0..n {
            let i = rng.below(self.labels.len() as u64) as usize;
            picks.push(i);
            labels.push(self.labels[i]);
            let (ox, oy) = (rng.below(span) as u32, rng.below(span) as u32);
            let alpha = [0.1 * rng.normal(), 0.1 * rng.normal(), 0.1 * rng.normal()];
            samples.push(AugmentSample {
                ox,
                oy,
                mox: ox,
                moy: oy,
                flip: rng.below(2) as u32,
                delta: pca_delta(&EIGVEC, &EIGVAL, &alpha),
                src: k as u32,
            });
        }
        buf.resize(n * rec, 0);
        buf.par_chunks_mut(rec)
            .zip(picks.par_iter())
            .for_each(|(dst, &i)| dst.copy_from_slice(self.record(i)));
        (samples, labels)
    }

    /// One evaluation batch as the evaluation hands it to the GPU path: `n` random S x S u8
    /// records copied into one buffer (in parallel, as [`alexnet_data::eval_records`] gathers).
    pub(super) fn eval_records(&self, rng: &mut Rng, n: usize, buf: &mut Vec<u8>) {
        let rec = self.side * self.side * 3;
        let picks: Vec<usize> = (0..n)
            .map(|_| rng.below(self.labels.len() as u64) as usize)
            .collect();
        buf.resize(n * rec, 0);
        buf.par_chunks_mut(rec)
            .zip(picks.par_iter())
            .for_each(|(dst, &i)| dst.copy_from_slice(self.record(i)));
    }
}

/// The median seconds of `steps` pipelined steps after `warmup` ones: each `step` call queues
/// work, stages the next batch and waits for a result, so a step's time runs from one result to
/// the next and includes whatever host work the GPU has to wait for.
fn pipelined_secs(
    gpu: &Gpu,
    warmup: usize,
    steps: usize,
    mut step: impl FnMut(usize) -> Result<()>,
) -> Result<f64> {
    let mut times = Vec::with_capacity(steps);
    gpu.synchronize()?;
    let mut t_prev = Instant::now();
    for i in 0..warmup + steps {
        step(i)?;
        let now = Instant::now();
        if i >= warmup {
            times.push((now - t_prev).as_secs_f64());
        }
        t_prev = now;
    }
    gpu.synchronize()?;
    Ok(median(times))
}

/// Random N(0, std^2) weights / constant biases as the plan asks (what `Model::init` draws,
/// without allocating a CPU model).
pub(super) fn init_params(plan: &Plan, seed: u64) -> Vec<f32> {
    let mut params = vec![0.0f32; plan.total];
    for (i, p) in plan.params.iter().enumerate() {
        let mut rng = Rng::derive(seed, &[i as u64]);
        for v in &mut params[p.offset..p.offset + p.len] {
            *v = if p.init_std > 0.0 {
                p.init_std * rng.normal()
            } else {
                p.init_constant
            };
        }
    }
    params
}

/// Options of [`bench_cuda`] (the `bench --device cuda` flags).
#[derive(Clone, Debug)]
pub struct CudaBench<'a> {
    pub preset: &'a str,
    pub batch: usize,
    pub classes: usize,
    pub precision: &'a str,
    /// Leave the loader out (see [`bench_cuda`]).
    pub synthetic_data: bool,
    pub warmup: usize,
    pub steps: usize,
    /// After the timed steps, run `steps` more with every stage synchronised and timed.
    pub profile: bool,
    /// Convolution implementation (default: the device's, see [`ConvImpl`]).
    pub conv: Option<ConvImpl>,
    /// How cuDNN picks its algorithms (default: the device's, see [`AlgoSearch`]).
    pub algo: Option<AlgoSearch>,
    /// CUDA graphs for the training step (default: the device's, see `Gpu::graphs`).
    pub graphs: Option<bool>,
}

impl CudaBench<'static> {
    /// The table's settings: paper preset (1000 classes) at precision `p` and `batch`, compute
    /// only, [`BENCH_STEPS`] timed steps after [`BENCH_WARMUP`], the device's convolutions.
    pub(super) fn paper(p: Precision, batch: usize) -> Self {
        CudaBench {
            preset: "paper",
            batch,
            classes: 1000,
            precision: precision_name(p),
            synthetic_data: true,
            warmup: BENCH_WARMUP,
            steps: BENCH_STEPS,
            profile: false,
            conv: None,
            algo: None,
            graphs: None,
        }
    }
}

/// `cargo xtask bench --device cuda`: training (forward + backward + SGD) and inference img/s on
/// device 0, each the median of `steps` timed steps after `warmup` untimed ones.
///
/// - `synthetic_data == false` (the default of the command: the loader in the loop): a pool of
///   random S x S u8 images stands in for the shards. Training runs as the trainer does: each
///   step queues the augmentation (on the GPU) and forward and backward of a staged batch
///   ([`GpuNet::launch_train_staged`]); while the GPU computes, the host gathers the next
///   `batch` records into one buffer, draws each sample's crop offset, flip and PCA-lighting
///   delta ([`alexnet_tensor::rng::Rng`]) and stages its upload ([`GpuNet::stage_u8`]: page-locked
///   copy, then an upload on a copy stream); then it reads the loss and queues SGD. A step's
///   time runs from one loss read to the next, so it includes whatever host work the GPU has to
///   wait for. Inference runs as the evaluation does: each step queues the centre crop of every
///   staged record (cut on the GPU) and the forward ([`GpuNet::launch_predict_staged`]), gathers
///   and stages the next batch meanwhile, then downloads the logits.
/// - `synthetic_data == true`: compute only, as PyTorch's synthetic-input benchmarks measure:
///   one random f32 batch uploaded once; training is [`GpuNet::forward_backward_resident`] +
///   [`GpuNet::sgd_step`], inference [`GpuNet::forward_resident`] (logits left on the device).
///
/// With `profile`, `steps` more training steps run with every stage synchronised and timed;
/// [`BenchResult::layers`] then holds ms per step for each stage.
///
/// Without a CUDA device: a one-line "no CUDA device: ..." error.
pub fn bench_cuda(o: &CudaBench) -> Result<BenchResult> {
    if o.batch == 0 || o.steps == 0 {
        bail!("--batch and --steps must be at least 1");
    }
    let p = Precision::parse(o.precision).map_err(|e| anyhow!("--{e}"))?;
    let gpu = open_gpu()?;
    if let Some(c) = o.conv {
        gpu.set_conv_impl(c)?;
    }
    if let Some(a) = o.algo {
        gpu.set_algo_search(a);
    }
    if let Some(g) = o.graphs {
        gpu.set_graphs(g);
    }
    bench_on(&gpu, o, p)
}

/// [`bench_cuda`] on an open device at precision `p` (`o.precision`, `o.conv` and `o.algo` are
/// not read here: the device's current settings are used). Timed steps other than the
/// pipelined training steps are synchronised before and after.
pub(super) fn bench_on(gpu: &Arc<Gpu>, o: &CudaBench, p: Precision) -> Result<BenchResult> {
    let (batch, warmup, steps) = (o.batch, o.warmup, o.steps);
    let spec = load_preset(o.preset)?;
    let plan = spec.plan(o.classes)?;
    let mut net = GpuNet::new(gpu.clone(), &plan, batch, p)
        .with_context(|| format!("preset {} at batch {batch} on {}", o.preset, gpu.name()))?;
    net.upload_params(&init_params(&plan, 1))?;
    let [c, h, w] = plan.input;
    let mut rng = Rng::new(0x0BE4_C0DA);
    // A tiny lr keeps the weights (and so the work) essentially fixed.
    let (lr, m, wd) = (1e-4f32, 0.9f32, 5e-4f32);
    // img/s of the median step.
    let timed = |net: &mut GpuNet, f: &mut dyn FnMut(&mut GpuNet, u64) -> Result<()>| {
        Ok::<f64, anyhow::Error>(batch as f64 / median_secs(gpu, warmup, steps, |i| f(net, i))?)
    };
    let profiled = |net: &mut GpuNet,
                    f: &mut dyn FnMut(&mut GpuNet, u64) -> Result<()>|
     -> Result<Option<Vec<(String, f64, f64)>>> {
        if !o.profile {
            return Ok(None);
        }
        net.enable_profile();
        for step in 0..steps {
            f(net, step as u64)?;
        }
        gpu.synchronize()?;
        let k = 1e3 / steps as f64;
        Ok(net.profile().map(|rows| {
            rows.into_iter()
                .map(|(n, f, b)| (n, f * k, b * k))
                .collect()
        }))
    };
    let (train, infer, layers) = if o.synthetic_data {
        // Upload one batch; every timed step then computes on it where it lies.
        let (x, labels) = draw_batch(&mut rng, &plan, batch);
        net.forward_backward(&x, &labels, 0)?;
        let mut step_fn = |net: &mut GpuNet, step: u64| -> Result<()> {
            net.forward_backward_resident(step)?;
            net.sgd_step(lr, m, wd)?;
            Ok(())
        };
        let train = timed(&mut net, &mut step_fn)?;
        let infer = timed(&mut net, &mut |net, _| {
            net.forward_resident()?;
            Ok(())
        })?;
        let layers = profiled(&mut net, &mut step_fn)?;
        (train, infer, layers)
    } else {
        let side = spec.input.image_size;
        if c != 3 || h != w || h > side {
            bail!(
                "preset {}: input {c}x{h}x{w} is not 3 x crop x crop with crop <= image size \
                 {side}; use --synthetic-data",
                o.preset
            );
        }
        let pool = ImagePool::new(&mut rng, (2 * batch).max(64), side, o.classes);
        net.set_mean_image(&pool.mean, side, side)?;
        let mut buf = Vec::with_capacity(batch * side * side * 3);
        // As the trainer runs: each step queues its compute, then the host gathers the next
        // batch and stages its upload (overlapping that compute), then reads the loss and
        // queues SGD. A step's time runs from one loss read to the next.
        let src = (side, side);
        let (mut samples, mut labels) = pool.train_batch(&mut rng, batch, h, &mut buf);
        let mut staged = net.stage_u8(&buf)?;
        let train = batch as f64
            / pipelined_secs(gpu, warmup, steps, |step| {
                net.launch_train_staged(staged, src, &samples, &labels, step as u64)?;
                let next = pool.train_batch(&mut rng, batch, h, &mut buf);
                staged = net.stage_u8(&buf)?;
                net.finish_loss()?;
                net.sgd_step(lr, m, wd)?;
                (samples, labels) = next;
                Ok(())
            })?;
        // The profile runs unpipelined steps (every stage is synchronised anyway).
        let mut step_fn = |net: &mut GpuNet, step: u64| -> Result<()> {
            let (samples, labels) = pool.train_batch(&mut rng, batch, h, &mut buf);
            net.train_step_u8(&buf, src, &samples, &labels, step, (lr, m, wd))?;
            Ok(())
        };
        let layers = profiled(&mut net, &mut step_fn)?;
        // Inference as the evaluation runs it: the centre crop of each staged record cut on
        // the device, the next batch gathered and staged while the forward computes; a step
        // runs from one logits download to the next.
        let centre = view_samples(batch, &view_patches(side, h, View::Center));
        let mut rng2 = Rng::new(0x0BE4_C0DB);
        pool.eval_records(&mut rng2, batch, &mut buf);
        let mut staged = net.stage_u8(&buf)?;
        let infer = batch as f64
            / pipelined_secs(gpu, warmup, steps, |_| {
                net.launch_predict_staged(staged, src, &centre)?;
                pool.eval_records(&mut rng2, batch, &mut buf);
                staged = net.stage_u8(&buf)?;
                net.finish_logits()?;
                Ok(())
            })?;
        (train, infer, layers)
    };
    Ok(BenchResult {
        train_img_per_s: train,
        infer_img_per_s: infer,
        preset: spec.name,
        batch,
        device: format!("cuda:0 ({})", gpu.name()),
        threads: 1,
        precision: precision_name(p).into(),
        timed_steps: steps,
        layers,
        conv_picks: (gpu.conv_impl() == ConvImpl::Timed).then(|| {
            let mut picks = conv_picks(gpu);
            picks.retain(|c| c.precision == p.name());
            picks
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alexnet_cuda::AugmentParams;

    #[test]
    fn loader_stand_in_draws_valid_crops() {
        let mut rng = Rng::new(3);
        let (side, crop, n) = (12, 9, 5);
        let pool = ImagePool::new(&mut rng, 7, side, 4);
        assert_eq!(pool.mean.len(), side * side * 3);
        let mut buf = Vec::new();
        let (samples, labels) = pool.train_batch(&mut rng, n, crop, &mut buf);
        assert_eq!((buf.len(), labels.len()), (n * side * side * 3, n));
        assert!(labels.iter().all(|&l| l < 4));
        let p = AugmentParams::square(n, side, crop, side).unwrap();
        p.validate(&samples).unwrap();
        assert!(samples
            .iter()
            .all(|s| s.flip <= 1 && s.delta.iter().all(|d| d.is_finite())));

        // Evaluation records are whole pool images.
        pool.eval_records(&mut rng, 3, &mut buf);
        let rec = side * side * 3;
        assert_eq!(buf.len(), 3 * rec);
        assert!(buf.chunks(rec).all(|r| (0..7).any(|i| pool.record(i) == r)));
    }
    #[test]
    fn gemm_shapes_are_the_paper_layers() {
        let plan = load_preset("paper").unwrap().plan(1000).unwrap();
        let shapes = im2col_gemm_shapes(&plan, 128);
        let names: Vec<&str> = shapes.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            names,
            ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
        );
        // conv1: 96 filters of 3 x 11 x 11 over 55 x 55 outputs, 61 samples of columns per
        // chunk (2^26 / (363 * 3025)); conv2: 128 of 48 x 5 x 5 per group, 38 samples
        // (2^26 / (96 * 25 * 729)); conv3: the whole batch of 13 x 13 outputs.
        assert_eq!(shapes[0].1..=shapes[0].3, 96..=363);
        assert_eq!(shapes[0].2, 61 * 3025);
        assert_eq!(
            (shapes[1].1, shapes[1].2, shapes[1].3),
            (128, 38 * 729, 1200)
        );
        assert_eq!(
            (shapes[2].1, shapes[2].2, shapes[2].3),
            (384, 128 * 169, 2304)
        );
        assert_eq!((shapes[5].1, shapes[5].2, shapes[5].3), (128, 4096, 9216));
        assert_eq!((shapes[7].1, shapes[7].2, shapes[7].3), (128, 1000, 4096));
    }

    #[test]
    fn init_params_follow_the_plan() {
        let plan = load_preset("small").unwrap().plan(10).unwrap();
        let p = init_params(&plan, 1);
        for e in &plan.params {
            let v = &p[e.offset..e.offset + e.len];
            if e.init_std > 0.0 {
                assert!(v.iter().any(|&x| x != 0.0), "{}", e.name);
            } else {
                assert!(v.iter().all(|&x| x == e.init_constant), "{}", e.name);
            }
        }
    }
}
