//! Segments: immutable files of frames sorted by [`SortKey`], written once (by a checkpoint,
//! by eviction, or by compaction) and then only read. A segment in memory ([`SegIndex`]) has
//! a sparse index (the first frame at or after every 4 KiB), a bloom filter over its entries
//! and namespaces, and its per-(state, key group) extents, so that a point lookup reads one
//! block and a key-group subset reads only its own byte ranges.

use std::cell::OnceCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rkyv::util::AlignedVec;
use xxhash_rust::xxh3::xxh3_64;

use crate::codec::ARCHIVE_ALIGN;
use crate::disk::DiskReader;
use crate::error::{Fault, FaultResult};
use crate::frame::{self, Decoded, FrameHead, FrameRef, Kind, SortKey};

/// Bytes between two sparse-index entries.
pub const FENCE_BYTES: u64 = 4096;
/// Fences per entry of a segment's top-level fence index ([`SegIndex::fence_top`]).
pub const FENCE_TOP_STRIDE: usize = 16;
/// Bloom filter bits per entry (about 1% false positives with 7 probes).
const BLOOM_BITS_PER_KEY: u64 = 10;
const BLOOM_PROBES: u64 = 7;
/// How much a sequential scan reads at a time.
pub const SCAN_CHUNK_BYTES: usize = 4 << 20;
/// How far ahead of its reads a sequential scan asks the kernel to read
/// ([`DiskReader::will_need_range`]): eight chunks in flight while one is decoded.
pub const SCAN_AHEAD_BYTES: u64 = 8 * SCAN_CHUNK_BYTES as u64;

/// The name of segment `id` in a store directory.
pub fn segment_name(id: u64) -> String {
    format!("{id:016x}.seg")
}

/// One (state, key group) range of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// State id.
    pub state: u32,
    /// Key group.
    pub kg: u32,
    /// First byte.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
    /// Frames.
    pub entries: u64,
}

/// What the manifest records about a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentMeta {
    /// File id (name).
    pub id: u64,
    /// Precedence: an entry in a segment of higher order is newer.
    pub order: u64,
    /// Bytes of frames (the file is padded to the device alignment after them).
    pub data_len: u64,
    /// Frames.
    pub entries: u64,
    /// Ranges per (state, key group), in file order.
    pub extents: Vec<Extent>,
}

/// A blocked bloom filter over 64-bit hashes: all probes of a key fall into one 512-bit
/// block (one cache line), so an insert or a query costs one cache miss, not seven.
#[derive(Clone, Debug, Default)]
pub struct Bloom {
    bits: Vec<u64>,
}

const BLOCK_WORDS: usize = 8;

impl Bloom {
    /// A filter sized for `n` keys.
    pub fn with_keys(n: u64) -> Bloom {
        let words = (n * BLOOM_BITS_PER_KEY).div_ceil(64).max(1) as usize;
        Bloom {
            bits: vec![0; words.div_ceil(BLOCK_WORDS) * BLOCK_WORDS],
        }
    }
    /// The bit positions of a hash: a block chosen by multiply-high (no division), then
    /// `BLOOM_PROBES` 9-bit offsets inside it.
    fn positions(&self, h: u64) -> impl Iterator<Item = u64> + use<> {
        let blocks = (self.bits.len() / BLOCK_WORDS) as u128;
        let x = h.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let block = ((u128::from(x) * blocks) >> 64) as u64 * (BLOCK_WORDS as u64 * 64);
        let bits = h ^ (h >> 29);
        (0..BLOOM_PROBES).map(move |i| block + ((bits >> (i * 9)) & 511))
    }
    /// Adds a hash.
    pub fn insert(&mut self, h: u64) {
        for p in self.positions(h) {
            self.bits[(p / 64) as usize] |= 1 << (p % 64);
        }
    }
    /// Adds many hashes: the blocks of all of them are prefetched first, so that their cache
    /// misses overlap instead of coming one after another (a recovery scan adds every entry
    /// of a segment; one at a time, each insert waited for its own miss).
    pub fn insert_batch(&mut self, hs: &[u64]) {
        for &h in hs {
            if let Some(b) = self.positions(h).next() {
                prefetch(&self.bits[(b / 64) as usize]);
            }
        }
        for &h in hs {
            self.insert(h);
        }
    }
    /// Whether the hash may have been added.
    pub fn may_contain(&self, h: u64) -> bool {
        self.positions(h)
            .all(|p| self.bits[(p / 64) as usize] & (1 << (p % 64)) != 0)
    }
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bits.len() * 8
    }
}

/// Hints the CPU to bring `x`'s cache line in (a no-op where there is no such hint).
#[inline]
fn prefetch(x: &u64) {
    // SAFETY: SSE is part of the x86_64 baseline, so the instruction exists; a prefetch is
    // only a hint and never faults, and the pointer comes from a live reference anyway.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            std::ptr::from_ref(x).cast(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// Entry hashes a scan collects before adding them to a bloom filter together.
const BLOOM_BATCH: usize = 256;

/// The bloom hash of an entry.
pub fn entry_hash(sort: &SortKey) -> u64 {
    sort.key_hash ^ sort.ns_hash.rotate_left(21) ^ (u64::from(sort.state) << 40)
}

/// The bloom hash of a namespace of a state.
pub fn ns_hash(state: u32, ns_hash: u64) -> u64 {
    xxh3_64(&[ns_hash.to_le_bytes(), u64::from(state).to_le_bytes()].concat())
}

/// Bytes between two restart points of a block ([`SparseIndex`]).
pub const RESTART_BYTES: u64 = 512;
/// Restart points per block: one after every [`RESTART_BYTES`] of its first 4 KiB.
const RESTARTS: usize = (FENCE_BYTES / RESTART_BYTES) as usize - 1;

/// A restart point of a block: the first frame at or after a multiple of [`RESTART_BYTES`]
/// past the block's start, with its place between the block's bounding keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Restart {
    /// Offset from the block's start.
    at: u16,
    /// [`place`] of its key hash between the block's bounding fence keys (0 where the block
    /// spans more than one state, key group or namespace: then no lookup uses it).
    place: u16,
}

/// Where `h` lies between `lo` and `hi` (`lo <= h <= hi`), in 1/65536ths: monotone in `h`,
/// so a restart placed below a key's place holds a smaller key hash, and one placed above
/// it a larger one.
fn place(lo: u64, hi: u64, h: u64) -> u16 {
    let h = h.clamp(lo, hi.max(lo));
    let span = u128::from(hi.max(lo) - lo) + 1;
    ((u128::from(h - lo) << 16) / span) as u16
}

/// The state, key group and namespace of a sort key: keys between two fences of one group
/// are ordered by their key hash alone.
fn group(k: &SortKey) -> (u32, u32, u64) {
    (k.state, k.kg, k.ns_hash)
}

/// A segment's sparse index, in memory only (rebuilt by a scan at open).
///
/// A *fence* is the sort key and offset of the first frame at or after each 4 KiB; a *block*
/// is the bytes from one fence to the next. A block holds [`RESTARTS`] restart points: the
/// first frame at or after every 512 bytes past the block's start, each with the place of
/// its key hash between the block's bounding fence keys. A point lookup in a block of one
/// state, key group and namespace (keys ordered by a uniform hash) reads just the frames
/// between the restarts on either side of its key's place, about 600 bytes, instead of the
/// block up to its key (2.9 KB on average): 60 bytes of index per 4 KiB in all.
#[derive(Debug, Default)]
pub struct SparseIndex {
    /// Sort key and offset of the first frame at or after each 4 KiB.
    pub fences: Vec<(SortKey, u64)>,
    /// [`RESTARTS`] per fence, for the block it starts.
    restarts: Vec<Restart>,
    /// The last frame's sort key: the upper bound of the last block.
    last: SortKey,
    /// Every [`FENCE_TOP_STRIDE`]th fence key, built on the first lookup: a point lookup
    /// searches this small array (cache-resident) and then one stride of `fences`, instead
    /// of a binary search whose every step in a large segment's fences missed the cache.
    top: OnceCell<Vec<SortKey>>,
}

