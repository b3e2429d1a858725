//! The classic streaming word count: `cargo run --release --example wordcount -- INPUT [OUTPUT]`.
//! Counts the words of a text file (or directory) on every core and writes `word<TAB>count`
//! lines into part files in OUTPUT (default `wordcount-out`).

use sluice::prelude::*;

fn main() -> Result<(), sluice::Error> {
    let mut args = std::env::args().skip(1);
    let input = args.next().unwrap_or_else(|| "README.md".into());
    let output = args.next().unwrap_or_else(|| "wordcount-out".into());

    let env = Env::new();
    let mut scratch = String::new();
    env.read_text_file(input)
        .flat_map_into(move |line: String, out: &mut Vec<(CompactString, u64)>| {
            sluice::text::for_each_word(&line, &mut scratch, |w| out.push((w.into(), 1)))
        })
        .into_keyed()
        .emit_final()
        .sum()
        .map(|(word, count)| format!("{word}\t{count}"))
        .write_text(output);
    let report = env.execute("wordcount")?;
    eprintln!(
        "{} lines in {:.2?}",
        report.progress.records_in, report.elapsed
    );
    Ok(())
}
