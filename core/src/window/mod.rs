//! Windows: tumbling, sliding, session and global windows over a keyed stream, with
//! incremental (`reduce`, `aggregate`) and full (`process`) window functions, triggers,
//! allowed lateness and late records to a side output.
//!
//! Three operators implement them, picked by [`WindowOperator`] from the assigner and the
//! trigger:
//! - [`sliced`]: tumbling and sliding event-time windows with the default trigger. State is
//!   kept per *slice* (a window for tumbling windows, `gcd(size, slide)` for sliding ones), one
//!   accumulator per key and slice; a window's result merges its slices when it fires. A record
//!   is added once, however many windows it belongs to.
//! - [`session`]: event-time session windows with the default trigger, merged per key as
//!   records arrive, with one lazily re-armed timer per key.
//! - [`general`]: everything else — processing-time windows, global windows, custom triggers
//!   (Flink's `WindowOperator`, with a timer per key and window).
//!
//! **Time.** A window `[start, end)` fires when the watermark reaches `end − 1`. Event times
//! lie strictly between `i64::MIN` ([`NO_TIMESTAMP`]) and `i64::MAX` (the instant of the final
//! watermark): an event-time window rejects a record outside with an error. A window whose end
//! would pass `i64::MAX` is shown ending at `i64::MAX`; it holds everything up to
//! `i64::MAX − 1` and fires with the final watermark.
//!
//! **Lateness is judged per input.** A record is late when the watermark *of the input it
//! arrived on* (see [`OperatorContext::input_watermark`]) has passed the end of every window
//! it belongs to, plus the allowed lateness. That watermark is a function of the upstream
//! worker's records alone, so which records are late does not depend on how far other inputs
//! have got — on the speed of the machine. Windows still fire on the operator's combined
//! watermark (the minimum over its inputs), which is never ahead of any input's. For session
//! windows a record is late when that watermark has reached its timestamp (minus the allowed
//! lateness): a record behind the watermark could otherwise join a session that has or has not
//! fired yet depending on timing. Sessions merge when they overlap: a record joins a session
//! when it falls before the session's end (`last record + gap`), and records exactly `gap`
//! apart start separate sessions.
//!
//! [`NO_TIMESTAMP`]: crate::element::NO_TIMESTAMP
//! [`OperatorContext::input_watermark`]: crate::context::OperatorContext::input_watermark

pub mod combine;
pub mod function;
pub mod general;
mod operator;
#[cfg(test)]
mod operator_tests;
pub mod session;
pub mod sliced;
pub mod trigger;

pub use combine::{Combined, WindowCombiner};
pub use function::{AggregateWindow, ProcessWindow, ReduceWindow, WindowFunction, WindowOutput};
pub use operator::{WindowOperator, WindowOperatorOp};
pub use trigger::{
    CountTrigger, DefaultTrigger, EventTimeTrigger, NeverTrigger, ProcessingTimeTrigger,
    PurgingTrigger, Trigger, TriggerContext, TriggerResult,
};

use crate::element::Timestamp;
use crate::error::{Error, Result};

/// A time window `[start, end)`.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct TimeWindow {
    /// First timestamp in the window.
    pub start: i64,
    /// One past the last timestamp in the window.
    pub end: i64,
}

impl TimeWindow {
    /// The window `[start, end)`.
    pub fn new(start: i64, end: i64) -> TimeWindow {
        debug_assert!(start < end, "start={start} end={end}");
        TimeWindow { start, end }
    }

    /// The largest timestamp in the window: it fires when the watermark reaches it.
    #[inline]
    pub fn max_timestamp(&self) -> i64 {
        max_timestamp(self.end)
    }

    /// Whether `ts` falls in the window.
    #[inline]
    pub fn contains(&self, ts: Timestamp) -> bool {
        ts >= self.start && ts <= self.max_timestamp()
    }

    /// Whether the two windows share a timestamp.
    #[inline]
    pub fn overlaps(&self, other: &TimeWindow) -> bool {
        self.start <= other.max_timestamp() && other.start <= self.max_timestamp()
    }

    /// The smallest window covering both.
    pub fn span(&self, other: &TimeWindow) -> TimeWindow {
        TimeWindow {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }

    /// The window that holds everything (global windows).
    pub const ALL: TimeWindow = TimeWindow {
        start: i64::MIN,
        end: i64::MAX,
    };
}

/// The largest timestamp of a window ending at `end`.
#[inline]
pub(crate) fn max_timestamp(end: i64) -> i64 {
    end - 1
}

/// The start of the window of `size` (aligned to `offset`) that holds `ts`, and its end, both
/// saturating at the `i64` limits.
///
/// ```
/// use sluice_core::window::aligned_window;
/// assert_eq!(aligned_window(1_234, 1_000, 0), (1_000, 2_000));
/// assert_eq!(aligned_window(-1, 1_000, 0), (-1_000, 0));
/// assert_eq!(aligned_window(i64::MAX - 3, 10, 0).1, i64::MAX);
/// ```
#[inline]
pub fn aligned_window(ts: Timestamp, size: i64, offset: i64) -> (i64, i64) {
    debug_assert!(size > 0, "size={size}");
    // (ts - offset) mod size without overflowing near the limits.
    let r = (ts.rem_euclid(size) - offset.rem_euclid(size)).rem_euclid(size);
    (ts.saturating_sub(r), ts.saturating_add(size - r))
}

/// Whether windows follow event time (the records' timestamps) or processing time (the wall
/// clock when the record is processed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeCharacteristic {
    /// The record's timestamp.
    EventTime,
    /// The wall clock.
    ProcessingTime,
}

