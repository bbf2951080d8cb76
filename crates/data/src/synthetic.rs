//! The embedded synthetic ILSVRC-layout set, drawn deterministically from a seed and written as
//! real files so that it goes through the same ingestion code as ImageNet:
//!
//! - `root/train/<wnid>/<wnid>_<n>.JPEG`
//! - `root/val/ILSVRC2012_val_<8 digits>.JPEG` (flat, classes shuffled)
//! - `root/ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt` (devkit IDs)
//! - `root/SYNTHETIC.json` (written last: the options that produced the tree)
//!
//! Classes use real wnids/names from `data/classes.tsv` (evenly spaced through the sorted list).
//! Each class is a shape family (disc, ring, square, diamond, triangle, horizontal stripes,
//! vertical stripes, checker, cross, twin discs) with a class-typical but noisy hue, random
//! position/scale/rotation, textured background and clutter. Pairs (disc, ring), (square, diamond),
//! (h-stripes, v-stripes) are deliberately similar. Quirks (when `quirks`): a grayscale JPEG, a
//! CMYK JPEG, a PNG named `.JPEG`, a lower-case `.jpeg` and a tiny 10x7 image in train, and a
//! grayscale JPEG in val.

use std::f64::consts::PI;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::classes::{self, ClassRow};
use crate::error::DataError;
use crate::rng::{mix, Rng};
use crate::shards::write_atomic;

/// Marker file written last.
pub const MARKER: &str = "SYNTHETIC.json";
/// Ground truth path relative to the root.
pub const GROUND_TRUTH: &str = "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt";

/// Size and seed of the synthetic set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SyntheticOptions {
    /// Seed of every draw.
    pub seed: u64,
    /// Number of classes (1..=1000).
    pub classes: usize,
    /// Training images per class.
    pub train_per_class: usize,
    /// Validation images per class.
    pub val_per_class: usize,
    /// Smallest side drawn (px).
    pub min_side: u32,
    /// Largest side drawn (px).
    pub max_side: u32,
    /// Include the ImageNet quirks (grey, CMYK, PNG-as-JPEG, `.jpeg`, tiny).
    pub quirks: bool,
}

impl Default for SyntheticOptions {
    /// 10 classes x (500 train + 50 val), sides 48..160 px.
    fn default() -> Self {
        SyntheticOptions {
            seed: 0,
            classes: 10,
            train_per_class: 500,
            val_per_class: 50,
            min_side: 48,
            max_side: 160,
            quirks: true,
        }
    }
}

/// What [`generate`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntheticSummary {
    /// Root directory.
    pub root: PathBuf,
    /// Class wnids in label order.
    pub wnids: Vec<String>,
    /// Training files written.
    pub train: usize,
    /// Validation files written.
    pub val: usize,
    /// Quirk files, relative to the root.
    pub quirks: Vec<String>,
    /// Total bytes written (images only).
    pub bytes: u64,
}

/// The classes used for `n` synthetic classes (evenly spaced through the sorted table).
pub fn class_rows(n: usize) -> Result<Vec<&'static ClassRow>, DataError> {
    let t = classes::table()?;
    if n == 0 || n > t.len() {
        return Err(DataError::InvalidArg(format!(
            "synthetic classes must be 1..=1000, got {n}"
        )));
    }
    Ok((0..n).map(|i| &t[i * t.len() / n]).collect())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rgb,
    Grey,
    Cmyk,
    Png,
}

struct Job {
    rel: String,
    class: usize,
    seed: u64,
    kind: Kind,
    tiny: bool,
}

/// True if `root` holds a complete tree generated with exactly `opts`.
pub fn is_current(root: &Path, opts: &SyntheticOptions) -> bool {
    std::fs::read(root.join(MARKER))
        .ok()
        .and_then(|b| serde_json::from_slice::<SyntheticOptions>(&b).ok())
        .is_some_and(|o| &o == opts)
}

