//! What the sharding client checks before it merges a replica's answer: a replica that returns
//! the wrong model, a layer short, an `n` that is not its rows or rows that stop before the
//! chunk's end is treated as failed (its chunk goes to another replica), never merged. One
//! function per kind of answer, each check one line, so a new field is validated by adding a
//! line (the Python client's `validate.py` mirrors these checks).
use std::collections::BTreeSet;

use anyhow::{bail, ensure, Context};

use crate::analysis::{ExactMoments, PairedStats};
use crate::proto;
use crate::service::convert::{
    angle_matrix_sums_from_proto, condition_moments_from_proto, moments_from_proto, paired_stats_from_proto,
};

/// Fixed-point scale of the exact sums (`D = round(d·2^64)`).
const SCALE: f64 = 18_446_744_073_709_551_616.0;

/// What every answer of the run must agree with: the model checked when the replicas joined, and
/// what the request asked for.
#[derive(Clone, Debug)]
pub struct Expected {
    pub model_name: String,
    pub weights_sha256: String,
    pub num_layers: usize,
    pub num_hidden_states: usize,
    /// `AngleUnit` as the server resolves it (unspecified = degrees).
    pub unit: i32,
    pub seed: u64,
    pub all_layers: bool,
    /// `steps = SUBLAYERS`: step angles and their sums in every answer.
    pub steps: bool,
    /// `norms`: norms at each of `num_states` states and growth ratios in every answer.
    pub norms: bool,
    pub num_states: usize,
}

impl Expected {
    pub fn new(model: &proto::ModelInfo, request: &proto::RotationRequest) -> Self {
        let radians = request.unit == proto::AngleUnit::Radians as i32;
        Self {
            model_name: model.model_name.clone(),
            weights_sha256: model.weights_sha256.clone(),
            num_layers: model.num_layers as usize,
            num_hidden_states: model.num_hidden_states as usize,
            unit: if radians { proto::AngleUnit::Radians } else { proto::AngleUnit::Degrees } as i32,
            seed: request.shuffle_seed.unwrap_or(crate::analysis::DEFAULT_SHUFFLE_SEED),
            all_layers: request.all_layers,
            steps: request.steps == proto::Steps::Sublayers as i32,
            norms: request.norms,
            // Hidden states, then (with sub-layer states) as many again: the mids and the last
            // block's output before the final norm.
            num_states: (model.num_layers as usize + 1) * if model.sublayers { 2 } else { 1 },
        }
    }

    /// The largest angle in the run's unit (a difference of two angles is within ± this).
    fn max_angle(&self) -> f64 {
        if self.unit == proto::AngleUnit::Radians as i32 {
            std::f64::consts::PI
        } else {
            180.0
        }
    }
}

/// One chunk's answer (its messages `parts`, then `last`) for the sentences `first..first +
/// sentences`: every row in place, every number in range, the statistics those of its rows.
/// Returns the rows (sentences, or occurrences with `OCCURRENCE_ALL`).
pub fn validate_chunk(
    expected: &Expected,
    first: usize,
    sentences: usize,
    parts: &[proto::RotationChunk],
    last: &proto::RotationChunk,
) -> anyhow::Result<u64> {
    let end = first + sentences;
    let skipped = skipped_indices(parts, first, end)?;
    let mut seen: Option<Row> = None;
    for part in parts {
        validate_part(expected, part, first, &skipped, &mut seen)
            .with_context(|| format!("the part at sentence {}", part.first_sentence))?;
    }
    let reached = next_row(seen.map_or(first, |row| row.index + 1), &skipped);
    ensure!(reached == end, "rows stop before sentence {reached}, the chunk ends before {end}");
    let rows = parts.iter().map(|p| p.sentences.len() as u64).sum();
    validate_last(expected, end, rows, last).context("the final message")?;
    Ok(rows)
}

/// The corpus indices the chunk's parts report skipped (`skip_invalid`): each within the chunk, once.
fn skipped_indices(parts: &[proto::RotationChunk], first: usize, end: usize) -> anyhow::Result<BTreeSet<usize>> {
    let mut indices = BTreeSet::new();
    for index in parts.iter().flat_map(|p| &p.skipped).map(|s| s.index as usize) {
        ensure!((first..end).contains(&index), "skipped sentence {index} outside the chunk {first}..{end}");
        ensure!(indices.insert(index), "sentence {index} reported skipped twice");
    }
    Ok(indices)
}

