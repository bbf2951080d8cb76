use alexnet_data::augment::pca_lighting;
use safetensors::SafeTensors;

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    let den: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn pca_lighting_matches_fixtures() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/parity");
    for case in ["pca_lighting_imagenet", "pca_lighting_random"] {
        let bytes = std::fs::read(dir.join(format!("{case}.safetensors"))).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let image_shape = st.tensor("image").unwrap().shape().to_vec();
        assert_eq!(image_shape.len(), 3);
        assert_eq!(image_shape[2], 3);
        let mut image = f32s(&st, "image");
        let ev = f32s(&st, "eigvec");
        let eigvec = [
            [ev[0], ev[1], ev[2]],
            [ev[3], ev[4], ev[5]],
            [ev[6], ev[7], ev[8]],
        ];
        let eigval: [f32; 3] = f32s(&st, "eigval").try_into().unwrap();
        let alpha: [f32; 3] = f32s(&st, "alpha").try_into().unwrap();
        let delta = pca_lighting(&mut image, &eigvec, &eigval, &alpha);
        let rd = rel_l2(&delta, &f32s(&st, "delta"));
        let ro = rel_l2(&image, &f32s(&st, "out"));
        assert!(rd <= 1e-4 && ro <= 1e-4, "{case}: delta {rd:e} out {ro:e}");
        if case.ends_with("imagenet") {
            assert!((eigval[0] - 55.46).abs() < 1e-3);
        }
    }
}
