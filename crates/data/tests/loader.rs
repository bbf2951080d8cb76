#![allow(clippy::needless_range_loop)] // tests index images explicitly

use std::sync::Arc;

use alexnet_data::loader::{sample_draw, train_batch, train_batch_recycled, view_patches};
use alexnet_data::prepare::from_records;
use alexnet_data::{
    batches_per_epoch, epoch_order, eval_batch, Dataset, LoaderConfig, Pixels, Recycler, Split,
    TrainLoader, View,
};

fn small_dataset(dir: &std::path::Path, n: usize, s: usize) -> Arc<Dataset> {
    let train: Vec<(u32, Vec<u8>)> = (0..n)
        .map(|i| {
            (
                i as u32 % 3,
                (0..s * s * 3)
                    .map(|k| ((k * 7 + i * 13) % 251) as u8)
                    .collect(),
            )
        })
        .collect();
    from_records(dir, s as u32, 3, &train, &train[..4]).unwrap();
    Arc::new(Dataset::open(dir).unwrap())
}

#[test]
fn epoch_order_is_a_reproducible_permutation() {
    let a = epoch_order(1000, 7, 3);
    assert_eq!(a, epoch_order(1000, 7, 3));
    assert_ne!(a, epoch_order(1000, 7, 4));
    assert_ne!(a, epoch_order(1000, 8, 3));
    let mut s = a.clone();
    s.sort();
    assert_eq!(s, (0..1000).collect::<Vec<u32>>());
    assert_eq!(batches_per_epoch(10, 3, true), 3);
    assert_eq!(batches_per_epoch(10, 3, false), 4);
}

#[test]
fn loader_is_deterministic_and_resumes() {
    let d = tempfile::tempdir().unwrap();
    let ds = small_dataset(d.path(), 37, 12);
    let cfg = LoaderConfig {
        batch_size: 5,
        crop: 8,
        seed: 11,
        prefetch: 2,
        ..Default::default()
    };
    let full: Vec<_> = TrainLoader::new(ds.clone(), cfg.clone(), 2, 0)
        .unwrap()
        .collect();
    assert_eq!(full.len(), 7);
    assert!(full
        .iter()
        .enumerate()
        .all(|(i, b)| b.index == i && b.x().unwrap().len() == 5 * 3 * 64));
    let again: Vec<_> = TrainLoader::new(ds.clone(), cfg.clone(), 2, 0)
        .unwrap()
        .collect();
    assert_eq!(full, again);
    let resumed: Vec<_> = TrainLoader::new(ds.clone(), cfg.clone(), 2, 4)
        .unwrap()
        .collect();
    assert_eq!(&full[4..], &resumed[..]);
    assert_eq!(train_batch(&ds, &cfg, 2, 3).unwrap(), full[3]);
    let other: Vec<_> = TrainLoader::new(ds.clone(), cfg.clone(), 3, 0)
        .unwrap()
        .collect();
    assert_ne!(full[0].x(), other[0].x());
    // Labels follow the epoch order.
    let order = epoch_order(37, 11, 2);
    let tr = ds.split(Split::Train);
    assert_eq!(
        full[1].labels,
        order[5..10]
            .iter()
            .map(|&i| tr.label(i as usize))
            .collect::<Vec<_>>()
    );
    // Dropping early does not hang; subset limits the epoch.
    let mut it = TrainLoader::new(ds.clone(), cfg.clone(), 0, 0).unwrap();
    assert!(it.next().is_some());
    drop(it);
    let sub = LoaderConfig {
        subset: Some(10),
        drop_last: false,
        ..cfg.clone()
    };
    assert_eq!(TrainLoader::new(ds.clone(), sub, 0, 0).unwrap().count(), 2);
    assert!(TrainLoader::new(ds, LoaderConfig { crop: 13, ..cfg }, 0, 0).is_err());
}

#[test]
fn sample_values_match_the_draw() {
    let d = tempfile::tempdir().unwrap();
    let ds = small_dataset(d.path(), 9, 10);
    let cfg = LoaderConfig {
        batch_size: 3,
        crop: 6,
        seed: 5,
        pca_std: 0.1,
        ..Default::default()
    };
    let b = train_batch(&ds, &cfg, 1, 1).unwrap();
    let order = epoch_order(9, 5, 1);
    let st = &ds.stats;
    for j in 0..3 {
        let pos = 3 + j;
        let dr = sample_draw(&cfg, 10, 1, pos);
        let img = ds.split(Split::Train).image(order[pos] as usize).unwrap();
        let delta = alexnet_data::augment::pca_delta(&st.eigvec, &st.eigval, &dr.alpha);
        for c in 0..3 {
            for y in 0..6 {
                for x in 0..6 {
                    let sx = if dr.patch.flip { 5 - x } else { x };
                    let k = ((dr.patch.top + y) * 10 + dr.patch.left + sx) * 3 + c;
                    let want = img[k] as f32 + delta[c] - st.mean[k];
                    let got = b.x().unwrap()[j * 108 + c * 36 + y * 6 + x];
                    assert!((got - want).abs() < 1e-4, "{got} vs {want}");
                }
            }
        }
    }
}

