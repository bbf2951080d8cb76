//! A tiny run built by hand (no training): a synthetic shard set, a RunConfig, two models'
//! final.safetensors with random parameters and hand-written metrics logs; then `report` and
//! `predict`, their outputs, the averaging rules and the error cases.

use alexnet_data::{prepare, Dataset, PrepareOptions, Source, Split, SyntheticOptions, View};
use alexnet_eval::report::eval_view;
use alexnet_eval::{average_models, average_views, predict_to, report, PredictArgs, ReportArgs};
use alexnet_layers::loss::softmax_rows;
use alexnet_tensor::spec::NetSpec;
use alexnet_train::checkpoint::{save, FileInfo};
use alexnet_train::{Backend, DeviceChoice, RunConfig};
use indicatif::ProgressBar;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// conv1 has 96 kernels (3x3) and conv2 2 groups, like the paper's split, on 20x20 crops.
const TINY: &str = r#"
name = "tiny96"
[input]
channels = 3
image_size = 24
crop = 20
[init]
weight_std = 0.05
bias = 0.0
[train]
batch_size = 16
lr = 0.01
momentum = 0.9
weight_decay = 0.0005
epochs = 3
schedule = "plateau"
models = 2
[[layers]]
name = "conv1"
type = "conv2d"
out_channels = 96
kernel = 3
stride = 2
padding = 1
[[layers]]
name = "relu1"
type = "relu"
[[layers]]
name = "pool1"
type = "maxpool"
kernel = 3
stride = 2
[[layers]]
name = "conv2"
type = "conv2d"
out_channels = 16
kernel = 3
padding = 1
groups = 2
[[layers]]
name = "relu2"
type = "relu"
[[layers]]
name = "flatten"
type = "flatten"
[[layers]]
name = "fc8"
type = "linear"
"#;

const CLASSES: usize = 4;
const VAL: usize = 4 * 5;

struct Fixture {
    root: PathBuf,
    data: PathBuf,
}

/// Shards (prepared once per test binary) in CARGO_TARGET_TMPDIR.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("eval-report-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let data = root.join("shards");
        let mut o = PrepareOptions::new(Source::Synthetic { seed: 7 }, data.clone());
        o.image_size = 24;
        o.synthetic_dir = root.join("synthetic");
        o.synthetic = SyntheticOptions {
            classes: CLASSES,
            train_per_class: 6,
            val_per_class: VAL / CLASSES,
            min_side: 24,
            max_side: 40,
            ..Default::default()
        };
        prepare(&o).unwrap();
        Fixture { root, data }
    })
}

/// Deterministic pseudo-random parameters (uniform, std ~ `std`).
fn random_params(n: usize, seed: u64, std: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 * std * 1.732
        })
        .collect()
}

/// Writes a run with `models` models into `root/name`.
fn make_run(name: &str, models: usize) -> PathBuf {
    let f = fixture();
    let run = f.root.join(name);
    let _ = std::fs::remove_dir_all(&run);
    std::fs::create_dir_all(&run).unwrap();
    let spec = NetSpec::from_toml(TINY, "tiny96.toml").unwrap();
    let cfg = RunConfig {
        tool_version: "test".into(),
        preset: "tiny96.toml".into(),
        spec: spec.clone(),
        data: f.data.clone(),
        data_manifest_checksum: String::new(),
        num_classes: CLASSES,
        models,
        epochs: 3,
        batch_size: 16,
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 5e-4,
        schedule: "plateau".into(),
        seed: 1,
        device: "cpu".into(),
        precision: "f32".into(),
        conv: None,
        cudnn_algo: None,
        gpu_env: Default::default(),
        threads: 1,
        train_subset: None,
        init_from: None,
        pca_std: 0.1,
        flip: true,
        log_every: 1,
        checkpoint_every: 10,
    };
    cfg.save(&run).unwrap();
    let plan = spec.plan(CLASSES).unwrap();
    let ds = Dataset::open(&f.data).unwrap();
    let names: Vec<String> = ds.manifest.classes.iter().map(|c| c.name.clone()).collect();
    let meta = FileInfo::new(&spec, names).to_metadata().unwrap();
    for k in 0..models {
        let dir = RunConfig::model_dir(&run, k);
        std::fs::create_dir_all(&dir).unwrap();
        let params = random_params(plan.total, 100 + k as u64, 0.1);
        save(&dir.join("final.safetensors"), &plan, &params, None, &meta).unwrap();
        let mut log = String::new();
        for e in 1..=3u32 {
            for st in 1..=4u32 {
                let step = (e - 1) * 4 + st;
                let loss = 1.4 / (1.0 + 0.1 * step as f64) + 0.05 * k as f64;
                log.push_str(&format!(
                    "{{\"kind\":\"step\",\"epoch\":{e},\"step\":{step},\"loss\":{loss},\"lr\":0.01,\"img_per_s\":500.0}}\n"
                ));
            }
            log.push_str(&format!(
                "{{\"kind\":\"epoch\",\"epoch\":{e},\"step\":{},\"loss\":{},\"lr\":0.01,\"img_per_s\":{},\"train_top1_err\":0.6,\"train_top5_err\":null,\"val_top1_err\":{},\"val_top5_err\":{},\"seconds\":2.5}}\n",
                e * 4,
                1.3 / e as f64,
                400.0 + 100.0 * k as f64,
                0.7 - 0.1 * e as f64,
                0.2 - 0.05 * e as f64
            ));
        }
        std::fs::write(dir.join("metrics.jsonl"), log).unwrap();
    }
    run
}

