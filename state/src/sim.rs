//! `SimDisk`: an in-memory [`Disk`] that keeps, like LazyFS or redb's crash backend, the
//! durable image of every file apart from the writes not yet synced, and directory entries
//! apart from those not yet made durable by a directory sync. Crash tests take
//! [`CrashImage`]s at every durability point and reopen the store on each (RELIABILITY R6,
//! STYLE item 30); fault injection fails the n-th sync (fsyncgate: the failed writes are
//! lost and a retried sync "succeeds") or the n-th write (ENOSPC).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::disk::{Disk, DiskReader, DiskWriter};

/// How a crash treats what was not yet durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Every write and directory change since its sync is lost (LazyFS `clear-cache`).
    DropPending,
    /// A seeded subset of pending writes survives (the disk reordered them).
    KeepSome(u64),
    /// The last pending write of each file is torn at a sector boundary of this size.
    TornSector(usize),
    /// The last pending write of each file is torn inside a sector (after this many bytes).
    TornInside(usize),
    /// Everything written survives, but directory changes not synced are lost.
    LoseDirEntries,
}

#[derive(Clone, Debug, Default)]
struct FileData {
    durable: Vec<u8>,
    live: Vec<u8>,
    pending: Vec<(u64, usize)>,
}

#[derive(Clone, Debug, Default)]
struct SimState {
    files: BTreeMap<u64, FileData>,
    live_dir: BTreeMap<PathBuf, u64>,
    durable_dir: BTreeMap<PathBuf, u64>,
    next_inode: u64,
    syncs: u64,
    writes: u64,
    fail_sync_at: Option<u64>,
    fail_write_at: Option<u64>,
    alignment: usize,
    capture: bool,
    images: Vec<(u64, CrashImage)>,
    durability_points: u64,
    advised: u64,
}

/// What a crash left: the files a reopened store sees.
#[derive(Clone, Debug, Default)]
pub struct CrashImage {
    files: BTreeMap<PathBuf, Vec<u8>>,
}

impl CrashImage {
    /// The files and their contents.
    pub fn files(&self) -> &BTreeMap<PathBuf, Vec<u8>> {
        &self.files
    }
    /// Mutable access, for bit-rot tests.
    pub fn files_mut(&mut self) -> &mut BTreeMap<PathBuf, Vec<u8>> {
        &mut self.files
    }
}

/// The simulated disk. Clones share one state.
#[derive(Clone, Debug)]
pub struct SimDisk(Rc<RefCell<SimState>>);

impl Default for SimDisk {
    fn default() -> Self {
        SimDisk::new(512)
    }
}

fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

impl SimDisk {
    /// An empty disk whose files report this DMA alignment.
    pub fn new(alignment: usize) -> SimDisk {
        SimDisk(Rc::new(RefCell::new(SimState {
            alignment,
            next_inode: 1,
            ..SimState::default()
        })))
    }
    /// A disk holding exactly the files of a crash image, all durable.
    pub fn from_image(image: &CrashImage, alignment: usize) -> SimDisk {
        let disk = SimDisk::new(alignment);
        {
            let mut s = disk.0.borrow_mut();
            for (path, bytes) in &image.files {
                let ino = s.next_inode;
                s.next_inode += 1;
                s.files.insert(
                    ino,
                    FileData {
                        durable: bytes.clone(),
                        live: bytes.clone(),
                        pending: vec![],
                    },
                );
                s.live_dir.insert(path.clone(), ino);
                s.durable_dir.insert(path.clone(), ino);
            }
        }
        disk
    }
    /// Fails the `n`-th `sync` or `sync_dir` call (1-based) with EIO.
    pub fn fail_sync_at(&self, n: u64) {
        self.0.borrow_mut().fail_sync_at = Some(n);
    }
    /// Fails the `n`-th write (1-based) with ENOSPC.
    pub fn fail_write_at(&self, n: u64) {
        self.0.borrow_mut().fail_write_at = Some(n);
    }
    /// Records crash images before and after every durability point from now on.
    pub fn capture_images(&self, on: bool) {
        self.0.borrow_mut().capture = on;
    }
    /// The images captured, each with the number of durability points passed before it.
    pub fn take_images(&self) -> Vec<(u64, CrashImage)> {
        std::mem::take(&mut self.0.borrow_mut().images)
    }
    /// Syncs, directory syncs and renames so far.
    pub fn durability_points(&self) -> u64 {
        self.0.borrow().durability_points
    }
    /// Bytes the store advised it will read ([`DiskReader::will_need_range`],
    /// [`DiskWriter::will_need_written`]).
    pub fn advised_bytes(&self) -> u64 {
        self.0.borrow().advised
    }
    /// What a crash now would leave.
    pub fn crash(&self, mode: CrashMode) -> CrashImage {
        crash_image(&self.0.borrow(), mode)
    }
    /// Flips bits of a file in place, as bit rot after a store opened it would: `xor` is
    /// applied to the byte at `offset`. Panics if the file or the byte does not exist.
    pub fn flip(&self, path: &std::path::Path, offset: usize, xor: u8) {
        let mut s = self.0.borrow_mut();
        let ino = s.live_dir[path];
        let f = s.files.get_mut(&ino).expect("listed file exists");
        f.live[offset] ^= xor;
        if let Some(b) = f.durable.get_mut(offset) {
            *b ^= xor;
        }
    }
    /// Every file as last written (no crash).
    pub fn snapshot(&self) -> CrashImage {
        let s = self.0.borrow();
        let files = s
            .live_dir
            .iter()
            .map(|(p, ino)| (p.clone(), s.files[ino].live.clone()))
            .collect();
        CrashImage { files }
    }
    fn point(&self) {
        let mut s = self.0.borrow_mut();
        s.durability_points += 1;
        if s.capture {
            let n = s.durability_points;
            for mode in [
                CrashMode::DropPending,
                CrashMode::KeepSome(n),
                CrashMode::TornSector(512),
                CrashMode::TornInside(100),
                CrashMode::LoseDirEntries,
            ] {
                let image = crash_image(&s, mode);
                s.images.push((n, image));
            }
        }
    }
}

