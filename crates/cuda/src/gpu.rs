//! [`Gpu`]: one device context, one stream, the loaded kernel modules and the cuBLAS handle.

use crate::error::{no_panic, CudaError};
use crate::kernels::{cached_ptx, KernelFile};
use crate::ops::conv_route::{PickKey, Picked};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, LaunchConfig,
    ValidAsZeroBits,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// Arithmetic precision of the GEMMs (convolutions and linear layers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// Strict f32 (cuBLAS `CUBLAS_COMPUTE_32F`, no tensor-core rounding); parity at 1e-4.
    #[default]
    F32,
    /// f32 storage, TF32 tensor-core GEMMs (`CUBLAS_COMPUTE_32F_FAST_TF32`).
    Tf32,
    /// bf16 operands with f32 accumulation: cuBLAS GEMMs take their operands cast to bf16 right
    /// before each GEMM and give f32 outputs; cuDNN convolutions (in NHWC) take bf16 copies and
    /// give bf16 outputs, turned back into f32 by the transpose. Master weights, activations,
    /// gradients and the optimizer stay f32.
    Bf16,
}

impl Precision {
    /// `f32`, `tf32` or `bf16` (what [`Precision::parse`] reads).
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Parses `f32`, `tf32` or `bf16`.
    pub fn parse(s: &str) -> Result<Precision, CudaError> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" => Ok(Precision::F32),
            "tf32" => Ok(Precision::Tf32),
            "bf16" => Ok(Precision::Bf16),
            "bf16x3" => Err(CudaError::invalid(
                "precision",
                "bf16x3 is a CPU precision (AMX); on CUDA use f32, tf32 or bf16".to_string(),
            )),
            other => Err(CudaError::invalid(
                "precision",
                format!("unknown precision {other:?}"),
            )),
        }
    }

    /// A documented relative-L2 bound against the f32 CPU reference for one op: f32 the
    /// fixtures' 1e-4; TF32 (10 explicit mantissa bits, unit roundoff 2^-11 ~ 4.9e-4) 2e-2, the
    /// order PyTorch's own TF32 tests allow for matmuls and convolutions (1e-2 to 5e-2) and what
    /// cuBLAS's TF32 path was measured to give on the paper net's fc7/fc6 gradients on an H200
    /// (1.5e-2, through the fc8 backward GEMM of K = 1000); bf16 (unit roundoff 2^-8) 3e-2.
    pub fn tolerance(self) -> f64 {
        match self {
            Precision::F32 => 1e-4,
            Precision::Tf32 => 2e-2,
            Precision::Bf16 => 3e-2,
        }
    }
}

/// How convolutions run. bf16 uses im2col + cuBLAS on bf16 operands (cuDNN's bf16 NCHW
/// kernels measured far slower; see `ops::conv`), except as [`ConvImpl::Auto`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvImpl {
    /// Whichever was measured faster on an H200 (paper net, batch 128): cuDNN for TF32 (9,944
    /// vs 6,712 img/s training), im2col for strict f32 (5,195 vs 4,060: strict f32 keeps cuDNN
    /// to its GEMM-formulated algorithms, see `ops::conv_cudnn`; cuDNN's conv1 in
    /// space-to-depth form was no faster either, 4.4 vs 4.2 ms), cuDNN for bf16 where its
    /// convolutions run in NHWC ([`ConvLayout`], the default for bf16: 13,600 vs 7,598);
    /// bf16 with NCHW convolutions runs im2col + bf16 GEMMs, except the strided convolutions in
    /// space-to-depth form (the paper's conv1, see `ops::space_to_depth`), on cuDNN in TF32,
    /// which rounds less than bf16 (7,549 vs 6,881 img/s). The default where libcudnn loads.
    Auto,
    /// cuDNN (forward, backward data, backward filter) for f32 and TF32, and bf16 in NHWC.
    Cudnn,
    /// Our im2col / col2im kernels + cuBLAS GEMMs.
    Im2col,
    /// As [`ConvImpl::Im2col`], except the 3x3 and 5x5 stride-1 convolutions (and strided ones
    /// in space-to-depth form, the paper's conv1): Winograd F(m x m, k x k), our transforms
    /// around batched cuBLAS GEMMs (`ops::winograd`; f32 GEMMs in f32, TF32 in TF32 and bf16).
    Winograd,
    /// Per convolution call: each shape's forward and backward run on whichever of cuDNN,
    /// Winograd and im2col was timed fastest for it on its first use (`ops::conv_route`; a
    /// training run keeps the picks in `conv_picks.json` for exact resumes).
    Timed,
}

