//! CUDA graphs for the training step (`ALEXNET_CUDA_GRAPH=on`) give the same bits as the same
//! steps without them; skipped with one line without a CUDA device.

use alexnet::gpu_check::{graph_identity, IDENTITY_STEPS};
use alexnet_cuda::{device_count, Gpu, Precision};
use std::sync::Arc;

#[test]
fn training_with_cuda_graphs_is_bit_identical() {
    if device_count() == 0 {
        println!("skipped: no CUDA device");
        return;
    }
    let gpu = Arc::new(Gpu::new(0).expect("a CUDA device is present but cannot be opened"));
    for p in [Precision::F32, Precision::Tf32] {
        let r = graph_identity(&gpu, "small", 16, p).unwrap();
        println!("{p:?}: {r:?}");
        assert_eq!(r.losses[0].len(), IDENTITY_STEPS);
        assert!(r.losses[0].iter().all(|l| l.is_finite()), "{r:?}");
        assert!(r.passed(), "{p:?}: {r:?}");
    }
}
