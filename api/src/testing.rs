//! Helpers for tests and documentation examples.

use crate::env::Env;
use crate::sinks::CollectHandle;

/// Builds a job with `build` on an environment of `workers` workers, runs it, and returns
/// what the collect sink that `build` returned received, sorted.
///
/// ```
/// let out = sluice::testing::run_local(2, |env| env.from_iter(0..5u32).map(|x| x + 1).collect());
/// assert_eq!(out, vec![1, 2, 3, 4, 5]);
/// ```
pub fn run_local<T: Ord>(workers: usize, build: impl FnOnce(&Env) -> CollectHandle<T>) -> Vec<T> {
    let env = Env::new();
    env.set_workers(workers);
    let handle = build(&env);
    if let Err(e) = env.execute("run_local") {
        panic!("job failed: {e}");
    }
    let mut out = handle.take();
    out.sort();
    out
}