fn args(run: &Path) -> ReportArgs {
    ReportArgs {
        run: run.to_path_buf(),
        device: "cpu".into(),
        batch: 32,
        limit: None,
        quiet: true,
    }
}

/// Every tag is closed and nested: a minimal XML structure check (no comments or CDATA here).
fn assert_well_formed(xml: &str) {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find('<') {
        let j = rest[i..].find('>').expect("unterminated tag") + i;
        let tag = &rest[i + 1..j];
        let name: String = tag
            .trim_start_matches('/')
            .split_whitespace()
            .next()
            .unwrap()
            .into();
        if tag.starts_with('/') {
            assert_eq!(
                stack.pop().as_deref(),
                Some(name.as_str()),
                "mismatched </{name}>"
            );
        } else if !tag.ends_with('/') {
            stack.push(name);
        }
        assert!(
            !rest[j + 1..].split('<').next().unwrap().contains('>'),
            "stray '>'"
        );
        rest = &rest[j + 1..];
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
}

fn one_line(e: &anyhow::Error) -> String {
    let s = format!("{e:#}");
    assert!(!s.contains('\n'), "error is not one line: {s}");
    s
}

#[test]
fn report_writes_tables_and_pictures() {
    let run = make_run("run2", 2);
    let md = report(&args(&run)).unwrap();
    assert_eq!(md, run.join("report.md"));

    let j: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    assert_eq!(j["classes"].as_array().unwrap().len(), CLASSES);
    assert!(j["classes"][0]["name"].is_string() && j["classes"][0]["wnid"].is_string());
    let keys = [
        "top1_err_center",
        "top5_err_center",
        "top1_err_10crop",
        "top5_err_10crop",
    ];
    let models = j["models"].as_array().unwrap();
    let ens = j["ensembles"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(ens.len(), 2);
    for (k, m) in models.iter().enumerate() {
        assert_eq!(m["model"], k);
        for key in keys {
            let v = m[key].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{key} = {v}");
        }
        // 4 classes: top-5 (capped at 4) always hits.
        assert_eq!(m["top5_err_center"].as_f64(), Some(0.0));
    }
    for (i, e) in ens.iter().enumerate() {
        assert_eq!(e["size"], i + 1);
        for key in keys {
            assert!((0.0..=1.0).contains(&e[key].as_f64().unwrap()));
        }
    }
    for key in keys {
        assert_eq!(
            ens[0][key], models[0][key],
            "ensemble of 1 != model 0 for {key}"
        );
    }
    assert_eq!(j["dataset"]["val"], VAL);
    assert_eq!(j["dataset"]["val_evaluated"], VAL);
    assert_eq!(j["dataset"]["image_size"], 24);
    assert_eq!(j["dataset"]["source"], "synthetic");
    assert_eq!(j["preset"], "tiny96.toml");
    assert_eq!(j["device"], "cpu");
    // 3 epochs x 2.5 s x 2 models; img/s mean of 400,400,400,500,500,500.
    assert!((j["training"]["seconds"].as_f64().unwrap() - 15.0).abs() < 1e-9);
    assert!((j["training"]["img_per_s"].as_f64().unwrap() - 450.0).abs() < 1e-9);
    assert!(j["evaluation_seconds"].as_f64().unwrap() >= 0.0);

    // Figure 3: 96 kernels of 3x3 in 2 panels of 48: scale ceil(33/3) = 11 -> 33 px cells,
    // 16 columns x 3 rows per panel, 2 px gaps (17 across, 4 down), panels stacked with an
    // 8 px gap.
    let png = image::open(run.join("conv1_filters.png")).unwrap();
    let (w, h) = (16 * 33 + 17 * 2, 2 * (3 * 33 + 4 * 2) + 8);
    assert_eq!((png.width(), png.height()), (w, h));

    let svg = std::fs::read_to_string(run.join("curves.svg")).unwrap();
    assert!(svg.starts_with("<svg"));
    assert!(svg.trim_end().ends_with("</svg>"));
    for k in 0..2 {
        assert!(
            svg.contains(&format!("<polyline class=\"model-{k}\"")),
            "no polyline for model {k}"
        );
    }
    assert_eq!(svg.matches("<svg").count(), 1);
    assert_well_formed(&svg);

    let text = std::fs::read_to_string(&md).unwrap();
    for needle in [
        "| 1 CNN |",
        "| 2 CNNs |",
        "| 5 CNNs |",
        "| 7 CNNs* |",
        "40.7",
        "26.2",
        "15.3",
    ] {
        assert!(text.contains(needle), "report.md lacks {needle}");
    }
    assert!(text.contains("synthetic") && text.contains("NOT on ILSVRC-2012"));
    assert!(text.contains("](curves.svg)") && text.contains("](conv1_filters.png)"));

    // --limit evaluates a prefix.
    let mut a = args(&run);
    a.limit = Some(7);
    report(&a).unwrap();
    let j: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    assert_eq!(j["dataset"]["val_evaluated"], 7);
}

#[test]
fn ten_crop_probabilities_are_the_mean_of_the_view_softmaxes() {
    // Hand-made: 2 samples x 2 views x 2 classes.
    let p = [0.1, 0.9, 0.3, 0.7, 0.5, 0.5, 1.0, 0.0];
    let a = average_views(&p, 2, 2);
    for (x, y) in a.iter().zip([0.2, 0.8, 0.75, 0.25]) {
        assert!((x - y).abs() < 1e-7, "{a:?}");
    }
    // One view is returned unchanged.
    assert_eq!(average_views(&p, 1, 2), p.to_vec());
    // Ensembles: the mean of the members; one member is itself exactly.
    let e = average_models(&[&[0.2, 0.8], &[0.6, 0.4], &[0.1, 0.9]]).unwrap();
    assert!((e[0] - 0.3).abs() < 1e-7 && (e[1] - 0.7).abs() < 1e-7);
    let one = [0.123_456_7f32, 0.876_543_3];
    assert_eq!(average_models(&[&one]).unwrap(), one.to_vec());
    assert!(average_models(&[&[0.5, 0.5], &[1.0]]).is_err());

    // The evaluation path: eval_view's 10-crop row = mean of the 10 patches' softmax.
    let run = make_run("run-views", 1);
    let cfg = RunConfig::load(&run).unwrap();
    let plan = cfg.spec.plan(CLASSES).unwrap();
    let ds = Dataset::open(&cfg.data).unwrap();
    let loaded =
        alexnet_train::checkpoint::load(&run.join("model-0/final.safetensors"), &plan).unwrap();
    let mut b = Backend::new(&plan, DeviceChoice::Cpu, 40, "f32").unwrap();
    b.set_params(&loaded.params).unwrap();
    let (probs, labels) = eval_view(
        &mut b,
        &ds,
        3,
        20,
        View::TenCrop,
        40,
        &ProgressBar::hidden(),
    )
    .unwrap();
    assert_eq!(probs.len(), 3 * CLASSES);
    assert_eq!(labels.len(), 3);
    let (x, _) = alexnet_data::eval_batch(&ds, Split::Val, &[1], 20, View::TenCrop).unwrap();
    let soft = softmax_rows(&b.predict(&x, 10).unwrap(), CLASSES);
    for c in 0..CLASSES {
        let m: f32 = (0..10).map(|v| soft[v * CLASSES + c]).sum::<f32>() / 10.0;
        assert!(
            (probs[CLASSES + c] - m).abs() < 1e-5,
            "class {c}: {} vs {m}",
            probs[CLASSES + c]
        );
    }
}

#[test]
fn predict_prints_top_n_per_image() {
    let run = make_run("run-predict", 2);
    let f = fixture();
    let val = f.root.join("synthetic/val");
    let imgs: Vec<PathBuf> = (1..=2)
        .map(|i| val.join(format!("ILSVRC2012_val_{i:08}.JPEG")))
        .collect();
    let mut out = Vec::new();
    let a = PredictArgs {
        images: imgs.clone(),
        run: run.clone(),
        device: "cpu".into(),
        top: 3,
    };
    let preds = predict_to(&a, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.lines().count(), 2 * (1 + 3), "{text}");
    assert_eq!(preds.len(), 2);
    for p in &preds {
        assert_eq!(p.top.len(), 3);
        assert!(p.top.windows(2).all(|w| w[0].3 >= w[1].3));
        assert!(p
            .top
            .iter()
            .all(|t| (0.0..=1.0).contains(&t.3) && !t.2.is_empty()));
    }
    // --top larger than the number of classes shows every class.
    let mut out = Vec::new();
    let a = PredictArgs {
        images: imgs[..1].to_vec(),
        run: run.clone(),
        device: "cpu".into(),
        top: 9,
    };
    predict_to(&a, &mut out).unwrap();
    assert_eq!(String::from_utf8(out).unwrap().lines().count(), 1 + CLASSES);

    // Missing and undecodable files: one-line errors naming the file.
    let missing = f.root.join("no-such-image.jpg");
    let a = PredictArgs {
        images: vec![missing.clone()],
        run: run.clone(),
        device: "cpu".into(),
        top: 5,
    };
    let e = one_line(&predict_to(&a, &mut Vec::new()).unwrap_err());
    assert!(e.contains("no-such-image.jpg"), "{e}");
    let junk = f.root.join("junk.JPEG");
    std::fs::write(&junk, b"this is not a JPEG").unwrap();
    let a = PredictArgs {
        images: vec![imgs[0].clone(), junk],
        run,
        device: "cpu".into(),
        top: 5,
    };
    let e = one_line(&predict_to(&a, &mut Vec::new()).unwrap_err());
    assert!(e.contains("junk.JPEG"), "{e}");
}

#[test]
fn clear_errors_for_broken_runs() {
    let f = fixture();
    // No config.json.
    let empty = f.root.join("empty-run");
    std::fs::create_dir_all(&empty).unwrap();
    let e = one_line(&report(&args(&empty)).unwrap_err());
    assert!(e.contains("config.json"), "{e}");

    // A model without final.safetensors.
    let run = make_run("run-unfinished", 3);
    std::fs::remove_file(run.join("model-2/final.safetensors")).unwrap();
    let e = one_line(&report(&args(&run)).unwrap_err());
    assert!(e.contains("model-2 has no final.safetensors"), "{e}");
    assert!(e.contains("cargo xtask train --resume --run"), "{e}");
    let a = PredictArgs {
        images: vec![f.root.join("x.jpg")],
        run: run.clone(),
        device: "cpu".into(),
        top: 5,
    };
    let e = one_line(&predict_to(&a, &mut Vec::new()).unwrap_err());
    assert!(e.contains("model-2 has no final.safetensors"), "{e}");

    // The shard folder is gone.
    let run = make_run("run-nodata", 1);
    let mut cfg = RunConfig::load(&run).unwrap();
    cfg.data = f.root.join("deleted-shards");
    cfg.save(&run).unwrap();
    let e = one_line(&report(&args(&run)).unwrap_err());
    assert!(e.contains("deleted-shards"), "{e}");

    // A damaged parameter file.
    let run = make_run("run-damaged", 1);
    std::fs::write(run.join("model-0/final.safetensors"), b"garbage").unwrap();
    let e = one_line(&report(&args(&run)).unwrap_err());
    assert!(e.contains("final.safetensors"), "{e}");
}