/// Generates the tree under `root` (replacing a previous synthetic tree; refusing to touch a
/// non-empty directory that is not one).
pub fn generate(root: &Path, opts: &SyntheticOptions) -> Result<SyntheticSummary, DataError> {
    let rows = class_rows(opts.classes)?;
    if opts.min_side < 8 || opts.max_side < opts.min_side || opts.max_side > 4096 {
        return Err(DataError::InvalidArg(
            "synthetic sides must satisfy 8 <= min <= max <= 4096".into(),
        ));
    }
    let marker = root.join(MARKER);
    let partial = root.join(".synthetic-in-progress");
    let non_empty = std::fs::read_dir(root)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if non_empty && !marker.exists() && !partial.exists() {
        return Err(DataError::InvalidArg(format!(
            "{} is not empty and not a synthetic tree: choose another --synthetic-dir",
            root.display()
        )));
    }
    std::fs::create_dir_all(root).map_err(|e| DataError::io(root, e))?;
    std::fs::write(&partial, b"").map_err(|e| DataError::io(&partial, e))?;
    let _ = std::fs::remove_file(&marker);
    for d in ["train", "val", "ILSVRC2012_devkit_t12"] {
        let p = root.join(d);
        if p.exists() {
            std::fs::remove_dir_all(&p).map_err(|e| DataError::io(&p, e))?;
        }
    }
    let mut jobs = Vec::new();
    let mut quirks = Vec::new();
    for (c, row) in rows.iter().enumerate() {
        let dir = root.join("train").join(&row.wnid);
        std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
        for n in 0..opts.train_per_class {
            let q = if opts.quirks && c < 5 && n == 0 {
                c + 1
            } else {
                0
            };
            let kind = [
                Kind::Rgb,
                Kind::Grey,
                Kind::Cmyk,
                Kind::Png,
                Kind::Rgb,
                Kind::Rgb,
            ][q];
            let ext = if q == 4 { "jpeg" } else { "JPEG" };
            let rel = format!("train/{}/{}_{}.{ext}", row.wnid, row.wnid, n + 1);
            if q != 0 {
                quirks.push(rel.clone());
            }
            let seed = mix(&[opts.seed, 1, c as u64, n as u64]);
            jobs.push(Job {
                rel,
                class: c,
                seed,
                kind,
                tiny: q == 5,
            });
        }
    }
    let mut val_labels: Vec<usize> = (0..opts.classes)
        .flat_map(|c| std::iter::repeat_n(c, opts.val_per_class))
        .collect();
    Rng::new(mix(&[opts.seed, 2])).shuffle(&mut val_labels);
    let vdir = root.join("val");
    std::fs::create_dir_all(&vdir).map_err(|e| DataError::io(&vdir, e))?;
    let mut gt = String::new();
    for (i, &c) in val_labels.iter().enumerate() {
        let rel = format!("val/ILSVRC2012_val_{:08}.JPEG", i + 1);
        let kind = if opts.quirks && i == 0 {
            Kind::Grey
        } else {
            Kind::Rgb
        };
        if kind == Kind::Grey {
            quirks.push(rel.clone());
        }
        let seed = mix(&[opts.seed, 3, i as u64]);
        jobs.push(Job {
            rel,
            class: c,
            seed,
            kind,
            tiny: false,
        });
        gt.push_str(&format!("{}\n", rows[c].ilsvrc2012_id));
    }
    let bytes = jobs
        .par_iter()
        .map(|j| -> Result<u64, DataError> {
            let data = draw_file(j, opts)?;
            let p = root.join(&j.rel);
            std::fs::write(&p, &data).map_err(|e| DataError::io(&p, e))?;
            Ok(data.len() as u64)
        })
        .try_reduce(|| 0, |a, b| Ok(a + b))?;
    let gt_path = root.join(GROUND_TRUTH);
    if let Some(parent) = gt_path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
    }
    write_atomic(&gt_path, gt.as_bytes())?;
    let text = serde_json::to_vec_pretty(opts).map_err(|e| DataError::json(&marker, e))?;
    write_atomic(&marker, &text)?;
    let _ = std::fs::remove_file(&partial);
    Ok(SyntheticSummary {
        root: root.to_path_buf(),
        wnids: rows.iter().map(|r| r.wnid.clone()).collect(),
        train: opts.classes * opts.train_per_class,
        val: val_labels.len(),
        quirks,
        bytes,
    })
}

