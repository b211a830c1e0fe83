//! The service's one error type, and its one mapping to gRPC status codes (and to the structured
//! details a client reads: `google.rpc.BadRequest` for invalid sentences).
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::analysis::AnalysisError;
use crate::engine::InvalidSentence;
use crate::model::ModelError;

/// The message lists invalid sentences until it holds this many bytes (gRPC clients refuse
/// trailers beyond 8 KiB by default, and the details repeat the list)…
const LISTED_BYTES: usize = 2000;
/// …or this many sentences; it says how many more there are.
const LISTED_MOST: usize = 20;
/// A reason is cut to this many characters in the list.
const REASON_CHARS: usize = 300;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input the analysis cannot use (target missing in a sentence, too few sentences, …).
    #[error(transparent)]
    Analysis(#[from] AnalysisError),

    #[error(transparent)]
    Model(#[from] ModelError),

    /// A request field that is missing or malformed.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },

    /// Sentences the engine cannot use, every one of the request: each one's index, the sentence
    /// quoted (shortened) and why.
    #[error("{}", invalid_message(.invalid, *.total, *.skipping))]
    Sentences {
        invalid: Vec<InvalidSentence>,
        /// Sentences of the request (to say when none is left).
        total: usize,
        /// Corpus index of the request's first sentence (the details name request fields).
        first_index: usize,
        /// With skip_invalid: too few sentences are left (none, or one for a t-test).
        skipping: bool,
    },

    /// An error of one group of a CompareGroups request.
    #[error("groups[{index}] ({label:?}): {error}")]
    InGroup { index: usize, label: String, error: Box<Error> },

    /// A configured limit was hit; says which and its value.
    #[error("{0}")]
    Overloaded(String),

    /// The answer cannot fit in one message (`--max-message-bytes`): retrying the same request
    /// cannot help, so the status tells clients not to (see [`NO_RETRY`]).
    #[error("result too large: {0}")]
    ResultTooLarge(String),
    /// The request needs something the served model lacks (e.g. sub-layer states in its graph).
    #[error("{0}")]
    FailedPrecondition(String),

    #[error("the model is not loaded yet")]
    NotReady,

    #[error("the server is shutting down")]
    ShuttingDown,
}

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument { field: field.into(), reason: reason.into() }
    }
}

/// `sentence 3 ("…"): reason`, one a line under a count when there are several; the list stops
/// at [`LISTED_MOST`] sentences or [`LISTED_BYTES`] and says how many more there are.
fn invalid_message(invalid: &[InvalidSentence], total: usize, skipping: bool) -> String {
    let listed = listed(invalid);
    let lines: Vec<String> = invalid[..listed].iter().map(|s| short(s).to_string()).collect();
    let n = invalid.len();
    let mut message = if n == 1 && !skipping {
        return lines.join("");
    } else if n == total {
        format!("every sentence is invalid, none is left to analyse ({n}):\n")
    } else if skipping {
        format!("only {} of {total} sentences are valid and the t-test needs 2; the {n} invalid:\n", total - n)
    } else {
        format!("{n} of {total} sentences are invalid (skip_invalid analyses the others):\n")
    };
    message.push_str(&lines.join("\n"));
    if listed < invalid.len() {
        message.push_str(&format!("\nand {} more", thousands(invalid.len() - listed)));
    }
    message
}

/// How many of `invalid` the message and the details list.
fn listed(invalid: &[InvalidSentence]) -> usize {
    let mut bytes = 0;
    let fits = invalid.iter().take(LISTED_MOST).take_while(|s| {
        bytes += short(s).to_string().len() + 1;
        bytes <= LISTED_BYTES
    });
    fits.count().max(1)
}

/// The sentence with its reason cut to [`REASON_CHARS`].
fn short(s: &InvalidSentence) -> InvalidSentence {
    let mut s = s.clone();
    if let Some((cut, _)) = s.reason.char_indices().nth(REASON_CHARS) {
        s.reason = format!("{}…", &s.reason[..cut]);
    }
    s
}

/// 1234567 as "1,234,567".
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Structured details of an error a client can act on field by field: every listed invalid
/// sentence as a `BadRequest` field violation (field `sentences[i]` of the request, reason its
/// code, description the reason in words), and an `ErrorInfo` (reason `INVALID_SENTENCES`) whose
/// metadata says how many there are in all (`invalid`) and the corpus index of `sentences[0]`.
fn details(e: &Error, prefix: &str) -> Option<ErrorDetails> {
    match e {
        Error::Sentences { invalid, first_index, .. } if !invalid.is_empty() => {
            let violations = invalid[..listed(invalid)].iter().map(|s| {
                let mut v =
                    FieldViolation::new(format!("{prefix}sentences[{}]", s.index - first_index), short(s).reason);
                v.reason = s.code.to_string();
                v
            });
            let mut details = ErrorDetails::with_bad_request(violations.collect::<Vec<_>>());
            // How many there are in all, and the corpus index of sentences[0] (fields count from it).
            let metadata: std::collections::HashMap<String, String> =
                [("invalid", invalid.len()), ("first_sentence_index", *first_index)]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
            details.set_error_info("INVALID_SENTENCES", "rotations", metadata);
            Some(details)
        }
        Error::InGroup { index, error, .. } => details(error, &format!("{prefix}groups[{index}].request.")),
        _ => None,
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = status_code(&e);
        let message = cap(&e.to_string(), MAX_MESSAGE_CHARS).into_owned();
        let mut status = match details(&e, "") {
            Some(details) => Status::with_error_details(code, message, details),
            None => Status::new(code, message),
        };
        if matches!(e, Error::ResultTooLarge(_)) {
            status.metadata_mut().insert(NO_RETRY.0, tonic::metadata::MetadataValue::from_static(NO_RETRY.1));
        }
        status
    }
}

