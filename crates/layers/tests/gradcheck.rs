//! Finite-difference gradient checks in f64 for every backward pass: the analytic vector-Jacobian
//! product is compared with central differences of `L = sum(y * dy)`.

use alexnet_layers::conv::{conv2d_backward, conv2d_forward, ConvShape};
use alexnet_layers::dropout::{dropout_backward, dropout_forward};
use alexnet_layers::linear::{linear_backward, linear_forward};
use alexnet_layers::loss::softmax_cross_entropy;
use alexnet_layers::lrn::{lrn_backward, lrn_forward, LrnParams};
use alexnet_layers::pool::{maxpool_backward, maxpool_forward, PoolShape};
use alexnet_layers::relu::{relu_backward, relu_forward};
use alexnet_layers::{Mode, Model};
use alexnet_tensor::rng::Rng;
use alexnet_tensor::spec::{InitSpec, LayerSpec, Plan};

fn randn(n: usize, seed: u64, scale: f64) -> Vec<f64> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.normal() as f64 * scale).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Central-difference gradient of `f` at `x` (every coordinate).
fn numeric(x: &[f64], mut f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    let eps = 1e-6;
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = xp[i];
            xp[i] = orig + eps;
            let hi = f(&xp);
            xp[i] = orig - eps;
            let lo = f(&xp);
            xp[i] = orig;
            (hi - lo) / (2.0 * eps)
        })
        .collect()
}

fn assert_close(what: &str, analytic: &[f64], numeric: &[f64], tol: f64) {
    assert_eq!(analytic.len(), numeric.len(), "{what}: length");
    let num: f64 = analytic
        .iter()
        .zip(numeric)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        .sqrt();
    let den: f64 = numeric.iter().map(|b| b * b).sum::<f64>().sqrt().max(1e-12);
    assert!(
        num / den < tol,
        "{what}: rel error {:.3e} >= {tol:e}",
        num / den
    );
    assert!(
        den > 1e-9,
        "{what}: the gradient is zero, the check proves nothing"
    );
}

#[test]
fn conv2d_gradients_with_stride_padding_groups() {
    for s in [
        ConvShape {
            n: 2,
            c: 4,
            h: 7,
            w: 6,
            o: 6,
            k: 3,
            stride: 2,
            pad: 1,
            groups: 2,
        },
        ConvShape {
            n: 3,
            c: 3,
            h: 9,
            w: 9,
            o: 4,
            k: 4,
            stride: 3,
            pad: 2,
            groups: 1,
        },
        // Stride 1: "same" padding (the presets' conv2-5), no padding (narrower output),
        // padding k-1 (wider output) and padding beyond k-1.
        ConvShape {
            n: 2,
            c: 4,
            h: 6,
            w: 5,
            o: 6,
            k: 3,
            stride: 1,
            pad: 1,
            groups: 2,
        },
        ConvShape {
            n: 3,
            c: 3,
            h: 7,
            w: 8,
            o: 2,
            k: 5,
            stride: 1,
            pad: 0,
            groups: 1,
        },
        ConvShape {
            n: 2,
            c: 2,
            h: 4,
            w: 3,
            o: 4,
            k: 2,
            stride: 1,
            pad: 1,
            groups: 2,
        },
        ConvShape {
            n: 1,
            c: 2,
            h: 3,
            w: 4,
            o: 3,
            k: 1,
            stride: 1,
            pad: 1,
            groups: 1,
        },
    ] {
        let (ho, wo) = (s.ho(), s.wo());
        let x = randn(s.n * s.c * s.h * s.w, 1, 1.0);
        let w = randn(s.o * s.c / s.groups * s.k * s.k, 2, 0.5);
        let b = randn(s.o, 3, 0.5);
        let dy = randn(s.n * s.o * ho * wo, 4, 1.0);
        let fwd = |x: &[f64], w: &[f64], b: &[f64]| {
            let mut y = vec![0.0; s.n * s.o * ho * wo];
            conv2d_forward(x, w, b, &mut y, &s).unwrap();
            dot(&y, &dy)
        };
        let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; s.o]);
        conv2d_backward(&x, &w, &dy, &mut dx, &mut dw, &mut db, &s).unwrap();
        assert_close("conv dx", &dx, &numeric(&x, |x| fwd(x, &w, &b)), 1e-7);
        assert_close("conv dw", &dw, &numeric(&w, |w| fwd(&x, w, &b)), 1e-7);
        assert_close("conv db", &db, &numeric(&b, |b| fwd(&x, &w, b)), 1e-7);
    }
}

