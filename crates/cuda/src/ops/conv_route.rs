//! Which implementation runs a convolution call: cuDNN, Winograd or im2col + cuBLAS.
//!
//! With a fixed [`ConvImpl`] the choice follows from the implementation, the precision and the
//! shape ([`Fits::fixed`]). With [`ConvImpl::Timed`] (`ALEXNET_CONV=timed`, `--conv timed`) each
//! call of each shape (forward; backward with the input gradient; backward without it, as
//! conv1's) times every implementation that can run it on its first use, on the real operands,
//! and keeps the fastest, as PyTorch's `cudnn.benchmark` does among cuDNN's algorithms, here
//! among our three implementations too: a layer can run Winograd forward and cuDNN backward
//! when that was measured faster. The candidates ([`Fits::candidates`]): cuDNN where it loads,
//! in NCHW and in NHWC for f32 and TF32 (whatever the layout setting), in NHWC for bf16 (and
//! TF32 in NCHW for bf16's space-to-depth conv1, as [`ConvImpl::Auto`] runs it with NCHW
//! convolutions); Winograd where the shape has a Winograd form; im2col always.
//!
//! Every candidate computes the same convolution within its precision's documented bound (each
//! has its own parity checks), but they round differently, and the timing can pick differently
//! in another process: [`conv_picks`] lists the picks for a training run to keep and
//! [`pin_conv_picks`] makes a resumed run take them again (`RUN/conv_picks.json`), so a timed
//! run resumes bit-identically. The picks of a device are forgotten when one of its settings
//! changes (layout, space-to-depth, tile side, algorithm search, implementation).

use super::conv::ConvShape;
use crate::error::CudaError;
use crate::gpu::{cudnn_available, ConvImpl, ConvLayout, Gpu, Precision};
use std::time::Instant;

/// One implementation of a convolution call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// cuDNN at this precision (TF32 for bf16's space-to-depth convolutions in NCHW), on the
    /// network's NCHW buffers or on NHWC copies.
    Cudnn { prec: Precision, nhwc: bool },
    /// Our Winograd transforms around batched cuBLAS GEMMs (`ops::winograd`).
    Winograd,
    /// Our im2col / col2im around cuBLAS GEMMs.
    Im2col,
}

impl Route {
    /// `cudnn` (NCHW), `cudnn-nhwc`, `winograd` or `im2col` (the name a run's
    /// `conv_picks.json` keeps).
    pub fn name(self) -> &'static str {
        match self {
            Route::Cudnn { nhwc: false, .. } => "cudnn",
            Route::Cudnn { nhwc: true, .. } => "cudnn-nhwc",
            Route::Winograd => "winograd",
            Route::Im2col => "im2col",
        }
    }
}

/// The three calls of a convolution, timed separately by [`ConvImpl::Timed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConvCall {
    Forward,
    /// Backward with the input gradient.
    Backward,
    /// Backward without the input gradient (the first layer's).
    BackwardNoDx,
}

impl ConvCall {
    pub const ALL: [ConvCall; 3] = [
        ConvCall::Forward,
        ConvCall::Backward,
        ConvCall::BackwardNoDx,
    ];

    /// `forward`, `backward` or `backward-no-dx`.
    pub fn name(self) -> &'static str {
        match self {
            ConvCall::Forward => "forward",
            ConvCall::Backward => "backward",
            ConvCall::BackwardNoDx => "backward-no-dx",
        }
    }

    /// Parses [`ConvCall::name`].
    pub fn parse(s: &str) -> Result<ConvCall, CudaError> {
        ConvCall::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                CudaError::invalid(
                    "conv pick",
                    format!("call {s:?}: expected forward, backward or backward-no-dx"),
                )
            })
    }
}

/// What the cached picks of a device are keyed by.
pub(crate) type PickKey = (ConvShape, Precision, ConvCall);

/// A pick on a device: the implementation's name ([`Route::name`]) and the candidates' timed
/// milliseconds (left out where a candidate failed; as the run folder kept them for a pinned
/// pick).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Picked {
    pub conv: &'static str,
    pub times_ms: Vec<(&'static str, f64)>,
    /// The candidates whose timing failed, with the error (left out of the pick).
    pub failed: Vec<(&'static str, String)>,
    /// Taken from a run folder's `conv_picks.json` ([`pin_conv_picks`]), not timed here.
    pub pinned: bool,
}

/// The names a pick may have, as [`Route::name`] gives them.
const ROUTE_NAMES: [&str; 4] = ["cudnn", "cudnn-nhwc", "winograd", "im2col"];

/// `name` as one of [`ROUTE_NAMES`], or an error naming them.
fn route_name(name: &str) -> Result<&'static str, CudaError> {
    ROUTE_NAMES.into_iter().find(|c| *c == name).ok_or_else(|| {
        CudaError::invalid(
            "conv pick",
            format!("conv {name:?}: expected cudnn, cudnn-nhwc, winograd or im2col"),
        )
    })
}