fn crash_image(s: &SimState, mode: CrashMode) -> CrashImage {
    let dir = match mode {
        CrashMode::DropPending | CrashMode::LoseDirEntries => &s.durable_dir,
        _ => &s.live_dir,
    };
    let mut seed = match mode {
        CrashMode::KeepSome(seed) => seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        _ => 1,
    };
    let mut files = BTreeMap::new();
    for (path, ino) in dir {
        let f = &s.files[ino];
        let content = match mode {
            CrashMode::DropPending => f.durable.clone(),
            CrashMode::LoseDirEntries => f.live.clone(),
            CrashMode::KeepSome(_) => {
                let mut c = f.durable.clone();
                for &(pos, len) in &f.pending {
                    if xorshift(&mut seed) % 2 == 0 {
                        apply(&mut c, pos, &f.live[pos as usize..pos as usize + len]);
                    }
                }
                c
            }
            CrashMode::TornSector(keep) | CrashMode::TornInside(keep) => {
                let mut c = f.durable.clone();
                let n = f.pending.len();
                for (i, &(pos, len)) in f.pending.iter().enumerate() {
                    let part = if i + 1 == n { len.min(keep) } else { len };
                    apply(&mut c, pos, &f.live[pos as usize..pos as usize + part]);
                }
                c
            }
        };
        files.insert(path.clone(), content);
    }
    CrashImage { files }
}