/// The first corpus index from `index` on that is not skipped: where the next row must be.
fn next_row(mut index: usize, skipped: &BTreeSet<usize>) -> usize {
    while skipped.contains(&index) {
        index += 1;
    }
    index
}

/// A row: corpus index and occurrence.
#[derive(Clone, Copy)]
struct Row {
    index: usize,
    occurrence: u32,
}

impl Row {
    /// Whether `self` may follow `previous` (or open the chunk at `first`): sorted by (sentence,
    /// occurrence), no sentence left out but the skipped ones.
    fn follows(&self, previous: Option<Row>, first: usize, skipped: &BTreeSet<usize>) -> bool {
        match previous {
            None => self.index == next_row(first, skipped),
            Some(p) => {
                (self.index == p.index && self.occurrence > p.occurrence)
                    || self.index == next_row(p.index + 1, skipped)
            }
        }
    }
}

fn validate_part(
    expected: &Expected,
    part: &proto::RotationChunk,
    first: usize,
    skipped: &BTreeSet<usize>,
    seen: &mut Option<Row>,
) -> anyhow::Result<()> {
    let (layers, rows) = (expected.num_layers, part.sentences.len());
    ensure!(!part.last, "a part marked last before the end");
    ensure!(part.unit == expected.unit && part.shuffle_seed == expected.seed, "another unit or seed");
    let angles = part.angles.as_ref().context("no angles")?;
    ensure!(angles.shape == [layers as u32, rows as u32, 3], "angles of shape {:?} for {rows} rows", angles.shape);
    ensure!(angles.values.len() == layers * rows * 3, "{} angle values for {rows} rows", angles.values.len());
    let max = expected.max_angle() as f32;
    ensure!(angles.values.iter().all(|a| (0.0..=max).contains(a)), "an angle outside [0, {max}]");
    ensure!(part.shuffle_draws.len() == layers * rows, "{} shuffle draws for {rows} rows", part.shuffle_draws.len());
    for (s, report) in part.sentences.iter().enumerate() {
        let row = Row { index: report.index as usize, occurrence: report.occurrence };
        let at = |previous: Option<Row>| {
            previous.map_or(format!("the chunk's start {first}"), |p| format!("sentence {}", p.index))
        };
        ensure!(
            row.follows(*seen, first, skipped),
            "row {s} is sentence {} (occurrence {}) after {}",
            row.index,
            row.occurrence,
            at(*seen)
        );
        ensure!(
            s > 0 || part.first_sentence as usize <= row.index,
            "first_sentence {} is past its first row",
            part.first_sentence
        );
        ensure!(report.target_position < report.num_tokens, "sentence {}: target outside its tokens", row.index);
        ensure!(
            report.non_target_position < report.num_tokens,
            "sentence {}: non-target outside its tokens",
            row.index
        );
        *seen = Some(row);
    }
    for draw in &part.shuffle_draws {
        ensure!(
            draw.layer_v as usize <= layers && draw.layer_u as usize <= layers,
            "a shuffle draw outside the layers"
        );
    }
    validate_part_inside(expected, part)?;
    if let Some(matrices) = part.all_layers.as_ref().and_then(|a| a.row_matrices.as_ref()) {
        let h = expected.num_hidden_states as u32;
        ensure!(matrices.shape == [rows as u32, h, h], "row matrices of shape {:?}", matrices.shape);
        ensure!(matrices.values.len() == rows * (h * h) as usize, "{} row-matrix values", matrices.values.len());
    }
    Ok(())
}

