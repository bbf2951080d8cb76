//! Space-to-depth form of strided convolutions, for the cuDNN and Winograd paths
//! (`ops::conv_cudnn`, `ops::winograd`: `forward_in_form`, `backward_in_form`).
//!
//! A convolution of stride S, kernel K and padding P equals a stride-1, unpadded convolution
//! with kernel KS = ceil(K / S) over the input regrouped into S x S blocks:
//! `xs[n, (c*S + a)*S + b, I, J] = xpad[n, c, I*S + a, J*S + b]` of shape
//! (N, C*S*S, HO + KS - 1, WO + KS - 1), with the weights regrouped the same way and zero where
//! `U*S + a >= K` (kernels `s2d_*` in `kernels/im2col.cu`). The paper's conv1 (3 channels,
//! 11 x 11, stride 4) becomes a 48-channel 3 x 3 convolution: 19% more multiply-adds, but
//! channel counts and a kernel shape that cuDNN's tensor-core kernels handle well, where its
//! NCHW kernels for 3 input channels do not. Only the order of the sums changes (and zero terms
//! are added), so results agree with the direct convolution to rounding.
//!
//! [`s2d_shape`] says where it applies; `Gpu::space_to_depth` (`ALEXNET_CONV_S2D=off`) turns it
//! off. The CPU functions of the tests below mirror the kernels index for index.

use super::check_len;
use super::conv::{ConvGeom, ConvShape};
use crate::error::CudaError;
use crate::gpu::{grid_for, Gpu};
use crate::kernels::KernelFile;
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, PushKernelArg};

/// The stride-1 convolution that equals `s` in space-to-depth form, or `None` where the form
/// does not apply or pay: stride 1, a kernel smaller than the stride, or more than 1.5 times the
/// weights once the kernel is padded to a multiple of the stride (k3 s2 would be 1.8x).
pub fn s2d_shape(s: &ConvShape) -> Option<ConvShape> {
    let st = s.stride;
    if st < 2 || s.k < st {
        return None;
    }
    let ks = s.k.div_ceil(st);
    if 2 * (st * ks) * (st * ks) > 3 * s.k * s.k {
        return None;
    }
    Some(ConvShape {
        n: s.n,
        c: s.c * st * st,
        h: s.ho() + ks - 1,
        w: s.wo() + ks - 1,
        o: s.o,
        k: ks,
        stride: 1,
        pad: 0,
        groups: s.groups,
    })
}

/// Launches `kernel(src, dst, geom)` over `total` elements.
fn launch(
    gpu: &Gpu,
    kernel: &'static str,
    src: &CudaView<f32>,
    dst: &mut CudaViewMut<f32>,
    g: ConvGeom,
    total: usize,
) -> Result<(), CudaError> {
    super::idx32("space-to-depth", kernel, total)?;
    let Some(cfg) = grid_for(total as u64) else {
        return Ok(());
    };
    let f = gpu.function(KernelFile::Im2col, kernel)?;
    let mut l = gpu.stream.launch_builder(&f);
    l.arg(src).arg(dst).arg(&g);
    // SAFETY: the callers below check both buffers' lengths against the geometry, and idx32
    // the 32-bit indexing; the types match `kernel(const float*, float*, ConvGeom)`.
    unsafe { l.launch(cfg) }
        .map_err(CudaError::driver(kernel))
        .map(|_| ())
}

/// [`s2d_shape`], or an error where the form does not apply.
fn transformed(s: &ConvShape) -> Result<ConvShape, CudaError> {
    s2d_shape(s)
        .ok_or_else(|| CudaError::invalid("space-to-depth", format!("does not apply to {s:?}")))
}

/// Elements of the regrouped input of `s`.
fn input_len(s: &ConvShape) -> Result<usize, CudaError> {
    let t = transformed(s)?;
    Ok(t.n * t.c * t.h * t.w)
}

/// The geometry of `s` with `nb` set to `nb` (`ConvGeom::of` for one sample also checks that
/// one sample's column buffer, unused here, fits 32-bit indices: looser than any real limit).
fn geom(s: &ConvShape, nb: usize) -> Result<ConvGeom, CudaError> {
    let mut g = ConvGeom::of(s, 1)?;
    g.nb = super::u32_of("space-to-depth", "nb", nb)?;
    Ok(g)
}

/// The weight geometry: `nb` = O and `c` = input channels per group (see `s2d_weight`).
fn weight_geom(s: &ConvShape) -> Result<ConvGeom, CudaError> {
    let mut g = geom(s, s.o)?;
    g.c = super::u32_of("space-to-depth", "c/groups", s.c / s.groups.max(1))?;
    Ok(g)
}

