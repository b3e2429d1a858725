//! A brute-force reference for the `window-agg` job, written from its definition and sharing no
//! code with the engine.
//!
//! The definition, as the job documents it:
//! - a file of `W` workers is cut into `W` byte ranges of `ceil(len / W)` bytes; a line belongs
//!   to the range (and worker) where it starts;
//! - each worker's watermark, after every 1024 records it read, becomes
//!   `max timestamp so far − out_of_orderness − 1` (if that is higher);
//! - a record of a tumbling or sliding window counts in each of its windows whose end − 1 is
//!   above its worker's watermark at the time; a record counting in none is late;
//! - a session record is late when its timestamp is at or below that watermark; the others
//!   form, per key, the sessions `[first, last + gap)` of records less than `gap` apart;
//! - event times lie strictly between `i64::MIN` and `i64::MAX`; a window's end is shown clamped
//!   to `i64::MAX`.

use std::collections::BTreeMap;

/// The records between two watermarks of a worker.
pub const WATERMARK_INTERVAL: usize = 1024;

/// A window kind with its sizes, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spec {
    /// `tumbling:SIZE`.
    Tumbling(i64),
    /// `sliding:SIZE:SLIDE`.
    Sliding(i64, i64),
    /// `session:GAP`.
    Session(i64),
}

impl Spec {
    /// The `--window` argument.
    pub fn arg(&self) -> String {
        match self {
            Spec::Tumbling(s) => format!("tumbling:{s}"),
            Spec::Sliding(s, d) => format!("sliding:{s}:{d}"),
            Spec::Session(g) => format!("session:{g}"),
        }
    }
}

/// One input line and where it comes from.
#[derive(Clone, Debug)]
struct Line<'a> {
    text: &'a str,
    worker: usize,
    ts: i64,
    key: &'a str,
    value: i64,
}

fn parse(csv: &str, workers: usize) -> Vec<Line<'_>> {
    let range = csv.len().div_ceil(workers.max(1)).max(1);
    let mut lines = Vec::new();
    let mut offset = 0;
    for text in csv.split_inclusive('\n') {
        let start = offset;
        offset += text.len();
        let text = text.trim_end_matches('\n');
        let mut f = text.splitn(3, ',');
        let (ts, key, value) = (f.next(), f.next(), f.next());
        let (Some(ts), Some(key), Some(value)) = (ts, key, value) else {
            panic!("reference: bad test line {text:?}");
        };
        lines.push(Line {
            text,
            worker: start / range,
            ts: ts
                .parse()
                .unwrap_or_else(|_| panic!("reference: bad ts in {text:?}")),
            key,
            value: value
                .parse()
                .unwrap_or_else(|_| panic!("reference: bad value in {text:?}")),
        });
    }
    lines
}

/// Each line's worker watermark at the time it is read.
fn horizons(lines: &[Line<'_>], workers: usize, out_of_orderness: i64) -> Vec<i64> {
    let mut horizon = vec![0; lines.len()];
    for w in 0..workers.max(1) {
        let (mut max, mut wm, mut n) = (i64::MIN, i64::MIN, 0usize);
        for (i, line) in lines.iter().enumerate().filter(|(_, l)| l.worker == w) {
            horizon[i] = wm;
            max = max.max(line.ts);
            n += 1;
            if n % WATERMARK_INTERVAL == 0 {
                wm = wm.max(max.saturating_sub(out_of_orderness).saturating_sub(1));
            }
        }
    }
    horizon
}

fn clamp(x: i128) -> i64 {
    x.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// The windows of a tumbling or sliding spec holding `ts`, as unclamped `(start, end)`.
fn fixed_windows(spec: Spec, ts: i64) -> Vec<(i128, i128)> {
    let (size, slide) = match spec {
        Spec::Tumbling(s) => (s as i128, s as i128),
        Spec::Sliding(s, d) => (s as i128, d as i128),
        Spec::Session(_) => unreachable!("sessions are not fixed windows"),
    };
    let ts = ts as i128;
    let mut start = ts - ts.rem_euclid(slide);
    let mut out = Vec::new();
    while start + size > ts {
        out.push((start, start + size));
        start -= slide;
    }
    out
}

/// The job's output lines and its late lines, both sorted.
pub fn reference_window_agg(
    csv: &str,
    workers: usize,
    spec: Spec,
    out_of_orderness: i64,
) -> (Vec<String>, Vec<String>) {
    let lines = parse(csv, workers);
    let horizon = horizons(&lines, workers, out_of_orderness);
    let mut windows: BTreeMap<(&str, i64, i64), (u64, i128)> = BTreeMap::new();
    let mut late = Vec::new();
    match spec {
        Spec::Session(gap) => {
            let mut per_key: BTreeMap<&str, Vec<(i64, i64)>> = BTreeMap::new();
            for (line, &h) in lines.iter().zip(&horizon) {
                if line.ts <= h {
                    late.push(line.text.to_owned());
                } else {
                    per_key
                        .entry(line.key)
                        .or_default()
                        .push((line.ts, line.value));
                }
            }
            for (key, mut recs) in per_key {
                recs.sort();
                let mut session: Option<(i128, i128, u64, i128)> = None;
                for (ts, v) in recs {
                    let (t, end) = (ts as i128, ts as i128 + gap as i128);
                    session = match session {
                        Some((s, e, n, sum)) if t < e => {
                            Some((s, e.max(end), n + 1, sum + v as i128))
                        }
                        Some((s, e, n, sum)) => {
                            windows.insert((key, clamp(s), clamp(e)), (n, sum));
                            Some((t, end, 1, v as i128))
                        }
                        None => Some((t, end, 1, v as i128)),
                    };
                }
                if let Some((s, e, n, sum)) = session {
                    windows.insert((key, clamp(s), clamp(e)), (n, sum));
                }
            }
        }
        _ => {
            for (line, &h) in lines.iter().zip(&horizon) {
                let open: Vec<_> = fixed_windows(spec, line.ts)
                    .into_iter()
                    .filter(|&(_, end)| end.min(i64::MAX as i128) - 1 > h as i128)
                    .collect();
                if open.is_empty() {
                    late.push(line.text.to_owned());
                }
                for (start, end) in open {
                    let acc = windows
                        .entry((line.key, clamp(start), clamp(end)))
                        .or_default();
                    acc.0 += 1;
                    acc.1 += line.value as i128;
                }
            }
        }
    }
    let mut out: Vec<String> = windows
        .into_iter()
        .map(|((key, start, end), (n, sum))| format!("{key},{start},{end},{n},{sum}"))
        .collect();
    out.sort();
    late.sort();
    (out, late)
}

/// The lines of every output file of `dir` (per the output directory contract), sorted.
pub fn read_lines(dir: &std::path::Path) -> Vec<String> {
    let mut lines = Vec::new();
    if !dir.exists() {
        return lines;
    }
    for file in crate::visible_entries(dir).unwrap_or_else(|e| panic!("{e}")) {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        lines.extend(text.lines().map(str::to_owned));
    }
    lines.sort();
    lines
}
