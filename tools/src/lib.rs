//! `sluice_tools`: the built-in jobs of the `sluice` binary as a library, so that tests and
//! benchmarks run exactly the pipelines the binary runs.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod window_agg;

use std::path::Path;

use sluice::ops::ReducePairs;
use sluice::{CompactString, DataStream, Env, GateHead};

/// The stream of final `(word, count)` pairs of the word count job.
pub type WordCounts = DataStream<
    GateHead<(CompactString, u64)>,
    ReducePairs<fn(u64, u64) -> u64, CompactString, u64>,
>;

/// Word count up to its counts: the lines of `input` → `(word, 1)` pairs (a word is a maximal
/// run of alphanumeric characters, lowercased; see [`sluice::text::for_each_word`]) → keyed by
/// word → one final sum per word.
pub fn word_counts(env: &Env, input: &Path) -> WordCounts {
    let mut scratch = String::new();
    env.read_text_file(input)
        .flat_map_into(move |line: String, out: &mut Vec<(CompactString, u64)>| {
            sluice::text::for_each_word(&line, &mut scratch, |w| out.push((w.into(), 1)));
        })
        .into_keyed()
        .emit_final()
        .sum()
}

/// The word count job of `sluice run wordcount`: [`word_counts`] written as `word<TAB>count`
/// lines into part files in `output`.
pub fn wordcount(env: &Env, input: &Path, output: &Path) {
    word_counts(env, input)
        .map(|(word, count)| format!("{word}\t{count}"))
        .write_text(output);
}
