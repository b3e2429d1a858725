//! [`PacedSource`]: a bounded, replayable source of consecutive numbers that reads its batches
//! at a set pace, for inputs of different speeds meeting in one stage — the checkpoint
//! benchmark's alignment figure and the tests of barriers with skewed inputs.
//!
//! Each read waits `pause` and then yields up to `batch` numbers, so a checkpoint barrier,
//! which a source injects between two reads, waits up to `pause` on this input: a slow input
//! holds the alignment of the stage it feeds for about that long.

use std::time::Duration;

use sluice::{Batch, ReadPosition, ReadStatus, Source, SourceContext, SourceReader};

/// The numbers `first .. first + count`, split in interleaved shares (split `k` of `n` reads
/// `first + k, first + k + n, …`), each number stamped with itself as its event time.
#[derive(Clone, Copy, Debug)]
pub struct PacedSource {
    /// The first number.
    pub first: u64,
    /// How many numbers.
    pub count: u64,
    /// Numbers per read, per split (at most 1024).
    pub batch: usize,
    /// The wait before each read.
    pub pause: Duration,
}

/// One share of a [`PacedSource`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacedSplit {
    /// Its first number's offset from the source's first.
    pub offset: u64,
    /// The distance between two numbers of the share.
    pub stride: u64,
}

/// Reads one share of a [`PacedSource`].
pub struct PacedReader {
    source: PacedSource,
    /// The next number's offset from the source's first.
    next: u64,
    stride: u64,
}

impl Source for PacedSource {
    type Item = u64;
    type Split = PacedSplit;
    type Reader = PacedReader;

    fn name(&self) -> String {
        format!(
            "paced({}..{}, {} per {:?})",
            self.first,
            self.first + self.count,
            self.batch,
            self.pause
        )
    }
    fn is_bounded(&self) -> bool {
        true
    }
    fn splits(&self, workers: usize) -> sluice::Result<Vec<PacedSplit>> {
        let stride = workers.max(1) as u64;
        Ok((0..stride)
            .map(|offset| PacedSplit { offset, stride })
            .collect())
    }
    fn encode_split(&self, split: &PacedSplit) -> Option<Vec<u8>> {
        let mut bytes = split.offset.to_le_bytes().to_vec();
        bytes.extend_from_slice(&split.stride.to_le_bytes());
        Some(bytes)
    }
    fn decode_split(&self, bytes: &[u8]) -> sluice::Result<PacedSplit> {
        let word = |i: usize| {
            bytes
                .get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
        };
        match (word(0), word(1)) {
            (Some(offset), Some(stride)) if stride > 0 => Ok(PacedSplit { offset, stride }),
            _ => Err(sluice::Error::Config(
                "a checkpointed paced split is malformed".into(),
            )),
        }
    }
    async fn open(
        &self,
        split: PacedSplit,
        start: Option<ReadPosition>,
        _ctx: &SourceContext,
    ) -> sluice::Result<PacedReader> {
        Ok(PacedReader {
            source: *self,
            next: start.map_or(split.offset, |p| p.0.max(split.offset)),
            stride: split.stride,
        })
    }
}

impl SourceReader for PacedReader {
    type Item = u64;
    async fn read_batch(
        &mut self,
        out: &mut Batch<u64>,
        records_max: usize,
    ) -> sluice::Result<ReadStatus> {
        if !self.source.pause.is_zero() {
            glommio::timer::sleep(self.source.pause).await;
        }
        let limit = records_max.min(self.source.batch.max(1));
        let count = self.source.count;
        while self.next < count && out.len() < limit {
            let x = self.source.first + self.next;
            out.push(x, x as i64);
            self.next += self.stride;
        }
        Ok(if self.next >= count {
            ReadStatus::End
        } else {
            ReadStatus::More
        })
    }
    fn position(&self) -> ReadPosition {
        ReadPosition(self.next)
    }
}
