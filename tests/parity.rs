//! The parity check of `cargo xtask parity`, run on the committed fixtures.

use alexnet::parity::{fixture_files, run_file};
use std::path::Path;

fn fixture_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity")
}

#[test]
fn every_public_fixture_passes() {
    let files = fixture_files(&fixture_dir()).unwrap();
    assert_eq!(files.len(), 24, "the public fixture set has 24 files");
    let mut failed = Vec::new();
    for f in &files {
        let r = run_file(f);
        println!("{}", r.line());
        // Every reference tensor of the file was compared.
        assert!(
            r.errors.len() >= 2,
            "{}: only {} tensors compared",
            r.case,
            r.errors.len()
        );
        if !r.passed() {
            failed.push(r.line());
        }
    }
    assert!(failed.is_empty(), "failed: {failed:#?}");
}

#[test]
fn model_fixture_compares_every_gradient_and_activation() {
    let r = run_file(&fixture_dir().join("model_alexnet_small.safetensors"));
    let names: Vec<&str> = r.errors.iter().map(|(n, _)| n.as_str()).collect();
    for want in [
        "logits",
        "loss",
        "grad.x",
        "grad.conv1.weight",
        "grad.fc8.bias",
        "act.pool5",
    ] {
        assert!(names.contains(&want), "{want} not compared: {names:?}");
    }
    // 8 layers x 2 parameters + logits + loss + grad.x + 7 activations.
    assert_eq!(names.len(), 16 + 3 + 7);
}

#[test]
fn a_broken_fixture_is_a_failed_case_not_a_panic() {
    let dir = std::env::temp_dir().join(format!("alexnet-parity-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = std::fs::read(fixture_dir().join("relu.safetensors")).unwrap();
    let bad = dir.join("relu_truncated.safetensors");
    std::fs::write(&bad, &src[..src.len() / 2]).unwrap();
    let r = run_file(&bad);
    assert!(!r.passed());
    assert!(r.line().starts_with("FAIL relu_truncated"), "{}", r.line());
    // A wrong reference is caught: rewrite the file with one element of `y` changed.
    let mut f =
        alexnet_tensor::io::read_safetensors(&fixture_dir().join("relu.safetensors")).unwrap();
    f.f32s.get_mut("y").unwrap().data_mut()[3] += 1.0;
    let tensors: Vec<_> = f
        .f32s
        .iter()
        .map(|(n, t)| (n.clone(), t.shape().to_vec(), t.data()))
        .collect();
    let bytes = alexnet_tensor::io::safetensors_bytes(&tensors, &f.metadata).unwrap();
    let p = dir.join("relu_wrong.safetensors");
    std::fs::write(&p, bytes).unwrap();
    let r = run_file(&p);
    assert!(!r.passed(), "a corrupted reference must fail: {}", r.line());
    assert_eq!(r.worst().unwrap().0, "y");
    std::fs::remove_dir_all(&dir).unwrap();
}