impl ConvImpl {
    /// Parses `auto`, `cudnn`, `im2col`, `winograd` or `timed`.
    pub fn parse(s: &str) -> Result<ConvImpl, CudaError> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(ConvImpl::Auto),
            "cudnn" => Ok(ConvImpl::Cudnn),
            "im2col" => Ok(ConvImpl::Im2col),
            "winograd" => Ok(ConvImpl::Winograd),
            "timed" => Ok(ConvImpl::Timed),
            other => Err(CudaError::invalid(
                "conv implementation",
                format!("unknown {other:?}: expected auto, cudnn, im2col, winograd or timed"),
            )),
        }
    }

    /// `auto`, `cudnn`, `im2col`, `winograd` or `timed`.
    pub fn name(self) -> &'static str {
        match self {
            ConvImpl::Auto => "auto",
            ConvImpl::Cudnn => "cudnn",
            ConvImpl::Im2col => "im2col",
            ConvImpl::Winograd => "winograd",
            ConvImpl::Timed => "timed",
        }
    }

    /// Every implementation, in the order of their codes (`self as u8`).
    pub const ALL: [ConvImpl; 5] = [
        ConvImpl::Auto,
        ConvImpl::Cudnn,
        ConvImpl::Im2col,
        ConvImpl::Winograd,
        ConvImpl::Timed,
    ];

    /// The implementation whose code (`self as u8`, how [`Gpu`] stores it) is `c`; im2col for
    /// codes that name none.
    pub fn from_code(c: u8) -> ConvImpl {
        ConvImpl::ALL
            .get(c as usize)
            .copied()
            .unwrap_or(ConvImpl::Im2col)
    }

    /// Whether this implementation runs convolutions on cuDNN (and so needs libcudnn).
    pub fn uses_cudnn(self) -> bool {
        matches!(self, ConvImpl::Auto | ConvImpl::Cudnn)
    }

    /// Whether convolutions may run on cuDNN: [`ConvImpl::uses_cudnn`], or [`ConvImpl::Timed`]
    /// where libcudnn loads (it times cuDNN among the others, and runs without it).
    pub fn may_use_cudnn(self) -> bool {
        self.uses_cudnn() || (self == ConvImpl::Timed && cudnn_available())
    }

    /// The precision at which cuDNN runs a convolution at precision `p`, or `None` when it runs
    /// as im2col + cuBLAS (or per shape, for [`ConvImpl::Timed`]: `ops::conv_route`). `s2d`:
    /// the convolution runs in space-to-depth form on cuDNN; `nhwc`: cuDNN convolutions run in
    /// NHWC, where they take bf16 operands too. bf16 runs on cuDNN in NHWC only: its bf16
    /// kernels in NCHW (its heuristics' picks) measured 5-20x slower for conv3-5's backward on
    /// an H200 (19 ms vs ~1 ms for conv3 at batch 128).
    pub fn cudnn_precision(self, p: Precision, s2d: bool, nhwc: bool) -> Option<Precision> {
        match (self, p) {
            (ConvImpl::Auto | ConvImpl::Cudnn, Precision::Bf16) if nhwc => Some(Precision::Bf16),
            (ConvImpl::Auto, Precision::Tf32) => Some(Precision::Tf32),
            (ConvImpl::Auto, Precision::Bf16) => s2d.then_some(Precision::Tf32),
            (ConvImpl::Auto, Precision::F32)
            | (ConvImpl::Cudnn, Precision::Bf16)
            | (ConvImpl::Im2col | ConvImpl::Winograd | ConvImpl::Timed, _) => None,
            (ConvImpl::Cudnn, p) => Some(p),
        }
    }
}

/// Environment variable that overrides the default [`ConvImpl`] (`auto`, `cudnn`, `im2col`,
/// `winograd` or `timed`).
pub const CONV_ENV: &str = "ALEXNET_CONV";

/// How cuDNN convolution algorithms are chosen (see `ops::conv_cudnn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AlgoSearch {
    /// cuDNN's heuristics (the default): a function of the shape and the card, so every
    /// process picks the same algorithms and a resumed run stays bit-identical.
    Heuristic,
    /// cuDNN times every algorithm once per shape (`cudnnFind*`, like PyTorch's
    /// `cudnn.benchmark`) and the fastest deterministic one is used. The pick can differ
    /// between processes, so a resumed run may differ from an uninterrupted one in the last bits.
    Timed,
}

