//! The presets in data/ build the networks DESIGN.md describes.

use alexnet::presets::load_preset;

#[test]
fn paper_preset_has_the_papers_parameter_count_and_shapes() {
    let spec = load_preset("paper").unwrap();
    let plan = spec.plan(1000).unwrap();
    assert_eq!(plan.total, 60_965_224);
    let out = |n: &str| plan.layer(n).unwrap().out_shape.clone();
    assert_eq!(out("conv1"), vec![96, 55, 55]);
    assert_eq!(out("pool1"), vec![96, 27, 27]);
    assert_eq!(out("pool2"), vec![256, 13, 13]);
    assert_eq!(out("pool5"), vec![256, 6, 6]);
    assert_eq!(
        plan.param("conv2.weight").unwrap().shape,
        vec![256, 48, 5, 5]
    );
    for (name, bias) in [
        ("conv1", 0.0),
        ("conv2", 1.0),
        ("conv3", 0.0),
        ("conv4", 1.0),
        ("conv5", 1.0),
        ("fc6", 1.0),
        ("fc7", 1.0),
        ("fc8", 0.0),
    ] {
        let e = plan.param(&format!("{name}.bias")).unwrap();
        assert_eq!(e.init_constant, bias, "{name}");
        assert_eq!(
            plan.param(&format!("{name}.weight")).unwrap().init_std,
            0.01,
            "{name}"
        );
    }
}

#[test]
fn small_and_6conv_presets_plan() {
    let small = load_preset("small").unwrap().plan(10).unwrap();
    assert_eq!(small.input, [3, 56, 56]);
    assert_eq!(small.layer("pool5").unwrap().out_shape, vec![64, 6, 6]);
    let six = load_preset("paper-6conv").unwrap().plan(1000).unwrap();
    assert_eq!(six.total, 60_965_224 + 256 * 256 * 9 + 256);
    assert_eq!(six.layer("conv6").unwrap().out_shape, vec![256, 6, 6]);
}

#[test]
fn unknown_preset_is_a_clear_error() {
    let e = load_preset("nope").unwrap_err().to_string();
    assert!(
        e.contains("--preset nope") && e.contains("small, paper, paper-6conv"),
        "{e}"
    );
}
