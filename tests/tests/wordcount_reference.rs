//! Word count, through the `sluice` binary and through the API in this process, against the
//! reference count of `sluice_tests`, on inputs chosen to break a byte-range text reader:
//! empty files, a missing last newline, CRLF, a line longer than the reader's 1 MiB chunk,
//! lines and characters cut by range edges, multi-byte text, and directory inputs.
//!
//! Ranges: the reader splits the input into byte ranges of `ceil(total / workers)` bytes
//! (`text_splits` in `api/src/sources.rs`); the range holding a line's first byte reads the
//! line. The edge tests compute the split points the same way and assert that the input puts
//! the intended bytes there before running anything.
//!
//! Every input runs at 1, 2 and 4 workers (4 is more than this machine's 2 cores: unpinned),
//! and the edge inputs also at the worker count they were built for (3 included).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice_tests::{
    Counts, WORKER_COUNTS, add_reference_word_count, assert_counts_eq, hidden_dot_entries,
    read_output_dir, reference_word_count, run_cli_wordcount, stderr_text, text_split_points,
    within, wordcount_to_dir,
};

/// How long an in-process job may take before the test calls it hung.
const JOB_LIMIT: Duration = Duration::from_secs(60);

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("create a temporary directory: {e}"))
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Runs word count on `input` through the binary and through the API at each of `workers`,
/// and checks each output against `expected` and the output directory contract.
fn check(input: &Path, expected: &Counts, workers: &[usize]) {
    let out = tempdir();
    for &w in workers {
        let cli_dir = out.path().join(format!("cli-{w}"));
        let run = run_cli_wordcount(input, &cli_dir, w);
        assert!(
            run.status.success(),
            "sluice at {w} workers on {}: {}; stderr: {}",
            input.display(),
            run.status,
            stderr_text(&run)
        );
        check_output_dir(&cli_dir, expected, &format!("sluice binary, {w} workers"));

        let api_dir = out.path().join(format!("api-{w}"));
        let (i, o) = (input.to_path_buf(), api_dir.clone());
        let what = format!("API word count at {w} workers");
        let report = within(JOB_LIMIT, &what, move || wordcount_to_dir(&i, &o, w));
        let report = report.unwrap_or_else(|e| panic!("API job at {w} workers: {e}"));
        assert_eq!(report.workers, w, "the report's worker count");
        check_output_dir(&api_dir, expected, &format!("API, {w} workers"));
    }
}

fn check_output_dir(dir: &Path, expected: &Counts, what: &str) {
    let got = read_output_dir(dir).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_counts_eq(expected, &got, what);
    let hidden = hidden_dot_entries(dir);
    assert!(
        hidden.is_empty(),
        "{what}: left {hidden:?} in the output directory"
    );
}

/// Writes `bytes` as the only file of a new directory and checks it at 1, 2 and 4 workers.
fn check_file(bytes: &[u8]) {
    let dir = tempdir();
    let input = dir.path().join("input.txt");
    write(&input, bytes);
    let text = std::str::from_utf8(bytes).unwrap_or_else(|e| panic!("test input: {e}"));
    check(&input, &reference_word_count(text), &WORKER_COUNTS);
}

/// A small deterministic generator (xorshift64), so inputs are varied but repeatable.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// ASCII text of exactly `total` bytes: lines of 0 to 8 words from a small vocabulary, with
/// unique words `l<n>` numbering the lines, so a line read twice or lost changes the counts.
fn lines_text(total: usize, seed: u64) -> Vec<u8> {
    const VOCAB: [&str; 8] = ["the", "Sluice", "stream", "of", "WORDS", "a1", "x", "zz9"];
    const GAPS: [&str; 5] = [" ", ", ", " - ", "\t", "; "];
    let mut rng = Rng(seed | 1);
    let mut text = String::with_capacity(total + 64);
    let mut line = 0;
    while text.len() < total {
        text.push_str(&format!("l{line}"));
        for _ in 0..rng.below(9) {
            text.push_str(GAPS[rng.below(GAPS.len() as u64) as usize]);
            text.push_str(VOCAB[rng.below(VOCAB.len() as u64) as usize]);
        }
        text.push('\n');
        line += 1;
    }
    let mut bytes = text.into_bytes();
    bytes.truncate(total);
    bytes[total - 1] = b'\n';
    bytes
}

