//! The `alexnet` command-line tool. Users reach it through `cargo xtask <command>`, which runs
//! this binary in release mode.

use alexnet::{bench, parity};
use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "cargo xtask", version, about = "AlexNet reproduced in Rust")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every parity fixture in DIR against the CPU layers; ends with "N passed, M failed".
    Parity(ParityArgs),
    /// Time training and inference throughput.
    Bench(BenchArgs),
    /// NVRTC-compile every CUDA kernel (needs libnvrtc, not a GPU) and print each kernel's
    /// registers and stack frame on sm_90 (fails when one has a frame).
    CheckKernels,
    /// On a GPU machine: CUDA parity (fixtures, whole model vs CPU), the benchmark table, then
    /// the Winograd and CUDA-graph sections (each in a child process).
    GpuCheck(GpuCheckArgs),
    /// Train a model or an ensemble (default: small preset on the synthetic shards).
    Train(alexnet_train::cli::TrainArgs),
    /// Decode a dataset into memory-mapped shards (default: draw and ingest the synthetic set).
    PrepareData(alexnet_data::cli::PrepareArgs),
    /// Ingestion (decode + resize + crop) and loader throughput.
    BenchData(alexnet_data::cli::BenchDataArgs),
    /// Evaluate a run (center crop, 10 patches, ensembles) and write report.md/json + pictures.
    Report(alexnet_eval::ReportArgs),
    /// Top-5 classes of images from a trained run's ensemble.
    Predict(alexnet_eval::PredictArgs),
    /// The whole main job on the embedded default: prepare-data, train, report (each skipped
    /// when its output is already there and current).
    All(alexnet::flow::AllArgs),
}

#[derive(Args)]
struct ParityArgs {
    /// Folder of *.safetensors fixtures [default: tests/fixtures/parity].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// CPU GEMM precision: f32 (default) or bf16x3 (AMX: every GEMM then runs on the tiles,
    /// held to the same tolerance).
    #[arg(long, default_value = "f32")]
    precision: String,
}

fn default_fixture_dir() -> PathBuf {
    let here = PathBuf::from("tests/fixtures/parity");
    if here.is_dir() {
        return here;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity")
}

#[derive(Args)]
struct GpuCheckArgs {
    /// Folder of *.safetensors fixtures [default: tests/fixtures/parity].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The part to run: all (main here, winograd and graphs each in a child process), or one
    /// part alone.
    #[arg(long, value_enum, default_value = "all")]
    section: alexnet::gpu_check::Section,
    /// Seconds already spent by a parent gpu-check (its time budgets count from its start).
    #[arg(long, default_value_t = 0.0, hide = true)]
    elapsed: f64,
}

#[derive(Args)]
struct BenchArgs {
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Preset name (small, paper, paper-6conv) or TOML file.
    #[arg(long, default_value = "small")]
    preset: String,
    /// Batch size.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Number of classes of the final layer.
    #[arg(long, default_value_t = 1000)]
    classes: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 7)]
    steps: usize,
    /// f32 (strict), tf32 or bf16 on CUDA; f32, bf16x3 or bf16 on the CPU (bf16x3/bf16: the
    /// convolution and fc GEMMs on Intel AMX tiles, ~1e-5 / ~3e-3 relative error per product).
    #[arg(long, default_value = "f32")]
    precision: String,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Also print the time per layer (forward and backward) of a training step.
    #[arg(long)]
    profile: bool,
    /// CUDA: convolution implementation, auto, cudnn, im2col, winograd or timed (default auto:
    /// cuDNN for TF32 (NCHW) and bf16 (NHWC copies), im2col + cuBLAS for f32; winograd: im2col,
    /// with the 3x3 and 5x5 stride-1 layers (and conv1 in space-to-depth form) by Winograd;
    /// timed: each layer's forward and backward on whichever of the three was timed fastest on
    /// first use; ALEXNET_CONV overrides;
    /// ALEXNET_CONV_LAYOUT=auto|nchw|nhwc picks cuDNN's layout, ALEXNET_CONV_S2D=off keeps
    /// cuDNN's conv1 direct, ALEXNET_LRN=elements runs the per-element LRN kernels)
    #[arg(long)]
    conv: Option<String>,
    /// CUDA: how cuDNN picks algorithms, heuristic (default; resume stays bit-identical) or
    /// timed (cudnnFind, like PyTorch's cudnn.benchmark; ALEXNET_CUDNN_ALGO sets it for train)
    #[arg(long)]
    cudnn_algo: Option<String>,
    /// CUDA: run the training step's forward, loss and backward as a captured CUDA graph (on)
    /// or launch by launch (off); default: ALEXNET_CUDA_GRAPH, else off.
    #[arg(long, value_parser = ["on", "off"])]
    cuda_graph: Option<String>,
    /// CUDA: leave the loader out: compute only, on one random batch uploaded once (how
    /// PyTorch's synthetic-input benchmarks measure).
    #[arg(long)]
    synthetic_data: bool,
    /// CPU: use matrixmultiply instead of the gemm crate for f32 GEMMs (for comparison).
    #[arg(long)]
    matrixmultiply: bool,
    /// CPU: 3x3 and 5x5 stride-1 convolutions (conv2-5) by winograd (the default: F(4x4) tiles
    /// where they pay, F(2x2) elsewhere), winograd2 (F(2x2) tiles only) or im2col (+ GEMM, as
    /// conv1; for comparison).
    #[arg(long, default_value = "winograd")]
    cpu_conv: String,
}

