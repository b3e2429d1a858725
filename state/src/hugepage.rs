//! Transparent huge pages for large allocations: [`HugePageAlloc`] wraps a global allocator
//! and advises the kernel (`madvise(MADV_HUGEPAGE)`) to back every allocation of at least
//! [`HUGE_ALLOC_MIN`] bytes with 2 MiB pages. A table's hash map is one such allocation: a
//! restore inserts millions of entries at random places of it, and with 4 KiB pages each
//! insert faults in a fresh page or misses the TLB (4M entries: ~830 MB of buckets, ~200k
//! pages); with 2 MiB pages the faults are 512× fewer and the TLB covers the whole map.
//! Systems whose THP mode is `madvise` (the default of many distributions) use huge pages
//! only where advised; in mode `always` the advice changes nothing, in `never` it is ignored.
//!
//! The advice covers only the 2 MiB-aligned part of the allocation, so nothing outside it
//! changes; memory the allocator later reuses from that range for other objects may stay
//! advised, a cost of at most the bytes of large allocations freed.
//!
//! Not always a win: on a VM whose balloon reports free pages to the host (this project's
//! machine), the free 2 MiB blocks a huge-page fault takes are the ones the host reclaimed,
//! and faulting them back in cost more system time than the 4 KiB faults saved (4M inserts:
//! 0.5 CPU-s advised against 1.0 at one time, 2.1–2.8 against 1.3–2.3 at another). So it
//! can be turned off ([`set_enabled`]); the `sluice` binary turns it on only when asked.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, Ordering};

/// Allocations of at least this many bytes are advised to use huge pages.
pub const HUGE_ALLOC_MIN: usize = 32 << 20;

const HUGE_PAGE: usize = 2 << 20;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the advice of every [`HugePageAlloc`] on or off (on by default), for allocations
/// made from now on: a binary reads its setting at start (`sluice`: on only with
/// `SLUICE_HUGE_PAGES=1`).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

#[inline]
fn wanted(size: usize, p: *mut u8) -> bool {
    size >= HUGE_ALLOC_MIN && !p.is_null() && ENABLED.load(Ordering::Relaxed)
}

/// A global allocator that advises huge pages for large allocations of `A`:
/// `#[global_allocator] static A: HugePageAlloc<System> = HugePageAlloc(System);`.
pub struct HugePageAlloc<A>(pub A);