impl TimeCharacteristic {
    /// Whether this is event time.
    pub fn is_event(self) -> bool {
        self == TimeCharacteristic::EventTime
    }
}

/// Which windows a record belongs to (Flink's `WindowAssigner`s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowAssigner {
    /// Fixed-size, non-overlapping windows.
    Tumbling {
        /// Window length in ms.
        size: i64,
        /// Alignment of window starts (0: multiples of `size` since the epoch).
        offset: i64,
        /// Event or processing time.
        time: TimeCharacteristic,
    },
    /// Fixed-size windows starting every `slide` ms (overlapping when `slide < size`).
    Sliding {
        /// Window length in ms.
        size: i64,
        /// Distance between window starts in ms.
        slide: i64,
        /// Alignment of window starts.
        offset: i64,
        /// Event or processing time.
        time: TimeCharacteristic,
    },
    /// Per-key sessions that end after `gap` ms without records.
    Session {
        /// Inactivity that ends a session, in ms.
        gap: i64,
        /// Event or processing time.
        time: TimeCharacteristic,
    },
    /// One window per key holding everything; fires only through a trigger.
    Global,
}

impl WindowAssigner {
    /// Tumbling event-time windows of `size_ms`.
    pub fn tumbling(size_ms: i64) -> WindowAssigner {
        WindowAssigner::Tumbling {
            size: size_ms,
            offset: 0,
            time: TimeCharacteristic::EventTime,
        }
    }
    /// Sliding event-time windows of `size_ms`, one starting every `slide_ms`.
    pub fn sliding(size_ms: i64, slide_ms: i64) -> WindowAssigner {
        WindowAssigner::Sliding {
            size: size_ms,
            slide: slide_ms,
            offset: 0,
            time: TimeCharacteristic::EventTime,
        }
    }
    /// Event-time session windows with inactivity gap `gap_ms`.
    pub fn session(gap_ms: i64) -> WindowAssigner {
        WindowAssigner::Session {
            gap: gap_ms,
            time: TimeCharacteristic::EventTime,
        }
    }
    /// Global windows (give them a trigger).
    pub fn global() -> WindowAssigner {
        WindowAssigner::Global
    }
    /// The same windows on processing time.
    pub fn on_processing_time(self) -> WindowAssigner {
        self.with_time(TimeCharacteristic::ProcessingTime)
    }
    /// The same windows with starts aligned to `offset_ms` (tumbling and sliding).
    pub fn with_offset(self, offset_ms: i64) -> WindowAssigner {
        match self {
            WindowAssigner::Tumbling { size, time, .. } => WindowAssigner::Tumbling {
                size,
                offset: offset_ms,
                time,
            },
            WindowAssigner::Sliding {
                size, slide, time, ..
            } => WindowAssigner::Sliding {
                size,
                slide,
                offset: offset_ms,
                time,
            },
            other => other,
        }
    }

    fn with_time(self, t: TimeCharacteristic) -> WindowAssigner {
        match self {
            WindowAssigner::Tumbling { size, offset, .. } => WindowAssigner::Tumbling {
                size,
                offset,
                time: t,
            },
            WindowAssigner::Sliding {
                size,
                slide,
                offset,
                ..
            } => WindowAssigner::Sliding {
                size,
                slide,
                offset,
                time: t,
            },
            WindowAssigner::Session { gap, .. } => WindowAssigner::Session { gap, time: t },
            WindowAssigner::Global => WindowAssigner::Global,
        }
    }

    /// Event or processing time (global windows: event time, for lateness).
    pub fn time(&self) -> TimeCharacteristic {
        match self {
            WindowAssigner::Tumbling { time, .. }
            | WindowAssigner::Sliding { time, .. }
            | WindowAssigner::Session { time, .. } => *time,
            WindowAssigner::Global => TimeCharacteristic::EventTime,
        }
    }

    /// Whether windows of one key merge (sessions).
    pub fn is_merging(&self) -> bool {
        matches!(self, WindowAssigner::Session { .. })
    }

