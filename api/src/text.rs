//! Text helpers shared by the built-in word count, its benchmark baseline and users' jobs.

/// Calls `f` with every word of `text`, lowercased. A word is a maximal run of alphanumeric
/// characters ([`char::is_alphanumeric`]); it is lowercased as a whole with
/// [`str::to_lowercase`] (so a final `Σ` becomes `ς`). ASCII words, the common case, are
/// lowercased into `scratch` without allocating.
///
/// ```
/// let mut words = Vec::new();
/// sluice::text::for_each_word("Hello, wörld! ÉTÉ 42x", &mut String::new(), |w| {
///     words.push(w.to_owned())
/// });
/// assert_eq!(words, ["hello", "wörld", "été", "42x"]);
/// ```
#[inline]
pub fn for_each_word(text: &str, scratch: &mut String, mut f: impl FnMut(&str)) {
    let bytes = text.as_bytes();
    let len = bytes.len();
    let mut i = 0;
    while i < len {
        let start = i;
        let mut ascii = true;
        while i < len {
            let b = bytes[i];
            if b < 0x80 {
                if !b.is_ascii_alphanumeric() {
                    break;
                }
                i += 1;
            } else {
                match text[i..].chars().next() {
                    Some(c) if c.is_alphanumeric() => {
                        ascii = false;
                        i += c.len_utf8();
                    }
                    _ => break,
                }
            }
        }
        if i > start {
            let word = &text[start..i];
            if ascii {
                scratch.clear();
                scratch.push_str(word);
                scratch.make_ascii_lowercase();
                f(scratch);
            } else {
                f(&word.to_lowercase());
            }
        } else {
            // Not a word character: skip it (one UTF-8 sequence).
            i += text[i..].chars().next().map_or(1, char::len_utf8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for_each_word(text, &mut String::new(), |w| out.push(w.to_owned()));
        out
    }

    fn reference(text: &str) -> Vec<String> {
        text.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect()
    }

    #[test]
    fn matches_the_definition() {
        for text in [
            "",
            "  ",
            "a",
            "Hello World",
            "ΟΔΟΣ σοφια",
            "x\u{00a0}y",
            "日本語 テキスト",
            "a-b_c",
        ] {
            assert_eq!(words(text), reference(text), "text={text:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn matches_the_definition_on_any_text(text in "\\PC*") {
            proptest::prop_assert_eq!(words(&text), reference(&text));
        }
    }
}
