//! The built-in sources: a collection, text files split into byte ranges, and a TCP socket.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_lite::AsyncReadExt;
use sluice_core::io::{Disk, GlommioDisk, GlommioNet, Net, ReadFile};
use sluice_core::source::{ReadPosition, ReadStatus, Source, SourceContext, SourceReader};
use sluice_core::{Batch, Error, NO_TIMESTAMP, Result};

/// Bytes read from a file per I/O.
const READ_CHUNK_BYTES: usize = 1 << 20;
/// The longest line a text source accepts: a longer one (a binary file, a missing newline in a
/// huge file) is an error naming where it starts, not an unbounded buffer.
pub const LINE_BYTES_MAX: usize = 64 << 20;

fn line_too_long(path: &Path, offset: u64) -> Error {
    Error::Corrupt {
        path: path.to_owned(),
        offset,
        reason: format!("a line longer than {} MiB", LINE_BYTES_MAX >> 20),
    }
}

/// Two little-endian `u64`s at the start of `bytes`.
fn decode_two_u64(bytes: &[u8]) -> Option<(u64, u64)> {
    let a = u64::from_le_bytes(bytes.get(0..8)?.try_into().ok()?);
    let b = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some((a, b))
}

/// A bounded source over the items of a collection, split into one contiguous slice per
/// worker. Its read position is the index of the next item, so it can be replayed.
pub struct CollectionSource<T> {
    items: Arc<Vec<T>>,
}

impl<T> CollectionSource<T> {
    /// A source over `items`.
    pub fn new(items: impl IntoIterator<Item = T>) -> Self {
        CollectionSource {
            items: Arc::new(items.into_iter().collect()),
        }
    }
}

/// Reads one slice of a [`CollectionSource`].
pub struct CollectionReader<T> {
    items: Arc<Vec<T>>,
    next: usize,
    end: usize,
}

impl<T: Clone + Send + Sync + 'static> Source for CollectionSource<T> {
    type Item = T;
    type Split = std::ops::Range<usize>;
    type Reader = CollectionReader<T>;

    fn name(&self) -> String {
        "from_iter".into()
    }
    fn is_bounded(&self) -> bool {
        true
    }
    fn splits(&self, workers: usize) -> Result<Vec<std::ops::Range<usize>>> {
        let n = self.items.len();
        let workers = workers.max(1);
        Ok((0..workers)
            .map(|w| (w * n / workers)..((w + 1) * n / workers))
            .collect())
    }
    fn encode_split(&self, split: &std::ops::Range<usize>) -> Option<Vec<u8>> {
        let mut bytes = (split.start as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(&(split.end as u64).to_le_bytes());
        Some(bytes)
    }
    fn decode_split(&self, bytes: &[u8]) -> Result<std::ops::Range<usize>> {
        let (start, end) = decode_two_u64(bytes)
            .filter(|&(s, e)| s <= e && e <= self.items.len() as u64)
            .ok_or_else(|| {
                Error::Config(format!(
                    "a checkpointed split of from_iter does not fit its {} items",
                    self.items.len()
                ))
            })?;
        Ok(start as usize..end as usize)
    }
    async fn open(
        &self,
        split: std::ops::Range<usize>,
        start: Option<ReadPosition>,
        _ctx: &SourceContext,
    ) -> Result<CollectionReader<T>> {
        let next = start.map_or(split.start, |p| {
            (p.0 as usize).clamp(split.start, split.end)
        });
        Ok(CollectionReader {
            items: self.items.clone(),
            next,
            end: split.end,
        })
    }
}

impl<T: Clone + 'static> SourceReader for CollectionReader<T> {
    type Item = T;
    async fn read_batch(&mut self, out: &mut Batch<T>, records_max: usize) -> Result<ReadStatus> {
        let end = self.end.min(self.next + records_max);
        out.extend_untimed(self.items[self.next..end].iter().cloned());
        self.next = end;
        Ok(if self.next == self.end {
            ReadStatus::End
        } else {
            ReadStatus::More
        })
    }
    fn position(&self) -> ReadPosition {
        ReadPosition(self.next as u64)
    }
}

