//! Allocations on the receive path: after a warm-up, receiving record batches over loopback —
//! reading them in place, or deserializing each into a reused `Vec` — must not allocate per
//! record. (Per batch, about one allocation remains: see the assertion.)
//!
//! This test binary has its own global allocator, which counts the allocations made on the
//! receiving executor's thread only (a thread-local flag marks it), so the sender's
//! serialization and the test harness do not count.
#![deny(unsafe_code)] // Allowed on the counting allocator only; each block says why it is sound.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use glommio::{LocalExecutorBuilder, Placement};
use sluice_net::{ClusterSecret, Element, Listener, NetConfig, Received, connect};

struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    // `try_with`: thread-local storage may be gone while a thread exits.
    if COUNTED.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

#[allow(unsafe_code)]
// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so it
// upholds `GlobalAlloc`'s contract exactly as `System` does; the counting touches only a
// const-initialized thread-local `Cell` and an atomic, neither of which allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller guarantees `layout` has a non-zero size, as `System.alloc` needs.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as for `alloc`: the caller's `layout` has a non-zero size.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller guarantees `ptr` came from this allocator (so from `System`)
        // with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: the caller guarantees `ptr` came from this allocator (so from `System`)
        // with `layout`, and that `new_size` is non-zero and fits `isize` once aligned.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const WARMUP_BATCHES: u64 = 200;
/// Batches counted; `SLUICE_NET_ALLOC_BATCHES` lowers it for slow runs (valgrind).
fn batches() -> u64 {
    std::env::var("SLUICE_NET_ALLOC_BATCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500)
}
const RECORDS_PER_BATCH: u64 = 1024;

/// Receives `WARMUP_BATCHES + batches()` batches of `(u64, u64)`, counting allocations on the
/// receiving thread after the warm-up; returns (allocations, records counted).
fn run(archived: bool) -> (u64, u64) {
    let secret = ClusterSecret::new(*b"a shared secret of enough bytes").unwrap();
    let cfg = NetConfig::new(secret, "alloc", "node");
    let client_cfg = cfg.clone();
    let (addr_tx, addr_rx) = mpsc::channel();
    let receiver = LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), &cfg).unwrap();
            addr_tx.send(listener.local_addr()).unwrap();
            let conn = listener.accept().await.unwrap();
            let mut rx = conn.receiver::<(u64, u64)>(0, 16).unwrap();
            let (mut records, mut timestamps) = (Vec::new(), Vec::new());
            let (mut batches, mut counted, mut sum) = (0u64, 0u64, 0u64);
            let mut before = 0;
            while let Some(e) = rx.recv().await.unwrap() {
                let Received::Records(b) = e else { continue };
                if archived {
                    let a = b.archived().unwrap();
                    for r in a.records.iter() {
                        sum = sum.wrapping_add(r.1.to_native());
                    }
                    if batches >= WARMUP_BATCHES {
                        counted += a.records.len() as u64;
                    }
                } else {
                    b.read_into(&mut records, &mut timestamps).unwrap();
                    sum = records.iter().fold(sum, |s, r| s.wrapping_add(r.1));
                    if batches >= WARMUP_BATCHES {
                        counted += records.len() as u64;
                    }
                }
                drop(b);
                batches += 1;
                if batches == WARMUP_BATCHES {
                    before = ALLOCATIONS.load(Ordering::Relaxed);
                    COUNTED.with(|c| c.set(true));
                }
            }
            COUNTED.with(|c| c.set(false));
            let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
            assert!(sum > 0);
            (allocations, counted)
        })
        .unwrap();
    let addr = addr_rx.recv().unwrap();
    let sender = LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let conn = connect(addr, &client_cfg).await.unwrap();
            let mut tx = conn.sender::<(u64, u64)>(0).unwrap();
            let batch: Vec<(u64, u64)> = (0..RECORDS_PER_BATCH).map(|i| (i, i + 1)).collect();
            for _ in 0..WARMUP_BATCHES + batches() {
                let e = Element::Records {
                    records: &batch,
                    timestamps: &[],
                };
                tx.send(e).await.unwrap();
            }
            tx.send(Element::EndOfInput).await.unwrap();
            while !conn.is_closed() {
                glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            }
        })
        .unwrap();
    sender.join().unwrap();
    receiver.join().unwrap()
}

#[test]
fn receiving_batches_allocates_nothing_per_record_in_steady_state() {
    for archived in [true, false] {
        let (allocations, records) = run(archived);
        assert_eq!(records, batches() * RECORDS_PER_BATCH);
        let per_record = allocations as f64 / records as f64;
        let per_batch = allocations as f64 / batches() as f64;
        eprintln!(
            "{{\"test\":\"net-receive-allocations\",\"path\":\"{}\",\"records\":{records},\
             \"allocations\":{allocations},\"per_record\":{per_record},\"per_batch\":{per_batch}}}",
            if archived { "archived" } else { "owned" }
        );
        // What remains is per read system call, not per record or frame: glommio's
        // `TcpStream::poll_read` registers a new readiness source (an allocation) after every
        // partial read, about one per batch here.
        assert!(
            per_record < 0.01,
            "{allocations} allocations for {records} records"
        );
        assert!(
            per_batch < 4.0,
            "{allocations} allocations for {} batches",
            batches()
        );
    }
}
