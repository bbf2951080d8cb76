//! Training curves as a hand-written SVG: training loss against the step (thin line: every logged
//! step; thick line with dots: the epoch's mean loss), and validation top-1 (solid) and top-5
//! (dashed) error against the epoch; one colour per ensemble member.

use anyhow::{Context, Result};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::Path;

/// One model's metrics log, as read from `metrics.jsonl`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelCurves {
    /// (step, loss) of every logged step.
    pub steps: Vec<(f64, f64)>,
    /// One entry per finished epoch.
    pub epochs: Vec<EpochPoint>,
}

/// One `"kind":"epoch"` line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EpochPoint {
    pub epoch: f64,
    pub step: f64,
    pub loss: f64,
    pub lr: Option<f64>,
    pub img_per_s: Option<f64>,
    pub train_top1_err: Option<f64>,
    pub val_top1_err: Option<f64>,
    pub val_top5_err: Option<f64>,
    pub seconds: Option<f64>,
}

impl ModelCurves {
    /// Parses the lines of a metrics log (unknown kinds and missing fields are skipped).
    pub fn from_values(lines: &[Value]) -> ModelCurves {
        let f = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64);
        let mut m = ModelCurves::default();
        for v in lines {
            match v.get("kind").and_then(Value::as_str) {
                Some("step") => {
                    if let (Some(s), Some(l)) = (f(v, "step"), f(v, "loss")) {
                        m.steps.push((s, l));
                    }
                }
                Some("epoch") => m.epochs.push(EpochPoint {
                    epoch: f(v, "epoch").unwrap_or(m.epochs.len() as f64 + 1.0),
                    step: f(v, "step").unwrap_or(0.0),
                    loss: f(v, "loss").unwrap_or(f64::NAN),
                    lr: f(v, "lr"),
                    img_per_s: f(v, "img_per_s"),
                    train_top1_err: f(v, "train_top1_err"),
                    val_top1_err: f(v, "val_top1_err"),
                    val_top5_err: f(v, "val_top5_err"),
                    seconds: f(v, "seconds"),
                }),
                _ => {}
            }
        }
        m
    }

    /// Reads `metrics.jsonl`; a missing file gives empty curves.
    pub fn read(path: &Path) -> Result<ModelCurves> {
        if !path.exists() {
            return Ok(ModelCurves::default());
        }
        let lines = alexnet_train::metrics::read_jsonl(path)?;
        Ok(ModelCurves::from_values(&lines))
    }
}