impl SparseIndex {
    /// Bytes held in memory.
    pub fn bytes(&self) -> usize {
        self.fences.len() * std::mem::size_of::<(SortKey, u64)>()
            + self.restarts.len() * std::mem::size_of::<Restart>()
    }
    /// The first fence whose key is at least `lo`.
    fn first_fence_from(&self, lo: &SortKey) -> usize {
        let top = self.top.get_or_init(|| {
            self.fences
                .iter()
                .step_by(FENCE_TOP_STRIDE)
                .map(|f| f.0)
                .collect()
        });
        // top[..t] < lo <= top[t]: the answer is after fence (t - 1) * STRIDE and at most
        // fence t * STRIDE.
        let t = top.partition_point(|k| k < lo);
        let from = if t == 0 {
            0
        } else {
            (t - 1) * FENCE_TOP_STRIDE + 1
        };
        let to = (t * FENCE_TOP_STRIDE).min(self.fences.len());
        // A forward scan, not a binary search: its loads are sequential, so the hardware
        // prefetches the stride's cache lines instead of each step waiting for a miss.
        let stride = &self.fences[from..to];
        from + stride
            .iter()
            .position(|(k, _)| k >= lo)
            .unwrap_or(stride.len())
    }
    /// The fences around `[lo, hi]`: `i`, the first fence at or after `lo`, and `j`, the
    /// first one past `hi` (either may be `fences.len()`).
    fn fence_range(&self, lo: &SortKey, hi: &SortKey) -> (usize, usize) {
        let i = self.first_fence_from(lo);
        // The end fence is the first one past `hi`: for a point lookup (`lo == hi`) that is
        // fence `i` or just after it, found without a second binary search.
        let mut j = i;
        while j < self.fences.len() && self.fences[j].0 <= *hi && j - i < 8 {
            j += 1;
        }
        if j - i == 8 {
            j = i + 8 + self.fences[i + 8..].partition_point(|(k, _)| k <= hi);
        }
        (i, j)
    }
    /// The bytes from the fence before fence `i` to fence `j` (`data_len`: the segment's).
    fn offsets(&self, i: usize, j: usize, data_len: u64) -> (u64, u64) {
        let start = if i == 0 { 0 } else { self.fences[i - 1].1 };
        let end = self.fences.get(j).map_or(data_len, |f| f.1);
        (start, end.max(start))
    }
    /// The restart points of the block that fence `b` starts.
    fn restarts(&self, b: usize) -> &[Restart] {
        self.restarts
            .get(b * RESTARTS..(b + 1) * RESTARTS)
            .unwrap_or(&[])
    }
    /// The part `[from, to)` of the `len` bytes between fences `i - 1` and `j` (from
    /// [`fence_range`](Self::fence_range) for the point `sort`) that holds the entry of
    /// `sort` if the segment has it. Anything it misses, the whole range does: a lookup
    /// that does not find its entry in the part looks again in the whole.
    fn window(&self, i: usize, j: usize, sort: &SortKey, len: usize) -> (usize, usize) {
        if i == 0 {
            return (0, len);
        }
        if j == i + 1 && self.fences[i].0 == *sort {
            // The entry is the first frame of the next block, which starts with it: up to
            // that block's first restart.
            let from = (self.fences[i].1 - self.fences[i - 1].1) as usize;
            let to = self
                .restarts(i)
                .iter()
                .find(|r| r.at > 0)
                .map_or(len, |r| from + usize::from(r.at));
            return (from.min(len), to.min(len));
        }
        if j != i {
            return (0, len);
        }
        let lo = &self.fences[i - 1].0;
        let hi = self.fences.get(i).map_or(&self.last, |f| &f.0);
        if group(lo) != group(sort) || group(hi) != group(sort) {
            return (0, len);
        }
        let p = place(lo.key_hash, hi.key_hash, sort.key_hash);
        let rs = self.restarts(i - 1);
        // Restarts are in file order, so their places do not decrease: the last one placed
        // below the key is at or before its frame, the first placed above it is past it.
        let from = rs
            .iter()
            .rev()
            .find(|r| r.place < p)
            .map_or(0, |r| usize::from(r.at));
        let to = rs
            .iter()
            .find(|r| r.place > p)
            .map_or(len, |r| usize::from(r.at));
        (from.min(len), to.clamp(from.min(len), len))
    }
}

/// Builds a [`SparseIndex`] from a segment's frames in file order (a segment being written,
/// or one scanned at open).
#[derive(Debug, Default)]
pub struct IndexBuilder {
    index: SparseIndex,
    /// Where the next fence goes: the next multiple of [`FENCE_BYTES`].
    next_fence: u64,
    /// The open block's restart points so far: offset from its start and key hash.
    open: Vec<(u16, u64)>,
}

impl IndexBuilder {
    /// Notes the frame at `offset` with sort key `sort` (frames in file order).
    pub fn note(&mut self, sort: SortKey, offset: u64) {
        if offset >= self.next_fence {
            self.close(sort);
            self.index.fences.push((sort, offset));
            self.next_fence = (offset / FENCE_BYTES + 1) * FENCE_BYTES;
        } else if let Some(&(_, start)) = self.index.fences.last() {
            let rel = offset - start;
            while self.open.len() < RESTARTS && rel >= (self.open.len() as u64 + 1) * RESTART_BYTES
            {
                // A frame past what a restart's offset can say leaves the block's later
                // restarts where the earlier ones are (still frame starts).
                let r = match u16::try_from(rel) {
                    Ok(at) => (at, sort.key_hash),
                    Err(_) => self.open.last().copied().unwrap_or((0, 0)),
                };
                self.open.push(r);
            }
        }
        self.index.last = sort;
    }
    /// Ends the open block, whose next fence key (or, for the last block, whose last key)
    /// is `hi`: restarts it did not reach repeat the one before, and each gets its place.
    fn close(&mut self, hi: SortKey) {
        let Some(&(lo, _)) = self.index.fences.last() else {
            return;
        };
        let same = group(&lo) == group(&hi);
        let first = (0, lo.key_hash);
        for k in 0..RESTARTS {
            let (at, h) = self
                .open
                .get(k)
                .or(self.open.last())
                .copied()
                .unwrap_or(first);
            let place = if same {
                place(lo.key_hash, hi.key_hash, h)
            } else {
                0
            };
            self.index.restarts.push(Restart { at, place });
        }
        self.open.clear();
    }
    /// The finished index.
    pub fn finish(mut self) -> SparseIndex {
        let last = self.index.last;
        self.close(last);
        self.index
    }
}

/// Where a segment's bytes are.
pub enum Source<R> {
    /// Only in memory: an evicted batch not yet written.
    Mem(Rc<AlignedVec<ARCHIVE_ALIGN>>),
    /// Being written; still read from memory.
    Writing(Rc<AlignedVec<ARCHIVE_ALIGN>>),
    /// On disk, synced.
    Disk(Rc<R>),
}

