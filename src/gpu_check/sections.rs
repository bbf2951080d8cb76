//! The parts of `gpu-check` (`--section`) and [`all`]: the established checks and the benchmark
//! table in this process, then each newer section in a child process of this binary, so that a
//! sticky CUDA error (an illegal address poisons the context for good) or a crash in one of
//! them costs the rest nothing, and any part can be repeated alone on a lent GPU's few minutes.

use super::main_part;
use anyhow::{Context, Result};
use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// A part of `gpu-check`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    /// Everything: `main` here, then `winograd` and `graphs` each in a child process.
    All,
    /// Parity (fixtures, LRN kernels, augmentation, whole model) and the benchmark table.
    Main,
    /// The Winograd convolutions: parity, whole model, timings.
    Winograd,
    /// CUDA graphs: bit-identity with and without them, timings.
    Graphs,
}

impl Section {
    /// The `--section` value.
    pub fn name(self) -> &'static str {
        match self {
            Section::All => "all",
            Section::Main => "main",
            Section::Winograd => "winograd",
            Section::Graphs => "graphs",
        }
    }
}

/// The sections run in child processes by [`all`], in order.
const CHILDREN: [Section; 2] = [Section::Winograd, Section::Graphs];

/// [`Section::All`]: `main` in this process, then each of [`CHILDREN`] as `<this binary>
/// gpu-check --dir DIR --section S --elapsed SECONDS`; false when any part failed.
pub(super) fn all(fixture_dir: &Path, started: Instant) -> Result<bool> {
    let mut ok = main_part(fixture_dir)?;
    let exe = std::env::current_exe().context("locate the running binary for gpu-check")?;
    for section in CHILDREN {
        let args: Vec<OsString> = vec![
            "gpu-check".into(),
            "--dir".into(),
            fixture_dir.into(),
            "--section".into(),
            section.name().into(),
            "--elapsed".into(),
            format!("{:.1}", started.elapsed().as_secs_f64()).into(),
        ];
        ok &= run_child(&exe, &args, section.name())?;
    }
    println!(
        "gpu-check: done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(ok)
}

/// Runs `exe args` with this process's output and waits: true when it exits with success,
/// false otherwise. Exit code 1 is a section whose checks failed (it printed them); anything
/// else (another code, a signal) gets a FAIL line naming the section and how to repeat it.
pub(super) fn run_child(exe: &Path, args: &[OsString], name: &str) -> Result<bool> {
    // The child writes to the same stdout: what this process printed must come first.
    std::io::stdout().flush().context("flush stdout")?;
    let status = Command::new(exe)
        .args(args)
        .status()
        .with_context(|| format!("start gpu-check section {name} ({})", exe.display()))?;
    if status.success() {
        return Ok(true);
    }
    if status.code() != Some(1) {
        println!(
            "FAIL gpu-check section {name}: its process ended with {status} (repeat it alone: \
             cargo xtask gpu-check --section {name})"
        );
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<OsString> {
        vec!["-c".into(), script.into()]
    }

    #[test]
    fn a_child_section_counts_by_its_exit_status() {
        let exe = Path::new("/bin/sh");
        assert!(run_child(exe, &sh("exit 0"), "ok").unwrap());
        assert!(!run_child(exe, &sh("exit 1"), "failed checks").unwrap());
        assert!(!run_child(exe, &sh("exit 101"), "panicked").unwrap());
        // A crash (a signal) is a failed section, not an error of the parent.
        assert!(!run_child(exe, &sh("kill -SEGV $$"), "crashed").unwrap());
        // A binary that cannot be started is an error naming the section.
        let e = run_child(Path::new("/nonexistent/alexnet"), &[], "graphs").unwrap_err();
        assert!(format!("{e:#}").contains("section graphs"), "{e:#}");
    }

    #[test]
    fn section_names_parse_back() {
        use clap::ValueEnum;
        for s in [
            Section::All,
            Section::Main,
            Section::Winograd,
            Section::Graphs,
        ] {
            assert_eq!(Section::from_str(s.name(), false).unwrap(), s);
        }
    }
}
