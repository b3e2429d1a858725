//! Event time through the public API: sources that stamp records and emit watermarks
//! themselves, and watermark strategies applied after any stream.

use sluice::prelude::*;
use sluice::{
    Batch, ProcessContext, ReadPosition, ReadStatus, SourceContext, Watermark, WindowOutput,
};

/// Records `0..n` stamped with their own value, each split reporting `max − 5` as its
/// watermark after every batch.
struct StampedCounter {
    n: u64,
}

struct StampedReader {
    next: u64,
    end: u64,
    batch: usize,
}

impl Source for StampedCounter {
    type Item = u64;
    type Split = (u64, u64);
    type Reader = StampedReader;
    fn name(&self) -> String {
        "stamped".into()
    }
    fn is_bounded(&self) -> bool {
        true
    }
    fn splits(&self, workers: usize) -> sluice::Result<Vec<(u64, u64)>> {
        let w = workers as u64;
        Ok((0..w)
            .map(|k| (k * self.n / w, (k + 1) * self.n / w))
            .collect())
    }
    async fn open(
        &self,
        split: (u64, u64),
        _start: Option<ReadPosition>,
        _ctx: &SourceContext,
    ) -> sluice::Result<StampedReader> {
        Ok(StampedReader {
            next: split.0,
            end: split.1,
            batch: 100,
        })
    }
}

impl SourceReader for StampedReader {
    type Item = u64;
    async fn read_batch(&mut self, out: &mut Batch<u64>, max: usize) -> sluice::Result<ReadStatus> {
        let end = self.end.min(self.next + max.min(self.batch) as u64);
        for i in self.next..end {
            out.push(i, i as i64);
        }
        self.next = end;
        Ok(if self.next == self.end {
            ReadStatus::End
        } else {
            ReadStatus::More
        })
    }
    fn position(&self) -> ReadPosition {
        ReadPosition(self.next)
    }
    fn watermark(&self) -> Option<Watermark> {
        (self.next > 0).then(|| Watermark(self.next as i64 - 1 - 5))
    }
}

#[test]
fn a_source_stamps_records_and_emits_its_own_watermarks() {
    for workers in [1, 2] {
        let env = Env::new();
        env.set_workers(workers);
        let seen = env
            .from_source(StampedCounter { n: 3_000 })
            .key_by(|x: &u64| x % 3)
            .process(
                |x: u64, ctx: &mut ProcessContext<'_, u64, (u64, i64, i64)>| {
                    let w = ctx.current_watermark().0;
                    ctx.output((x, ctx.timestamp(), w));
                    Ok(())
                },
            )
            .collect();
        env.execute("source watermarks").unwrap();
        let seen = seen.take();
        assert_eq!(seen.len(), 3_000);
        assert!(
            seen.iter().all(|&(x, ts, _)| ts == x as i64),
            "timestamps from the source"
        );
        assert!(
            seen.iter().all(|&(_, ts, w)| w < ts),
            "no record behind a watermark its source emitted"
        );
        // On one worker the watermarks are interleaved with the records exactly as the source
        // emitted them; on two, each operator's watermark waits for the slower source worker.
        if workers == 1 {
            assert_eq!(
                seen.iter().filter(|&&(_, _, w)| w > i64::MIN).count(),
                2_900,
                "every record after the first batch saw a watermark"
            );
        }
    }
}

#[derive(Clone)]
struct Count;

impl AggregateFunction<u64> for Count {
    type Acc = u64;
    type Out = u64;
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, _: u64) {
        *acc += 1;
    }
    fn merge(&self, acc: &mut u64, other: u64) {
        *acc += other;
    }
    fn get_result(&self, acc: &u64) -> u64 {
        *acc
    }
}

#[test]
fn a_strategy_after_a_map_replaces_the_source_watermarks() {
    // The strategy re-stamps each record with ts = 10 × value; tumbling windows of 1000 hold
    // 100 values each.
    let out = sluice::testing::run_local(2, |env| {
        env.from_source(StampedCounter { n: 1_000 })
            .map(|x| x * 10)
            .assign_timestamps_and_watermarks(
                WatermarkStrategy::for_monotonous_timestamps()
                    .with_timestamp_assigner(|x: &u64| *x as i64)
                    .with_watermark_interval_records(16),
            )
            .key_by(|_: &u64| 0u8)
            .window(WindowAssigner::tumbling(1_000))
            .aggregate(Count)
            .map(|w: WindowOutput<u8, u64>| (w.window.start, w.value))
            .collect()
    });
    let expected: Vec<(i64, u64)> = (0..10).map(|k| (k * 1_000, 100)).collect();
    assert_eq!(out, expected);
}
