use std::path::Path;

use alexnet_data::prepare::{prepare, verify, PrepareOptions, Source};
use alexnet_data::{DataError, Dataset, Split, Storage};

fn jpeg(w: u16, h: u16, rgb: [u8; 3]) -> Vec<u8> {
    let px: Vec<u8> = (0..w as usize * h as usize).flat_map(|_| rgb).collect();
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 95)
        .encode(&px, w, h, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    out
}

fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

/// A tiny ILSVRC tree with every quirk and every bad-file kind.
fn quirky_tree(root: &Path) {
    let (a, b) = ("train/n01440764", "train/n01443537");
    write(root, &format!("{a}/a.JPEG"), &jpeg(80, 60, [10, 200, 30]));
    let grey: Vec<u8> = vec![128; 30 * 40];
    let mut g = Vec::new();
    jpeg_encoder::Encoder::new(&mut g, 90)
        .encode(&grey, 30, 40, jpeg_encoder::ColorType::Luma)
        .unwrap();
    write(root, &format!("{a}/b.JPEG"), &g);
    // CMYK of RGB (200, 50, 30): K = 55, C = 0, M = 150*255/200, Y = 170*255/200.
    let cmyk: Vec<u8> = (0..24 * 24).flat_map(|_| [0u8, 191, 216, 55]).collect();
    let mut c = Vec::new();
    jpeg_encoder::Encoder::new(&mut c, 95)
        .encode(&cmyk, 24, 24, jpeg_encoder::ColorType::Cmyk)
        .unwrap();
    write(root, &format!("{a}/c.JPEG"), &c);
    let mut png = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut png),
        &[7u8; 20 * 20 * 3],
        20,
        20,
        image::ExtendedColorType::Rgb8,
    )
    .unwrap();
    write(root, &format!("{a}/d.JPEG"), &png);
    write(root, &format!("{a}/e.jpeg"), &jpeg(50, 50, [0, 0, 255]));
    write(root, &format!("{a}/f.JPEG"), &jpeg(5, 4, [255, 255, 255]));
    write(root, &format!("{a}/bad_empty.JPEG"), b"");
    let full = jpeg(64, 64, [1, 2, 3]);
    let sos = full.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    write(root, &format!("{a}/bad_trunc.JPEG"), &full[..sos]);
    write(
        root,
        &format!("{a}/bad_text.JPEG"),
        b"this is not an image\n",
    );
    let mut bomb = jpeg(16, 16, [1, 2, 3]);
    let sof = bomb.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    bomb[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]); // 60000 x 60000
    write(root, &format!("{a}/bad_bomb.JPEG"), &bomb);
    write(root, &format!("{b}/g.JPEG"), &jpeg(40, 90, [90, 90, 90]));
    write(root, &format!("{b}/h.JPEG"), &jpeg(90, 40, [20, 20, 20]));
    write(
        root,
        "val/ILSVRC2012_val_00000001.JPEG",
        &jpeg(32, 32, [10, 200, 30]),
    );
    write(
        root,
        "val/ILSVRC2012_val_00000002.JPEG",
        &jpeg(32, 32, [90, 90, 90]),
    );
    write(
        root,
        "val/ILSVRC2012_val_00000003.JPEG",
        &jpeg(32, 32, [0, 0, 0]),
    );
    write(root, "val/ILSVRC2012_val_00000004.JPEG", b"");
    write(root, "val/notes.txt", b"x");
    // Devkit IDs: 449 = n01440764 (tench), 450 = n01443537, 1 = n02119789 (not in train).
    write(
        root,
        "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
        b"449\n450\n1\n449\n",
    );
}

fn opts(src: &Path, out: &Path) -> PrepareOptions {
    let mut o = PrepareOptions::new(
        Source::ImageNet {
            dir: src.into(),
            val_ground_truth: None,
        },
        out.into(),
    );
    o.image_size = 16;
    o.shard_bytes = 3 * (4 + 16 * 16 * 3); // 3 source files per shard
    o
}