#[test]
fn conv2d_bad_arguments_are_errors() {
    let s = ConvShape {
        n: 1,
        c: 3,
        h: 5,
        w: 5,
        o: 4,
        k: 3,
        stride: 1,
        pad: 0,
        groups: 2,
    };
    let mut y = vec![0.0f32; 4 * 9];
    let e = conv2d_forward(&[0.0; 75], &[0.0; 54], &[0.0; 4], &mut y, &s).unwrap_err();
    assert!(e.to_string().contains("groups 2 must divide C=3"), "{e}");
    let s = ConvShape { groups: 1, ..s };
    let e = conv2d_forward(&[0.0; 74], &[0.0; 108], &[0.0; 4], &mut y, &s).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("conv2d: x has 74 elements, expected 75"),
        "{e}"
    );
}

#[test]
fn relu_gradient() {
    let x = randn(50, 5, 1.0);
    let dy = randn(50, 6, 1.0);
    let mut y = vec![0.0; 50];
    relu_forward(&x, &mut y).unwrap();
    let mut dx = vec![0.0; 50];
    relu_backward(&y, &dy, &mut dx).unwrap();
    let f = |x: &[f64]| {
        let mut y = vec![0.0; 50];
        relu_forward(x, &mut y).unwrap();
        dot(&y, &dy)
    };
    assert_close("relu dx", &dx, &numeric(&x, f), 1e-7);
}

#[test]
fn lrn_gradient_including_clipped_windows() {
    for (c, size, beta) in [(7, 5, 0.75), (3, 5, 0.75), (6, 3, 0.6)] {
        let (n, hw) = (2, 5);
        let p = LrnParams {
            size,
            alpha: 1e-2,
            beta,
            k: 2.0,
        };
        let x = randn(n * c * hw, 7, 3.0);
        let dy = randn(n * c * hw, 8, 1.0);
        let f = |x: &[f64]| {
            let (mut y, mut s) = (vec![0.0; x.len()], vec![0.0; x.len()]);
            lrn_forward(x, &mut y, &mut s, n, c, hw, &p).unwrap();
            dot(&y, &dy)
        };
        let (mut y, mut s, mut dx) = (vec![0.0; x.len()], vec![0.0; x.len()], vec![0.0; x.len()]);
        lrn_forward(&x, &mut y, &mut s, n, c, hw, &p).unwrap();
        lrn_backward(&x, &s, &dy, &mut dx, n, c, hw, &p).unwrap();
        assert_close("lrn dx", &dx, &numeric(&x, f), 1e-7);
    }
}

#[test]
fn lrn_hand_computed() {
    // One pixel, two channels, size 3: s = 2 + 0.5 * (1 + 4) = 4.5 for both channels;
    // y = x / 4.5^0.75.
    let p = LrnParams {
        size: 3,
        alpha: 0.5,
        beta: 0.75,
        k: 2.0,
    };
    let (mut y, mut s) = (vec![0.0f64; 2], vec![0.0; 2]);
    lrn_forward(&[1.0, 2.0], &mut y, &mut s, 1, 2, 1, &p).unwrap();
    let d = 4.5f64.powf(0.75);
    assert!((y[0] - 1.0 / d).abs() < 1e-12 && (y[1] - 2.0 / d).abs() < 1e-12);
}

#[test]
fn maxpool_gradient_and_hand_case() {
    let s = PoolShape {
        planes: 3,
        h: 8,
        w: 7,
        k: 3,
        stride: 2,
    };
    let x = randn(s.planes * 56, 9, 1.0);
    let m = s.planes * s.ho() * s.wo();
    let dy = randn(m, 10, 1.0);
    let f = |x: &[f64]| {
        let (mut y, mut a) = (vec![0.0; m], vec![0u32; m]);
        maxpool_forward(x, &mut y, &mut a, &s).unwrap();
        dot(&y, &dy)
    };
    let (mut y, mut a, mut dx) = (vec![0.0; m], vec![0u32; m], vec![0.0; x.len()]);
    maxpool_forward(&x, &mut y, &mut a, &s).unwrap();
    maxpool_backward(&dy, &a, &mut dx, &s).unwrap();
    assert_close("maxpool dx", &dx, &numeric(&x, f), 1e-7);
    // 1 plane 3x5, windows at columns 0..3 and 2..5 overlap at column 2, the maximum.
    let s = PoolShape {
        planes: 1,
        h: 3,
        w: 5,
        k: 3,
        stride: 2,
    };
    let x = [0., 1., 9., 1., 0., 0., 1., 2., 3., 0., 0., 0., 0., 0., 0.];
    let (mut y, mut a, mut dx) = (vec![0.0; 2], vec![0u32; 2], vec![0.0; 15]);
    maxpool_forward(&x, &mut y, &mut a, &s).unwrap();
    assert_eq!(y, vec![9.0, 9.0]);
    maxpool_backward(&[1.0, 2.0], &a, &mut dx, &s).unwrap();
    assert_eq!(dx[2], 3.0, "overlapping windows add their gradients");
    assert_eq!(dx.iter().sum::<f64>(), 3.0);
}