impl AlgoSearch {
    /// Parses `heuristic` or `timed`.
    pub fn parse(s: &str) -> Result<AlgoSearch, CudaError> {
        match s {
            "heuristic" => Ok(AlgoSearch::Heuristic),
            "timed" => Ok(AlgoSearch::Timed),
            _ => Err(CudaError::invalid(
                "cudnn-algo",
                format!("{s:?}: expected heuristic or timed"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AlgoSearch::Heuristic => "heuristic",
            AlgoSearch::Timed => "timed",
        }
    }
}

/// Environment variable that overrides the default [`AlgoSearch`] (`heuristic` or `timed`).
pub const ALGO_ENV: &str = "ALEXNET_CUDNN_ALGO";

/// Layout of the operands of cuDNN convolutions. The network keeps f32 NCHW activations; in
/// NHWC the operands are transposed into NHWC scratch copies (`ops::layout`; f32, or bf16 at
/// [`Precision::Bf16`], which then runs on cuDNN too) and the results back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvLayout {
    /// What was measured faster on an H200 (paper net, batch 128, training img/s): NHWC for bf16
    /// (13,600 vs 7,598 with NCHW's im2col + TF32 conv1; 17,138 at batch 256), NCHW for TF32
    /// (12,671 vs 12,795 heuristic, but 14,020 vs 12,846 with timed algorithms) and f32 (whose
    /// default convolutions are im2col anyway). The default.
    Auto,
    /// NCHW: cuDNN works on the network's buffers directly (f32 and TF32 only).
    Nchw,
    /// NHWC copies for every precision.
    Nhwc,
}

impl ConvLayout {
    /// Parses `auto`, `nchw` or `nhwc`.
    pub fn parse(s: &str) -> Result<ConvLayout, CudaError> {
        match s.to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(ConvLayout::Auto),
            "nchw" => Ok(ConvLayout::Nchw),
            "nhwc" => Ok(ConvLayout::Nhwc),
            other => Err(CudaError::invalid(
                LAYOUT_ENV,
                format!("{other:?}: expected auto, nchw or nhwc"),
            )),
        }
    }

    /// `auto`, `nchw` or `nhwc`.
    pub fn name(self) -> &'static str {
        match self {
            ConvLayout::Auto => "auto",
            ConvLayout::Nchw => "nchw",
            ConvLayout::Nhwc => "nhwc",
        }
    }

    /// Whether cuDNN convolutions at precision `p` run in NHWC.
    pub fn nhwc_for(self, p: Precision) -> bool {
        match self {
            ConvLayout::Auto => p == Precision::Bf16,
            ConvLayout::Nchw => false,
            ConvLayout::Nhwc => true,
        }
    }
}

/// Environment variable that picks the [`ConvLayout`] (`auto`, `nchw` or `nhwc`).
pub const LAYOUT_ENV: &str = "ALEXNET_CONV_LAYOUT";

/// Environment variable that turns the space-to-depth form of strided cuDNN convolutions
/// (`ops::space_to_depth`) `off` (default `on`).
pub const S2D_ENV: &str = "ALEXNET_CONV_S2D";

/// Environment variable that picks the LRN kernels of the network: `columns` (default; one
/// thread per pixel and chunk of channels, the max-pool backward fused into the LRN backward)
/// or `elements` (one thread per element, the pool backward separate), for comparison.
pub const LRN_ENV: &str = "ALEXNET_LRN";

/// Environment variable that fixes the output tile side m of the Winograd convolutions
/// (`ops::winograd`, `--conv winograd`): `auto` (default: `ops::winograd::tile_m`'s choice per
/// precision and kernel), `2` or `4` for every layer, for comparison.
pub const WINO_TILE_ENV: &str = "ALEXNET_WINOGRAD_TILE";

/// Environment variable that turns CUDA graphs for the training step `on` (default `off`): the
/// forward, loss and backward of a full batch are captured once and replayed
/// (`net::graph`).
pub const GRAPH_ENV: &str = "ALEXNET_CUDA_GRAPH";

/// The environment variables that change which kernels compute a training step on the GPU, and
/// so its bits: a run resumed under other values is not bit-identical to an uninterrupted one
/// ([`GRAPH_ENV`] is not among them: graphs replay the same kernels).
pub const NUMERIC_ENVS: [&str; 6] = [
    CONV_ENV,
    ALGO_ENV,
    LAYOUT_ENV,
    S2D_ENV,
    LRN_ENV,
    WINO_TILE_ENV,
];

/// Parses a [`WINO_TILE_ENV`] value: `auto` (or empty) -> `None`, `2` or `4` -> that tile side.
pub fn parse_wino_tile(v: &str) -> Result<Option<usize>, CudaError> {
    match v {
        "" | "auto" => Ok(None),
        "2" => Ok(Some(2)),
        "4" => Ok(Some(4)),
        other => Err(CudaError::invalid(
            WINO_TILE_ENV,
            format!("{other:?}: expected auto, 2 or 4"),
        )),
    }
}

/// [`WINO_TILE_ENV`]'s tile side, `None` for auto.
fn default_wino_tile() -> Result<Option<usize>, CudaError> {
    match std::env::var(WINO_TILE_ENV) {
        Ok(v) => parse_wino_tile(&v),
        Err(_) => Ok(None),
    }
}

/// Threads per block of the element-wise kernels.
pub const BLOCK: u32 = 256;
/// Largest grid of a grid-stride kernel (the kernels loop over the rest).
pub const MAX_GRID: u64 = 1 << 16;

