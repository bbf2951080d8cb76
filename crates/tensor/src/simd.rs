//! Run-time CPU-feature dispatch for the layers' own element-wise loops (LRN, max-pool, im2col,
//! ReLU, ...).
//!
//! The release build targets baseline x86-64 (SSE2) so that one binary runs everywhere; the
//! gemm crate picks its AVX-512 / AVX2 kernels at run time, but our own loops would stay at
//! 4-wide SSE2. `multiversion!` compiles a loop nest three times, for x86-64-v4 (AVX-512), v3
//! (AVX2 + FMA) and the baseline, and each call runs the widest copy the CPU supports. (A
//! closure run inside a `#[target_feature]` function is not enough: LLVM does not inline a
//! large closure there, so it would stay SSE2.)
//!
//! Results do not depend on the level: Rust never contracts `a * b + c` into an FMA, and the
//! loops use only IEEE-exact operations (add, mul, div, sqrt, max, compares), so every level
//! computes the same bits.

use std::sync::atomic::{AtomicU8, Ordering};

/// Which instruction-set level the CPU offers (probed once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Baseline: SSE2.
    Baseline,
    /// x86-64-v3: AVX2, FMA, BMI1/2.
    V3,
    /// x86-64-v4: v3 plus AVX-512 F/BW/CD/DQ/VL.
    V4,
}

/// 0 = not probed yet, else `Level as u8 + 1`.
static LEVEL: AtomicU8 = AtomicU8::new(0);

/// The level `multiversion!` functions dispatch to on this CPU. `ALEXNET_SIMD=baseline`, `v3`
/// or `v4` caps it (to compare levels); none means the widest the CPU has. Any other value is
/// reported by [`check_env`] (the `alexnet` binary calls it at start) and otherwise ignored.
pub fn level() -> Level {
    match LEVEL.load(Ordering::Relaxed) {
        1 => Level::Baseline,
        2 => Level::V3,
        3 => Level::V4,
        _ => {
            let l = capped(detect(), env_cap().ok().flatten().unwrap_or(Level::V4));
            LEVEL.store(l as u8 + 1, Ordering::Relaxed);
            l
        }
    }
}

/// Parses an `ALEXNET_SIMD` value: `baseline`, `v3` or `v4`; empty means no cap.
pub fn parse_cap(v: &str) -> Result<Option<Level>, String> {
    match v {
        "" => Ok(None),
        "baseline" => Ok(Some(Level::Baseline)),
        "v3" => Ok(Some(Level::V3)),
        "v4" => Ok(Some(Level::V4)),
        other => Err(format!(
            "ALEXNET_SIMD={other:?}: expected baseline, v3 or v4 (or unset for the widest)"
        )),
    }
}

/// The cap `ALEXNET_SIMD` asks for (`None` when unset).
fn env_cap() -> Result<Option<Level>, String> {
    match std::env::var("ALEXNET_SIMD") {
        Ok(v) => parse_cap(&v),
        Err(_) => Ok(None),
    }
}

/// Checks `ALEXNET_SIMD`: a one-line error for a value [`level`] would ignore.
pub fn check_env() -> Result<(), String> {
    env_cap().map(|_| ())
}

