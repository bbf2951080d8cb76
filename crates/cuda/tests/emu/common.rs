//! Shared helpers of the emulator tests (`tests/emu_*.rs`): loading a kernel file, random data,
//! relative L2 errors, and the check that every kernel of a file was launched.

#![allow(dead_code)]

use alexnet_cuda::emu::arg;
use alexnet_cuda::emu::Emu;
use alexnet_cuda::gpu::grid_for;
use alexnet_cuda::kernels::KernelFile;
use alexnet_cuda::ops::conv::{ConvGeom, ConvShape};
use alexnet_layers::conv::ConvShape as CpuShape;
use alexnet_tensor::rng::Rng;
use cudarc::driver::LaunchConfig;
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

/// The layers crate's description of convolution shape `s`.
pub fn cpu_shape(s: &ConvShape) -> CpuShape {
    CpuShape {
        n: s.n,
        c: s.c,
        h: s.h,
        w: s.w,
        o: s.o,
        k: s.k,
        stride: s.stride,
        pad: s.pad,
        groups: s.groups,
    }
}

// Launches of kernels/im2col.cu's (src, dst, ConvGeom) kernels.

/// The geometry of `nb` samples of `s`, as `ConvGeom::of` builds it for the launches.
pub fn geom(s: &ConvShape, nb: usize) -> ConvGeom {
    let u = |v: usize| u32::try_from(v).unwrap();
    ConvGeom {
        nb: u(nb),
        c: u(s.c),
        h: u(s.h),
        w: u(s.w),
        k: u(s.k),
        stride: u(s.stride),
        pad: u(s.pad),
        ho: u(s.ho()),
        wo: u(s.wo()),
    }
}

/// The weight geometry of the s2d_weight kernels, as `space_to_depth::weight_geom` builds it:
/// `nb` = O, `c` = input channels per group.
pub fn weight_geom(s: &ConvShape) -> ConvGeom {
    ConvGeom {
        c: (s.c / s.groups) as u32,
        ..geom(s, s.o)
    }
}

/// (source, destination) element counts of kernel `name` for `g`, as the launch functions'
/// length checks require; the destination count is the launch extent.
pub fn extents(name: &str, g: &ConvGeom) -> (usize, usize) {
    let [nb, c, h, w, k, st, ho, wo] =
        [g.nb, g.c, g.h, g.w, g.k, g.stride, g.ho, g.wo].map(|v| v as usize);
    let ks = k.div_ceil(st);
    let image = nb * c * h * w;
    let col = c * k * k * nb * ho * wo;
    let xs = nb * c * st * st * (ho + ks - 1) * (wo + ks - 1);
    let (wt, wts) = (nb * c * k * k, nb * c * st * st * ks * ks);
    match name {
        "im2col" => (image, col),
        "col2im" => (col, image),
        "s2d_input" => (image, xs),
        "s2d_input_grad" => (xs, image),
        "s2d_weight" => (wt, wts),
        "s2d_weight_grad" => (wts, wt),
        _ => panic!("no kernel {name}"),
    }
}

/// `name(src, dst, g)` over `cfg`; dst starts as NaN, so an element never written shows.
pub fn launch_cfg(e: &Emu, name: &str, cfg: &LaunchConfig, src: &[f32], g: ConvGeom) -> Vec<f32> {
    let (ns, nd) = extents(name, &g);
    assert_eq!(src.len(), ns, "{name}: source length");
    let mut dst = vec![f32::NAN; nd];
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
    // SAFETY: src and dst hold exactly the elements the kernel reads and writes for `g`
    // (`extents`, asserted above and by construction of dst).
    unsafe { e.launch(name, cfg, &[arg(&sp), arg(&dp), arg(&g)]) }.unwrap();
    dst
}

/// `name(src, dst, g)` launched as the launch functions do: `grid_for` over the destination.
pub fn run(e: &Emu, name: &str, src: &[f32], g: ConvGeom) -> Vec<f32> {
    let cfg = grid_for(extents(name, &g).1 as u64).unwrap();
    launch_cfg(e, name, &cfg, src, g)
}