/// A byte range of one file. The range's reader owns every line that *starts* inside it; a
/// line that starts inside and ends beyond is read to its end, and the next range skips it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextSplit {
    /// The file.
    pub path: Arc<PathBuf>,
    /// First byte of the range.
    pub start: u64,
    /// One past the last byte of the range.
    pub end: u64,
}

/// Where a line of a text input is: for error messages that name it.
#[derive(Clone, Copy, Debug)]
pub struct LineAt<'a> {
    /// The file.
    pub path: &'a Path,
    /// The byte offset of the line's first byte.
    pub offset: u64,
}

impl LineAt<'_> {
    /// The line's number in its file, counting from 1. Reads the file up to the line (with
    /// blocking reads): for error messages, not for every line.
    pub fn line_number(&self) -> Result<u64> {
        use std::io::Read;
        let io = |source| Error::Io {
            op: "count lines of input",
            path: self.path.to_owned(),
            source,
        };
        let mut file = std::fs::File::open(self.path).map_err(io)?;
        let mut buf = vec![0u8; READ_CHUNK_BYTES];
        let (mut left, mut newlines) = (self.offset, 0u64);
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = file.read(&mut buf[..want]).map_err(io)?;
            if n == 0 {
                break;
            }
            newlines += memchr::memchr_iter(b'\n', &buf[..n]).count() as u64;
            left -= n as u64;
        }
        Ok(newlines + 1)
    }
}

/// Turns each line of a text input into a record, without copying the line first: a parser
/// can read fields straight from the reader's buffer. It may also give the record its event
/// time. A mapper pushes at most one record per line.
pub trait LineMapper: Clone + Send + Sync + 'static {
    /// The records.
    type Item: Send + 'static;
    /// Maps `line` (without its line end) found at `at`; an error fails the job.
    fn map_line(&mut self, line: &str, at: LineAt<'_>, out: &mut Batch<Self::Item>) -> Result<()>;
}

/// The lines as `String`s.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lines;

impl LineMapper for Lines {
    type Item = String;
    #[inline]
    fn map_line(&mut self, line: &str, _at: LineAt<'_>, out: &mut Batch<String>) -> Result<()> {
        out.push(line.to_owned(), NO_TIMESTAMP);
        Ok(())
    }
}

/// A bounded source over the lines of a text file, or of the visible files of a directory
/// (names not starting with `.` or `_`), split into byte ranges across workers; a
/// [`LineMapper`] turns each line into a record (by default the line itself).
pub struct TextFileSource<D: Disk = GlommioDisk, M: LineMapper = Lines> {
    path: PathBuf,
    disk: D,
    mapper: M,
}

impl TextFileSource {
    /// Lines of the file or directory at `path` (made absolute, so that a checkpoint names
    /// the same files from any working directory).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        TextFileSource::with_mapper(path, Lines)
    }
}

impl<M: LineMapper> TextFileSource<GlommioDisk, M> {
    /// Records made by `mapper` from the lines of the file or directory at `path`.
    pub fn with_mapper(path: impl Into<PathBuf>, mapper: M) -> Self {
        let path: PathBuf = path.into();
        TextFileSource {
            path: std::path::absolute(&path).unwrap_or(path),
            disk: GlommioDisk,
            mapper,
        }
    }
}

impl<D: Disk> TextFileSource<D> {
    /// Lines read through another [`Disk`] (a simulator's).
    pub fn with_disk(path: impl Into<PathBuf>, disk: D) -> Self {
        TextFileSource {
            path: path.into(),
            disk,
            mapper: Lines,
        }
    }
}

impl<D: Disk, M: LineMapper> TextFileSource<D, M> {
    fn files(&self) -> Result<Vec<(PathBuf, u64)>> {
        fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
            move |source| Error::Io {
                op,
                path: path.to_owned(),
                source,
            }
        }
        let not_regular = |path: &Path| {
            Error::Config(format!(
                "input {} is not a regular file or directory (a pipe or device cannot be split \
                 into byte ranges)",
                path.display()
            ))
        };
        let meta = std::fs::metadata(&self.path).map_err(io("open input", &self.path))?;
        if meta.is_file() {
            return Ok(vec![(self.path.clone(), meta.len())]);
        }
        if !meta.is_dir() {
            return Err(not_regular(&self.path));
        }
        let mut files = Vec::new();
        for entry in
            std::fs::read_dir(&self.path).map_err(io("list input directory", &self.path))?
        {
            let entry = entry.map_err(io("list input directory", &self.path))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name.starts_with('_') {
                continue;
            }
            let path = entry.path();
            let meta = std::fs::metadata(&path).map_err(io("open input", &path))?;
            if meta.is_file() {
                files.push((path, meta.len()));
            } else if !meta.is_dir() {
                return Err(not_regular(&path));
            }
        }
        files.sort();
        Ok(files)
    }
}