fn status_code(e: &Error) -> Code {
    // Exhaustive on purpose: a new error variant does not compile until someone picks its code.
    match e {
        Error::Analysis(a) => analysis_code(a),
        Error::InGroup { error, .. } => status_code(error),
        Error::InvalidArgument { .. } | Error::Sentences { .. } => Code::InvalidArgument,
        Error::Model(m) => match m {
            ModelError::BadInput { .. } => Code::InvalidArgument,
            ModelError::WorkerGone => Code::Unavailable,
            ModelError::Runtime(_)
            | ModelError::NoModelDir { .. }
            | ModelError::MissingFile { .. }
            | ModelError::Manifest { .. }
            | ModelError::GraphMismatch(_)
            | ModelError::TokenizerMismatch { .. }
            | ModelError::Tokenizer(_)
            | ModelError::RuntimeLibrary { .. }
            | ModelError::ProviderUnavailable { .. } => Code::Internal,
        },
        Error::Overloaded(_) | Error::ResultTooLarge(_) => Code::ResourceExhausted,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::NotReady | Error::ShuttingDown => Code::Unavailable,
    }
}

/// gRPC's retry pushback (gRFC A6): a negative `grpc-retry-pushback-ms` tells a client not to
/// retry. Sent with RESOURCE_EXHAUSTED when the request itself is too large to answer, so that
/// clients tell it from a busy server (which they retry).
pub const NO_RETRY: (&str, &str) = ("grpc-retry-pushback-ms", "-1");

/// Longest status message or logged user text, in bytes: a request's own text (a target, a
/// sentence, a path) is quoted in errors and logs, and must not make them megabytes long. Room
/// for the list of invalid sentences ([`LISTED_BYTES`] and its header and "and N more"), and
/// within gRPC clients' default 8 KiB limit on trailers.
pub const MAX_MESSAGE_CHARS: usize = 4096;

/// `text` cut to at most `max` bytes (on a character boundary), saying how long it was.
pub fn cap(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}… ({} bytes in all)", &text[..end], text.len()))
}

/// What the client sent (INVALID_ARGUMENT) or a fault in the model's output or in our own code
/// (INTERNAL: retrying or changing the request cannot help).
fn analysis_code(e: &AnalysisError) -> Code {
    match e {
        AnalysisError::TargetNotFound { .. }
        | AnalysisError::EmptyTarget
        | AnalysisError::InvalidOccurrence
        | AnalysisError::TargetTokensNotFound { .. }
        | AnalysisError::OccurrenceNotFound { .. }
        | AnalysisError::InvalidSpan { .. }
        | AnalysisError::SpanNotOnTokenBoundary { .. }
        | AnalysisError::NonTargetOutOfRange { .. }
        | AnalysisError::NonTargetIsTarget { .. }
        | AnalysisError::NonTargetOverlapsTarget { .. }
        | AnalysisError::NonTargetIsBos { .. }
        | AnalysisError::NotEnoughSentences { .. }
        | AnalysisError::NoLayers
        | AnalysisError::NonFinite { .. }
        | AnalysisError::ConditionOutOfRange { .. }
        | AnalysisError::SameCondition { .. }
        | AnalysisError::InvalidAlpha { .. }
        | AnalysisError::InvalidNumTests { .. }
        | AnalysisError::DifferenceOutOfRange { .. }
        | AnalysisError::AngleOutOfRange { .. }
        | AnalysisError::GroupLayerMismatch { .. }
        | AnalysisError::MatrixSizeMismatch { .. }
        | AnalysisError::MatrixEntryOutOfRange { .. } => Code::InvalidArgument,
        AnalysisError::ZeroVector
        | AnalysisError::LengthMismatch { .. }
        | AnalysisError::NonFiniteVector
        | AnalysisError::TokenCountMismatch { .. }
        | AnalysisError::TooFewHiddenStates { .. }
        | AnalysisError::EmptyHiddenSize { .. }
        | AnalysisError::ZeroHiddenState { .. }
        | AnalysisError::NonFiniteHiddenState { .. }
        | AnalysisError::NoSentences
        | AnalysisError::DuplicateSentence { .. }
        | AnalysisError::LayerCountMismatch { .. }
        | AnalysisError::NonFiniteStats { .. }
        | AnalysisError::StateCountMismatch { .. }
        | AnalysisError::MissingHiddenVector { .. } => Code::Internal,
    }
}