/// The final message: the model, and statistics of exactly `rows` rows for every layer.
fn validate_last(expected: &Expected, end: usize, rows: u64, last: &proto::RotationChunk) -> anyhow::Result<()> {
    ensure!(last.last, "the stream's last message is not marked last");
    ensure!(last.model_name == expected.model_name, "model {:?}, not {:?}", last.model_name, expected.model_name);
    ensure!(
        last.weights_sha256 == expected.weights_sha256,
        "weights {:?}, not {:?}",
        last.weights_sha256,
        expected.weights_sha256
    );
    ensure!(last.unit == expected.unit && last.shuffle_seed == expected.seed, "another unit or seed");
    ensure!(last.first_sentence as usize == end, "ends at sentence {}, not {end}", last.first_sentence);
    let stats = paired_stats_from_proto(&last.statistics).map_err(|e| anyhow::anyhow!("{e}"))?;
    validate_moments("statistics", expected, &stats, rows, -expected.max_angle())?;
    for (layer, (wire, exact)) in last.statistics.iter().zip(&stats).enumerate() {
        let rounded = wire.sum.to_bits() == exact.sum().to_bits() && wire.sum_sq.to_bits() == exact.sum_sq().to_bits();
        ensure!(rounded, "statistics[{layer}]: sum or sum_sq is not its exact sum rounded");
    }
    let conditions = condition_moments_from_proto(&last.condition_statistics).map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(conditions.len() == 3, "{} conditions' statistics, not 3", conditions.len());
    for (c, moments) in conditions.iter().enumerate() {
        validate_moments(&format!("condition_statistics[{c}]"), expected, moments, rows, 0.0)?;
    }
    match last.all_layers.as_ref().and_then(|a| a.sums.as_ref()) {
        Some(sums) if expected.all_layers => {
            let sums = angle_matrix_sums_from_proto(sums).map_err(|e| anyhow::anyhow!("{e}"))?;
            ensure!(sums.n() == rows, "matrix sums of {} rows, not {rows}", sums.n());
            ensure!(sums.size() == expected.num_hidden_states, "matrix sums of side {}", sums.size());
            let most = rows as f64 * expected.max_angle() * (1.0 + 1e-9);
            let in_range = |s: &i128| (0.0..=most).contains(&(*s as f64 / SCALE));
            ensure!(sums.sums_exact().iter().all(in_range), "a matrix sum beyond {rows} angles in range");
        }
        // No rows (a piece whose every sentence was skipped) have no mean matrix to send.
        None if !expected.all_layers || rows == 0 => {}
        _ => bail!("all_layers sums {} asked for and {} sent", expected.all_layers, !expected.all_layers),
    }
    validate_last_inside(expected, rows, last)
}

/// Per-layer moments: one per layer, each of `rows` values within `[low, max_angle]` (the sums
/// are then bounded, which also keeps merged sums from overflowing).
fn validate_moments(
    field: &str,
    expected: &Expected,
    moments: &[ExactMoments],
    rows: u64,
    low: f64,
) -> anyhow::Result<()> {
    let layers = expected.num_layers;
    ensure!(moments.len() == layers, "{field}: {} layers, the model has {layers}", moments.len());
    validate_sums(field, moments, rows, (low, expected.max_angle()))
}

/// Moments each of `rows` values within `[low, high]`.
fn validate_sums(field: &str, moments: &[ExactMoments], rows: u64, (low, high): (f64, f64)) -> anyhow::Result<()> {
    let largest = low.abs().max(high);
    for (l, m) in moments.iter().enumerate() {
        ensure!(m.n() == rows, "{field}[{l}]: n = {}, but {rows} rows came", m.n());
        let n = rows as f64;
        let sum = m.sum_exact() as f64 / SCALE;
        // A few units in the last place of slack: the bounds are f64, the sums exact integers.
        let slack = 1e-9 * n * high;
        ensure!(sum >= low * n - slack && sum <= high * n + slack, "{field}[{l}]: a sum beyond {n} values in range");
        ensure!(
            // As a sum, not a mean: a piece whose every sentence was skipped has n = 0.
            m.sum_sq() <= n * largest * largest * (1.0 + 1e-9),
            "{field}[{l}]: a sum of squares beyond values in range"
        );
    }
    Ok(())
}

/// Norms and growth ratios are bounded by the exact sums' range, as the server's own sums are.
const MAX_NORM: f64 = crate::analysis::stats::MAX_ABS_DIFFERENCE;

/// `t` has `shape` and values within `[low, high]`.
fn validate_tensor(
    what: &str,
    t: Option<&proto::Tensor>,
    shape: &[u32],
    (low, high): (f64, f64),
) -> anyhow::Result<()> {
    let t = t.with_context(|| format!("no {what}"))?;
    ensure!(t.shape == shape, "{what} of shape {:?}, not {shape:?}", t.shape);
    let len = shape.iter().map(|&d| d as usize).product::<usize>();
    ensure!(t.values.len() == len, "{} {what} values for shape {shape:?}", t.values.len());
    ensure!(t.values.iter().all(|&v| (low..=high).contains(&f64::from(v))), "a {what} value outside [{low}, {high}]");
    Ok(())
}

