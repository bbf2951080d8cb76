//! The whole flow on tiny data, as a user runs it: prepare the synthetic set, train an ensemble,
//! report (center crop, 10 patches, every ensemble size, pictures), predict.

mod common;

use alexnet_eval::{predict_to, report, PredictArgs, ReportArgs};
use alexnet_train::cli::run_train;
use common::{args, data_sized, tmp};

#[test]
fn prepare_train_report_predict() {
    let root = tmp("e2e");
    let data = data_sized(&root, 24, 10, 28);
    let mut a = args(&root, &data, "run");
    a.epochs = Some(2);
    let run = run_train(&a).unwrap();
    let r = report(&ReportArgs {
        run: run.clone(),
        device: "cpu".into(),
        batch: 64,
        limit: None,
        quiet: true,
    })
    .unwrap();
    assert_eq!(r, run.join("report.md"));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("report.json")).unwrap()).unwrap();
    let models = json["models"].as_array().unwrap();
    let ensembles = json["ensembles"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(ensembles.len(), 2);
    for row in models.iter().chain(ensembles) {
        for key in [
            "top1_err_center",
            "top5_err_center",
            "top1_err_10crop",
            "top5_err_10crop",
        ] {
            let v = row[key].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{key} = {v}");
        }
    }
    let md = std::fs::read_to_string(&r).unwrap();
    assert!(
        md.contains("1 CNN") && md.contains("40.7"),
        "the paper's Table 2 rows are shown"
    );
    for pic in ["curves.svg", "conv1_filters.png"] {
        assert!(
            std::fs::metadata(run.join(pic)).unwrap().len() > 100,
            "{pic}"
        );
    }
    // predict on one of the drawn JPEGs.
    let img = std::fs::read_dir(root.join("synthetic/train"))
        .unwrap()
        .filter_map(|e| e.ok())
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().filter_map(|e| e.ok()))
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "JPEG"))
        .unwrap();
    let mut out = Vec::new();
    let p = predict_to(
        &PredictArgs {
            images: vec![img],
            run: run.clone(),
            device: "cpu".into(),
            top: 3,
        },
        &mut out,
    )
    .unwrap();
    assert_eq!(p.len(), 1);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.lines().count(), 4, "{text}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// The training machinery learns: with augmentation off, a small ensemble memorises 32 images
/// (4 classes x 8) far below chance (75% top-1 error) on its own training data.
#[test]
fn training_memorises_a_small_set() {
    let root = tmp("memorise");
    let data = data_sized(&root, 8, 4, 28);
    let mut a = args(&root, &data, "run");
    a.models = Some(1);
    a.epochs = Some(80);
    a.pca_std = 0.0;
    a.no_flip = true;
    a.schedule = Some("step:1000".into());
    a.log_every = 1000;
    let run = run_train(&a).unwrap();
    let m = alexnet_train::metrics::read_jsonl(&run.join("model-0/metrics.jsonl")).unwrap();
    let epochs: Vec<_> = m.iter().filter(|v| v["kind"] == "epoch").collect();
    assert_eq!(epochs.len(), 80);
    let err = |v: &serde_json::Value| v["train_top1_err"].as_f64().unwrap();
    let loss = |v: &serde_json::Value| v["loss"].as_f64().unwrap();
    let last5: f64 = epochs[75..].iter().map(|v| err(v)).sum::<f64>() / 5.0;
    assert!(last5 < 0.25, "train top-1 error {last5} after 80 epochs");
    assert!(
        loss(epochs[79]) < 0.6 * loss(epochs[0]),
        "loss {} -> {}",
        loss(epochs[0]),
        loss(epochs[79])
    );
    std::fs::remove_dir_all(&root).unwrap();
}
