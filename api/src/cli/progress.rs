//! The live progress line of `sluice run` on a terminal: records in, records/s, and how much
//! of the input has been read.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use crate::{Env, Progress};

/// Shows progress on stderr while the job runs, unless `quiet` or stderr is not a terminal.
/// Returns whether it did (so the caller ends the line).
pub fn attach(env: &Env, quiet: bool) -> bool {
    if quiet || !std::io::stderr().is_terminal() {
        return false;
    }
    let mut last = (0u64, Duration::ZERO);
    env.on_progress(move |p: Progress, elapsed: Duration| {
        let dt = (elapsed - last.1).as_secs_f64();
        let rate = if dt > 0.0 {
            (p.records_in - last.0) as f64 / dt
        } else {
            0.0
        };
        last = (p.records_in, elapsed);
        let read = if p.input_bytes_total > 0 {
            format!(
                "{:5.1}% read",
                100.0 * p.bytes_in as f64 / p.input_bytes_total as f64
            )
        } else {
            String::new()
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[K{:>12} records in  {:>12}/s  {read}  {:.1}s",
            p.records_in,
            human(rate),
            elapsed.as_secs_f64()
        );
        let _ = err.flush();
    });
    true
}

/// Ends the progress line.
pub fn finish(shown: bool) {
    if shown {
        eprintln!();
    }
}

/// `1234567.0` → `1.23M`.
pub fn human(x: f64) -> String {
    match x {
        x if x >= 1e9 => format!("{:.2}G", x / 1e9),
        x if x >= 1e6 => format!("{:.2}M", x / 1e6),
        x if x >= 1e3 => format!("{:.1}k", x / 1e3),
        x => format!("{x:.0}"),
    }
}
