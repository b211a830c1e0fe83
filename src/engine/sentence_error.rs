//! Errors about one sentence that say what to do: the sentence quoted (shortened), the target
//! token's text, and the spelling of the target that does occur in the sentence.
use crate::analysis::AnalysisError;
use crate::error::Error;
use crate::model::{ModelError, Tokenizer};

/// Longest quote of a sentence in a message, in characters.
const QUOTE_CHARS: usize = 60;

/// The sentence in double quotes, cut to [`QUOTE_CHARS`] with an ellipsis.
pub fn quote(sentence: &str) -> String {
    match sentence.char_indices().nth(QUOTE_CHARS) {
        Some((cut, _)) => format!("{:?}", format!("{}…", &sentence[..cut])),
        None => format!("{sentence:?}"),
    }
}

/// A sentence the engine cannot use: its corpus index, the sentence quoted, a reason code (the
/// `SkippedSentence.reason` codes) and the reason in words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidSentence {
    pub index: usize,
    pub quote: String,
    pub code: String,
    pub reason: String,
}

impl std::fmt::Display for InvalidSentence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sentence {} ({}): {}", self.index, self.quote, self.reason)
    }
}

/// What one sentence's problem is about, as a stable code a report can sort by.
fn code(error: &Error) -> &'static str {
    match error {
        Error::Model(ModelError::BadInput { code, .. }) => code,
        Error::Analysis(e) => match e {
            AnalysisError::TargetNotFound { .. } | AnalysisError::TargetTokensNotFound { .. } => "TARGET_NOT_FOUND",
            AnalysisError::OccurrenceNotFound { .. } => "OCCURRENCE_NOT_FOUND",
            AnalysisError::InvalidSpan { .. } | AnalysisError::SpanNotOnTokenBoundary { .. } => "INVALID_SPAN",
            AnalysisError::NonTargetOutOfRange { .. } => "NON_TARGET_OUTSIDE_SENTENCE",
            AnalysisError::NonTargetIsBos { .. } => "NON_TARGET_IS_BOS",
            AnalysisError::NonTargetOverlapsTarget { .. } => "NON_TARGET_OVERLAPS_TARGET",
            _ => "INVALID_SENTENCE",
        },
        _ => "INVALID_SENTENCE",
    }
}

/// An error about sentence `index` (`text`, tokenized into `ids`) as an [`InvalidSentence`] that
/// says what to do; an error about anything else comes back unchanged. `target` holds the target
/// word's token ids (empty for spans).
pub fn explain(
    error: Error,
    index: usize,
    text: &str,
    ids: &[u32],
    target: &[u32],
    tokenizer: &Tokenizer,
) -> Result<InvalidSentence, Error> {
    let about = match &error {
        Error::Analysis(e) => e.sentence(),
        Error::Model(ModelError::BadInput { sentence, .. }) => Some(*sentence),
        _ => None,
    };
    if about != Some(index) {
        return Err(error);
    }
    let reason = match &error {
        Error::Analysis(AnalysisError::TargetNotFound { target, .. }) => target_not_found(*target, ids, tokenizer),
        Error::Analysis(AnalysisError::TargetTokensNotFound { tokens, .. }) => target_word_not_found(tokens, tokenizer),
        Error::Analysis(AnalysisError::NonTargetOutOfRange { position, num_tokens, .. }) if *position < 0 => {
            first_token_target(*position, *num_tokens, ids, target, tokenizer)
        }
        Error::Model(ModelError::BadInput { reason, .. }) => reason.clone(),
        other => {
            let message = other.to_string();
            message.strip_prefix(&format!("sentence {index}: ")).unwrap_or(&message).to_string()
        }
    };
    Ok(InvalidSentence { index, quote: quote(text), code: code(&error).to_string(), reason })
}

/// A target that is the sentence's first token has no token before it: the fixes that exist
/// (a token after it, a marked non-target, or another spelling of the word that occurs later).
fn first_token_target(position: i64, num_tokens: usize, ids: &[u32], target: &[u32], tokenizer: &Tokenizer) -> String {
    let mut message = format!(
        "non-target position {position} is outside the sentence's {num_tokens} tokens: the target is its first \
         token, so no token comes before it; compare with the token after it (non_target_offset 1, CLI --offset 1), \
         or mark a non-target with {{{{word}}}} (CLI --marked)"
    );
    let later = match target {
        [id] => tokenizer.decode(&[*id]).ok().and_then(|text| {
            spellings(text.trim_start_matches('\u{2581}')).into_iter().find_map(|candidate| {
                match tokenizer.word_id(&candidate) {
                    Ok(Ok(other)) => ids.iter().skip(1).position(|&i| i == other).map(|p| (candidate, other, p + 1)),
                    _ => None,
                }
            })
        }),
        _ => None,
    };
    if let Some((candidate, id, at)) = later {
        message.push_str(&format!(", or target {candidate:?} ({id}), which occurs at position {at}"));
    }
    message
}

