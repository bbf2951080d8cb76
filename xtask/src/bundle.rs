//! `cargo xtask device-bundle`: everything a lent GPU machine (no Rust there, x86-64 like this
//! one) needs for the CUDA checks, in `.device/` (git-ignored): the release `alexnet` binary
//! and the test binaries with GPU tests, stripped and packed into `bin.tar.gz` (the device
//! tool carries at most 64 MiB with the working tree), and `run.sh`, which unpacks them and runs
//! `gpu-check`, then the GPU tests, within one call's 10 minutes. Then, with the device tool:
//! carry `[".device"]`, command `bash .device/run.sh [all|gpu-check|tests]`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The folder of the bundle (repository root relative).
pub const DIR: &str = ".device";

/// (package, integration test) pairs whose binaries hold GPU tests.
const GPU_TESTS: [(&str, &str); 3] = [
    ("alexnet", "cuda_graphs"),
    ("alexnet", "train_resume"),
    ("alexnet-cuda", "parity"),
];

/// Builds the bundle; a one-line error names the step that failed.
pub fn device_bundle(cargo: &str) -> Result<(), String> {
    let root = std::env::current_dir().map_err(|e| format!("current directory: {e}"))?;
    let dir = root.join(DIR);
    let bin = dir.join("bin");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("remove {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&bin).map_err(|e| format!("create {}: {e}", bin.display()))?;
    run(
        Command::new(cargo).args(["build", "--release", "-p", "alexnet", "--bin", "alexnet"]),
        "cargo build --release (alexnet)",
    )?;
    let mut files = vec![(root.join("target/release/alexnet"), "alexnet".to_string())];
    for (pkg, test) in GPU_TESTS {
        let out = Command::new(cargo)
            .args([
                "test",
                "--release",
                "--no-run",
                "--message-format=json",
                "-p",
                pkg,
            ])
            .args(["--test", test])
            .output()
            .map_err(|e| format!("cargo test --no-run ({test}): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cargo test --release --no-run -p {pkg} --test {test} failed: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            ));
        }
        let exe = executables(&String::from_utf8_lossy(&out.stdout))
            .pop()
            .ok_or_else(|| format!("cargo built no test executable for {pkg} --test {test}"))?;
        files.push((exe, format!("test-{test}")));
    }
    for (src, name) in &files {
        let dst = bin.join(name);
        std::fs::copy(src, &dst).map_err(|e| format!("copy {}: {e}", src.display()))?;
        // Symbols are most of a binary's size; a missing `strip` only costs size.
        let _ = Command::new("strip").arg(&dst).status();
    }
    run(
        Command::new("tar")
            .args(["czf", "bin.tar.gz", "bin"])
            .current_dir(&dir),
        "tar czf .device/bin.tar.gz",
    )?;
    std::fs::remove_dir_all(&bin).map_err(|e| format!("remove {}: {e}", bin.display()))?;
    let script = RUN_SH.replace("@SRC@", &root.display().to_string());
    std::fs::write(dir.join("run.sh"), script).map_err(|e| format!("write run.sh: {e}"))?;
    let size = std::fs::metadata(dir.join("bin.tar.gz")).map_or(0, |m| m.len());
    println!(
        "{DIR}/: bin.tar.gz ({:.1} MiB: alexnet and {} test binaries) and run.sh",
        size as f64 / (1 << 20) as f64,
        GPU_TESTS.len()
    );
    println!(
        "device tool: carry [\"{DIR}\"], command \"bash {DIR}/run.sh\" (or gpu-check / tests)"
    );
    Ok(())
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("{what} failed ({s})")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// The `"executable":"PATH"` values of cargo's JSON messages (null ones skipped).
fn executables(json_lines: &str) -> Vec<PathBuf> {
    const KEY: &str = "\"executable\":\"";
    json_lines
        .lines()
        .filter_map(|l| {
            let start = l.find(KEY)? + KEY.len();
            let end = l[start..].find('"')?;
            Some(Path::new(&l[start..start + end]).to_path_buf())
        })
        .collect()
}

/// The device side. `@SRC@` is this checkout's path: the test binaries find the fixtures
/// through the path they were built in, so it is linked to the device's copy when absent.
const RUN_SH: &str = r#"#!/usr/bin/env bash
# Made by `cargo xtask device-bundle`. On the lent GPU machine, from the repository root:
#   bash .device/run.sh [all|gpu-check|tests]
# gpu-check (parity, benchmark table, Winograd and CUDA-graph sections) first, then the GPU
# tests, each bounded so that the call ends within the device tool's 600 s.
set -u
part="${1:-all}"
out="${OUT:-/tmp/out}"
mkdir -p "$out"
start=$SECONDS
bin=/tmp/alexnet-bundle
rm -rf "$bin" && mkdir -p "$bin" && tar xzf .device/bin.tar.gz -C "$bin" --strip-components=1 ||
    { echo "cannot unpack .device/bin.tar.gz"; exit 2; }
src="@SRC@"
if [ "$src" != "$PWD" ] && [ ! -e "$src" ]; then
    mkdir -p "$(dirname "$src")" && ln -s "$PWD" "$src"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if [ "$part" = all ] || [ "$part" = gpu-check ]; then
    timeout 420 "$bin/alexnet" gpu-check --dir tests/fixtures/parity 2>&1 | tee "$out/gpu-check.log"
    echo "gpu-check: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
fi
if [ "$part" = all ] || [ "$part" = tests ]; then
    for t in "$bin"/test-*; do
        name=${t##*/test-}
        left=$((570 - (SECONDS - start)))
        if [ "$left" -lt 30 ]; then
            echo "$name: skipped (out of time)"
            continue
        fi
        timeout "$left" "$t" --nocapture --test-threads=1 >"$out/$name.log" 2>&1
        echo "$name: exit $? after $((SECONDS - start)) s: $(grep -E '^test result' "$out/$name.log" | tail -1)"
    done
fi
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_executables_are_read_from_cargo_messages() {
        let msgs = concat!(
            r#"{"reason":"compiler-artifact","executable":null,"fresh":true}"#,
            "\n",
            r#"{"reason":"compiler-artifact","executable":"/w/target/release/deps/parity-1f2e","fresh":false}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        assert_eq!(
            executables(msgs),
            vec![PathBuf::from("/w/target/release/deps/parity-1f2e")]
        );
        assert!(executables("").is_empty());
    }

    #[test]
    fn the_device_script_parses() {
        let path = std::env::temp_dir().join(format!("xtask-run-{}.sh", std::process::id()));
        std::fs::write(&path, RUN_SH.replace("@SRC@", "/w")).unwrap();
        let ok = Command::new("bash").arg("-n").arg(&path).status().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(ok.success(), "bash -n run.sh");
    }
}