#[test]
fn crop_flip_and_alpha_statistics() {
    let cfg = LoaderConfig {
        crop: 224,
        seed: 3,
        pca_std: 0.1,
        ..Default::default()
    };
    let n = 66_000;
    let mut tops = [0u32; 33];
    let mut lefts = [0u32; 33];
    let (mut flips, mut a2, mut a1) = (0u32, 0f64, 0f64);
    for p in 0..n {
        let d = sample_draw(&cfg, 256, 0, p);
        tops[d.patch.top] += 1;
        lefts[d.patch.left] += 1;
        flips += d.patch.flip as u32;
        a1 += d.alpha[0] as f64;
        a2 += (d.alpha[1] as f64).powi(2);
    }
    // 33 offsets (0..=32), 2000 expected each.
    assert!(
        tops.iter()
            .chain(&lefts)
            .all(|&c| (1750..2250).contains(&c)),
        "{tops:?}"
    );
    let fr = flips as f64 / n as f64;
    assert!((fr - 0.5).abs() < 0.01, "flip rate {fr}");
    assert!((a1 / n as f64).abs() < 0.002);
    assert!(((a2 / n as f64).sqrt() - 0.1).abs() < 0.002);
    let off = LoaderConfig {
        flip: false,
        pca_std: 0.0,
        ..cfg
    };
    assert!((0..1000).all(|p| {
        let d = sample_draw(&off, 256, 0, p);
        !d.patch.flip && d.alpha == [0.0; 3]
    }));
}

#[test]
fn ten_crop_order_on_a_hand_made_image() {
    let d = tempfile::tempdir().unwrap();
    let s = 4;
    // Record A: value 16y + 4x + c; record B: zeros. Mean = A / 2, so A - mean = A / 2.
    let a: Vec<u8> = (0..s * s * 3)
        .map(|k| (16 * (k / 12) + 4 * ((k / 3) % 4) + k % 3) as u8)
        .collect();
    from_records(
        d.path(),
        4,
        2,
        &[(1, a.clone()), (0, vec![0; 48])],
        &[(1, a.clone())],
    )
    .unwrap();
    let ds = Dataset::open(d.path()).unwrap();
    let (x, labels) = eval_batch(&ds, Split::Val, &[0], 2, View::TenCrop).unwrap();
    assert_eq!(labels, [1]);
    assert_eq!(x.len(), 10 * 3 * 4);
    // [top-left, top-right, bottom-left, bottom-right, center, then mirrored], (top, left):
    let corners = [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1)];
    for v in 0..10 {
        let (t, l) = corners[v % 5];
        let flip = v >= 5;
        for c in 0..3 {
            for y in 0..2 {
                for xx in 0..2 {
                    let sx = if flip { 1 - xx } else { xx };
                    let want = (16 * (t + y) + 4 * (l + sx) + c) as f32 / 2.0;
                    assert_eq!(
                        x[v * 12 + c * 4 + y * 2 + xx],
                        want,
                        "view {v} c {c} y {y} x {xx}"
                    );
                }
            }
        }
    }
    let (xc, _) = eval_batch(&ds, Split::Val, &[0, 0], 2, View::Center).unwrap();
    assert_eq!(xc.len(), 2 * 12);
    assert_eq!(&xc[..12], &x[4 * 12..5 * 12]);
    assert_eq!(view_patches(256, 224, View::TenCrop)[3].top, 32);
    assert!(eval_batch(&ds, Split::Val, &[5], 2, View::Center).is_err());
}

#[test]
fn mean_and_eigen_stats_on_a_hand_made_case() {
    let d = tempfile::tempdir().unwrap();
    let a: Vec<u8> = [10u8, 20, 30].repeat(4);
    let b: Vec<u8> = [30u8, 20, 10].repeat(4);
    from_records(d.path(), 2, 1, &[(0, a), (0, b)], &[]).unwrap();
    let ds = Dataset::open(d.path()).unwrap();
    assert_eq!(ds.stats.mean, vec![20.0; 12]);
    // Covariance [[100,0,-100],[0,0,0],[-100,0,100]]: eigenvalues 200, 0, 0; first eigenvector
    // (1, 0, -1)/sqrt(2). Stored eigval = eig / 255.
    let st = &ds.stats;
    assert!(
        (st.eigval[0] - 200.0 / 255.0).abs() < 1e-5,
        "{:?}",
        st.eigval
    );
    assert!(st.eigval[1].abs() < 1e-5 && st.eigval[2].abs() < 1e-5);
    let h = 0.5f32.sqrt();
    assert!((st.eigvec[0][0] - h).abs() < 1e-5 && st.eigvec[1][0].abs() < 1e-5);
    assert!((st.eigvec[2][0] + h).abs() < 1e-5);
}

