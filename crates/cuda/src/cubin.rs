//! What the GPU compiler made of each kernel, read without a GPU: NVRTC compiles a kernel file
//! to SASS for a real architecture (a cubin, an ELF file), and the cubin's `.nv.info` section
//! records per kernel the registers each thread uses and its stack frame, the local memory a
//! kernel spills registers or local arrays to. Registers bound the threads an SM keeps resident
//! (65,536 registers per SM: 128 per thread leaves 512 threads); a frame usually means an array
//! indexed at run time or a spill, both slow on a memory-bound kernel. `cargo xtask
//! check-kernels` prints both for every kernel; a test keeps every frame at zero.

use crate::error::CudaError;
use crate::kernels::{compile_options, nvrtc_available, KernelFile};
use cudarc::nvrtc::{result, sys};
use std::ffi::CString;

/// The architecture [`kernel_resources`] compiles for (the H100 / H200).
pub const RESOURCE_ARCH: &str = "sm_90";

/// One kernel's resources in a cubin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelResources {
    pub name: String,
    /// Registers per thread.
    pub registers: u32,
    /// Bytes of local memory per thread (the stack frame; 0 when nothing spills).
    pub frame: u32,
}

/// `.nv.info` attribute codes (EIATTR_*) read here.
const EIATTR_FRAME_SIZE: u8 = 0x11;
const EIATTR_REGCOUNT: u8 = 0x2f;
/// `.nv.info` value format with a 16-bit length and that many bytes (EIFMT_SVAL).
const EIFMT_SVAL: u8 = 0x04;
/// The formats with a 16-bit value (EIFMT_HVAL) and with none (EIFMT_NVAL).
const EIFMT_HVAL: u8 = 0x03;

fn bad(what: &str) -> CudaError {
    CudaError::invalid("cubin", format!("malformed cubin: {what}"))
}

fn u16_at(b: &[u8], o: usize) -> Result<u16, CudaError> {
    b.get(o..o + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| bad("truncated"))
}

fn u32_at(b: &[u8], o: usize) -> Result<u32, CudaError> {
    b.get(o..o + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| bad("truncated"))
}

fn u64_at(b: &[u8], o: usize) -> Result<u64, CudaError> {
    let lo = u32_at(b, o)? as u64;
    Ok(lo | (u32_at(b, o + 4)? as u64) << 32)
}

/// A section header of an ELF64 file: name offset, type, file offset, size, link.
struct Section {
    name: u32,
    kind: u32,
    offset: usize,
    size: usize,
    link: u32,
}

impl Section {
    fn bytes<'a>(&self, elf: &'a [u8]) -> Result<&'a [u8], CudaError> {
        elf.get(self.offset..self.offset + self.size)
            .ok_or_else(|| bad("section outside the file"))
    }
}

