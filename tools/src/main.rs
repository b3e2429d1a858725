//! The `sluice` binary: runs built-in jobs embedded on this machine, the demo, and the
//! benchmarks. Every failure is one line on stderr and a non-zero exit code.
#![forbid(unsafe_code)]

mod bench;
mod bench_checkpoint;
mod bench_net;
mod bench_nexmark;
mod bench_state;
mod bench_window;
mod cli;
mod demo;
mod inspect;
mod jobs;
mod nexmark_job;
mod progress;

use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return cli::exit_on_clap_error(e),
    };
    init_tracing();
    match cli::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of causes, joined, leaving out a cause whose text the
            // message before it already ends with.
            let mut line = String::new();
            for cause in e.chain().map(|c| c.to_string()) {
                if !line.ends_with(&cause) {
                    if !line.is_empty() {
                        line.push_str(": ");
                    }
                    line.push_str(&cause);
                }
            }
            eprintln!("error: {line}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    // glommio warns (over several lines) when it cannot register io_uring buffers under a
    // tight memlock limit and falls back to unregistered ones; that only slows DMA I/O, which
    // Sluice does not use yet. `RUST_LOG=warn` shows it.
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,glommio::sys::uring=error"));
    // Colours only on a terminal: a warning in a log file or a pipe stays plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}
