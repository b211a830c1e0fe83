//! Span mapping with the real GPT-2 tokenizer (bundled with the test model): the byte offsets it
//! returns, whole-word spans, sentence-initial words, words GPT-2 splits, and every span that
//! covers whole tokens mapping back to exactly those tokens.

use rotations::analysis::{find_occurrences, span_to_tokens, AnalysisError, Occurrence, SubToken, TokenRange};
use rotations::model::Tokenizer;

fn tokenizer() -> Tokenizer {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/models/gpt2-tiny-random/tokenizer.json");
    Tokenizer::from_file(std::path::Path::new(path)).expect("bundled tokenizer")
}

const SENTENCES: &[&str] = &[
    "Her mother gave her the book.",
    "I saw her at the market, and her brother waved.",
    "Nakamura-san and Zoë met  her twice.",
    "She handed him her 😀 keys.",
];

/// The character span of `word`'s `k`-th occurrence (0-based) in `text`.
fn char_span(text: &str, word: &str, k: usize) -> (usize, usize) {
    let byte = text.match_indices(word).nth(k).expect("word in text").0;
    let start = text[..byte].chars().count();
    (start, start + word.chars().count())
}

#[test]
fn words_in_context() {
    let tok = tokenizer();
    let text = SENTENCES[0];
    let enc = tok.encode(text).unwrap();
    let her = tok.encode(" her").unwrap().ids;
    // Sentence-initial "Her" is its own token, not " her".
    let initial = span_to_tokens(0, text, &enc.offsets, char_span(text, "Her", 0)).unwrap();
    assert_eq!(initial, TokenRange::single(0));
    assert_ne!(enc.ids[0], her[0]);
    // "her" with or without its space is the token " her", the first occurrence of ' her'.
    // ("mother" contains "her": the word is found by its leading space.)
    let found = find_occurrences(0, &enc.ids, &her, Occurrence::First).unwrap()[0];
    let (s, e) = char_span(text, " her", 0);
    assert_eq!(span_to_tokens(0, text, &enc.offsets, (s + 1, e)).unwrap(), found);
    assert_eq!(span_to_tokens(0, text, &enc.offsets, (s, e)).unwrap(), found);
    // Cutting the word is an error naming the sentence.
    let err = span_to_tokens(5, text, &enc.offsets, (s, e - 1)).unwrap_err();
    assert_eq!(err, AnalysisError::SpanNotOnTokenBoundary { sentence: 5, start: s, end: e - 1 });
}

#[test]
fn split_words_and_occurrences() {
    let tok = tokenizer();
    let text = SENTENCES[2];
    let enc = tok.encode(text).unwrap();
    let name = span_to_tokens(0, text, &enc.offsets, char_span(text, "Nakamura", 0)).unwrap();
    assert!(name.len() > 1, "GPT-2 splits Nakamura: {name:?}");
    assert_eq!(tok.decode(&enc.ids[name.start..name.end]).unwrap(), "Nakamura");
    assert_eq!(SubToken::Last.position(name), Some(name.end - 1));
    // A multi-token word is found by its token ids too.
    let ids = enc.ids[name.start..name.end].to_vec();
    assert_eq!(find_occurrences(0, &enc.ids, &ids, Occurrence::All).unwrap(), [name]);
    // The second ' her' of sentence 1, by occurrence and by span.
    let text = SENTENCES[1];
    let enc = tok.encode(text).unwrap();
    let her = tok.encode(" her").unwrap().ids;
    let second = find_occurrences(1, &enc.ids, &her, Occurrence::Nth(2)).unwrap()[0];
    let (s, e) = char_span(text, " her", 1);
    assert_eq!(span_to_tokens(1, text, &enc.offsets, (s + 1, e)).unwrap(), second);
    assert_eq!(find_occurrences(1, &enc.ids, &her, Occurrence::Last).unwrap(), [second]);
    assert_eq!(find_occurrences(1, &enc.ids, &her, Occurrence::All).unwrap().len(), 2);
}

/// Every span from the start of token i to the end of token j maps back to tokens i..=j, except
/// where a token shares its offsets with a neighbour (one character split over byte-level tokens:
/// no character span can separate them).
#[test]
fn every_whole_token_span_maps_back() {
    let tok = tokenizer();
    for (sentence, text) in SENTENCES.iter().enumerate() {
        let enc = tok.encode(text).unwrap();
        let off = &enc.offsets;
        let separable =
            |k: usize| (k == 0 || off[k - 1].1 <= off[k].0) && (k + 1 == off.len() || off[k].1 <= off[k + 1].0);
        let chars = |b: usize| text[..b].chars().count();
        for i in (0..off.len()).filter(|&i| separable(i)) {
            for j in (i..off.len()).filter(|&j| separable(j)) {
                let span = (chars(off[i].0), chars(off[j].1));
                let got = span_to_tokens(sentence, text, off, span);
                assert_eq!(got, Ok(TokenRange { start: i, end: j + 1 }), "{text:?} tokens {i}..={j}");
            }
        }
    }
}

proptest::proptest! {
    /// On arbitrary text through the real tokenizer: every span from the start of a token to the
    /// end of a later one (both separable from their neighbours) maps back to exactly those tokens,
    /// and so does the span without the first token's leading whitespace (unless that token is
    /// whitespace only: then the span starts at the next token).
    #[test]
    fn arbitrary_text_whole_token_spans_map_back(text in "[ a-zA-Zé😀.,'-]{1,40}", i in 0usize..64, j in 0usize..64) {
        static TOKENIZER: std::sync::OnceLock<Tokenizer> = std::sync::OnceLock::new();
        let enc = TOKENIZER.get_or_init(tokenizer).encode(&text).unwrap();
        let off = &enc.offsets;
        proptest::prop_assume!(!off.is_empty());
        let separable =
            |k: usize| (k == 0 || off[k - 1].1 <= off[k].0) && (k + 1 == off.len() || off[k].1 <= off[k + 1].0);
        let (i, j) = (i % off.len(), j % off.len());
        let (i, j) = (i.min(j), i.max(j));
        proptest::prop_assume!(separable(i) && separable(j));
        let chars = |b: usize| text[..b].chars().count();
        let want = Ok(TokenRange { start: i, end: j + 1 });
        proptest::prop_assert_eq!(span_to_tokens(0, &text, off, (chars(off[i].0), chars(off[j].1))), want.clone());
        let token = &text[off[i].0..off[i].1];
        let word_start = off[i].0 + (token.len() - token.trim_start().len());
        if !token.trim().is_empty() {
            proptest::prop_assert_eq!(span_to_tokens(0, &text, off, (chars(word_start), chars(off[j].1))), want);
        }
    }
}
