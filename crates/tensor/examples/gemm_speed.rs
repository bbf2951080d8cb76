//! Prints the GFLOP/s of `gemm` (one thread) and `par_gemm` (all rayon threads) for a few
//! shapes that occur in AlexNet's convolutions: the ceiling the layers can reach on this CPU.
//! `cargo run --release -p alexnet-tensor --example gemm_speed`
use alexnet_tensor::gemm::{gemm, par_gemm};
use std::time::Instant;

fn main() {
    for &(m, n, k, label) in &[
        (512usize, 512usize, 512usize, "square 512"),
        (32, 1458, 300, "small conv2 group (M=32,K=300,N=2x729)"),
        (1458, 32, 300, "same, transposed (M=2x729,N=32)"),
        (128, 3025, 1200, "paper conv2 group (M=128,K=1200,N=3025)"),
    ] {
        let a = vec![0.5f32; m * k];
        let b = vec![0.25f32; k * n];
        let mut c = vec![0.0f32; m * n];
        {
            let reps = (2e9 / (2.0 * (m * n * k) as f64)).clamp(3.0, 200.0) as usize;
            let t = Instant::now();
            for _ in 0..reps {
                // SAFETY: row-major m x k, k x n, m x n buffers of exactly those sizes.
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        c.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        a.as_ptr(),
                        1,
                        k as isize,
                        b.as_ptr(),
                        1,
                        n as isize,
                        0.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            println!(
                "{label:<45} {:<12} {:7.1} GFLOP/s",
                "gemm crate",
                2.0 * (m * n * k) as f64 / s / 1e9
            );
        }
        for (name, par) in [("1 thread", false), ("all threads", true)] {
            let reps = (2e9 / (2.0 * (m * n * k) as f64)).clamp(3.0, 200.0) as usize;
            let t = Instant::now();
            for _ in 0..reps {
                if par {
                    par_gemm(false, false, m, n, k, 1.0, &a, &b, 0.0, &mut c).unwrap();
                } else {
                    gemm(false, false, m, n, k, 1.0, &a, &b, 0.0, &mut c).unwrap();
                }
            }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            println!(
                "{label:<45} {name:<12} {:7.1} GFLOP/s",
                2.0 * (m * n * k) as f64 / s / 1e9
            );
        }
    }
}

#[allow(dead_code)]
fn unused() {}
