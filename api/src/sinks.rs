//! The built-in sinks: stdout, text part files, and an in-memory collection for tests.
//!
//! The output directory contract, for every file sink: a sink's output is every file in its
//! directory whose name starts with neither `.` nor `_`. A file still being written carries a
//! name starting with `.` until it is complete, synced, and renamed to its final name.

use std::fmt::{Debug, Display, Write as _};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sluice_core::clock::{Clock, SystemClock};
use sluice_core::io::{Disk, GlommioDisk, WriteFile};
use sluice_core::sink::{Sink, SinkContext, SinkWriter};
use sluice_core::{Error, Result};

/// Bytes of formatted text buffered before a write.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// Prints records to stdout as `worker> record`, with the worker counted from 1 as in Flink.
/// For debugging: it writes with blocking calls.
pub struct PrintSink;

/// The writer of a [`PrintSink`].
pub struct PrintWriter {
    prefix: String,
    text: String,
}

impl<T: Debug> Sink<T> for PrintSink {
    type Writer = PrintWriter;
    fn name(&self) -> String {
        "print".into()
    }
    async fn open(&self, ctx: &SinkContext) -> Result<PrintWriter> {
        Ok(PrintWriter {
            prefix: format!("{}> ", ctx.worker + 1),
            text: String::new(),
        })
    }
}