/// What decides the implementations open to one convolution on a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fits {
    /// libcudnn loads.
    pub cudnn: bool,
    /// The convolution runs in space-to-depth form on cuDNN (a strided one, with
    /// [`Gpu::space_to_depth`] on).
    pub s2d: bool,
    /// The layout setting of cuDNN convolutions ([`Gpu::conv_layout`]; fixed routes only).
    pub layout: ConvLayout,
    /// The shape has a Winograd form (`ops::winograd::winograd_shape`).
    pub winograd: bool,
}

impl Fits {
    /// The flags of shape `s` at precision `prec` on `gpu`.
    pub fn of(gpu: &Gpu, s: &ConvShape) -> Fits {
        let s2d_on = gpu.space_to_depth();
        Fits {
            cudnn: cudnn_available(),
            s2d: super::space_to_depth::s2d_for(gpu, s).is_some(),
            layout: gpu.conv_layout(),
            winograd: super::winograd::winograd_shape(s, s2d_on).is_some(),
        }
    }

    /// The implementation under a fixed `ci` (not [`ConvImpl::Timed`], for which this is its
    /// fallback: im2col).
    pub fn fixed(self, ci: ConvImpl, prec: Precision) -> Route {
        let nhwc_for = |p| self.layout.nhwc_for(p);
        if let Some(p) = ci.cudnn_precision(prec, self.s2d, nhwc_for(prec)) {
            return Route::Cudnn {
                prec: p,
                nhwc: nhwc_for(p),
            };
        }
        if ci == ConvImpl::Winograd && self.winograd {
            return Route::Winograd;
        }
        Route::Im2col
    }

    /// The implementations [`ConvImpl::Timed`] times, in the order they are tried (ties go to
    /// the earlier one), whatever the layout setting: where libcudnn loads, cuDNN in NCHW and
    /// in NHWC for f32 and TF32, in NHWC for bf16 (its NCHW kernels measured 5-20x slower) and
    /// for bf16's space-to-depth conv1 also in TF32 on NCHW (as [`ConvImpl::Auto`] runs it with
    /// NCHW convolutions); Winograd where the shape has a Winograd form; im2col.
    pub fn candidates(self, prec: Precision) -> Vec<Route> {
        let mut out = Vec::new();
        if self.cudnn {
            let c = |prec, nhwc| Route::Cudnn { prec, nhwc };
            match prec {
                Precision::Bf16 => {
                    out.push(c(Precision::Bf16, true));
                    if self.s2d {
                        out.push(c(Precision::Tf32, false));
                    }
                }
                p => out.extend([c(p, false), c(p, true)]),
            }
        }
        if self.winograd {
            out.push(Route::Winograd);
        }
        out.push(Route::Im2col);
        out
    }
}

/// Timed runs of each candidate after its warm-up run; the median counts.
pub const TIMED_RUNS: usize = 3;

/// The candidate with the least `measure`d time (seconds), ties to the earlier one. A
/// candidate whose measurement fails is left out (one without an algorithm that fits cuDNN's
/// workspace, a workspace that cannot be allocated); when all fail, the first error (a later
/// one may only echo it: a sticky device error fails every candidate after it). Returns the
/// pick and each candidate's time, or its error as text where it failed.
pub fn fastest<E>(
    cands: &[Route],
    mut measure: impl FnMut(Route) -> Result<f64, E>,
) -> Result<(Route, Vec<Result<f64, String>>), E>
where
    E: From<CudaError> + std::fmt::Display,
{
    let mut best: Option<(Route, f64)> = None;
    let mut first_err = None;
    let mut times = Vec::with_capacity(cands.len());
    for &r in cands {
        match measure(r) {
            Ok(t) => {
                times.push(Ok(t));
                if best.is_none_or(|(_, b)| t < b) {
                    best = Some((r, t));
                }
            }
            Err(e) => {
                times.push(Err(e.to_string()));
                first_err.get_or_insert(e);
            }
        }
    }
    match (best, first_err) {
        (Some((r, _)), _) => Ok((r, times)),
        (None, Some(e)) => Err(e),
        (None, None) => Err(CudaError::invalid("conv timed", "no candidate implementation").into()),
    }
}