/// A part's step angles `[L, 2, rows, 2]` and norms `[states, rows, 2]` and growth `[L, rows, 2]`:
/// there when asked for (and only then), of its rows, in range.
fn validate_part_inside(expected: &Expected, part: &proto::RotationChunk) -> anyhow::Result<()> {
    let (layers, rows) = (expected.num_layers as u32, part.sentences.len() as u32);
    ensure!(
        part.sublayers.is_some() == expected.steps,
        "step angles asked for {}, sent {}",
        expected.steps,
        !expected.steps
    );
    if let Some(sub) = &part.sublayers {
        validate_tensor("step angle", sub.angles.as_ref(), &[layers, 2, rows, 2], (0.0, expected.max_angle()))?;
    }
    ensure!(part.norms.is_some() == expected.norms, "norms asked for {}, sent {}", expected.norms, !expected.norms);
    if let Some(norms) = &part.norms {
        let states = expected.num_states as u32;
        validate_tensor("norm", norms.norms.as_ref(), &[states, rows, 2], (0.0, MAX_NORM))?;
        validate_tensor("growth ratio", norms.growth.as_ref(), &[layers, rows, 2], (0.0, MAX_NORM))?;
    }
    Ok(())
}

/// Per condition (target, non-target), `count` moments of `rows` values each within `range`.
fn validate_conditions(
    field: &str,
    stats: &[proto::ConditionStatistics],
    count: usize,
    rows: u64,
    range: (f64, f64),
) -> anyhow::Result<()> {
    let conditions = condition_moments_from_proto(stats).map_err(|e| anyhow::anyhow!("{field}: {e}"))?;
    ensure!(conditions.len() == 2, "{field}: {} conditions' statistics, not 2", conditions.len());
    for (c, moments) in conditions.iter().enumerate() {
        ensure!(moments.len() == count, "{field}[{c}]: {} values' statistics, not {count}", moments.len());
        validate_sums(&format!("{field}[{c}]"), moments, rows, range)?;
    }
    Ok(())
}

/// The final message's step and norm sums: one per step (state, layer), each of `rows` rows, in range.
fn validate_last_inside(expected: &Expected, rows: u64, last: &proto::RotationChunk) -> anyhow::Result<()> {
    let (layers, max) = (expected.num_layers, expected.max_angle());
    ensure!(
        last.sublayers.is_some() == expected.steps,
        "step sums asked for {}, sent {}",
        expected.steps,
        !expected.steps
    );
    if let Some(sub) = &last.sublayers {
        let stats = moments_from_proto("step_statistics", &last.step_statistics).map_err(|e| anyhow::anyhow!("{e}"))?;
        ensure!(stats.len() == 2 * layers, "step_statistics: {} steps, the model has {}", stats.len(), 2 * layers);
        validate_sums("step_statistics", &stats, rows, (-max, max))?;
        validate_conditions("sublayers.condition_statistics", &sub.condition_statistics, 2 * layers, rows, (0.0, max))?;
    }
    ensure!(last.norms.is_some() == expected.norms, "norm sums asked for {}, sent {}", expected.norms, !expected.norms);
    if let Some(norms) = &last.norms {
        let range = (0.0, MAX_NORM);
        validate_conditions("norms.norm_statistics", &norms.norm_statistics, expected.num_states, rows, range)?;
        validate_conditions("norms.growth_statistics", &norms.growth_statistics, layers, rows, range)?;
    }
    Ok(())
}

