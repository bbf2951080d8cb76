//! Real labelled data: Debian's `dataset-fashion-mnist` (installed by .ci/run) goes through
//! `prepare-data --fashion-mnist`. Skips with one line where the package is not installed.

use alexnet_data::{prepare, Dataset, PrepareOptions, Source, Split};
use std::path::Path;

#[test]
fn debian_fashion_mnist_is_ingested_with_the_right_counts() {
    let src = Path::new("/usr/share/datasets/fashion-mnist");
    if !src.is_dir() {
        println!(
            "skipped: {} not installed (apt-get install dataset-fashion-mnist)",
            src.display()
        );
        return;
    }
    let out = std::env::temp_dir().join(format!("alexnet-fmnist-{}", std::process::id()));
    let mut o = PrepareOptions::new(
        Source::FashionMnist {
            dir: src.to_path_buf(),
        },
        out.clone(),
    );
    o.progress = false;
    let m = prepare(&o).unwrap();
    assert_eq!((m.splits.train.count, m.splits.val.count), (60_000, 10_000));
    assert_eq!(m.image_size, 28);
    assert_eq!(m.classes.len(), 10);
    assert_eq!(m.classes[0].name, "T-shirt/top");
    assert!(m.skipped.is_empty());
    let ds = Dataset::open(&out).unwrap();
    // Grey replicated to RGB: every pixel has R = G = B.
    let img = ds.split(Split::Train).image(0).unwrap();
    assert!(img.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    // Each class has 6,000 training images.
    let mut counts = [0usize; 10];
    let train = ds.split(Split::Train);
    (0..train.len()).for_each(|i| counts[train.label(i) as usize] += 1);
    assert_eq!(counts, [6000; 10]);
    std::fs::remove_dir_all(&out).unwrap();
}
