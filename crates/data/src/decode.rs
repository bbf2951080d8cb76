//! Decoding (the `image` crate, zune-jpeg inside) and the paper's preprocessing: rescale so the
//! shorter side is S, crop the central S x S (fast_image_resize, one SIMD convolution pass over the
//! central square of the source), u8 RGB HWC.

use std::io::Cursor;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{ImageReader, Limits};

/// Largest accepted width or height; a header claiming more is skipped without allocating.
pub const MAX_SIDE: u32 = 16_384;
/// Largest decoder allocation.
pub const MAX_ALLOC: u64 = 768 << 20;

/// A decoded RGB8 image, HWC.
pub struct Rgb {
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
    /// `h*w*3` bytes.
    pub px: Vec<u8>,
}

/// Decodes any JPEG/PNG (grey, CMYK, RGB, RGBA; by content, not by extension) to RGB8.
/// The error is a one-line reason suitable for the manifest's skip list.
pub fn decode_rgb(bytes: &[u8]) -> Result<Rgb, String> {
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("unreadable: {e}"))?;
    if reader.format().is_none() {
        return Err("not an image (unrecognised format)".into());
    }
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| format!("corrupt or truncated header: {e}"))?;
    if w > MAX_SIDE || h > MAX_SIDE {
        return Err(format!(
            "decompression bomb: header claims {w}x{h} (limit {MAX_SIDE} per side)"
        ));
    }
    if w == 0 || h == 0 {
        return Err(format!("zero-size image {w}x{h}"));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("unreadable: {e}"))?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| format!("decode error: {e}"))?;
    let rgb = img.into_rgb8();
    let (w, h) = rgb.dimensions();
    Ok(Rgb {
        w,
        h,
        px: rgb.into_raw(),
    })
}

/// Rescales so the shorter side is `s` and crops the central `s x s` (bilinear convolution, which
/// antialiases when downscaling). Returns `s*s*3` bytes HWC.
pub fn resize_center(img: &Rgb, s: u32, resizer: &mut Resizer) -> Result<Vec<u8>, String> {
    let src = ImageRef::new(img.w, img.h, &img.px, PixelType::U8x3).map_err(|e| e.to_string())?;
    let side = img.w.min(img.h) as f64;
    let left = (img.w as f64 - side) / 2.0;
    let top = (img.h as f64 - side) / 2.0;
    let mut dst = Image::new(s, s, PixelType::U8x3);
    let opts = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(left, top, side, side);
    resizer
        .resize(&src, &mut dst, &opts)
        .map_err(|e| format!("resize error: {e}"))?;
    Ok(dst.into_vec())
}

/// Decode + resize + central crop: the per-file ingestion step.
pub fn ingest(bytes: &[u8], s: u32, resizer: &mut Resizer) -> Result<Vec<u8>, String> {
    let img = decode_rgb(bytes)?;
    resize_center(&img, s, resizer)
}

/// Encodes an `s x s` RGB image as a q90 JPEG (the `jpeg` storage).
pub fn encode_jpeg(px: &[u8], s: u32, quality: u8) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let side = u16::try_from(s).map_err(|_| format!("image size {s} too large for JPEG"))?;
    jpeg_encoder::Encoder::new(&mut out, quality)
        .encode(px, side, side, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Decodes a stored `s x s` JPEG record back to `s*s*3` RGB bytes.
pub fn decode_square(bytes: &[u8], s: u32) -> Result<Vec<u8>, String> {
    let img = decode_rgb(bytes)?;
    if img.w != s || img.h != s {
        return Err(format!("record is {}x{}, expected {s}x{s}", img.w, img.h));
    }
    Ok(img.px)
}