#[test]
fn linear_gradient() {
    let (n, fin, fout) = (3, 5, 4);
    let x = randn(n * fin, 11, 1.0);
    let w = randn(fout * fin, 12, 1.0);
    let b = randn(fout, 13, 1.0);
    let dy = randn(n * fout, 14, 1.0);
    let fwd = |x: &[f64], w: &[f64], b: &[f64]| {
        let mut y = vec![0.0; n * fout];
        linear_forward(x, w, b, &mut y, n, fin, fout).unwrap();
        dot(&y, &dy)
    };
    let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; fout]);
    linear_backward(&x, &w, &dy, Some(&mut dx), &mut dw, &mut db, n, fin, fout).unwrap();
    assert_close("linear dx", &dx, &numeric(&x, |x| fwd(x, &w, &b)), 1e-7);
    assert_close("linear dw", &dw, &numeric(&w, |w| fwd(&x, w, &b)), 1e-7);
    assert_close("linear db", &db, &numeric(&b, |b| fwd(&x, &w, b)), 1e-7);
}

#[test]
fn softmax_cross_entropy_gradient_and_hand_case() {
    let (n, c) = (4, 6);
    let logits = randn(n * c, 15, 2.0);
    let labels = [0u32, 5, 2, 2];
    let mut d = vec![0.0; n * c];
    softmax_cross_entropy(&logits, &labels, &mut d, c).unwrap();
    let f = |l: &[f64]| {
        let mut d = vec![0.0; n * c];
        softmax_cross_entropy(l, &labels, &mut d, c).unwrap()
    };
    assert_close("softmax dlogits", &d, &numeric(&logits, f), 1e-7);
    // Two equal logits: loss = ln 2.
    let loss = softmax_cross_entropy(&[3.0f64, 3.0], &[1], &mut [0.0; 2], 2).unwrap();
    assert!((loss - std::f64::consts::LN_2).abs() < 1e-12);
    let e = softmax_cross_entropy(&[0.0f64; 2], &[2], &mut [0.0; 2], 2).unwrap_err();
    assert!(e.to_string().contains("label 2"), "{e}");
}

#[test]
fn dropout_gradient_and_statistics() {
    let n = 200_000;
    let x = vec![1.0f64; n];
    let (mut y, mut m) = (vec![0.0; n], vec![0.0; n]);
    dropout_forward(&x, &mut y, &mut m, 0.5, 99).unwrap();
    let kept = m.iter().filter(|&&v| v > 0.0).count() as f64 / n as f64;
    // Binomial(n, 0.5): std of the fraction is 0.0011; 5 sigma is 0.0056.
    assert!((kept - 0.5).abs() < 0.0056, "kept fraction {kept}");
    assert!(
        m.iter().all(|&v| v == 0.0 || v == 2.0),
        "inverted scaling 1/(1-p)"
    );
    let mean = y.iter().sum::<f64>() / n as f64;
    assert!(
        (mean - 1.0).abs() < 0.012,
        "expected activation is preserved: {mean}"
    );
    let (mut y2, mut m2) = (vec![0.0; n], vec![0.0; n]);
    dropout_forward(&x, &mut y2, &mut m2, 0.5, 99).unwrap();
    assert_eq!(m, m2, "same seed, same mask");
    dropout_forward(&x, &mut y2, &mut m2, 0.5, 100).unwrap();
    assert_ne!(m, m2);
    // Gradient: linear in x for a fixed mask.
    let xs = randn(40, 16, 1.0);
    let dy = randn(40, 17, 1.0);
    let (mut y, mut mk) = (vec![0.0; 40], vec![0.0; 40]);
    dropout_forward(&xs, &mut y, &mut mk, 0.3, 5).unwrap();
    let mut dx = vec![0.0; 40];
    dropout_backward(&dy, &mk, &mut dx).unwrap();
    let f = |x: &[f64]| {
        let (mut y, mut mm) = (vec![0.0; 40], vec![0.0; 40]);
        dropout_forward(x, &mut y, &mut mm, 0.3, 5).unwrap();
        dot(&y, &dy)
    };
    assert_close("dropout dx", &dx, &numeric(&xs, f), 1e-7);
    assert!(dropout_forward(&xs, &mut y, &mut mk, 1.0, 5).is_err());
}