/// x: (N, C, H, W) -> xs: (N, C*S*S, HS, WS).
fn input(
    gpu: &Gpu,
    s: &ConvShape,
    x: &CudaView<f32>,
    xs: &mut CudaViewMut<f32>,
) -> Result<(), CudaError> {
    let n = input_len(s)?;
    check_len("space-to-depth", "x", x.len(), s.n * s.c * s.h * s.w)?;
    check_len("space-to-depth", "xs", xs.len(), n)?;
    launch(gpu, "s2d_input", x, xs, geom(s, s.n)?, n)
}

/// The adjoint of [`input`]: dxs: (N, C*S*S, HS, WS) -> dx: (N, C, H, W) (overwritten).
fn input_grad(
    gpu: &Gpu,
    s: &ConvShape,
    dxs: &CudaView<f32>,
    dx: &mut CudaViewMut<f32>,
) -> Result<(), CudaError> {
    let n = s.n * s.c * s.h * s.w;
    check_len("space-to-depth", "dxs", dxs.len(), input_len(s)?)?;
    check_len("space-to-depth", "dx", dx.len(), n)?;
    launch(gpu, "s2d_input_grad", dxs, dx, geom(s, s.n)?, n)
}

/// w: (O, C/g, K, K) -> ws: (O, C/g*S*S, KS, KS), zero in the padding.
fn weight(
    gpu: &Gpu,
    s: &ConvShape,
    w: &CudaView<f32>,
    ws: &mut CudaViewMut<f32>,
) -> Result<(), CudaError> {
    let t = transformed(s)?;
    let n = t.o * t.kdim();
    check_len("space-to-depth", "w", w.len(), s.o * s.kdim())?;
    check_len("space-to-depth", "ws", ws.len(), n)?;
    launch(gpu, "s2d_weight", w, ws, weight_geom(s)?, n)
}

/// The weight gradient back: dws: (O, C/g*S*S, KS, KS) -> dw: (O, C/g, K, K) (overwritten).
fn weight_grad(
    gpu: &Gpu,
    s: &ConvShape,
    dws: &CudaView<f32>,
    dw: &mut CudaViewMut<f32>,
) -> Result<(), CudaError> {
    let t = transformed(s)?;
    let n = s.o * s.kdim();
    check_len("space-to-depth", "dws", dws.len(), t.o * t.kdim())?;
    check_len("space-to-depth", "dw", dw.len(), n)?;
    launch(gpu, "s2d_weight_grad", dws, dw, weight_geom(s)?, n)
}

/// The regrouped operands of a convolution run in space-to-depth form: input, input gradient,
/// weights and weight gradient, grown on demand.
#[derive(Default)]
pub struct S2dScratch {
    x: Option<CudaSlice<f32>>,
    dx: Option<CudaSlice<f32>>,
    w: Option<CudaSlice<f32>>,
    dw: Option<CudaSlice<f32>>,
}

/// The space-to-depth form of `s` where `gpu` runs strided convolutions that way
/// ([`Gpu::space_to_depth`] and an [`s2d_shape`]); `None`: `s` runs as it is.
pub(crate) fn s2d_for(gpu: &Gpu, s: &ConvShape) -> Option<ConvShape> {
    gpu.space_to_depth().then(|| s2d_shape(s)).flatten()
}

/// The forward of convolution `s` by `conv(shape, x, w)`: on `s` itself, or where [`s2d_for`]
/// gives a space-to-depth form, on that form through [`forward_via`]. The implementations that
/// run strided convolutions this way (cuDNN, Winograd) all dispatch here.
pub(crate) fn forward_in_form<R>(
    gpu: &Gpu,
    s: &ConvShape,
    x: &CudaView<f32>,
    w: &CudaView<f32>,
    sc: &mut S2dScratch,
    conv: impl FnOnce(&ConvShape, &CudaView<f32>, &CudaView<f32>) -> Result<R, CudaError>,
) -> Result<R, CudaError> {
    match s2d_for(gpu, s) {
        None => conv(s, x, w),
        Some(_) => forward_via(gpu, s, x, w, sc, conv),
    }
}