impl<T: Debug> SinkWriter<T> for PrintWriter {
    async fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<()> {
        self.text.clear();
        for record in batch.drain(..) {
            let _ = writeln!(self.text, "{}{record:?}", self.prefix);
        }
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(self.text.as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(|source| Error::IoOther {
                op: "write to stdout".into(),
                source,
            })
    }
    async fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Writes records as lines of text (their `Display`) into part files in a directory:
/// `part-<worker>-<token>-<epoch>`, where `<token>` is unique to the sink, so a sink —
/// restored or not — never overwrites a file. On a cluster, the name also carries the run
/// (the job's deployment): `part-<worker>-<token>-r<run>-<epoch>`.
///
/// Exactly once, by two-phase commit. Worker `w` writes the records it gets into
/// `.part-<w>-<token>-<epoch>.pending`, where `<epoch>` is one more than the id of the last
/// checkpoint barrier it saw (or than the checkpoint the job resumed from). When the next
/// barrier arrives, the file is synced and closed (pre-commit) and a new one starts with the
/// next epoch. When checkpoint `n` completes, the pending files of epochs up to `n` are renamed
/// to their final names and the directory synced; when the job ends, all of them. On a restore
/// from checkpoint `r`, the pending files of epochs up to `r` — complete, but not yet renamed
/// when the previous run stopped — are committed, and later ones (their records will be read
/// again) deleted; on a cluster, only the files of the run that took checkpoint `r` are
/// committed (a run that was failed over may still write — a paused node — after a later run
/// settled the output: its files are never output). A job without checkpoints has one epoch,
/// committed when it succeeds; a failed one leaves no output.
pub struct TextFileSink<D: Disk = GlommioDisk> {
    dir: PathBuf,
    run: String,
    disk: D,
}

/// The cluster run a part file's (final) name carries: `part-<worker>-<token>-r<run>-<epoch>`.
fn file_run(final_name: &str) -> Option<u64> {
    let mut parts = final_name.rsplit('-');
    parts.next()?;
    parts.next()?.strip_prefix('r')?.parse().ok()
}

/// A pending part file's name: `.part-<worker>-<token>[-r<run>]-<epoch>.pending`.
fn pending_epoch(name: &str) -> Option<(&str, u64)> {
    let final_name = name.strip_prefix('.')?.strip_suffix(".pending")?;
    let epoch = final_name.rsplit('-').next()?.parse().ok()?;
    final_name
        .starts_with("part-")
        .then_some((final_name, epoch))
}

impl TextFileSink {
    /// Part files in `dir`, created if missing.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        TextFileSink::with_disk(dir, GlommioDisk)
    }
}

impl<D: Disk> TextFileSink<D> {
    /// Part files written through another [`Disk`].
    pub fn with_disk(dir: impl Into<PathBuf>, disk: D) -> Self {
        // Unique per sink: time, process, and a counter for sinks made in the same millisecond.
        static SINKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SINKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let run = format!(
            "{:x}{:05x}{n:x}",
            SystemClock::new().now_ms(),
            std::process::id() & 0xfffff
        );
        // Absolute, so the part files' paths in errors are unambiguous.
        let dir: PathBuf = dir.into();
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        TextFileSink { dir, run, disk }
    }
}

/// The writer of a [`TextFileSink`].
pub struct TextFileWriter<D: Disk> {
    disk: D,
    dir: PathBuf,
    name: String,
    /// The epoch of the file being written: one past the last barrier seen.
    epoch: u64,
    file: Option<D::Write>,
    text: String,
}

impl<T: Display, D: Disk> Sink<T> for TextFileSink<D> {
    type Writer = TextFileWriter<D>;
    fn name(&self) -> String {
        format!("write_text({})", self.dir.display())
    }
    fn prepare(&self, _workers: usize) -> Result<()> {
        if self.dir.exists() && !self.dir.is_dir() {
            return Err(Error::Config(format!(
                "output path {} is a file, not a directory",
                self.dir.display()
            )));
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| Error::Io {
            op: "create output directory",
            path: self.dir.clone(),
            source,
        })
    }
    fn recover(&self, restored_id: u64, restored_run: u64) -> Result<()> {
        if restored_id == 0 {
            // A start without a checkpoint: whatever this sink wrote before (an attempt that
            // failed before its first checkpoint completed) is covered by none and will be
            // written again; left pending, a later restore would commit it twice. Other
            // sinks' pending files (another process's) are not ours to judge.
            let own = format!("-{}-", self.run);
            return self.settle(|name, _| name.contains(&own).then_some(false));
        }
        // Every run's pending files: the ones the resumed checkpoint covers are output, the
        // rest will be written again. On a cluster, only the files of the run that took the
        // checkpoint can be covered by it: another run's (a zombie's, written after a later
        // run settled the output) go.
        self.settle(|name, epoch| {
            let ours = restored_run == 0 || file_run(name).is_none_or(|r| r == restored_run);
            Some(epoch <= restored_id && ours)
        })
    }
    fn commit_checkpoint(&self, id: u64) -> Result<()> {
        let own = format!("-{}-", self.run);
        self.settle(|name, epoch| (name.contains(&own) && epoch <= id).then_some(true))
    }
    fn commit(&self) -> Result<()> {
        let own = format!("-{}-", self.run);
        self.settle(|name, _| name.contains(&own).then_some(true))
    }
    fn abort(&self) {
        let own = format!("-{}-", self.run);
        let _ = self.settle(|name, _| name.contains(&own).then_some(false));
    }
    async fn open(&self, ctx: &SinkContext) -> Result<TextFileWriter<D>> {
        Ok(TextFileWriter {
            disk: self.disk.clone(),
            dir: self.dir.clone(),
            name: match ctx.run {
                0 => format!("part-{:05}-{}", ctx.worker, self.run),
                run => format!("part-{:05}-{}-r{run}", ctx.worker, self.run),
            },
            epoch: ctx.restored_id + 1,
            file: None,
            text: String::with_capacity(WRITE_BUFFER_BYTES + 4096),
        })
    }
}

impl<D: Disk> TextFileSink<D> {
    /// For each pending part file, `decide(name, epoch)`: `Some(true)` commits it (renames it
    /// to its final name), `Some(false)` deletes it, `None` leaves it. Then syncs the
    /// directory if anything changed. On the job's own thread: plain std calls.
    fn settle(&self, decide: impl Fn(&str, u64) -> Option<bool>) -> Result<()> {
        let io = |op, path: &std::path::Path| {
            let path = path.to_owned();
            move |source| Error::Io { op, path, source }
        };
        let entries =
            std::fs::read_dir(&self.dir).map_err(io("list output directory", &self.dir))?;
        let mut changed = false;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((final_name, epoch)) = pending_epoch(&name) else {
                continue;
            };
            let path = entry.path();
            match decide(final_name, epoch) {
                Some(true) => {
                    let done = self.dir.join(final_name);
                    std::fs::rename(&path, &done).map_err(io("commit part file", &done))?;
                }
                Some(false) => {
                    std::fs::remove_file(&path).map_err(io("remove part file", &path))?;
                }
                None => continue,
            }
            changed = true;
        }
        if changed {
            std::fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io("sync output directory", &self.dir))?;
        }
        Ok(())
    }
}

impl<D: Disk> TextFileWriter<D> {
    fn pending_path(&self) -> PathBuf {
        self.dir
            .join(format!(".{}-{}.pending", self.name, self.epoch))
    }

    /// Syncs and closes the file being written, if any.
    async fn close_file(&mut self) -> Result<()> {
        self.write_out().await?;
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        let pending = self.pending_path();
        file.sync_close().await.map_err(|source| Error::Io {
            op: "sync part file",
            path: pending,
            source,
        })
    }