/// Launch configuration for a grid-stride kernel over `n` elements, or `None` when `n == 0`.
pub fn grid_for(n: u64) -> Option<LaunchConfig> {
    if n == 0 {
        return None;
    }
    let blocks = n.div_ceil(BLOCK as u64).min(MAX_GRID) as u32;
    Some(LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Number of CUDA devices; 0 when there is no driver or it fails (never panics).
pub fn device_count() -> usize {
    if !driver_available() {
        return 0;
    }
    no_panic("device_count", || {
        CudaContext::device_count().map_err(CudaError::driver("cuDeviceGetCount"))
    })
    .map(|n| n.max(0) as usize)
    .unwrap_or(0)
}

/// True when libcuda can be loaded (never panics).
pub fn driver_available() -> bool {
    std::panic::catch_unwind(|| {
        // SAFETY: `is_culib_present` only tries `dlopen` on candidate names.
        unsafe { cudarc::driver::sys::is_culib_present() }
    })
    .unwrap_or(false)
}

/// True when libcublas can be loaded (never panics).
pub fn cublas_available() -> bool {
    std::panic::catch_unwind(|| {
        // SAFETY: `is_culib_present` only tries `dlopen` on candidate names.
        unsafe { cudarc::cublas::sys::is_culib_present() }
    })
    .unwrap_or(false)
}

/// True when libcudnn can be loaded (never panics; asked once per process: convolutions ask on
/// every call). TF32 and bf16 convolutions then use cuDNN (see [`ConvImpl`]).
pub fn cudnn_available() -> bool {
    static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PRESENT.get_or_init(|| {
        std::panic::catch_unwind(|| {
            // SAFETY: `is_culib_present` only tries `dlopen` on candidate names.
            unsafe { cudarc::cudnn::sys::is_culib_present() }
        })
        .unwrap_or(false)
    })
}

/// [`AlgoSearch::Heuristic`] unless [`ALGO_ENV`] says otherwise.
fn default_algo_search() -> Result<AlgoSearch, CudaError> {
    match std::env::var(ALGO_ENV) {
        Ok(v) => AlgoSearch::parse(&v).map_err(|_| {
            CudaError::invalid(ALGO_ENV, format!("{v:?}: expected heuristic or timed"))
        }),
        Err(_) => Ok(AlgoSearch::Heuristic),
    }
}

/// A two-way switch from the environment: true when `var` is unset, empty or `yes`, false for
/// `no`; any other value is an error naming both words.
fn env_switch(var: &'static str, yes: &str, no: &str) -> Result<bool, CudaError> {
    match std::env::var(var) {
        Ok(v) if v == no => Ok(false),
        Ok(v) if v == yes || v.is_empty() => Ok(true),
        Ok(v) => Err(CudaError::invalid(
            var,
            format!("{v:?}: expected {yes} or {no}"),
        )),
        Err(_) => Ok(true),
    }
}

/// True unless [`S2D_ENV`] says `off`; any value other than `on`/`off` is an error.
fn default_space_to_depth() -> Result<bool, CudaError> {
    env_switch(S2D_ENV, "on", "off")
}

/// True (the column LRN kernels) unless [`LRN_ENV`] says `elements`.
fn default_lrn_columns() -> Result<bool, CudaError> {
    env_switch(LRN_ENV, "columns", "elements")
}

/// False (no CUDA graphs) unless [`GRAPH_ENV`] says `on`.
fn default_graphs() -> Result<bool, CudaError> {
    graphs_switch(GRAPH_ENV)
}

/// `var` as an off/on switch that defaults to off.
fn graphs_switch(var: &'static str) -> Result<bool, CudaError> {
    Ok(!env_switch(var, "off", "on")?)
}

/// [`ConvLayout::Auto`] unless [`LAYOUT_ENV`] says otherwise.
fn default_conv_layout() -> Result<ConvLayout, CudaError> {
    match std::env::var(LAYOUT_ENV) {
        Ok(v) => ConvLayout::parse(&v),
        Err(_) => Ok(ConvLayout::Auto),
    }
}

/// [`ConvImpl::Auto`] where libcudnn loads, else im2col; [`CONV_ENV`] overrides.
fn default_conv_impl() -> Result<ConvImpl, CudaError> {
    match std::env::var(CONV_ENV) {
        Ok(v) if !v.is_empty() => {
            let c = ConvImpl::parse(&v)?;
            if c.uses_cudnn() && !cudnn_available() {
                return Err(CudaError::NoDevice(format!(
                    "{CONV_ENV}={v} but libcudnn could not be loaded"
                )));
            }
            Ok(c)
        }
        _ => Ok(if cudnn_available() {
            ConvImpl::Auto
        } else {
            ConvImpl::Im2col
        }),
    }
}

/// One CUDA device: context, a single stream on which everything runs in order, the kernel
/// modules (compiled once per process, loaded once per context) and a cuBLAS handle.
pub struct Gpu {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) blas: CudaBlas,
    arch: Option<&'static str>,
    name: String,
    compute_capability: (i32, i32),
    modules: Mutex<HashMap<KernelFile, Arc<CudaModule>>>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
    /// Scratch for bf16 GEMM operands (grown on demand).
    pub(crate) bf16_scratch: Mutex<Option<CudaSlice<u16>>>,
    /// Scratch for the per-segment sums of `ops::elementwise::row_sum` (grown on demand).
    pub(crate) sum_scratch: Mutex<Option<CudaSlice<f32>>>,
    /// [`ConvImpl`] as u8 (its index in [`ConvImpl::ALL`]).
    conv_impl: AtomicU8,
    /// cuDNN handle, plans and scratch (created on first use).
    cudnn: Mutex<Option<crate::ops::conv_cudnn::CudnnState>>,
    /// [`AlgoSearch::Timed`] when true.
    algo_timed: AtomicBool,
    /// Strided cuDNN convolutions in space-to-depth form (`ops::space_to_depth`).
    space_to_depth: AtomicBool,
    /// [`ConvLayout`] as u8 (0 auto, 1 NCHW, 2 NHWC).
    conv_layout: AtomicU8,
    /// The column LRN kernels ([`LRN_ENV`]).
    lrn_columns: AtomicBool,
    /// The Winograd tile side forced by [`WINO_TILE_ENV`] (0: auto).
    wino_tile: AtomicU8,
    /// CUDA graphs for the training step ([`GRAPH_ENV`]).
    graphs: AtomicBool,
    /// Bumped whenever a setting above changes or a scratch buffer is reallocated: a captured
    /// CUDA graph holds the launches and buffer addresses of the generation it was captured in.
    generation: AtomicU64,
    /// Set when [`Gpu::grow`] refused to reallocate during a CUDA graph capture.
    grow_refused: AtomicBool,
    /// [`ConvImpl::Timed`]'s picks so far (timed or pinned): the implementation's name per
    /// (shape, precision, call). Cleared when a convolution setting changes.
    conv_picks: Mutex<HashMap<PickKey, Picked>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("name", &self.name)
            .field("compute_capability", &self.compute_capability)
            .finish()
    }
}

