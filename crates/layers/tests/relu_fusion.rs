//! The backward passes that apply the preceding ReLU's backward as they write dx (LRN,
//! max-pool, convolution; the model uses them for every ReLU followed by one of these) give
//! the same bits as the layer's backward followed by a separate ReLU backward.
use alexnet_layers::conv::{conv2d_backward_opt, ConvShape};
use alexnet_layers::lrn::{lrn_backward, lrn_backward_relu, lrn_forward, LrnParams};
use alexnet_layers::pool::{maxpool_backward, maxpool_backward_relu, maxpool_forward, PoolShape};
use alexnet_layers::relu::relu_backward;

/// A ReLU's output: about 40% exact zeros, the rest in (0, 4).
fn relu_out(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 10.0 - 4.0).max(0.0) * 0.5
        })
        .collect()
}

fn signed(len: usize, seed: u64) -> Vec<f32> {
    relu_out(len, seed)
        .iter()
        .enumerate()
        .map(|(i, v)| if i % 3 == 0 { -v } else { v - 0.7 })
        .collect()
}

/// dx, then the ReLU backward on it, as two passes.
fn unfused(x: &[f32], dx: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0; dx.len()];
    relu_backward(x, dx, &mut out).unwrap();
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|e| e.to_bits()).collect()
}

#[test]
fn lrn_backward_relu_is_lrn_backward_then_relu_backward() {
    let (n, c, hw) = (3, 7, 45);
    let x = relu_out(n * c * hw, 1);
    let dy = signed(x.len(), 2);
    for beta in [0.75, 0.6] {
        let p = LrnParams {
            size: 5,
            alpha: 1e-2,
            beta,
            k: 2.0,
        };
        let (mut y, mut s) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        lrn_forward(&x, &mut y, &mut s, n, c, hw, &p).unwrap();
        let (mut dx, mut fused) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        lrn_backward(&x, &s, &dy, &mut dx, n, c, hw, &p).unwrap();
        lrn_backward_relu(&x, &s, &dy, &mut fused, [n, c, hw], &p, true).unwrap();
        assert_eq!(bits(&fused), bits(&unfused(&x, &dx)), "beta {beta}");
        assert!(fused.iter().filter(|&&v| v == 0.0).count() > x.len() / 4);
        assert!(
            dx.iter().zip(&x).any(|(&d, &xi)| xi == 0.0 && d != 0.0),
            "the mask matters"
        );
    }
}

#[test]
fn maxpool_backward_relu_is_maxpool_backward_then_relu_backward() {
    let s = PoolShape {
        planes: 6,
        h: 27,
        w: 27,
        k: 3,
        stride: 2,
    };
    // Mostly zeros, so that some windows hold only zeros (their argmax then has x = 0).
    let x: Vec<f32> = relu_out(s.planes * s.h * s.w, 3)
        .iter()
        .enumerate()
        .map(|(i, &v)| if i % 4 == 0 { v } else { 0.0 })
        .collect();
    let m = s.planes * s.ho() * s.wo();
    let (mut y, mut arg) = (vec![0.0; m], vec![0u32; m]);
    maxpool_forward(&x, &mut y, &mut arg, &s).unwrap();
    let dy = signed(m, 4);
    let (mut dx, mut fused) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    maxpool_backward(&dy, &arg, &mut dx, &s).unwrap();
    maxpool_backward_relu(&dy, &arg, &mut fused, &s, Some(&x)).unwrap();
    assert_eq!(bits(&fused), bits(&unfused(&x, &dx)));
    assert!(
        dx.iter().zip(&x).any(|(&d, &xi)| xi == 0.0 && d != 0.0),
        "the mask matters"
    );
    assert!(maxpool_backward_relu(&dy, &arg, &mut fused, &s, Some(&x[1..])).is_err());
}

#[test]
fn conv_backward_with_relu_is_conv_backward_then_relu_backward() {
    // One-sample chunks (40x40) and multi-sample chunks with groups (12x12).
    for (n, h, groups) in [(3, 40, 1), (9, 12, 2)] {
        let s = ConvShape {
            n,
            c: 4,
            h,
            w: h,
            o: 6,
            k: 3,
            stride: 1,
            pad: 1,
            groups,
        };
        let x = relu_out(n * s.c * h * h, 5);
        let w = signed(s.o * (s.c / groups) * 9, 6);
        let dy = signed(n * s.o * h * h, 7);
        let run = |relu: bool| {
            let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; 6]);
            let mut scratch = Vec::new();
            let dxo = Some(&mut dx[..]);
            conv2d_backward_opt(&x, &w, &dy, dxo, &mut dw, &mut db, &s, &mut scratch, relu)
                .unwrap();
            (dx, dw, db)
        };
        let (dx, dw, db) = run(false);
        let (fused, fdw, fdb) = run(true);
        assert_eq!(
            bits(&fused),
            bits(&unfused(&x, &dx)),
            "{n}x{h}x{h} g{groups}"
        );
        assert_eq!((bits(&fdw), bits(&fdb)), (bits(&dw), bits(&db)));
        assert!(
            dx.iter().zip(&x).any(|(&d, &xi)| xi == 0.0 && d != 0.0),
            "the mask matters"
        );
    }
}
