//! The store's I/O seam (STYLE item 4): [`Disk`] creates, syncs, renames and removes files,
//! [`DiskWriter`] writes a new file with aligned positional writes, [`DiskReader`] reads with
//! blocking positional reads.
//!
//! Production is [`GlommioDisk`]: writes are glommio DMA (`O_DIRECT`) writes on io_uring,
//! with buffers aligned to the file's own `alignment()` (512 on this disk, 4096 on a 4Kn
//! device: never a constant, RELIABILITY §5 #6); files are opened read+write, never with
//! `DmaFile::create`, which is write-only (§5 #5). Reads are `pread` on the page cache: the
//! per-record path that reads an evicted entry is synchronous, and a `pread` of a cached
//! block costs about a microsecond without touching glommio's ring (an io_uring
//! submit-and-wait would cost the same syscall and could not reuse the page cache under
//! `O_DIRECT`). An `O_DIRECT` write leaves nothing in the page cache, so once a segment is
//! written the store asks the kernel to read it in ahead ([`DiskReader::will_need`],
//! `POSIX_FADV_WILLNEED`: one sequential read in the background) instead of letting each
//! lookup's first `pread` of a block wait for the disk. Reads never go through glommio's
//! DMA path, so its first-read probe bug (§5 #4) cannot hit them; the store still primes the
//! probe with a non-empty file.
//! The simulated disk for crash tests is `crate::sim::SimDisk`.
#![allow(async_fn_in_trait)]

use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use glommio::io::{DmaFile, OpenOptions};

/// Files and directories, as the store uses them.
pub trait Disk: Clone + 'static {
    /// A new file being written.
    type Writer: DiskWriter;
    /// A file open for reading.
    type Reader: DiskReader;
    /// Creates a new file (fails if it exists), open for aligned writes.
    async fn create(&self, path: &Path) -> io::Result<Self::Writer>;
    /// Opens an existing file for positional reads.
    fn open(&self, path: &Path) -> io::Result<Self::Reader>;
    /// Renames a file (atomic on POSIX file systems; durable after [`Disk::sync_dir`]).
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creates, renames, removes) durable.
    async fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Removes a file.
    async fn remove(&self, path: &Path) -> io::Result<()>;
    /// The names of the files in a directory.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates a directory and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Writes a small file in one go and syncs it and its directory (store identity file).
    fn write_small(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Prepares DMA I/O on the device of `path`, an existing non-empty file.
    async fn prime(&self, path: &Path) -> io::Result<()>;
    /// `fdatasync` of an existing file written earlier and closed without a sync.
    async fn sync_file(&self, path: &Path) -> io::Result<()>;
}

/// A new file, written with aligned positional writes.
pub trait DiskWriter {
    /// Positions and lengths of writes must be multiples of this.
    fn alignment(&self) -> usize;
    /// Writes all of `buf` at `pos`.
    async fn write_at(&mut self, pos: u64, buf: &[u8]) -> io::Result<()>;
    /// `fdatasync`: the written data is on the medium when this returns Ok.
    async fn sync(&mut self) -> io::Result<()>;
    /// A hint that `[pos, pos + len)`, written, will be read soon at random places: start
    /// reading it into the page cache in the background (an `O_DIRECT` write leaves nothing
    /// there). A merge advises each chunk as it writes it, so that its output is cached by
    /// the time it replaces its inputs, whose cached pages then go. Only a hint.
    fn will_need_written(&self, pos: u64, len: u64) {
        let _ = (pos, len);
    }
    /// Closes the file.
    async fn close(self) -> io::Result<()>;
}

/// A file open for reading.
pub trait DiskReader {
    /// The file's length.
    fn len(&self) -> u64;
    /// Whether the file is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` from `pos` (blocking); fails if the file ends first.
    fn read_exact_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<()>;
    /// A hint that the whole file will be read soon, at random places: start reading it
    /// into the page cache in the background (a file written with `O_DIRECT` is not in the
    /// page cache, so otherwise every first read of a block of it waits for the disk).
    /// Only a hint: nothing fails if it is ignored.
    fn will_need(&self) {
        self.will_need_range(0, self.len());
    }
    /// A hint that `[pos, pos + len)` will be read soon: start reading it into the page
    /// cache in the background. A sequential scan advises the bytes ahead of what it reads
    /// (see `segment::scan_range`), so that many reads are in flight while it works: one
    /// synchronous read at a time keeps a virtual disk at a fraction of its speed.
    /// Only a hint: nothing fails if it is ignored.
    fn will_need_range(&self, pos: u64, len: u64) {
        let _ = (pos, len);
    }
}

/// [`Disk`] on glommio DMA files (writes) and `pread` (reads).
#[derive(Clone, Copy, Debug, Default)]
pub struct GlommioDisk;

/// A file written with glommio DMA writes.
pub struct GlommioWriter {
    file: DmaFile,
    path: PathBuf,
}

