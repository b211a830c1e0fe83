//! Which tokens of a sentence an analysis looks at: an occurrence of a target word (given as its
//! token ids), or an explicit character span mapped to tokens through the tokenizer's offsets,
//! and which sub-token stands for a word of several tokens.
//!
//! The core stays tokenizer-free: offsets come in as plain `(start, end)` byte ranges into the
//! UTF-8 sentence, as the tokenizer returns them. Spans come from users and count characters
//! (Unicode scalar values, as Python's `str` indexes), not bytes.

use ndarray::Array1;

use super::{AnalysisError, HiddenVectors};

/// The tokens of one word (or span) in a sentence: positions `start..end`, never empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenRange {
    /// First token position (0-based).
    pub start: usize,
    /// One past the last token position.
    pub end: usize,
}

impl TokenRange {
    /// The range of the single token at `position`.
    pub fn single(position: usize) -> Self {
        TokenRange { start: position, end: position + 1 }
    }

    /// Number of tokens.
    pub fn len(self) -> usize {
        self.end - self.start
    }

    /// Always false: a range holds at least one token.
    pub fn is_empty(self) -> bool {
        self.start >= self.end
    }
}

/// Which occurrence(s) of the target in a sentence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Occurrence {
    /// The first (the notebook's `list.index`).
    #[default]
    First,
    /// The last.
    Last,
    /// The n-th, counted from 1 (`Nth(2)` is the second).
    Nth(usize),
    /// Every occurrence, each one its own row.
    All,
}

/// Which sub-token stands for a word of several tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum SubToken {
    /// The last sub-token (default): in a causal model only the last sub-token has attended to
    /// the whole word, so its hidden state is the one that can represent the word; earlier
    /// sub-tokens have seen only a prefix (" Nak" of " Nakamura").
    #[default]
    Last,
    /// The first sub-token (the word's start, e.g. to compare with a one-token word's position).
    First,
    /// The mean of the sub-tokens' vectors, per hidden state.
    Mean,
}

impl SubToken {
    /// The single position standing for `range`; `None` for [`SubToken::Mean`].
    pub fn position(self, range: TokenRange) -> Option<usize> {
        match self {
            SubToken::Last => Some(range.end - 1),
            SubToken::First => Some(range.start),
            SubToken::Mean => None,
        }
    }
}

/// The occurrences of the word `target` (its token ids, in order) in sentence number `sentence`
/// with token ids `ids`, as chosen by `occurrence`. Occurrences of a word of several tokens are
/// found left to right without overlap.
///
/// # Errors
/// [`AnalysisError::EmptyTarget`], [`AnalysisError::InvalidOccurrence`] (`Nth(0)`),
/// [`AnalysisError::TargetNotFound`] (one-token target) or
/// [`AnalysisError::TargetTokensNotFound`] (several tokens) when it does not occur, and
/// [`AnalysisError::OccurrenceNotFound`] when it occurs fewer than `n` times.
pub fn find_occurrences(
    sentence: usize,
    ids: &[u32],
    target: &[u32],
    occurrence: Occurrence,
) -> Result<Vec<TokenRange>, AnalysisError> {
    Ok(numbered_occurrences(sentence, ids, target, occurrence)?.into_iter().map(|(_, range)| range).collect())
}

/// [`find_occurrences`] with each occurrence's number in the sentence, counted from 1 (the last of
/// three is number 3): what keys a row's shuffled draws ([`crate::analysis::draws_for_row`]).
///
/// # Errors
/// As [`find_occurrences`].
pub fn numbered_occurrences(
    sentence: usize,
    ids: &[u32],
    target: &[u32],
    occurrence: Occurrence,
) -> Result<Vec<(usize, TokenRange)>, AnalysisError> {
    if target.is_empty() {
        return Err(AnalysisError::EmptyTarget);
    }
    if occurrence == Occurrence::Nth(0) {
        return Err(AnalysisError::InvalidOccurrence);
    }
    let found: Vec<(usize, TokenRange)> =
        all_occurrences(ids, target).into_iter().zip(1..).map(|(r, k)| (k, r)).collect();
    if found.is_empty() {
        return Err(match *target {
            [target] => AnalysisError::TargetNotFound { sentence, target },
            _ => AnalysisError::TargetTokensNotFound { sentence, tokens: target.to_vec() },
        });
    }
    match occurrence {
        Occurrence::First => Ok(vec![found[0]]),
        Occurrence::Last => Ok(vec![found[found.len() - 1]]),
        Occurrence::All => Ok(found),
        Occurrence::Nth(n) => found.get(n - 1).map(|&r| vec![r]).ok_or(AnalysisError::OccurrenceNotFound {
            sentence,
            wanted: n,
            found: found.len(),
        }),
    }
}

