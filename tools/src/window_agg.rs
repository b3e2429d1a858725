//! The `window-agg` built-in job: per key and event-time window, the count and the sum of the
//! values of CSV records `ts,key,value`.
//!
//! Pipeline: the CSV lines are parsed in the reader's buffer (no string per line) into
//! `(key, event)` pairs stamped with their event time → bounded out-of-orderness watermarks →
//! keyed by key → windows → `(count, sum)` → `key,window_start,window_end,count,sum` lines.
//! Records late for all their windows go, as their input lines, to the late output directory
//! when there is one; otherwise they are counted. A malformed line fails the job with its line
//! number and content, or is counted and skipped with `--skip-bad-lines`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sluice::{
    AggregateFunction, Batch, CompactString, Env, Error, LineAt, LineMapper, OutputTag,
    WatermarkStrategy, WindowAssigner,
};

/// How many malformed lines are quoted in the report of a run that skips them.
const BAD_LINES_QUOTED_MAX: usize = 5;

/// A record's value, and its input line when printing the fields would not give it back.
/// An rkyv archive when it crosses nodes (inside window partials).
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Event {
    /// The value.
    pub value: i64,
    /// The input line, kept only when it is not in canonical form (`+5` or `007`, say).
    raw: Option<Box<str>>,
}

impl Event {
    /// The input line this event came from.
    pub fn line(&self, key: &str, ts: i64) -> String {
        match &self.raw {
            Some(raw) => raw.to_string(),
            None => format!("{ts},{key},{}", self.value),
        }
    }
}

/// Why a line is not a record.
fn parse_line(line: &str) -> Result<(i64, &str, i64), &'static str> {
    let mut fields = line.splitn(3, ',');
    let (Some(ts), Some(key), Some(value)) = (fields.next(), fields.next(), fields.next()) else {
        return Err("expected three fields ts,key,value");
    };
    if value.contains(',') {
        return Err("expected three fields ts,key,value (the key may not contain commas)");
    }
    let ts: i64 = ts.parse().map_err(|_| "the timestamp is not an integer")?;
    if ts == i64::MIN || ts == i64::MAX {
        return Err("the timestamps -9223372036854775808 and 9223372036854775807 are reserved");
    }
    let value: i64 = value.parse().map_err(|_| "the value is not an integer")?;
    Ok((ts, key, value))
}

/// Whether `field` is how `i64`'s `Display` writes its number (no `+`, no leading zeros).
fn canonical_int(field: &str) -> bool {
    let digits = field.strip_prefix('-').unwrap_or(field);
    let leading_zero = digits.len() > 1 && digits.starts_with('0');
    let signed_zero = field == "-0";
    let plus = field.starts_with('+');
    !(plus || leading_zero || signed_zero)
}

/// The malformed lines a run skipped.
#[derive(Debug, Default)]
pub struct BadLines {
    count: AtomicU64,
    quoted: Mutex<Vec<String>>,
}