/// `target token 372 "her" not found; did you mean " her" (607)?`
fn target_not_found(target: u32, ids: &[u32], tokenizer: &Tokenizer) -> String {
    let Ok(text) = tokenizer.decode(&[target]) else {
        return format!("target token {target} not found");
    };
    let mut message = format!("target token {target} {text:?} not found");
    // Each spelling as a target_text naming it would resolve (SentencePiece: " her" and "her" alike).
    let present = spellings(text.trim_start_matches('\u{2581}')).into_iter().find_map(|candidate| {
        match tokenizer.word_id(&candidate) {
            Ok(Ok(id)) if ids.contains(&id) => Some((candidate, id)),
            _ => None,
        }
    });
    if let Some((candidate, id)) = present {
        message.push_str(&format!("; did you mean {candidate:?} ({id})?"));
    }
    message
}

/// `target tokens ["her", "self"] (ids [372, 944]) not found; inside a sentence the word carries its
/// leading space: " herself" is one token (5223)`.
fn target_word_not_found(ids: &[u32], tokenizer: &Tokenizer) -> String {
    let pieces: Option<Vec<String>> = ids.iter().map(|&id| tokenizer.id_to_token(id)).collect();
    let mut message = match &pieces {
        Some(pieces) => format!("target tokens {pieces:?} (ids {ids:?}) not found"),
        None => format!("target tokens {ids:?} not found"),
    };
    if let Ok(text) = tokenizer.decode(ids) {
        if !text.starts_with(char::is_whitespace) {
            let spaced = format!(" {text}");
            if let Ok(Ok(id)) = tokenizer.word_id(&spaced) {
                message.push_str(&format!(
                    "; inside a sentence the word carries its leading space: {spaced:?} is one token ({id})"
                ));
            }
        }
    }
    message
}

/// The likeliest intended spellings of a token: leading space toggled (GPT-2 words inside a
/// sentence carry it), then the first letter's case toggled, then both.
fn spellings(text: &str) -> Vec<String> {
    let spaced = match text.strip_prefix(' ') {
        Some(bare) => bare.to_string(),
        None => format!(" {text}"),
    };
    let recased = |s: &str| {
        let start = s.len() - s.trim_start().len();
        let mut chars = s[start..].chars();
        chars.next().map(|c| {
            let flipped: String =
                if c.is_uppercase() { c.to_lowercase().collect() } else { c.to_uppercase().collect() };
            format!("{}{flipped}{}", &s[..start], chars.as_str())
        })
    };
    let mut out: Vec<String> = Vec::new();
    for candidate in [Some(spaced.clone()), recased(text), recased(&spaced)].into_iter().flatten() {
        if candidate != text && !out.contains(&candidate) {
            out.push(candidate);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_shortened_on_a_character_boundary() {
        assert_eq!(quote("I saw her."), "\"I saw her.\"");
        let long = "é".repeat(100);
        let q = quote(&long);
        assert_eq!(q.chars().count(), QUOTE_CHARS + 3, "{q}");
        assert!(q.ends_with("…\""), "{q}");
    }

    #[test]
    fn suggestions_name_the_spelling_that_occurs() {
        let tok = crate::model::metaspace_fixture();
        let ids = |text: &str| tok.encode(text).unwrap().ids;
        let her = tok.word_id(" her").unwrap().unwrap();
        let sentence = ids("Her dog saw a");
        let message = target_not_found(her, &sentence, &tok);
        let capital = tok.word_id("Her").unwrap().unwrap();
        assert!(message.ends_with(&format!("did you mean \"Her\" ({capital})?")), "{message}");
        let gpt2 = Tokenizer::from_file(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/gpt2-tiny-random/tokenizer.json"),
        )
        .unwrap();
        let initial = gpt2.word_id("her").unwrap().unwrap();
        let message = target_not_found(607, &gpt2.encode("her dog saw").unwrap().ids, &gpt2);
        assert!(message.ends_with(&format!("did you mean \"her\" ({initial})?")), "{message}");
    }

    #[test]
    fn spellings_toggle_the_space_then_the_case() {
        assert_eq!(spellings("her"), [" her", "Her", " Her"]);
        assert_eq!(spellings(" Her"), ["Her", " her", "her"]);
        assert_eq!(spellings("."), [" ."]);
    }
}
