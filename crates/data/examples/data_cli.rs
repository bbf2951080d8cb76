//! Stand-alone front end for the data crate's commands (the xtask wraps the same functions):
//! `cargo run --release -p alexnet-data --example data_cli -- prepare [ARGS]` or `-- bench [ARGS]`.

use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// prepare-data
    Prepare(alexnet_data::cli::PrepareArgs),
    /// bench-data
    Bench(alexnet_data::cli::BenchDataArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Prepare(a) => alexnet_data::cli::run_prepare(&a),
        Cmd::Bench(a) => alexnet_data::cli::run_bench_data(&a),
    }
}