fn apply(content: &mut Vec<u8>, pos: u64, bytes: &[u8]) {
    let end = pos as usize + bytes.len();
    if content.len() < end {
        content.resize(end, 0);
    }
    content[pos as usize..end].copy_from_slice(bytes);
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

/// A file being written on a [`SimDisk`].
pub struct SimWriter {
    disk: SimDisk,
    ino: u64,
}

/// A file read from a [`SimDisk`].
pub struct SimReader {
    disk: SimDisk,
    ino: u64,
    len: u64,
}

impl DiskWriter for SimWriter {
    fn alignment(&self) -> usize {
        self.disk.0.borrow().alignment
    }
    async fn write_at(&mut self, pos: u64, buf: &[u8]) -> io::Result<()> {
        let mut s = self.disk.0.borrow_mut();
        let align = s.alignment;
        assert!(pos as usize % align == 0, "unaligned write at {pos}");
        assert!(buf.len() % align == 0, "unaligned length {}", buf.len());
        s.writes += 1;
        if s.fail_write_at == Some(s.writes) {
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        let f = s.files.get_mut(&self.ino).expect("open file exists");
        apply(&mut f.live, pos, buf);
        f.pending.push((pos, buf.len()));
        Ok(())
    }
    async fn sync(&mut self) -> io::Result<()> {
        self.disk.point();
        let mut s = self.disk.0.borrow_mut();
        s.syncs += 1;
        let fail = s.fail_sync_at == Some(s.syncs);
        let f = s.files.get_mut(&self.ino).expect("open file exists");
        if fail {
            // fsyncgate: the dirty data is dropped and the error is reported once.
            f.live = f.durable.clone();
            f.pending.clear();
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        f.durable = f.live.clone();
        f.pending.clear();
        drop(s);
        self.disk.point();
        Ok(())
    }
    async fn close(self) -> io::Result<()> {
        Ok(())
    }
    fn will_need_written(&self, pos: u64, len: u64) {
        let mut s = self.disk.0.borrow_mut();
        let written = s.files.get(&self.ino).map_or(0, |f| f.live.len() as u64);
        s.advised += pos.saturating_add(len).min(written).saturating_sub(pos);
    }
}

impl DiskReader for SimReader {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<()> {
        let s = self.disk.0.borrow();
        let data = &s
            .files
            .get(&self.ino)
            .ok_or_else(|| io::Error::other("gone"))?
            .live;
        let end = pos as usize + buf.len();
        if end > data.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end",
            ));
        }
        buf.copy_from_slice(&data[pos as usize..end]);
        Ok(())
    }
    fn will_need_range(&self, pos: u64, len: u64) {
        let end = pos.saturating_add(len).min(self.len);
        self.disk.0.borrow_mut().advised += end.saturating_sub(pos);
    }
}

impl Disk for SimDisk {
    type Writer = SimWriter;
    type Reader = SimReader;

    async fn create(&self, path: &Path) -> io::Result<SimWriter> {
        let mut s = self.0.borrow_mut();
        if s.live_dir.contains_key(path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists"));
        }
        let ino = s.next_inode;
        s.next_inode += 1;
        s.files.insert(ino, FileData::default());
        s.live_dir.insert(path.to_path_buf(), ino);
        Ok(SimWriter {
            disk: self.clone(),
            ino,
        })
    }
    fn open(&self, path: &Path) -> io::Result<SimReader> {
        let s = self.0.borrow();
        let ino = *s.live_dir.get(path).ok_or_else(|| not_found(path))?;
        let len = s.files[&ino].live.len() as u64;
        Ok(SimReader {
            disk: self.clone(),
            ino,
            len,
        })
    }
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.point();
        {
            let mut s = self.0.borrow_mut();
            let ino = s.live_dir.remove(from).ok_or_else(|| not_found(from))?;
            s.live_dir.insert(to.to_path_buf(), ino);
        }
        self.point();
        Ok(())
    }
    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.point();
        {
            let mut s = self.0.borrow_mut();
            s.syncs += 1;
            if s.fail_sync_at == Some(s.syncs) {
                return Err(io::Error::from_raw_os_error(5));
            }
            let keep: Vec<(PathBuf, u64)> = s
                .durable_dir
                .iter()
                .filter(|(p, _)| p.parent() != Some(dir))
                .map(|(p, i)| (p.clone(), *i))
                .collect();
            let mut durable: BTreeMap<PathBuf, u64> = keep.into_iter().collect();
            for (p, i) in &s.live_dir {
                if p.parent() == Some(dir) {
                    durable.insert(p.clone(), *i);
                }
            }
            s.durable_dir = durable;
        }
        self.point();
        Ok(())
    }
    async fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.0.borrow_mut();
        s.live_dir.remove(path).ok_or_else(|| not_found(path))?;
        Ok(())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.0.borrow();
        Ok(s.live_dir
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
    async fn prime(&self, _path: &Path) -> io::Result<()> {
        Ok(())
    }
    async fn sync_file(&self, path: &Path) -> io::Result<()> {
        let ino = *self
            .0
            .borrow()
            .live_dir
            .get(path)
            .ok_or_else(|| not_found(path))?;
        let mut w = SimWriter {
            disk: self.clone(),
            ino,
        };
        w.sync().await
    }
    fn write_small(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut s = self.0.borrow_mut();
        let ino = s.next_inode;
        s.next_inode += 1;
        s.files.insert(
            ino,
            FileData {
                durable: bytes.to_vec(),
                live: bytes.to_vec(),
                pending: vec![],
            },
        );
        s.live_dir.insert(path.to_path_buf(), ino);
        s.durable_dir.insert(path.to_path_buf(), ino);
        Ok(())
    }
}