impl Gpu {
    /// Opens device `ordinal`. Errors (never panics) without a driver or device.
    pub fn new(ordinal: usize) -> Result<Gpu, CudaError> {
        if !driver_available() {
            return Err(CudaError::NoDevice("libcuda could not be loaded".into()));
        }
        if !cublas_available() {
            return Err(CudaError::NoDevice("libcublas could not be loaded".into()));
        }
        no_panic("Gpu::new", || {
            let count = device_count();
            if ordinal >= count {
                return Err(CudaError::NoDevice(format!(
                    "device {ordinal} requested, {count} present"
                )));
            }
            let ctx = CudaContext::new(ordinal).map_err(CudaError::driver("cuCtx (context)"))?;
            // SAFETY: every buffer and launch of this crate uses the one stream created below
            // (cuBLAS is bound to it too), so no cross-stream synchronisation is needed; this
            // runs before any buffer is allocated.
            unsafe { ctx.disable_event_tracking() };
            let stream = ctx
                .new_stream()
                .map_err(CudaError::driver("cuStreamCreate"))?;
            let blas = CudaBlas::new(stream.clone()).map_err(CudaError::blas("cublasCreate"))?;
            let compute_capability = ctx
                .compute_capability()
                .map_err(CudaError::driver("compute capability"))?;
            let name = ctx.name().map_err(CudaError::driver("device name"))?;
            let arch = match compute_capability {
                (m, _) if m >= 9 => Some("compute_90"),
                (8, _) => Some("compute_80"),
                _ => None,
            };
            Ok(Gpu {
                ctx,
                stream,
                blas,
                arch,
                name,
                compute_capability,
                modules: Mutex::new(HashMap::new()),
                functions: Mutex::new(HashMap::new()),
                bf16_scratch: Mutex::new(None),
                sum_scratch: Mutex::new(None),
                conv_impl: AtomicU8::new(default_conv_impl()? as u8),
                cudnn: Mutex::new(None),
                algo_timed: AtomicBool::new(default_algo_search()? == AlgoSearch::Timed),
                space_to_depth: AtomicBool::new(default_space_to_depth()?),
                conv_layout: AtomicU8::new(default_conv_layout()? as u8),
                lrn_columns: AtomicBool::new(default_lrn_columns()?),
                wino_tile: AtomicU8::new(default_wino_tile()?.unwrap_or(0) as u8),
                graphs: AtomicBool::new(default_graphs()?),
                generation: AtomicU64::new(0),
                grow_refused: AtomicBool::new(false),
                conv_picks: Mutex::new(HashMap::new()),
            })
        })
    }

