//! The hand-written single-threaded word count: read the file, tokenize and lowercase, count
//! in one hash map. It is as fast as a careful single loop can be: one sequential read into a
//! buffer reused across chunks, the same tokenizer as the engine's job, a fast fixed hasher,
//! and no allocation for a word already counted (lookup by `&str`, insert only new words).

use std::fs::File;
use std::io::Read;
use std::path::Path;

use rustc_hash::FxHashMap;

/// Bytes read per `read` call.
const CHUNK_BYTES: usize = 1 << 20;

/// The result of a baseline run.
#[derive(Debug, Default)]
pub struct Counts {
    /// Count per word.
    pub words: FxHashMap<String, u64>,
    /// Total words.
    pub total: u64,
}

/// Counts the words of the file at `path`.
pub fn word_count(path: &Path) -> anyhow::Result<Counts> {
    let mut file = File::open(path)?;
    let mut counts = Counts::default();
    let mut scratch = String::new();
    let mut buf = Vec::with_capacity(CHUNK_BYTES + 4096);
    let mut eof = false;
    while !eof {
        // Read a chunk after the carried-over partial line.
        let carried = buf.len();
        buf.resize(carried + CHUNK_BYTES, 0);
        let n = file.read(&mut buf[carried..])?;
        buf.truncate(carried + n);
        eof = n == 0;
        // Count every complete line; carry the rest (all of it at the end).
        let upto = if eof {
            buf.len()
        } else {
            buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
        };
        let text = std::str::from_utf8(&buf[..upto])?;
        let (words, total) = (&mut counts.words, &mut counts.total);
        sluice::text::for_each_word(text, &mut scratch, |w| {
            *total += 1;
            match words.get_mut(w) {
                Some(c) => *c += 1,
                None => {
                    words.insert(w.to_owned(), 1);
                }
            }
        });
        buf.drain(..upto);
    }
    Ok(counts)
}