    /// Checks the sizes: positive, a slide no larger than the size.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Config(format!("window: {what}")));
        match *self {
            WindowAssigner::Tumbling { size, .. } if size <= 0 => {
                bad(format!("size must be positive, got {size}"))
            }
            WindowAssigner::Sliding { size, slide, .. } if size <= 0 || slide <= 0 => bad(format!(
                "size and slide must be positive, got {size} and {slide}"
            )),
            WindowAssigner::Sliding { size, slide, .. } if slide > size => bad(format!(
                "a slide ({slide}) longer than the size ({size}) would skip records"
            )),
            WindowAssigner::Session { gap, .. } if gap <= 0 => {
                bad(format!("session gap must be positive, got {gap}"))
            }
            _ => Ok(()),
        }
    }

    /// Appends the windows `ts` belongs to (not for merging assigners' merges: a session's
    /// initial window).
    pub fn assign(&self, ts: Timestamp, out: &mut Vec<TimeWindow>) {
        match *self {
            WindowAssigner::Tumbling { size, offset, .. } => {
                let (start, end) = aligned_window(ts, size, offset);
                out.push(TimeWindow::new(start, end));
            }
            WindowAssigner::Sliding {
                size,
                slide,
                offset,
                ..
            } => {
                // In i128: windows near the limits keep their true bounds until shown.
                let (ts, size, slide) = (i128::from(ts), i128::from(size), i128::from(slide));
                let mut start = ts - (ts - i128::from(offset)).rem_euclid(slide);
                while start + size > ts {
                    out.push(TimeWindow::new(saturate(start), saturate(start + size)));
                    start -= slide;
                }
            }
            WindowAssigner::Session { gap, .. } => {
                out.push(TimeWindow::new(ts, ts.saturating_add(gap)));
            }
            WindowAssigner::Global => out.push(TimeWindow::ALL),
        }
    }

    /// A short description for plans.
    pub fn describe(&self) -> String {
        let time = |t: TimeCharacteristic| match t {
            TimeCharacteristic::EventTime => "",
            TimeCharacteristic::ProcessingTime => ", processing time",
        };
        match *self {
            WindowAssigner::Tumbling { size, time: t, .. } => {
                format!("tumbling({size}ms{})", time(t))
            }
            WindowAssigner::Sliding {
                size,
                slide,
                time: t,
                ..
            } => format!("sliding({size}ms/{slide}ms{})", time(t)),
            WindowAssigner::Session { gap, time: t } => format!("session({gap}ms{})", time(t)),
            WindowAssigner::Global => "global".to_owned(),
        }
    }
}

/// `x` clamped into `i64`.
pub(crate) fn saturate(x: i128) -> i64 {
    x.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// Greatest common divisor, for slice lengths.
pub(crate) fn gcd(mut a: i64, mut b: i64) -> i64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.abs()
}

/// The error for a record that reaches an event-time operator without an event time.
pub(crate) fn no_timestamp_error(ts: Timestamp) -> Error {
    let message = if ts == crate::element::NO_TIMESTAMP {
        "a record has no event-time timestamp: assign timestamps with a WatermarkStrategy \
         before event-time windows"
            .to_owned()
    } else {
        format!("a record's timestamp {ts} is reserved for the final watermark")
    };
    Error::Operator {
        operator: "window".to_owned(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(a: WindowAssigner, ts: i64) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        a.assign(ts, &mut out);
        let mut v: Vec<_> = out.iter().map(|w| (w.start, w.end)).collect();
        v.sort();
        v
    }

    #[test]
    fn sliding_windows_hold_every_timestamp_they_cover() {
        let a = WindowAssigner::sliding(10, 4);
        assert_eq!(windows(a, 13), vec![(4, 14), (8, 18), (12, 22)]);
        assert_eq!(windows(a, -1), vec![(-8, 2), (-4, 6)]);
        for ts in -50..50 {
            for (s, e) in windows(a, ts) {
                assert!(s <= ts && ts < e, "ts={ts} window=[{s},{e})");
            }
        }
    }

    #[test]
    fn windows_near_the_limits_saturate() {
        let t = WindowAssigner::tumbling(100);
        let (s, e) = windows(t, i64::MAX - 1)[0];
        assert_eq!(e, i64::MAX);
        assert!(TimeWindow::new(s, e).contains(i64::MAX - 1));
        let (s, e) = windows(t, i64::MIN + 1)[0];
        assert_eq!(s, i64::MIN);
        assert!(TimeWindow::new(s, e).contains(i64::MIN + 1));
        assert!(!windows(WindowAssigner::sliding(100, 30), i64::MIN + 1).is_empty());
    }

    #[test]
    fn bad_sizes_are_config_errors() {
        assert!(WindowAssigner::tumbling(0).validate().is_err());
        assert!(WindowAssigner::sliding(10, 20).validate().is_err());
        assert!(WindowAssigner::session(-1).validate().is_err());
        assert!(WindowAssigner::sliding(10, 10).validate().is_ok());
    }
}