impl BadLines {
    /// How many were skipped.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
    /// The first few, each as `PATH line N: 'LINE': REASON`.
    pub fn quoted(&self) -> Vec<String> {
        self.quoted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Parses `ts,key,value` lines into `(key, event)` pairs stamped with `ts`.
#[derive(Clone)]
pub struct CsvEvents {
    skip_bad_lines: bool,
    bad: Arc<BadLines>,
}

impl CsvEvents {
    /// A parser that fails on a malformed line, or skips and counts it into `bad`.
    pub fn new(skip_bad_lines: bool, bad: Arc<BadLines>) -> Self {
        CsvEvents {
            skip_bad_lines,
            bad,
        }
    }

    fn bad_line(&self, line: &str, at: LineAt<'_>, reason: &str) -> sluice::Result<()> {
        let n = self.bad.count.fetch_add(1, Ordering::Relaxed);
        if self.skip_bad_lines && n as usize >= BAD_LINES_QUOTED_MAX {
            return Ok(());
        }
        let number = at.line_number()?;
        let shown: String = line.chars().take(200).collect();
        let message = format!(
            "{} line {number}: malformed record '{shown}': {reason}",
            at.path.display()
        );
        if !self.skip_bad_lines {
            return Err(Error::Config(message));
        }
        self.bad
            .quoted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(message);
        Ok(())
    }
}

impl LineMapper for CsvEvents {
    type Item = (CompactString, Event);
    #[inline]
    fn map_line(
        &mut self,
        line: &str,
        at: LineAt<'_>,
        out: &mut Batch<(CompactString, Event)>,
    ) -> sluice::Result<()> {
        let (ts, key, value) = match parse_line(line) {
            Ok(fields) => fields,
            Err(reason) => return self.bad_line(line, at, reason),
        };
        let mut fields = line.splitn(3, ',');
        let canonical =
            fields.next().is_some_and(canonical_int) && fields.nth(1).is_some_and(canonical_int);
        let raw = (!canonical).then(|| line.into());
        out.push((CompactString::from(key), Event { value, raw }), ts);
        Ok(())
    }
}

/// `(count, sum)` of a window's values; the sum is kept in `i128` and checked when printed.
#[derive(Clone, Copy, Debug, Default)]
pub struct CountSum;

impl AggregateFunction<Event> for CountSum {
    type Acc = (u64, i128);
    type Out = (u64, i128);
    fn create_accumulator(&self) -> (u64, i128) {
        (0, 0)
    }
    #[inline]
    fn add(&self, acc: &mut (u64, i128), e: Event) {
        acc.0 += 1;
        acc.1 += i128::from(e.value);
    }
    fn merge(&self, acc: &mut (u64, i128), other: (u64, i128)) {
        acc.0 += other.0;
        acc.1 += other.1;
    }
    fn get_result(&self, acc: &(u64, i128)) -> (u64, i128) {
        *acc
    }
}

/// Parses `tumbling:SIZE_MS`, `sliding:SIZE_MS:SLIDE_MS` or `session:GAP_MS`.
///
/// ```
/// use sluice_tools::window_agg::parse_window_spec;
/// assert!(parse_window_spec("sliding:1000:250").is_ok());
/// assert!(parse_window_spec("sliding:250:1000").is_err());
/// assert!(parse_window_spec("hopping:5").is_err());
/// ```
pub fn parse_window_spec(spec: &str) -> Result<WindowAssigner, String> {
    let usage = "expected tumbling:SIZE_MS, sliding:SIZE_MS:SLIDE_MS or session:GAP_MS";
    let parts: Vec<&str> = spec.split(':').collect();
    let ms = |s: &str| {
        s.parse::<i64>()
            .map_err(|_| format!("'{s}' is not a number of milliseconds in '{spec}'"))
    };
    let assigner = match parts.as_slice() {
        ["tumbling", size] => WindowAssigner::tumbling(ms(size)?),
        ["sliding", size, slide] => WindowAssigner::sliding(ms(size)?, ms(slide)?),
        ["session", gap] => WindowAssigner::session(ms(gap)?),
        _ => return Err(format!("bad window '{spec}': {usage}")),
    };
    assigner
        .validate()
        .map_err(|e| format!("bad window '{spec}': {e}"))?;
    Ok(assigner)
}

/// The window-agg job's settings.
#[derive(Clone, Debug)]
pub struct WindowAggConfig {
    /// The CSV input, a file or a directory.
    pub input: PathBuf,
    /// Where the window lines go.
    pub output: PathBuf,
    /// The windows.
    pub window: WindowAssigner,
    /// The watermark's delay behind the largest timestamp seen.
    pub out_of_orderness_ms: i64,
    /// Where late records go, as their input lines.
    pub late_output: Option<PathBuf>,
    /// Count and skip malformed lines instead of failing.
    pub skip_bad_lines: bool,
}

/// What a window-agg run counts besides its output.
#[derive(Debug, Default)]
pub struct WindowAggCounts {
    /// Malformed lines skipped.
    pub bad_lines: Arc<BadLines>,
    /// Late records written to the late output.
    pub late_written: Arc<AtomicU64>,
}

/// Builds the window-agg job on `env`.
pub fn window_agg(env: &Env, cfg: &WindowAggConfig) -> WindowAggCounts {
    // What crosses nodes on a cluster: events and (count, sum) partials, beside the keys.
    sluice::register_wire_type::<Event>();
    sluice::register_wire_type::<(u64, i128)>();
    let counts = WindowAggCounts::default();
    let late_tag: OutputTag<(CompactString, Event)> = OutputTag::new("late");
    let mut windows = env
        .read_text_file_with(
            &cfg.input,
            CsvEvents::new(cfg.skip_bad_lines, counts.bad_lines.clone()),
        )
        .assign_timestamps_and_watermarks(WatermarkStrategy::for_bounded_out_of_orderness(
            cfg.out_of_orderness_ms,
        ))
        .into_keyed()
        .window(cfg.window);
    if cfg.late_output.is_some() {
        windows = windows.side_output_late_data(&late_tag);
    }
    let mut result = windows.aggregate(CountSum);
    if let Some(dir) = &cfg.late_output {
        let written = counts.late_written.clone();
        result
            .side_output(&late_tag)
            .map_with_timestamp(move |(key, event): (CompactString, Event), ts| {
                written.fetch_add(1, Ordering::Relaxed);
                event.line(&key, ts)
            })
            .write_text(dir);
    }
    result
        .try_map("format window", |w| {
            let sum = i64::try_from(w.value.1).map_err(|_| {
                format!(
                    "the sum of key '{}' in window [{}, {}) overflows i64",
                    w.key, w.window.start, w.window.end
                )
            })?;
            Ok::<_, String>(format!(
                "{},{},{},{},{sum}",
                w.key, w.window.start, w.window.end, w.value.0
            ))
        })
        .write_text(&cfg.output);
    counts
}

/// Whether two output paths are the same directory (or one inside the other).
pub fn paths_overlap(a: &Path, b: &Path) -> bool {
    let (a, b) = (
        std::path::absolute(a).unwrap_or_else(|_| a.to_owned()),
        std::path::absolute(b).unwrap_or_else(|_| b.to_owned()),
    );
    a.starts_with(&b) || b.starts_with(&a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_strictly() {
        assert_eq!(parse_line("5,a,-3"), Ok((5, "a", -3)));
        assert_eq!(parse_line("-5,,0"), Ok((-5, "", 0)));
        assert!(parse_line("5,a").is_err());
        assert!(parse_line("5,a,b,3").is_err());
        assert!(parse_line(" 5,a,3").is_err());
        assert!(parse_line("5,a,3.5").is_err());
        assert!(parse_line("-9223372036854775808,a,3").is_err());
        assert!(parse_line("9223372036854775808,a,3").is_err());
        assert!(parse_line("").is_err());
    }

    #[test]
    fn non_canonical_lines_are_kept_verbatim() {
        assert!(canonical_int("0") && canonical_int("-12") && canonical_int("7"));
        assert!(!canonical_int("+7") && !canonical_int("007") && !canonical_int("-0"));
        let e = Event {
            value: 7,
            raw: Some("+5,k,007".into()),
        };
        assert_eq!(e.line("k", 5), "+5,k,007");
        let e = Event {
            value: 7,
            raw: None,
        };
        assert_eq!(e.line("k", 5), "5,k,7");
    }
}
