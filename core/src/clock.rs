//! The clock seam. All wall-clock and monotonic time in the runtime comes through [`Clock`], so
//! a deterministic simulator can drive it later with a simulated clock.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of time.
pub trait Clock: Clone + Send + Sync + 'static {
    /// Milliseconds since the Unix epoch (processing time).
    fn now_ms(&self) -> u64;
    /// Time elapsed since this clock's origin, monotonic.
    fn elapsed(&self) -> Duration;
}

/// The real clock.
#[derive(Clone, Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A clock whose [`Clock::elapsed`] counts from now.
    #[allow(clippy::disallowed_methods)] // Clock is the one place that reads time
    pub fn new() -> SystemClock {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // Clock is the one place that reads time
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
    fn elapsed(&self) -> Duration {
        self.origin.elapsed()
    }
}