fn run_parity(args: &ParityArgs) -> Result<bool> {
    let dir = args.dir.clone().unwrap_or_else(default_fixture_dir);
    let files = parity::fixture_files(&dir)?;
    parity::set_precision(&args.precision)?;
    let (mut passed, mut failed) = (0, 0);
    for f in &files {
        let r = parity::run_file(f);
        println!("{}", r.line());
        if r.passed() {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}

fn run_bench(a: &BenchArgs) -> Result<()> {
    use alexnet_tensor::gemm::{cpu_backend_for, set_f32_backend, F32Backend};
    let cuda_only = a.conv.is_some() || a.cudnn_algo.is_some() || a.cuda_graph.is_some();
    if a.device == "cpu" && (cuda_only || a.synthetic_data) {
        anyhow::bail!(
            "--conv, --cudnn-algo, --cuda-graph and --synthetic-data apply to --device cuda only"
        );
    }
    bench::set_cpu_conv(&a.cpu_conv, &a.device)?;
    if a.device == "cpu" {
        let gemm = cpu_backend_for(&a.precision)?;
        if a.matrixmultiply && gemm != F32Backend::Gemm {
            anyhow::bail!("--matrixmultiply is an f32 GEMM; it takes no --precision");
        }
        set_f32_backend(if a.matrixmultiply {
            F32Backend::Matrixmultiply
        } else {
            gemm
        })?;
    }
    let r = match a.device.as_str() {
        "cpu" => bench::bench_cpu(&a.preset, a.batch, a.classes, a.warmup, a.steps, a.profile)?,
        "cuda" => alexnet::gpu_check::bench_cuda(&alexnet::gpu_check::CudaBench {
            preset: &a.preset,
            batch: a.batch,
            classes: a.classes,
            precision: &a.precision,
            synthetic_data: a.synthetic_data,
            warmup: a.warmup,
            steps: a.steps,
            profile: a.profile,
            conv: a
                .conv
                .as_deref()
                .map(alexnet_cuda::ConvImpl::parse)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--conv: {e}"))?,
            algo: a
                .cudnn_algo
                .as_deref()
                .map(alexnet_cuda::AlgoSearch::parse)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--{e}"))?,
            graphs: a.cuda_graph.as_deref().map(|v| v == "on"),
        })?,
        other => anyhow::bail!("--device {other}: expected cpu or cuda"),
    };
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "bench: preset {} batch {} device {} ({} threads, {}): train {:.1} img/s, inference {:.1} img/s (median of {} steps)",
            r.preset, r.batch, r.device, r.threads, r.precision, r.train_img_per_s, r.infer_img_per_s, r.timed_steps
        );
        if let Some(layers) = &r.layers {
            println!(
                "{:<14} {:>10} {:>10}   (ms per training step)",
                "layer", "forward", "backward"
            );
            let (mut tf, mut tb) = (0.0, 0.0);
            // A layer never timed on its own (exactly 0) ran inside a neighbour: a ReLU's
            // forward in the convolution before it, its backward in the layer after it.
            let ms = |v: f64| {
                if v == 0.0 {
                    "-".to_string()
                } else {
                    format!("{v:.2}")
                }
            };
            for (n, f, b) in layers {
                println!("{n:<14} {:>10} {:>10}", ms(*f), ms(*b));
                tf += f;
                tb += b;
            }
            println!("{:<14} {tf:>10.2} {tb:>10.2}", "total");
            if layers.iter().any(|(_, f, b)| *f == 0.0 || *b == 0.0) {
                println!("(-: fused into a neighbouring layer and timed there)");
            }
        }
        if let Some(picks) = &r.conv_picks {
            println!("convolutions timed fastest (n CxHxW -> O, KxK/stride call: pick (each ms)):");
            for line in bench::pick_lines(picks) {
                println!("  {line}");
            }
        }
    }
    Ok(())
}

