//! The kernel sources (`kernels/*.cu`, embedded), their NVRTC compilation (once per process,
//! cached by [`KernelFile`]) and [`check_kernels`].

use crate::error::{no_panic, CudaError};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions, Ptx};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// One kernel source file (one NVRTC program, one loaded module).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelFile {
    Elementwise,
    Im2col,
    LrnPool,
    Loss,
    Sgd,
    Augment,
    Convert,
    Winograd,
}

impl KernelFile {
    /// Every kernel file.
    pub const ALL: [KernelFile; 8] = [
        KernelFile::Elementwise,
        KernelFile::Im2col,
        KernelFile::LrnPool,
        KernelFile::Loss,
        KernelFile::Sgd,
        KernelFile::Augment,
        KernelFile::Convert,
        KernelFile::Winograd,
    ];

    /// File name under `kernels/`.
    pub fn file_name(self) -> &'static str {
        match self {
            KernelFile::Elementwise => "elementwise.cu",
            KernelFile::Im2col => "im2col.cu",
            KernelFile::LrnPool => "lrn_pool.cu",
            KernelFile::Loss => "loss.cu",
            KernelFile::Sgd => "sgd.cu",
            KernelFile::Augment => "augment.cu",
            KernelFile::Convert => "convert.cu",
            KernelFile::Winograd => "winograd.cu",
        }
    }

    /// The CUDA C source.
    pub fn source(self) -> &'static str {
        match self {
            KernelFile::Elementwise => include_str!("../kernels/elementwise.cu"),
            KernelFile::Im2col => include_str!("../kernels/im2col.cu"),
            KernelFile::LrnPool => include_str!("../kernels/lrn_pool.cu"),
            KernelFile::Loss => include_str!("../kernels/loss.cu"),
            KernelFile::Sgd => include_str!("../kernels/sgd.cu"),
            KernelFile::Augment => include_str!("../kernels/augment.cu"),
            KernelFile::Convert => include_str!("../kernels/convert.cu"),
            KernelFile::Winograd => include_str!("../kernels/winograd.cu"),
        }
    }

    /// Names of the `extern "C" __global__` functions of the file, in source order.
    pub fn kernel_names(self) -> Vec<&'static str> {
        kernel_names(self.source())
    }
}

/// The names of the `extern "C" __global__` kernels in `src`.
pub fn kernel_names(src: &str) -> Vec<&str> {
    const MARK: &str = "extern \"C\" __global__";
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(pos) = rest.find(MARK) {
        rest = &rest[pos + MARK.len()..];
        // `void name(` : the name is the identifier before the first '('.
        if let Some(paren) = rest.find('(') {
            let head = rest[..paren].trim_end();
            let name = head
                .rsplit(|c: char| c.is_whitespace() || c == '*')
                .next()
                .unwrap_or("");
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

/// Virtual architectures the kernels are compiled for by [`check_kernels`]: compute_80 (the
/// portable fallback, JIT-compiled by the driver on any sm_80+ card) and compute_90 (H100/H200).
pub const CHECK_ARCHES: [&str; 2] = ["compute_80", "compute_90"];

/// True when libnvrtc can be loaded (never panics).
pub fn nvrtc_available() -> bool {
    std::panic::catch_unwind(|| {
        // SAFETY: `is_culib_present` only tries `dlopen` on candidate names; it has no
        // preconditions.
        unsafe { cudarc::nvrtc::sys::is_culib_present() }
    })
    .unwrap_or(false)
}

/// Compiles `file` for `arch` with NVRTC.
pub fn compile(file: KernelFile, arch: Option<&'static str>) -> Result<Ptx, CudaError> {
    compile_source(file.file_name(), file.source(), arch)
}

/// NVRTC options of every kernel compilation (the architecture aside).
pub(crate) fn compile_options() -> Vec<String> {
    vec!["--std=c++14".into()]
}

/// Compiles CUDA C `src` (named `file_name` in errors) for `arch` with the crate's options.
pub fn compile_source(
    file_name: &'static str,
    src: &str,
    arch: Option<&'static str>,
) -> Result<Ptx, CudaError> {
    if !nvrtc_available() {
        return Err(CudaError::NoNvrtc);
    }
    let opts = CompileOptions {
        arch,
        name: Some(file_name.to_string()),
        options: compile_options(),
        ..Default::default()
    };
    no_panic("nvrtc compile", || {
        compile_ptx_with_opts(src, opts).map_err(|e| match e {
            CompileError::CompileError {
                nvrtc,
                options,
                log,
            } => CudaError::Compile {
                file: file_name,
                options: options.join(" "),
                log: format!("{:?}: {}", nvrtc, log.to_string_lossy()),
            },
            other => CudaError::Compile {
                file: file_name,
                options: String::new(),
                log: format!("{other:?}"),
            },
        })
    })
}

type PtxCache = Mutex<HashMap<(KernelFile, Option<&'static str>), Ptx>>;

/// The PTX of `file` for `arch`, compiled at most once per process.
pub fn cached_ptx(file: KernelFile, arch: Option<&'static str>) -> Result<Ptx, CudaError> {
    static CACHE: OnceLock<PtxCache> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = map.get(&(file, arch)) {
        return Ok(p.clone());
    }
    let ptx = compile(file, arch)?;
    map.insert((file, arch), ptx.clone());
    Ok(ptx)
}

/// Compiles every `kernels/*.cu` with NVRTC for each of [`CHECK_ARCHES`] (needs libnvrtc, no
/// GPU) and returns the number of kernels (`extern "C" __global__` entries). On failure the error
/// names the file and holds NVRTC's log.
pub fn check_kernels() -> Result<usize, CudaError> {
    let mut count = 0;
    for file in KernelFile::ALL {
        for arch in CHECK_ARCHES {
            compile(file, Some(arch))?;
        }
        count += file.kernel_names().len();
    }
    Ok(count)
}