fn draw_file(j: &Job, opts: &SyntheticOptions) -> Result<Vec<u8>, DataError> {
    let mut rng = Rng::new(j.seed);
    let (w, h) = if j.tiny {
        (10, 7)
    } else {
        let a = rng.range_incl(opts.min_side as u64, opts.max_side as u64) as f64;
        let ar = rng.range_f64(1.0, 1.5);
        let b = (a * ar).min(opts.max_side as f64 * 1.5).round();
        if rng.bool() {
            (a as u32, b as u32)
        } else {
            (b as u32, a as u32)
        }
    };
    let px = draw(j.class, w, h, &mut rng);
    let err = |e: String| DataError::Image {
        path: PathBuf::from(&j.rel),
        msg: e,
    };
    let q = rng.range_incl(80, 95) as u8;
    let (w16, h16) = (w as u16, h as u16);
    let mut out = Vec::new();
    match j.kind {
        Kind::Rgb => jpeg_encoder::Encoder::new(&mut out, q)
            .encode(&px, w16, h16, jpeg_encoder::ColorType::Rgb)
            .map_err(|e| err(e.to_string()))?,
        Kind::Grey => {
            let g: Vec<u8> = px
                .chunks_exact(3)
                .map(|p| ((p[0] as u32 * 77 + p[1] as u32 * 150 + p[2] as u32 * 29) >> 8) as u8)
                .collect();
            jpeg_encoder::Encoder::new(&mut out, q)
                .encode(&g, w16, h16, jpeg_encoder::ColorType::Luma)
                .map_err(|e| err(e.to_string()))?
        }
        Kind::Cmyk => {
            let cmyk: Vec<u8> = px
                .chunks_exact(3)
                .flat_map(|p| {
                    let k = 255 - p[0].max(p[1]).max(p[2]);
                    let d = (255 - k as u32).max(1);
                    let f = |x: u8| ((255 - k as u32 - x as u32) * 255 / d) as u8;
                    [f(p[0]), f(p[1]), f(p[2]), k]
                })
                .collect();
            jpeg_encoder::Encoder::new(&mut out, q)
                .encode(&cmyk, w16, h16, jpeg_encoder::ColorType::Cmyk)
                .map_err(|e| err(e.to_string()))?
        }
        Kind::Png => {
            use image::ImageEncoder;
            image::codecs::png::PngEncoder::new(&mut out)
                .write_image(&px, w, h, image::ExtendedColorType::Rgb8)
                .map_err(|e| err(e.to_string()))?
        }
    }
    Ok(out)
}