/// A live segment: its metadata, index and bytes.
pub struct SegIndex<R> {
    /// What the manifest records.
    pub meta: SegmentMeta,
    /// The file.
    pub path: PathBuf,
    /// Fences and restart points.
    pub index: SparseIndex,
    /// Entries and namespaces.
    pub bloom: Bloom,
    /// Where the bytes are.
    pub source: Source<R>,
    /// Its data is durable (`fdatasync`ed). Evicted entries are written without a sync; the
    /// next checkpoint syncs them before its manifest names them.
    pub synced: bool,
}

impl<R: DiskReader> SegIndex<R> {
    /// The `len` bytes at `pos`: borrowed from memory for a segment not yet on disk, else
    /// read with one `pread` into `buf`, which only grows (no zeroing or copying per read).
    pub fn read_block<'a>(
        &'a self,
        pos: u64,
        len: usize,
        buf: &'a mut AlignedVec<ARCHIVE_ALIGN>,
    ) -> FaultResult<&'a [u8]> {
        match &self.source {
            Source::Mem(b) | Source::Writing(b) => b
                .get(pos as usize..pos as usize + len)
                .ok_or_else(|| Fault::corrupt(&self.path, pos, "read past the segment's end")),
            Source::Disk(r) => {
                if buf.len() < len {
                    buf.resize(len, 0);
                }
                let out = &mut buf.as_mut_slice()[..len];
                r.read_exact_at(pos, out)
                    .map_err(|e| Fault::io("read segment", &self.path, e))?;
                Ok(out)
            }
        }
    }
    /// The byte range that holds every frame with sort keys in `[lo, hi]`.
    pub fn range_of(&self, lo: &SortKey, hi: &SortKey) -> (u64, u64) {
        let (i, j) = self.index.fence_range(lo, hi);
        self.index.offsets(i, j, self.meta.data_len)
    }
    /// The entry (`sort`, `ns`, `key`) if this segment has it, read as [`find_frame`] reads a
    /// block, but in two steps. First the part of its block between the restart points
    /// around its key's place ([`SparseIndex`]), about 600 bytes: its frames are stepped
    /// over by length and sort key, and the entry's frame, if there, is checked in full and
    /// returned. Otherwise (the entry absent, or anything in the part that is not a good
    /// frame) the whole block is read and walked with every frame checked. A segment on
    /// disk is read with `pread` into `buf` (which only grows).
    pub fn find(
        &self,
        sort: &SortKey,
        ns: &[u8],
        key: &[u8],
        buf: &mut AlignedVec<ARCHIVE_ALIGN>,
    ) -> FaultResult<Option<Entry>> {
        let (i, j) = self.index.fence_range(sort, sort);
        let (start, end) = self.index.offsets(i, j, self.meta.data_len);
        if start >= end {
            return Ok(None);
        }
        let len = (end - start) as usize;
        let (path, id) = (&self.path, self.meta.id);
        let (from, to) = self.index.window(i, j, sort, len);
        if (from, to) != (0, len) && from < to {
            let at = start + from as u64;
            let part = self.read_block(at, to - from, buf)?;
            if let Quick::Hit(k) = quick_find(part, sort, ns, key) {
                if let Ok(fr) = frame_at(path, id, &part[k..], at + k as u64) {
                    return Ok(Some(Entry::of(fr)));
                }
            }
        }
        let block = self.read_block(start, len, buf)?;
        Ok(find_frame(path, id, start, block, sort, ns, key)?.map(Entry::of))
    }
    /// Whether an entry may be here.
    pub fn may_contain(&self, sort: &SortKey) -> bool {
        self.bloom.may_contain(entry_hash(sort))
    }
    /// Calls `f` for every frame in `[start, end)` (frame boundaries) in file order, each
    /// frame checked (crc, layout, place), reading a file sequentially in chunks of
    /// [`SCAN_CHUNK_BYTES`] through `buf` (a table restore: never the whole range at once,
    /// which for a state of one key group was a buffer the size of the segment), with the
    /// `ahead` bytes past what it reads advised to the kernel.
    pub fn scan(
        &self,
        start: u64,
        end: u64,
        ahead: u64,
        buf: &mut AlignedVec<ARCHIVE_ALIGN>,
        mut f: impl FnMut(&FrameRef<'_>) -> FaultResult<bool>,
    ) -> FaultResult<()> {
        match &self.source {
            Source::Mem(b) | Source::Writing(b) => {
                if end as usize > b.len() || start > end {
                    return Err(Fault::corrupt(
                        &self.path,
                        start,
                        "read past the segment's end",
                    ));
                }
                let bytes = &b[start as usize..end as usize];
                for_each_frame(&self.path, self.meta.id, start, bytes, |fr| f(&fr))
            }
            Source::Disk(r) => {
                let id = self.meta.id;
                scan_range_ahead(&self.path, id, &**r, (start, end), ahead, buf, f)
            }
        }
    }
}

/// The frame at the start of `buf`, found at segment offset `offset`: a missing or torn frame,
/// or one whose header names another place, is corruption naming the file and offset.
fn frame_at<'a>(
    path: &Path,
    segment_id: u64,
    buf: &'a [u8],
    offset: u64,
) -> FaultResult<FrameRef<'a>> {
    let fr = match frame::decode(buf) {
        Ok(Decoded::Frame(fr)) => fr,
        Ok(Decoded::End) => {
            return Err(Fault::corrupt(
                path,
                offset,
                "zero bytes where a frame belongs",
            ));
        }
        Err(reason) => return Err(Fault::corrupt(path, offset, reason)),
    };
    check_place(path, &fr.head, segment_id, offset)?;
    Ok(fr)
}

/// Calls `f` for every frame in `buf` (which starts at segment offset `base` and ends at a
/// frame boundary), checking each frame's own header against where it was found.
pub fn for_each_frame<'a>(
    path: &Path,
    segment_id: u64,
    base: u64,
    buf: &'a [u8],
    mut f: impl FnMut(FrameRef<'a>) -> FaultResult<bool>,
) -> FaultResult<()> {
    let mut at = 0usize;
    while at < buf.len() {
        let fr = frame_at(path, segment_id, &buf[at..], base + at as u64)?;
        at += fr.len;
        if !f(fr)? {
            break;
        }
    }
    Ok(())
}

/// An entry found by a point lookup: its kind, expiry and value (copied out of the read
/// buffer).
pub struct Entry {
    /// Put or tombstone.
    pub kind: Kind,
    /// Expiry time in ms (0: never).
    pub expires_ms: u64,
    /// The value archive.
    pub value: AlignedVec<ARCHIVE_ALIGN>,
}

impl Entry {
    fn of(fr: FrameRef<'_>) -> Entry {
        let mut value = AlignedVec::with_capacity(fr.value.len());
        value.extend_from_slice(fr.value);
        Entry {
            kind: fr.head.kind,
            expires_ms: fr.head.expires_ms,
            value,
        }
    }
}

/// Where the quick walk of a point lookup ended.
enum Quick {
    /// At a frame whose header names the entry (not yet checked).
    Hit(usize),
    /// At the end of the bytes read, or at something that is not a whole frame.
    Short,
    /// At a frame past the entry's place.
    Past,
}

/// The quick walk of a point lookup over `bytes` (which start at a frame): frames are
/// stepped over by their length and sort key, unchecked.
fn quick_find(bytes: &[u8], sort: &SortKey, ns: &[u8], key: &[u8]) -> Quick {
    let mut at = 0usize;
    loop {
        let Some((len, s)) = frame::peek(&bytes[at..]) else {
            return Quick::Short;
        };
        if s > *sort {
            return Quick::Past;
        }
        if s == *sort && frame::names(&bytes[at..at + len], ns, key) {
            return Quick::Hit(at);
        }
        at += len;
    }
}

