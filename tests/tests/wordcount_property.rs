//! Property: for any text (ASCII words, punctuation, whitespace with `\r\n`, multi-byte
//! characters, up to a few KB) and any worker count from 1 to 4, the word count job built with
//! the API in this process gives exactly the reference counts of `sluice_tests`.
//!
//! Small texts at up to 4 workers put range edges everywhere: inside words, inside characters,
//! on line ends. The case count is kept small because each case runs a whole job.
#![forbid(unsafe_code)]

use std::time::Duration;

use proptest::prelude::*;
use sluice_tests::{Counts, diff_counts, reference_word_count, within, wordcount_collect};

/// Pieces of text: words, separators and characters that stress lowercasing and splitting.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9]{1,8}",
        2 => prop::sample::select(vec![
            " ", "  ", "\t", "\n", "\r\n", "\r", "\n\n", ",", ".", "!", "-", "_", "'", "\"",
            "(", ")", "\u{a0}", "\u{2003}", "\u{200b}",
        ])
        .prop_map(str::to_owned),
        2 => prop::sample::select(vec![
            "ΟΔΟΣ", "Σ", "σοφός", "ΣΑΣ", "日本語", "テキスト", "中文", "e\u{301}", "CAFÉ", "İ",
            "ǅ", "ẞ", "straße", "ﬁ", "हिन्दी", "العربية", "١٢٣", "½", "Ⅻ", "x²", "𝐀𝐁", "😀",
            "Ωmega", "naïve",
        ])
        .prop_map(str::to_owned),
        1 => any::<char>().prop_map(String::from),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(token(), 0..600).prop_map(|tokens| tokens.concat())
}

fn run_case(text: &str, workers: usize) -> Result<Counts, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let input = dir.path().join("input.txt");
    std::fs::write(&input, text).map_err(|e| format!("write input: {e}"))?;
    let what = format!("word count at {workers} workers");
    within(Duration::from_secs(60), &what, move || {
        let counts = wordcount_collect(&input, workers);
        drop(dir);
        counts
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_text_at_1_to_4_workers_gives_the_reference_counts(
        text in text(),
        workers in 1usize..=4,
    ) {
        let expected = reference_word_count(&text);
        let got = run_case(&text, workers).map_err(TestCaseError::fail)?;
        if let Some(diff) = diff_counts(&expected, &got) {
            return Err(TestCaseError::fail(format!(
                "{workers} workers, {} bytes: {diff}",
                text.len()
            )));
        }
    }
}
