//! Wire messages ↔ domain types, at the edge: the core never sees unchecked input.
use ndarray::{Array3, ArrayView2, ArrayView3, Axis};

use crate::analysis::VectorSelection;
use crate::analysis::{
    condition_moments, cumulative_angles, step_test_options, test_layers_from_stats, AngleMatrixSum, AngleUnit,
    Correction, Direction, ExactMoments, GroupFlag, GroupLayerTest, GroupResult, LayerFlag, LayerTest, Occurrence,
    PairedStats, Rotations, SignificanceOptions, SignificanceResult, SubToken, CONDITIONS, DEFAULT_NON_TARGET_OFFSET,
    DEFAULT_SHUFFLE_SEED, STEPS, STEP_CONDITIONS,
};
use crate::engine::{InvalidSentence, RotationJob, Selection, Target, VectorDtype, VectorRequest};
use crate::error::Error;
use crate::model::{ModelInfo, Tokenized};
use crate::proto;

/// Request-size limits checked before any work.
#[derive(Clone, Copy, Debug)]
pub struct RequestLimits {
    /// Most sentences in one unary request.
    pub max_sentences: usize,
    /// Most sentences in one StreamRotations request.
    pub max_stream_sentences: usize,
}

/// Sizes of single inputs, checked at the edge before any work.
#[derive(Clone, Copy, Debug)]
pub struct InputLimits {
    /// Longest text (a sentence, or a text to tokenize) in UTF-8 bytes.
    pub max_text_bytes: usize,
    /// Most values in a TestSignificance angle tensor.
    pub max_tensor_values: usize,
    /// Largest message either way (`--max-message-bytes`).
    pub max_message_bytes: usize,
}

/// Longest `target_text`: a word (or a few tokens), quoted in errors and logs.
pub const MAX_TARGET_TEXT_BYTES: usize = 1024;

/// Default of `--max-text-bytes`: far above any sentence of GPT-2's 1024 positions.
pub const DEFAULT_MAX_TEXT_BYTES: usize = 64 * 1024;
/// Default of `--max-message-bytes`.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Default of `--max-tensor-values`: what a default message can hold (4 bytes a packed f32 value),
/// less 64 KiB for the rest of the request.
pub const DEFAULT_MAX_TENSOR_VALUES: usize = (DEFAULT_MAX_MESSAGE_BYTES - 64 * 1024) / 4;