    /// How convolutions run.
    pub fn conv_impl(&self) -> ConvImpl {
        ConvImpl::from_code(self.conv_impl.load(Ordering::Relaxed))
    }

    /// Switches the convolution implementation (cuDNN needs libcudnn).
    pub fn set_conv_impl(&self, c: ConvImpl) -> Result<(), CudaError> {
        if c.uses_cudnn() && !cudnn_available() {
            return Err(CudaError::NoDevice(
                "libcudnn could not be loaded (install cuDNN 9 or use ALEXNET_CONV=im2col)".into(),
            ));
        }
        self.conv_impl.store(c as u8, Ordering::Relaxed);
        self.conv_setting_changed();
        Ok(())
    }

    /// How cuDNN algorithms are chosen for plans built from now on.
    pub fn algo_search(&self) -> AlgoSearch {
        if self.algo_timed.load(Ordering::Relaxed) {
            AlgoSearch::Timed
        } else {
            AlgoSearch::Heuristic
        }
    }

    /// Switches how cuDNN algorithms are chosen (plans are cached per choice).
    pub fn set_algo_search(&self, a: AlgoSearch) {
        self.algo_timed
            .store(a == AlgoSearch::Timed, Ordering::Relaxed);
        self.conv_setting_changed();
    }

    /// Whether strided cuDNN convolutions run in space-to-depth form where it pays
    /// (`ops::space_to_depth::s2d_shape`; default on, [`S2D_ENV`]`=off` turns it off).
    pub fn space_to_depth(&self) -> bool {
        self.space_to_depth.load(Ordering::Relaxed)
    }

    /// Turns the space-to-depth form on or off (plans are cached per shape, so both coexist).
    pub fn set_space_to_depth(&self, on: bool) {
        self.space_to_depth.store(on, Ordering::Relaxed);
        self.conv_setting_changed();
    }

    /// Whether the network's LRN runs on the column kernels (default; [`LRN_ENV`]`=elements`
    /// turns them off). Windows wider than 5 always use the per-element kernels.
    pub fn lrn_columns(&self) -> bool {
        self.lrn_columns.load(Ordering::Relaxed)
    }

    /// Switches the LRN kernels (see [`Gpu::lrn_columns`]).
    pub fn set_lrn_columns(&self, on: bool) {
        self.lrn_columns.store(on, Ordering::Relaxed);
        self.bump_generation();
    }

    /// Whether the training step runs as a captured CUDA graph ([`GRAPH_ENV`]; default off).
    pub fn graphs(&self) -> bool {
        self.graphs.load(Ordering::Relaxed)
    }

    /// Turns CUDA graphs for the training step on or off (see [`Gpu::graphs`]).
    pub fn set_graphs(&self, on: bool) {
        self.graphs.store(on, Ordering::Relaxed);
        self.bump_generation();
    }

    /// Changes whenever a setting that decides which kernels a pass launches changes, or a
    /// scratch buffer is reallocated (`Gpu::grow`): a CUDA graph captured in an earlier
    /// generation may launch other kernels or hold freed addresses, and must not be replayed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    fn bump_generation(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// A setting that decides how convolutions run changed: a new generation, and
    /// [`ConvImpl::Timed`]'s picks (made under the old settings) are forgotten.
    fn conv_setting_changed(&self) {
        self.bump_generation();
        self.lock_conv_picks().clear();
    }