/// The frame of the entry (`sort`, `ns`, `key`) in `block` (which starts at segment offset
/// `base` at a frame boundary and ends at one), if it is there.
///
/// The frames before it are stepped over by their length and sort key alone; the frame
/// returned is checked in full (crc, layout, place), so a damaged frame is never returned.
/// When that quick walk does not end at a good frame of the entry (the entry is not there,
/// or a frame on the way does not look like one, or the one found fails its check), the
/// block is walked again with every frame checked, as a scan does: a damaged length that
/// made the quick walk skip the entry, or the damaged entry itself, is then a corruption
/// error naming the file and the offset of the first bad frame, and an absent entry is
/// absent only once every frame before its place has passed its check.
pub fn find_frame<'a>(
    path: &Path,
    segment_id: u64,
    base: u64,
    block: &'a [u8],
    sort: &SortKey,
    ns: &[u8],
    key: &[u8],
) -> FaultResult<Option<FrameRef<'a>>> {
    if let Quick::Hit(at) = quick_find(block, sort, ns, key) {
        if let Ok(fr) = frame_at(path, segment_id, &block[at..], base + at as u64) {
            return Ok(Some(fr));
        }
    }
    check_find(path, segment_id, base, block, sort, ns, key)
}

/// The slow path of [`find_frame`]: every frame of `block` up to the entry's place checked.
fn check_find<'a>(
    path: &Path,
    segment_id: u64,
    base: u64,
    block: &'a [u8],
    sort: &SortKey,
    ns: &[u8],
    key: &[u8],
) -> FaultResult<Option<FrameRef<'a>>> {
    let mut hit = None;
    for_each_frame(path, segment_id, base, block, |fr| {
        if fr.head.sort > *sort {
            return Ok(false);
        }
        if fr.head.sort == *sort && fr.ns == ns && fr.key == key {
            hit = Some(fr);
            return Ok(false);
        }
        Ok(true)
    })?;
    Ok(hit)
}

/// A frame must say it is where it was found (misdirected writes, RELIABILITY R6b).
pub fn check_place(path: &Path, h: &FrameHead, segment_id: u64, offset: u64) -> FaultResult<()> {
    if h.segment_id != segment_id || h.offset != offset {
        return Err(Fault::corrupt(
            path,
            offset,
            format!(
                "frame belongs to segment {:x} offset {} (misdirected write)",
                h.segment_id, h.offset
            ),
        ));
    }
    Ok(())
}

/// Serialized entries waiting to be sorted into a segment.
#[derive(Default)]
pub struct EntryBatch {
    bytes: Vec<u8>,
    items: Vec<Item>,
}

#[derive(Clone, Copy)]
struct Item {
    sort: SortKey,
    kind: Kind,
    expires_ms: u64,
    checkpoint_id: u64,
    at: usize,
    ns: u32,
    key: u32,
    value: u32,
}

impl EntryBatch {
    /// Adds an entry (later pushes of the same entry replace earlier ones).
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        sort: SortKey,
        kind: Kind,
        expires_ms: u64,
        checkpoint_id: u64,
        ns: &[u8],
        key: &[u8],
        value: &[u8],
    ) {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(ns);
        self.bytes.extend_from_slice(key);
        self.bytes.extend_from_slice(value);
        self.items.push(Item {
            sort,
            kind,
            expires_ms,
            checkpoint_id,
            at,
            ns: ns.len() as u32,
            key: key.len() as u32,
            value: value.len() as u32,
        });
    }
    /// Entries held.
    pub fn len(&self) -> usize {
        self.items.len()
    }
    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes.len() + self.items.len() * std::mem::size_of::<Item>()
    }
    /// Moves all of `other`'s entries in after this batch's.
    pub fn append(&mut self, other: &mut EntryBatch) {
        let base = self.bytes.len();
        self.bytes.append(&mut other.bytes);
        self.items.extend(other.items.drain(..).map(|i| Item {
            at: i.at + base,
            ..i
        }));
    }
    fn parts(&self, i: &Item) -> (&[u8], &[u8], &[u8]) {
        let (n, k, v) = (i.ns as usize, i.key as usize, i.value as usize);
        let b = &self.bytes[i.at..i.at + n + k + v];
        (&b[..n], &b[n..n + k], &b[n + k..])
    }
    /// Sorts by segment order, keeping only the last push of each entry.
    fn sort_dedup(&mut self) {
        let mut idx: Vec<(usize, Item)> = self.items.drain(..).enumerate().collect();
        let bytes = &self.bytes;
        let key = |i: &Item| {
            let (n, k) = (i.ns as usize, i.key as usize);
            (&bytes[i.at..i.at + n], &bytes[i.at + n..i.at + n + k])
        };
        idx.sort_by(|(ia, a), (ib, b)| {
            a.sort
                .cmp(&b.sort)
                .then_with(|| key(a).cmp(&key(b)))
                .then(ib.cmp(ia))
        });
        idx.dedup_by(|(_, later), (_, kept)| later.sort == kept.sort && key(later) == key(kept));
        self.items = idx.into_iter().map(|(_, i)| i).collect();
    }
}

/// Builds a segment image in memory, frame by frame, in sort order.
pub struct SegmentBuilder {
    base: u64,
    id: u64,
    order: u64,
    buf: AlignedVec<ARCHIVE_ALIGN>,
    scratch: Vec<u8>,
    index: IndexBuilder,
    bloom: Bloom,
    extents: Vec<Extent>,
    entries: u64,
    last: Option<SortKey>,
    last_ns: Option<(u32, u64)>,
}

