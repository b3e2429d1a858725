//! Receive buffers: 16-byte aligned (rkyv's `AlignedVec`), so an archive read into one is
//! aligned for validated in-place access, and pooled per connection, so that the receive path
//! allocates nothing once the pool holds a window's worth of buffers.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use rkyv::util::AlignedVec;

/// Alignment of every receive buffer.
pub const RECV_ALIGN: usize = 16;

/// Aligned receive storage.
pub type AlignedBuf = AlignedVec<RECV_ALIGN>;

/// A connection's pool of free receive buffers.
#[derive(Debug)]
pub(crate) struct BufPool {
    free: RefCell<Vec<AlignedBuf>>,
    /// Buffers are sized in multiples of this (the connection's `buffer_bytes`).
    unit: usize,
    /// Free buffers kept at most; more are freed.
    free_max: usize,
    /// Buffers allocated over the pool's life (a reused one does not count).
    allocated: Cell<u64>,
}

impl BufPool {
    pub(crate) fn new(unit: usize, free_max: usize) -> Rc<BufPool> {
        Rc::new(BufPool {
            free: RefCell::new(Vec::with_capacity(free_max)),
            unit: unit.max(RECV_ALIGN),
            free_max,
            allocated: Cell::new(0),
        })
    }

    /// A buffer of at least `len` bytes, all addressable (zeroed when first allocated).
    pub(crate) fn take(self: &Rc<Self>, len: usize) -> RecvBuf {
        let mut free = self.free.borrow_mut();
        let found = free.iter().rposition(|b| b.len() >= len);
        let buf = match found {
            Some(i) => free.swap_remove(i),
            None => {
                drop(free);
                self.allocated.set(self.allocated.get() + 1);
                let cap = len.div_ceil(self.unit).max(1) * self.unit;
                let mut b = AlignedBuf::with_capacity(cap);
                b.resize(cap, 0);
                b
            }
        };
        RecvBuf {
            buf: Some(buf),
            len,
            pool: self.clone(),
        }
    }

    pub(crate) fn allocated(&self) -> u64 {
        self.allocated.get()
    }
}

/// A received payload in an aligned, pooled buffer; goes back to its pool when dropped.
#[derive(Debug)]
pub struct RecvBuf {
    buf: Option<AlignedBuf>,
    len: usize,
    pool: Rc<BufPool>,
}

impl RecvBuf {
    /// The payload.
    pub fn bytes(&self) -> &[u8] {
        self.buf.as_ref().map_or(&[], |b| &b[..self.len])
    }

    /// The whole buffer, to read into.
    pub(crate) fn storage_mut(&mut self) -> &mut [u8] {
        self.buf.as_mut().map_or(&mut [], |b| &mut b[..])
    }

    /// Sets the payload's length (at most the buffer's).
    pub(crate) fn set_len(&mut self, len: usize) {
        let cap = self.buf.as_ref().map_or(0, |b| b.len());
        assert!(len <= cap, "len={len} cap={cap}");
        self.len = len;
    }
}

impl Drop for RecvBuf {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            let mut free = self.pool.free.borrow_mut();
            if free.len() < self.pool.free_max {
                free.push(buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_reused() {
        let pool = BufPool::new(4096, 4);
        let mut a = pool.take(100);
        assert_eq!(a.storage_mut().as_ptr() as usize % RECV_ALIGN, 0);
        assert_eq!(a.storage_mut().len(), 4096);
        a.set_len(10);
        assert_eq!(a.bytes().len(), 10);
        drop(a);
        let b = pool.take(4000);
        assert_eq!(pool.allocated(), 1);
        let c = pool.take(5000);
        assert_eq!(pool.allocated(), 2);
        assert_eq!(c.bytes().len(), 5000);
        drop((b, c));
        let _d = pool.take(8192);
        assert_eq!(pool.allocated(), 2, "the 8 KiB buffer is reused");
    }
}