/// The gradients of convolution `s` by `conv(shape, (x, w), dx, dw)`: on `s` itself, or on its
/// space-to-depth form through [`backward_via`] where [`s2d_for`] gives one.
#[allow(clippy::type_complexity)]
pub(crate) fn backward_in_form(
    gpu: &Gpu,
    s: &ConvShape,
    (x, w): (&CudaView<f32>, &CudaView<f32>),
    dx: Option<&mut CudaViewMut<f32>>,
    dw: &mut CudaViewMut<f32>,
    sc: &mut S2dScratch,
    conv: impl FnOnce(
        &ConvShape,
        (&CudaView<f32>, &CudaView<f32>),
        Option<&mut CudaViewMut<f32>>,
        &mut CudaViewMut<f32>,
    ) -> Result<(), CudaError>,
) -> Result<(), CudaError> {
    match s2d_for(gpu, s) {
        None => conv(s, (x, w), dx, dw),
        Some(_) => backward_via(gpu, s, (x, w), dx, dw, sc, conv),
    }
}

/// The forward of the strided convolution `s` in its space-to-depth form t ([`s2d_shape`]):
/// x and w are regrouped into `sc`, then `conv(t, xs, ws)` runs the stride-1 convolution
/// (which writes y: the output is the same in both forms).
fn forward_via<R>(
    gpu: &Gpu,
    s: &ConvShape,
    x: &CudaView<f32>,
    w: &CudaView<f32>,
    sc: &mut S2dScratch,
    conv: impl FnOnce(&ConvShape, &CudaView<f32>, &CudaView<f32>) -> Result<R, CudaError>,
) -> Result<R, CudaError> {
    let (t, xs, ws) = regroup(gpu, s, (x, w), (&mut sc.x, &mut sc.w))?;
    conv(&t, &xs.as_view(), &ws.as_view())
}

/// x and w of the strided convolution `s` regrouped into the scratch slots `xs` and `ws`
/// (grown as needed): the space-to-depth form's shape t ([`s2d_shape`]) and its operands.
fn regroup<'a>(
    gpu: &Gpu,
    s: &ConvShape,
    (x, w): (&CudaView<f32>, &CudaView<f32>),
    (xs, ws): (
        &'a mut Option<CudaSlice<f32>>,
        &'a mut Option<CudaSlice<f32>>,
    ),
) -> Result<(ConvShape, &'a CudaSlice<f32>, &'a CudaSlice<f32>), CudaError> {
    let t = transformed(s)?;
    let xs = gpu.grow(xs, input_len(s)?, "space-to-depth input")?;
    let ws = gpu.grow(ws, t.o * t.kdim(), "space-to-depth weights")?;
    // x: (N,C,H,W) -> xs: (N,C*S*S,HS,WS); w: (O,C/g,K,K) -> ws: (O,C/g*S*S,KS,KS)
    input(gpu, s, x, &mut xs.as_view_mut())?;
    weight(gpu, s, w, &mut ws.as_view_mut())?;
    Ok((t, xs, ws))
}

/// The gradients of the strided convolution `s` in its space-to-depth form t: x and w are
/// regrouped into `sc` (the forward's copies are not kept: regrouping again costs one pass),
/// `conv(t, xs, ws, dxs, dws)` computes the stride-1 gradients (dxs only when `dx` is wanted),
/// and they are regrouped back into dx and dw (both overwritten).
#[allow(clippy::type_complexity)]
fn backward_via(
    gpu: &Gpu,
    s: &ConvShape,
    (x, w): (&CudaView<f32>, &CudaView<f32>),
    dx: Option<&mut CudaViewMut<f32>>,
    dw: &mut CudaViewMut<f32>,
    sc: &mut S2dScratch,
    conv: impl FnOnce(
        &ConvShape,
        (&CudaView<f32>, &CudaView<f32>),
        Option<&mut CudaViewMut<f32>>,
        &mut CudaViewMut<f32>,
    ) -> Result<(), CudaError>,
) -> Result<(), CudaError> {
    let (t, xs, ws) = regroup(gpu, s, (x, w), (&mut sc.x, &mut sc.w))?;
    let dws = gpu.grow(&mut sc.dw, t.o * t.kdim(), "space-to-depth weight gradient")?;
    let ops = (&xs.as_view(), &ws.as_view());
    let mut dwsv = dws.as_view_mut();
    match dx {
        Some(dx) => {
            let dxs = gpu.grow(&mut sc.dx, input_len(s)?, "space-to-depth input gradient")?;
            let mut dxs = dxs.as_view_mut();
            conv(&t, ops, Some(&mut dxs), &mut dwsv)?;
            // dxs: (N,C*S*S,HS,WS) -> dx: (N,C,H,W)
            input_grad(gpu, s, &dxs.as_view(), dx)?;
        }
        None => conv(&t, ops, None, &mut dwsv)?,
    }
    // dws: (O,C/g*S*S,KS,KS) -> dw: (O,C/g,K,K)
    weight_grad(gpu, s, &dws.as_view(), dw)
}