#[test]
fn quirky_tree_counts_skips_and_shards() {
    let (src, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    quirky_tree(src.path());
    let m = prepare(&opts(src.path(), out.path())).unwrap();
    assert_eq!(m.classes.len(), 2);
    assert_eq!(m.classes[0].wnid, "n01440764");
    assert_eq!(m.classes[0].name, "tench");
    assert_eq!(m.splits.train.count, 8);
    assert_eq!(m.splits.val.count, 2);
    // 12 files / 3 per shard; the second group is all bad files, so it has no shard.
    assert_eq!(m.splits.train.shards.len(), 3);
    let files: Vec<&str> = m
        .splits
        .train
        .shards
        .iter()
        .map(|s| s.file.as_str())
        .collect();
    assert_eq!(
        files,
        [
            "train-00000.shard",
            "train-00002.shard",
            "train-00003.shard"
        ]
    );
    let skips: Vec<(&str, &str, &str)> = m
        .skipped
        .iter()
        .map(|s| (s.split.as_str(), s.path.as_str(), s.reason.as_str()))
        .collect();
    let paths: Vec<&str> = skips.iter().map(|s| s.1).collect();
    assert_eq!(
        paths,
        [
            "train/n01440764/bad_bomb.JPEG",
            "train/n01440764/bad_empty.JPEG",
            "train/n01440764/bad_text.JPEG",
            "train/n01440764/bad_trunc.JPEG",
            "val/ILSVRC2012_val_00000004.JPEG",
            "val/ILSVRC2012_val_00000003.JPEG",
            "val/notes.txt",
        ]
    );
    assert_eq!(
        skips[0].2,
        "decompression bomb: header claims 60000x60000 (limit 16384 per side)"
    );
    assert_eq!(skips[1].2, "empty file");
    assert_eq!(skips[2].2, "not an image (unrecognised format)");
    assert!(
        skips[3].2.starts_with("decode error") || skips[3].2.starts_with("corrupt"),
        "{}",
        skips[3].2
    );
    assert_eq!(skips[4].2, "empty file");
    assert_eq!(skips[5].2, "label n02119789 (kit fox) has no train/ folder");
    assert!(skips[6].2.starts_with("flat val file name"));
    assert!(skips.iter().all(|s| s.0
        == if s.1.starts_with("val") {
            "val"
        } else {
            "train"
        }));

    let ds = Dataset::open(out.path()).unwrap();
    let tr = ds.split(Split::Train);
    assert_eq!(tr.len(), 8);
    let labels: Vec<u32> = (0..8).map(|i| tr.label(i)).collect();
    assert_eq!(labels, [0, 0, 0, 0, 0, 0, 1, 1]);
    // a = green, b = grey 128, c = CMYK (200, 50, 30), d = PNG 7, e = blue, f = white, g, h.
    let px = |i: usize| tr.image(i).unwrap().to_vec();
    let close = |p: &[u8], c: [i32; 3], tol: i32| {
        p.chunks(3)
            .all(|q| (0..3).all(|k| (q[k] as i32 - c[k]).abs() <= tol))
    };
    assert!(close(&px(0), [10, 200, 30], 6));
    assert!(close(&px(1), [128, 128, 128], 2));
    assert!(close(&px(2), [200, 50, 30], 8), "{:?}", &px(2)[..3]);
    assert!(close(&px(3), [7, 7, 7], 0));
    assert!(close(&px(4), [0, 0, 255], 6));
    assert!(close(&px(5), [255, 255, 255], 2));
    let va = ds.split(Split::Val);
    assert_eq!((va.label(0), va.label(1)), (0, 1));
    // Stats: mean image is the average of the 8 training records.
    let mean0: f32 = (0..8).map(|i| px(i)[0] as f32).sum::<f32>() / 8.0;
    assert!((ds.stats.mean[0] - mean0).abs() < 1e-3);
    let r = verify(out.path()).unwrap();
    assert_eq!((r.shards, r.records), (4, 10));
}

#[test]
fn truncated_shard_rejected_flipped_byte_caught_and_resume() {
    let (src, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    quirky_tree(src.path());
    let o = opts(src.path(), out.path());
    let m1 = prepare(&o).unwrap();
    let shard = out.path().join("train-00002.shard");
    let orig = std::fs::read(&shard).unwrap();

    // Truncated: rejected at open, naming the file and the fix.
    std::fs::write(&shard, &orig[..orig.len() - 1]).unwrap();
    let e = Dataset::open(out.path()).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, DataError::BadShard { .. }), "{msg}");
    assert!(
        msg.contains("train-00002.shard") && msg.contains("prepare-data") && !msg.contains('\n')
    );

    // Flipped byte: opens (size is right) but verify fails.
    let mut flipped = orig.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    std::fs::write(&shard, &flipped).unwrap();
    assert!(Dataset::open(out.path()).is_ok());
    let e = verify(out.path()).unwrap_err();
    assert!(matches!(e, DataError::Checksum { .. }), "{e}");
    assert!(e.to_string().contains("train-00002.shard"));

    // Interrupted run: manifest gone, one shard missing, a stale temp left behind. Rerun resumes
    // (untouched shards are reused) and gives the identical manifest.
    std::fs::write(&shard, &orig).unwrap();
    std::fs::remove_file(out.path().join("manifest.json")).unwrap();
    std::fs::remove_file(out.path().join("train-00003.shard")).unwrap();
    std::fs::write(out.path().join("train-00003.shard.tmp"), b"partial").unwrap();
    let e = Dataset::open(out.path()).unwrap_err();
    assert!(e
        .to_string()
        .contains("run `cargo xtask prepare-data` first"));
    let t0 = std::fs::metadata(out.path().join("train-00000.shard"))
        .unwrap()
        .modified()
        .unwrap();
    let m2 = prepare(&o).unwrap();
    assert_eq!(m1, m2);
    assert_eq!(m1.checksum(), m2.checksum());
    let t1 = std::fs::metadata(out.path().join("train-00000.shard"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(t0, t1, "unchanged shard must be reused");
    assert!(!out.path().join("train-00003.shard.tmp").exists());
    verify(out.path()).unwrap();
}

#[test]
fn source_errors_are_one_line() {
    let out = tempfile::tempdir().unwrap();
    let missing = out.path().join("nope");
    let e = prepare(&opts(&missing, &out.path().join("o"))).unwrap_err();
    assert!(matches!(e, DataError::SourceMissing { .. }) && e.to_string().contains("nope"));
    let empty = tempfile::tempdir().unwrap();
    let e = prepare(&opts(empty.path(), &out.path().join("o"))).unwrap_err();
    assert!(matches!(e, DataError::SourceEmpty { .. }), "{e}");
    let src = tempfile::tempdir().unwrap();
    write(
        src.path(),
        "train/n01440764/a.JPEG",
        &jpeg(20, 20, [1, 2, 3]),
    );
    write(
        src.path(),
        "val/ILSVRC2012_val_00000001.JPEG",
        &jpeg(20, 20, [1, 2, 3]),
    );
    let e = prepare(&opts(src.path(), &out.path().join("o"))).unwrap_err();
    assert!(matches!(e, DataError::ValLabelsMissing { .. }), "{e}");
    assert!(e.to_string().contains("--val-ground-truth") && !e.to_string().contains('\n'));
}

#[test]
fn jpeg_storage_round_trips_close_to_raw() {
    let (src, raw, jpg) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let so = alexnet_data::SyntheticOptions {
        classes: 3,
        train_per_class: 4,
        val_per_class: 1,
        ..Default::default()
    };
    alexnet_data::synthetic::generate(src.path(), &so).unwrap();
    let mut o = opts(src.path(), raw.path());
    o.image_size = 32;
    prepare(&o).unwrap();
    o.out = jpg.path().into();
    o.storage = Storage::Jpeg;
    let m = prepare(&o).unwrap();
    assert_eq!(m.storage, Storage::Jpeg);
    verify(jpg.path()).unwrap();
    let (a, b) = (
        Dataset::open(raw.path()).unwrap(),
        Dataset::open(jpg.path()).unwrap(),
    );
    let (ta, tb) = (a.split(Split::Train), b.split(Split::Train));
    assert_eq!(ta.len(), 12);
    for i in 0..ta.len() {
        assert_eq!(ta.label(i), tb.label(i));
        let (x, y) = (ta.image(i).unwrap(), tb.image(i).unwrap());
        let mad = x
            .iter()
            .zip(y.iter())
            .map(|(&p, &q)| (p as f64 - q as f64).abs())
            .sum::<f64>()
            / x.len() as f64;
        assert!(mad < 6.0, "record {i}: mean abs diff {mad}");
    }
}

fn idx_gz(path: &Path, dims: &[u32], data: &[u8]) {
    use std::io::Write;
    let mut raw = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        raw.extend_from_slice(&d.to_be_bytes());
    }
    raw.extend_from_slice(data);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&raw).unwrap();
    std::fs::write(path, enc.finish().unwrap()).unwrap();
}

