//! NVRTC compile check of every kernel (needs libnvrtc, no GPU).

use alexnet_cuda::kernels::{check_kernels, compile_source, KernelFile};
use alexnet_cuda::nvrtc_available;
use alexnet_cuda::CudaError;

#[test]
fn every_kernel_compiles() {
    if !nvrtc_available() {
        println!("skipped: libnvrtc not found");
        return;
    }
    match check_kernels() {
        Ok(n) => {
            let expected: usize = KernelFile::ALL.iter().map(|f| f.kernel_names().len()).sum();
            assert_eq!(n, expected);
            println!("{n} kernels compiled");
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn a_broken_kernel_reports_file_and_log() {
    if !nvrtc_available() {
        println!("skipped: libnvrtc not found");
        return;
    }
    let src = "extern \"C\" __global__ void k(float* x) { x[0] = undefined_name; }";
    match compile_source("broken.cu", src, Some("compute_90")) {
        Err(CudaError::Compile { file, log, .. }) => {
            assert_eq!(file, "broken.cu");
            assert!(log.contains("undefined_name"), "{log}");
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
}
