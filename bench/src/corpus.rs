//! A deterministic text corpus: words drawn from a Zipf distribution (exponent 1) over a
//! seeded synthetic vocabulary, in lines of 4 to 15 words with some capitals, punctuation and
//! non-ASCII words, so that tokenizing and lowercasing do real work.

use std::io::Write;

use rand_xoshiro::Xoshiro256PlusPlus;
use rand_xoshiro::rand_core::{RngCore, SeedableRng};

/// Words in the vocabulary.
pub const VOCABULARY: usize = 50_000;

const NON_ASCII: &[&str] = &[
    "straße",
    "café",
    "naïve",
    "σοφία",
    "東京",
    "жизнь",
    "élan",
    "øre",
];

/// Writes at least `bytes` bytes of corpus text to `out`, deterministically from `seed`.
pub fn write_corpus(out: &mut impl Write, bytes: u64, seed: u64) -> std::io::Result<u64> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let vocab = vocabulary(&mut rng);
    let cdf = zipf_cdf(vocab.len());
    let mut written = 0u64;
    let mut line = String::with_capacity(256);
    while written < bytes {
        line.clear();
        let words = 4 + (rng.next_u32() % 12) as usize;
        for i in 0..words {
            let r = rng.next_u64();
            let word = &vocab[sample(&cdf, r)];
            if i > 0 {
                line.push(if r & 0xff == 0 { '\t' } else { ' ' });
            }
            if r >> 60 == 0 {
                // One word in sixteen starts with a capital.
                let mut chars = word.chars();
                if let Some(c) = chars.next() {
                    line.extend(c.to_uppercase());
                    line.push_str(chars.as_str());
                }
            } else {
                line.push_str(word);
            }
            if (r >> 52) & 0x1f == 0 {
                line.push(',');
            }
        }
        line.push_str(if rng.next_u32() % 8 == 0 {
            "!\n"
        } else {
            ".\n"
        });
        out.write_all(line.as_bytes())?;
        written += line.len() as u64;
    }
    Ok(written)
}

fn vocabulary(rng: &mut Xoshiro256PlusPlus) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut words = Vec::with_capacity(VOCABULARY);
    for w in NON_ASCII {
        seen.insert((*w).to_owned());
        words.push((*w).to_owned());
    }
    while words.len() < VOCABULARY {
        let len = 2 + (rng.next_u32() % 10) as usize;
        let word: String = (0..len)
            .map(|_| char::from(b'a' + (rng.next_u32() % 26) as u8))
            .collect();
        if seen.insert(word.clone()) {
            words.push(word);
        }
    }
    // Shuffle so that the frequent ranks are not the non-ASCII words.
    for i in (1..words.len()).rev() {
        words.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    words
}

fn zipf_cdf(n: usize) -> Vec<u64> {
    let total: f64 = (1..=n).map(|r| 1.0 / r as f64).sum();
    let mut acc = 0.0;
    (1..=n)
        .map(|r| {
            acc += 1.0 / r as f64 / total;
            (acc.min(1.0) * u64::MAX as f64) as u64
        })
        .collect()
}

fn sample(cdf: &[u64], r: u64) -> usize {
    cdf.partition_point(|&c| c < r).min(cdf.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_is_deterministic_and_sized() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        let n = write_corpus(&mut a, 100_000, 7).unwrap();
        write_corpus(&mut b, 100_000, 7).unwrap();
        assert_eq!(a, b);
        assert!((100_000..100_300).contains(&n), "n={n}");
        assert!(std::str::from_utf8(&a).is_ok());
    }
}