/// Raw batches (u8 records + draws, what the CUDA trainer uploads) carry exactly what the f32
/// batches are made of: `patch_to_chw` of each record with its draw gives the f32 batch, bit
/// for bit, at the same (seed, epoch, batch), including a resumed loader.
#[test]
fn raw_batches_rebuild_the_f32_batches() {
    use alexnet_data::augment::{patch_to_chw, pca_delta};
    use alexnet_data::Pixels;
    let d = tempfile::tempdir().unwrap();
    let (s, c) = (12, 9);
    let ds = small_dataset(d.path(), 23, s);
    let cfg = LoaderConfig {
        batch_size: 4,
        crop: c,
        seed: 3,
        pca_std: 0.1,
        ..Default::default()
    };
    let raw_cfg = LoaderConfig {
        raw: true,
        ..cfg.clone()
    };
    let f32s: Vec<_> = TrainLoader::new(ds.clone(), cfg, 1, 2).unwrap().collect();
    let raws: Vec<_> = TrainLoader::new(ds.clone(), raw_cfg, 1, 2)
        .unwrap()
        .collect();
    assert_eq!((f32s.len(), raws.len()), (3, 3));
    let st = &ds.stats;
    let mut flips = 0;
    for (f, r) in f32s.iter().zip(&raws) {
        assert_eq!((f.index, &f.labels), (r.index, &r.labels));
        assert!(r.x().is_none());
        let Pixels::U8 { records, draws } = &r.pixels else {
            panic!("batch {} is not raw", r.index);
        };
        assert_eq!((records.len(), draws.len()), (4 * s * s * 3, 4));
        let mut x = vec![0.0f32; 4 * 3 * c * c];
        for (j, dr) in draws.iter().enumerate() {
            flips += dr.patch.flip as usize;
            let delta = pca_delta(&st.eigvec, &st.eigval, &dr.alpha);
            let rec = &records[j * s * s * 3..(j + 1) * s * s * 3];
            let out = &mut x[j * 3 * c * c..(j + 1) * 3 * c * c];
            patch_to_chw(rec, &st.mean, s, c, dr.patch, delta, out);
        }
        assert_eq!(f.x().unwrap(), &x[..], "batch {}", f.index);
    }
    assert!(flips > 0 && flips < 12, "{flips} of 12 samples flipped");
}

#[test]
fn view_count_is_the_number_of_patches() {
    for view in [View::Center, View::TenCrop] {
        assert_eq!(view.count(), view_patches(256, 224, view).len(), "{view:?}");
    }
    assert_eq!((View::Center.count(), View::TenCrop.count()), (1, 10));
}

#[test]
fn recycled_record_buffers_give_the_same_raw_batches() {
    let d = tempfile::tempdir().unwrap();
    let ds = small_dataset(d.path(), 23, 8);
    let cfg = LoaderConfig {
        batch_size: 5,
        crop: 6,
        seed: 3,
        drop_last: false,
        raw: true,
        ..Default::default()
    };
    let plain: Vec<_> = TrainLoader::new(ds.clone(), cfg.clone(), 1, 0)
        .unwrap()
        .collect();
    assert_eq!(plain.len(), 5, "4 full batches and a partial one");
    // Every buffer handed back at once, poisoned: a refilled buffer must be overwritten whole.
    let loader = TrainLoader::new(ds.clone(), cfg.clone(), 1, 0).unwrap();
    let recycler = loader.recycler();
    let mut recycled = Vec::new();
    for b in loader {
        recycled.push(b.clone());
        if let Pixels::U8 { mut records, .. } = b.pixels {
            records.iter_mut().for_each(|v| *v = 0xAB);
            recycler.give(records);
        }
    }
    assert_eq!(recycled, plain);
    // The synchronous form with a recycler, including a longer buffer for a partial batch and
    // a shorter one for a full batch.
    let r = Recycler::default();
    r.give(vec![7u8; 5 * 8 * 8 * 3 + 11]);
    assert_eq!(
        train_batch_recycled(&ds, &cfg, (1, 4), &r).unwrap(),
        plain[4]
    );
    r.give(vec![7u8; 3]);
    assert_eq!(
        train_batch_recycled(&ds, &cfg, (1, 0), &r).unwrap(),
        plain[0]
    );
    // A buffer of the batch's size is refilled in place (no new allocation), poison overwritten.
    let buf = vec![0xABu8; 5 * 8 * 8 * 3];
    let at = buf.as_ptr();
    r.give(buf);
    let b = train_batch_recycled(&ds, &cfg, (1, 2), &r).unwrap();
    assert_eq!(b, plain[2]);
    match b.pixels {
        Pixels::U8 { records, .. } => assert_eq!(records.as_ptr(), at),
        Pixels::F32(_) => panic!("a raw batch"),
    }
}