#[cfg(test)]
mod tests {
    //! The kernels' index maps, mirrored on the CPU and checked against the definition of the
    //! convolution (f64) and as adjoints; the CUDA kernels themselves are checked by
    //! `gpu-check` (the conv2d fixtures and the paper network through cuDNN).
    use super::*;

    fn shape(n: usize, c: usize, h: usize, w: usize, o: usize, k: usize) -> ConvShape {
        ConvShape {
            n,
            c,
            h,
            w,
            o,
            k,
            stride: 1,
            pad: 0,
            groups: 1,
        }
    }

    /// Direct convolution (f64). x: (N,C,H,W), w: (O,C/g,K,K) -> (N,O,HO,WO).
    fn conv(s: &ConvShape, x: &[f64], w: &[f64]) -> Vec<f64> {
        let (ho, wo, cg, og) = (s.ho(), s.wo(), s.c / s.groups, s.o / s.groups);
        let mut y = vec![0.0; s.n * s.o * ho * wo];
        for n in 0..s.n {
            for o in 0..s.o {
                let g = o / og;
                for i in 0..ho {
                    for j in 0..wo {
                        let mut acc = 0.0;
                        for c in 0..cg {
                            for u in 0..s.k {
                                for v in 0..s.k {
                                    let hh = (i * s.stride + u) as isize - s.pad as isize;
                                    let ww = (j * s.stride + v) as isize - s.pad as isize;
                                    if hh < 0 || ww < 0 || hh >= s.h as isize || ww >= s.w as isize
                                    {
                                        continue;
                                    }
                                    let xc = g * cg + c;
                                    acc += x
                                        [((n * s.c + xc) * s.h + hh as usize) * s.w + ww as usize]
                                        * w[((o * cg + c) * s.k + u) * s.k + v];
                                }
                            }
                        }
                        y[((n * s.o + o) * ho + i) * wo + j] = acc;
                    }
                }
            }
        }
        y
    }

    // Mirrors of the kernels (same loops over the destination index).
    fn s2d_input(s: &ConvShape, x: &[f64]) -> Vec<f64> {
        let t = s2d_shape(s).unwrap();
        let st = s.stride;
        let mut xs = vec![0.0; t.n * t.c * t.h * t.w];
        for (idx, out) in xs.iter_mut().enumerate() {
            let jj = idx % t.w;
            let r = idx / t.w;
            let ii = r % t.h;
            let r = r / t.h;
            let (cc, n) = (r % t.c, r / t.c);
            let (b, a, ch) = (cc % st, (cc / st) % st, cc / (st * st));
            let hh = (ii * st + a) as isize - s.pad as isize;
            let ww = (jj * st + b) as isize - s.pad as isize;
            if hh >= 0 && ww >= 0 && hh < s.h as isize && ww < s.w as isize {
                *out = x[((n * s.c + ch) * s.h + hh as usize) * s.w + ww as usize];
            }
        }
        xs
    }

    fn s2d_input_grad(s: &ConvShape, dxs: &[f64]) -> Vec<f64> {
        let t = s2d_shape(s).unwrap();
        let st = s.stride;
        let mut dx = vec![0.0; s.n * s.c * s.h * s.w];
        for (idx, out) in dx.iter_mut().enumerate() {
            let w = idx % s.w;
            let r = idx / s.w;
            let h = r % s.h;
            let r = r / s.h;
            let (ch, n) = (r % s.c, r / s.c);
            let (hp, wp) = (h + s.pad, w + s.pad);
            let (ii, jj) = (hp / st, wp / st);
            if ii < t.h && jj < t.w {
                let cc = (ch * st + hp % st) * st + wp % st;
                *out = dxs[((n * t.c + cc) * t.h + ii) * t.w + jj];
            }
        }
        dx
    }

    fn s2d_weight(s: &ConvShape, w: &[f64]) -> Vec<f64> {
        let t = s2d_shape(s).unwrap();
        let (st, k, ks, cg) = (s.stride, s.k, t.k, s.c / s.groups);
        let cs = cg * st * st;
        let mut ws = vec![0.0; t.o * t.kdim()];
        for (idx, out) in ws.iter_mut().enumerate() {
            let vv = idx % ks;
            let r = idx / ks;
            let uu = r % ks;
            let r = r / ks;
            let (cc, o) = (r % cs, r / cs);
            let (b, a, ch) = (cc % st, (cc / st) % st, cc / (st * st));
            let (u, v) = (uu * st + a, vv * st + b);
            if u < k && v < k {
                *out = w[((o * cg + ch) * k + u) * k + v];
            }
        }
        ws
    }

