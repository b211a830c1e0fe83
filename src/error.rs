//! The service's one error type, and its one mapping to gRPC status codes.
use tonic::{Code, Status};

use crate::analysis::AnalysisError;
use crate::model::ModelError;

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

    /// A sentence the engine cannot use: its index, the sentence quoted (shortened) and why.
    #[error("sentence {index} ({quote}): {reason}")]
    Sentence { index: usize, quote: String, reason: String },

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

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        // Exhaustive on purpose: a new error variant does not compile until someone picks its code.
        let code = match &e {
            Error::Analysis(a) => analysis_code(a),
            Error::InvalidArgument { .. } | Error::Sentence { .. } => Code::InvalidArgument,
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
        };
        let mut status = Status::new(code, cap(&e.to_string(), MAX_MESSAGE_CHARS).into_owned());
        if matches!(e, Error::ResultTooLarge(_)) {
            status.metadata_mut().insert(NO_RETRY.0, tonic::metadata::MetadataValue::from_static(NO_RETRY.1));
        }
        status
    }
}

/// gRPC's retry pushback (gRFC A6): a negative `grpc-retry-pushback-ms` tells a client not to
/// retry. Sent with RESOURCE_EXHAUSTED when the request itself is too large to answer, so that
/// clients tell it from a busy server (which they retry).
pub const NO_RETRY: (&str, &str) = ("grpc-retry-pushback-ms", "-1");

/// Longest status message or logged user text, in bytes: a request's own text (a target, a
/// sentence, a path) is quoted in errors and logs, and must not make them megabytes long.
pub const MAX_MESSAGE_CHARS: usize = 2048;

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
