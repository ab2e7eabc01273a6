//! The `threatflow` command; see `threatflow --help`.

use std::process::ExitCode;

use clap::Parser;

// The dataflow allocates and frees many small containers per batch; mimalloc is markedly faster
// than the system allocator at that (see the issue notes for the measurement).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
    let cli = threatflow::cli::Cli::parse();
    match threatflow::cli::execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