impl SegmentBuilder {
    /// A builder for segment `id` with precedence `order`, sized for about `entries` frames.
    pub fn new(id: u64, order: u64, entries: u64) -> SegmentBuilder {
        SegmentBuilder {
            base: 0,
            id,
            order,
            buf: AlignedVec::new(),
            scratch: Vec::new(),
            index: IndexBuilder::default(),
            bloom: Bloom::with_keys(entries.max(16)),
            extents: Vec::new(),
            entries: 0,
            last: None,
            last_ns: None,
        }
    }
    /// Appends a frame (entries must come in sort order).
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        sort: SortKey,
        kind: Kind,
        expires_ms: u64,
        checkpoint_id: u64,
        ns: &[u8],
        key: &[u8],
        value: &[u8],
    ) {
        let offset = self.base + self.buf.len() as u64;
        let head = FrameHead {
            segment_id: self.id,
            offset,
            checkpoint_id,
            sort,
            expires_ms,
            kind,
        };
        self.scratch.clear();
        frame::encode(&mut self.scratch, &head, ns, key, value);
        self.note(sort, offset, self.scratch.len() as u64);
        self.buf.extend_from_slice(&self.scratch);
    }
    /// Appends an already encoded frame, rewriting its segment id and offset.
    pub fn push_frame(&mut self, fr: &FrameRef<'_>, raw: &[u8]) {
        let offset = self.base + self.buf.len() as u64;
        self.scratch.clear();
        self.scratch.extend_from_slice(raw);
        frame::relocate(&mut self.scratch, self.id, offset);
        self.note(fr.head.sort, offset, raw.len() as u64);
        self.buf.extend_from_slice(&self.scratch);
    }
    fn note(&mut self, sort: SortKey, offset: u64, len: u64) {
        debug_assert!(self.last.is_none_or(|l| l <= sort), "frames out of order");
        self.last = Some(sort);
        self.index.note(sort, offset);
        let new_ns = self
            .last_ns
            .is_none_or(|(st, h)| st != sort.state || h != sort.ns_hash);
        if new_ns {
            self.bloom.insert(ns_hash(sort.state, sort.ns_hash));
            self.last_ns = Some((sort.state, sort.ns_hash));
        }
        self.bloom.insert(entry_hash(&sort));
        match self.extents.last_mut() {
            Some(e) if e.state == sort.state && e.kg == sort.kg => {
                e.len += len;
                e.entries += 1;
            }
            _ => self.extents.push(Extent {
                state: sort.state,
                kg: sort.kg,
                offset,
                len,
                entries: 1,
            }),
        }
        self.entries += 1;
    }
    /// Adds a sorted batch.
    pub fn push_batch(&mut self, mut batch: EntryBatch) {
        batch.sort_dedup();
        for i in &batch.items {
            let (ns, key, value) = batch.parts(i);
            self.push(
                i.sort,
                i.kind,
                i.expires_ms,
                i.checkpoint_id,
                ns,
                key,
                value,
            );
        }
    }
    /// Frames so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }
    /// Bytes so far.
    pub fn len(&self) -> u64 {
        self.base + self.buf.len() as u64
    }
    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bytes buffered and not yet drained.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
    /// Removes and returns the longest prefix of the buffered bytes that is a multiple of
    /// `alignment`, for streaming a large segment to disk while it is built.
    pub fn drain_aligned(&mut self, alignment: usize) -> Vec<u8> {
        let n = self.buf.len() / alignment * alignment;
        let head = self.buf[..n].to_vec();
        let rest = self.buf[n..].to_vec();
        self.buf.clear();
        self.buf.extend_from_slice(&rest);
        self.base += n as u64;
        head
    }
    /// Removes the rest of the buffered bytes, padded with zeros to `alignment`.
    pub fn drain_padded(&mut self, alignment: usize) -> Vec<u8> {
        let mut out = self.buf.to_vec();
        self.base += out.len() as u64;
        self.buf.clear();
        out.resize(out.len().div_ceil(alignment) * alignment, 0);
        out
    }
    /// The finished segment, its bytes in memory (only the bytes not drained).
    pub fn finish<R>(self, dir: &Path) -> SegIndex<R> {
        let meta = SegmentMeta {
            id: self.id,
            order: self.order,
            data_len: self.base + self.buf.len() as u64,
            entries: self.entries,
            extents: self.extents,
        };
        SegIndex {
            path: dir.join(segment_name(self.id)),
            meta,
            index: self.index.finish(),
            bloom: self.bloom,
            source: Source::Mem(Rc::new(self.buf)),
            synced: false,
        }
    }
}

/// Rebuilds a segment's sparse index and bloom filter from its bytes while validating every
/// frame (recovery): sequential reads of [`SCAN_CHUNK_BYTES`].
pub fn scan_segment<R: DiskReader>(
    meta: &SegmentMeta,
    path: &Path,
    reader: &R,
    checkpoint_max: u64,
) -> FaultResult<(SparseIndex, Bloom)> {
    let mut index = IndexBuilder::default();
    let mut bloom = Bloom::with_keys(meta.entries.max(16));
    let mut last_ns: Option<(u32, u64)> = None;
    let mut last: Option<(SortKey, u64)> = None;
    let mut entries = 0u64;
    let mut ext = meta.extents.iter().peekable();
    let mut ext_left = 0u64;
    let mut cur_ext: Option<Extent> = None;
    let mut hashes: Vec<u64> = Vec::with_capacity(BLOOM_BATCH);
    let mut buf = AlignedVec::new();
    scan_range(path, meta.id, reader, 0, meta.data_len, &mut buf, |fr| {
        let offset = fr.head.offset;
        if fr.head.checkpoint_id > checkpoint_max {
            return Err(Fault::corrupt(
                path,
                offset,
                format!(
                    "frame of checkpoint {} after checkpoint {checkpoint_max}",
                    fr.head.checkpoint_id
                ),
            ));
        }
        let sort = fr.head.sort;
        if let Some((l, at)) = last {
            if l > sort {
                return Err(Fault::corrupt(
                    path,
                    offset,
                    format!("out of order after {at}"),
                ));
            }
        }
        if ext_left == 0 {
            cur_ext = ext.next().copied();
            ext_left = cur_ext.map_or(0, |e| e.entries);
        }
        match cur_ext {
            Some(e) if e.state == sort.state && e.kg == sort.kg => ext_left -= 1,
            _ => {
                return Err(Fault::corrupt(
                    path,
                    offset,
                    "frame outside the manifest's extents",
                ));
            }
        }
        last = Some((sort, offset));
        index.note(sort, offset);
        hashes.push(entry_hash(&sort));
        if hashes.len() == BLOOM_BATCH {
            bloom.insert_batch(&hashes);
            hashes.clear();
        }
        if last_ns.is_none_or(|(st, h)| st != sort.state || h != sort.ns_hash) {
            bloom.insert(ns_hash(sort.state, sort.ns_hash));
            last_ns = Some((sort.state, sort.ns_hash));
        }
        entries += 1;
        Ok(true)
    })?;
    bloom.insert_batch(&hashes);
    if entries != meta.entries {
        return Err(Fault::corrupt(
            path,
            meta.data_len,
            format!("{entries} frames, the manifest says {}", meta.entries),
        ));
    }
    Ok((index.finish(), bloom))
}