/// A file read with `pread`.
pub struct StdReader {
    file: std::fs::File,
    len: u64,
}

impl DiskWriter for GlommioWriter {
    fn alignment(&self) -> usize {
        self.file.alignment() as usize
    }
    async fn write_at(&mut self, pos: u64, buf: &[u8]) -> io::Result<()> {
        let align = self.alignment();
        assert!(
            pos as usize % align == 0,
            "unaligned write at {pos} (alignment {align})"
        );
        assert!(
            buf.len() % align == 0,
            "unaligned length {} (alignment {align})",
            buf.len()
        );
        let mut dma = self.file.alloc_dma_buffer(buf.len());
        dma.as_bytes_mut().copy_from_slice(buf);
        let n = self
            .file
            .write_at(dma, pos)
            .await
            .map_err(io::Error::from)?;
        if n != buf.len() {
            // A short O_DIRECT write (ENOSPC on the way): the rest is not written.
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "short write of {n} of {} bytes to {}",
                    buf.len(),
                    self.path.display()
                ),
            ));
        }
        Ok(())
    }
    async fn sync(&mut self) -> io::Result<()> {
        self.file.fdatasync().await.map_err(io::Error::from)
    }
    fn will_need_written(&self, pos: u64, len: u64) {
        use std::os::fd::AsRawFd;
        will_need(self.file.as_raw_fd(), pos, pos.saturating_add(len));
    }
    async fn close(self) -> io::Result<()> {
        self.file.close().await.map_err(io::Error::from)
    }
}

impl DiskReader for StdReader {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, pos)
    }
    fn will_need_range(&self, pos: u64, len: u64) {
        use std::os::fd::AsRawFd;
        will_need(
            self.file.as_raw_fd(),
            pos,
            pos.saturating_add(len).min(self.len),
        );
    }
}

/// Advises `[at, end)` of the file `fd` `POSIX_FADV_WILLNEED` (it works on an `O_DIRECT`
/// descriptor too: the kernel reads into the file's page cache either way). Linux reads at
/// most the device's readahead window (`read_ahead_kb`, 128 KiB by default) per call, so the
/// range is advised a window at a time. Only advice: errors are ignored.
/// `fd` is the descriptor of a file the caller holds open.
fn will_need(fd: std::os::fd::RawFd, mut at: u64, end: u64) {
    const WINDOW: u64 = 128 << 10;
    while at < end {
        let n = WINDOW.min(end - at);
        let (Ok(off), Ok(n)) = (libc::off_t::try_from(at), libc::off_t::try_from(n)) else {
            return;
        };
        // SAFETY: `posix_fadvise` only reads its integer arguments, and the caller holds
        // the descriptor's file open for the duration of the call.
        let _ = unsafe { libc::posix_fadvise(fd, off, n, libc::POSIX_FADV_WILLNEED) };
        at += WINDOW;
    }
}

impl Disk for GlommioDisk {
    type Writer = GlommioWriter;
    type Reader = StdReader;

    async fn create(&self, path: &Path) -> io::Result<GlommioWriter> {
        // read + write, never `DmaFile::create` (write-only: RELIABILITY §5 #5).
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .dma_open(path)
            .await
            .map_err(io::Error::from)?;
        Ok(GlommioWriter {
            file,
            path: path.to_path_buf(),
        })
    }
    fn open(&self, path: &Path) -> io::Result<StdReader> {
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        Ok(StdReader { file, len })
    }
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        glommio::io::rename(from, to).await.map_err(io::Error::from)
    }
    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let d = glommio::io::Directory::open(dir)
            .await
            .map_err(io::Error::from)?;
        let synced = d.sync().await.map_err(io::Error::from);
        let closed = d.close().await.map_err(io::Error::from);
        synced.and(closed)
    }
    async fn remove(&self, path: &Path) -> io::Result<()> {
        glommio::io::remove(path).await.map_err(io::Error::from)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
    fn write_small(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let tmp = path.with_extension("tmp");
        {
            let f = std::fs::File::create(&tmp)?;
            f.write_all_at(bytes, 0)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
    async fn prime(&self, path: &Path) -> io::Result<()> {
        prime_dma_probe(path).await
    }
    async fn sync_file(&self, path: &Path) -> io::Result<()> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(path)
            .await
            .map_err(io::Error::from)?;
        let synced = file.fdatasync().await.map_err(io::Error::from);
        let closed = file.close().await.map_err(io::Error::from);
        synced.and(closed)
    }
}

/// Primes glommio's per-device O_DIRECT poll probe with a non-empty file, so that the probe
/// reads real blocks and caches "not pollable" on devices without polled I/O (glommio #605:
/// probing through a fresh, empty file records a false "pollable", after which DMA I/O to
/// that device fails with `EOPNOTSUPP`; RELIABILITY §5 #4).
pub async fn prime_dma_probe(path: &Path) -> io::Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(path)
        .await
        .map_err(io::Error::from)?;
    file.close().await.map_err(io::Error::from)
}