/// The NUL-terminated string at `at` of a string table.
fn c_str(table: &[u8], at: usize) -> Result<String, CudaError> {
    let rest = table.get(at..).ok_or_else(|| bad("string offset"))?;
    let end = rest
        .iter()
        .position(|&c| c == 0)
        .ok_or_else(|| bad("string"))?;
    Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// The kernels' registers and frames recorded in the cubin `elf`, in symbol order.
pub fn kernel_resources(elf: &[u8]) -> Result<Vec<KernelResources>, CudaError> {
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) || elf.get(4) != Some(&2) {
        return Err(bad("not an ELF64 file"));
    }
    let shoff = u64_at(elf, 0x28)? as usize;
    let (shentsize, shnum) = (u16_at(elf, 0x3a)? as usize, u16_at(elf, 0x3c)? as usize);
    let shstrndx = u16_at(elf, 0x3e)? as usize;
    let sections = (0..shnum)
        .map(|i| {
            let o = shoff + i * shentsize;
            Ok(Section {
                name: u32_at(elf, o)?,
                kind: u32_at(elf, o + 4)?,
                offset: u64_at(elf, o + 0x18)? as usize,
                size: u64_at(elf, o + 0x20)? as usize,
                link: u32_at(elf, o + 0x28)?,
            })
        })
        .collect::<Result<Vec<_>, CudaError>>()?;
    let names = sections.get(shstrndx).ok_or_else(|| bad("section names"))?;
    let names = names.bytes(elf)?;
    // The symbol table (SHT_SYMTAB = 2) and its string table.
    let symtab = sections
        .iter()
        .find(|s| s.kind == 2)
        .ok_or_else(|| bad("no symbol table"))?;
    let strtab = sections
        .get(symtab.link as usize)
        .ok_or_else(|| bad("symbol names"))?
        .bytes(elf)?;
    let syms = symtab.bytes(elf)?;
    let symbol = |i: u32| -> Result<String, CudaError> {
        c_str(strtab, u32_at(syms, i as usize * 24)? as usize)
    };
    let mut out: Vec<(u32, KernelResources)> = Vec::new();
    for s in &sections {
        if c_str(names, s.name as usize)? != ".nv.info" {
            continue;
        }
        let info = s.bytes(elf)?;
        let mut i = 0;
        while i + 2 <= info.len() {
            let (fmt, attr) = (info[i], info[i + 1]);
            match fmt {
                EIFMT_SVAL => {
                    let len = u16_at(info, i + 2)? as usize;
                    if matches!(attr, EIATTR_REGCOUNT | EIATTR_FRAME_SIZE) && len >= 8 {
                        let (sym, value) = (u32_at(info, i + 4)?, u32_at(info, i + 8)?);
                        let at = match out.iter().position(|(s, _)| *s == sym) {
                            Some(at) => at,
                            None => {
                                let name = symbol(sym)?;
                                out.push((
                                    sym,
                                    KernelResources {
                                        name,
                                        registers: 0,
                                        frame: 0,
                                    },
                                ));
                                out.len() - 1
                            }
                        };
                        if attr == EIATTR_REGCOUNT {
                            out[at].1.registers = value;
                        } else {
                            out[at].1.frame = value;
                        }
                    }
                    i += 4 + len;
                }
                EIFMT_HVAL => i += 4,
                _ => i += 2,
            }
        }
    }
    out.sort_by_key(|(sym, _)| *sym);
    // Only kernels have a register count; frames are also recorded for device functions.
    Ok(out
        .into_iter()
        .map(|(_, r)| r)
        .filter(|r| r.registers > 0)
        .collect())
}

/// Compiles CUDA C `src` with NVRTC to a cubin for `arch` (e.g. [`RESOURCE_ARCH`]).
pub fn compile_cubin(file_name: &str, src: &str, arch: &str) -> Result<Vec<u8>, CudaError> {
    if !nvrtc_available() {
        return Err(CudaError::NoNvrtc);
    }
    let err = |e: cudarc::nvrtc::result::NvrtcError| CudaError::Compile {
        file: "cubin",
        options: String::new(),
        log: format!("{file_name}: {e:?}"),
    };
    let src = CString::new(src).map_err(|_| bad("NUL in the source"))?;
    let name = CString::new(file_name).map_err(|_| bad("NUL in the file name"))?;
    let prog = result::create_program(&src, Some(&name)).map_err(err)?;
    let mut opts = compile_options();
    opts.push(format!("--gpu-architecture={arch}"));
    // SAFETY: `prog` was just created and is destroyed once, below, on every path.
    let compiled = unsafe { result::compile_program(prog, &opts) };
    let cubin = compiled.map_err(err).and_then(|()| {
        let mut size = 0usize;
        // SAFETY: `prog` is a compiled program; `size` is a valid out-pointer.
        unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }
            .result()
            .map_err(err)?;
        let mut buf = vec![0u8; size];
        // SAFETY: `buf` holds the `size` bytes NVRTC reported for this program's cubin.
        unsafe { sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast()) }
            .result()
            .map_err(err)?;
        Ok(buf)
    });
    // SAFETY: created above and not destroyed before.
    unsafe { result::destroy_program(prog) }.map_err(err)?;
    cubin
}

/// Every kernel of every file compiled for [`RESOURCE_ARCH`], with its resources, in source
/// order.
pub fn all_kernel_resources() -> Result<Vec<(KernelFile, KernelResources)>, CudaError> {
    let mut out = Vec::new();
    for file in KernelFile::ALL {
        let cubin = compile_cubin(file.file_name(), file.source(), RESOURCE_ARCH)?;
        let mut res = kernel_resources(&cubin)?;
        // In source order.
        let names = file.kernel_names();
        res.sort_by_key(|r| names.iter().position(|n| *n == r.name));
        out.extend(res.into_iter().map(|r| (file, r)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_a_cubin_is_an_error_not_a_panic() {
        for b in [&b""[..], b"\x7fELF", b"\x7fELF\x02\x01\x01", &[0u8; 64][..]] {
            assert!(kernel_resources(b).is_err());
        }
        let mut head = vec![0u8; 64];
        head[..5].copy_from_slice(b"\x7fELF\x02");
        head[0x28] = 200; // section headers past the end
        head[0x3c] = 1;
        assert!(kernel_resources(&head).is_err());
    }
}
