//! Writes a generated corpus of MB megabytes to PATH:
//! `cargo run --release -p sluice-bench --example gen_corpus -- PATH MB`.
fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "corpus.txt".into());
    let mb: u64 = args.next().map_or(Ok(100), |s| s.parse())?;
    let file = std::fs::File::create(&path)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    sluice_bench::corpus::write_corpus(&mut out, mb * 1_000_000, 0x5EED)?;
    std::io::Write::flush(&mut out)?;
    Ok(())
}