/// What an edge input puts at each split point `p`.
#[derive(Clone, Copy, Debug)]
enum Edge {
    /// `p` is a line's `\n`: the range before it ends just before the newline.
    OnNewline,
    /// `p` is a line's first byte: the range before it ends with a newline.
    AfterNewline,
    /// `p` is inside a word.
    MidWord,
    /// `p` is the `\n` of a `\r\n`.
    BetweenCrLf,
    /// `p` starts an empty line.
    EmptyLine,
    /// `p` is inside a multi-byte character (2, 3 or 4 bytes, in turn).
    MidChar,
}

/// Text of `total` bytes whose every split point for `workers` workers is an `edge`.
fn edge_text(total: usize, workers: usize, edge: Edge) -> Vec<u8> {
    let mut bytes = lines_text(total, (total * 31 + workers) as u64);
    for (k, p) in text_split_points(total, workers).into_iter().enumerate() {
        assert!(
            p >= 4 && p + 4 < total,
            "split point {p} too close to an end"
        );
        let patch: (usize, &[u8]) = match edge {
            Edge::OnNewline => (p - 2, b"ab\n"),
            Edge::AfterNewline => (p - 1, b"\ncd"),
            Edge::MidWord => (p - 2, b"wxyz"),
            Edge::BetweenCrLf => (p - 2, b"q\r\n"),
            Edge::EmptyLine => (p - 2, b"e\n\n"),
            Edge::MidChar => match k % 3 {
                0 => (p - 1, "é".as_bytes()),
                1 => (p - 1, "語".as_bytes()),
                _ => (p - 2, "𝐀".as_bytes()),
            },
        };
        let (at, with) = patch;
        bytes[at..at + with.len()].copy_from_slice(with);
    }
    let text = std::str::from_utf8(&bytes).unwrap_or_else(|e| panic!("edge input: {e}"));
    for p in text_split_points(total, workers) {
        let (before, here) = (bytes[p - 1], bytes[p]);
        let ok = match edge {
            Edge::OnNewline => before != b'\n' && here == b'\n',
            Edge::AfterNewline => before == b'\n' && here != b'\n',
            Edge::MidWord => before.is_ascii_alphanumeric() && here.is_ascii_alphanumeric(),
            Edge::BetweenCrLf => before == b'\r' && here == b'\n',
            Edge::EmptyLine => before == b'\n' && here == b'\n',
            Edge::MidChar => !text.is_char_boundary(p),
        };
        assert!(ok, "{edge:?} at {p}: bytes {before:#04x} {here:#04x}");
    }
    bytes
}

/// Checks an edge input at the worker count it was built for, and at 1, 2 and 4.
fn check_edge(edge: Edge) {
    // Totals that the worker counts do not divide, so the last range is shorter.
    for (workers, total) in [(2, 4001), (3, 4001), (4, 4099)] {
        let dir = tempdir();
        let input = dir.path().join("edges.txt");
        let bytes = edge_text(total, workers, edge);
        write(&input, &bytes);
        let text = String::from_utf8_lossy(&bytes);
        let mut runs = vec![workers];
        runs.extend(WORKER_COUNTS.iter().filter(|&&w| w != workers));
        check(&input, &reference_word_count(&text), &runs);
    }
}

#[test]
fn empty_file_gives_empty_output_at_1_2_4_workers() {
    check_file(b"");
}

#[test]
fn file_of_only_separators_gives_empty_output() {
    check_file(b"  ,;\n\n\r\n\t- \n");
}

#[test]
fn last_line_without_newline_is_counted() {
    check_file(b"alpha beta\ngamma Delta\nalpha ALPHA epsilon");
}

#[test]
fn single_word_without_newline_is_counted() {
    check_file(b"x");
}

#[test]
fn crlf_line_ends_and_lone_cr_split_words() {
    check_file(b"Hello\r\nworld\r\n\r\nhello WORLD\r\nfoo\rbar\r\nlast\r");
}

#[test]
fn line_of_3_mib_longer_than_the_read_chunk_is_counted_once() {
    let mut long = String::with_capacity(3 << 20);
    let mut i = 0u32;
    while long.len() < 3 << 20 {
        long.push_str(&format!("w{} ", i % 997));
        i += 1;
    }
    let text = format!("first line\n{long}\nlast line\n");
    check_file(text.as_bytes());
}

