//! Shared helpers of the emulator tests (`tests/emu_*.rs`): loading a kernel file, random data,
//! relative L2 errors, and the check that every kernel of a file was launched.

#![allow(dead_code)]

use alexnet_cuda::emu::Emu;
use alexnet_cuda::kernels::KernelFile;
use alexnet_tensor::rng::Rng;
use std::sync::Arc;

/// The emulated kernel file, or `None` (after printing the skip line) without a C++ compiler.
pub fn emu(file: KernelFile) -> Option<Arc<Emu>> {
    if !Emu::available() {
        println!(
            "skipped: no C++ compiler (the kernel emulator needs one: set CXX or install g++)"
        );
        return None;
    }
    match Emu::load(file) {
        Ok(e) => Some(e),
        Err(e) => panic!("{e}"),
    }
}

/// `n` normal samples times `scale` (seeded).
pub fn normal(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.normal() * scale).collect()
}

/// ||a - b|| / ||b|| (0 when both are zero).
pub fn rel_l2(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += (x as f64 - y) * (x as f64 - y);
        den += y * y;
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// The bit patterns of `v` (for bit-identical comparisons that NaN and -0 cannot fool).
pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// f32 -> f64 copy.
pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Asserts that every kernel of the emulator's file has been launched in this test binary.
pub fn assert_all_launched(e: &Emu) {
    let want: Vec<String> = e
        .file()
        .kernel_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let got = e.launched();
    let missing: Vec<&String> = want.iter().filter(|k| !got.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "kernels of {} never run: {missing:?}",
        e.file().file_name()
    );
}