/// Colours of the members (matplotlib's tab10).
pub const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// "Nice" tick positions (1, 2, 5 x 10^k steps) covering `lo..=hi`, about `n` of them.
pub fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// `v` rounded up to the next tick of [`nice_ticks`]`(0, v, 8)` (so the axis ends on a tick).
fn round_up(v: f64) -> f64 {
    match nice_ticks(0.0, v, 8).as_slice() {
        [a, b, ..] if b > a => (v / (b - a)).ceil() * (b - a),
        _ => v,
    }
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1000.0 {
        format!("{:.0}", v)
    } else {
        let s = format!("{:.3}", v);
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// A plot area with data ranges.
struct Panel {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Panel {
    fn px(&self, v: f64) -> f64 {
        self.x + (v - self.x0) / (self.x1 - self.x0) * self.w
    }
    fn py(&self, v: f64) -> f64 {
        self.y + self.h - (v - self.y0) / (self.y1 - self.y0) * self.h
    }

    /// Frame, grid, ticks, tick labels, axis labels and title.
    fn axes(&self, s: &mut String, title: &str, xlabel: &str, ylabel: &str, integer_x: bool) {
        let _ = writeln!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#ffffff" stroke="#333333"/>"##,
            self.x, self.y, self.w, self.h
        );
        let mut xt = nice_ticks(self.x0, self.x1, 8);
        if integer_x {
            xt.retain(|v| v.fract() == 0.0);
        }
        for v in xt {
            let x = self.px(v);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#e5e5e5"/><line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#333333"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                self.y,
                self.y + self.h,
                self.y + self.h,
                self.y + self.h + 5.0,
                self.y + self.h + 18.0,
                fmt_tick(v)
            );
        }
        for v in nice_ticks(self.y0, self.y1, 6) {
            let y = self.py(v);
            let _ = writeln!(
                s,
                r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e5e5"/><line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#333333"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                self.x,
                self.x + self.w,
                self.x - 5.0,
                self.x,
                self.x - 8.0,
                y + 4.0,
                fmt_tick(v)
            );
        }
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"##,
            self.x + self.w / 2.0,
            self.y - 12.0,
            esc(title)
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            self.x + self.w / 2.0,
            self.y + self.h + 38.0,
            esc(xlabel)
        );
        let (lx, ly) = (self.x - 48.0, self.y + self.h / 2.0);
        let _ = writeln!(
            s,
            r##"<text x="{lx:.1}" y="{ly:.1}" text-anchor="middle" transform="rotate(-90 {lx:.1} {ly:.1})">{}</text>"##,
            esc(ylabel)
        );
    }

    fn polyline(&self, s: &mut String, pts: &[(f64, f64)], style: &str, class: &str) {
        let pts: Vec<String> = pts
            .iter()
            .filter(|(a, b)| a.is_finite() && b.is_finite())
            .map(|&(a, b)| format!("{:.1},{:.1}", self.px(a), self.py(b)))
            .collect();
        if pts.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            r#"<polyline class="{class}" fill="none" {style} points="{}"/>"#,
            pts.join(" ")
        );
    }

    fn dots(&self, s: &mut String, pts: &[(f64, f64)], colour: &str, hollow: bool) {
        let fill = if hollow { "#ffffff" } else { colour };
        for &(a, b) in pts.iter().filter(|(a, b)| a.is_finite() && b.is_finite()) {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{fill}" stroke="{colour}"/>"#,
                self.px(a),
                self.py(b)
            );
        }
    }
}

fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn range(vals: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    vals.filter(|v| v.is_finite()).fold(None, |r, v| {
        Some(r.map_or((v, v), |(a, b): (f64, f64)| (a.min(v), b.max(v))))
    })
}