#[test]
fn fashion_mnist_idx() {
    let (src, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let img: Vec<u8> = (0..5 * 16).map(|i| (i * 3) as u8).collect();
    idx_gz(
        &src.path().join("train-images-idx3-ubyte.gz"),
        &[5, 4, 4],
        &img,
    );
    idx_gz(
        &src.path().join("train-labels-idx1-ubyte.gz"),
        &[5],
        &[3, 1, 4, 1, 5],
    );
    idx_gz(
        &src.path().join("t10k-images-idx3-ubyte.gz"),
        &[2, 4, 4],
        &img[..32],
    );
    idx_gz(&src.path().join("t10k-labels-idx1-ubyte.gz"), &[2], &[9, 0]);
    let mut o = PrepareOptions::new(
        Source::FashionMnist {
            dir: src.path().into(),
        },
        out.path().into(),
    );
    assert_eq!(o.image_size, 28);
    o.image_size = 4;
    let m = prepare(&o).unwrap();
    assert_eq!((m.splits.train.count, m.splits.val.count), (5, 2));
    assert_eq!(m.classes[9].name, "Ankle boot");
    assert_eq!(m.classes[3].wnid, "fashion-mnist/3");
    let ds = Dataset::open(out.path()).unwrap();
    let tr = ds.split(Split::Train);
    assert_eq!(
        (0..5).map(|i| tr.label(i)).collect::<Vec<_>>(),
        [3, 1, 4, 1, 5]
    );
    let rec = tr.image(1).unwrap();
    let want: Vec<u8> = img[16..32].iter().flat_map(|&v| [v, v, v]).collect();
    assert_eq!(&rec[..], &want[..]);
    // Bad IDX: wrong length is a one-line error naming the file.
    idx_gz(&src.path().join("t10k-labels-idx1-ubyte.gz"), &[3], &[9, 0]);
    let e = prepare(&o).unwrap_err();
    assert!(e.to_string().contains("t10k-labels-idx1-ubyte.gz"), "{e}");
}