    fn lock_conv_picks(&self) -> std::sync::MutexGuard<'_, HashMap<PickKey, Picked>> {
        self.conv_picks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`ConvImpl::Timed`]'s pick for `key` (an implementation name), if made or pinned.
    pub(crate) fn conv_pick(&self, key: &PickKey) -> Option<&'static str> {
        self.lock_conv_picks().get(key).map(|p| p.conv)
    }

    /// Whether the pick for `key` was pinned from a run folder rather than timed here.
    pub(crate) fn conv_pick_pinned(&self, key: &PickKey) -> bool {
        self.lock_conv_picks().get(key).is_some_and(|p| p.pinned)
    }

    /// Records [`ConvImpl::Timed`]'s pick for `key` (a new generation: a graph captured before
    /// may have run another implementation).
    pub(crate) fn set_conv_pick(&self, key: PickKey, pick: Picked) {
        self.lock_conv_picks().insert(key, pick);
        self.bump_generation();
    }

    /// Every pick of [`ConvImpl::Timed`] so far.
    pub(crate) fn conv_picks_snapshot(&self) -> Vec<(PickKey, Picked)> {
        self.lock_conv_picks()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    /// Whether the stream is capturing a CUDA graph (a failed query counts as not).
    pub(crate) fn capturing(&self) -> bool {
        use cudarc::driver::sys::CUstreamCaptureStatus as S;
        matches!(
            self.stream.capture_status(),
            Ok(S::CU_STREAM_CAPTURE_STATUS_ACTIVE | S::CU_STREAM_CAPTURE_STATUS_INVALIDATED)
        )
    }

    /// The error for work a CUDA graph capture cannot hold (`what`: a reallocation, a timing
    /// run), after which [`Gpu::take_grow_refused`] says so: the caller then runs the pass
    /// directly, where that work can happen.
    pub(crate) fn refuse_in_capture(&self, what: &str) -> CudaError {
        self.grow_refused.store(true, Ordering::Relaxed);
        CudaError::invalid("CUDA graph capture", format!("{what} while capturing"))
    }

    /// Whether [`Gpu::grow`] (or another [`Gpu::refuse_in_capture`]) refused work while
    /// capturing since the last call (and clears the flag): the capture then failed for work
    /// that a direct pass can do.
    pub(crate) fn take_grow_refused(&self) -> bool {
        self.grow_refused.swap(false, Ordering::Relaxed)
    }

    /// The Winograd output tile side forced for every layer ([`WINO_TILE_ENV`]), or `None`
    /// for the default choice per precision and kernel (`ops::winograd::tile_m`).
    pub fn winograd_tile(&self) -> Option<usize> {
        match self.wino_tile.load(Ordering::Relaxed) {
            0 => None,
            m => Some(m as usize),
        }
    }

    /// Forces the Winograd tile side (2 or 4) or restores the default (`None`).
    pub fn set_winograd_tile(&self, m: Option<usize>) -> Result<(), CudaError> {
        let code = match m {
            None => 0,
            Some(m @ (2 | 4)) => m as u8,
            Some(m) => {
                return Err(CudaError::invalid(
                    "winograd tile",
                    format!("{m}: expected 2 or 4"),
                ))
            }
        };
        self.wino_tile.store(code, Ordering::Relaxed);
        self.conv_setting_changed();
        Ok(())
    }

    /// The layout of cuDNN convolutions ([`ConvLayout`]; [`LAYOUT_ENV`] sets the default).
    pub fn conv_layout(&self) -> ConvLayout {
        match self.conv_layout.load(Ordering::Relaxed) {
            0 => ConvLayout::Auto,
            1 => ConvLayout::Nchw,
            _ => ConvLayout::Nhwc,
        }
    }

    /// Switches the layout of cuDNN convolutions (plans are cached per layout).
    pub fn set_conv_layout(&self, l: ConvLayout) {
        self.conv_layout.store(l as u8, Ordering::Relaxed);
        self.conv_setting_changed();
    }

    /// Whether cuDNN convolutions at precision `p` run in NHWC.
    pub fn conv_nhwc_for(&self, p: Precision) -> bool {
        self.conv_layout().nhwc_for(p)
    }

    /// Runs `f` on the cuDNN state (created on first use) with its mutex held.
    pub(crate) fn with_cudnn<R>(
        &self,
        f: impl FnOnce(&mut crate::ops::conv_cudnn::CudnnState) -> Result<R, CudaError>,
    ) -> Result<R, CudaError> {
        let mut g = self.cudnn.lock().unwrap_or_else(|p| p.into_inner());
        let st = match &mut *g {
            Some(st) => st,
            empty => empty.insert(crate::ops::conv_cudnn::CudnnState::new(self)?),
        };
        f(st)
    }

    /// `f` on the cuDNN state if cuDNN has been used on this device (`None` otherwise; never
    /// loads cuDNN).
    pub(crate) fn with_cudnn_if_created<R>(
        &self,
        f: impl FnOnce(&crate::ops::conv_cudnn::CudnnState) -> R,
    ) -> Option<R> {
        let g = self.cudnn.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref().map(f)
    }

    /// The scratch buffer in `slot`, grown to at least `n` elements first (contents not kept;
    /// the old buffer is freed before the larger one is allocated). `what` names it in errors.
    pub(crate) fn grow<'a, T: DeviceRepr + ValidAsZeroBits>(
        &self,
        slot: &'a mut Option<CudaSlice<T>>,
        n: usize,
        what: &str,
    ) -> Result<&'a mut CudaSlice<T>, CudaError> {
        if slot.as_ref().is_some_and(|b| b.len() >= n) {
            // Invariant: `slot` was just checked to hold a buffer.
            return Ok(slot.as_mut().expect("checked to be Some above"));
        }
        if self.capturing() {
            // Freeing and allocating inside a capture would put the new buffer in the graph's
            // own memory (unusable outside it); the caller runs the pass directly instead.
            return Err(self.refuse_in_capture(&format!("{what} would grow to {n} elements")));
        }
        *slot = None;
        self.bump_generation();
        let fresh = self
            .stream
            .alloc_zeros::<T>(n.max(1))
            .map_err(CudaError::driver(format!("alloc {n} elements for {what}")))?;
        Ok(slot.insert(fresh))
    }

    /// The device name (e.g. "NVIDIA H100 80GB HBM3").
    pub fn name(&self) -> &str {
        &self.name
    }

    /// (major, minor) compute capability.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }

    /// The stream all work runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream
            .synchronize()
            .map_err(CudaError::driver("synchronize"))
    }

    /// The kernel `name` of `file` (compiled and loaded on first use).
    pub(crate) fn function(
        &self,
        file: KernelFile,
        name: &'static str,
    ) -> Result<CudaFunction, CudaError> {
        let mut funcs = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = funcs.get(name) {
            return Ok(f.clone());
        }
        let module = {
            let mut mods = self.modules.lock().unwrap_or_else(|p| p.into_inner());
            match mods.get(&file) {
                Some(m) => m.clone(),
                None => {
                    let ptx = cached_ptx(file, self.arch)?;
                    let m = self
                        .ctx
                        .load_module(ptx)
                        .map_err(CudaError::driver(format!("load {}", file.file_name())))?;
                    mods.insert(file, m.clone());
                    m
                }
            }
        };
        let f = module
            .load_function(name)
            .map_err(CudaError::driver(format!(
                "{}: kernel {name}",
                file.file_name()
            )))?;
        funcs.insert(name, f.clone());
        Ok(f)
    }

    /// Allocates `n` zeroed f32.
    pub fn zeros(&self, n: usize) -> Result<CudaSlice<f32>, CudaError> {
        self.stream
            .alloc_zeros::<f32>(n.max(1))
            .map_err(CudaError::driver(format!("alloc {n} f32")))
    }

    /// Copies host data to a new device buffer.
    pub fn upload<T: cudarc::driver::DeviceRepr>(
        &self,
        v: &[T],
    ) -> Result<CudaSlice<T>, CudaError> {
        if v.is_empty() {
            return Err(CudaError::invalid("upload", "empty buffer"));
        }
        self.stream
            .clone_htod(v)
            .map_err(CudaError::driver("copy host to device"))
    }

    /// Copies a device buffer (or view) to the host.
    pub fn download<T, S>(&self, s: &S) -> Result<Vec<T>, CudaError>
    where
        T: cudarc::driver::DeviceRepr + Clone + Default,
        S: cudarc::driver::DevicePtr<T>,
    {
        self.stream
            .clone_dtoh(s)
            .map_err(CudaError::driver("copy device to host"))
    }
}

