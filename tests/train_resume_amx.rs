//! Exact resume with the CPU's AMX GEMMs (`--precision bf16x3` and `bf16`): a run stopped
//! part-way and resumed ends with the same bytes as an uninterrupted one, and differs from the
//! f32 run (so the tiles really ran). Its own test binary: every GEMM is sent to AMX
//! (`set_amx_min_side(1)`, process-wide), since the tiny net's GEMMs are below the default
//! size. Skips with a line on a machine without AMX.

mod common;

use alexnet_train::cli::run_train_with;
use common::{args, tiny_data, tmp};

#[test]
fn amx_runs_resume_byte_identically() {
    if let Err(e) = alexnet_tensor::amx::available() {
        println!("skipped: no AMX on this machine ({e})");
        return;
    }
    alexnet_tensor::gemm::set_amx_min_side(1);
    let root = tmp("resume-amx");
    let data = tiny_data(&root);
    let final_of = |run: &str, k: usize| {
        std::fs::read(root.join(format!("{run}/model-{k}/final.safetensors"))).unwrap()
    };
    let mut f = args(&root, &data, "f32");
    run_train_with(&f, None).unwrap();
    for precision in ["bf16x3", "bf16"] {
        let mut a = args(&root, &data, &format!("{precision}-full"));
        a.precision = precision.into();
        run_train_with(&a, None).unwrap();
        let mut b = args(&root, &data, &format!("{precision}-cut"));
        b.precision = precision.into();
        run_train_with(&b, Some(4)).unwrap();
        // The resumed run takes its precision from the run's config.json.
        b.resume = true;
        b.precision = "f32".into();
        run_train_with(&b, None).unwrap();
        for k in 0..2 {
            let full = final_of(&format!("{precision}-full"), k);
            assert!(
                full == final_of(&format!("{precision}-cut"), k),
                "{precision} model {k}: the resumed run differs"
            );
            assert!(
                full != final_of("f32", k),
                "{precision} model {k}: same as f32"
            );
        }
    }
    // An f32 run after the AMX ones is f32 again (the precision is set per run).
    f.run = root.join("f32-again");
    run_train_with(&f, None).unwrap();
    assert!(final_of("f32", 0) == final_of("f32-again", 0));
    std::fs::remove_dir_all(&root).unwrap();
}