fn tiny_plan(fc6: usize) -> Plan {
    let text = r#"[
        {"name":"conv1","type":"conv2d","out_channels":4,"kernel":3,"stride":2,"padding":1},
        {"name":"relu1","type":"relu"},
        {"name":"norm1","type":"lrn","size":3,"alpha":0.01,"beta":0.75,"k":2.0},
        {"name":"pool1","type":"maxpool","kernel":3,"stride":2},
        {"name":"conv2","type":"conv2d","out_channels":4,"kernel":3,"padding":1,"groups":2},
        {"name":"relu2","type":"relu"},
        {"name":"flatten","type":"flatten"},
        {"name":"fc6","type":"linear","out_features":FC6},
        {"name":"relu6","type":"relu"},
        {"name":"drop6","type":"dropout","p":0.5},
        {"name":"fc8","type":"linear"}
    ]"#;
    let layers: Vec<LayerSpec> =
        serde_json::from_str(&text.replace("FC6", &fc6.to_string())).unwrap();
    Plan::new(
        &layers,
        [3, 11, 11],
        3,
        &InitSpec {
            weight_std: 0.3,
            bias: 0.05,
        },
    )
    .unwrap()
}

#[test]
fn whole_model_gradients_in_training_mode() {
    let plan = tiny_plan(6);
    let mut model: Model<f64> = Model::new(plan.clone());
    model.init(3);
    let n = 2;
    let x = randn(n * 3 * 11 * 11, 18, 1.0);
    let labels = [1u32, 2];
    let mode = Mode::Train { seed: 4 };
    model.forward(&x, n, mode).unwrap();
    let mut dl = vec![0.0; n * 3];
    softmax_cross_entropy(model.logits(), &labels, &mut dl, 3).unwrap();
    let dx = model.backward(&dl, true).unwrap().unwrap();
    let grads = model.grads.clone();
    let params = model.params.clone();
    let mut m2 = model.clone();
    let mut loss_at = |p: &[f64], x: &[f64]| {
        m2.params.copy_from_slice(p);
        m2.forward(x, n, mode).unwrap();
        let mut d = vec![0.0; n * 3];
        softmax_cross_entropy(m2.logits(), &labels, &mut d, 3).unwrap()
    };
    let num_p = numeric(&params, |p| loss_at(p, &x));
    for e in &plan.params {
        let r = e.offset..e.offset + e.len;
        assert_close(&e.name, &grads[r.clone()], &num_p[r], 1e-6);
    }
    assert_close("model dx", &dx, &numeric(&x, |x| loss_at(&params, x)), 1e-6);
}

#[test]
fn sgd_reduces_the_loss_and_eval_is_deterministic() {
    let plan = tiny_plan(32);
    let mut model: Model<f32> = Model::new(plan);
    model.init(1);
    let x: Vec<f32> = randn(4 * 3 * 11 * 11, 19, 1.0)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let labels = [0u32, 1, 2, 1];
    model.forward(&x, 4, Mode::Eval).unwrap();
    let a = model.logits().to_vec();
    model.forward(&x, 4, Mode::Eval).unwrap();
    assert_eq!(a, model.logits());
    let eval_loss = |m: &mut Model<f32>| {
        m.forward(&x, 4, Mode::Eval).unwrap();
        let mut d = vec![0.0; 12];
        softmax_cross_entropy(m.logits(), &labels, &mut d, 3).unwrap()
    };
    let first = eval_loss(&mut model);
    for step in 0..100 {
        model.forward(&x, 4, Mode::Train { seed: step }).unwrap();
        model.loss_backward(&labels).unwrap();
        model.sgd(0.01, 0.9, 5e-4).unwrap();
    }
    let last = eval_loss(&mut model);
    assert!(last < 0.3 * first, "loss {first} -> {last}");
}

