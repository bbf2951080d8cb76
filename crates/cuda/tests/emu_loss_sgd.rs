//! kernels/loss.cu and kernels/sgd.cu on the CPU emulator (no GPU) against the layers crate:
//! the softmax cross-entropy (gradient and per-row losses against `softmax_cross_entropy` in
//! f64, including rows narrower than the block, one class, and logits whose exp overflows f32
//! without the max subtraction) and the SGD step (bit-identical to `sgd_step` in f32 over
//! several steps, nothing written past n).

#[path = "emu/common.rs"]
mod common;

use alexnet_cuda::emu::{arg, Emu};
use alexnet_cuda::gpu::grid_for;
use alexnet_cuda::kernels::KernelFile;
use alexnet_cuda::ops::sgd::SgdParams;
use alexnet_layers::loss::softmax_cross_entropy;
use alexnet_layers::sgd::sgd_step;
use common::{emu, f64s, normal, rel_l2};
use cudarc::driver::LaunchConfig;

/// B rows of C classes, logits `scale` times unit normals; labels cover 0 and C - 1.
fn softmax_case(e: &Emu, b: usize, c: usize, scale: f32, seed: u64) {
    let what = format!("softmax_ce ({b}, {c}) scale {scale}");
    let logits = normal(b * c, seed, scale);
    let labels: Vec<u32> = (0..b)
        .map(|i| match i {
            0 => 0,
            1 => c - 1,
            _ => (i * 7919) % c,
        } as u32)
        .collect();

    // Reference in f64: the batch's gradient, and each row's loss as a batch of one.
    let l64 = f64s(&logits);
    let mut d_ref = vec![0.0f64; b * c];
    let mean_ref = softmax_cross_entropy(&l64, &labels, &mut d_ref, c).unwrap();
    let row_ref: Vec<f64> = (0..b)
        .map(|r| {
            let mut d = vec![0.0f64; c];
            softmax_cross_entropy(&l64[r * c..(r + 1) * c], &labels[r..r + 1], &mut d, c).unwrap()
        })
        .collect();

    // The launch of src/ops/loss.rs: one block of 256 per row.
    let cfg = LaunchConfig {
        grid_dim: (b as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let (classes, inv_b) = (c as u64, 1.0f32 / b as f32);
    let (mut d, mut row_loss) = (vec![f32::NAN; b * c], vec![f32::NAN; b]);
    let (lp, labp, dp, rp) = (
        logits.as_ptr(),
        labels.as_ptr(),
        d.as_mut_ptr(),
        row_loss.as_mut_ptr(),
    );
    let args = [
        arg(&lp),
        arg(&labp),
        arg(&dp),
        arg(&rp),
        arg(&classes),
        arg(&inv_b),
    ];
    // SAFETY: logits and dlogits hold b*c floats, labels and row_loss b; every label is < c.
    unsafe { e.launch("softmax_ce", &cfg, &args) }.unwrap();

    // f32 expf / logf and sums of <= 1000 terms against f64: a few ulp (measured < 1e-7).
    let err = rel_l2(&d, &d_ref);
    assert!(err < 1e-6, "{what}: dlogits rel L2 {err:e}");
    let err = rel_l2(&row_loss, &row_ref);
    assert!(err < 1e-6, "{what}: row_loss rel L2 {err:e}");
    // The host's mean of the row losses is the loss.
    let mean = row_loss.iter().map(|&v| v as f64).sum::<f64>() / b as f64;
    assert!(
        (mean - mean_ref).abs() <= 1e-6 * mean_ref.abs().max(1.0),
        "{what}: mean {mean} vs {mean_ref}"
    );
}

#[test]
fn loss_kernels_match_the_cpu_reference() {
    let Some(e) = emu(KernelFile::Loss) else {
        return;
    };
    // Rows wider than the block (several classes per thread), narrower (idle threads), one
    // class (loss and gradient 0), and logits up to ~200 (exp overflows f32 unless the row
    // maximum is subtracted first).
    softmax_case(&e, 4, 1000, 2.0, 71);
    softmax_case(&e, 3, 7, 1.0, 72);
    softmax_case(&e, 2, 1, 1.0, 73);
    softmax_case(&e, 5, 300, 60.0, 74);
    common::assert_all_launched(&e);
}

/// Three SGD steps with changing hyper-parameters over n parameters, under `cfg`.
fn sgd_steps(e: &Emu, n: usize, cfg: &LaunchConfig) {
    const GUARD: usize = 300;
    let mut w_ref = normal(n, 61, 0.1);
    let mut v_ref = normal(n, 62, 0.01);
    // Sentinels past n: the kernel must leave them alone.
    let mut w = [w_ref.clone(), vec![7.0; GUARD]].concat();
    let mut v = [v_ref.clone(), vec![-3.0; GUARD]].concat();
    for (step, (lr, momentum, weight_decay)) in [
        (0.01f32, 0.9f32, 5e-4f32),
        (0.001, 0.9, 5e-4),
        (0.05, 0.0, 0.0),
    ]
    .into_iter()
    .enumerate()
    {
        let g = normal(n + GUARD, 63 + step as u64, 1.0);
        sgd_step(
            &mut w_ref,
            &g[..n],
            &mut v_ref,
            lr as f64,
            momentum as f64,
            weight_decay as f64,
        )
        .unwrap();
        let p = SgdParams {
            n: n as u64,
            lr,
            momentum,
            weight_decay,
            pad_: 0.0,
        };
        let (wp, gp, vp) = (w.as_mut_ptr(), g.as_ptr(), v.as_mut_ptr());
        // SAFETY: w, g and v hold n + GUARD >= p.n floats.
        unsafe { e.launch("sgd_step", cfg, &[arg(&wp), arg(&gp), arg(&vp), arg(&p)]) }.unwrap();
        // The same f32 operations in the same order (the emulator does not contract into
        // FMAs): bit-identical.
        assert_eq!(w[..n], w_ref[..], "sgd_step w, step {step}");
        assert_eq!(v[..n], v_ref[..], "sgd_step v, step {step}");
        assert!(w[n..].iter().all(|&x| x == 7.0), "sgd_step wrote w past n");
        assert!(v[n..].iter().all(|&x| x == -3.0), "sgd_step wrote v past n");
    }
}

#[test]
fn sgd_kernel_matches_the_cpu_reference() {
    let Some(e) = emu(KernelFile::Sgd) else {
        return;
    };
    // The launch of src/ops/sgd.rs (12 blocks, the last one partial), then a grid of 2 blocks
    // of 32 threads: each thread takes ~47 parameters through the grid-stride loop.
    let n = 2999;
    sgd_steps(&e, n, &grid_for(n as u64).unwrap());
    let small = LaunchConfig {
        grid_dim: (2, 1, 1),
        block_dim: (32, 1, 1),
        shared_mem_bytes: 0,
    };
    sgd_steps(&e, n, &small);
    common::assert_all_launched(&e);
}
