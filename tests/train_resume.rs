//! Training end to end on a tiny synthetic set, and exact resume: a run stopped part-way and
//! resumed ends with a byte-identical final.safetensors.

mod common;

use alexnet_train::cli::run_train_with;
use alexnet_train::metrics::read_jsonl;
use common::{args, devices, tiny_data, tmp};

#[test]
fn resume_is_byte_identical_and_logs_are_not_duplicated() {
    for device in devices() {
        resume_on(device, None);
        if device == "cuda" {
            // The Winograd convolutions (`--conv winograd`, kept in the run's config),
            // cuDNN's algorithms timed (pinned on resume from cudnn_algos.json), and both
            // timed: each convolution call on its fastest implementation (`--conv timed`,
            // pinned from conv_picks.json) with cuDNN's fastest algorithms.
            resume_on(device, Some("winograd"));
            resume_on(device, Some("timed"));
            resume_on(device, Some("timed-conv"));
        }
    }
}

fn resume_on(device: &str, conv: Option<&str>) {
    println!("resume test on {device}, convolutions {conv:?}");
    let root = tmp(&format!("resume-{device}-{}", conv.unwrap_or("default")));
    let data = tiny_data(&root);
    // Uninterrupted run.
    let mut a = args(&root, &data, "full");
    a.device = device.into();
    let set = |a: &mut alexnet_train::cli::TrainArgs| match conv {
        Some("timed") => a.cudnn_algo = Some("timed".into()),
        Some("timed-conv") => (a.conv, a.cudnn_algo) = (Some("timed".into()), Some("timed".into())),
        other => a.conv = other.map(str::to_string),
    };
    set(&mut a);
    run_train_with(&a, None).unwrap();
    // Interrupted: stop after 3 steps (mid-epoch, between checkpoints), then again after 5
    // more (crossing the epoch boundary and into model 1), then finish; only the first call
    // names --conv: the resumed ones take it from the run's config.
    let mut b = args(&root, &data, "cut");
    b.device = device.into();
    set(&mut b);
    let kept: &[&str] = match conv {
        Some("timed") => &["cudnn_algos.json"],
        Some("timed-conv") => &["cudnn_algos.json", "conv_picks.json"],
        _ => &[],
    };
    for file in kept {
        // Timing can pick differently in each run: the interrupted run starts from the
        // uninterrupted one's picks, as a resume starts from its own run's.
        let picks = root.join("full").join(file);
        assert!(picks.exists(), "a timed run keeps its picks in {file}");
        std::fs::create_dir_all(root.join("cut")).unwrap();
        std::fs::copy(&picks, root.join("cut").join(file)).unwrap();
    }
    run_train_with(&b, Some(3)).unwrap();
    b.resume = true;
    (b.conv, b.cudnn_algo) = (None, None);
    run_train_with(&b, Some(5)).unwrap();
    run_train_with(&b, None).unwrap();
    for k in 0..2 {
        let f1 = std::fs::read(root.join(format!("full/model-{k}/final.safetensors"))).unwrap();
        let f2 = std::fs::read(root.join(format!("cut/model-{k}/final.safetensors"))).unwrap();
        assert!(f1 == f2, "model {k}: resumed final.safetensors differs");
        let m1 = read_jsonl(&root.join(format!("full/model-{k}/metrics.jsonl"))).unwrap();
        let m2 = read_jsonl(&root.join(format!("cut/model-{k}/metrics.jsonl"))).unwrap();
        let steps = |m: &[serde_json::Value]| -> Vec<(String, u64, f64)> {
            m.iter()
                .map(|v| {
                    (
                        v["kind"].as_str().unwrap().to_string(),
                        v["step"].as_u64().unwrap(),
                        v["loss"].as_f64().unwrap(),
                    )
                })
                .collect()
        };
        assert_eq!(steps(&m1), steps(&m2), "model {k}: metrics lines differ");
        // 96 images / 16 = 6 steps per epoch, 2 epochs: 12 step lines + 2 epoch lines.
        assert_eq!(m1.len(), 14);
    }
    // The two ensemble members differ (their own seeds).
    let p0 = std::fs::read(root.join("full/model-0/final.safetensors")).unwrap();
    let p1 = std::fs::read(root.join("full/model-1/final.safetensors")).unwrap();
    assert_ne!(p0, p1);
    // Training again into the same folder without --resume is refused with a clear error.
    let e = run_train_with(&a, None).unwrap_err().to_string();
    assert!(
        e.contains("already holds a run") && e.contains("--resume"),
        "{e}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// On CUDA the trainer uploads u8 records and augments on the GPU; `--cpu-augment` uploads the
/// CPU loader's f32 batches instead. The batches are bit-identical, so the two runs must end
/// with byte-identical weights. Skips (with a line) without a CUDA device.
#[test]
fn gpu_augmentation_trains_exactly_like_the_cpu_loader() {
    if !devices().contains(&"cuda") {
        println!("skipped: no CUDA device (the GPU augmentation path needs one)");
        return;
    }
    let root = tmp("gpu-augment");
    let data = tiny_data(&root);
    let mut finals = Vec::new();
    for (run, cpu_augment) in [("gpu-aug", false), ("cpu-aug", true)] {
        let mut a = args(&root, &data, run);
        a.device = "cuda".into();
        a.models = Some(1);
        a.cpu_augment = cpu_augment;
        run_train_with(&a, None).unwrap();
        finals.push(std::fs::read(root.join(format!("{run}/model-0/final.safetensors"))).unwrap());
    }
    assert!(
        finals[0] == finals[1],
        "GPU-augmented training differs from CPU-augmented"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn bad_flags_and_missing_data_are_clear_errors() {
    let root = tmp("badflags");
    let mut a = args(&root, &root.join("nowhere"), "r");
    let e = run_train_with(&a, None).unwrap_err().to_string();
    assert!(e.contains("nowhere"), "{e}");
    a.device = "tpu".into();
    a.data = tiny_data(&root);
    let e = format!("{:#}", run_train_with(&a, None).unwrap_err());
    assert!(e.contains("--device tpu"), "{e}");
    let mut a = args(&root, &a.data, "r2");
    a.schedule = Some("cosine".into());
    let e = format!("{:#}", run_train_with(&a, None).unwrap_err());
    assert!(e.contains("--schedule cosine"), "{e}");
    // A CUDA-only precision on the CPU is refused before the run folder is made.
    let mut a = args(&root, &a.data, "r3");
    a.precision = "tf32".into();
    let e = format!("{:#}", run_train_with(&a, None).unwrap_err());
    assert!(
        e.contains("--precision tf32") && e.contains("bf16x3"),
        "{e}"
    );
    assert!(!root.join("r3").exists());
    // So is an unknown convolution implementation.
    let mut a = args(&root, &a.data, "r4");
    a.conv = Some("fft".into());
    let e = format!("{:#}", run_train_with(&a, None).unwrap_err());
    assert!(
        e.contains("--conv fft") && e.contains("winograd or timed"),
        "{e}"
    );
    assert!(!root.join("r4").exists());
    let mut a = args(&root, &a.data, "r5");
    a.cudnn_algo = Some("fastest".into());
    let e = format!("{:#}", run_train_with(&a, None).unwrap_err());
    assert!(e.contains("--cudnn-algo fastest"), "{e}");
    assert!(!root.join("r5").exists());
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_diverging_run_stops_with_a_clear_error_and_keeps_a_good_checkpoint() {
    let root = tmp("nan");
    let data = tiny_data(&root);
    let mut a = args(&root, &data, "r");
    a.lr = Some(1e4);
    a.checkpoint_every = 1;
    let e = format!("{:#}", run_train_with(&a, None).unwrap_err());
    assert!(
        e.contains("the loss became") && e.contains("lower --lr"),
        "{e}"
    );
    let ckpt = root.join("r/model-0/checkpoint.safetensors");
    if ckpt.exists() {
        // Whatever was saved before the divergence is a loadable, finite checkpoint.
        let cfg = alexnet_train::RunConfig::load(&root.join("r")).unwrap();
        let plan = cfg.spec.plan(cfg.num_classes).unwrap();
        alexnet_train::checkpoint::load(&ckpt, &plan).unwrap();
    }
    assert!(!root.join("r/model-0/final.safetensors").exists());
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn checkpoints_move_between_devices() {
    if !devices().contains(&"cuda") {
        println!("skipped: no CUDA device (checkpoints between CUDA and CPU)");
        return;
    }
    let root = tmp("cross-device");
    let data = tiny_data(&root);
    let mut a = args(&root, &data, "cpu");
    a.models = Some(1);
    run_train_with(&a, None).unwrap();
    // Start on CUDA, stop mid-epoch, resume on the CPU and finish.
    let mut b = args(&root, &data, "mixed");
    b.models = Some(1);
    b.device = "cuda".into();
    run_train_with(&b, Some(4)).unwrap();
    b.device = "cpu".into();
    b.resume = true;
    run_train_with(&b, None).unwrap();
    let load = |run: &str| {
        let path = root.join(format!("{run}/model-0/final.safetensors"));
        alexnet_tensor::io::read_safetensors(&path).unwrap()
    };
    let (pa, pb) = (load("cpu").f32s, load("mixed").f32s);
    assert_eq!(pa.len(), pb.len());
    assert!(pa.contains_key("conv1.weight"));
    for ((name, ta), (nb, tb)) in pa.iter().zip(&pb) {
        assert_eq!(name, nb);
        let err = alexnet_tensor::rel_l2(tb.data(), ta.data());
        // Same data order, seeds and dropout masks; only the float summation order differs.
        assert!(err < 1e-3, "{name}: CUDA-then-CPU vs CPU rel L2 {err:.2e}");
    }
    std::fs::remove_dir_all(&root).unwrap();
}