    fn s2d_weight_grad(s: &ConvShape, dws: &[f64]) -> Vec<f64> {
        let t = s2d_shape(s).unwrap();
        let (st, k, ks, cg) = (s.stride, s.k, t.k, s.c / s.groups);
        let cs = cg * st * st;
        let mut dw = vec![0.0; s.o * s.kdim()];
        for (idx, out) in dw.iter_mut().enumerate() {
            let v = idx % k;
            let r = idx / k;
            let u = r % k;
            let r = r / k;
            let (ch, o) = (r % cg, r / cg);
            let cc = (ch * st + u % st) * st + v % st;
            *out = dws[((o * cs + cc) * ks + u / st) * ks + v / st];
        }
        dw
    }

    fn draw(n: usize, seed: u64) -> Vec<f64> {
        let mut z = seed;
        (0..n)
            .map(|_| {
                z = z
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((z >> 33) % 2001) as f64 / 1000.0 - 1.0
            })
            .collect()
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// (shape, stride, pad, groups) cases: the paper's conv1 at a small size, the two strided
    /// conv fixtures' geometry (floor mode leaves rows and columns no output reads), k = S.
    fn cases() -> Vec<ConvShape> {
        let mut out = Vec::new();
        for (mut s, st, p, g) in [
            (shape(2, 3, 35, 35, 8, 11), 4, 2, 1),
            (shape(2, 3, 30, 27, 4, 11), 4, 2, 1),
            (shape(2, 6, 9, 13, 9, 4), 2, 1, 3),
            (shape(1, 4, 8, 7, 6, 2), 2, 0, 2),
            (shape(1, 2, 10, 10, 3, 5), 3, 1, 1),
        ] {
            s.stride = st;
            s.pad = p;
            s.groups = g;
            out.push(s);
        }
        out
    }

    #[test]
    fn space_to_depth_convolution_equals_the_strided_one() {
        for s in cases() {
            let t = s2d_shape(&s).expect("applies");
            assert_eq!((t.ho(), t.wo()), (s.ho(), s.wo()), "{s:?}");
            let x = draw(s.n * s.c * s.h * s.w, 1);
            let w = draw(s.o * s.kdim(), 2);
            let y = conv(&s, &x, &w);
            let ys = conv(&t, &s2d_input(&s, &x), &s2d_weight(&s, &w));
            let err = y
                .iter()
                .zip(&ys)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-12, "{s:?}: max difference {err}");
        }
    }

    #[test]
    fn space_to_depth_gradients_are_the_adjoints() {
        for s in cases() {
            let t = s2d_shape(&s).expect("applies");
            // <s2d(x), r> = <x, s2d_grad(r)> for the input and the weights.
            let x = draw(s.n * s.c * s.h * s.w, 3);
            let r = draw(t.n * t.c * t.h * t.w, 4);
            let (l, rr) = (
                dot(&s2d_input(&s, &x), &r),
                dot(&x, &s2d_input_grad(&s, &r)),
            );
            assert!(
                (l - rr).abs() < 1e-9 * l.abs().max(1.0),
                "{s:?}: {l} vs {rr}"
            );
            let w = draw(s.o * s.kdim(), 5);
            let r = draw(t.o * t.kdim(), 6);
            let (l, rr) = (
                dot(&s2d_weight(&s, &w), &r),
                dot(&w, &s2d_weight_grad(&s, &r)),
            );
            assert!(
                (l - rr).abs() < 1e-9 * l.abs().max(1.0),
                "{s:?}: {l} vs {rr}"
            );
            // Every weight appears exactly once: the round trip is the identity.
            assert_eq!(s2d_weight_grad(&s, &s2d_weight(&s, &w)), w);
        }
    }

    #[test]
    fn space_to_depth_applies_where_it_pays() {
        let mut s = shape(128, 3, 224, 224, 96, 11);
        (s.stride, s.pad) = (4, 2);
        let t = s2d_shape(&s).expect("the paper's conv1");
        assert_eq!((t.c, t.h, t.w, t.k, t.stride, t.pad), (48, 57, 57, 3, 1, 0));
        s.stride = 1;
        assert!(s2d_shape(&s).is_none(), "stride 1");
        let mut k3 = shape(2, 6, 9, 13, 9, 3);
        k3.stride = 2;
        assert!(s2d_shape(&k3).is_none(), "k3 s2: 16/9 of the weights");
        let mut k1 = shape(2, 6, 9, 13, 9, 1);
        k1.stride = 2;
        assert!(s2d_shape(&k1).is_none(), "kernel smaller than the stride");
    }
}
