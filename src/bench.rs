//! `cargo xtask bench`: training (forward + backward + SGD) and inference img/s on random data.

use crate::presets::load_preset;
use alexnet_cuda::ops::conv_route::ConvPick;
use alexnet_layers::{Mode, Model};
use alexnet_tensor::rng::Rng;
use anyhow::{bail, Result};
use std::time::Instant;

/// What `bench` measured.
#[derive(Debug, serde::Serialize)]
pub struct BenchResult {
    pub train_img_per_s: f64,
    pub infer_img_per_s: f64,
    pub preset: String,
    pub batch: usize,
    pub device: String,
    pub threads: usize,
    pub precision: String,
    pub timed_steps: usize,
    /// Per-layer (name, forward ms, backward ms) per training step, when profiled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<(String, f64, f64)>>,
    /// With `--conv timed` on CUDA: the implementation each convolution call picked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conv_picks: Option<Vec<ConvPick>>,
}

/// `picks` for people: one line per convolution call, its pick and, where timed, each
/// candidate's milliseconds.
pub fn pick_lines(picks: &[ConvPick]) -> Vec<String> {
    picks
        .iter()
        .map(|p| {
            let [n, c, h, w, o, k, stride, ..] = p.shape;
            let times: Vec<String> = p
                .times_ms
                .iter()
                .map(|(name, t)| format!("{name} {t:.3}"))
                .collect();
            let times = match times.is_empty() {
                true => String::new(),
                false => format!(" ({} ms)", times.join(", ")),
            };
            let failed: String = p
                .failed
                .iter()
                .map(|(name, e)| format!("; {name} failed: {e}"))
                .collect();
            format!(
                "{} n{n} {c}x{h}x{w} -> {o}, {k}x{k}/{stride} {}: {}{times}{failed}",
                p.precision, p.call, p.conv
            )
        })
        .collect()
}

/// The median of `v` (the upper one for an even length); `v` is not empty.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `--cpu-conv`: the CPU's 3x3 and 5x5 stride-1 convolutions by `winograd` (the default:
/// F(4x4) tiles where they pay, F(2x2) elsewhere), `winograd2` (F(2x2) tiles everywhere) or
/// `im2col` (process-wide); anything else, or a non-default value with another device, is a
/// one-line error.
pub fn set_cpu_conv(algo: &str, device: &str) -> Result<()> {
    use alexnet_layers::winograd::{set_enabled, set_large_tiles};
    match (algo, device) {
        ("winograd", _) => {
            set_enabled(true);
            set_large_tiles(true);
        }
        ("winograd2", "cpu") => {
            set_enabled(true);
            set_large_tiles(false);
        }
        ("im2col", "cpu") => set_enabled(false),
        ("im2col" | "winograd2", _) => bail!("--cpu-conv {algo} applies to --device cpu only"),
        (other, _) => bail!("--cpu-conv {other}: expected winograd, winograd2 or im2col"),
    }
    Ok(())
}

/// CPU benchmark: `warmup` untimed steps, then the median of `steps` timed steps.
pub fn bench_cpu(
    preset: &str,
    batch: usize,
    classes: usize,
    warmup: usize,
    steps: usize,
    profile: bool,
) -> Result<BenchResult> {
    if batch == 0 || steps == 0 {
        bail!("--batch and --steps must be at least 1");
    }
    let spec = load_preset(preset)?;
    let plan = spec.plan(classes)?;
    let mut model: Model<f32> = Model::new(plan.clone());
    model.init(1);
    let [c, h, w] = plan.input;
    let mut rng = Rng::new(7);
    let x: Vec<f32> = (0..batch * c * h * w)
        .map(|_| rng.normal() * 50.0)
        .collect();
    let labels: Vec<u32> = (0..batch)
        .map(|_| rng.below(classes as u64) as u32)
        .collect();
    let mut train = Vec::new();
    for step in 0..warmup + steps {
        let t = Instant::now();
        model.forward(&x, batch, Mode::Train { seed: step as u64 })?;
        model.loss_backward(&labels)?;
        // A tiny lr keeps the weights (and so the work) essentially fixed.
        model.sgd(1e-6, 0.9, 5e-4)?;
        if step >= warmup {
            train.push(t.elapsed().as_secs_f64());
        }
        if profile && step + 1 == warmup {
            model.enable_profile();
        }
    }
    let layers = model.profile().map(|p| {
        let k = 1e3 / steps as f64;
        p.into_iter().map(|(n, f, b)| (n, f * k, b * k)).collect()
    });
    let mut infer = Vec::new();
    for step in 0..warmup + steps {
        let t = Instant::now();
        model.forward(&x, batch, Mode::Infer)?;
        if step >= warmup {
            infer.push(t.elapsed().as_secs_f64());
        }
    }
    Ok(BenchResult {
        train_img_per_s: batch as f64 / median(train),
        infer_img_per_s: batch as f64 / median(infer),
        preset: spec.name,
        batch,
        device: "cpu".into(),
        threads: rayon::current_num_threads(),
        precision: alexnet_tensor::gemm::f32_backend().precision().into(),
        timed_steps: steps,
        layers,
        conv_picks: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timed_picks_print_one_line_per_call() {
        let pick = |c: usize, call: &str, conv: &str, times_ms: Vec<(String, f64)>| ConvPick {
            shape: [128, c, 13, 13, 384, 3, 1, 1, 1],
            precision: "tf32".into(),
            call: call.into(),
            conv: conv.into(),
            times_ms,
            failed: Vec::new(),
        };
        let times = vec![("cudnn".into(), 0.2104), ("winograd".into(), 0.1789)];
        let mut failing = pick(384, "backward", "cudnn", Vec::new());
        failing.failed = vec![("im2col".into(), "out of memory".into())];
        let lines = pick_lines(&[pick(256, "forward", "winograd", times), failing]);
        assert_eq!(
            lines,
            [
                "tf32 n128 256x13x13 -> 384, 3x3/1 forward: winograd (cudnn 0.210, winograd 0.179 ms)",
                "tf32 n128 384x13x13 -> 384, 3x3/1 backward: cudnn; im2col failed: out of memory",
            ]
        );
        assert!(pick_lines(&[]).is_empty());
    }

    #[test]
    fn cpu_conv_flag_takes_three_values() {
        use alexnet_layers::winograd::{enabled, large_tiles};
        let e = set_cpu_conv("fft", "cpu").unwrap_err().to_string();
        assert!(
            e.contains("--cpu-conv fft") && e.contains("winograd, winograd2 or im2col"),
            "{e}"
        );
        for algo in ["im2col", "winograd2"] {
            let e = set_cpu_conv(algo, "cuda").unwrap_err().to_string();
            assert!(e.contains(algo) && e.contains("--device cpu only"), "{e}");
        }
        set_cpu_conv("winograd2", "cpu").unwrap();
        assert!(enabled() && !large_tiles());
        set_cpu_conv("im2col", "cpu").unwrap();
        assert!(!enabled());
        set_cpu_conv("winograd", "cpu").unwrap();
        assert!(enabled() && large_tiles());
    }
}
