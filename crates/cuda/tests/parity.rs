//! Per-op parity of the CUDA kernels against every fixture in tests/fixtures/parity through
//! [`alexnet_cuda::parity::run_fixture`]: f32 at each fixture's tolerance, TF32 / bf16 at
//! [`Precision::tolerance`] (ops with GEMMs only); the conv and model fixtures once more with
//! Winograd convolutions. Skips with one line without a CUDA device.

use alexnet_cuda::parity::{applicable, run_fixture};
use alexnet_cuda::{device_count, ConvImpl, Gpu, Precision};
use alexnet_tensor::fixture::Fixture;
use std::path::PathBuf;
use std::sync::Arc;

fn fixtures() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/parity");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "safetensors"));
    v.sort();
    v
}

/// The device, or `None` (after printing the skip line) without one.
fn device() -> Option<Arc<Gpu>> {
    if device_count() == 0 {
        println!("skipped: no CUDA device");
        return None;
    }
    match Gpu::new(0) {
        Ok(g) => Some(Arc::new(g)),
        Err(e) => panic!("a CUDA device is present but cannot be opened: {e}"),
    }
}

/// Runs every fixture whose op passes `select` at `precision`; each tensor must be within
/// `bound(fixture tolerance)`. Returns the failure lines.
fn run_all(
    gpu: &Arc<Gpu>,
    precision: Precision,
    select: impl Fn(&str) -> bool,
    bound: impl Fn(f64) -> f64,
) -> Vec<String> {
    let (mut passed, mut failed, mut errors) = (0, 0, Vec::new());
    for path in fixtures() {
        let fx = match Fixture::load(&path) {
            Ok(f) => f,
            Err(e) => panic!("{e}"),
        };
        if !applicable(&fx.op) || !select(&fx.op) {
            continue;
        }
        let tol = bound(fx.tolerance);
        let errs: Vec<String> = match run_fixture(gpu, &path, precision) {
            Err(e) => vec![format!("{}: {e}", fx.case)],
            Ok(v) if v.is_empty() => vec![format!("{}: nothing compared", fx.case)],
            Ok(v) => v
                .iter()
                .filter(|(_, r)| r.is_nan() || *r > tol)
                .map(|(n, r)| {
                    format!(
                        "{} ({precision:?}): {n} rel L2 {r:.3e} > {tol:.0e}",
                        fx.case
                    )
                })
                .collect(),
        };
        if errs.is_empty() {
            passed += 1;
        } else {
            failed += 1;
            errors.extend(errs);
        }
    }
    println!("cuda parity {precision:?}: {passed} passed, {failed} failed");
    errors
}

#[test]
fn cuda_parity_with_every_fixture() {
    let Some(gpu) = device() else { return };
    let errors = run_all(&gpu, Precision::F32, |_| true, |t| t);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// The convolution and model fixtures with the 3x3 and 5x5 stride-1 convolutions by Winograd
/// (`--conv winograd`), at the fixtures' f32 tolerance.
#[test]
fn cuda_parity_winograd() {
    let Some(gpu) = device() else { return };
    gpu.set_conv_impl(ConvImpl::Winograd).unwrap();
    let conv_ops = |op: &str| matches!(op, "conv2d" | "model");
    let errors = run_all(&gpu, Precision::F32, conv_ops, |t| t);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// TF32 and bf16 change only the GEMMs (convolutions, linear layers, the model); their bound is
/// the documented [`Precision::tolerance`] (or the fixture's, if looser).
#[test]
fn cuda_parity_reduced_precision() {
    let Some(gpu) = device() else { return };
    let gemm_ops = |op: &str| matches!(op, "conv2d" | "linear" | "model");
    let mut errors = Vec::new();
    for p in [Precision::Tf32, Precision::Bf16] {
        errors.extend(run_all(&gpu, p, gemm_ops, |t| t.max(p.tolerance())));
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn run_fixture_never_panics_without_a_device() {
    // Without a device Gpu::new errors (never panics); with one, an unknown path is an error.
    match Gpu::new(0) {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(g) => {
            let r = run_fixture(
                &Arc::new(g),
                &PathBuf::from("no/such/file.safetensors"),
                Precision::F32,
            );
            assert!(r.is_err());
        }
    }
}
