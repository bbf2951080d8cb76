//! Decoding and the paper's preprocessing: rescale so the shorter side is S, crop the central
//! S x S (fast_image_resize, one SIMD convolution pass over the central square of the source), u8
//! RGB HWC. JPEGs go straight to zune-jpeg with RGB output (grey and CMYK converted inside the
//! decoder); everything else (PNG, ...) through the `image` crate, which wraps the same zune-jpeg
//! but converts grey to RGB in a slow generic pass (6x the decode time of a grey photo).

use std::io::Cursor;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{ImageReader, Limits};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

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

/// `what: error` on one line (decoders' messages may span several).
fn one_line(what: &str, e: impl std::fmt::Display) -> String {
    let msg = e.to_string();
    format!(
        "{what}: {}",
        msg.split_whitespace().collect::<Vec<_>>().join(" ")
    )
}

/// The header's size is acceptable: not zero, within [`MAX_SIDE`] per side and [`MAX_ALLOC`]
/// for the decoder's buffers (up to 4 bytes per pixel for CMYK).
fn check_dimensions(w: u32, h: u32) -> Result<(), String> {
    if w > MAX_SIDE || h > MAX_SIDE {
        return Err(format!(
            "decompression bomb: header claims {w}x{h} (limit {MAX_SIDE} per side)"
        ));
    }
    let bytes = u64::from(w) * u64::from(h) * 4;
    if bytes > MAX_ALLOC {
        return Err(format!(
            "decompression bomb: header claims {w}x{h} ({} MiB to decode, limit {} MiB)",
            bytes >> 20,
            MAX_ALLOC >> 20
        ));
    }
    if w == 0 || h == 0 {
        return Err(format!("zero-size image {w}x{h}"));
    }
    Ok(())
}

/// Decodes any JPEG/PNG (grey, CMYK, RGB, RGBA; by content, not by extension) to RGB8.
/// The error is a one-line reason suitable for the manifest's skip list.
pub fn decode_rgb(bytes: &[u8]) -> Result<Rgb, String> {
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        decode_jpeg(bytes)
    } else {
        decode_any(bytes)
    }
}

/// JPEG (SOI marker first) through zune-jpeg with RGB output, lenient as the `image` crate
/// is (a stream cut short decodes what it has; no scan data at all is an error).
fn decode_jpeg(bytes: &[u8]) -> Result<Rgb, String> {
    let opts = DecoderOptions::default()
        .set_strict_mode(false)
        .set_max_width(usize::from(u16::MAX))
        .set_max_height(usize::from(u16::MAX))
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut dec = JpegDecoder::new_with_options(ZCursor::new(bytes), opts);
    dec.decode_headers()
        .map_err(|e| one_line("corrupt or truncated header", e))?;
    let (w, h) = dec
        .dimensions()
        .ok_or_else(|| "corrupt or truncated header: no frame".to_string())?;
    let (w, h) = (w as u32, h as u32);
    check_dimensions(w, h)?;
    let px = dec.decode().map_err(|e| one_line("decode error", e))?;
    if px.len() != w as usize * h as usize * 3 {
        return Err(format!(
            "decode error: {} bytes for {w}x{h} RGB (colour space {:?})",
            px.len(),
            dec.input_colorspace()
        ));
    }
    Ok(Rgb { w, h, px })
}

/// Any other format the `image` crate reads, converted to RGB8.
pub(crate) fn decode_any(bytes: &[u8]) -> Result<Rgb, String> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| one_line("unreadable", e))?;
    if reader.format().is_none() {
        return Err("not an image (unrecognised format)".into());
    }
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| one_line("corrupt or truncated header", e))?;
    check_dimensions(w, h)?;
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| one_line("unreadable", e))?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| one_line("decode error", e))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A w x h JPEG of a smooth pattern in the given colour type (1, 3 or 4 channels).
    fn jpeg(w: u16, h: u16, ct: jpeg_encoder::ColorType, channels: usize) -> Vec<u8> {
        let px: Vec<u8> = (0..w as usize * h as usize * channels)
            .map(|i| ((i * 7 + i / 97) % 251) as u8)
            .collect();
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, 90)
            .encode(&px, w, h, ct)
            .unwrap();
        out
    }

    #[test]
    fn direct_jpeg_path_matches_the_image_crate() {
        use jpeg_encoder::ColorType::{Cmyk, Luma, Rgb as RgbT};
        for (ct, ch) in [(Luma, 1), (RgbT, 3), (Cmyk, 4)] {
            let b = jpeg(37, 23, ct, ch);
            let direct = decode_jpeg(&b).unwrap();
            let generic = decode_any(&b).unwrap();
            assert_eq!((direct.w, direct.h), (37, 23));
            assert_eq!((generic.w, generic.h), (37, 23));
            assert_eq!(direct.px.len(), 37 * 23 * 3);
            assert!(direct.px == generic.px, "{ct:?}: pixels differ");
        }
        // Grey replicates to R = G = B.
        let grey = decode_rgb(&jpeg(8, 8, Luma, 1)).unwrap();
        assert!(grey.px.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    }

    #[test]
    fn bad_jpegs_are_one_line_errors() {
        let good = jpeg(16, 16, jpeg_encoder::ColorType::Rgb, 3);
        // Header only, no scan data.
        let sos = good.windows(2).position(|p| p == [0xFF, 0xDA]).unwrap();
        let e = decode_rgb(&good[..sos])
            .err()
            .expect("no scan data must fail");
        assert!(!e.contains('\n'), "{e}");
        // A header claiming 60000 x 60000 (SOF0 height/width patched) is refused before decoding.
        let mut bomb = good.clone();
        let sof = bomb.windows(2).position(|p| p == [0xFF, 0xC0]).unwrap();
        bomb[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
        let e = decode_rgb(&bomb).err().expect("bomb must fail");
        assert!(
            e.starts_with("decompression bomb: header claims 60000x60000"),
            "{e}"
        );
        // Within the per-side limit but over the decoder's allocation limit.
        bomb[sof + 5..sof + 9].copy_from_slice(&[0x3E, 0x80, 0x3E, 0x80]);
        let e = decode_rgb(&bomb).err().expect("16000x16000 must fail");
        assert!(
            e.contains("16000x16000 (976 MiB to decode, limit 768 MiB)"),
            "{e}"
        );
        assert_eq!(decode_rgb(&[]).err().unwrap(), "empty file");
        assert!(decode_rgb(&[0xFF, 0xD8, 0xFF]).is_err());
    }
}
