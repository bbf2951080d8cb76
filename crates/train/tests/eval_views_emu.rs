//! The CUDA evaluation inputs without a GPU: the records `eval_records` gathers and the samples
//! `view_samples` builds, run through `augment_u8` on the kernel emulator (kernels/augment.cu
//! as C++ on the CPU) as `GpuNet::launch_predict_staged` launches it, give the CPU loader's
//! `eval_batch` views bit for bit: ten crops and the centre crop, several records per pass,
//! records out of order and repeated.

use alexnet_cuda::emu::Emu;
use alexnet_cuda::kernels::KernelFile;
use alexnet_cuda::ops::augment::augment_u8_emulated;
use alexnet_cuda::AugmentParams;
use alexnet_data::prepare::from_records;
use alexnet_data::{eval_batch, eval_records, view_patches, Dataset, Split, View};
use alexnet_train::backend::view_samples;

/// A dataset of `n` validation records of S x S, every byte different across records.
fn dataset(dir: &std::path::Path, n: usize, s: usize) -> Dataset {
    let recs: Vec<(u32, Vec<u8>)> = (0..n)
        .map(|i| {
            let px = (0..s * s * 3)
                .map(|k| ((k * 7 + i * 13) % 251) as u8)
                .collect();
            (i as u32 % 3, px)
        })
        .collect();
    from_records(dir, s as u32, 3, &recs, &recs).unwrap();
    Dataset::open(dir).unwrap()
}

/// The augment kernel on the emulator, as the GPU evaluation path calls it.
fn device_views(e: &Emu, ds: &Dataset, idx: &[usize], crop: usize, view: View) -> Vec<f32> {
    let s = ds.image_size();
    let (records, _) = eval_records(ds, Split::Val, idx).unwrap();
    let samples = view_samples(idx.len(), &view_patches(s, crop, view));
    let mut p = AugmentParams::square(samples.len(), s, crop, s).unwrap();
    p.records = idx.len() as u32;
    augment_u8_emulated(e, (&records, &ds.stats.mean, &samples), p, None, 16).unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

#[test]
fn device_views_equal_the_cpu_loaders() {
    if !Emu::available() {
        println!("skipped: no C++ compiler (the kernel emulator needs one)");
        return;
    }
    let e = Emu::load(KernelFile::Augment).unwrap();
    let d = tempfile::tempdir().unwrap();
    let ds = dataset(d.path(), 7, 12);
    for (idx, crop, view) in [
        (vec![0usize, 1, 2], 8, View::TenCrop),
        (vec![4, 5], 9, View::TenCrop),
        (vec![6, 3, 1, 3], 8, View::Center),
        (vec![2], 12, View::TenCrop),
    ] {
        let (want, _) = eval_batch(&ds, Split::Val, &idx, crop, view).unwrap();
        let got = device_views(&e, &ds, &idx, crop, view);
        assert_eq!(bits(&got), bits(&want), "{idx:?} crop {crop} {view:?}");
    }
}

#[test]
fn eval_records_are_the_stored_images_and_refuse_bad_indices() {
    let d = tempfile::tempdir().unwrap();
    let ds = dataset(d.path(), 5, 6);
    let val = ds.split(Split::Val);
    let (records, labels) = eval_records(&ds, Split::Val, &[3, 0, 3]).unwrap();
    let rec = 6 * 6 * 3;
    for (k, &i) in [3usize, 0, 3].iter().enumerate() {
        assert_eq!(&records[k * rec..(k + 1) * rec], &val.image(i).unwrap()[..]);
        assert_eq!(labels[k], val.label(i));
    }
    let e = eval_records(&ds, Split::Val, &[5]).unwrap_err().to_string();
    assert!(e.contains("index 5 >= 5 records"), "{e}");
}
