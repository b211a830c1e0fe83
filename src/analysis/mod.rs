//! The science of the service, as a pure module (no model runtime, no gRPC, no async).
//!
//! # What is measured
//!
//! A transformer keeps one vector per token (the residual stream) and each layer adds to it.
//! With `output_hidden_states` the model returns `num_layers + 1` hidden states per token:
//! state 0 is the embedding, state `l` the output of layer `l`. The notebook asks how much a
//! token's vector *rotates* from one layer to the next — the angle between hidden state
//! `l − 1` and hidden state `l` at the same position — and whether a target token (`" her"`)
//! rotates differently from the token just before it. Angles ignore vector length, which grows
//! strongly through GPT-2's layers, so they isolate changes of direction.
//!
//! Three conditions per sentence and layer transition `l` ([`rotations::CONDITIONS`]):
//! * **target** — the angle at the first occurrence of the target token ([`target::locate`]);
//! * **non_target** — the same at `target + offset` (default: the preceding token);
//! * **shuffled** — the angle between two vectors picked at random (random hidden state
//!   `1..=num_layers`, random real token), a baseline for unrelated vectors
//!   ([`shuffle::draws_for_sentence`]).
//!
//! Per layer, a paired t-test across sentences compares two conditions (default target vs
//! non-target), corrected for testing every layer ([`stats::test_layers`]).
//!
//! # Differences from the notebook (deliberate fixes)
//!
//! * Angles use Kahan's `2·atan2(‖â − b̂‖, ‖â + b̂‖)` in f64 instead of float32
//!   `acos(cos)`, which returns 0 or NaN for the tiny rotations of late layers
//!   ([`angles::angle_between`]).
//! * Only real tokens are used: the shuffled condition never picks padding, and a target at
//!   position 0 is an error instead of silently wrapping `-1` to the last (padding) token.
//! * The shuffled draws are seeded and per-sentence (ChaCha20, one stream per sentence), so
//!   results are reproducible and independent of batching or sharding.
//! * Bonferroni divides by the number of tests (48 layer transitions for GPT-2 XL), not by
//!   the number of hidden states (49); other corrections (Holm, Benjamini–Hochberg) exist.
//! * Per-layer statistics are exact integer sums ([`stats::PairedStats`]), so streaming and
//!   sharding merge them to the very same t-tests as one whole request.
//!
//! # Further analyses (issue 16)
//!
//! * Which token: [`select`] finds the first, last, n-th or every occurrence of a word (one or
//!   several tokens), maps a character span to tokens through the tokenizer's offsets, and picks
//!   the sub-token standing for a word (last by default: in a causal model only the last has seen
//!   the whole word).
//!   Each chosen occurrence is a row ([`rotate_row`]) with shuffled draws of its own
//!   ([`draws_for_row`]: keyed by sentence and occurrence).
//! * Two groups of sentences (served by `CompareGroups`): [`groups`] runs Welch's t-test and Hedges' g per layer from each
//!   group's exact moments ([`moments::ExactMoments`], the accumulator behind [`PairedStats`]).
//! * Across all layers: [`trajectory`] gives the angle between every pair of hidden states of a
//!   token, the cumulative angle from the embedding, and an exact mean over rows
//!   ([`RotationOptions::all_layers`]).
//!
//! Numbering conventions: sentences are 0-based request indices; layers (transitions) are
//! 1-based; hidden states are 0-based (0 = embeddings); token positions are 0-based.

pub mod angles;
mod error;
pub mod groups;
pub mod moments;
pub mod norms;
pub mod rotations;
pub mod select;
pub mod shuffle;
pub mod stats;
pub mod student_t;
pub mod sublayers;
pub mod target;
pub mod trajectory;
pub mod vectors;

pub use angles::{angle_between, AngleUnit};
pub use error::AnalysisError;
pub use groups::{
    check_group_options, condition_moments, group_moments, merge_conditions, welch_layers, GroupFlag, GroupLayerTest,
    GroupResult,
};
pub use moments::ExactMoments;
pub use norms::{growth, norm_tensors, row_norms};
pub use rotations::{
    check_rows_bos, locate_target, rotate_row, rotate_sentence, rows_vectors_read, vectors_read, RotationOptions,
    Rotations, SentenceRotations, CONDITIONS,
};
pub use select::{
    find_occurrences, non_target_position, numbered_occurrences, select_rows, span_to_tokens, sub_token_vector,
    NonTargetSelector, Occurrence, RowSelection, SubToken, TargetSelector, TokenRange, TokenizedSentence,
};
pub use shuffle::{draws_after_prefix, draws_for_row, draws_for_sentence, ShuffleDraw, DEFAULT_SHUFFLE_SEED};
pub use stats::{
    adjust_p_values, check_options, fixed_point, merge_layers, paired_stats, t_quantile, test_layers,
    test_layers_from_stats, two_sided_p, Correction, Direction, LayerFlag, LayerTest, PairedStats, SignificanceOptions,
    SignificanceResult, CI_LEVEL, EXACT_SCALE_BITS, MAX_ABS_DIFFERENCE,
};
pub use sublayers::{
    step_angles, step_stats, step_tensor, step_test_options, FirstStates, StateLayout, STEPS, STEP_CONDITIONS,
};
pub use target::{locate, Positions, DEFAULT_NON_TARGET_OFFSET};
pub use trajectory::{cumulative_angles, pairwise_angles, AngleMatrixSum};
pub use vectors::{row_vectors, HiddenVectors, VectorSelection};
