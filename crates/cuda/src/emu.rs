//! The kernel emulator: runs the CUDA C of `kernels/*.cu` on the CPU, so that kernels are
//! checked against the CPU reference on machines without a GPU (CI, and every session that was
//! not lent one).
//!
//! [`Emu::load`] compiles one kernel file as C++20 with `emu/emu.h` in front (which defines
//! `__global__`, `threadIdx`, `__syncthreads`, `__umulhi`, ... for the CPU) into a shared
//! library, once per process (and once per source on disk: the library is cached under the
//! temp dir by a hash of its sources), and loads it. [`Emu::launch`] then runs a kernel over a
//! grid the way `cuLaunchKernel` would, with host buffers standing in for device memory: blocks
//! one after another; the threads of a block one after another, or, for files that use
//! `__syncthreads`, one OS thread each with a barrier; one launch at a time per process. Each argument carries its size, checked
//! against the kernel's parameter list, so a `#[repr(C)]` struct that drifted from its C mirror
//! is an error, not garbage.
//!
//! What it does not show: speed, warp-level behaviour, and the last ulp of the GPU's `powf` /
//! `expf` and of NVRTC's FMA contraction. Needs a C++20 compiler (`$CXX`, else `c++`);
//! [`Emu::available`] says whether there is one.

use crate::error::CudaError;
use crate::kernels::KernelFile;
use cudarc::driver::LaunchConfig;
use std::collections::{BTreeSet, HashMap};
use std::ffi::c_void;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

const SHIM: &str = include_str!("../emu/emu.h");

/// One kernel argument: the address of its value and its size in bytes.
#[derive(Clone, Copy, Debug)]
pub struct EmuArg {
    ptr: *mut c_void,
    size: usize,
}

/// The argument `v` (a device pointer stand-in, a scalar or a `#[repr(C)]` parameter struct).
/// The value must outlive the launch.
pub fn arg<T>(v: &T) -> EmuArg {
    EmuArg {
        ptr: v as *const T as *mut c_void,
        size: std::mem::size_of::<T>(),
    }
}

type Entry = unsafe extern "C" fn(*const u32, *const u32, *mut *mut c_void, i32);
type Sizes = unsafe extern "C" fn(*mut u32, u32) -> u32;

/// One kernel file compiled for the CPU (see the module docs).
pub struct Emu {
    file: KernelFile,
    lib: libloading::Library,
    cooperative: bool,
    launched: Mutex<BTreeSet<String>>,
}

impl std::fmt::Debug for Emu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emu").field("file", &self.file).finish()
    }
}

fn err(detail: impl Into<String>) -> CudaError {
    CudaError::Invalid {
        op: "emu",
        detail: detail.into(),
    }
}

fn compiler() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "c++".into())
}

impl Emu {
    /// True when a C++20 compiler runs (`$CXX`, else `c++`).
    pub fn available() -> bool {
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            Command::new(compiler())
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    }

    /// `file` compiled for the CPU and loaded, at most once per process.
    pub fn load(file: KernelFile) -> Result<Arc<Emu>, CudaError> {
        type Cache = Mutex<HashMap<KernelFile, Arc<Emu>>>;
        static CACHE: OnceLock<Cache> = OnceLock::new();
        let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
        let mut map = cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get(&file) {
            return Ok(e.clone());
        }
        let lib_path = build(file)?;
        // SAFETY: the library is our own kernel file compiled with the shim; loading it runs
        // no initialisers beyond the C++ runtime's.
        let lib = unsafe { libloading::Library::new(&lib_path) }
            .map_err(|e| err(format!("cannot load {}: {e}", lib_path.display())))?;
        let emu = Arc::new(Emu {
            file,
            lib,
            cooperative: file.source().contains("__syncthreads"),
            launched: Mutex::new(BTreeSet::new()),
        });
        map.insert(file, emu.clone());
        Ok(emu)
    }

