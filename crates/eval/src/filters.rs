//! The paper's Figure 3: the first convolution's kernels as a picture, one panel per group of the
//! second convolution (the paper's two-GPU split: kernels 0..47 feed conv2's group 1 on GPU 1,
//! 48..95 group 2 on GPU 2). Each kernel is normalised to 0..255 on its own (min/max over its
//! `3 x k x k` values), enlarged by nearest-neighbour scaling, and tiled in a grid with 2 px gaps;
//! the panels are stacked top to bottom with a wider gap.

use alexnet_tensor::spec::{Op, Plan};
use anyhow::{bail, Context, Result};
use image::{Rgb, RgbImage};
use std::path::Path;

/// Gap between kernels (and around each panel's grid), in pixels.
pub const GAP: u32 = 2;
/// Gap between two panels, in pixels.
pub const PANEL_GAP: u32 = 8;
/// Kernels per row of a panel at most.
pub const MAX_COLS: usize = 16;
/// Gap colour.
const GAP_RGB: [u8; 3] = [255, 255, 255];
/// Panel separator colour.
const SEP_RGB: [u8; 3] = [96, 96, 96];

/// Layout of the filter picture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GridLayout {
    /// Kernels per panel.
    pub per_panel: usize,
    /// Panels (groups).
    pub panels: usize,
    /// Columns and rows of a panel's grid.
    pub cols: usize,
    pub rows: usize,
    /// Nearest-neighbour scale factor and the resulting cell side (k * scale).
    pub scale: u32,
    pub cell: u32,
    /// Picture size.
    pub width: u32,
    pub height: u32,
}

/// The layout for `kernels` kernels of side `k` split into `groups` panels: scale =
/// ceil(33 / k) (11x11 -> 33x33), up to [`MAX_COLS`] columns, [`GAP`] px gaps, panels stacked
/// with [`PANEL_GAP`] px between them.
pub fn grid_layout(kernels: usize, k: usize, groups: usize) -> GridLayout {
    let groups = groups.max(1);
    let per_panel = kernels.div_ceil(groups).max(1);
    let cols = per_panel.min(MAX_COLS);
    let rows = per_panel.div_ceil(cols);
    let scale = 33usize.div_ceil(k.max(1)).max(1) as u32;
    let cell = k as u32 * scale;
    let panel_w = cols as u32 * cell + (cols as u32 + 1) * GAP;
    let panel_h = rows as u32 * cell + (rows as u32 + 1) * GAP;
    GridLayout {
        per_panel,
        panels: groups,
        cols,
        rows,
        scale,
        cell,
        width: panel_w,
        height: groups as u32 * panel_h + (groups as u32 - 1) * PANEL_GAP,
    }
}

/// The first convolution's weight (name, `[out, in, k, k]`, values) and the group count of the
/// second convolution (1 when there is none) from a plan and its flat parameters.
pub fn first_conv(plan: &Plan, params: &[f32]) -> Result<(String, [usize; 4], Vec<f32>, usize)> {
    let mut convs = plan
        .layers
        .iter()
        .filter(|l| matches!(l.op, Op::Conv { .. }));
    let first = convs
        .next()
        .context("the network has no convolution to draw")?;
    let groups = match convs.next().map(|l| &l.op) {
        Some(Op::Conv { groups, .. }) => *groups,
        _ => 1,
    };
    let (w_idx, _) = first
        .params
        .context("the first convolution has no parameters")?;
    let e = &plan.params[w_idx];
    if e.shape.len() != 4 || e.offset + e.len > params.len() {
        bail!("{}: unexpected shape {:?}", e.name, e.shape);
    }
    let shape = [e.shape[0], e.shape[1], e.shape[2], e.shape[3]];
    Ok((
        e.name.clone(),
        shape,
        params[e.offset..e.offset + e.len].to_vec(),
        groups,
    ))
}