#[test]
fn line_of_3_mib_at_end_without_newline_is_counted_once() {
    let mut long = String::with_capacity(3 << 20);
    let mut i = 0u32;
    while long.len() < 3 << 20 {
        long.push_str(&format!("Ω{}-", i % 1009));
        i += 1;
    }
    let text = format!("short\n{long}");
    check_file(text.as_bytes());
}

#[test]
fn range_edges_on_a_newline_at_2_3_4_workers() {
    check_edge(Edge::OnNewline);
}

#[test]
fn range_edges_right_after_a_newline_at_2_3_4_workers() {
    check_edge(Edge::AfterNewline);
}

#[test]
fn range_edges_mid_word_at_2_3_4_workers() {
    check_edge(Edge::MidWord);
}

#[test]
fn range_edges_between_cr_and_lf_at_2_3_4_workers() {
    check_edge(Edge::BetweenCrLf);
}

#[test]
fn range_edges_at_an_empty_line_at_2_3_4_workers() {
    check_edge(Edge::EmptyLine);
}

#[test]
fn range_edges_inside_a_multibyte_char_at_2_3_4_workers() {
    check_edge(Edge::MidChar);
}

#[test]
fn tiny_file_with_more_ranges_than_lines() {
    // 4 workers over 11 bytes: ranges of 3 bytes, most of them holding no line start.
    check_file(b"abcdefghij\n");
    check_file(b"ab\ncd\nef\ng");
}

#[test]
fn multibyte_text_final_sigma_cjk_combining_marks_cut_by_range_edges() {
    let body = "ΟΔΟΣ ΣΟΦΟΣ σοφός ΣΑΣ Σ ΣΣ\n\
                日本語のテキスト、日本語。中文字符\n\
                cafe\u{301} CAFÉ café e\u{301}te\u{301} ÉTÉ\n\
                İstanbul ǅemal ẞtraße STRASSE straße\n\
                हिन्दी हिन्दी العربية ١٢٣ ½ Ⅻ x²\n\
                naïve\u{a0}NAÏVE\u{2003}ﬁne ﬁ Ǆ ǆ\n";
    let text = body.repeat(40);
    // Pad both ends until a character straddles every split point at 2, 3 and 4 workers.
    let mid_char_everywhere = |t: &String| {
        [2, 3, 4].iter().all(|&w| {
            text_split_points(t.len(), w)
                .iter()
                .all(|&p| !t.is_char_boundary(p))
        })
    };
    let text = (0..16 * 16)
        .map(|pad| format!("{}{text}{}", " ".repeat(pad / 16), " ".repeat(pad % 16)))
        .find(mid_char_everywhere)
        .unwrap_or_else(|| panic!("no padding puts a character across every split point"));
    let dir = tempdir();
    let input = dir.path().join("multibyte.txt");
    write(&input, text.as_bytes());
    check(&input, &reference_word_count(&text), &[1, 2, 3, 4]);
}

#[test]
fn directory_input_reads_visible_files_and_skips_dot_and_underscore_files() {
    let dir = tempdir();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap_or_else(|e| panic!("mkdir: {e}"));
    let visible: Vec<(&str, Vec<u8>)> = vec![
        ("a.txt", lines_text(3001, 7)),
        ("b.txt", "Hello hello\r\nwörld".as_bytes().to_vec()),
        ("c", Vec::new()),
        ("d.log", lines_text(97, 11)),
        ("e.txt", "ΣΟΦΟΣ 日本\n".repeat(300).into_bytes()),
    ];
    let mut expected = Counts::new();
    for (name, bytes) in &visible {
        write(&input.join(name), bytes);
        let text = std::str::from_utf8(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        add_reference_word_count(&mut expected, text);
    }
    // Hidden files hold words also in the visible ones, and words of their own.
    write(&input.join(".x"), b"hello the hiddendot\n");
    write(&input.join("_y"), b"hello the hiddenunderscore\n");
    assert!(expected.contains_key("hello") && expected.contains_key("the"));
    check(&input, &expected, &WORKER_COUNTS);
}

#[test]
fn directory_input_holding_only_hidden_files_gives_empty_output() {
    let dir = tempdir();
    let input: PathBuf = dir.path().join("in");
    std::fs::create_dir(&input).unwrap_or_else(|e| panic!("mkdir: {e}"));
    write(&input.join(".x"), b"hidden\n");
    write(&input.join("_y"), b"hidden\n");
    check(&input, &Counts::new(), &WORKER_COUNTS);
}