#[test]
fn infer_mode_gives_eval_logits_and_refuses_backward() {
    // The paper-topology tiny plan has LRN and max-pool, whose forward state Infer skips.
    let plan = tiny_plan(32);
    assert!(plan
        .layers
        .iter()
        .any(|l| matches!(l.op, alexnet_tensor::spec::Op::Lrn { .. })));
    let mut model: Model<f32> = Model::new(plan);
    model.init(3);
    let x: Vec<f32> = randn(4 * 3 * 11 * 11, 23, 1.0)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let eval = model.forward(&x, 4, Mode::Eval).unwrap().to_vec();
    let infer = model.forward(&x, 4, Mode::Infer).unwrap().to_vec();
    assert!(eval
        .iter()
        .zip(&infer)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    assert!(eval.iter().any(|&v| v != 0.0));
    // The ReLU was fused into conv1 (its own activation left empty), relu1 is filled.
    assert!(model.activation("conv1").unwrap().is_empty());
    assert!(model.activation("relu1").unwrap().iter().any(|&v| v > 0.0));
    let err = model.backward(&vec![0.1; eval.len()], false).unwrap_err();
    assert!(err.to_string().contains("no saved forward state"), "{err}");
    // A training forward afterwards restores what backward needs. Its conv1 ReLU is fused too
    // (relu1 comes before any dropout, so it equals the Eval forward's bit for bit).
    model.forward(&x, 4, Mode::Eval).unwrap();
    let relu1 = model.activation("relu1").unwrap().to_vec();
    assert!(!model.activation("conv1").unwrap().is_empty());
    model.forward(&x, 4, Mode::Train { seed: 1 }).unwrap();
    assert!(model.activation("conv1").unwrap().is_empty());
    assert_eq!(model.activation("relu1").unwrap(), &relu1[..]);
    assert!(model.backward(&vec![0.1; eval.len()], false).is_ok());
}

#[test]
fn pool_argmax_override_routes_the_gradient_and_checks_its_input() {
    let plan = tiny_plan(6);
    let mut model: Model<f64> = Model::new(plan);
    model.init(5);
    let n = 2;
    let x = randn(n * 3 * 11 * 11, 29, 1.0);
    let labels = [0u32, 2];
    let mode = Mode::Train { seed: 7 };
    model.forward(&x, n, mode).unwrap();
    let arg = model.pool_argmax("pool1").unwrap().to_vec();
    // pool1 input 4 x 6 x 6 (conv1 stride 2 of 11x11), output 4 x 2 x 2 per sample.
    assert_eq!(arg.len(), n * 4 * 2 * 2);
    model.loss_backward(&labels).unwrap();
    let base = model.grads.clone();
    // The same decisions give the same gradients, bit for bit.
    model.forward(&x, n, mode).unwrap();
    model.set_pool_argmax("pool1", &arg).unwrap();
    model.loss_backward(&labels).unwrap();
    assert_eq!(model.grads, base);
    // Another decision in one window moves conv1's gradient (and nothing above pool1).
    let mut moved = arg.clone();
    moved[0] = if arg[0] == 0 { 1 } else { 0 };
    model.forward(&x, n, mode).unwrap();
    model.set_pool_argmax("pool1", &moved).unwrap();
    model.loss_backward(&labels).unwrap();
    let g1 = model.grad("conv1.weight").unwrap().to_vec();
    let mut m0 = model.clone();
    m0.grads.copy_from_slice(&base);
    assert_ne!(g1, m0.grad("conv1.weight").unwrap());
    assert_eq!(model.grad("conv2.weight"), m0.grad("conv2.weight"));
    // Bad input: not a pool, wrong length, an index outside the plane.
    let e = model.set_pool_argmax("conv1", &arg).unwrap_err();
    assert!(e.to_string().contains("not a max-pool"), "{e}");
    let e = model.set_pool_argmax("pool1", &arg[1..]).unwrap_err();
    assert!(e.to_string().contains("elements"), "{e}");
    let mut bad = arg.clone();
    bad[3] = 36;
    let e = model.set_pool_argmax("pool1", &bad).unwrap_err();
    assert!(e.to_string().contains("outside the 36-element"), "{e}");
}