/// The median of `t` (the upper one for an even count); 0 for none.
fn median(mut t: Vec<f64>) -> f64 {
    t.sort_by(f64::total_cmp);
    t.get(t.len() / 2).copied().unwrap_or(0.0)
}

/// Seconds `run(r)` takes on the device: one warm-up run (plans, algorithm searches, scratch
/// buffers, kernel loading), then the median of [`TIMED_RUNS`] synchronised runs.
fn time_route(
    gpu: &Gpu,
    r: Route,
    run: &mut dyn FnMut(Route) -> Result<(), CudaError>,
) -> Result<f64, CudaError> {
    run(r)?;
    gpu.synchronize()?;
    let mut t = Vec::with_capacity(TIMED_RUNS);
    for _ in 0..TIMED_RUNS {
        let t0 = Instant::now();
        run(r)?;
        gpu.synchronize()?;
        t.push(t0.elapsed().as_secs_f64());
    }
    Ok(median(t))
}

/// The implementation of `call` for shape `s` at precision `prec`. Under
/// [`ConvImpl::Timed`] the first call of a (shape, precision, call) times the [`Fits::candidates`]
/// with `run` (which must overwrite its outputs: the caller runs the pick once more after) and
/// keeps the fastest; pinned or earlier picks are taken as they are (when still a candidate).
pub fn route(
    gpu: &Gpu,
    prec: Precision,
    s: &ConvShape,
    call: ConvCall,
    run: &mut dyn FnMut(Route) -> Result<(), CudaError>,
) -> Result<Route, CudaError> {
    let (ci, fits) = (gpu.conv_impl(), Fits::of(gpu, s));
    if ci != ConvImpl::Timed {
        return Ok(fits.fixed(ci, prec));
    }
    let key = (*s, prec, call);
    let cands = fits.candidates(prec);
    if let Some(name) = gpu.conv_pick(&key) {
        if let Some(&r) = cands.iter().find(|r| r.name() == name) {
            return Ok(r);
        }
    }
    if gpu.capturing() {
        // Timing synchronises the stream, which a capture forbids; the direct pass before a
        // capture makes every pick of its shapes, so this only follows a setting change.
        return Err(gpu.refuse_in_capture(&format!("timing conv {s:?} {}", call.name())));
    }
    let (pick, times) = fastest(&cands, |r| time_route(gpu, r, run))?;
    let (mut times_ms, mut failed) = (Vec::new(), Vec::new());
    for (r, t) in cands.iter().zip(times) {
        match t {
            Ok(t) => times_ms.push((r.name(), t * 1e3)),
            Err(e) => failed.push((r.name(), e)),
        }
    }
    let picked = Picked {
        conv: pick.name(),
        times_ms,
        failed,
        pinned: false,
    };
    gpu.set_conv_pick(key, picked);
    Ok(pick)
}

/// [`route`], then `run` on the implementation it gives. When that fails with a pick pinned
/// from a run folder (made by another process, maybe on another card or library), the error
/// says so and how to time again (the failure may have another cause: the hint says "if").
pub fn route_and_run(
    gpu: &Gpu,
    prec: Precision,
    s: &ConvShape,
    call: ConvCall,
    run: &mut dyn FnMut(Route) -> Result<(), CudaError>,
) -> Result<(), CudaError> {
    let r = route(gpu, prec, s, call, run)?;
    run(r).map_err(|e| match gpu.conv_pick_pinned(&(*s, prec, call)) {
        true => CudaError::invalid(
            "conv pick",
            format!(
                "{e} ({} {} was pinned from the run folder's conv_picks.json; if it cannot run \
                 here, delete that file to time the implementations again)",
                call.name(),
                r.name()
            ),
        ),
        false => e,
    })
}

/// One timed pick as a run folder keeps it (`conv_picks.json`, see the module docs).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConvPick {
    /// The convolution: n, c, h, w, o, k, stride, pad, groups.
    pub shape: [usize; 9],
    /// `f32`, `tf32` or `bf16`.
    pub precision: String,
    /// `forward`, `backward` or `backward-no-dx` ([`ConvCall::name`]).
    pub call: String,
    /// `cudnn`, `cudnn-nhwc`, `winograd` or `im2col` ([`Route::name`]).
    pub conv: String,
    /// Each candidate's timed milliseconds (median of the timed runs), for people; none for a
    /// candidate that failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub times_ms: Vec<(String, f64)>,
    /// The candidates whose timing failed, with the error, for people.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<(String, String)>,
}