/// The tokens one row of the analysis compares: one occurrence of the target word (or the tokens a
/// span covers) and the non-target word beside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RowSelection {
    /// Which occurrence of the target in its sentence, counted from 1 (1 for a span). With the
    /// sentence's corpus index it keys the row's shuffled draws.
    pub occurrence: usize,
    /// The target word's tokens.
    pub target: TokenRange,
    /// The non-target word's tokens (one token for an offset).
    pub non_target: TokenRange,
}

impl RowSelection {
    /// The notebook's row: one-token target and non-target at these positions, occurrence 1.
    pub fn at(target: usize, non_target: usize) -> Self {
        RowSelection { occurrence: 1, target: TokenRange::single(target), non_target: TokenRange::single(non_target) }
    }
}

/// How the target of one sentence is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetSelector<'a> {
    /// A word by its token ids, and which of its occurrences.
    Word { tokens: &'a [u32], occurrence: Occurrence },
    /// A character span `(start, end)` of the sentence.
    Span(usize, usize),
}

/// How the non-target of one sentence is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonTargetSelector {
    /// Tokens before (negative) or after (positive) the target word ([`non_target_position`]).
    Offset(i32),
    /// A character span `(start, end)` of the sentence.
    Span(usize, usize),
}

/// One sentence as the selection sees it: its number (in errors), text, token ids and byte offsets.
#[derive(Clone, Copy, Debug)]
pub struct TokenizedSentence<'a> {
    pub index: usize,
    pub text: &'a str,
    pub ids: &'a [u32],
    pub offsets: &'a [(usize, usize)],
}

/// The rows of one sentence: each chosen occurrence of the target (or its span) with its non-target.
///
/// # Errors
/// Those of [`numbered_occurrences`], [`span_to_tokens`] and [`non_target_position`], and
/// [`AnalysisError::NonTargetOverlapsTarget`] for a non-target span sharing a token with the target.
pub fn select_rows(
    sentence: TokenizedSentence,
    target: TargetSelector,
    non_target: NonTargetSelector,
) -> Result<Vec<RowSelection>, AnalysisError> {
    let TokenizedSentence { index, text, ids, offsets } = sentence;
    let targets = match target {
        TargetSelector::Word { tokens, occurrence } => numbered_occurrences(index, ids, tokens, occurrence)?,
        TargetSelector::Span(start, end) => vec![(1, span_to_tokens(index, text, offsets, (start, end))?)],
    };
    let row = |(occurrence, target): (usize, TokenRange)| {
        let non_target = match non_target {
            NonTargetSelector::Offset(offset) => {
                TokenRange::single(non_target_position(index, ids.len(), target, offset)?)
            }
            NonTargetSelector::Span(start, end) => {
                let range = span_to_tokens(index, text, offsets, (start, end))?;
                if range.start < target.end && target.start < range.end {
                    return Err(AnalysisError::NonTargetOverlapsTarget { sentence: index });
                }
                range
            }
        };
        Ok(RowSelection { occurrence, target, non_target })
    };
    targets.into_iter().map(row).collect()
}

/// Non-overlapping matches of `target` in `ids`, left to right.
fn all_occurrences(ids: &[u32], target: &[u32]) -> Vec<TokenRange> {
    let mut found = Vec::new();
    let mut start = 0;
    while start + target.len() <= ids.len() {
        if ids[start..start + target.len()] == *target {
            found.push(TokenRange { start, end: start + target.len() });
            start += target.len();
        } else {
            start += 1;
        }
    }
    found
}

/// The non-target position for a target word: `offset` tokens before its first token
/// (`offset < 0`; −1 is the token just before the word, the notebook's choice) or after its last
/// token (`offset > 0`). For a one-token target this is `target + offset`, as today.
///
/// # Errors
/// [`AnalysisError::NonTargetIsTarget`] for `offset == 0`, and
/// [`AnalysisError::NonTargetOutOfRange`] outside the sentence's `num_tokens` tokens.
pub fn non_target_position(
    sentence: usize,
    num_tokens: usize,
    target: TokenRange,
    offset: i32,
) -> Result<usize, AnalysisError> {
    let anchor = match offset {
        0 => return Err(AnalysisError::NonTargetIsTarget { sentence }),
        o if o < 0 => target.start,
        _ => target.end - 1,
    };
    let position = anchor as i64 + i64::from(offset);
    if position < 0 || position >= num_tokens as i64 {
        return Err(AnalysisError::NonTargetOutOfRange { sentence, position, num_tokens });
    }
    Ok(position as usize)
}