fn run_check_kernels() -> Result<bool> {
    if !alexnet_cuda::nvrtc_available() {
        anyhow::bail!(
            "libnvrtc not found: install it (e.g. `pip install nvidia-cuda-nvrtc==13.0.88`) and put \
             its lib folder on LD_LIBRARY_PATH (see crates/cuda/README.md)"
        );
    }
    let n = alexnet_cuda::check_kernels()?;
    println!("{n} kernels compiled");
    // What the GPU compiler makes of them (SASS for the H100/H200, no GPU needed).
    let res = alexnet_cuda::cubin::all_kernel_resources()?;
    println!(
        "registers per thread and stack frame (bytes of local memory) on {}:",
        alexnet_cuda::cubin::RESOURCE_ARCH
    );
    for (file, r) in &res {
        println!(
            "  {:<14} {:<26} {:>4} {:>6}",
            file.file_name(),
            r.name,
            r.registers,
            r.frame
        );
    }
    let spilling: Vec<&str> = res
        .iter()
        .filter(|(_, r)| r.frame > 0)
        .map(|(_, r)| r.name.as_str())
        .collect();
    if !spilling.is_empty() {
        anyhow::bail!("kernels with a stack frame (local memory): {spilling:?}");
    }
    Ok(true)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = alexnet_tensor::simd::check_env() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let res = match &cli.cmd {
        Cmd::Parity(a) => run_parity(a),
        Cmd::Bench(a) => run_bench(a).map(|_| true),
        Cmd::CheckKernels => run_check_kernels(),
        Cmd::GpuCheck(a) => {
            let dir = a.dir.clone().unwrap_or_else(default_fixture_dir);
            alexnet::gpu_check::gpu_check(&dir, a.section, a.elapsed)
        }
        Cmd::Train(a) => alexnet_train::cli::run_train(a).map(|_| true),
        Cmd::PrepareData(a) => alexnet_data::cli::run_prepare(a).map(|_| true),
        Cmd::BenchData(a) => alexnet_data::cli::run_bench_data(a).map(|_| true),
        Cmd::Report(a) => alexnet_eval::report(a).map(|_| true),
        Cmd::Predict(a) => alexnet_eval::predict(a).map(|_| true),
        Cmd::All(a) => alexnet::flow::run_all(a).map(|_| true),
    };
    match res {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
