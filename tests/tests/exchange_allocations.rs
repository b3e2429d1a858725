//! Allocations on the data path: a job moving 2 M `(u64, u64)` records through a hash exchange
//! into a running keyed sum, on 2 workers, must allocate per batch, not per record.
//!
//! This test binary has its own global allocator that counts every allocation of the process.
//! It holds one test, so nothing else allocates while it measures. The count covers
//! `Env::execute` only: the input collection is built before, and the sink counts and drops
//! records without storing them. Worker start-up allocates a fixed amount, so the test also
//! reports the marginal cost per record against a run of one batch's worth of records.
#![deny(unsafe_code)] // Allowed on the counting allocator only; each block says why it is sound.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sluice::{Env, Sink, SinkContext, SinkWriter};

/// Counts allocations (including reallocations) and hands every call on to [`System`].
struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

#[allow(unsafe_code)]
// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so it
// upholds `GlobalAlloc`'s contract exactly as `System` does; the counter has no effect on
// memory.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller guarantees `layout` has a non-zero size, as `System.alloc` needs.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `alloc`: the caller's `layout` has a non-zero size.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller guarantees `ptr` came from this allocator (so from `System`)
        // with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller guarantees `ptr` came from this allocator (so from `System`)
        // with `layout`, and that `new_size` is non-zero and fits `isize` once aligned.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const RECORDS: u64 = 2_000_000;
const KEYS: u64 = 4096;
const WORKERS: usize = 2;
const PER_RECORD_MAX: f64 = 0.01;

/// What the sink saw, over all workers.
#[derive(Default)]
struct Seen {
    records: AtomicU64,
    /// The sum of every running sum emitted: with every value 1, a key's running sums are
    /// 1, 2, …, n whatever the order, so this total is fixed by the input.
    sum_of_sums: AtomicU64,
}

/// Counts records and drops them.
struct DropSink(Arc<Seen>);

struct DropWriter(Arc<Seen>);

impl Sink<(u64, u64)> for DropSink {
    type Writer = DropWriter;
    fn name(&self) -> String {
        "drop".into()
    }
    async fn open(&self, _ctx: &SinkContext) -> sluice::Result<DropWriter> {
        Ok(DropWriter(self.0.clone()))
    }
}

impl SinkWriter<(u64, u64)> for DropWriter {
    async fn write_batch(&mut self, batch: &mut Vec<(u64, u64)>) -> sluice::Result<()> {
        let sum: u64 = batch.iter().map(|(_, running)| running).sum();
        self.0
            .records
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.0.sum_of_sums.fetch_add(sum, Ordering::Relaxed);
        batch.clear();
        Ok(())
    }
    async fn finish(&mut self) -> sluice::Result<()> {
        Ok(())
    }
}

/// Runs `(i % KEYS, 1)` for `i` in `0..records` through a hash exchange into a running sum
/// and returns the allocations made during `execute`.
fn allocations_of_job(records: u64) -> u64 {
    let env = Env::new();
    env.set_workers(WORKERS);
    let seen = Arc::new(Seen::default());
    let items: Vec<(u64, u64)> = (0..records).map(|i| (i % KEYS, 1)).collect();
    env.from_iter(items)
        .into_keyed()
        .sum()
        .sink(DropSink(seen.clone()));
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    let result = env.execute("exchange allocations");
    let allocations = ALLOCATIONS.load(Ordering::SeqCst) - before;
    result.unwrap_or_else(|e| panic!("job failed: {e}"));

    assert_eq!(
        seen.records.load(Ordering::SeqCst),
        records,
        "records reaching the sink"
    );
    let expected: u64 = (0..KEYS)
        .map(|k| {
            let n = records / KEYS + u64::from(k < records % KEYS);
            n * (n + 1) / 2
        })
        .sum();
    assert_eq!(
        seen.sum_of_sums.load(Ordering::SeqCst),
        expected,
        "sum of running sums"
    );
    allocations
}

#[test]
fn hash_exchange_running_sum_2m_records_2_workers_allocates_per_batch_not_per_record() {
    let small = sluice::BATCH_RECORDS_MAX as u64;
    let fixed = allocations_of_job(small);
    let total = allocations_of_job(RECORDS);
    let per_record = total as f64 / RECORDS as f64;
    let marginal = total.saturating_sub(fixed) as f64 / (RECORDS - small) as f64;
    println!("allocations per record: {per_record:.5}");
    println!(
        "allocations: {total} for {RECORDS} records, {fixed} for one batch \
         ({small} records); marginal per record: {marginal:.5}"
    );
    assert!(
        per_record < PER_RECORD_MAX,
        "{per_record:.5} allocations per record ({total} for {RECORDS}); at most \
         {PER_RECORD_MAX}"
    );
}
