//! The binary's allocator, mimalloc, and its one setting: it keeps the memory that was freed
//! for reuse and does not return it to the OS (its `purge_delay`, -1: never).
//!
//! At each barrier a source's pre-aggregation sends ~10,000 partial results on, in freshly
//! allocated batches that the receiving workers free. mimalloc returns memory unused for
//! `purge_delay` (1 s by default) with `madvise`, from whichever thread next allocates:
//! - memory handed back between two checkpoints was faulted in again, page by page, by the
//!   next flush (the source stage's pause p99 1.5–2.6 ms with the default);
//! - with a delay of 10 s the faults were gone, but a purge still ran inside a flush now and
//!   then: each `madvise` shoots down the TLB of the other worker's CPU, and on a VM those
//!   interrupts are slow. A profile of such a pause showed the worker waiting in the kernel
//!   for them (`smp_call_function_many_cond`); its pauses took 1–8 ms, all of it CPU time.
//!
//! Never purging removed both (`sluice bench checkpoint`, 1,000M events, 2 workers: source
//! stage pause p99 0.14–0.45 ms against 0.19–7.9 ms with 10 s). A worker's memory stays at its
//! high-water mark and is reused, as a thread-per-core engine's should be predictable; the
//! state store's budget bounds the largest part of it. `MIMALLOC_PURGE_DELAY` still decides
//! when it is set (e.g. `=1000` to return memory after 1 s).

use libmimalloc_sys::{mi_option_set, mi_option_t};

/// mimalloc's option index of `purge_delay` (`mi_option_purge_delay` in `mimalloc.h`, which
/// the `libmimalloc-sys` bindings do not name). A test checks it against mimalloc's reading of
/// `MIMALLOC_PURGE_DELAY`.
const PURGE_DELAY: mi_option_t = 15;

/// The purge delay the binary runs with, in ms; -1 is never.
pub const PURGE_DELAY_MS: i64 = -1;

/// The environment variable through which mimalloc reads the purge delay; when it is set, it
/// is left to decide.
const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";

/// Sets the purge delay to [`PURGE_DELAY_MS`] unless the environment sets it.
pub fn configure() {
    if std::env::var_os(PURGE_DELAY_ENV).is_none() {
        set_purge_delay(PURGE_DELAY_MS);
    }
}

#[allow(unsafe_code)]
fn set_purge_delay(ms: i64) {
    // SAFETY: `mi_option_set` stores an integer in mimalloc's option table, for a valid option
    // index; it takes no pointers, and mimalloc reads the option on each later purge.
    unsafe { mi_option_set(PURGE_DELAY, ms as _) }
}

/// The purge delay mimalloc uses now, in ms.
#[cfg(test)]
#[allow(unsafe_code)]
pub fn purge_delay() -> i64 {
    // SAFETY: `mi_option_get` reads an integer from mimalloc's option table, for a valid
    // option index.
    unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) as i64 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const CHILD_ENV: &str = "SLUICE_ALLOCATOR_TEST_CHILD";

    /// Run in a child process: mimalloc reads its environment when the process starts.
    #[test]
    fn child_reports_the_purge_delay() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        let before = purge_delay();
        configure();
        println!("purge_delay before {before} after {}", purge_delay());
    }

    fn child(env: Option<&str>) -> String {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "allocator::tests::child_reports_the_purge_delay"])
            .args(["--nocapture", "--test-threads", "1"])
            .env(CHILD_ENV, "1")
            .env_remove(PURGE_DELAY_ENV);
        if let Some(v) = env {
            cmd.env(PURGE_DELAY_ENV, v);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // The harness prints the test's name on the same line, before it.
        let at = text.find("purge_delay before");
        let report = at.map(|at| text[at..].lines().next().unwrap_or_default());
        report
            .unwrap_or_else(|| panic!("no report in {text}"))
            .to_owned()
    }

    #[test]
    fn the_binary_sets_the_purge_delay_unless_the_environment_does() {
        // The index is mimalloc's purge delay: the one it reads from `MIMALLOC_PURGE_DELAY`,
        // and then left alone.
        assert_eq!(child(Some("1234")), "purge_delay before 1234 after 1234");
        // Otherwise mimalloc's own default (1 s), then ours.
        assert_eq!(
            child(None),
            format!("purge_delay before 1000 after {PURGE_DELAY_MS}")
        );
    }
}