/// The SVG document for `models` (member k drawn in `PALETTE[k % 10]`); `title` goes on top.
pub fn curves_svg(models: &[ModelCurves], title: &str) -> String {
    let (width, height) = (1200.0, 560.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#fafafa"/>"##);
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="24" text-anchor="middle" font-size="17" font-weight="bold">{}</text>"#,
        width / 2.0,
        esc(title)
    );

    // Left: training loss against the step.
    let loss_pts = models.iter().flat_map(|m| {
        m.steps
            .iter()
            .copied()
            .chain(m.epochs.iter().map(|e| (e.step, e.loss)))
    });
    let (sx, sy) = (
        range(loss_pts.clone().map(|p| p.0)).unwrap_or((0.0, 1.0)),
        range(loss_pts.map(|p| p.1)).unwrap_or((0.0, 1.0)),
    );
    let left = Panel {
        x: 90.0,
        y: 70.0,
        w: 460.0,
        h: 360.0,
        x0: 0.0,
        x1: round_up(sx.1.max(1.0)),
        y0: 0.0,
        y1: (sy.1 * 1.05).max(1e-6),
    };
    left.axes(
        &mut s,
        "Training loss",
        "training step",
        "cross-entropy loss",
        true,
    );

    // Right: validation error (%) against the epoch.
    let max_epoch = models
        .iter()
        .flat_map(|m| m.epochs.iter().map(|e| e.epoch))
        .fold(1.0, f64::max);
    let errs = models.iter().flat_map(|m| {
        m.epochs
            .iter()
            .flat_map(|e| [e.val_top1_err, e.val_top5_err])
            .flatten()
            .map(|v| v * 100.0)
    });
    let ey = range(errs).map_or(100.0, |(_, hi)| (hi * 1.1).clamp(1.0, 100.0));
    let right = Panel {
        x: 690.0,
        y: 70.0,
        w: 460.0,
        h: 360.0,
        x0: if max_epoch > 1.0 { 1.0 } else { 0.0 },
        x1: max_epoch,
        y0: 0.0,
        y1: ey,
    };
    right.axes(
        &mut s,
        "Validation error (center crop)",
        "epoch",
        "error (%)",
        true,
    );

    for (k, m) in models.iter().enumerate() {
        let c = PALETTE[k % PALETTE.len()];
        let class = format!("model-{k}");
        left.polyline(
            &mut s,
            &m.steps,
            &format!(r#"stroke="{c}" stroke-width="1.2" stroke-opacity="0.5""#),
            &format!("{class} steps"),
        );
        let ep: Vec<(f64, f64)> = m.epochs.iter().map(|e| (e.step, e.loss)).collect();
        left.polyline(
            &mut s,
            &ep,
            &format!(r#"stroke="{c}" stroke-width="2.5""#),
            &class,
        );
        left.dots(&mut s, &ep, c, false);
        let v1: Vec<(f64, f64)> = m
            .epochs
            .iter()
            .filter_map(|e| e.val_top1_err.map(|v| (e.epoch, v * 100.0)))
            .collect();
        let v5: Vec<(f64, f64)> = m
            .epochs
            .iter()
            .filter_map(|e| e.val_top5_err.map(|v| (e.epoch, v * 100.0)))
            .collect();
        right.polyline(
            &mut s,
            &v1,
            &format!(r#"stroke="{c}" stroke-width="2.5""#),
            &format!("{class} top1"),
        );
        right.dots(&mut s, &v1, c, false);
        right.polyline(
            &mut s,
            &v5,
            &format!(r#"stroke="{c}" stroke-width="2" stroke-dasharray="6 4""#),
            &format!("{class} top5"),
        );
        right.dots(&mut s, &v5, c, true);
    }

    // Legend: one entry per model, then the line styles.
    let mut x = 90.0;
    let y = 505.0;
    for k in 0..models.len() {
        let c = PALETTE[k % PALETTE.len()];
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{c}" stroke-width="3"/><text x="{:.1}" y="{:.1}">model {k}</text>"#,
            x + 24.0,
            x + 30.0,
            y + 4.0
        );
        x += 95.0;
    }
    let styles = [
        (
            r#"stroke-width="1" stroke-opacity="0.45""#,
            "loss per logged step",
        ),
        (r#"stroke-width="2.5""#, "epoch mean loss / val top-1"),
        (r#"stroke-width="2" stroke-dasharray="6 4""#, "val top-5"),
    ];
    let y2 = y + 26.0;
    let mut x = 90.0;
    for (style, label) in styles {
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{y2:.1}" x2="{:.1}" y2="{y2:.1}" stroke="#333333" {style}/><text x="{:.1}" y="{:.1}">{label}</text>"##,
            x + 24.0,
            x + 30.0,
            y2 + 4.0
        );
        x += 230.0;
    }
    s.push_str("</svg>\n");
    s
}

/// Writes [`curves_svg`] to `path`.
pub fn write_curves(path: &Path, models: &[ModelCurves], title: &str) -> Result<()> {
    let tmp = path.with_extension("svg.tmp");
    std::fs::write(&tmp, curves_svg(models, title))
        .with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks() {
        assert_eq!(
            nice_ticks(0.0, 10.0, 5),
            vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
        );
        assert_eq!(nice_ticks(0.0, 1.0, 4), vec![0.0, 0.5, 1.0]);
        assert_eq!(
            nice_ticks(1.0, 12.0, 8),
            vec![2.0, 4.0, 6.0, 8.0, 10.0, 12.0]
        );
    }
}