#[cfg(test)]
mod tests {
    use super::{env_switch, graphs_switch, parse_wino_tile, WINO_TILE_ENV};

    #[test]
    fn winograd_tile_values() {
        assert_eq!(parse_wino_tile("auto").unwrap(), None);
        assert_eq!(parse_wino_tile("").unwrap(), None);
        assert_eq!(parse_wino_tile("2").unwrap(), Some(2));
        assert_eq!(parse_wino_tile("4").unwrap(), Some(4));
        let e = parse_wino_tile("6").unwrap_err().to_string();
        assert!(
            e.contains(WINO_TILE_ENV) && e.contains("expected auto, 2 or 4"),
            "{e}"
        );
    }

    #[test]
    fn env_switch_takes_two_words_and_refuses_others() {
        // A variable of this test only (the process's environment is shared by the tests).
        const VAR: &str = "ALEXNET_TEST_ENV_SWITCH";
        std::env::remove_var(VAR);
        assert!(env_switch(VAR, "columns", "elements").unwrap());
        std::env::set_var(VAR, "elements");
        assert!(!env_switch(VAR, "columns", "elements").unwrap());
        std::env::set_var(VAR, "columns");
        assert!(env_switch(VAR, "columns", "elements").unwrap());
        std::env::set_var(VAR, "column");
        let e = env_switch(VAR, "columns", "elements")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(VAR) && e.contains("expected columns or elements"),
            "{e}"
        );
        std::env::remove_var(VAR);
    }

    #[test]
    fn cuda_graphs_default_off() {
        const VAR: &str = "ALEXNET_TEST_GRAPH_SWITCH";
        std::env::remove_var(VAR);
        assert!(!graphs_switch(VAR).unwrap());
        std::env::set_var(VAR, "on");
        assert!(graphs_switch(VAR).unwrap());
        std::env::set_var(VAR, "off");
        assert!(!graphs_switch(VAR).unwrap());
        std::env::set_var(VAR, "yes");
        let e = graphs_switch(VAR).unwrap_err().to_string();
        assert!(e.contains(VAR) && e.contains("expected off or on"), "{e}");
        std::env::remove_var(VAR);
    }
}
