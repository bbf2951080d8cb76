//! The Winograd section of `gpu-check` (`--conv winograd`, `ops::winograd`), run after
//! everything else so that a fault in these newer kernels cannot cost the established checks
//! and the benchmark table their results: the f32 fixtures and the TF32 conv fixtures with
//! Winograd convolutions, the whole model against the CPU (f32, TF32, bf16), then training
//! img/s per precision, f32, TF32 and bf16 steps by stage beside im2col or the default, and
//! the other tile side forced. `--conv timed` (each convolution call on whichever of cuDNN,
//! Winograd and im2col it timed fastest, `ops::conv_route`) is checked here too: the whole
//! model in f32 against the CPU, then its img/s per precision with the picks it made. Ends its
//! checks with its own `winograd: N passed, M failed` line; the timings after it are skipped
//! once gpu-check is past [`TIMING_BUDGET_S`].

use super::bench::{bench_on, CudaBench};
use super::model::{model_checks, CpuReference};
use super::{fixture_case, fixture_pass, precision_name, ModelCase, Tally, FLOP_PER_TRAINED_IMAGE};
use crate::bench::pick_lines;
use alexnet_cuda::ops::conv_route::conv_picks;
use alexnet_cuda::{ConvImpl, Gpu, Precision};
use anyhow::Result;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Seconds into `gpu-check` after which the section's timings are skipped (its checks always
/// run): the command is meant to finish within 5 minutes of a lent GPU's time, and a slow new
/// kernel must not eat the rest of it.
pub(super) const TIMING_BUDGET_S: f64 = 270.0;

/// The section; false when a check failed or a row could not run. `references` are the whole
/// model cases with their CPU results (computed once by the main checks); `started` is when
/// `gpu-check` began (see [`TIMING_BUDGET_S`]).
pub(super) fn winograd_section(
    gpu: &Arc<Gpu>,
    files: &[PathBuf],
    references: &[(&ModelCase, CpuReference)],
    started: Instant,
) -> Result<bool> {
    let default_impl = gpu.conv_impl();
    let mut tally = Tally::default();
    gpu.set_conv_impl(ConvImpl::Winograd)?;
    println!("-- winograd: CUDA parity with the fixtures (f32, convolutions: winograd)");
    for path in files {
        if let Some(r) = fixture_case(gpu, path, Precision::F32) {
            println!("{}", r.line());
            tally.record(r.passed());
        }
    }
    println!("-- winograd: conv2d fixtures in tf32 at relative L2 2e-2");
    let tag = "tf32 (winograd)";
    fixture_pass(gpu, files, &["conv2d"], Precision::Tf32, tag, &mut tally);
    for (case, reference) in references {
        println!(
            "-- winograd: whole model CUDA vs CPU: preset {}, batch {}, {} classes",
            case.preset, case.batch, case.classes
        );
        if let Err(e) = model_checks(gpu, case, reference, true, &mut tally) {
            println!("FAIL {} model comparison: {e:#}", case.preset);
            tally.record(false);
        }
    }
    gpu.set_conv_impl(ConvImpl::Timed)?;
    for (case, reference) in references {
        println!(
            "-- winograd: whole model CUDA vs CPU with timed convolutions (f32): preset {}",
            case.preset
        );
        if let Err(e) = model_checks(gpu, case, reference, false, &mut tally) {
            println!("FAIL {} model comparison (timed): {e:#}", case.preset);
            tally.record(false);
        }
        print_picks(gpu);
    }
    gpu.set_conv_impl(ConvImpl::Winograd)?;
    println!("winograd: {} passed, {} failed", tally.passed, tally.failed);
    // The timings, in order of use, each only while within the budget.
    let in_budget = |what: &str| {
        let t = started.elapsed().as_secs_f64();
        let ok = t < TIMING_BUDGET_S;
        if !ok {
            println!("skipped: winograd {what} (gpu-check at {t:.0} s, past {TIMING_BUDGET_S} s)");
        }
        ok
    };
    let mut ok = tally.failed == 0;
    // Timed first: its picks say per layer where Winograd wins, in every precision.
    if in_budget("timed rows") {
        ok &= timed_rows(gpu)?;
    }
    if in_budget("throughput rows") {
        ok &= throughput_rows(gpu)?;
    }
    gpu.set_conv_impl(default_impl)?;
    if in_budget("f32 profile") {
        ok &= conv_profile(gpu, Precision::F32, [ConvImpl::Im2col, ConvImpl::Winograd])?;
    }
    if in_budget("tf32 profile") {
        ok &= conv_profile(gpu, Precision::Tf32, [default_impl, ConvImpl::Winograd])?;
    }
    // bf16 has no step-by-stage figure yet (its default is cuDNN on NHWC copies).
    if in_budget("bf16 profile") {
        ok &= conv_profile(gpu, Precision::Bf16, [default_impl, ConvImpl::Winograd])?;
    }
    if in_budget("tile rows") {
        ok &= wino_tile_rows(gpu)?;
    }
    gpu.set_conv_impl(default_impl)?;
    Ok(ok)
}

