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

/// Writes records as lines of text (their `Display`) into part files in a directory, one per
/// worker that received records: `part-<worker>-<run>` where `<run>` is unique to the sink,
/// so a sink never overwrites a file. While written, a part file is named
/// `.part-<worker>-<run>.inprogress`; at the end of input each worker syncs its file, and only
/// when the whole job succeeded are they renamed to their final names and the directory
/// synced. A failed job leaves no output: its pending files are removed.
pub struct TextFileSink<D: Disk = GlommioDisk> {
    dir: PathBuf,
    run: String,
    disk: D,
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
    fn commit(&self) -> Result<()> {
        // Rename this run's synced part files to their final names, then make the renames
        // durable. On the job's own thread, after every worker finished: plain std calls.
        let io = |op, path: &std::path::Path| {
            let path = path.to_owned();
            move |source| Error::Io { op, path, source }
        };
        for pending in self.pending_files()? {
            let name = pending
                .file_name()
                .map(|n| n.to_string_lossy().into_owned());
            let done = name
                .as_deref()
                .and_then(|n| n.strip_prefix('.'))
                .and_then(|n| n.strip_suffix(".inprogress"))
                .map(|n| self.dir.join(n));
            if let Some(done) = done {
                std::fs::rename(&pending, &done).map_err(io("commit part file", &done))?;
            }
        }
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync output directory", &self.dir))
    }
    fn abort(&self) {
        for pending in self.pending_files().unwrap_or_default() {
            let _ = std::fs::remove_file(pending);
        }
    }
    async fn open(&self, ctx: &SinkContext) -> Result<TextFileWriter<D>> {
        Ok(TextFileWriter {
            disk: self.disk.clone(),
            dir: self.dir.clone(),
            name: format!("part-{:05}-{}", ctx.worker, self.run),
            file: None,
            text: String::with_capacity(WRITE_BUFFER_BYTES + 4096),
        })
    }
}

impl<D: Disk> TextFileSink<D> {
    /// This run's part files still waiting for the commit.
    fn pending_files(&self) -> Result<Vec<PathBuf>> {
        let suffix = format!("-{}.inprogress", self.run);
        let entries = std::fs::read_dir(&self.dir).map_err(|source| Error::Io {
            op: "list output directory",
            path: self.dir.clone(),
            source,
        })?;
        Ok(entries
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with(".part-") && name.ends_with(&suffix)
            })
            .map(|e| e.path())
            .collect())
    }
}

impl<D: Disk> TextFileWriter<D> {
    fn pending_path(&self) -> PathBuf {
        self.dir.join(format!(".{}.inprogress", self.name))
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