impl Default for InputLimits {
    fn default() -> Self {
        Self {
            max_text_bytes: DEFAULT_MAX_TEXT_BYTES,
            max_tensor_values: DEFAULT_MAX_TENSOR_VALUES,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// An upper bound of the encoded size of one rotation result (a RotationResult in an Analysis, with
/// its tests and statistics) of `num_rows` rows: per row and layer 3 packed f32 angles (12 bytes)
/// and a ShuffleDraw (at most 4 varints of 6 bytes and 2 of framing), per row a SentenceReport (at
/// most 9·6 + 2 bytes) and, with `row_matrices`, its `[L+1, L+1]` f32 matrix; per layer at most 600
/// bytes (its means, a LayerTest, three conditions' LayerStatistics, a GroupLayerTest); with
/// `all_layers` the mean matrix and its exact sums (20 bytes an entry, and framing); with vectors
/// [`vector_row_bytes`] a row; 4 KiB of names and framing. Conservative, so that a result that passes
/// always fits.
pub fn result_bound(info: &ModelInfo, num_rows: usize, job: &RotationJob) -> u128 {
    let (layers, states) = (info.num_layers as u128, info.num_layers as u128 + 1);
    let selection = &job.selection;
    let matrix = if selection.row_matrices { 4 * states * states + 8 } else { 0 };
    // Sub-layer steps: per row [L, 2, 2] f32 angles; per step a LayerTest and its statistics.
    let (step_row, step_layer) = if job.steps { (16 * layers + 16, 1200 * layers) } else { (0, 0) };
    // Norms: per row three conditions' norm at every state and growth per layer; per state the
    // means and exact sums of norms and growth.
    let (norm_row, norm_state) = if job.norms { (12 * states + 12 * layers + 16, 600 * states) } else { (0, 0) };
    let per_row = 38 * layers + 56 + matrix + step_row + norm_row + vector_row_bytes(info, job);
    let all_layers = if selection.all_layers { 24 * states * states + 64 } else { 0 };
    // Vectors: their shape, state indices and each condition's length prefix.
    let vector_fixed = if job.vectors.is_some() { 6 * 2 * info.state_layout().num_states() as u128 + 64 } else { 0 };
    per_row * num_rows as u128 + 600 * layers + step_layer + norm_state + all_layers + vector_fixed + 4096
}

/// The bytes one row's vectors take (RotationRequest.vectors): conditions × states × hidden size
/// values of the dtype's size; 0 without vectors. Unchecked states count as every state.
pub fn vector_row_bytes(info: &ModelInfo, job: &RotationJob) -> u128 {
    let Some(v) = &job.vectors else { return 0 };
    let states = if v.states.is_empty() { info.state_layout().num_states() } else { v.states.len() };
    let conditions = if v.conditions.is_empty() { 2 } else { v.conditions.len() };
    (conditions * states * info.hidden_size * v.dtype.bytes()) as u128
}

/// Refuses, before any work, an answer whose bound ([`result_bound`], summed over a request's
/// parts) exceeds the message limit: [`Error::ResultTooLarge`], which clients do not retry.
pub fn check_result_bound(bound: u128, rows: usize, max_bytes: usize) -> Result<(), Error> {
    if bound > max_bytes as u128 {
        return Err(Error::ResultTooLarge(format!(
            "the answer for {rows} rows may take up to {bound} bytes, over the message limit of {max_bytes} \
             bytes (max_message_bytes); send fewer sentences or use StreamRotations"
        )));
    }
    Ok(())
}

/// Refuses a text longer than `max_bytes`, naming it by index and the limit.
pub fn check_texts(field: &str, texts: &[String], max_bytes: usize) -> Result<(), Error> {
    match texts.iter().position(|t| t.len() > max_bytes) {
        Some(i) => Err(Error::invalid(
            format!("{field}[{i}]"),
            format!("{} bytes exceed the limit of {max_bytes} per text (max_text_bytes)", texts[i].len()),
        )),
        None => Ok(()),
    }
}

/// Refuses more than `limit` items, naming the limit and its value.
pub fn check_count(field: &str, count: usize, limit: usize, limit_name: &str) -> Result<(), Error> {
    if count > limit {
        return Err(Error::invalid(
            field,
            format!("{count} exceed the limit of {limit} per request ({limit_name}); split the input or use StreamRotations"),
        ));
    }
    Ok(())
}

/// A rotation request as a job; at most `max_sentences` sentences (the limit named `limit_name`).
pub fn rotation_job(
    req: &proto::RotationRequest,
    max_sentences: usize,
    limit_name: &str,
) -> Result<RotationJob, Error> {
    if req.sentences.is_empty() {
        return Err(Error::invalid("sentences", "no sentences given"));
    }
    check_count("sentences", req.sentences.len(), max_sentences, limit_name)?;
    let first_index = first_sentence_index(req)?;
    let target = match &req.target {
        Some(_) if !req.target_spans.is_empty() => {
            return Err(Error::invalid("target_spans", "give target_spans or target_text/target_token_id, not both"));
        }
        Some(proto::rotation_request::Target::TargetText(t)) if t.len() > MAX_TARGET_TEXT_BYTES => {
            let reason = format!("{} bytes exceed the limit of {MAX_TARGET_TEXT_BYTES} for a target word", t.len());
            return Err(Error::invalid("target_text", reason));
        }
        Some(proto::rotation_request::Target::TargetText(t)) if !t.is_empty() => Target::Text(t.clone()),
        Some(proto::rotation_request::Target::TargetText(_)) => {
            return Err(Error::invalid("target_text", "is empty"));
        }
        Some(proto::rotation_request::Target::TargetTokenId(id)) => Target::Id(*id),
        None if !req.target_spans.is_empty() => Target::Spans(char_spans("target_spans", req)?),
        None => {
            return Err(Error::invalid(
                "target",
                "set target_text (e.g. \" her\"), target_token_id, or target_spans (one per sentence)",
            ))
        }
    };
    Ok(RotationJob {
        sentences: req.sentences.clone(),
        target,
        unit: angle_unit(req.unit)?,
        non_target_offset: req.non_target_offset.unwrap_or(DEFAULT_NON_TARGET_OFFSET),
        seed: req.shuffle_seed.unwrap_or(DEFAULT_SHUFFLE_SEED),
        first_index,
        selection: selection(req)?,
        allow_bos_non_target: req.allow_bos_non_target,
        steps: steps(req.steps)?,
        norms: req.norms,
        skip_invalid: req.skip_invalid,
        vectors: req.vectors.as_ref().map(vector_request).transpose()?,
        validate_only: req.validate_only,
    })
}

/// RotationRequest.vectors as asked (checked against the model by the engine).
fn vector_request(v: &proto::VectorOptions) -> Result<VectorRequest, Error> {
    let dtype = match proto::VectorDtype::try_from(v.dtype) {
        Ok(proto::VectorDtype::Unspecified | proto::VectorDtype::Float32) => VectorDtype::F32,
        Ok(proto::VectorDtype::Float16) => VectorDtype::F16,
        Err(_) => return Err(Error::invalid("vectors.dtype", format!("unknown VectorDtype value {}", v.dtype))),
    };
    let indices = |values: &[u32]| values.iter().map(|&x| x as usize).collect();
    Ok(VectorRequest { states: indices(&v.states), conditions: indices(&v.conditions), dtype })
}

/// The rows' vectors on the wire (`None` unless asked for): per chosen condition, the rows'
/// `[states, hidden]` vectors one after the other, little-endian, as float32 or rounded to float16.
///
/// # Errors
/// A row without vectors, or of another shape (an internal error: every row is computed alike).
pub fn vectors(
    r: &Rotations,
    chosen: Option<&VectorSelection>,
    dtype: VectorDtype,
) -> Result<Option<proto::Vectors>, Error> {
    let Some(chosen) = chosen else { return Ok(None) };
    let hidden = r.sentences.iter().find_map(|s| s.vectors.as_ref()).map_or(0, |v| v.dim().2);
    let shape = (chosen.conditions.len(), chosen.states.len(), hidden);
    let per_row = chosen.states.len() * hidden * dtype.bytes();
    let mut data = vec![Vec::with_capacity(per_row * r.sentences.len()); chosen.conditions.len()];
    for row in &r.sentences {
        let v = row.vectors.as_ref().filter(|v| v.dim() == shape).ok_or_else(|| {
            crate::model::ModelError::Runtime(format!("sentence {}: its vectors are missing or misshapen", row.index))
        })?;
        for (c, bytes) in data.iter_mut().enumerate() {
            let values = v.index_axis(Axis(0), c);
            match dtype {
                VectorDtype::F32 => bytes.extend(values.iter().flat_map(|x| x.to_le_bytes())),
                VectorDtype::F16 => bytes.extend(values.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes())),
            }
        }
    }
    Ok(Some(proto::Vectors {
        shape: vec![r.sentences.len() as u32, chosen.states.len() as u32, hidden as u32],
        dtype: match dtype {
            VectorDtype::F32 => proto::VectorDtype::Float32,
            VectorDtype::F16 => proto::VectorDtype::Float16,
        } as i32,
        states: chosen.states.iter().map(|&s| s as u32).collect(),
        conditions: chosen.conditions.iter().map(|&c| c as u32).collect(),
        data,
    }))
}

/// RotationRequest.steps: whether the step angles are asked for.
fn steps(raw: i32) -> Result<bool, Error> {
    match proto::Steps::try_from(raw) {
        Ok(proto::Steps::Unspecified | proto::Steps::Layers) => Ok(false),
        Ok(proto::Steps::Sublayers) => Ok(true),
        Err(_) => Err(Error::invalid("steps", format!("unknown Steps value {raw}"))),
    }
}

/// Occurrence, non-target spans, sub-token and all-layers options of a request.
fn selection(req: &proto::RotationRequest) -> Result<Selection, Error> {
    if req.non_target_offset.is_some() && !req.non_target_spans.is_empty() {
        return Err(Error::invalid("non_target_spans", "give non_target_spans or non_target_offset, not both"));
    }
    if req.row_matrices && !req.all_layers {
        return Err(Error::invalid("row_matrices", "needs all_layers"));
    }
    let non_target_spans =
        if req.non_target_spans.is_empty() { Vec::new() } else { char_spans("non_target_spans", req)? };
    Ok(Selection {
        occurrence: occurrence(req)?,
        non_target_spans,
        sub_token: match proto::SubToken::try_from(req.sub_token) {
            Ok(proto::SubToken::Unspecified | proto::SubToken::Last) => SubToken::Last,
            Ok(proto::SubToken::First) => SubToken::First,
            Ok(proto::SubToken::Mean) => SubToken::Mean,
            Err(_) => return Err(Error::invalid("sub_token", format!("unknown SubToken value {}", req.sub_token))),
        },
        all_layers: req.all_layers,
        row_matrices: req.row_matrices,
    })
}

fn occurrence(req: &proto::RotationRequest) -> Result<Occurrence, Error> {
    let n = req.occurrence_number;
    let kind = proto::Occurrence::try_from(req.occurrence);
    if n != 0 && kind != Ok(proto::Occurrence::Nth) {
        return Err(Error::invalid("occurrence_number", "is used only with OCCURRENCE_NTH"));
    }
    let first = matches!(kind, Ok(proto::Occurrence::Unspecified | proto::Occurrence::First));
    if !req.target_spans.is_empty() && !first {
        return Err(Error::invalid("occurrence", "chooses among a target word's occurrences, not with target_spans"));
    }
    match kind {
        Ok(proto::Occurrence::Unspecified | proto::Occurrence::First) => Ok(Occurrence::First),
        Ok(proto::Occurrence::Last) => Ok(Occurrence::Last),
        Ok(proto::Occurrence::All) => Ok(Occurrence::All),
        Ok(proto::Occurrence::Nth) if n >= 1 => Ok(Occurrence::Nth(n as usize)),
        Ok(proto::Occurrence::Nth) => {
            Err(Error::invalid("occurrence_number", "OCCURRENCE_NTH needs occurrence_number, counted from 1"))
        }
        Err(_) => Err(Error::invalid("occurrence", format!("unknown Occurrence value {}", req.occurrence))),
    }
}

/// One character span per sentence, from the field `field` (target_spans or non_target_spans).
fn char_spans(field: &str, req: &proto::RotationRequest) -> Result<Vec<(usize, usize)>, Error> {
    let spans = if field == "target_spans" { &req.target_spans } else { &req.non_target_spans };
    if spans.len() != req.sentences.len() {
        return Err(Error::invalid(
            field,
            format!("has {} spans for {} sentences: give one per sentence", spans.len(), req.sentences.len()),
        ));
    }
    Ok(spans.iter().map(|s| (s.start as usize, s.end as usize)).collect())
}

/// Corpus indices travel as uint32 (SentenceReport.index): the last one must fit.
fn first_sentence_index(req: &proto::RotationRequest) -> Result<usize, Error> {
    let end = req.first_sentence_index.checked_add(req.sentences.len() as u64);
    match end {
        Some(end) if end < 1 << 32 => Ok(req.first_sentence_index as usize),
        _ => Err(Error::invalid(
            "first_sentence_index",
            format!(
                "{} + {} sentences reaches 2^32; corpus indices must stay below it",
                req.first_sentence_index,
                req.sentences.len()
            ),
        )),
    }
}

fn angle_unit(raw: i32) -> Result<AngleUnit, Error> {
    match proto::AngleUnit::try_from(raw) {
        Ok(proto::AngleUnit::Unspecified | proto::AngleUnit::Degrees) => Ok(AngleUnit::Degrees),
        Ok(proto::AngleUnit::Radians) => Ok(AngleUnit::Radians),
        Err(_) => Err(Error::invalid("unit", format!("unknown AngleUnit value {raw}"))),
    }
}

pub fn unit_to_proto(unit: AngleUnit) -> proto::AngleUnit {
    match unit {
        AngleUnit::Degrees => proto::AngleUnit::Degrees,
        AngleUnit::Radians => proto::AngleUnit::Radians,
    }
}

pub fn significance_options(opts: Option<&proto::SignificanceOptions>) -> Result<SignificanceOptions, Error> {
    let defaults = SignificanceOptions::default();
    let Some(o) = opts else { return Ok(defaults) };
    let correction = correction_from_proto(o.correction, "significance.correction")?;
    Ok(SignificanceOptions {
        condition_a: o.condition_a.map_or(defaults.condition_a, |c| c as usize),
        condition_b: o.condition_b.map_or(defaults.condition_b, |c| c as usize),
        alpha: o.alpha.unwrap_or(defaults.alpha),
        correction,
        num_tests: o.num_tests.map(|n| n as usize),
    })
}

fn correction_from_proto(raw: i32, field: &str) -> Result<Correction, Error> {
    match proto::Correction::try_from(raw) {
        Ok(proto::Correction::Unspecified | proto::Correction::Bonferroni) => Ok(Correction::Bonferroni),
        Ok(proto::Correction::Holm) => Ok(Correction::Holm),
        Ok(proto::Correction::BenjaminiHochberg) => Ok(Correction::BenjaminiHochberg),
        Ok(proto::Correction::None) => Ok(Correction::None),
        Err(_) => Err(Error::invalid(field, format!("unknown Correction value {raw}"))),
    }
}

/// A two-group test's options: the compared condition (default 0, target) and the family options
/// (`condition_a/b` unused).
pub fn group_test_options(opts: Option<&proto::GroupTestOptions>) -> Result<(usize, SignificanceOptions), Error> {
    let defaults = SignificanceOptions::default();
    let Some(o) = opts else { return Ok((0, defaults)) };
    let family = SignificanceOptions {
        alpha: o.alpha.unwrap_or(defaults.alpha),
        correction: correction_from_proto(o.correction, "options.correction")?,
        num_tests: o.num_tests.map(|n| n as usize),
        ..defaults
    };
    Ok((o.condition.unwrap_or(0) as usize, family))
}

fn correction_to_proto(c: Correction) -> proto::Correction {
    match c {
        Correction::Bonferroni => proto::Correction::Bonferroni,
        Correction::Holm => proto::Correction::Holm,
        Correction::BenjaminiHochberg => proto::Correction::BenjaminiHochberg,
        Correction::None => proto::Correction::None,
    }
}

/// A client's angle tensor `[layers, sentences, conditions]` as f64, at most `max_values` values.
pub fn angles_from_proto(t: Option<&proto::Tensor>, max_values: usize) -> Result<Array3<f64>, Error> {
    let t = t.ok_or_else(|| Error::invalid("angles", "missing"))?;
    let [l, s, c] = t.shape[..] else {
        return Err(Error::invalid(
            "angles.shape",
            format!("must have 3 dimensions [layers, sentences, conditions], has {}", t.shape.len()),
        ));
    };
    // Three u32 factors fit in u128 without overflow, whatever the client claims.
    let expected = u128::from(l) * u128::from(s) * u128::from(c);
    if expected > max_values as u128 || t.values.len() > max_values {
        return Err(Error::invalid(
            "angles",
            format!(
                "shape [{l}, {s}, {c}] has {expected} values ({} sent); the limit is {max_values} values \
                 (max_tensor_values)",
                t.values.len()
            ),
        ));
    }
    if expected != t.values.len() as u128 {
        return Err(Error::invalid(
            "angles.values",
            format!("shape [{l}, {s}, {c}] needs {expected} values, got {}", t.values.len()),
        ));
    }
    let (l, s, c) = (l as usize, s as usize, c as usize);
    Ok(Array3::from_shape_vec((l, s, c), t.values.iter().map(|&v| f64::from(v)).collect())
        .expect("length checked above"))
}

fn tensor3(a: ArrayView3<f64>) -> proto::Tensor {
    proto::Tensor {
        shape: a.shape().iter().map(|&d| d as u32).collect(),
        values: a.iter().map(|&v| v as f32).collect(),
    }
}

fn tensor2(a: ArrayView2<f64>) -> proto::Tensor {
    proto::Tensor {
        shape: a.shape().iter().map(|&d| d as u32).collect(),
        values: a.iter().map(|&v| v as f32).collect(),
    }
}

fn sentence_reports(r: &Rotations) -> Vec<proto::SentenceReport> {
    r.sentences
        .iter()
        .map(|s| proto::SentenceReport {
            index: s.index as u32,
            num_tokens: s.num_tokens as u32,
            target_position: s.positions().target as u32,
            non_target_position: s.positions().non_target as u32,
            occurrence: s.selection.occurrence as u32,
            target_start: s.selection.target.start as u32,
            target_end: s.selection.target.end as u32,
            non_target_start: s.selection.non_target.start as u32,
            non_target_end: s.selection.non_target.end as u32,
        })
        .collect()
}

fn shuffle_draws(r: &Rotations) -> Vec<proto::ShuffleDraw> {
    r.draws_row_major()
        .into_iter()
        .map(|d| proto::ShuffleDraw {
            layer_v: d.layer_v,
            position_v: d.position_v,
            layer_u: d.layer_u,
            position_u: d.position_u,
        })
        .collect()
}

/// One streamed chunk: a slice of consecutive sentences starting at `first` (with their rows'
/// matrices when `row_matrices`).
/// Sentences left out of an analysis, as the wire reports them.
pub fn skipped(invalid: &[InvalidSentence]) -> Vec<proto::SkippedSentence> {
    let wire = |s: &InvalidSentence| proto::SkippedSentence {
        index: s.index as u32,
        reason: s.code.to_string(),
        message: s.reason.clone(),
    };
    invalid.iter().map(wire).collect()
}

pub fn chunk(part: &Rotations, first: usize, seed: u64, row_matrices: bool) -> proto::RotationChunk {
    proto::RotationChunk {
        first_sentence: first as u32,
        angles: Some(tensor3(part.angles.view())),
        sentences: sentence_reports(part),
        shuffle_draws: shuffle_draws(part),
        unit: unit_to_proto(part.unit) as i32,
        shuffle_seed: seed,
        all_layers: row_matrices
            .then(|| proto::AllLayers { row_matrices: row_matrix_tensor(part), ..Default::default() }),
        sublayers: step_angles(part),
        norms: part.norms.as_ref().map(|(norms, growth)| proto::Norms {
            norms: Some(tensor3(norms.view())),
            growth: Some(tensor3(growth.view())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `[rows, states, states]`: every row's pairwise angle matrix (rows without one are left out).
fn row_matrix_tensor(r: &Rotations) -> Option<proto::Tensor> {
    let matrices: Vec<_> = r.sentences.iter().filter_map(|s| s.layer_matrix.as_ref()).collect();
    let size = matrices.first()?.nrows() as u32;
    Some(proto::Tensor {
        shape: vec![matrices.len() as u32, size, size],
        values: matrices.iter().flat_map(|m| m.iter().map(|&v| v as f32)).collect(),
    })
}

/// The all-layers results of merged matrix sums: the mean matrix, its cumulative angle and the
/// exact sums (and `row_matrices`, of the rows of this message, when given).
pub fn all_layers(sums: &AngleMatrixSum, row_matrices: Option<proto::Tensor>) -> Option<proto::AllLayers> {
    let mean = sums.mean()?;
    Some(proto::AllLayers {
        mean_matrix: Some(tensor2(mean.view())),
        mean_cumulative: Some(proto::Tensor {
            shape: vec![mean.nrows() as u32],
            values: cumulative_angles(mean.view()).iter().map(|&v| v as f32).collect(),
        }),
        sums: Some(angle_matrix_sums(sums)),
        row_matrices,
    })
}

/// Exact matrix sums on the wire (16 bytes big-endian per entry, as LayerStatistics.sum_exact).
pub fn angle_matrix_sums(sums: &AngleMatrixSum) -> proto::AngleMatrixSums {
    proto::AngleMatrixSums {
        n: sums.n(),
        size: sums.size() as u32,
        sums_exact: sums.sums_exact().iter().flat_map(|x| x.to_be_bytes()).collect(),
    }
}

/// Exact matrix sums from the wire, checked.
pub fn angle_matrix_sums_from_proto(m: &proto::AngleMatrixSums) -> Result<AngleMatrixSum, Error> {
    let size = m.size as usize;
    let bad = |reason: String| Error::invalid("all_layers.sums", reason);
    if m.sums_exact.len() != size * size * 16 {
        return Err(bad(format!("{} bytes for {size} x {size} entries of 16 bytes", m.sums_exact.len())));
    }
    let sums = m.sums_exact.chunks_exact(16).map(|b| i128::from_be_bytes(b.try_into().expect("16 bytes"))).collect();
    AngleMatrixSum::from_exact(m.n, size, sums).ok_or_else(|| bad("sums without matrices".into()))
}

/// The target word's ids on the wire: `target_token_id` (the one id, else 0) and `target_token_ids`.
pub fn target_ids(tokens: &[u32]) -> (u32, Vec<u32>) {
    (if let [id] = tokens { *id } else { 0 }, tokens.to_vec())
}

pub fn rotation_result(
    r: &Rotations,
    seed: u64,
    target: &[u32],
    model_name: &str,
    row_matrices: bool,
) -> Result<proto::RotationResult, Error> {
    let (target_token_id, target_token_ids) = target_ids(target);
    let rows = if row_matrices { row_matrix_tensor(r) } else { None };
    Ok(proto::RotationResult {
        angles: Some(tensor3(r.angles.view())),
        conditions: CONDITIONS.iter().map(|c| c.to_string()).collect(),
        unit: unit_to_proto(r.unit) as i32,
        layer_means: Some(tensor2(r.layer_means().view())),
        sentences: sentence_reports(r),
        shuffle_draws: shuffle_draws(r),
        shuffle_seed: seed,
        model_name: model_name.to_string(),
        target_token_id,
        all_layers: r.layer_matrices.as_ref().and_then(|sums| all_layers(sums, rows)),
        target_token_ids,
        skipped: Vec::new(),
        sublayers: sublayer_rotations(r)?,
        norms: norms(r)?,
        // Set by the handler, which knows the chosen states and dtype (vectors()).
        vectors: None,
    })
}

/// The rows' norms and growth ratios with their exact sums and means (`None` without norms).
///
/// # Errors
/// A norm past the exact sums' range (2^31).
pub fn norms(r: &Rotations) -> Result<Option<proto::Norms>, Error> {
    let Some((norms, growth)) = &r.norms else { return Ok(None) };
    let (per_state, per_layer) = (condition_moments(norms.view())?, condition_moments(growth.view())?);
    Ok(Some(proto::Norms {
        norms: Some(tensor3(norms.view())),
        growth: Some(tensor3(growth.view())),
        ..norm_summary(&per_state, &per_layer)
    }))
}

/// Means and exact sums of merged norm moments: the same for Analyze and a stream's final chunk.
pub fn norm_summary(per_state: &[Vec<ExactMoments>], per_layer: &[Vec<ExactMoments>]) -> proto::Norms {
    let states = per_state.first().map_or(0, Vec::len) as u32;
    let layers = per_layer.first().map_or(0, Vec::len) as u32;
    proto::Norms {
        mean_norms: Some(condition_means(per_state, vec![states])),
        mean_growth: Some(condition_means(per_layer, vec![layers])),
        norm_statistics: condition_statistics(per_state),
        growth_statistics: condition_statistics(per_layer),
        ..Default::default()
    }
}

/// `per_condition[c][k]`'s means as a tensor `[shape…, conditions]`, `k` read row-major over `shape`:
/// means of exact sums, so the same bits from Analyze, a stream and merged shards.
fn condition_means(per_condition: &[Vec<ExactMoments>], mut shape: Vec<u32>) -> proto::Tensor {
    let count = per_condition.first().map_or(0, Vec::len);
    shape.push(per_condition.len() as u32);
    proto::Tensor {
        shape,
        values: (0..count).flat_map(|k| per_condition.iter().map(move |c| c[k].mean() as f32)).collect(),
    }
}

/// The rows' step angles on the wire: `[L, 2, rows, 2]` is the `[2L, rows, 2]` step tensor with its
/// first axis read as (layer, step), the same values in the same order (a stream's chunk: the
/// angles alone; its final chunk carries the merged [`step_summary`]).
pub fn step_angles(r: &Rotations) -> Option<proto::SublayerRotations> {
    let steps = r.steps.as_ref()?;
    let (layer_steps, rows, conditions) = steps.dim();
    let (layers, per_layer) = (layer_steps / STEPS.len(), STEPS.len() as u32);
    Some(proto::SublayerRotations {
        angles: Some(proto::Tensor {
            shape: vec![layers as u32, per_layer, rows as u32, conditions as u32],
            values: steps.iter().map(|&v| v as f32).collect(),
        }),
        ..step_names()
    })
}

/// Analyze's step angles: [`step_angles`] with their means and exact sums ([`step_summary`]).
///
/// # Errors
/// An angle outside the exact sums' range (none is).
pub fn sublayer_rotations(r: &Rotations) -> Result<Option<proto::SublayerRotations>, Error> {
    let (Some(steps), Some(wire)) = (r.steps.as_ref(), step_angles(r)) else { return Ok(None) };
    Ok(Some(proto::SublayerRotations { angles: wire.angles, ..step_summary(&condition_moments(steps.view())?) }))
}

/// The steps' and conditions' names, nothing else.
fn step_names() -> proto::SublayerRotations {
    proto::SublayerRotations {
        steps: STEPS.iter().map(|s| s.to_string()).collect(),
        conditions: STEP_CONDITIONS.iter().map(|c| c.to_string()).collect(),
        ..Default::default()
    }
}

/// Means and exact sums of merged step-angle moments (`per_condition[c][2 (l − 1) + step]`), without
/// angles: the same for Analyze, a stream's final chunk and the sharding clients' merge.
pub fn step_summary(per_condition: &[Vec<ExactMoments>]) -> proto::SublayerRotations {
    let layers = (per_condition.first().map_or(0, Vec::len) / STEPS.len()) as u32;
    proto::SublayerRotations {
        layer_means: Some(condition_means(per_condition, vec![layers, STEPS.len() as u32])),
        condition_statistics: condition_statistics(per_condition),
        ..step_names()
    }
}

pub fn significance_result(r: &SignificanceResult, opts: &SignificanceOptions) -> proto::SignificanceResult {
    proto::SignificanceResult {
        layers: r.layers.iter().map(layer_test).collect(),
        alpha: r.alpha,
        correction: correction_to_proto(r.correction) as i32,
        threshold: r.threshold,
        num_tests: r.num_tests as u32,
        condition_a: opts.condition_a as u32,
        condition_b: opts.condition_b as u32,
        group_tests: None,
    }
}

fn direction_to_proto(d: Direction) -> proto::Direction {
    match d {
        Direction::NotSignificant => proto::Direction::NotSignificant,
        Direction::AGreater => proto::Direction::AGreater,
        Direction::BGreater => proto::Direction::BGreater,
    }
}

fn layer_test(t: &LayerTest) -> proto::LayerTest {
    proto::LayerTest {
        layer: t.layer as u32,
        t: t.t,
        p: t.p,
        p_adjusted: t.p_adjusted,
        df: t.df,
        mean_difference: t.mean_difference,
        sd_difference: t.sd_difference,
        cohens_dz: t.cohens_dz,
        ci_low: t.ci_low,
        ci_high: t.ci_high,
        significant: t.significant,
        direction: direction_to_proto(t.direction) as i32,
        flag: match t.flag {
            LayerFlag::None => proto::LayerFlag::None,
            LayerFlag::ZeroVariance => proto::LayerFlag::ZeroVariance,
        } as i32,
    }
}

/// The step tests ([`step_test_options`]) from merged step statistics, or why there are none: the
/// same call for Analyze and a stream's final chunk, so both give the same tests bit for bit.
pub fn step_significance(
    stats: &[PairedStats],
    opts: &SignificanceOptions,
) -> (Option<proto::SignificanceResult>, String) {
    let opts = step_test_options(opts);
    match test_layers_from_stats(stats, &opts) {
        Ok(result) => (Some(significance_result(&result, &opts)), String::new()),
        Err(e) => (None, e.to_string()),
    }
}

/// Per-layer statistics on the wire: the exact sums (big-endian two's complement) and their f64 roundings.
pub fn layer_statistics(stats: &[PairedStats]) -> Vec<proto::LayerStatistics> {
    stats
        .iter()
        .enumerate()
        .map(|(l, s)| proto::LayerStatistics {
            layer: l as u32 + 1,
            n: s.n(),
            sum: s.sum(),
            sum_sq: s.sum_sq(),
            sum_exact: s.sum_exact().to_be_bytes().to_vec(),
            sum_sq_exact: s.sum_sq_exact().to_be_bytes().to_vec(),
        })
        .collect()
}

/// Per-layer statistics from the wire, one per layer in order, with their exact sums checked.
pub fn paired_stats_from_proto(stats: &[proto::LayerStatistics]) -> Result<Vec<PairedStats>, Error> {
    moments_from_proto("statistics", stats)
}

/// Per-layer exact moments from the wire (the request's field `field`), one per layer in order,
/// with their exact sums checked.
pub fn moments_from_proto(field: &str, stats: &[proto::LayerStatistics]) -> Result<Vec<ExactMoments>, Error> {
    let prefix = field;
    stats
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let field = |name: &str| format!("{prefix}[{i}].{name}");
            if s.layer as usize != i + 1 {
                return Err(Error::invalid(
                    field("layer"),
                    format!("is {}, expected {} (layers in order)", s.layer, i + 1),
                ));
            }
            let sum: [u8; 16] = s.sum_exact.as_slice().try_into().map_err(|_| {
                Error::invalid(field("sum_exact"), format!("must be 16 bytes, has {}", s.sum_exact.len()))
            })?;
            let sum_sq: [u8; 32] = s.sum_sq_exact.as_slice().try_into().map_err(|_| {
                Error::invalid(field("sum_sq_exact"), format!("must be 32 bytes, has {}", s.sum_sq_exact.len()))
            })?;
            PairedStats::from_exact(s.n, i128::from_be_bytes(sum), ethnum::I256::from_be_bytes(sum_sq)).ok_or_else(
                || {
                    Error::invalid(
                        field("sum_sq_exact"),
                        "these sums imply a negative variance: not statistics of real data",
                    )
                },
            )
        })
        .collect()
}

/// Per condition, the per-layer exact statistics of the angles themselves.
pub fn condition_statistics(per_condition: &[Vec<ExactMoments>]) -> Vec<proto::ConditionStatistics> {
    per_condition
        .iter()
        .enumerate()
        .map(|(c, layers)| proto::ConditionStatistics { condition: c as u32, layers: layer_statistics(layers) })
        .collect()
}

/// Per-condition statistics from the wire (conditions in order), with their exact sums checked.
pub fn condition_moments_from_proto(stats: &[proto::ConditionStatistics]) -> Result<Vec<Vec<ExactMoments>>, Error> {
    stats
        .iter()
        .enumerate()
        .map(|(c, s)| {
            if s.condition as usize != c {
                let reason = format!("is {}, expected {c} (conditions in order)", s.condition);
                return Err(Error::invalid(format!("condition_statistics[{c}].condition"), reason));
            }
            moments_from_proto(&format!("condition_statistics[{c}].layers"), &s.layers)
        })
        .collect()
}

/// The two-group tests on the wire.
pub fn group_tests(r: &GroupResult, condition: usize) -> proto::GroupTests {
    proto::GroupTests {
        layers: r.layers.iter().map(group_layer_test).collect(),
        alpha: r.alpha,
        correction: correction_to_proto(r.correction) as i32,
        threshold: r.threshold,
        num_tests: r.num_tests as u32,
        condition: condition as u32,
    }
}

fn group_layer_test(t: &GroupLayerTest) -> proto::GroupLayerTest {
    proto::GroupLayerTest {
        layer: t.layer as u32,
        n_a: t.n_a,
        n_b: t.n_b,
        mean_a: t.mean_a,
        mean_b: t.mean_b,
        sd_a: t.sd_a,
        sd_b: t.sd_b,
        mean_difference: t.mean_difference,
        ci_low: t.ci_low,
        ci_high: t.ci_high,
        t: t.t,
        df: t.df,
        p: t.p,
        p_adjusted: t.p_adjusted,
        hedges_g: t.hedges_g,
        g_ci_low: t.g_ci_low,
        g_ci_high: t.g_ci_high,
        significant: t.significant,
        direction: direction_to_proto(t.direction) as i32,
        flag: match t.flag {
            GroupFlag::None => proto::GroupFlag::None,
            GroupFlag::ZeroVariance => proto::GroupFlag::ZeroVariance,
            GroupFlag::TooFewSentences => proto::GroupFlag::TooFewSentences,
        } as i32,
    }
}

/// The two groups of a CompareGroups request: exactly two, with distinct non-empty labels.
pub fn groups(groups: &[proto::Group]) -> Result<[(&str, &proto::RotationRequest); 2], Error> {
    let [a, b] = groups else {
        return Err(Error::invalid(
            "groups",
            format!("give exactly two labelled groups of sentences, got {}", groups.len()),
        ));
    };
    let checked = |i: usize, g: &'_ proto::Group| -> Result<(), Error> {
        if g.label.trim().is_empty() {
            return Err(Error::invalid(format!("groups[{i}].label"), "is empty; name the group (e.g. \"possessive\")"));
        }
        if g.request.is_none() {
            return Err(Error::invalid(format!("groups[{i}] ({:?}).request", g.label), "missing"));
        }
        Ok(())
    };
    checked(0, a)?;
    checked(1, b)?;
    // "a" and "a " would read as one label in every table: compared without surrounding spaces.
    if a.label.trim() == b.label.trim() {
        return Err(Error::invalid(
            "groups[1].label",
            format!("{:?} is also the label of groups[0] ({:?}); labels must differ", b.label, a.label),
        ));
    }
    fn request(g: &proto::Group) -> &proto::RotationRequest {
        g.request.as_ref().expect("checked above")
    }
    Ok([(a.label.as_str(), request(a)), (b.label.as_str(), request(b))])
}

pub fn model_info(info: &ModelInfo) -> proto::ModelInfo {
    proto::ModelInfo {
        model_name: info.name.clone(),
        num_layers: info.num_layers as u32,
        num_hidden_states: info.num_hidden_states() as u32,
        hidden_size: info.hidden_size as u32,
        vocab_size: info.vocab_size as u32,
        max_positions: info.max_positions as u32,
        execution_provider: info.execution_provider.to_string(),
        dtype: info.dtype.clone(),
        source: info.source.clone(),
        weights_sha256: info.weights_sha256.clone(),
        family: info.family.clone(),
        bos_token_id: info.bos_token_id,
        adds_bos: info.adds_bos,
        pad_token_id: info.pad_token_id,
        hidden_states: if info.hidden_states.is_null() { String::new() } else { info.hidden_states.to_string() },
        sublayers: !info.sublayers.is_null(),
        sublayer_states: if info.sublayers.is_null() { String::new() } else { info.sublayers.to_string() },
        precision: info.precision.clone(),
        precision_check: if info.precision_check.is_null() { String::new() } else { info.precision_check.to_string() },
    }
}

pub fn tokenized(t: Tokenized) -> proto::TokenizedText {
    proto::TokenizedText {
        offset_starts: t.offsets.iter().map(|o| o.0 as u32).collect(),
        offset_ends: t.offsets.iter().map(|o| o.1 as u32).collect(),
        ids: t.ids,
        tokens: t.tokens,
    }
}