/// The tokens covering the character span `start..end` of sentence number `sentence` (`text`,
/// tokenized into tokens with byte `offsets`).
///
/// The span must begin where its first token begins and end where its last token ends; the
/// whitespace a GPT-2 token carries before its word may be included or left out (`"her"` and
/// `" her"` both select the token `" her"`), whether or not the tokenizer trims it from the
/// offsets. A span that cuts a token is an error: the analysis would silently use a different
/// word than the one asked for.
///
/// # Errors
/// [`AnalysisError::InvalidSpan`] for an empty span or one past the end of the text, and
/// [`AnalysisError::SpanNotOnTokenBoundary`] for a span that cuts a token (or covers none).
pub fn span_to_tokens(
    sentence: usize,
    text: &str,
    offsets: &[(usize, usize)],
    (start, end): (usize, usize),
) -> Result<TokenRange, AnalysisError> {
    let invalid = || AnalysisError::InvalidSpan { sentence, start, end, num_chars: text.chars().count() };
    let (a, b) = match (char_to_byte(text, start), char_to_byte(text, end)) {
        (Some(a), Some(b)) if a < b => (a, b),
        _ => return Err(invalid()),
    };
    let overlaps = |&(s, e): &(usize, usize)| s < b && e > a;
    let not_on_boundary = AnalysisError::SpanNotOnTokenBoundary { sentence, start, end };
    let (Some(first), Some(last)) = (offsets.iter().position(overlaps), offsets.iter().rposition(overlaps)) else {
        return Err(not_on_boundary);
    };
    if only_whitespace_between(text, a, offsets[first].0) && only_whitespace_between(text, b, offsets[last].1) {
        Ok(TokenRange { start: first, end: last + 1 })
    } else {
        Err(not_on_boundary)
    }
}

/// The byte index of character number `c` (`text.len()` for the end of the text).
fn char_to_byte(text: &str, c: usize) -> Option<usize> {
    text.char_indices().map(|(b, _)| b).chain([text.len()]).nth(c)
}

/// Whether the bytes between `x` and `y` (either order) are whitespace only.
fn only_whitespace_between(text: &str, x: usize, y: usize) -> bool {
    text.get(x.min(y)..x.max(y)).is_some_and(|s| s.chars().all(char::is_whitespace))
}