/// Draws the kernels of `weight` (`[out, in, kh, kw]`, PyTorch layout, input channels RGB) split
/// into `groups` panels. Inputs with other than 3 channels are drawn in grey from channel 0.
pub fn filter_grid(weight: &[f32], shape: [usize; 4], groups: usize) -> Result<RgbImage> {
    let [out, cin, kh, kw] = shape;
    if weight.len() != out * cin * kh * kw || out == 0 || cin == 0 {
        bail!(
            "conv weight of {} values does not have shape {:?}",
            weight.len(),
            shape
        );
    }
    if groups == 0 || out % groups != 0 {
        bail!("{out} kernels cannot be split into {groups} groups");
    }
    let k = kh.max(kw);
    let lay = grid_layout(out, k, groups);
    let mut img = RgbImage::from_pixel(lay.width, lay.height, Rgb(GAP_RGB));
    let panel_h = lay.rows as u32 * lay.cell + (lay.rows as u32 + 1) * GAP;
    let plane = kh * kw;
    for g in 1..lay.panels as u32 {
        let y0 = g * panel_h + (g - 1) * PANEL_GAP;
        for y in y0 + PANEL_GAP / 2 - 1..y0 + PANEL_GAP / 2 + 1 {
            for x in 0..lay.width {
                img.put_pixel(x, y, Rgb(SEP_RGB));
            }
        }
    }
    for o in 0..out {
        let kern = &weight[o * cin * plane..(o + 1) * cin * plane];
        let (lo, hi) = kern
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let norm = |v: f32| -> u8 {
            if hi > lo {
                ((v - lo) / (hi - lo) * 255.0).round().clamp(0.0, 255.0) as u8
            } else {
                128
            }
        };
        let (panel, j) = (o / lay.per_panel, o % lay.per_panel);
        let (row, col) = (j / lay.cols, j % lay.cols);
        let x0 = GAP + col as u32 * (lay.cell + GAP);
        let y0 = panel as u32 * (panel_h + PANEL_GAP) + GAP + row as u32 * (lay.cell + GAP);
        for y in 0..kh {
            for x in 0..kw {
                let px = |c: usize| norm(kern[c * plane + y * kw + x]);
                let rgb = if cin == 3 {
                    [px(0), px(1), px(2)]
                } else {
                    [px(0); 3]
                };
                for dy in 0..lay.scale {
                    for dx in 0..lay.scale {
                        img.put_pixel(
                            x0 + x as u32 * lay.scale + dx,
                            y0 + y as u32 * lay.scale + dy,
                            Rgb(rgb),
                        );
                    }
                }
            }
        }
    }
    Ok(img)
}

/// Writes [`filter_grid`] as a PNG to `path`.
pub fn write_filter_png(
    path: &Path,
    weight: &[f32],
    shape: [usize; 4],
    groups: usize,
) -> Result<GridLayout> {
    let img = filter_grid(weight, shape, groups)?;
    let lay = grid_layout(shape[0], shape[2].max(shape[3]), groups);
    let tmp = path.with_extension("png.tmp");
    img.save_with_format(&tmp, image::ImageFormat::Png)
        .with_context(|| format!("{}: cannot write the PNG", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(lay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_layout() {
        // 96 kernels 11x11 in 2 groups: 48 per panel, 16 x 3, cells 33 px.
        let l = grid_layout(96, 11, 2);
        assert_eq!((l.cols, l.rows, l.cell), (16, 3, 33));
        assert_eq!(l.width, 16 * 33 + 17 * GAP);
        assert_eq!(l.height, 2 * (3 * 33 + 4 * GAP) + PANEL_GAP);
    }

    #[test]
    fn per_kernel_normalisation() {
        // Two 1x1 RGB kernels with different ranges both span 0..255.
        let w = [0.0, 1.0, 0.5, -10.0, 10.0, 0.0];
        let img = filter_grid(&w, [2, 3, 1, 1], 1).unwrap();
        let l = grid_layout(2, 1, 1);
        assert_eq!(img.get_pixel(GAP, GAP).0, [0, 255, 128]);
        assert_eq!(img.get_pixel(GAP + l.cell + GAP, GAP).0, [0, 255, 128]);
    }
}