/// Reads `[start, end)` of a segment file sequentially through `buf` (kept between calls,
/// grown only for a frame larger than it), calling `f` for each frame (checked: crc, layout,
/// place); `f` returns false to stop.
pub fn scan_range<R: DiskReader>(
    path: &Path,
    segment_id: u64,
    reader: &R,
    start: u64,
    end: u64,
    buf: &mut AlignedVec<ARCHIVE_ALIGN>,
    f: impl FnMut(&FrameRef<'_>) -> FaultResult<bool>,
) -> FaultResult<()> {
    let range = (start, end);
    scan_range_ahead(path, segment_id, reader, range, SCAN_AHEAD_BYTES, buf, f)
}

/// [`scan_range`] of `(start, end)` advising `ahead` bytes past each read instead of
/// [`SCAN_AHEAD_BYTES`] (a background load's short steps: advising 32 MiB for each of them
/// walked the page cache for far more than the step read).
pub fn scan_range_ahead<R: DiskReader>(
    path: &Path,
    segment_id: u64,
    reader: &R,
    (start, end): (u64, u64),
    ahead: u64,
    buf: &mut AlignedVec<ARCHIVE_ALIGN>,
    mut f: impl FnMut(&FrameRef<'_>) -> FaultResult<bool>,
) -> FaultResult<()> {
    if buf.len() < SCAN_CHUNK_BYTES {
        buf.resize(SCAN_CHUNK_BYTES, 0);
    }
    // `buf[..filled]` holds the bytes at segment offsets `pos..`: the start of a frame.
    let mut pos = start;
    let mut filled = 0usize;
    // `[start, advised)` has been advised: the kernel reads it in the background while the
    // frames before it are checked (cold, a restore's reads wait on the disk otherwise).
    let mut advised = start;
    while pos + (filled as u64) < end {
        if filled == buf.len() {
            // One frame fills the buffer (frames are at most FRAME_BYTES_MAX).
            let grown = (2 * buf.len()).min(frame::FRAME_BYTES_MAX.max(filled + 1));
            buf.resize(grown, 0);
        }
        let want = ((buf.len() - filled) as u64).min(end - pos - filled as u64) as usize;
        let until = (pos + (filled + want) as u64 + ahead).min(end);
        if until > advised {
            reader.will_need_range(advised, until - advised);
            advised = until;
        }
        reader
            .read_exact_at(
                pos + filled as u64,
                &mut buf.as_mut_slice()[filled..filled + want],
            )
            .map_err(|e| Fault::io("read segment", path, e))?;
        filled += want;
        let mut at = 0usize;
        while at < filled {
            let offset = pos + at as u64;
            if needs_more(&buf[at..filled], offset, end) {
                break; // the frame continues in the next chunk
            }
            let fr = frame_at(path, segment_id, &buf[at..filled], offset)?;
            at += fr.len;
            if !f(&fr)? {
                return Ok(());
            }
        }
        if at == 0 && filled >= frame::FRAME_BYTES_MAX {
            return Err(Fault::corrupt(path, pos, "frame larger than the maximum"));
        }
        // Keep the partial frame at the end for the next read.
        buf.as_mut_slice().copy_within(at..filled, 0);
        pos += at as u64;
        filled -= at;
    }
    if filled != 0 {
        return Err(Fault::corrupt(
            path,
            pos,
            "torn frame at the end of the data",
        ));
    }
    Ok(())
}

/// Whether the frame at the start of `rem` (at segment offset `offset`) continues past the
/// bytes read so far but ends within the data.
fn needs_more(rem: &[u8], offset: u64, end: u64) -> bool {
    if rem.len() < 4 {
        return offset + (rem.len() as u64) < end;
    }
    let len = u32::from_le_bytes([rem[0], rem[1], rem[2], rem[3]]) as usize;
    len > rem.len() && len <= frame::FRAME_BYTES_MAX && offset + len as u64 <= end
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `range_of` against the two binary searches it replaces, with runs of equal fence keys
    /// shorter and longer than its forward scan, and over several strides of the top-level
    /// fence index (a long run of equal keys across two stride boundaries, keys absent
    /// between fences, before the first and after the last).
    #[test]
    fn range_of_matches_two_binary_searches() {
        let key = |h: u64| SortKey {
            state: 1,
            kg: 0,
            ns_hash: 0,
            key_hash: h,
        };
        let mut hashes = vec![1u64, 2, 2, 3, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 7, 9];
        hashes.extend((10..60).map(|i| i / 2 * 2));
        hashes.extend(std::iter::repeat_n(100, 2 * FENCE_TOP_STRIDE));
        hashes.extend((102..400).map(|i| i / 3 * 3));
        assert!(hashes.is_sorted());
        let data_len = hashes.len() as u64 * 4096 + 100;
        let seg: SegIndex<crate::sim::SimReader> = SegIndex {
            meta: SegmentMeta {
                id: 1,
                order: 1,
                data_len,
                entries: 0,
                extents: vec![],
            },
            path: PathBuf::from("/x"),
            index: SparseIndex {
                fences: hashes
                    .iter()
                    .enumerate()
                    .map(|(i, &h)| (key(h), i as u64 * 4096))
                    .collect(),
                ..SparseIndex::default()
            },
            bloom: Bloom::with_keys(1),
            source: Source::Mem(Rc::new(AlignedVec::new())),
            synced: true,
        };
        for lo in 0..402 {
            for hi in (lo..402).step_by(1 + (lo as usize % 7)) {
                let (lo, hi) = (key(lo), key(hi));
                let fences = &seg.index.fences;
                let i = fences.partition_point(|(k, _)| *k < lo);
                let j = fences.partition_point(|(k, _)| *k <= hi);
                let start = if i == 0 { 0 } else { fences[i - 1].1 };
                let end = fences.get(j).map_or(data_len, |f| f.1);
                assert_eq!(seg.range_of(&lo, &hi), (start, end.max(start)));
            }
        }
    }

    /// A file in memory, for `scan_range`.
    struct VecReader(Vec<u8>);

    impl DiskReader for VecReader {
        fn len(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_exact_at(&self, pos: u64, buf: &mut [u8]) -> std::io::Result<()> {
            let pos = pos as usize;
            match self.0.get(pos..pos + buf.len()) {
                Some(b) => {
                    buf.copy_from_slice(b);
                    Ok(())
                }
                None => Err(std::io::ErrorKind::UnexpectedEof.into()),
            }
        }
    }

    /// `scan_range` reads a chunk at a time through one buffer: frames that straddle two
    /// chunks, and frames larger than a chunk (the buffer grows), come out once each and in
    /// order, from any frame boundary to any other; a flipped byte is corruption at its
    /// frame's offset, and a range that ends inside a frame is a torn frame.
    #[test]
    fn scan_range_carries_frames_across_chunks_and_grows_for_large_ones() {
        let sizes = [
            10,
            SCAN_CHUNK_BYTES - 200,
            3000,
            2 * SCAN_CHUNK_BYTES + 5,
            64,
            0,
            SCAN_CHUNK_BYTES / 3,
            100,
        ];
        let mut b = SegmentBuilder::new(7, 1, 16);
        for (i, &n) in sizes.iter().enumerate() {
            let sort = SortKey {
                state: 1,
                kg: 0,
                ns_hash: 0,
                key_hash: i as u64,
            };
            let value = vec![i as u8; n];
            b.push(
                sort,
                Kind::Put,
                0,
                1,
                b"",
                &(i as u64).to_le_bytes(),
                &value,
            );
        }
        let seg: SegIndex<VecReader> = b.finish(Path::new("/s"));
        let Source::Mem(bytes) = &seg.source else {
            unreachable!("a built segment is in memory")
        };
        let mut offsets = Vec::new();
        for_each_frame(&seg.path, 7, 0, bytes, |fr| {
            offsets.push(fr.head.offset);
            Ok(true)
        })
        .unwrap();
        let end = seg.meta.data_len;
        let reader = VecReader(bytes.to_vec());
        let mut buf = AlignedVec::new();
        let bounds: Vec<u64> = offsets.iter().copied().chain([end]).collect();
        for (i, &from) in bounds.iter().enumerate() {
            for (j, &to) in bounds.iter().enumerate().skip(i) {
                let mut seen = Vec::new();
                scan_range(&seg.path, 7, &reader, from, to, &mut buf, |fr| {
                    let k = fr.head.sort.key_hash as usize;
                    assert_eq!(fr.value, &vec![k as u8; sizes[k]][..]);
                    seen.push(fr.head.offset);
                    Ok(true)
                })
                .unwrap();
                assert_eq!(seen, offsets[i..j], "range {from}..{to}");
            }
        }
        for k in [1, 3, 6] {
            let mut bad = bytes.to_vec();
            bad[offsets[k] as usize + 100 + sizes[k] / 2] ^= 4;
            let err = scan_range(&seg.path, 7, &VecReader(bad), 0, end, &mut buf, |_| {
                Ok(true)
            })
            .unwrap_err()
            .to_string();
            assert!(err.contains(&format!("offset {}:", offsets[k])), "{err}");
            assert!(err.contains("crc mismatch"), "{err}");
        }
        let torn = offsets[3] + 50;
        let err = scan_range(&seg.path, 7, &reader, 0, torn, &mut buf, |_| Ok(true))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("offset {}:", offsets[3])), "{err}");
    }

    /// A block of 40 frames: every second key hash is present, with ties (two keys of one
    /// hash) in between.
    fn find_block() -> (Vec<u8>, Vec<(SortKey, Vec<u8>)>) {
        let mut b = SegmentBuilder::new(9, 1, 40);
        let mut entries = Vec::new();
        for i in 0..40u64 {
            let sort = SortKey {
                state: 1,
                kg: 0,
                ns_hash: 0,
                key_hash: 2 * (i / 2 * 2) + 2,
            };
            let key = i.to_le_bytes().to_vec();
            b.push(sort, Kind::Put, 0, 1, b"", &key, &[i as u8; 40]);
            entries.push((sort, key));
        }
        let seg: SegIndex<VecReader> = b.finish(Path::new("/f"));
        let Source::Mem(bytes) = &seg.source else {
            unreachable!("a built segment is in memory")
        };
        (bytes.to_vec(), entries)
    }

    fn find(block: &[u8], sort: &SortKey, key: &[u8]) -> Result<Option<u8>, String> {
        find_frame(Path::new("/f"), 9, 0, block, sort, b"", key)
            .map(|hit| hit.map(|fr| fr.value[0]))
            .map_err(|e| e.to_string())
    }

    /// A point lookup steps over the frames before the one it wants without checking them,
    /// and checks the one it returns: every entry of a clean block is found and absent ones
    /// are absent; a damaged value of a frame before the wanted one does not keep the
    /// wanted one from being read, but the damaged entry itself is a crc error naming its
    /// offset; a damaged length or sort key on the way is an error at that frame, never a
    /// wrong or missing entry.
    #[test]
    fn find_frame_checks_the_frame_it_returns_and_never_returns_a_wrong_entry() {
        let (block, entries) = find_block();
        let mut offsets = Vec::new();
        for_each_frame(Path::new("/f"), 9, 0, &block, |fr| {
            offsets.push(fr.head.offset);
            Ok(true)
        })
        .unwrap();
        for (i, (sort, key)) in entries.iter().enumerate() {
            assert_eq!(find(&block, sort, key), Ok(Some(i as u8)), "entry {i}");
            let other = 99u64.to_le_bytes();
            assert_eq!(find(&block, sort, &other), Ok(None), "entry {i}, other key");
            let gap = SortKey {
                key_hash: sort.key_hash + 1,
                ..*sort
            };
            assert_eq!(find(&block, &gap, key), Ok(None), "after entry {i}");
        }
        let m = 17;
        let at = offsets[m] as usize;
        let crc_error = |r: Result<Option<u8>, String>| {
            let e = r.expect_err("an error");
            assert!(e.contains(&format!("offset {at}:")), "{e}");
        };
        // A damaged value.
        let mut bad = block.clone();
        bad[at + frame::HEADER_BYTES + 16 + 3] ^= 0x10;
        for (i, (sort, key)) in entries.iter().enumerate() {
            match i.cmp(&m) {
                std::cmp::Ordering::Equal => crc_error(find(&bad, sort, key)),
                _ => assert_eq!(find(&bad, sort, key), Ok(Some(i as u8)), "entry {i}"),
            }
        }
        // An absent entry after the damaged frame is absent only once that frame passed.
        let (last, _) = entries[entries.len() - 1];
        let past = SortKey {
            key_hash: last.key_hash + 1,
            ..last
        };
        crc_error(find(&bad, &past, b"x"));
        // A damaged length or sort key: never a wrong or missing entry after it.
        for (byte, flip) in [(0, 0x10), (0, 0x01), (1, 0x01), (48, 0x01), (55, 0x80)] {
            let mut bad = block.clone();
            bad[at + byte] ^= flip;
            for (i, (sort, key)) in entries.iter().enumerate().skip(m) {
                match find(&bad, sort, key) {
                    Ok(v) => assert!(i != m && v == Some(i as u8), "byte {byte}, entry {i}"),
                    Err(e) => assert!(e.contains(&format!("offset {at}:")), "{e}"),
                }
            }
        }
    }

    /// A file in memory that logs the reads and the advice it gets.
    struct AdvisedReader(Vec<u8>, std::cell::RefCell<Vec<(bool, u64, u64)>>);

    impl DiskReader for AdvisedReader {
        fn len(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_exact_at(&self, pos: u64, buf: &mut [u8]) -> std::io::Result<()> {
            self.1.borrow_mut().push((false, pos, buf.len() as u64));
            let pos = pos as usize;
            buf.copy_from_slice(&self.0[pos..pos + buf.len()]);
            Ok(())
        }
        fn will_need_range(&self, pos: u64, len: u64) {
            self.1.borrow_mut().push((true, pos, len));
        }
    }

    /// A scan advises the bytes ahead of its reads, each once, in order and within its
    /// range, so the disk reads them while it checks the frames before them: every read
    /// was advised before it, and advice runs at most [`SCAN_AHEAD_BYTES`] past the end of
    /// the latest read.
    #[test]
    fn scan_range_advises_the_bytes_ahead_of_its_reads() {
        let mut b = SegmentBuilder::new(9, 1, 64);
        for i in 0..60u64 {
            let sort = SortKey {
                state: 1,
                kg: 0,
                ns_hash: 0,
                key_hash: i,
            };
            let value = vec![i as u8; 1 << 20];
            b.push(sort, Kind::Put, 0, 1, b"", &i.to_le_bytes(), &value);
        }
        let seg: SegIndex<VecReader> = b.finish(Path::new("/a"));
        let Source::Mem(bytes) = &seg.source else {
            unreachable!("a built segment is in memory")
        };
        let mut offsets = Vec::new();
        for_each_frame(&seg.path, 9, 0, bytes, |fr| {
            offsets.push(fr.head.offset);
            Ok(true)
        })
        .unwrap();
        let mut buf = AlignedVec::new();
        for (from, to) in [
            (0, seg.meta.data_len),
            (offsets[3], offsets[50]),
            (0, offsets[1]),
        ] {
            let reader = AdvisedReader(bytes.to_vec(), Default::default());
            let mut n = 0;
            scan_range(&seg.path, 9, &reader, from, to, &mut buf, |_| {
                n += 1;
                Ok(true)
            })
            .unwrap();
            assert!(n > 0);
            let (mut advised, mut read_end) = (from, from);
            for &(advice, pos, len) in reader.1.borrow().iter() {
                if advice {
                    assert_eq!(pos, advised, "advice in order, each byte once");
                    advised += len;
                    assert!(advised <= to, "advice past the range's end");
                    assert!(advised <= read_end + SCAN_AHEAD_BYTES + SCAN_CHUNK_BYTES as u64);
                } else {
                    assert!(
                        pos + len <= advised,
                        "read of {pos}+{len} before its advice"
                    );
                    read_end = read_end.max(pos + len);
                }
            }
            assert_eq!((advised, read_end), (to, to), "range {from}..{to}");
        }
    }

    /// A file in memory that counts the bytes read from it.
    struct CountingReader(Vec<u8>, std::cell::Cell<u64>);

    impl DiskReader for CountingReader {
        fn len(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_exact_at(&self, pos: u64, buf: &mut [u8]) -> std::io::Result<()> {
            self.1.set(self.1.get() + buf.len() as u64);
            let pos = pos as usize;
            match self.0.get(pos..pos + buf.len()) {
                Some(b) => {
                    buf.copy_from_slice(b);
                    Ok(())
                }
                None => Err(std::io::ErrorKind::UnexpectedEof.into()),
            }
        }
    }

    /// A segment on a counting reader of `n` entries of `value_len`-byte values, keys of
    /// hashed sort keys in two namespaces; with its entries' keys and frame offsets.
    fn disk_segment(n: u64, value_len: usize) -> (SegIndex<CountingReader>, Vec<(SortKey, u64)>) {
        let mut batch = EntryBatch::default();
        for i in 0..n {
            let key = i.to_le_bytes();
            let sort = SortKey::of(3, 1, &[(i % 2) as u8], &key);
            batch.push(
                sort,
                Kind::Put,
                0,
                1,
                &[(i % 2) as u8],
                &key,
                &vec![i as u8; value_len],
            );
        }
        let mut b = SegmentBuilder::new(5, 1, n);
        b.push_batch(batch);
        let mut seg: SegIndex<CountingReader> = b.finish(Path::new("/d"));
        let Source::Mem(bytes) = &seg.source else {
            unreachable!("a built segment is in memory")
        };
        let bytes = bytes.to_vec();
        let mut entries = Vec::new();
        for_each_frame(&seg.path, 5, 0, &bytes, |fr| {
            let k = u64::from_le_bytes(fr.key.try_into().unwrap());
            entries.push((fr.head.sort, k));
            Ok(true)
        })
        .unwrap();
        seg.source = Source::Disk(Rc::new(CountingReader(bytes, std::cell::Cell::new(0))));
        (seg, entries)
    }

    fn bytes_read(seg: &SegIndex<CountingReader>) -> u64 {
        let Source::Disk(r) = &seg.source else {
            unreachable!("on disk")
        };
        r.1.replace(0)
    }

    /// `SegIndex::find` on disk: every entry is found with its value and absent keys are
    /// absent, with small frames (a read of the part of a block between two restart points,
    /// placed by the fence keys' hashes: less than a fifth of the blocks' bytes in all) and
    /// with large ones (a frame per block: the block of the entry's fence only); rot in one
    /// value fails that entry alone.
    #[test]
    fn find_on_disk_reads_part_of_a_block_and_finds_every_entry() {
        for (n, value_len) in [(6000u64, 60usize), (300, 5000)] {
            let (seg, entries) = disk_segment(n, value_len);
            let mut buf = AlignedVec::new();
            let mut blocks = 0u64;
            for (sort, k) in &entries {
                let ns = [(k % 2) as u8];
                let e = seg
                    .find(sort, &ns, &k.to_le_bytes(), &mut buf)
                    .unwrap()
                    .unwrap();
                assert_eq!(
                    e.value.as_slice(),
                    &vec![*k as u8; value_len][..],
                    "key {k}"
                );
                let (start, end) = seg.range_of(sort, sort);
                blocks += end - start;
            }
            let read = bytes_read(&seg);
            if value_len < 100 {
                assert!(read < blocks / 5, "{read} bytes of {blocks}");
            } else {
                // Each frame is a block of its own and its fence's key is the entry's: the
                // range is two blocks, of which the lookup reads the second: each frame once.
                assert_eq!(read, seg.meta.data_len, "{blocks} bytes in the ranges");
            }
            for (sort, k) in &entries {
                let (ns, other) = ([(k % 2) as u8], (k + n).to_le_bytes());
                assert!(seg.find(sort, &ns, &other, &mut buf).unwrap().is_none());
            }
            for i in n..n + 200 {
                let key = i.to_le_bytes();
                let sort = SortKey::of(3, 1, &[0], &key);
                assert!(seg.find(&sort, &[0], &key, &mut buf).unwrap().is_none());
            }
        }
        let (mut seg, entries) = disk_segment(6000, 60);
        let (sort, k) = entries[3001];
        let Source::Disk(r) = &seg.source else {
            unreachable!("on disk")
        };
        let mut bytes = r.0.clone();
        let mut offsets = Vec::new();
        for_each_frame(&seg.path, 5, 0, &bytes, |fr| {
            offsets.push(fr.head.offset as usize);
            Ok(true)
        })
        .unwrap();
        let bad = offsets[3001];
        bytes[bad + frame::HEADER_BYTES + 16 + 16 + 5] ^= 1;
        seg.source = Source::Disk(Rc::new(CountingReader(bytes, std::cell::Cell::new(0))));
        let mut buf = AlignedVec::new();
        let e = seg
            .find(&sort, &[(k % 2) as u8], &k.to_le_bytes(), &mut buf)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains(&format!("offset {bad}:")) && e.contains("crc mismatch"),
            "{e}"
        );
        for (i, (sort, k)) in entries.iter().enumerate().filter(|(i, _)| *i != 3001) {
            let ns = [(k % 2) as u8];
            let e = seg.find(sort, &ns, &k.to_le_bytes(), &mut buf).unwrap();
            assert_eq!(e.unwrap().value[0], *k as u8, "entry {i}");
        }
    }

    /// The lookup window of every entry holds the entry's frame, in blocks of one namespace
    /// and blocks that span several (states, key groups, namespaces), among frames of mixed
    /// sizes (some larger than a block); the windows of small frames are a small part of
    /// their blocks; and the scan at open rebuilds exactly the index the builder made.
    #[test]
    fn every_entry_lies_in_its_lookup_window_and_a_scan_rebuilds_the_index() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut batch = EntryBatch::default();
        for i in 0..30_000u64 {
            let r = rand();
            let (state, kg, ns) = ((r % 2) as u32, ((r >> 8) % 3) as u32, [(r >> 16) as u8 % 2]);
            let value_len = match r >> 40 {
                v if v % 700 == 0 => 9000,
                v => (v % 160) as usize,
            };
            let key = i.to_le_bytes();
            let sort = SortKey::of(state, kg, &ns, &key);
            batch.push(sort, Kind::Put, 0, 1, &ns, &key, &vec![7; value_len]);
        }
        let mut b = SegmentBuilder::new(5, 1, 30_000);
        b.push_batch(batch);
        let seg: SegIndex<VecReader> = b.finish(Path::new("/d"));
        let Source::Mem(bytes) = &seg.source else {
            unreachable!("a built segment is in memory")
        };
        let (mut parts, mut blocks, mut whole) = (0usize, 0usize, 0usize);
        for_each_frame(&seg.path, 5, 0, bytes, |fr| {
            let sort = fr.head.sort;
            let (i, j) = seg.index.fence_range(&sort, &sort);
            let (start, end) = seg.index.offsets(i, j, seg.meta.data_len);
            let len = (end - start) as usize;
            let (from, to) = seg.index.window(i, j, &sort, len);
            let at = (fr.head.offset - start) as usize;
            assert!(
                from <= at && at < to,
                "frame at {at} of [0, {len}): window [{from}, {to})"
            );
            if fr.len < 400 {
                (parts, blocks) = (parts + to - from, blocks + len);
                whole += usize::from((from, to) == (0, len));
            }
            Ok(true)
        })
        .unwrap();
        assert!(
            parts * 4 < blocks,
            "windows of {parts} bytes in blocks of {blocks}"
        );
        assert!(whole < 30_000 / 20, "{whole} lookups read the whole block");

        let reader = VecReader(bytes.to_vec());
        let (index, _) = scan_segment(&seg.meta, &seg.path, &reader, 1).unwrap();
        assert_eq!(index.fences, seg.index.fences);
        assert_eq!(index.restarts, seg.index.restarts);
        assert_eq!(index.last, seg.index.last);
    }

    #[test]
    fn bloom_has_no_false_negatives_and_few_false_positives() {
        let mut b = Bloom::with_keys(10_000);
        let h = |i: u64| xxh3_64(&i.to_le_bytes());
        for i in 0..10_000 {
            b.insert(h(i));
        }
        assert!((0..10_000).all(|i| b.may_contain(h(i))));
        let fp = (10_000..110_000).filter(|&i| b.may_contain(h(i))).count();
        assert!(fp < 3_000, "{fp} false positives in 100k (over 3%)");
    }
}