/// The widest level both the CPU (`detected`) and the cap allow.
fn capped(detected: Level, cap: Level) -> Level {
    match (detected, cap) {
        (Level::V4, Level::V4) => Level::V4,
        (Level::V4 | Level::V3, Level::V4 | Level::V3) => Level::V3,
        _ => Level::Baseline,
    }
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Level {
    let v3 = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("bmi1")
        && is_x86_feature_detected!("bmi2");
    let v4 = v3
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512cd")
        && is_x86_feature_detected!("avx512dq")
        && is_x86_feature_detected!("avx512vl");
    if v4 {
        Level::V4
    } else if v3 {
        Level::V3
    } else {
        Level::Baseline
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Level {
    Level::Baseline
}

/// Caps the level `multiversion!` functions dispatch to (for tests and comparisons); a level
/// above what the CPU has is lowered to what it has. Returns the level now in force.
pub fn set_level(cap: Level) -> Level {
    let l = capped(detect(), cap);
    LEVEL.store(l as u8 + 1, Ordering::Relaxed);
    l
}

/// Defines a function whose body is compiled three times, for x86-64-v4 (AVX-512), v3 (AVX2 +
/// FMA) and the baseline, and dispatches on [`level()`] at each call. Calls are cheap (one
/// relaxed load); use it for a loop nest over a plane or a sample, not per element. Helpers
/// the body calls should be `#[inline(always)]` (or small) so that they are compiled inside
/// each copy. Arguments must be plain identifiers; at most one generic type parameter.
///
/// ```
/// alexnet_tensor::multiversion! {
///     /// y = max(x, 0)
///     pub fn relu_into(x: &[f32], y: &mut [f32]) {
///         for (o, &i) in y.iter_mut().zip(x) {
///             *o = i.max(0.0);
///         }
///     }
/// }
/// let mut y = [0.0; 3];
/// relu_into(&[-1.0, 0.5, 2.0], &mut y);
/// assert_eq!(y, [0.0, 0.5, 2.0]);
/// ```
#[macro_export]
macro_rules! multiversion {
    (
        $(#[$attr:meta])*
        $vis:vis fn $name:ident $(< $g:ident : $bound:path >)?
            ( $($arg:ident : $ty:ty),* $(,)? ) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$attr])*
        $vis fn $name $(< $g: $bound >)? ( $($arg: $ty),* ) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            #[allow(clippy::too_many_arguments)]
            #[target_feature(
                enable = "avx2,fma,bmi1,bmi2,avx512f,avx512bw,avx512cd,avx512dq,avx512vl"
            )]
            fn v4 $(< $g: $bound >)? ( $($arg: $ty),* ) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[allow(clippy::too_many_arguments)]
            #[target_feature(enable = "avx2,fma,bmi1,bmi2")]
            fn v3 $(< $g: $bound >)? ( $($arg: $ty),* ) $(-> $ret)? $body
            #[allow(clippy::too_many_arguments)]
            #[inline(always)]
            fn base $(< $g: $bound >)? ( $($arg: $ty),* ) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            match $crate::simd::level() {
                // SAFETY: level() returns V4 only when the CPU reports every feature v4
                // enables (probed with is_x86_feature_detected!).
                $crate::simd::Level::V4 => return unsafe { v4 $(::< $g >)? ( $($arg),* ) },
                // SAFETY: as above, for the features v3 enables.
                $crate::simd::Level::V3 => return unsafe { v3 $(::< $g >)? ( $($arg),* ) },
                $crate::simd::Level::Baseline => {}
            }
            base $(::< $g >)? ( $($arg),* )
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::multiversion! {
        /// An LRN-like loop: squares, sums, sqrt, division.
        fn lrn_like(x: &[f32], y: &mut [f32]) {
            for (o, &v) in y.iter_mut().zip(x) {
                let s = 2.0f32 + 1e-4 * v * v;
                let r = s.sqrt();
                *o = v / (r * r.sqrt());
            }
        }
    }

    #[test]
    fn caps_parse_and_limit_the_level() {
        assert_eq!(parse_cap(""), Ok(None));
        assert_eq!(parse_cap("baseline"), Ok(Some(Level::Baseline)));
        assert_eq!(parse_cap("v3"), Ok(Some(Level::V3)));
        assert_eq!(parse_cap("v4"), Ok(Some(Level::V4)));
        let e = parse_cap("avx512").unwrap_err();
        assert!(e.contains("ALEXNET_SIMD=\"avx512\"") && e.contains("baseline, v3 or v4"));
        assert_eq!(capped(Level::V4, Level::V3), Level::V3);
        assert_eq!(capped(Level::V3, Level::V4), Level::V3);
        assert_eq!(capped(Level::Baseline, Level::V4), Level::Baseline);
        assert_eq!(capped(Level::V4, Level::Baseline), Level::Baseline);
        assert_eq!(capped(Level::V4, Level::V4), Level::V4);
    }

    #[test]
    fn every_level_computes_the_same_bits() {
        let x: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.37)
            .collect();
        let detected = detect();
        let mut outs = vec![];
        for cap in [Level::Baseline, Level::V3, Level::V4] {
            let got = set_level(cap);
            assert!(got as u8 <= cap as u8 && got as u8 <= detected as u8);
            let mut y = vec![0.0; x.len()];
            lrn_like(&x, &mut y);
            outs.push(y);
        }
        set_level(detected);
        assert_eq!(outs[0], outs[1]);
        assert_eq!(outs[0], outs[2]);
        assert!(outs[0].iter().all(|v| v.is_finite()) && outs[0][0] != 0.0);
    }
}
