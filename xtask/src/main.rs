//! `cargo xtask <command> [args]`: the orchestrator.
//!
//! Heavy work must not run in the dev-profile xtask binary, so every command is forwarded to the
//! release build of the `alexnet` binary (`cargo run --release -p alexnet -- <command> [args]`),
//! which owns the real implementations (prepare-data, train, report, all, predict, parity, bench,
//! bench-data, check-kernels, gpu-check). `cargo xtask help` lists them. One command is the
//! xtask's own: `device-bundle` (see `bundle.rs`), which only drives cargo.

mod bundle;

use std::env;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    if args.first().map(String::as_str) == Some("device-bundle") {
        return match bundle::device_bundle(&cargo) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xtask device-bundle: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut cmd = Command::new(cargo);
    cmd.args([
        "run",
        "--quiet",
        "--release",
        "--package",
        "alexnet",
        "--bin",
        "alexnet",
        "--",
    ]);
    cmd.args(&args);
    match cmd.status() {
        Ok(status) => match status.code() {
            Some(0) => ExitCode::SUCCESS,
            Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            None => ExitCode::FAILURE,
        },
        Err(e) => {
            eprintln!("xtask: could not run cargo: {e}");
            ExitCode::FAILURE
        }
    }
}