/// The t-tests a replica computed from the merged statistics: one per layer, each of the merged
/// `n` and mean.
pub fn validate_significance(merged: &[PairedStats], answer: &proto::SignificanceResult) -> anyhow::Result<()> {
    ensure!(answer.layers.len() == merged.len(), "{} layers tested, {} sent", answer.layers.len(), merged.len());
    for (l, (test, stats)) in answer.layers.iter().zip(merged).enumerate() {
        ensure!(test.layer as usize == l + 1, "layer {} in place {}", test.layer, l + 1);
        ensure!(test.df == (stats.n() - 1) as f64, "layer {}: df {} for n = {}", l + 1, test.df, stats.n());
        ensure!(test.mean_difference.to_bits() == stats.mean().to_bits(), "layer {}: another mean", l + 1);
        let p_in_range = (0.0..=1.0).contains(&test.p) && (test.p..=1.0).contains(&test.p_adjusted);
        ensure!(p_in_range || test.p.is_nan(), "layer {}: p {} adjusted to {}", l + 1, test.p, test.p_adjusted);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::convert::{condition_statistics, layer_statistics};

    const LAYERS: usize = 2;

    fn expected() -> Expected {
        let model = proto::ModelInfo {
            model_name: "m".into(),
            weights_sha256: "w".into(),
            num_layers: LAYERS as u32,
            num_hidden_states: LAYERS as u32 + 1,
            ..Default::default()
        };
        Expected::new(&model, &proto::RotationRequest::default())
    }

    /// A chunk whose rows are `(sentence, occurrence)`, every angle 10° (target) and 4° (the rest).
    fn chunk(rows: &[(u32, u32)], end: u32) -> (Vec<proto::RotationChunk>, proto::RotationChunk) {
        let e = expected();
        let k = rows.len();
        let sentences = rows
            .iter()
            .map(|&(index, occurrence)| proto::SentenceReport {
                index,
                occurrence,
                num_tokens: 5,
                ..Default::default()
            })
            .collect();
        let values = (0..LAYERS * k).flat_map(|_| [10.0, 4.0, 4.0]).collect();
        let part = proto::RotationChunk {
            first_sentence: rows[0].0,
            angles: Some(proto::Tensor { shape: vec![LAYERS as u32, k as u32, 3], values }),
            sentences,
            shuffle_draws: vec![proto::ShuffleDraw::default(); LAYERS * k],
            unit: e.unit,
            shuffle_seed: e.seed,
            ..Default::default()
        };
        let moments = |v: f64| vec![ExactMoments::from_values(&vec![v; k]).unwrap(); LAYERS];
        let last = proto::RotationChunk {
            first_sentence: end,
            last: true,
            model_name: e.model_name.clone(),
            weights_sha256: e.weights_sha256.clone(),
            unit: e.unit,
            shuffle_seed: e.seed,
            statistics: layer_statistics(&moments(6.0)),
            condition_statistics: condition_statistics(&[moments(10.0), moments(4.0), moments(4.0)]),
            ..Default::default()
        };
        (vec![part], last)
    }

    fn check(rows: &[(u32, u32)], first: usize, sentences: usize) -> anyhow::Result<u64> {
        let (parts, last) = chunk(rows, (first + sentences) as u32);
        validate_chunk(&expected(), first, sentences, &parts, &last)
    }

    #[test]
    fn rows_are_every_sentence_in_order_occurrences_included() {
        assert_eq!(check(&[(7, 1), (8, 1), (9, 1)], 7, 3).unwrap(), 3);
        assert_eq!(check(&[(7, 1), (7, 2), (8, 1), (9, 3)], 7, 3).unwrap(), 4, "every occurrence a row");
        for (rows, why) in [
            (&[(7, 1), (9, 1), (9, 2)][..], "row 1 is sentence 9 (occurrence 1) after sentence 7"),
            (&[(8, 1), (9, 1), (9, 2)][..], "row 0 is sentence 8 (occurrence 1) after the chunk's start 7"),
            (&[(7, 1), (7, 1), (8, 1)][..], "row 1 is sentence 7 (occurrence 1) after sentence 7"),
        ] {
            let err = format!("{:#}", check(rows, 7, 3).unwrap_err());
            assert!(err.contains(why), "{rows:?}: {err}");
        }
        let err = format!("{:#}", check(&[(7, 1), (8, 1)], 7, 3).unwrap_err());
        assert!(err.contains("rows stop before sentence 9, the chunk ends before 10"), "{err}");
    }

    #[test]
    fn numbers_out_of_range_are_refused() {
        let e = expected();
        let (mut parts, mut last) = chunk(&[(0, 1), (1, 1)], 2);
        parts[0].angles.as_mut().unwrap().values[4] = 181.0;
        let err = format!("{:#}", validate_chunk(&e, 0, 2, &parts, &last).unwrap_err());
        assert!(err.contains("an angle outside [0, 180]"), "{err}");
        let (parts, _) = chunk(&[(0, 1), (1, 1)], 2);
        // Two differences of 200°: sums no two angles in [0, 180] can give.
        let wide = vec![ExactMoments::from_values(&[200.0, 200.0]).unwrap(); LAYERS];
        last.statistics = layer_statistics(&wide);
        let err = format!("{:#}", validate_chunk(&e, 0, 2, &parts, &last).unwrap_err());
        assert!(err.contains("statistics[0]: a sum beyond 2 values in range"), "{err}");
        // The rounded sum does not match the exact one.
        let (parts, mut last) = chunk(&[(0, 1), (1, 1)], 2);
        last.statistics[1].sum = 1.0;
        let err = format!("{:#}", validate_chunk(&e, 0, 2, &parts, &last).unwrap_err());
        assert!(err.contains("statistics[1]: sum or sum_sq is not its exact sum rounded"), "{err}");
    }

    /// With steps asked for: every part's step angles `[L, 2, rows, 2]` and the final message's
    /// sums of its rows, or the chunk is refused.
    #[test]
    fn step_angles_and_sums_must_fit_the_rows() {
        let e = Expected { steps: true, ..expected() };
        let (mut parts, mut last) = chunk(&[(0, 1), (1, 1)], 2);
        let err = format!("{:#}", validate_chunk(&e, 0, 2, &parts, &last).unwrap_err());
        assert!(err.contains("step angles asked for true, sent false"), "{err}");
        let angles = |rows: u32| proto::Tensor {
            shape: vec![LAYERS as u32, 2, rows, 2],
            values: vec![5.0; LAYERS * 2 * rows as usize * 2],
        };
        parts[0].sublayers = Some(proto::SublayerRotations { angles: Some(angles(3)), ..Default::default() });
        let err = format!("{:#}", validate_chunk(&e, 0, 2, &parts, &last).unwrap_err());
        assert!(err.contains("step angle of shape [2, 2, 3, 2], not [2, 2, 2, 2]"), "{err}");
        parts[0].sublayers = Some(proto::SublayerRotations { angles: Some(angles(2)), ..Default::default() });
        let err = format!("{:#}", validate_chunk(&e, 0, 2, &parts, &last).unwrap_err());
        assert!(err.contains("step sums asked for true, sent false"), "{err}");
        let of = |k: usize, v: f64| vec![ExactMoments::from_values(&vec![v; k]).unwrap(); 2 * LAYERS];
        last.step_statistics = layer_statistics(&of(2, 1.0));
        let sums = condition_statistics(&[of(2, 5.0), of(3, 4.0)]);
        last.sublayers = Some(proto::SublayerRotations { condition_statistics: sums, ..Default::default() });
        let err = format!("{:#}", validate_chunk(&e, 0, 2, &parts, &last).unwrap_err());
        assert!(err.contains("sublayers.condition_statistics[1][0]: n = 3, but 2 rows came"), "{err}");
        let sums = condition_statistics(&[of(2, 5.0), of(2, 4.0)]);
        last.sublayers = Some(proto::SublayerRotations { condition_statistics: sums, ..Default::default() });
        assert_eq!(validate_chunk(&e, 0, 2, &parts, &last).unwrap(), 2);
    }

    #[test]
    fn t_tests_must_be_of_the_merged_statistics() {
        let merged = vec![ExactMoments::from_values(&[1.0, 2.0, 4.0]).unwrap(); LAYERS];
        let layer = |l: u32, df: f64, mean: f64| proto::LayerTest {
            layer: l,
            df,
            mean_difference: mean,
            p: 0.1,
            p_adjusted: 0.2,
            ..Default::default()
        };
        let mean = merged[0].mean();
        let good =
            proto::SignificanceResult { layers: vec![layer(1, 2.0, mean), layer(2, 2.0, mean)], ..Default::default() };
        validate_significance(&merged, &good).unwrap();
        for (bad, why) in [
            (vec![layer(1, 2.0, mean)], "1 layers tested, 2 sent"),
            (vec![layer(1, 2.0, mean), layer(2, 5.0, mean)], "layer 2: df 5 for n = 3"),
            (vec![layer(1, 2.0, mean + 1e-12), layer(2, 2.0, mean)], "layer 1: another mean"),
        ] {
            let answer = proto::SignificanceResult { layers: bad, ..Default::default() };
            let err = validate_significance(&merged, &answer).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
    }
}