    async fn write_out(&mut self) -> Result<()> {
        if self.text.is_empty() {
            return Ok(());
        }
        if self.file.is_none() {
            let path = self.pending_path();
            let file = self
                .disk
                .create_new(&path)
                .await
                .map_err(|source| Error::Io {
                    op: "create part file",
                    path,
                    source,
                })?;
            self.file = Some(file);
        }
        let path = self.pending_path();
        if let Some(file) = self.file.as_mut() {
            file.write_all(self.text.as_bytes())
                .await
                .map_err(|source| Error::Io {
                    op: "write part file",
                    path,
                    source,
                })?;
        }
        self.text.clear();
        Ok(())
    }
}

impl<T: Display, D: Disk> SinkWriter<T> for TextFileWriter<D> {
    async fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<()> {
        for record in batch.drain(..) {
            let _ = writeln!(self.text, "{record}");
        }
        if self.text.len() >= WRITE_BUFFER_BYTES {
            self.write_out().await?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        self.close_file().await
    }

    async fn pre_commit(&mut self, checkpoint_id: u64) -> Result<()> {
        self.close_file().await?;
        self.epoch = self.epoch.max(checkpoint_id + 1);
        Ok(())
    }
}

/// Collects records in memory (for tests and small results).
pub struct CollectSink<T> {
    items: Arc<Mutex<Vec<T>>>,
}

/// Reads what a [`CollectSink`] collected.
pub struct CollectHandle<T> {
    items: Arc<Mutex<Vec<T>>>,
}

impl<T> CollectHandle<T> {
    /// Takes the records collected so far (all of them after `execute` returned), in no
    /// particular order across workers.
    pub fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.items.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl<T> CollectSink<T> {
    /// A new, empty collection.
    pub fn new() -> Self {
        CollectSink {
            items: Arc::new(Mutex::new(Vec::new())),
        }
    }
    /// A handle on what it collects.
    pub fn handle(&self) -> CollectHandle<T> {
        CollectHandle {
            items: self.items.clone(),
        }
    }
}

impl<T> Default for CollectSink<T> {
    fn default() -> Self {
        CollectSink::new()
    }
}

/// The writer of a [`CollectSink`].
pub struct CollectWriter<T> {
    items: Arc<Mutex<Vec<T>>>,
}

impl<T: Send + 'static> Sink<T> for CollectSink<T> {
    type Writer = CollectWriter<T>;
    fn name(&self) -> String {
        "collect".into()
    }
    async fn open(&self, _ctx: &SinkContext) -> Result<CollectWriter<T>> {
        Ok(CollectWriter {
            items: self.items.clone(),
        })
    }
}

impl<T: 'static> SinkWriter<T> for CollectWriter<T> {
    async fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<()> {
        self.items
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .append(batch);
        Ok(())
    }
    async fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entries of `dir`, sorted.
    fn entries(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_restore_commits_only_the_covered_files_of_the_run_that_took_the_checkpoint() {
        let pending = [
            // The run that took checkpoint 10: covered, and not.
            ".part-00000-aa-r7-9.pending",
            ".part-00001-bb-r7-11.pending",
            // A run failed over before (a zombie's file, written after a later settlement).
            ".part-00000-cc-r5-8.pending",
            // A run in one process: no run in its name.
            ".part-00002-dd-4.pending",
        ];
        for (run, expected) in [
            (7, vec!["part-00000-aa-r7-9", "part-00002-dd-4"]),
            (
                0,
                vec![
                    "part-00000-aa-r7-9",
                    "part-00000-cc-r5-8",
                    "part-00002-dd-4",
                ],
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            for name in pending {
                std::fs::write(dir.path().join(name), "1\n").unwrap();
            }
            let sink = TextFileSink::new(dir.path());
            <TextFileSink as Sink<u64>>::recover(&sink, 10, run).unwrap();
            assert_eq!(entries(dir.path()), expected, "restored run {run}");
        }
        assert_eq!(file_run("part-00000-aa-r7-9"), Some(7));
    }

    #[test]
    fn a_restart_without_a_checkpoint_drops_what_the_failed_attempt_left_pending() {
        let dir = tempfile::tempdir().unwrap();
        let sink = TextFileSink::new(dir.path());
        let own = [
            format!(".part-00000-{}-1.pending", sink.run),
            format!(".part-00001-{}-2.pending", sink.run),
        ];
        let other = ".part-00000-zz-1.pending";
        for name in own.iter().map(String::as_str).chain([other]) {
            std::fs::write(dir.path().join(name), "1\n").unwrap();
        }
        <TextFileSink as Sink<u64>>::recover(&sink, 0, 0).unwrap();
        assert_eq!(entries(dir.path()), vec![other.to_string()]);
        assert_eq!(file_run("part-00002-dd-4"), None);
    }
}
