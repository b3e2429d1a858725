//! The I/O seams: [`Disk`] for files and [`Net`] for sockets.
//!
//! Production uses [`GlommioDisk`] and [`GlommioNet`] (io_uring through glommio); a
//! deterministic simulator can substitute in-memory implementations later without touching the
//! sources and sinks written against these traits. The futures are `!Send`: they run on the
//! worker's own executor.
#![allow(async_fn_in_trait)]

use std::io;
use std::path::Path;

use futures_lite::AsyncRead;
use glommio::io::{BufferedFile, OpenOptions};

/// A file opened for positional reads.
pub trait ReadFile {
    /// Appends up to `len` bytes read at `pos` to `buf`; returns how many (0 at the end).
    async fn read_at(&self, pos: u64, len: usize, buf: &mut Vec<u8>) -> io::Result<usize>;
    /// Closes the file.
    async fn close(self) -> io::Result<()>;
}

/// A new file being written sequentially.
pub trait WriteFile {
    /// Writes all of `buf` at the end of the file.
    async fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Flushes, syncs the data to the medium and closes the file.
    async fn sync_close(self) -> io::Result<()>;
}

/// Files and directories.
pub trait Disk: Clone + Send + Sync + 'static {
    /// A file open for reading.
    type Read: ReadFile;
    /// A file open for writing.
    type Write: WriteFile;
    /// Opens an existing file for reading.
    async fn open_read(&self, path: &Path) -> io::Result<Self::Read>;
    /// Creates a new file; fails if it exists.
    async fn create_new(&self, path: &Path) -> io::Result<Self::Write>;
}

/// Sockets.
pub trait Net: Clone + Send + Sync + 'static {
    /// A connected byte stream.
    type Conn: AsyncRead + Unpin;
    /// Connects to `addr` (`host:port`).
    async fn connect(&self, addr: &str) -> io::Result<Self::Conn>;
}

/// [`Disk`] on glommio's io_uring files. Reads go through the page cache (buffered, not
/// O_DIRECT): inputs are usually hot, and glommio's O_DIRECT probe misfires on fresh empty
/// files (glommio #605).
#[derive(Clone, Copy, Debug, Default)]
pub struct GlommioDisk;

/// A file read through glommio.
pub struct GlommioReadFile(BufferedFile);

/// A file written through glommio, sequentially from offset 0. (glommio's own `StreamWriter`
/// is not used: its sync-on-close panics when its task is polled spuriously before the sync
/// completes, which tasks waiting on several channels are.)
pub struct GlommioWriteFile {
    file: BufferedFile,
    pos: u64,
}

impl ReadFile for GlommioReadFile {
    async fn read_at(&self, pos: u64, len: usize, buf: &mut Vec<u8>) -> io::Result<usize> {
        let got = self.0.read_at(pos, len).await.map_err(io::Error::from)?;
        buf.extend_from_slice(&got);
        Ok(got.len())
    }
    async fn close(self) -> io::Result<()> {
        self.0.close().await.map_err(io::Error::from)
    }
}

impl WriteFile for GlommioWriteFile {
    async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut written = 0;
        while written < buf.len() {
            let n = self
                .file
                .write_at(buf[written..].to_vec(), self.pos)
                .await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "wrote 0 bytes"));
            }
            written += n;
            self.pos += n as u64;
        }
        Ok(())
    }
    async fn sync_close(self) -> io::Result<()> {
        self.file.fdatasync().await?;
        self.file.close().await.map_err(io::Error::from)
    }
}

impl Disk for GlommioDisk {
    type Read = GlommioReadFile;
    type Write = GlommioWriteFile;

    async fn open_read(&self, path: &Path) -> io::Result<GlommioReadFile> {
        let file = OpenOptions::new().read(true).buffered_open(path).await?;
        Ok(GlommioReadFile(file))
    }
    async fn create_new(&self, path: &Path) -> io::Result<GlommioWriteFile> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .buffered_open(path)
            .await?;
        Ok(GlommioWriteFile { file, pos: 0 })
    }
}

/// [`Net`] on glommio's io_uring TCP.
#[derive(Clone, Copy, Debug, Default)]
pub struct GlommioNet;

impl Net for GlommioNet {
    type Conn = glommio::net::TcpStream;
    async fn connect(&self, addr: &str) -> io::Result<glommio::net::TcpStream> {
        glommio::net::TcpStream::connect(addr)
            .await
            .map_err(io::Error::from)
    }
}