/// Advises huge pages for the whole 2 MiB pages inside `[ptr, ptr + len)`. A failure (a
/// kernel without THP) changes nothing and is ignored: the advice is an optimization.
pub fn advise_huge_pages(ptr: *mut u8, len: usize) {
    let start = (ptr as usize).next_multiple_of(HUGE_PAGE);
    let end = (ptr as usize).saturating_add(len) & !(HUGE_PAGE - 1);
    if end > start {
        // SAFETY: `[start, end)` lies inside an allocation the caller owns (so it is mapped
        // memory of this process), and MADV_HUGEPAGE only changes how the kernel backs those
        // pages, never their contents.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

// SAFETY: every method forwards to `A` with the same arguments and returns what `A` returned;
// the advice touches no memory and keeps the contents of the advised range.
unsafe impl<A: GlobalAlloc> GlobalAlloc for HugePageAlloc<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { self.0.alloc(layout) };
        if wanted(layout.size(), p) {
            advise_huge_pages(p, layout.size());
        }
        p
    }
    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { self.0.alloc_zeroed(layout) };
        if wanted(layout.size(), p) {
            advise_huge_pages(p, layout.size());
        }
        p
    }
    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.0.dealloc(ptr, layout) }
    }
    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { self.0.realloc(ptr, layout, new_size) };
        if wanted(new_size, p) {
            advise_huge_pages(p, new_size);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    /// The `VmFlags` line of the mapping of `/proc/self/smaps` that holds `addr`.
    fn vm_flags(addr: usize) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().unwrap_or("");
            if let Some((lo, hi)) = range.split_once('-') {
                if let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = lo <= addr && addr < hi;
                    continue;
                }
            }
            if inside {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    return Some(flags.to_string());
                }
            }
        }
        None
    }

    fn thp_available() -> bool {
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .is_ok_and(|s| !s.contains("[never]"))
    }

    #[test]
    fn large_allocations_are_advised_and_small_ones_are_not() {
        if !thp_available() {
            eprintln!("no transparent huge pages here: nothing to check");
            return;
        }
        let a = HugePageAlloc(System);
        let big = Layout::from_size_align(HUGE_ALLOC_MIN + (3 << 20), 64).unwrap();
        // SAFETY: a non-zero layout; freed below with the same layout.
        let p = unsafe { a.alloc(big) };
        assert!(!p.is_null());
        // SAFETY: the allocation is `big.size()` bytes.
        unsafe { p.write_bytes(7, big.size()) };
        let inner = (p as usize).next_multiple_of(HUGE_PAGE);
        let flags = vm_flags(inner).unwrap();
        assert!(flags.split_whitespace().any(|f| f == "hg"), "{flags}");
        // The contents are kept.
        // SAFETY: inside the allocation.
        assert_eq!(unsafe { *p.add(big.size() - 1) }, 7);
        // Growing keeps the advice on the new block.
        let grown = HUGE_ALLOC_MIN * 2;
        // SAFETY: `p` was allocated by `a` with `big`; `grown` is non-zero.
        let q = unsafe { a.realloc(p, big, grown) };
        assert!(!q.is_null());
        // SAFETY: the first `big.size()` bytes were copied.
        assert_eq!(unsafe { *q.add(big.size() - 1) }, 7);
        let flags = vm_flags((q as usize).next_multiple_of(HUGE_PAGE)).unwrap();
        assert!(flags.split_whitespace().any(|f| f == "hg"), "{flags}");
        let grown_layout = Layout::from_size_align(grown, 64).unwrap();
        // SAFETY: `q` is the live block of `grown_layout`.
        unsafe { a.dealloc(q, grown_layout) };

        let small = Layout::from_size_align(1 << 20, 64).unwrap();
        // SAFETY: as above.
        let s = unsafe { a.alloc(small) };
        assert!(!s.is_null());
        let flags = vm_flags(s as usize).unwrap_or_default();
        assert!(!flags.split_whitespace().any(|f| f == "hg"), "{flags}");
        // SAFETY: `s` is the live block of `small`.
        unsafe { a.dealloc(s, small) };

        // Turned off: large allocations are left alone.
        set_enabled(false);
        // SAFETY: as above.
        let p = unsafe { a.alloc(big) };
        set_enabled(true);
        assert!(!p.is_null());
        let flags = vm_flags((p as usize).next_multiple_of(HUGE_PAGE)).unwrap_or_default();
        assert!(!flags.split_whitespace().any(|f| f == "hg"), "{flags}");
        // SAFETY: `p` is the live block of `big`.
        unsafe { a.dealloc(p, big) };
    }

    #[test]
    fn no_advice_without_a_whole_huge_page_inside() {
        if !thp_available() {
            return;
        }
        let mut v = vec![0u8; 6 << 20];
        let p = v.as_mut_ptr();
        let aligned = (p as usize).next_multiple_of(HUGE_PAGE);
        let off = aligned - p as usize;
        // From one byte after a 2 MiB boundary to one byte before the next: no whole page.
        advise_huge_pages(p.wrapping_add(off + 1), HUGE_PAGE - 2);
        let flags = vm_flags(aligned).unwrap();
        assert!(!flags.split_whitespace().any(|f| f == "hg"), "{flags}");
        // The whole page from the boundary: advised.
        advise_huge_pages(p.wrapping_add(off), HUGE_PAGE);
        let flags = vm_flags(aligned).unwrap();
        assert!(flags.split_whitespace().any(|f| f == "hg"), "{flags}");
        v[0] = 1;
        assert_eq!(v.iter().map(|&b| b as usize).sum::<usize>(), 1);
    }
}