/// Training (with the loader, and compute only) and inference img/s of `--conv winograd` per
/// precision, paper net, batch 128 (the benchmark table's columns).
fn throughput_rows(gpu: &Arc<Gpu>) -> Result<bool> {
    println!(
        "-- winograd: benchmark, paper net, batch 128 ({:<6} {:>12} {:>12} {:>12} {:>9})",
        "prec", "train img/s", "(synthetic)", "infer img/s", "TFLOP/s"
    );
    let mut ok = true;
    for p in [Precision::F32, Precision::Tf32, Precision::Bf16] {
        let mut o = CudaBench::paper(p, 128);
        o.synthetic_data = false;
        let with_loader = bench_on(gpu, &o, p);
        o.synthetic_data = true;
        match (with_loader, bench_on(gpu, &o, p)) {
            (Ok(r), Ok(sy)) => println!(
                "{:<6} winograd {:>12.0} {:>12.0} {:>12.0} {:>9.1}",
                precision_name(p),
                r.train_img_per_s,
                sy.train_img_per_s,
                r.infer_img_per_s,
                r.train_img_per_s * FLOP_PER_TRAINED_IMAGE / 1e12
            ),
            (Err(e), _) | (_, Err(e)) => {
                ok = false;
                println!("{:<6} winograd error: {e:#}", precision_name(p));
            }
        }
    }
    Ok(ok)
}

/// Training img/s (compute only) of `--conv timed` per precision (paper net, batch 128) with
/// the implementation each convolution call picked. False when a row could not run.
fn timed_rows(gpu: &Arc<Gpu>) -> Result<bool> {
    println!("-- timed convolutions (compute only, img/s), each call's pick below its row");
    let mut ok = true;
    for p in [Precision::F32, Precision::Tf32, Precision::Bf16] {
        // A fresh setting forgets the previous precision's picks.
        gpu.set_conv_impl(ConvImpl::Timed)?;
        match bench_on(gpu, &CudaBench::paper(p, 128), p) {
            Ok(r) => {
                println!("{:<6} timed {:>10.0}", precision_name(p), r.train_img_per_s);
                print_picks(gpu);
            }
            Err(e) => {
                ok = false;
                println!("{:<6} timed error: {e:#}", precision_name(p));
            }
        }
    }
    gpu.set_conv_impl(ConvImpl::Winograd)?;
    Ok(ok)
}

/// `--conv timed`'s picks on `gpu` so far, one line per convolution.
fn print_picks(gpu: &Gpu) {
    for line in pick_lines(&conv_picks(gpu)) {
        println!("   {line}");
    }
}

/// Where a training step at precision `p` goes (paper net, batch 128, compute only, every
/// stage synchronised, as `bench --profile`) with the two convolution implementations `impls`,
/// side by side in ms: the per-layer A/B of `--conv winograd`. False when a profile could not
/// run.
fn conv_profile(gpu: &Arc<Gpu>, p: Precision, impls: [ConvImpl; 2]) -> Result<bool> {
    let names = impls.map(|c| c.name());
    println!(
        "-- {} step by stage (ms, forward / backward): {} vs {}",
        precision_name(p),
        names[0],
        names[1]
    );
    let mut cols = Vec::new();
    for ci in impls {
        gpu.set_conv_impl(ci)?;
        let o = CudaBench {
            steps: 10,
            profile: true,
            ..CudaBench::paper(p, 128)
        };
        match bench_on(gpu, &o, p) {
            Ok(r) => cols.push((r.train_img_per_s, r.layers.unwrap_or_default())),
            Err(e) => {
                println!("error: {} profile: {e:#}", ci.name());
                return Ok(false);
            }
        }
    }
    let (a, b) = (&cols[0], &cols[1]);
    println!("{:<28} {:>17} {:>17}", "stage", names[0], names[1]);
    let (mut ta, mut tb) = (0.0, 0.0);
    for ((name, f0, b0), (_, f1, b1)) in a.1.iter().zip(&b.1) {
        println!("{name:<28} {f0:>8.3} {b0:>8.3} {f1:>8.3} {b1:>8.3}");
        ta += f0 + b0;
        tb += f1 + b1;
    }
    println!(
        "{:<28} {ta:>17.3} {tb:>17.3}  (unsynchronised: {:.0} vs {:.0} img/s)",
        "total", a.0, b.0
    );
    Ok(true)
}

/// Training img/s (compute only) of `--conv winograd` with the other tile side forced
/// (`ALEXNET_WINOGRAD_TILE`): f32 on F(2x2) tiles, TF32 on F(4x4) for conv2 too, against the
/// default choice. False when a row could not run.
fn wino_tile_rows(gpu: &Arc<Gpu>) -> Result<bool> {
    println!("-- winograd tile sides (compute only, img/s): default vs forced");
    gpu.set_conv_impl(ConvImpl::Winograd)?;
    let mut ok = true;
    for (p, forced) in [(Precision::F32, 2), (Precision::Tf32, 4)] {
        let o = CudaBench::paper(p, 128);
        gpu.set_winograd_tile(None)?;
        let default = bench_on(gpu, &o, p);
        gpu.set_winograd_tile(Some(forced))?;
        let other = bench_on(gpu, &o, p);
        gpu.set_winograd_tile(None)?;
        match (default, other) {
            (Ok(a), Ok(b)) => println!(
                "{:<6} default {:>8.0}   all F({forced}x{forced}) {:>8.0}",
                precision_name(p),
                a.train_img_per_s,
                b.train_img_per_s
            ),
            (Err(e), _) | (_, Err(e)) => {
                ok = false;
                println!("{:<6} error: {e:#}", precision_name(p));
            }
        }
    }
    Ok(ok)
}