/// Splits `files` into byte ranges: about `workers` ranges over all of them together, at
/// least one per non-empty file; empty files get none.
pub fn text_splits(files: &[(PathBuf, u64)], workers: usize) -> Vec<TextSplit> {
    let total: u64 = files.iter().map(|(_, len)| len).sum();
    let target = total.div_ceil(workers.max(1) as u64).max(1);
    let mut splits = Vec::new();
    for (path, len) in files {
        let path = Arc::new(path.clone());
        let mut start = 0;
        while start < *len {
            let end = (start + target).min(*len);
            splits.push(TextSplit {
                path: path.clone(),
                start,
                end,
            });
            start = end;
        }
    }
    splits
}

impl<D: Disk, M: LineMapper> Source for TextFileSource<D, M> {
    type Item = M::Item;
    type Split = TextSplit;
    type Reader = LineReader<D::Read, M>;

    fn name(&self) -> String {
        format!("read_text_file({})", self.path.display())
    }
    fn is_bounded(&self) -> bool {
        true
    }
    fn splits(&self, workers: usize) -> Result<Vec<TextSplit>> {
        Ok(text_splits(&self.files()?, workers))
    }
    fn split_bytes(&self, split: &TextSplit) -> Option<u64> {
        Some(split.end - split.start)
    }
    fn encode_split(&self, split: &TextSplit) -> Option<Vec<u8>> {
        use std::os::unix::ffi::OsStrExt;
        let mut bytes = split.start.to_le_bytes().to_vec();
        bytes.extend_from_slice(&split.end.to_le_bytes());
        bytes.extend_from_slice(split.path.as_os_str().as_bytes());
        Some(bytes)
    }
    fn decode_split(&self, bytes: &[u8]) -> Result<TextSplit> {
        use std::os::unix::ffi::OsStrExt;
        let bad = || Error::Config("a checkpointed text split is malformed".into());
        let (start, end) = decode_two_u64(bytes).ok_or_else(bad)?;
        let path = std::ffi::OsStr::from_bytes(bytes.get(16..).ok_or_else(bad)?);
        Ok(TextSplit {
            path: Arc::new(PathBuf::from(path)),
            start,
            end,
        })
    }
    async fn open(
        &self,
        split: TextSplit,
        start: Option<ReadPosition>,
        ctx: &SourceContext,
    ) -> Result<LineReader<D::Read, M>> {
        let file = self
            .disk
            .open_read(&split.path)
            .await
            .map_err(|source| Error::Io {
                op: "open input",
                path: split.path.to_path_buf(),
                source,
            })?;
        // Resuming at a recorded position starts at a line start; a fresh range starts one
        // byte early to learn whether its first line began in the previous range.
        let (offset, skip_first) = match start {
            Some(p) => (p.0, false),
            None if split.start == 0 => (0, false),
            None => (split.start - 1, true),
        };
        Ok(LineReader {
            file: Some(file),
            path: split.path.clone(),
            start: split.start,
            end: split.end,
            buf: Vec::with_capacity(READ_CHUNK_BYTES + 4096),
            consumed: 0,
            buf_offset: offset,
            file_offset: offset,
            eof: false,
            skip_first,
            counters_ctx: ctx.clone(),
            mapper: self.mapper.clone(),
        })
    }
}

/// Reads the lines of one [`TextSplit`].
pub struct LineReader<F, M = Lines> {
    file: Option<F>,
    path: Arc<PathBuf>,
    start: u64,
    end: u64,
    /// Bytes read but not yet returned start at `buf[consumed]`, at file offset
    /// `buf_offset + consumed`.
    buf: Vec<u8>,
    consumed: usize,
    buf_offset: u64,
    file_offset: u64,
    eof: bool,
    skip_first: bool,
    counters_ctx: SourceContext,
    mapper: M,
}