    /// Runs kernel `name` of this file over `cfg`'s grid and blocks with `args` (in the
    /// kernel's parameter order). Errors when the kernel does not exist or the argument count
    /// or sizes differ from its parameters.
    ///
    /// # Safety
    /// Every pointer argument must point to host memory that covers every element the kernel
    /// touches for this launch, with the element type the kernel expects (as with a real
    /// launch, the kernel trusts its arguments).
    pub unsafe fn launch(
        &self,
        name: &str,
        cfg: &LaunchConfig,
        args: &[EmuArg],
    ) -> Result<(), CudaError> {
        let bad = |what: String| err(format!("{}::{name}: {what}", self.file.file_name()));
        // SAFETY: the symbols are the `EMU_KERNEL` entry points with exactly these signatures.
        let (entry, sizes) = unsafe {
            let entry = self
                .lib
                .get::<Entry>(format!("emu_{name}\0").as_bytes())
                .map_err(|_| bad("no such kernel".into()))?;
            let sizes = self
                .lib
                .get::<Sizes>(format!("emu_sizes_{name}\0").as_bytes())
                .map_err(|_| bad("no parameter sizes".into()))?;
            (*entry, *sizes)
        };
        let mut want = [0u32; 32];
        // SAFETY: `want` holds 32 entries; the callee writes at most that many.
        let count = unsafe { sizes(want.as_mut_ptr(), want.len() as u32) } as usize;
        if count != args.len() {
            return Err(bad(format!(
                "{} arguments given, the kernel takes {count}",
                args.len()
            )));
        }
        for (i, (a, w)) in args.iter().zip(&want).enumerate() {
            if a.size != *w as usize {
                return Err(bad(format!(
                    "argument {i} is {} bytes, the kernel's parameter is {w}",
                    a.size
                )));
            }
        }
        let (g, b) = (cfg.grid_dim, cfg.block_dim);
        if g.0 * g.1 * g.2 == 0 || b.0 * b.1 * b.2 == 0 {
            return Err(bad(format!("empty launch {g:?} x {b:?}")));
        }
        let grid = [g.0, g.1, g.2];
        let block = [b.0, b.1, b.2];
        let mut ptrs: Vec<*mut c_void> = args.iter().map(|a| a.ptr).collect();
        // The shim's grid state (blockIdx, gridDim, the barrier) is one set of globals shared by
        // every loaded file: one launch at a time in the process.
        static RUNNING: Mutex<()> = Mutex::new(());
        let _one = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: argument count and sizes match the kernel's parameters (checked above); the
        // caller guarantees the buffers (see the function's contract).
        unsafe {
            entry(
                grid.as_ptr(),
                block.as_ptr(),
                ptrs.as_mut_ptr(),
                self.cooperative as i32,
            )
        };
        self.launched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string());
        Ok(())
    }

    /// The kernels of this file launched so far in this process.
    pub fn launched(&self) -> BTreeSet<String> {
        self.launched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The kernel file.
    pub fn file(&self) -> KernelFile {
        self.file
    }
}

/// The C++ translation unit of `file`: the shim, the kernel source, one entry point per kernel.
fn unit(file: KernelFile) -> String {
    let mut s = String::from("#include \"emu.h\"\n");
    s.push_str(&format!("#line 1 \"kernels/{}\"\n", file.file_name()));
    s.push_str(file.source());
    s.push('\n');
    for k in file.kernel_names() {
        s.push_str(&format!("EMU_KERNEL({k})\n"));
    }
    s
}

/// Compiles `file` into a shared library under the temp dir (reused when its sources are
/// unchanged) and returns its path.
fn build(file: KernelFile) -> Result<PathBuf, CudaError> {
    let src = unit(file);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (SHIM, &src, compiler()).hash(&mut h);
    let dir = std::env::temp_dir().join(format!("alexnet-emu-{:016x}", h.finish()));
    let stem = file.file_name().trim_end_matches(".cu");
    let lib = dir.join(format!("lib{stem}.so"));
    if lib.exists() {
        return Ok(lib);
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
    let write = |p: &Path, text: &str| {
        std::fs::write(p, text).map_err(|e| err(format!("cannot write {}: {e}", p.display())))
    };
    write(&dir.join("emu.h"), SHIM)?;
    let cpp = dir.join(format!("{stem}.cpp"));
    write(&cpp, &src)?;
    // Built under a name of this process, then renamed: concurrent test binaries never load a
    // half-written library.
    let tmp = dir.join(format!("lib{stem}.{}.tmp", std::process::id()));
    let out = Command::new(compiler())
        .args([
            "-std=c++20",
            "-O1",
            "-ffp-contract=off",
            "-shared",
            "-fPIC",
            "-pthread",
            "-w",
            "-o",
        ])
        .arg(&tmp)
        .arg(&cpp)
        .output()
        .map_err(|e| err(format!("cannot run the C++ compiler {}: {e}", compiler())))?;
    if !out.status.success() {
        return Err(err(format!(
            "{} failed on kernels/{}: {}",
            compiler(),
            file.file_name(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    std::fs::rename(&tmp, &lib)
        .map_err(|e| err(format!("cannot move {} into place: {e}", tmp.display())))?;
    Ok(lib)
}