impl ConvPick {
    /// The key and the pick as a device keeps them, checked.
    fn key(&self) -> Result<(PickKey, Picked), CudaError> {
        let shape = ConvShape::from_array(self.shape)?;
        let call = ConvCall::parse(&self.call)?;
        let times_ms = self
            .times_ms
            .iter()
            .map(|(n, t)| Ok((route_name(n)?, *t)))
            .collect::<Result<_, CudaError>>()?;
        let failed = self
            .failed
            .iter()
            .map(|(n, e)| Ok((route_name(n)?, e.clone())))
            .collect::<Result<_, CudaError>>()?;
        let picked = Picked {
            conv: route_name(&self.conv)?,
            times_ms,
            failed,
            pinned: true,
        };
        Ok(((shape, Precision::parse(&self.precision)?, call), picked))
    }

    fn of((s, p, call): &PickKey, picked: &Picked) -> ConvPick {
        ConvPick {
            shape: s.to_array(),
            precision: p.name().into(),
            call: call.name().into(),
            conv: picked.conv.into(),
            times_ms: picked
                .times_ms
                .iter()
                .map(|(n, t)| (n.to_string(), *t))
                .collect(),
            failed: picked
                .failed
                .iter()
                .map(|(n, e)| (n.to_string(), e.clone()))
                .collect(),
        }
    }
}

/// Every pick of `gpu` so far (timed or pinned), sorted.
pub fn conv_picks(gpu: &Gpu) -> Vec<ConvPick> {
    let mut out: Vec<ConvPick> = gpu
        .conv_picks_snapshot()
        .iter()
        .map(|(k, c)| ConvPick::of(k, c))
        .collect();
    out.sort_by(|a, b| (a.shape, &a.precision, &a.call).cmp(&(b.shape, &b.precision, &b.call)));
    out
}

