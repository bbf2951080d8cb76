use std::path::Path;

use alexnet_data::decode::decode_rgb;
use alexnet_data::synthetic::{self, SyntheticOptions};

fn tiny(seed: u64) -> SyntheticOptions {
    SyntheticOptions {
        seed,
        classes: 10,
        train_per_class: 6,
        val_per_class: 2,
        ..Default::default()
    }
}

fn all_files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn same_seed_same_bytes_other_seed_differs() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    synthetic::generate(a.path(), &tiny(5)).unwrap();
    synthetic::generate(b.path(), &tiny(5)).unwrap();
    synthetic::generate(c.path(), &tiny(6)).unwrap();
    let (fa, fb, fc) = (
        all_files(a.path()),
        all_files(b.path()),
        all_files(c.path()),
    );
    assert_eq!(fa.len(), 10 * 6 + 10 * 2 + 2); // images + ground truth + marker
    assert_eq!(fa, fb);
    assert_ne!(fa, fc);
    // Regenerating in place gives the same bytes again.
    synthetic::generate(a.path(), &tiny(5)).unwrap();
    assert_eq!(all_files(a.path()), fb);
    assert!(synthetic::is_current(a.path(), &tiny(5)));
    assert!(!synthetic::is_current(a.path(), &tiny(6)));
}

#[test]
fn ilsvrc_layout_and_quirks() {
    let d = tempfile::tempdir().unwrap();
    let s = synthetic::generate(d.path(), &tiny(1)).unwrap();
    let rows = synthetic::class_rows(10).unwrap();
    assert_eq!(rows[0].wnid, "n01440764");
    assert_eq!(s.wnids.len(), 10);
    assert_eq!((s.train, s.val), (60, 20));
    let root = d.path();
    for w in &s.wnids {
        let n = std::fs::read_dir(root.join("train").join(w))
            .unwrap()
            .count();
        assert_eq!(n, 6, "{w}");
    }
    assert!(root.join("train/n01440764/n01440764_2.JPEG").is_file());
    assert!(root.join("val/ILSVRC2012_val_00000001.JPEG").is_file());
    assert!(root.join("val/ILSVRC2012_val_00000020.JPEG").is_file());
    let gt = std::fs::read_to_string(root.join(synthetic::GROUND_TRUTH)).unwrap();
    let ids: Vec<u32> = gt.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(ids.len(), 20);
    for r in &rows {
        assert_eq!(
            ids.iter().filter(|&&i| i == r.ilsvrc2012_id).count(),
            2,
            "{}",
            r.wnid
        );
    }
    // Quirks: grey, CMYK, PNG named .JPEG, lower-case .jpeg, tiny; grey in val.
    assert_eq!(s.quirks.len(), 6);
    let q: Vec<Vec<u8>> = s
        .quirks
        .iter()
        .map(|r| std::fs::read(root.join(r)).unwrap())
        .collect();
    assert!(s.quirks[3].ends_with(".jpeg"));
    assert!(s.quirks[2].ends_with(".JPEG") && q[2].starts_with(b"\x89PNG"));
    for b in &q {
        let img = decode_rgb(b).unwrap();
        assert_eq!(img.px.len(), (img.w * img.h * 3) as usize);
    }
    let grey = decode_rgb(&q[0]).unwrap();
    assert!(grey.px.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    let tiny_img = decode_rgb(&q[4]).unwrap();
    assert_eq!((tiny_img.w, tiny_img.h), (10, 7));
    // CMYK: the decoded colours are those drawn (compare with a re-draw of the same sample
    // being impossible here, so check it is a colour, not an inverted/near-black image).
    let cmyk = decode_rgb(&q[1]).unwrap();
    let mean: f64 = cmyk.px.iter().map(|&v| v as f64).sum::<f64>() / cmyk.px.len() as f64;
    assert!((30.0..230.0).contains(&mean), "CMYK mean {mean}");
}
