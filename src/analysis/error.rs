//! Errors of the analysis core.
//!
//! Conventions used by every variant:
//! * `sentence` is the 0-based index of the sentence in the request;
//! * `layer` is the 1-based layer transition (layer `l` compares hidden state `l - 1` with
//!   hidden state `l`), the same numbering as [`crate::analysis::stats::LayerTest::layer`];
//! * `hidden_state` is the 0-based hidden-state index (0 = embeddings);
//! * `position` is the 0-based token position within the sentence.

/// Everything that can go wrong in the analysis core. No function of this module passes a NaN
/// on silently: degenerate input is reported with one of these variants instead.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum AnalysisError {
    /// `angle_between` got a vector of zero norm (or an empty one): its direction, hence the
    /// angle, is undefined.
    #[error("angle undefined: a vector has zero norm")]
    ZeroVector,
    /// `angle_between` got vectors of different lengths.
    #[error("vectors have different lengths ({a} and {b})")]
    LengthMismatch { a: usize, b: usize },
    /// `angle_between` got a vector with a NaN or infinite component (or one whose norm
    /// overflows).
    #[error("a vector has a non-finite component or norm")]
    NonFiniteVector,

    /// The target token does not occur in the sentence.
    #[error("sentence {sentence}: target token {target} not found")]
    TargetNotFound { sentence: usize, target: u32 },
    /// `target position + offset` falls outside the sentence's real tokens.
    #[error("sentence {sentence}: non-target position {position} is outside the sentence's {num_tokens} tokens")]
    NonTargetOutOfRange { sentence: usize, position: i64, num_tokens: usize },
    /// The non-target falls on the BOS token the tokenizer puts before the text (the target is the
    /// sentence's first word) and the request did not allow it.
    #[error(
        "sentence {sentence}: the non-target (position {position}) is the BOS token the tokenizer puts before \
         the text, not a word of the sentence; allow it with allow_bos_non_target (CLI --allow-bos-non-target), \
         or give the target a word before it"
    )]
    NonTargetIsBos { sentence: usize, position: usize },
    /// A non-target offset of 0 would compare the target with itself.
    #[error("sentence {sentence}: non-target offset 0 would make the non-target the target itself")]
    NonTargetIsTarget { sentence: usize },

    /// The target word has no tokens.
    #[error("the target has no tokens")]
    EmptyTarget,
    /// An occurrence number of 0 (they count from 1).
    #[error("occurrence numbers count from 1 (the first occurrence is 1)")]
    InvalidOccurrence,
    /// A target word of several tokens does not occur in the sentence.
    #[error("sentence {sentence}: target tokens {tokens:?} not found")]
    TargetTokensNotFound { sentence: usize, tokens: Vec<u32> },
    /// The target occurs fewer times than the occurrence asked for.
    #[error("sentence {sentence}: occurrence {wanted} of the target asked for, but it occurs {found} time(s)")]
    OccurrenceNotFound { sentence: usize, wanted: usize, found: usize },
    /// A character span is empty, reversed or beyond the sentence's end.
    #[error("sentence {sentence}: span ({start}, {end}) is not a non-empty range of its {num_chars} characters")]
    InvalidSpan { sentence: usize, start: usize, end: usize, num_chars: usize },
    /// A character span cuts a token (or covers none): it must start and end on token boundaries.
    #[error("sentence {sentence}: span ({start}, {end}) does not start and end on token boundaries")]
    SpanNotOnTokenBoundary { sentence: usize, start: usize, end: usize },

    /// A non-target span shares a token with the target word.
    #[error("sentence {sentence}: the non-target span shares a token with the target")]
    NonTargetOverlapsTarget { sentence: usize },

    /// The hidden-state tensor does not have one row per token id.
    #[error("sentence {sentence}: {num_ids} token ids but hidden states for {hidden_tokens} tokens")]
    TokenCountMismatch { sentence: usize, num_ids: usize, hidden_tokens: usize },
    /// Fewer than two hidden states (embeddings + at least one layer) were given.
    #[error("sentence {sentence}: {found} hidden state(s); need at least 2 (embeddings + 1 layer)")]
    TooFewHiddenStates { sentence: usize, found: usize },
    /// The hidden size is zero.
    #[error("sentence {sentence}: hidden size is 0")]
    EmptyHiddenSize { sentence: usize },
    /// A hidden-state vector used in an angle is all zeros.
    #[error("sentence {sentence}: hidden state {hidden_state} at position {position} is the zero vector")]
    ZeroHiddenState { sentence: usize, hidden_state: usize, position: usize },
    /// A hidden-state vector used in an angle has a NaN or infinite component.
    #[error("sentence {sentence}: hidden state {hidden_state} at position {position} is not finite")]
    NonFiniteHiddenState { sentence: usize, hidden_state: usize, position: usize },
    /// The states of a forward pass do not have the model's layout (hidden states, then sub-layer states).
    #[error("sentence {sentence}: {found} states, expected {expected} (the model's hidden and sub-layer states)")]
    StateCountMismatch { sentence: usize, expected: usize, found: usize },
    /// The model returned only some vectors (a gathering graph) and not this one.
    #[error("sentence {sentence}: hidden state {hidden_state} at position {position} was not returned by the model")]
    MissingHiddenVector { sentence: usize, hidden_state: usize, position: usize },

    /// `Rotations::assemble` got no sentences.
    #[error("no sentences")]
    NoSentences,
    /// `Rotations::assemble` got the same row (sentence index and occurrence) twice.
    #[error("sentence {sentence}: occurrence {occurrence} appears more than once")]
    DuplicateSentence { sentence: usize, occurrence: usize },
    /// Sentences disagree on the number of layers (or a sentence's arrays are malformed).
    #[error("sentence {sentence}: {found} layers, expected {expected}")]
    LayerCountMismatch { sentence: usize, expected: usize, found: usize },

    /// A paired t-test needs at least two sentences (pairs).
    #[error("need at least 2 sentences for a paired t-test, got {n}")]
    NotEnoughSentences { n: u64 },
    /// There are no layers to test.
    #[error("no layers to test")]
    NoLayers,
    /// An angle is NaN or infinite.
    #[error("layer {layer}, sentence {sentence}: angle is not finite")]
    NonFinite { layer: usize, sentence: usize },
    /// A paired difference is too large for exact accumulation (`|a − b| ≥ 2^31`; angles never are).
    #[error("layer {layer}, sentence {sentence}: paired difference of 2^31 or more cannot be accumulated exactly")]
    DifferenceOutOfRange { layer: usize, sentence: usize },
    /// An angle is too large for exact accumulation (`|angle| ≥ 2^31`; real angles never are).
    #[error("layer {layer}, sentence {sentence}: angle of 2^31 or more cannot be accumulated exactly")]
    AngleOutOfRange { layer: usize, sentence: usize },
    /// Pairwise angle matrices of different sizes (hidden states) cannot be summed.
    #[error("angle matrix of side {found} where {expected} was expected")]
    MatrixSizeMismatch { expected: usize, found: usize },
    /// An entry of a pairwise angle matrix is not finite or is `2^31` or more.
    #[error("sentence {sentence}: angle matrix entry ({row}, {column}) is not a finite angle")]
    MatrixEntryOutOfRange { sentence: usize, row: usize, column: usize },
    /// The two groups of a two-group test have different numbers of layers.
    #[error("group A has {layers_a} layers and group B {layers_b}; they must be equal")]
    GroupLayerMismatch { layers_a: usize, layers_b: usize },
    /// Merged statistics of a layer contain a NaN or infinite sum.
    #[error("layer {layer}: paired statistics are not finite")]
    NonFiniteStats { layer: usize },
    /// A condition index is not below the number of conditions.
    #[error("condition {condition} out of range (there are {num_conditions} conditions)")]
    ConditionOutOfRange { condition: usize, num_conditions: usize },
    /// Both sides of the paired test are the same condition.
    #[error("condition_a and condition_b are both {condition}")]
    SameCondition { condition: usize },
    /// `alpha` is not strictly between 0 and 1.
    #[error("alpha must be in (0, 1), got {alpha}")]
    InvalidAlpha { alpha: f64 },
    /// The multiple-comparison family size is 0 or smaller than the number of tested layers.
    #[error("num_tests must be at least the number of tested layers ({num_layers}), got {num_tests}")]
    InvalidNumTests { num_tests: usize, num_layers: usize },
}

impl AnalysisError {
    /// The sentence an error is about, for the variants that name one.
    pub fn sentence(&self) -> Option<usize> {
        match *self {
            Self::TargetNotFound { sentence, .. }
            | Self::TargetTokensNotFound { sentence, .. }
            | Self::OccurrenceNotFound { sentence, .. }
            | Self::InvalidSpan { sentence, .. }
            | Self::MatrixEntryOutOfRange { sentence, .. }
            | Self::SpanNotOnTokenBoundary { sentence, .. }
            | Self::NonTargetOutOfRange { sentence, .. }
            | Self::NonTargetIsBos { sentence, .. }
            | Self::NonTargetIsTarget { sentence }
            | Self::NonTargetOverlapsTarget { sentence }
            | Self::TokenCountMismatch { sentence, .. }
            | Self::TooFewHiddenStates { sentence, .. }
            | Self::EmptyHiddenSize { sentence }
            | Self::ZeroHiddenState { sentence, .. }
            | Self::NonFiniteHiddenState { sentence, .. }
            | Self::DuplicateSentence { sentence, .. }
            | Self::LayerCountMismatch { sentence, .. } => Some(sentence),
            _ => None,
        }
    }
}