/// Makes `gpu` take `picks` instead of timing (a pick whose implementation cannot run the
/// shape under the device's settings is timed again); an invalid pick is an error.
pub fn pin_conv_picks(gpu: &Gpu, picks: &[ConvPick]) -> Result<(), CudaError> {
    for p in picks {
        let (key, picked) = p.key()?;
        gpu.set_conv_pick(key, picked);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fastest_takes_the_least_time_and_skips_failures() {
        let cudnn = Route::Cudnn {
            prec: Precision::Tf32,
            nhwc: false,
        };
        let c = [cudnn, Route::Winograd, Route::Im2col];
        let t = |r: Route| -> Result<f64, CudaError> {
            Ok(match r {
                Route::Cudnn { .. } => 3.0,
                Route::Winograd => 1.0,
                Route::Im2col => 2.0,
            })
        };
        let (pick, times) = fastest(&c, t).unwrap();
        assert_eq!(pick, Route::Winograd);
        assert_eq!(times, vec![Ok(3.0), Ok(1.0), Ok(2.0)]);
        // Ties go to the earlier candidate.
        assert_eq!(fastest(&c, |_| Ok::<_, CudaError>(1.0)).unwrap().0, c[0]);
        // A failing candidate is left out, even the fastest-looking one.
        let fails = |r: Route| match r {
            Route::Winograd => Err(CudaError::invalid("t", "no workspace")),
            r => t(r),
        };
        let (pick, times) = fastest(&c, fails).unwrap();
        assert_eq!(pick, Route::Im2col);
        assert!(times[1].as_ref().unwrap_err().contains("no workspace"));
        // All failing: the first error (later ones may only echo a sticky device error).
        let all = |r: Route| Err::<f64, _>(CudaError::invalid("t", r.name()));
        let e = fastest(&c, all).unwrap_err().to_string();
        assert!(e.contains("cudnn") && !e.contains("im2col"), "{e}");
        assert!(fastest::<CudaError>(&[], |_| Ok(0.0)).is_err());
    }

    #[test]
    fn fixed_routes_and_candidates() {
        use ConvImpl::*;
        use Precision::*;
        let f = |cudnn, s2d, layout, winograd| Fits {
            cudnn,
            s2d,
            layout,
            winograd,
        };
        let cd = |prec, nhwc| Route::Cudnn { prec, nhwc };
        let (auto, nchw, nhwc) = (ConvLayout::Auto, ConvLayout::Nchw, ConvLayout::Nhwc);
        // conv2-like (Winograd form, no space-to-depth), cuDNN loads, auto layout.
        let conv2 = f(true, false, auto, true);
        assert_eq!(conv2.fixed(Auto, Tf32), cd(Tf32, false));
        assert_eq!(conv2.fixed(Auto, Bf16), cd(Bf16, true));
        assert_eq!(conv2.fixed(Auto, F32), Route::Im2col);
        assert_eq!(conv2.fixed(Cudnn, F32), cd(F32, false));
        assert_eq!(f(true, false, nhwc, true).fixed(Cudnn, F32), cd(F32, true));
        assert_eq!(conv2.fixed(Winograd, F32), Route::Winograd);
        assert_eq!(conv2.fixed(Im2col, Tf32), Route::Im2col);
        assert_eq!(conv2.fixed(Timed, Tf32), Route::Im2col);
        // bf16 with NCHW convolutions: im2col, except conv1 in space-to-depth form on cuDNN
        // in TF32, in NCHW.
        assert_eq!(f(true, false, nchw, true).fixed(Auto, Bf16), Route::Im2col);
        assert_eq!(f(true, true, nchw, true).fixed(Auto, Bf16), cd(Tf32, false));
        // Timed tries both layouts for f32 and TF32, whatever the setting.
        for lay in [auto, nchw, nhwc] {
            assert_eq!(
                f(true, false, lay, true).candidates(F32),
                vec![
                    cd(F32, false),
                    cd(F32, true),
                    Route::Winograd,
                    Route::Im2col
                ]
            );
        }
        // No Winograd form: Winograd falls back to im2col and is no candidate.
        let fc_like = f(true, false, auto, false);
        assert_eq!(fc_like.fixed(Winograd, F32), Route::Im2col);
        assert_eq!(
            fc_like.candidates(Tf32),
            vec![cd(Tf32, false), cd(Tf32, true), Route::Im2col]
        );
        // No libcudnn: no cuDNN candidate.
        assert_eq!(
            f(false, false, auto, true).candidates(Tf32),
            vec![Route::Winograd, Route::Im2col]
        );
        // bf16: cuDNN in NHWC, and for the space-to-depth conv1 also TF32 in NCHW.
        assert_eq!(
            f(true, false, nchw, true).candidates(Bf16),
            vec![cd(Bf16, true), Route::Winograd, Route::Im2col]
        );
        assert_eq!(
            f(true, true, auto, true).candidates(Bf16),
            vec![
                cd(Bf16, true),
                cd(Tf32, false),
                Route::Winograd,
                Route::Im2col
            ]
        );
        // Names: the layout is part of a cuDNN pick.
        assert_eq!(cd(Tf32, false).name(), "cudnn");
        assert_eq!(cd(Bf16, true).name(), "cudnn-nhwc");
    }

    #[test]
    fn median_of_timed_runs() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![5.0, 1.0, 9.0, 2.0]), 5.0);
        assert_eq!(median(Vec::new()), 0.0);
    }

    #[test]
    fn picks_round_trip_and_bad_ones_are_refused() {
        let s = ConvShape {
            n: 128,
            c: 96,
            h: 27,
            w: 27,
            o: 256,
            k: 5,
            stride: 1,
            pad: 2,
            groups: 2,
        };
        let key = (s, Precision::Bf16, ConvCall::BackwardNoDx);
        let picked = Picked {
            conv: "winograd",
            times_ms: vec![("cudnn-nhwc", 0.61), ("winograd", 0.42)],
            failed: vec![("im2col", "out of memory".into())],
            pinned: true,
        };
        let p = ConvPick::of(&key, &picked);
        assert_eq!(p.call, "backward-no-dx");
        assert_eq!(p.precision, "bf16");
        assert_eq!(p.times_ms[1], ("winograd".to_string(), 0.42));
        assert_eq!(p.key().unwrap(), (key, picked.clone()));
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<ConvPick>(&text).unwrap(), p);
        // A pick without times (none kept) reads back, and writes no times field.
        let bare = ConvPick {
            times_ms: Vec::new(),
            ..p.clone()
        };
        let text = serde_json::to_string(&bare).unwrap();
        assert!(!text.contains("times_ms"), "{text}");
        assert_eq!(serde_json::from_str::<ConvPick>(&text).unwrap(), bare);
        for bad in [
            ConvPick {
                conv: "fft".into(),
                ..p.clone()
            },
            ConvPick {
                times_ms: vec![("fft".into(), 1.0)],
                ..p.clone()
            },
            ConvPick {
                call: "sideways".into(),
                ..p.clone()
            },
            ConvPick {
                precision: "fp8".into(),
                ..p.clone()
            },
            ConvPick {
                shape: [128, 96, 27, 27, 256, 5, 1, 2, 7],
                ..p.clone()
            },
        ] {
            assert!(bad.key().is_err(), "{bad:?}");
        }
        let nhwc = ConvPick {
            conv: "cudnn-nhwc".into(),
            ..p.clone()
        };
        assert_eq!(nhwc.key().unwrap().1.conv, "cudnn-nhwc");
        for c in ConvCall::ALL {
            assert_eq!(ConvCall::parse(c.name()).unwrap(), c);
        }
    }
}
