//! Job counters shared between the workers and the thread that reports progress. Each worker
//! writes only its own cache-line-padded slot, once per batch; readers sum the slots.

use std::sync::atomic::{AtomicU64, Ordering};

/// One worker's counters, padded to avoid false sharing between cores.
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// Records read by this worker's sources.
    pub records_in: AtomicU64,
    /// Input bytes read by this worker's sources.
    pub bytes_in: AtomicU64,
    /// Late records dropped because no side output took them.
    pub late_dropped: AtomicU64,
}

/// The counters of a running job.
#[derive(Debug)]
pub struct JobMetrics {
    workers: Vec<WorkerCounters>,
    input_bytes_total: AtomicU64,
}

/// A point-in-time view of a job's progress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Records read by all sources.
    pub records_in: u64,
    /// Input bytes read by all sources.
    pub bytes_in: u64,
    /// Total bytes of the bounded inputs, when known (0 when not).
    pub input_bytes_total: u64,
    /// Late records dropped because no side output took them.
    pub late_dropped: u64,
}

impl JobMetrics {
    /// Counters for `workers` workers.
    pub fn new(workers: usize) -> JobMetrics {
        JobMetrics {
            workers: (0..workers).map(|_| WorkerCounters::default()).collect(),
            input_bytes_total: AtomicU64::new(0),
        }
    }
    /// Worker `w`'s counters.
    pub fn worker(&self, w: usize) -> &WorkerCounters {
        &self.workers[w.min(self.workers.len() - 1)]
    }
    /// Adds to the known total input size.
    pub fn add_input_bytes_total(&self, bytes: u64) {
        self.input_bytes_total.fetch_add(bytes, Ordering::Relaxed);
    }
    /// Sums the workers' counters.
    pub fn snapshot(&self) -> Progress {
        let mut p = Progress {
            input_bytes_total: self.input_bytes_total.load(Ordering::Relaxed),
            ..Progress::default()
        };
        for w in &self.workers {
            p.records_in += w.records_in.load(Ordering::Relaxed);
            p.bytes_in += w.bytes_in.load(Ordering::Relaxed);
            p.late_dropped += w.late_dropped.load(Ordering::Relaxed);
        }
        p
    }
}

impl WorkerCounters {
    /// Counts a batch read by a source.
    #[inline]
    pub fn add_records(&self, records: u64) {
        self.records_in.fetch_add(records, Ordering::Relaxed);
    }
    /// Counts input bytes read by a source.
    #[inline]
    pub fn add_bytes(&self, bytes: u64) {
        self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
    }
    /// Counts late records dropped.
    #[inline]
    pub fn add_late_dropped(&self, records: u64) {
        self.late_dropped.fetch_add(records, Ordering::Relaxed);
    }
}
