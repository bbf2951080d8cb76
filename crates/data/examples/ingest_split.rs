//! Splits ingestion time into decode and resize+crop on one core, for a folder of images:
//! `cargo run --release -p alexnet-data --example ingest_split -- DIR`
use alexnet_data::decode::{decode_rgb, resize_center};
use std::time::Instant;

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| ".".into());
    let files: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    let mut resizer = fast_image_resize::Resizer::new();
    let (mut td, mut tr, mut n) = (0.0, 0.0, 0);
    for _ in 0..3 {
        for b in &files {
            let t = Instant::now();
            let Ok(img) = decode_rgb(b) else { continue };
            td += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let _ = resize_center(&img, 256, &mut resizer);
            tr += t.elapsed().as_secs_f64();
            n += 1;
        }
    }
    println!(
        "{n} images: decode {:.2} ms/img, resize+crop {:.2} ms/img",
        td * 1e3 / n as f64,
        tr * 1e3 / n as f64
    );
}