fn hsv(h: f64, s: f64, v: f64) -> [f64; 3] {
    let h = h.rem_euclid(1.0) * 6.0;
    let i = h.floor();
    let f = h - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match i as u32 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

fn sd_box(x: f64, y: f64, bx: f64, by: f64) -> f64 {
    let (qx, qy) = (x.abs() - bx, y.abs() - by);
    (qx.max(0.0).hypot(qy.max(0.0))) + qx.max(qy).min(0.0)
}

fn sd_triangle(x: f64, y: f64, r: f64) -> f64 {
    let k = 3f64.sqrt();
    let (mut px, mut py) = (x.abs() - r, -y + r / k);
    if px + k * py > 0.0 {
        (px, py) = ((px - k * py) / 2.0, (-k * px - py) / 2.0);
    }
    px -= px.clamp(-2.0 * r, 0.0);
    -(px.hypot(py)) * py.signum()
}

/// Draws class `class` (family `class % 10`) into a `w x h` RGB image (HWC u8).
fn draw(class: usize, w: u32, h: u32, rng: &mut Rng) -> Vec<u8> {
    let fam = class % 10;
    let side = w.min(h) as f64;
    let (ox, oy) = ((w as f64 - side) / 2.0, (h as f64 - side) / 2.0);
    // Background: low-saturation colour, gradient, clutter.
    let bg = hsv(
        rng.f64(),
        rng.range_f64(0.0, 0.35),
        rng.range_f64(0.25, 0.85),
    );
    let grad = [rng.range_f64(-0.25, 0.25), rng.range_f64(-0.25, 0.25)];
    let nclutter = rng.range_incl(2, 6) as usize;
    let clutter: Vec<([f64; 2], f64, [f64; 3], bool)> = (0..nclutter)
        .map(|_| {
            let c = [rng.range_f64(-0.1, 1.1), rng.range_f64(-0.1, 1.1)];
            let col = hsv(rng.f64(), rng.range_f64(0.2, 0.9), rng.range_f64(0.2, 1.0));
            (c, rng.range_f64(0.02, 0.07), col, rng.bool())
        })
        .collect();
    // Object.
    let family_hue =
        [0.02, 0.02, 0.62, 0.62, 0.33, 0.0, 0.0, 0.0, 0.78, 0.15][fam] + 0.37 * (class / 10) as f64;
    let hue = if rng.f64() < 0.2 {
        rng.f64()
    } else {
        family_hue + 0.06 * rng.normal()
    };
    let fg = hsv(hue, rng.range_f64(0.55, 1.0), rng.range_f64(0.55, 1.0));
    let fg2 = hsv(rng.f64(), rng.range_f64(0.3, 1.0), rng.range_f64(0.1, 0.9));
    let (cx, cy) = (rng.range_f64(0.32, 0.68), rng.range_f64(0.32, 0.68));
    let r = rng.range_f64(0.16, 0.3);
    let rot = match fam {
        2 => rng.range_f64(-0.26, 0.26),
        3 => PI / 4.0 + rng.range_f64(-0.26, 0.26),
        5 => rng.range_f64(-0.35, 0.35),
        6 => PI / 2.0 + rng.range_f64(-0.35, 0.35),
        _ => rng.range_f64(-PI, PI),
    };
    let period = rng.range_f64(0.07, 0.12);
    let (cs, sn) = (rot.cos(), rot.sin());
    let noise = rng.range_f64(4.0, 20.0);
    let mut out = Vec::with_capacity((w * h * 3) as usize);
    for yi in 0..h {
        for xi in 0..w {
            let u = (xi as f64 + 0.5 - ox) / side;
            let v = (yi as f64 + 0.5 - oy) / side;
            let mut col = bg.map(|c| c + grad[0] * (u - 0.5) + grad[1] * (v - 0.5));
            for &(c, cr, ccol, line) in &clutter {
                let d = if line {
                    sd_box(u - c[0], v - c[1], cr * 2.5, 0.008)
                } else {
                    (u - c[0]).hypot(v - c[1]) - cr
                };
                let a = (0.5 - d * side).clamp(0.0, 1.0);
                col = [0, 1, 2].map(|k| col[k] * (1.0 - a) + ccol[k] * a);
            }
            let (dx, dy) = (u - cx, v - cy);
            let (x, y) = (cs * dx + sn * dy, -sn * dx + cs * dy);
            let d = match fam {
                0 => x.hypot(y) - r,
                1 => (x.hypot(y) - 0.75 * r).abs() - 0.25 * r,
                2 | 3 => sd_box(x, y, 0.85 * r, 0.85 * r),
                4 => sd_triangle(x, y, 1.1 * r),
                5..=7 => sd_box(x, y, r, r),
                8 => sd_box(x, y, r, 0.3 * r).min(sd_box(x, y, 0.3 * r, r)),
                _ => ((x - 0.55 * r).hypot(y) - 0.45 * r).min((x + 0.55 * r).hypot(y) - 0.45 * r),
            };
            let a = (0.5 - d * side).clamp(0.0, 1.0);
            if a > 0.0 {
                let second = match fam {
                    5 | 6 => (y / period).floor() as i64 % 2 == 0,
                    7 => ((x / period).floor() as i64 + (y / period).floor() as i64) % 2 == 0,
                    _ => false,
                };
                let oc = if second { fg2 } else { fg };
                col = [0, 1, 2].map(|k| col[k] * (1.0 - a) + oc[k] * a);
            }
            let n = noise * (rng.f64() - 0.5);
            out.extend(col.map(|c| (c * 255.0 + n).round().clamp(0.0, 255.0) as u8));
        }
    }
    out
}