/// The vector standing for the word `range` at hidden state `state` of sentence `sentence`: the
/// chosen sub-token's vector, or the mean of the sub-tokens' vectors (accumulated in f64,
/// rounded once to f32 like the hidden states themselves).
///
/// # Errors
/// [`AnalysisError::MissingHiddenVector`] for a vector `vectors` does not hold.
pub fn sub_token_vector(
    vectors: &impl HiddenVectors,
    sentence: usize,
    state: usize,
    range: TokenRange,
    sub_token: SubToken,
) -> Result<Array1<f32>, AnalysisError> {
    let read = |position: usize| {
        vectors.vector(state, position).ok_or(AnalysisError::MissingHiddenVector {
            sentence,
            hidden_state: state,
            position,
        })
    };
    if let Some(position) = sub_token.position(range) {
        return Ok(read(position)?.to_owned());
    }
    let mut sum = read(range.start)?.mapv(f64::from);
    for position in range.start + 1..range.end {
        sum.zip_mut_with(&read(position)?, |s, &x| *s += f64::from(x));
    }
    Ok(sum.mapv(|s| (s / range.len() as f64) as f32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;
    use proptest::prelude::*;

    const HER: u32 = 607;

    #[test]
    fn occurrences() {
        let ids = [1, HER, 2, HER, 3, HER];
        let at = |p: usize| vec![TokenRange::single(p)];
        assert_eq!(find_occurrences(0, &ids, &[HER], Occurrence::First).unwrap(), at(1));
        assert_eq!(find_occurrences(0, &ids, &[HER], Occurrence::Last).unwrap(), at(5));
        assert_eq!(find_occurrences(0, &ids, &[HER], Occurrence::Nth(2)).unwrap(), at(3));
        let all: Vec<usize> =
            find_occurrences(0, &ids, &[HER], Occurrence::All).unwrap().iter().map(|r| r.start).collect();
        assert_eq!(all, [1, 3, 5]);
        // A word of several tokens, without overlapping matches.
        let word = find_occurrences(0, &[7, 7, 7, 9, 7, 7], &[7, 7], Occurrence::All).unwrap();
        assert_eq!(word, [TokenRange { start: 0, end: 2 }, TokenRange { start: 4, end: 6 }]);
        assert_eq!(Occurrence::default(), Occurrence::First);
    }

    #[test]
    fn occurrence_errors_name_the_sentence() {
        let ids = [1, HER, 2];
        let find = |target: &[u32], o| find_occurrences(4, &ids, target, o).unwrap_err();
        assert_eq!(
            find(&[HER], Occurrence::Nth(2)),
            AnalysisError::OccurrenceNotFound { sentence: 4, wanted: 2, found: 1 }
        );
        assert_eq!(find(&[5], Occurrence::First), AnalysisError::TargetNotFound { sentence: 4, target: 5 });
        assert_eq!(
            find(&[2, 1], Occurrence::All),
            AnalysisError::TargetTokensNotFound { sentence: 4, tokens: vec![2, 1] }
        );
        assert_eq!(find(&[], Occurrence::First), AnalysisError::EmptyTarget);
        assert_eq!(find(&[HER], Occurrence::Nth(0)), AnalysisError::InvalidOccurrence);
        assert!(find(&[HER], Occurrence::Nth(2)).to_string().contains("sentence 4"));
    }

    #[test]
    fn sub_tokens_and_non_targets() {
        let word = TokenRange { start: 2, end: 5 };
        assert_eq!(SubToken::default().position(word), Some(4));
        assert_eq!(SubToken::First.position(word), Some(2));
        assert_eq!(SubToken::Mean.position(word), None);
        assert_eq!(non_target_position(0, 8, word, -1), Ok(1));
        assert_eq!(non_target_position(0, 8, word, 1), Ok(5));
        assert_eq!(non_target_position(0, 8, TokenRange::single(3), -1), Ok(2));
        assert_eq!(non_target_position(1, 8, word, 0), Err(AnalysisError::NonTargetIsTarget { sentence: 1 }));
        assert_eq!(
            non_target_position(2, 5, word, 1),
            Err(AnalysisError::NonTargetOutOfRange { sentence: 2, position: 5, num_tokens: 5 })
        );
        assert!(non_target_position(2, 5, word, i32::MIN).is_err());
    }

    #[test]
    fn mean_sub_token_vector() {
        // hidden[s, p, :] = [p, s·p]; the mean over positions 1..4 is [2, 2s].
        let hidden = Array3::from_shape_fn((2, 5, 2), |(s, p, k)| if k == 0 { p as f32 } else { (s * p) as f32 });
        let view = hidden.view();
        let word = TokenRange { start: 1, end: 4 };
        assert_eq!(sub_token_vector(&view, 0, 1, word, SubToken::Mean).unwrap().to_vec(), [2.0, 2.0]);
        assert_eq!(sub_token_vector(&view, 0, 1, word, SubToken::Last).unwrap().to_vec(), [3.0, 3.0]);
        assert_eq!(sub_token_vector(&view, 0, 1, word, SubToken::First).unwrap().to_vec(), [1.0, 1.0]);
        assert_eq!(
            sub_token_vector(&view, 6, 2, word, SubToken::Mean),
            Err(AnalysisError::MissingHiddenVector { sentence: 6, hidden_state: 2, position: 1 })
        );
    }

    /// "Her dog saw her" as GPT-2 splits it: "Her", " dog", " saw", " her".
    const TEXT: &str = "Her dog saw her";
    const OFFSETS: [(usize, usize); 4] = [(0, 3), (3, 7), (7, 11), (11, 15)];

    #[test]
    fn spans_map_to_tokens() {
        let map = |span| span_to_tokens(3, TEXT, &OFFSETS, span);
        assert_eq!(map((0, 3)), Ok(TokenRange::single(0))); // sentence-initial "Her"
        assert_eq!(map((12, 15)), Ok(TokenRange::single(3))); // "her" without its space
        assert_eq!(map((11, 15)), Ok(TokenRange::single(3))); // " her" with it
        assert_eq!(map((4, 11)), Ok(TokenRange { start: 1, end: 3 }));
        // Offsets trimmed of their whitespace (ByteLevel trim_offsets) map the same way.
        let trimmed = [(0, 3), (4, 7), (8, 11), (12, 15)];
        assert_eq!(span_to_tokens(3, TEXT, &trimmed, (11, 15)), Ok(TokenRange::single(3)));
        assert_eq!(span_to_tokens(3, TEXT, &trimmed, (12, 15)), Ok(TokenRange::single(3)));
    }

    #[test]
    fn span_errors_name_the_sentence() {
        let map = |span| span_to_tokens(3, TEXT, &OFFSETS, span).unwrap_err();
        for cut in [(0, 2), (1, 3), (12, 14), (3, 4), (11, 12)] {
            assert_eq!(
                map(cut),
                AnalysisError::SpanNotOnTokenBoundary { sentence: 3, start: cut.0, end: cut.1 },
                "{cut:?}"
            );
        }
        for bad in [(5, 5), (6, 2), (0, 16), (20, 30)] {
            assert_eq!(map(bad), AnalysisError::InvalidSpan { sentence: 3, start: bad.0, end: bad.1, num_chars: 15 });
        }
        assert!(map((0, 2)).to_string().starts_with("sentence 3"));
    }

    #[test]
    fn spans_count_characters_not_bytes() {
        // "Zoë saw her": 'ë' is 2 bytes; GPT-2 splits "Zoë" into "Zo" and "ë" (bytes 2..4).
        let text = "Zoë saw her";
        let offsets = [(0, 2), (2, 4), (4, 8), (8, 12)];
        assert_eq!(span_to_tokens(0, text, &offsets, (0, 3)), Ok(TokenRange { start: 0, end: 2 }));
        assert_eq!(span_to_tokens(0, text, &offsets, (8, 11)), Ok(TokenRange::single(3)));
        // Half of a character split over two byte-level tokens with the same offsets.
        let emoji = "a😀b";
        let split = [(0, 1), (1, 5), (1, 5), (5, 6)];
        assert_eq!(span_to_tokens(0, emoji, &split, (1, 2)), Ok(TokenRange { start: 1, end: 3 }));
    }

    proptest! {
        /// Every span covering whole tokens maps back to those tokens.
        #[test]
        fn whole_token_spans_map_back(words in prop::collection::vec("[a-zé]{1,4}", 1..8), i in 0usize..8, j in 0usize..8) {
            let (text, offsets) = tokenize_words(&words);
            let (i, j) = (i % words.len(), j % words.len());
            let (first, last) = (i.min(j), i.max(j));
            let chars = |b: usize| text[..b].chars().count();
            for start in [offsets[first].0, offsets[first].0 + usize::from(first > 0)] {
                let span = (chars(start), chars(offsets[last].1));
                prop_assert_eq!(span_to_tokens(0, &text, &offsets, span), Ok(TokenRange { start: first, end: last + 1 }));
            }
        }
    }

    proptest! {
        /// Arbitrary (even inconsistent) offsets, spans and ids never panic; results stay inside.
        #[test]
        fn arbitrary_input_never_panics(
            text in "\\PC{0,12}",
            offsets in prop::collection::vec((0usize..40, 0usize..40), 0..8),
            span in (0usize..20, 0usize..20),
            ids in prop::collection::vec(0u32..4, 0..12),
            target in prop::collection::vec(0u32..4, 0..3),
            n in 0usize..4,
        ) {
            if let Ok(r) = span_to_tokens(1, &text, &offsets, span) {
                prop_assert!(r.start < r.end && r.end <= offsets.len());
            }
            for occurrence in [Occurrence::First, Occurrence::Last, Occurrence::Nth(n), Occurrence::All] {
                if let Ok(found) = find_occurrences(1, &ids, &target, occurrence) {
                    prop_assert!(!found.is_empty());
                    for r in found {
                        prop_assert_eq!(&ids[r.start..r.end], &target[..]);
                    }
                }
            }
        }
    }

    /// Words joined by spaces, one token per word carrying its leading space (as GPT-2 does).
    fn tokenize_words(words: &[String]) -> (String, Vec<(usize, usize)>) {
        let mut text = String::new();
        let mut offsets = Vec::new();
        for (k, w) in words.iter().enumerate() {
            let start = text.len();
            if k > 0 {
                text.push(' ');
            }
            text.push_str(w);
            offsets.push((start, text.len()));
        }
        (text, offsets)
    }
}
