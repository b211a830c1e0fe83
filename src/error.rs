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
            Error::Overloaded(_) => Code::ResourceExhausted,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::NotReady | Error::ShuttingDown => Code::Unavailable,
        };
        Status::new(code, e.to_string())
    }
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
