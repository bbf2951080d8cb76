//! NVRTC compile check of every kernel (needs libnvrtc, no GPU).

use alexnet_cuda::cubin::{all_kernel_resources, compile_cubin, kernel_resources, RESOURCE_ARCH};
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

#[test]
fn no_kernel_spills_to_local_memory() {
    if !nvrtc_available() {
        println!("skipped: libnvrtc not found");
        return;
    }
    let res = match all_kernel_resources() {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    // Every kernel of every file is in the cubins, with a register count and no frame.
    let expected: usize = KernelFile::ALL.iter().map(|f| f.kernel_names().len()).sum();
    assert_eq!(res.len(), expected, "{res:?}");
    for (file, r) in &res {
        assert!(file.kernel_names().contains(&r.name.as_str()), "{r:?}");
        assert!((1..=255).contains(&r.registers), "{r:?}");
        assert_eq!(
            r.frame,
            0,
            "{} in {} spills: {r:?}",
            r.name,
            file.file_name()
        );
    }
}

#[test]
fn the_reader_sees_registers_and_frames() {
    if !nvrtc_available() {
        println!("skipped: libnvrtc not found");
        return;
    }
    // A local array indexed at run time lives in local memory: a 2 KiB frame.
    let src = "extern \"C\" __global__ void spill(float* x, int n) {\n\
               float a[512];\n\
               for (int i = 0; i < 512; ++i) a[i] = x[(i * n) & 1023];\n\
               float s = 0.0f;\n\
               for (int i = 0; i < 512; ++i) s += a[(i * 7 + n) & 511];\n\
               x[threadIdx.x] = s;\n}\n\
               extern \"C\" __global__ void small(float* x) { x[threadIdx.x] += 1.0f; }\n";
    let cubin = compile_cubin("spill.cu", src, RESOURCE_ARCH).unwrap();
    let res = kernel_resources(&cubin).unwrap();
    let get = |n: &str| {
        res.iter()
            .find(|r| r.name == n)
            .unwrap_or_else(|| panic!("{n}: {res:?}"))
    };
    assert_eq!(get("spill").frame, 2048, "{res:?}");
    assert_eq!(get("small").frame, 0);
    assert!(
        get("small").registers >= 1 && get("small").registers < 32,
        "{res:?}"
    );
}