impl<F: ReadFile, M: LineMapper> LineReader<F, M> {
    /// File offset of the next unreturned byte: the start of the next line.
    fn next_line_offset(&self) -> u64 {
        self.buf_offset + self.consumed as u64
    }

    async fn fill(&mut self) -> Result<()> {
        // Keep only the unreturned tail (a partial line), then append a chunk.
        self.buf.drain(..self.consumed);
        self.buf_offset += self.consumed as u64;
        self.consumed = 0;
        if self.buf.len() > LINE_BYTES_MAX {
            return Err(line_too_long(&self.path, self.buf_offset));
        }
        let Some(file) = self.file.as_ref() else {
            self.eof = true;
            return Ok(());
        };
        let n = file
            .read_at(self.file_offset, READ_CHUNK_BYTES, &mut self.buf)
            .await
            .map_err(|source| Error::Io {
                op: "read input",
                path: self.path.to_path_buf(),
                source,
            })?;
        self.file_offset += n as u64;
        if n == 0 {
            self.eof = true;
        }
        Ok(())
    }

    fn take_line(&mut self, len_with_newline: usize, out: &mut Batch<M::Item>) -> Result<()> {
        let start = self.consumed;
        self.consumed += len_with_newline;
        let mut line = &self.buf[start..self.consumed];
        if line.last() == Some(&b'\n') {
            line = &line[..line.len() - 1];
        }
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        match std::str::from_utf8(line) {
            Ok(s) => {
                let at = LineAt {
                    path: &self.path,
                    offset: self.buf_offset + start as u64,
                };
                self.mapper.map_line(s, at, out)
            }
            Err(e) => Err(Error::Corrupt {
                path: self.path.to_path_buf(),
                offset: self.buf_offset + (start + e.valid_up_to()) as u64,
                reason: "invalid UTF-8 in a text input".into(),
            }),
        }
    }
}

impl<F: ReadFile + 'static, M: LineMapper> SourceReader for LineReader<F, M> {
    type Item = M::Item;

    async fn read_batch(
        &mut self,
        out: &mut Batch<M::Item>,
        records_max: usize,
    ) -> Result<ReadStatus> {
        let before = self.next_line_offset();
        let status = loop {
            if out.len() >= records_max {
                break ReadStatus::More;
            }
            if !self.skip_first && self.next_line_offset() >= self.end {
                break ReadStatus::End;
            }
            match memchr::memchr(b'\n', &self.buf[self.consumed..]) {
                Some(i) if self.skip_first => {
                    self.consumed += i + 1;
                    self.skip_first = false;
                }
                Some(i) => self.take_line(i + 1, out)?,
                None if self.eof => {
                    // A last line without a newline, unless it belongs to the previous range.
                    let rest = self.buf.len() - self.consumed;
                    if rest > 0 && !self.skip_first {
                        self.take_line(rest, out)?;
                    }
                    self.consumed = self.buf.len();
                    break ReadStatus::End;
                }
                None => self.fill().await?,
            }
        };
        // Count only this range's bytes, so the progress adds up to 100% over all ranges.
        let in_range = |offset: u64| offset.clamp(self.start, self.end);
        let read = in_range(self.next_line_offset()) - in_range(before);
        self.counters_ctx.counters().add_bytes(read);
        if status == ReadStatus::End {
            if let Some(file) = self.file.take() {
                file.close().await.map_err(|source| Error::Io {
                    op: "close input",
                    path: self.path.to_path_buf(),
                    source,
                })?;
            }
        }
        Ok(status)
    }

    fn position(&self) -> ReadPosition {
        ReadPosition(self.next_line_offset())
    }
}

/// Lines from a TCP connection, read by worker 0 only. At most once.
pub struct SocketTextSource<N: Net = GlommioNet> {
    addr: String,
    net: N,
}

impl SocketTextSource {
    /// Lines from `addr` (`host:port`).
    pub fn new(addr: impl Into<String>) -> Self {
        SocketTextSource {
            addr: addr.into(),
            net: GlommioNet,
        }
    }
}

