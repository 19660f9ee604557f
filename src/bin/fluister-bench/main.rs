//! `fluister-bench`: the relay's benchmarks (BENCHMARKS.md), kept out of the
//! `fluister` binary that helplines run. It drives the relay core in
//! process (`--only core`) and `fluister relay` processes over loopback,
//! against a minimal QUIC echo server it runs itself (`echo`).
#![forbid(unsafe_code)]

mod bench;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Measure the core's steps, forwarding rate, latency, memory, surge
/// capacity and the way in under attack, as ratios against baselines
/// measured in the same run (see BENCHMARKS.md).
#[derive(Parser)]
#[command(name = "fluister-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// A few chats for a few seconds: checks that the tool runs and that
    /// every frame arrives (CI); asserts no timing.
    #[arg(long)]
    smoke: bool,
    /// Seconds per measurement (default 5, or 1 with --smoke).
    #[arg(long, value_name = "SECS")]
    seconds: Option<f64>,
    /// Where to write the results as JSON.
    #[arg(long, value_name = "FILE", default_value = "bench-results.json")]
    json: PathBuf,
    /// Run only these parts (comma-separated): core, forwarding, latency,
    /// memory, surge, attack.
    #[arg(long, value_name = "PARTS", value_delimiter = ',')]
    only: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// The baseline: a minimal QUIC echo server (started by the bench).
    #[command(hide = true)]
    Echo {
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fluister-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Some(Command::Echo { cert, key }) => echo(cert, key).await,
            None => {
                let options = bench::BenchOptions {
                    smoke: cli.smoke,
                    only: cli.only,
                    seconds: cli.seconds.unwrap_or(if cli.smoke { 1.0 } else { 5.0 }),
                    json: cli.json.clone(),
                };
                bench::run(options).await?;
                println!("Results written to {}.", cli.json.display());
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fluister-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn echo(cert: PathBuf, key: PathBuf) -> Result<(), bench::BenchError> {
    let config = fluister::config::RelayConfig {
        tls_cert: Some(cert),
        tls_key: Some(key),
        ..fluister::config::RelayConfig::default()
    };
    let files = fluister::relay::server_files::load(&config).map_err(bench::BenchError::other)?;
    bench::baseline::serve_echo(files).await
}
