//! The AMX GEMM (bf16x3 and bf16) against the f32 gemm crate on AlexNet's convolution GEMMs,
//! one thread, the three alternating in one process (this machine's speed drifts by 2x over
//! minutes, so only ratios within one run mean anything). Prints the best of REPS (default 11)
//! per kernel. `cargo run --release -p alexnet-tensor --example amx_speed [-- FILTER]`
use alexnet_tensor::amx::{self, AmxPrecision};
use alexnet_tensor::gemm::Float;
use std::time::Instant;

/// (label, m, n, k, A stored transposed, B stored transposed): the paper net's per-group conv
/// GEMMs at batch 32 (forward, weight gradient as dW^T = col x dy^T, input gradient dcol =
/// W^T x dy) and the small net's conv2.
const SHAPES: [(&str, usize, usize, usize, bool, bool); 10] = [
    ("paper conv1 fwd", 48, 3025, 363, false, false),
    ("paper conv2 fwd", 128, 2187, 1200, false, false),
    ("paper conv2 dW^T", 1200, 128, 2187, false, true),
    ("paper conv2 dcol", 1200, 2187, 128, true, false),
    ("paper conv3 fwd", 384, 2028, 2304, false, false),
    ("paper conv3 dW^T", 2304, 384, 2028, false, true),
    ("paper conv3 dcol", 2304, 2028, 384, true, false),
    ("small conv2 fwd", 64, 4096, 600, false, false),
    ("small conv2 dW^T", 600, 64, 4096, false, true),
    ("small conv2 dcol", 600, 4096, 64, true, false),
];

fn main() {
    if let Err(e) = amx::available() {
        println!("no AMX here: {e}");
        return;
    }
    let filter = std::env::args().nth(1).unwrap_or_default();
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(11);
    println!(
        "{:<18} {:>18} {:>26} {:>26}",
        "GEMM (one thread)", "f32 (gemm crate)", "bf16x3 (AMX)", "bf16 (AMX)"
    );
    for (name, m, n, k, ta, tb) in SHAPES {
        if !name.contains(filter.as_str()) {
            continue;
        }
        let a: Vec<f32> = (0..m * k).map(|i| (i % 17) as f32 * 0.1 - 0.8).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
        let mut c = vec![0f32; m * n];
        let (rsa, csa) = if ta { (1, m as isize) } else { (k as isize, 1) };
        let (rsb, csb) = if tb { (1, k as isize) } else { (n as isize, 1) };
        let mut best = [f64::MAX; 3];
        for _ in 0..reps {
            for (v, t) in best.iter_mut().enumerate() {
                let (pa, pb, pc) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
                let s = Instant::now();
                // SAFETY: a, b and c hold exactly m x k, k x n and m x n elements at these
                // strides; AMX is available (checked above).
                unsafe {
                    match v {
                        0 => f32::raw_gemm(
                            m, k, n, 1.0, pa, rsa, csa, pb, rsb, csb, 0.0, pc, n as isize, 1,
                        ),
                        1 => amx::sgemm(
                            AmxPrecision::Bf16x3,
                            m,
                            k,
                            n,
                            1.0,
                            pa,
                            rsa,
                            csa,
                            pb,
                            rsb,
                            csb,
                            0.0,
                            pc,
                            n as isize,
                            1,
                        ),
                        _ => amx::sgemm(
                            AmxPrecision::Bf16,
                            m,
                            k,
                            n,
                            1.0,
                            pa,
                            rsa,
                            csa,
                            pb,
                            rsb,
                            csb,
                            0.0,
                            pc,
                            n as isize,
                            1,
                        ),
                    }
                }
                *t = t.min(s.elapsed().as_secs_f64());
            }
        }
        let gf = |t: f64| 2.0 * (m * n * k) as f64 / t / 1e9;
        println!(
            "{name:<18} {:7.2} ms {:4.0} GF/s {:7.2} ms {:4.0} GF/s {:4.2}x {:7.2} ms {:4.0} GF/s {:4.2}x",
            best[0] * 1e3,
            gf(best[0]),
            best[1] * 1e3,
            gf(best[1]),
            best[0] / best[1],
            best[2] * 1e3,
            gf(best[2]),
            best[0] / best[2]
        );
    }
}