impl<N: Net> SocketTextSource<N> {
    /// Lines through another [`Net`].
    pub fn with_net(addr: impl Into<String>, net: N) -> Self {
        SocketTextSource {
            addr: addr.into(),
            net,
        }
    }
}

/// Reads lines from a connection.
pub struct SocketLineReader<C> {
    conn: C,
    addr: String,
    buf: Vec<u8>,
    chunk: Vec<u8>,
    read: u64,
    eof: bool,
    ctx: SourceContext,
}

impl<N: Net> Source for SocketTextSource<N> {
    type Item = String;
    type Split = ();
    type Reader = SocketLineReader<N::Conn>;

    fn name(&self) -> String {
        format!("socket_text_stream({})", self.addr)
    }
    fn is_bounded(&self) -> bool {
        false
    }
    fn splits(&self, _workers: usize) -> Result<Vec<()>> {
        Ok(vec![()])
    }
    async fn open(
        &self,
        _split: (),
        _start: Option<ReadPosition>,
        ctx: &SourceContext,
    ) -> Result<SocketLineReader<N::Conn>> {
        let conn = self
            .net
            .connect(&self.addr)
            .await
            .map_err(|source| Error::IoOther {
                op: format!("connect to {}", self.addr),
                source,
            })?;
        Ok(SocketLineReader {
            conn,
            addr: self.addr.clone(),
            buf: Vec::new(),
            chunk: vec![0; 64 * 1024],
            read: 0,
            eof: false,
            ctx: ctx.clone(),
        })
    }
}

impl<C: futures_lite::AsyncRead + Unpin + 'static> SourceReader for SocketLineReader<C> {
    type Item = String;

    async fn read_batch(
        &mut self,
        out: &mut Batch<String>,
        records_max: usize,
    ) -> Result<ReadStatus> {
        loop {
            let mut consumed = 0;
            while out.len() < records_max {
                let Some(i) = memchr::memchr(b'\n', &self.buf[consumed..]) else {
                    break;
                };
                let mut line = &self.buf[consumed..consumed + i];
                if line.last() == Some(&b'\r') {
                    line = &line[..line.len() - 1];
                }
                let offset = self.read + consumed as u64;
                let s = std::str::from_utf8(line).map_err(|e| Error::Corrupt {
                    path: PathBuf::from(&self.addr),
                    offset: offset + e.valid_up_to() as u64,
                    reason: "invalid UTF-8 in a text input".into(),
                })?;
                out.push(s.to_owned(), NO_TIMESTAMP);
                consumed += i + 1;
            }
            self.buf.drain(..consumed);
            self.read += consumed as u64;
            self.ctx.counters().add_bytes(consumed as u64);
            if !out.is_empty() {
                return Ok(ReadStatus::More);
            }
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(ReadStatus::End);
                }
                // A last line without a newline: terminate it and go round once more.
                self.buf.push(b'\n');
                continue;
            }
            let n = self
                .conn
                .read(&mut self.chunk)
                .await
                .map_err(|source| Error::IoOther {
                    op: format!("read from {}", self.addr),
                    source,
                })?;
            if n == 0 {
                self.eof = true;
            }
            if self.buf.len() > LINE_BYTES_MAX {
                return Err(line_too_long(Path::new(&self.addr), self.read));
            }
            self.buf.extend_from_slice(&self.chunk[..n]);
        }
    }

    fn position(&self) -> ReadPosition {
        ReadPosition(self.read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_cover_each_file_and_skip_empty_ones() {
        let files = vec![
            (PathBuf::from("a"), 10),
            (PathBuf::from("b"), 0),
            (PathBuf::from("c"), 5),
        ];
        let splits = text_splits(&files, 3);
        let a: Vec<_> = splits
            .iter()
            .filter(|s| s.path.as_path() == Path::new("a"))
            .collect();
        assert_eq!(a.first().map(|s| s.start), Some(0));
        assert_eq!(a.last().map(|s| s.end), Some(10));
        for w in a.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        assert!(splits.iter().all(|s| s.path.as_path() != Path::new("b")));
        assert!(splits.iter().all(|s| s.start < s.end));
    }
}
