//! Per-sentence rotation angles (the unit of batching) and their assembly into the
//! `[num_layers, num_sentences, 3]` tensor the notebook called `angles`.

use ndarray::{Array2, Array3, ArrayView1, Axis};

use super::angles::{angle_between, AngleUnit};
use super::norms::{norm_tensors, norm_vectors_read, row_norms};
use super::select::{sub_token_vector, RowSelection, SubToken, TokenRange};
use super::shuffle::{draws_after_prefix, ShuffleDraw, DEFAULT_SHUFFLE_SEED};
use super::stats::{test_layers, SignificanceOptions, SignificanceResult};
use super::sublayers::{step_angles, step_tensor, step_vectors_read, FirstStates, StateLayout};
use super::target::{locate, Positions, DEFAULT_NON_TARGET_OFFSET};
use super::trajectory::{pairwise_angles, AngleMatrixSum};
use super::vectors::HiddenVectors;
use super::AnalysisError;

/// Names of the three conditions, in the order of the last axis of the angle tensors:
/// the target token, the non-target comparison token, and the shuffled control.
pub const CONDITIONS: [&str; 3] = ["target", "non_target", "shuffled"];

/// What to compute for each sentence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotationOptions {
    /// Token id of the target token (the notebook's `tokenizer.encode(' her')[0]`).
    pub target: u32,
    /// Non-target position relative to the target (default −1: the preceding token).
    pub non_target_offset: i32,
    /// Seed of the shuffled condition (see [`draws_for_row`]).
    pub seed: u64,
    /// Unit of the reported angles.
    pub unit: AngleUnit,
    /// Which sub-token stands for a word of several tokens (default: the last).
    pub sub_token: SubToken,
    /// Also the target's angles between every pair of hidden states ([`pairwise_angles`]).
    pub all_layers: bool,
    /// Tokens the tokenizer puts before every text: 1 for a BOS token (Llama), else 0. The shuffled
    /// control never draws them ([`draws_after_prefix`]); see `allow_bos_non_target`.
    pub special_prefix: usize,
    /// Whether the non-target may be the BOS token (for a target that is the sentence's first word
    /// and offset −1); refused by default ([`AnalysisError::NonTargetIsBos`]).
    pub allow_bos_non_target: bool,
    /// The model's states when its forward pass also returns sub-layer states after the hidden
    /// states ([`StateLayout`]); `None`: hidden states only.
    pub states: Option<StateLayout>,
    /// Also the angles across each layer's attention and MLP steps ([`step_angles`]; needs `states`).
    pub steps: bool,
    /// Also the norms of the target's and non-target's vectors at every state ([`row_norms`]).
    pub norms: bool,
}

impl RotationOptions {
    /// The notebook's settings for `target`: non-target = preceding token,
    /// [`DEFAULT_SHUFFLE_SEED`], degrees.
    pub fn new(target: u32) -> Self {
        RotationOptions {
            target,
            non_target_offset: DEFAULT_NON_TARGET_OFFSET,
            seed: DEFAULT_SHUFFLE_SEED,
            unit: AngleUnit::Degrees,
            sub_token: SubToken::Last,
            all_layers: false,
            special_prefix: 0,
            allow_bos_non_target: false,
            states: None,
            steps: false,
            norms: false,
        }
    }
}

/// The rotation angles of one row: a sentence, or one occurrence of the target in it.
#[derive(Clone, Debug, PartialEq)]
pub struct SentenceRotations {
    /// Corpus index of the sentence.
    pub index: usize,
    /// Number of real tokens (no padding).
    pub num_tokens: usize,
    /// The target and non-target words (token ranges) and which occurrence this row is.
    pub selection: RowSelection,
    /// The sub-token that stood for words of several tokens.
    pub sub_token: SubToken,
    /// `[num_layers, 3]`: row `l − 1` holds, for layer transition `l`, the angle between
    /// hidden states `l − 1` and `l` of the target word, the same of the non-target word, and the
    /// shuffled control angle (see `draws`), in the options' unit.
    pub angles: Array2<f64>,
    /// `[num_layers]`: the vectors compared by the shuffled condition for each layer.
    pub draws: Vec<ShuffleDraw>,
    /// `[num_layers + 1; 2]`: the target's angles between every pair of hidden states, when
    /// [`RotationOptions::all_layers`] is set.
    pub layer_matrix: Option<Array2<f64>>,
    /// `[num_layers, 2, 2]` with [`RotationOptions::steps`]: the target's and non-target's angles
    /// across each layer's attention and MLP steps, in the options' unit ([`step_angles`]).
    pub steps: Option<Array3<f64>>,
    /// `[num_states, 2]` with [`RotationOptions::norms`]: the target's and non-target's vector norms at
    /// every state the pass returned (hidden states, then sub-layer states).
    pub norms: Option<Array2<f64>>,
    /// `[conditions, states, hidden_size]` when the vectors themselves are asked for
    /// ([`super::vectors::row_vectors`]; set by the caller, which knows the chosen states).
    pub vectors: Option<Array3<f32>>,
}

impl SentenceRotations {
    /// The positions standing for the target and non-target words: the chosen sub-token (the
    /// last one for a mean).
    pub fn positions(&self) -> Positions {
        let at = |range: TokenRange| self.sub_token.position(range).unwrap_or(range.end - 1);
        Positions { target: at(self.selection.target), non_target: at(self.selection.non_target) }
    }
}

/// Computes the target, non-target and shuffled rotation angles of sentence `index`.
///
/// `ids` are the sentence's real token ids (no padding) and `hidden` its hidden states,
/// `[num_hidden_states, num_tokens, hidden_size]` with `num_hidden_states = num_layers + 1`
/// (state 0 = embeddings), real tokens only: all of them, or at least the vectors
/// [`vectors_read`] lists. The result does not depend on other sentences,
/// so sentences can be computed in any batches, order or shards.
///
/// # Errors
/// [`AnalysisError::TokenCountMismatch`] (`hidden.shape()[1] != ids.len()`),
/// [`AnalysisError::TooFewHiddenStates`] (fewer than 2), [`AnalysisError::EmptyHiddenSize`],
/// the errors of [`locate`], and [`AnalysisError::ZeroHiddenState`] /
/// [`AnalysisError::NonFiniteHiddenState`] for a vector whose angle is undefined,
/// [`AnalysisError::MissingHiddenVector`] for one `hidden` does not hold.
pub fn rotate_sentence(
    index: usize,
    ids: &[u32],
    hidden: impl HiddenVectors,
    opts: &RotationOptions,
) -> Result<SentenceRotations, AnalysisError> {
    let (_, num_tokens, _) = hidden.dim();
    if num_tokens != ids.len() {
        return Err(AnalysisError::TokenCountMismatch {
            sentence: index,
            num_ids: ids.len(),
            hidden_tokens: num_tokens,
        });
    }
    check_hidden(index, &hidden)?;
    let positions = locate_target(index, ids, opts)?;
    rotate_checked(index, &hidden, RowSelection::at(positions.target, positions.non_target), opts)
}

/// [`locate`] with the options' rule for the BOS token: the non-target may be it only when
/// `opts.allow_bos_non_target` says so, never silently.
///
/// # Errors
/// Those of [`locate`], and [`AnalysisError::NonTargetIsBos`].
pub fn locate_target(index: usize, ids: &[u32], opts: &RotationOptions) -> Result<Positions, AnalysisError> {
    let positions = locate(index, ids, opts.target, opts.non_target_offset)?;
    check_bos(index, positions.non_target, opts)?;
    Ok(positions)
}

/// `rows` of sentence `index` ([`crate::analysis::select_rows`]), refused where a non-target starts on
/// the BOS token and `opts` does not allow it.
///
/// # Errors
/// [`AnalysisError::NonTargetIsBos`].
pub fn check_rows_bos(
    index: usize,
    rows: Vec<RowSelection>,
    opts: &RotationOptions,
) -> Result<Vec<RowSelection>, AnalysisError> {
    for row in &rows {
        check_bos(index, row.non_target.start, opts)?;
    }
    Ok(rows)
}

/// The non-target may start on the BOS token only when `opts.allow_bos_non_target` says so.
fn check_bos(index: usize, non_target_start: usize, opts: &RotationOptions) -> Result<(), AnalysisError> {
    if non_target_start < opts.special_prefix && !opts.allow_bos_non_target {
        return Err(AnalysisError::NonTargetIsBos { sentence: index, position: non_target_start });
    }
    Ok(())
}

/// The same angles as [`rotate_sentence`] for a row chosen by the caller (another occurrence, a
/// span, a word of several tokens: [`crate::analysis::select_rows`]); `opts.target` and
/// `opts.non_target_offset` are not used. The shuffled draws are the row's
/// ([`draws_after_prefix`]: keyed by sentence and occurrence, never drawing the BOS token).
///
/// # Errors
/// [`AnalysisError::TooFewHiddenStates`], [`AnalysisError::EmptyHiddenSize`],
/// [`AnalysisError::NonTargetIsTarget`] (the same words), [`AnalysisError::MissingHiddenVector`]
/// for a position past the sentence's tokens, and the undefined-angle errors of
/// [`rotate_sentence`].
pub fn rotate_row(
    index: usize,
    hidden: impl HiddenVectors,
    selection: RowSelection,
    opts: &RotationOptions,
) -> Result<SentenceRotations, AnalysisError> {
    check_hidden(index, &hidden)?;
    if selection.target == selection.non_target {
        return Err(AnalysisError::NonTargetIsTarget { sentence: index });
    }
    if selection.occurrence == 0 || selection.target.is_empty() || selection.non_target.is_empty() {
        return Err(AnalysisError::InvalidOccurrence);
    }
    check_bos(index, selection.non_target.start, opts)?;
    rotate_checked(index, &hidden, selection, opts)
}

/// At least two hidden states and a non-empty hidden size.
fn check_hidden(index: usize, hidden: &impl HiddenVectors) -> Result<(), AnalysisError> {
    let (num_states, _, hidden_size) = hidden.dim();
    if num_states < 2 {
        return Err(AnalysisError::TooFewHiddenStates { sentence: index, found: num_states });
    }
    if hidden_size == 0 {
        return Err(AnalysisError::EmptyHiddenSize { sentence: index });
    }
    Ok(())
}

/// The angles of the three conditions at every layer transition (and the pairwise matrix and the
/// step angles when asked for), on checked hidden states: the layer analysis reads the hidden
/// states of a model that also returns sub-layer states, as it does a model without them.
fn rotate_checked(
    index: usize,
    hidden: &impl HiddenVectors,
    selection: RowSelection,
    opts: &RotationOptions,
) -> Result<SentenceRotations, AnalysisError> {
    let Some(layout) = opts.states else {
        if opts.steps {
            let found = hidden.dim().0;
            return Err(AnalysisError::StateCountMismatch { sentence: index, expected: 2 * found, found });
        }
        let mut rotations = rotate_layers(index, hidden, selection, opts)?;
        if opts.norms {
            rotations.norms = Some(row_norms(index, hidden, hidden.dim().0, selection, opts.sub_token)?);
        }
        return Ok(rotations);
    };
    layout.check(index, hidden.dim().0)?;
    let mut rotations =
        rotate_layers(index, &FirstStates { inner: hidden, count: layout.num_hidden_states() }, selection, opts)?;
    if opts.steps {
        let radians = step_angles(index, hidden, layout, selection, opts.sub_token)?;
        rotations.steps = Some(radians.mapv(|a| opts.unit.from_radians(a)));
    }
    if opts.norms {
        rotations.norms = Some(row_norms(index, hidden, layout.num_states(), selection, opts.sub_token)?);
    }
    Ok(rotations)
}

/// The layer angles (and pairwise matrix) of [`rotate_checked`] on the hidden states alone.
fn rotate_layers(
    index: usize,
    hidden: &impl HiddenVectors,
    selection: RowSelection,
    opts: &RotationOptions,
) -> Result<SentenceRotations, AnalysisError> {
    let (num_states, num_tokens, _) = hidden.dim();
    let num_layers = num_states - 1;
    let draws = draws_after_prefix(opts.seed, index, selection.occurrence, num_layers, num_tokens, opts.special_prefix);
    let word = |range: TokenRange, l: usize| word_angle(index, hidden, range, opts.sub_token, l);
    let mut angles = Array2::<f64>::zeros((num_layers, CONDITIONS.len()));
    for (l, draw) in (1..=num_layers).zip(&draws) {
        let [v, u] = draw_vectors(draw);
        let radians = [word(selection.target, l)?, word(selection.non_target, l)?, vector_angle(index, hidden, v, u)?];
        for (condition, angle) in radians.into_iter().enumerate() {
            angles[[l - 1, condition]] = opts.unit.from_radians(angle);
        }
    }
    let layer_matrix = opts
        .all_layers
        .then(|| pairwise_angles(hidden, index, selection.target, opts.sub_token, opts.unit))
        .transpose()?;
    Ok(SentenceRotations {
        index,
        num_tokens,
        selection,
        sub_token: opts.sub_token,
        angles,
        draws,
        layer_matrix,
        steps: None,
        norms: None,
        vectors: None,
    })
}

/// The angle in radians of a word from hidden state `l − 1` to `l`: its sub-token's vectors, or
/// the mean of its tokens' vectors.
fn word_angle(
    sentence: usize,
    hidden: &impl HiddenVectors,
    range: TokenRange,
    sub_token: SubToken,
    l: usize,
) -> Result<f64, AnalysisError> {
    word_angle_between(sentence, hidden, range, sub_token, (l - 1, l))
}

/// The angle in radians of a word from state `s1` to state `s2` (as [`word_angle`]).
pub(crate) fn word_angle_between(
    sentence: usize,
    hidden: &impl HiddenVectors,
    range: TokenRange,
    sub_token: SubToken,
    (s1, s2): (usize, usize),
) -> Result<f64, AnalysisError> {
    if let Some(p) = sub_token.position(range) {
        return vector_angle(sentence, hidden, (s1, p), (s2, p));
    }
    let (a, b) = (
        sub_token_vector(hidden, sentence, s1, range, sub_token)?,
        sub_token_vector(hidden, sentence, s2, range, sub_token)?,
    );
    let (a, b) = (a.view(), b.view());
    angle_between(a, b).map_err(|_| undefined_angle(sentence, (&a, (s1, range.start)), (&b, (s2, range.start))))
}

/// The (hidden state, position) pair of each vector the shuffled condition compares.
fn draw_vectors(draw: &ShuffleDraw) -> [(usize, usize); 2] {
    [(draw.layer_v as usize, draw.position_v as usize), (draw.layer_u as usize, draw.position_u as usize)]
}

/// The positions of a word whose vectors are read: its sub-token, or all its tokens for a mean.
pub(crate) fn word_positions(range: TokenRange, sub_token: SubToken) -> std::ops::Range<usize> {
    match sub_token.position(range) {
        Some(p) => p..p + 1,
        None => range.start..range.end,
    }
}

/// Every (hidden state, position) pair [`rotate_sentence`] reads for sentence `index` of a model
/// with `num_layers` layers, sorted and distinct: at most `4 · num_layers + 2` vectors, known before
/// the forward pass, so a graph can return only these. Errors as [`locate`].
pub fn vectors_read(
    index: usize,
    ids: &[u32],
    num_layers: usize,
    opts: &RotationOptions,
) -> Result<Vec<(u32, u32)>, AnalysisError> {
    let positions = locate_target(index, ids, opts)?;
    let row = RowSelection::at(positions.target, positions.non_target);
    Ok(rows_vectors_read(index, ids.len(), &[row], num_layers, opts))
}

/// Every (hidden state, position) pair [`rotate_row`] reads for the rows `rows` of sentence
/// `index` (with `num_tokens` tokens), sorted and distinct: the one place that says which vectors
/// the analysis reads (every token of a word for a mean, every hidden state of the target's for
/// [`RotationOptions::all_layers`], the rows' shuffled draws).
pub fn rows_vectors_read(
    index: usize,
    num_tokens: usize,
    rows: &[RowSelection],
    num_layers: usize,
    opts: &RotationOptions,
) -> Vec<(u32, u32)> {
    let mut read: Vec<(usize, usize)> = Vec::new();
    for row in rows {
        let draws = draws_after_prefix(opts.seed, index, row.occurrence, num_layers, num_tokens, opts.special_prefix);
        for (l, draw) in (1..=num_layers).zip(&draws) {
            read.extend(draw_vectors(draw));
            for range in [row.target, row.non_target] {
                read.extend(word_positions(range, opts.sub_token).flat_map(|p| [(l - 1, p), (l, p)]));
            }
        }
        if opts.all_layers {
            read.extend((0..=num_layers).flat_map(|s| word_positions(row.target, opts.sub_token).map(move |p| (s, p))));
        }
    }
    if let Some(layout) = opts.states.filter(|_| opts.steps) {
        read.extend(step_vectors_read(layout, rows, opts.sub_token));
    }
    if opts.norms {
        let states = opts.states.map_or(num_layers + 1, |layout| layout.num_states());
        read.extend(norm_vectors_read(states, rows, opts.sub_token));
    }
    let mut read: Vec<(u32, u32)> = read.into_iter().map(|(s, p)| (s as u32, p as u32)).collect();
    read.sort_unstable();
    read.dedup();
    read
}

/// Angle in radians between `hidden[s1, p1]` and `hidden[s2, p2]`, with errors naming the
/// offending vector.
fn vector_angle(
    sentence: usize,
    hidden: &impl HiddenVectors,
    (s1, p1): (usize, usize),
    (s2, p2): (usize, usize),
) -> Result<f64, AnalysisError> {
    let v = |s: usize, p: usize| {
        hidden.vector(s, p).ok_or(AnalysisError::MissingHiddenVector { sentence, hidden_state: s, position: p })
    };
    let (a, b) = (v(s1, p1)?, v(s2, p2)?);
    angle_between(a, b).map_err(|_| undefined_angle(sentence, (&a, (s1, p1)), (&b, (s2, p2))))
}

/// Why the angle between `a` (hidden state, position `at_a`) and `b` is undefined: the first
/// non-finite vector, else the zero one, named by sentence, hidden state and position.
pub(crate) fn undefined_angle(
    sentence: usize,
    (a, at_a): (&ArrayView1<f32>, (usize, usize)),
    (b, at_b): (&ArrayView1<f32>, (usize, usize)),
) -> AnalysisError {
    let bad = |x: &ArrayView1<f32>| x.iter().any(|c| !c.is_finite());
    let ((hidden_state, position), non_finite) = if bad(a) {
        (at_a, true)
    } else if bad(b) {
        (at_b, true)
    } else if a.iter().all(|&c| c == 0.0) {
        (at_a, false)
    } else {
        (at_b, false)
    };
    if non_finite {
        AnalysisError::NonFiniteHiddenState { sentence, hidden_state, position }
    } else {
        AnalysisError::ZeroHiddenState { sentence, hidden_state, position }
    }
}

/// The rotations of all sentences (rows) of a request.
#[derive(Clone, Debug, PartialEq)]
pub struct Rotations {
    /// Unit of the angles.
    pub unit: AngleUnit,
    /// `[num_layers, num_rows, 3]` (the notebook's `angles`, one row per sentence unless every
    /// occurrence was asked for): layer transition, row (in order of sentence index, then
    /// occurrence), condition ([`CONDITIONS`]).
    pub angles: Array3<f64>,
    /// The per-row results, sorted by sentence index, then occurrence.
    pub sentences: Vec<SentenceRotations>,
    /// Exact sums of the rows' pairwise angle matrices, when they were computed
    /// ([`RotationOptions::all_layers`]): their mean, mergeable across pieces of a corpus.
    pub layer_matrices: Option<AngleMatrixSum>,
    /// With [`RotationOptions::steps`]: `[2 · num_layers, num_rows, 2]`, the rows' step angles,
    /// layer and step on one axis (`2 (l − 1) + step`; [`step_tensor`]).
    pub steps: Option<Array3<f64>>,
    /// With [`RotationOptions::norms`]: `[num_states, num_rows, 2]` the rows' norms and
    /// `[num_layers, num_rows, 2]` their growth ratios ([`norm_tensors`]).
    pub norms: Option<super::norms::NormTensors>,
}

impl Rotations {
    /// Assembles per-row results (in any order, e.g. from batches or shards) into one tensor,
    /// sorted by sentence index, then occurrence. `unit` must be the unit the rows were computed
    /// in.
    ///
    /// # Errors
    /// [`AnalysisError::NoSentences`], [`AnalysisError::DuplicateSentence`] (the same sentence
    /// and occurrence twice), [`AnalysisError::LayerCountMismatch`] if a row's layer count (or
    /// the shape of its `angles`/`draws`) differs from the first row's, and the errors of
    /// [`AngleMatrixSum::push`].
    pub fn assemble(unit: AngleUnit, mut sentences: Vec<SentenceRotations>) -> Result<Self, AnalysisError> {
        let key = |s: &SentenceRotations| (s.index, s.selection.occurrence);
        sentences.sort_by_key(key);
        let first = sentences.first().ok_or(AnalysisError::NoSentences)?;
        let num_layers = first.angles.nrows();
        let mut layer_matrices: Option<AngleMatrixSum> = None;
        for (i, s) in sentences.iter().enumerate() {
            if i > 0 && key(&sentences[i - 1]) == key(s) {
                return Err(AnalysisError::DuplicateSentence { sentence: s.index, occurrence: s.selection.occurrence });
            }
            let (rows, cols) = s.angles.dim();
            if rows != num_layers || cols != CONDITIONS.len() || s.draws.len() != num_layers {
                return Err(AnalysisError::LayerCountMismatch { sentence: s.index, expected: num_layers, found: rows });
            }
            if let Some(matrix) = &s.layer_matrix {
                layer_matrices.get_or_insert_with(AngleMatrixSum::default).push(s.index, matrix.view())?;
            }
        }
        let mut angles = Array3::<f64>::zeros((num_layers, sentences.len(), CONDITIONS.len()));
        for (j, s) in sentences.iter().enumerate() {
            angles.index_axis_mut(Axis(1), j).assign(&s.angles);
        }
        let steps = step_tensor(&sentences)?;
        let norms = norm_tensors(&sentences, num_layers)?;
        Ok(Rotations { unit, angles, sentences, layer_matrices, steps, norms })
    }

    /// Number of layer transitions.
    pub fn num_layers(&self) -> usize {
        self.angles.shape()[0]
    }

    /// Number of rows (sentences, or occurrences when every occurrence was asked for).
    pub fn num_sentences(&self) -> usize {
        self.angles.shape()[1]
    }

    /// `[num_layers, 3]`: the mean angle over sentences per layer and condition (the thick
    /// lines of the notebook's plot), in [`Self::unit`].
    pub fn layer_means(&self) -> Array2<f64> {
        self.angles.mean_axis(Axis(1)).expect("assemble guarantees at least one sentence")
    }

    /// All shuffled draws, layer-major: element `l·num_sentences + j` is layer `l + 1` of the
    /// `j`-th sentence in index order.
    pub fn draws_row_major(&self) -> Vec<ShuffleDraw> {
        (0..self.num_layers()).flat_map(|l| self.sentences.iter().map(move |s| s.draws[l])).collect()
    }

    /// The per-layer paired t-tests of these angles (see [`test_layers`]).
    pub fn significance(&self, opts: &SignificanceOptions) -> Result<SignificanceResult, AnalysisError> {
        test_layers(self.angles.view(), opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::shuffle::{draws_for_row, draws_for_sentence};
    use approx::assert_relative_eq;
    use std::f64::consts::PI;

    const T: u32 = 607;

    /// Hidden states of a toy model: `[states, tokens, 2]`, the vector of state `s` at
    /// position `p` is the unit vector at angle `phase(s, p)`, so every angle is known.
    fn phase(s: usize, p: usize) -> f64 {
        0.01 * (s * s) as f64 + 0.1 * p as f64 + 0.003 * (s * p) as f64
    }

    fn toy(states: usize, tokens: usize) -> Array3<f32> {
        Array3::from_shape_fn((states, tokens, 2), |(s, p, k)| {
            let a = phase(s, p);
            (if k == 0 { a.cos() } else { a.sin() }) as f32
        })
    }

    fn expected(s1: usize, p1: usize, s2: usize, p2: usize) -> f64 {
        (phase(s1, p1) - phase(s2, p2)).abs()
    }

    #[test]
    fn options_defaults() {
        let o = RotationOptions::new(T);
        assert_eq!(o.target, T);
        assert_eq!(o.non_target_offset, -1);
        assert_eq!(o.seed, DEFAULT_SHUFFLE_SEED);
        assert_eq!(o.unit, AngleUnit::Degrees);
        assert_eq!(CONDITIONS, ["target", "non_target", "shuffled"]);
    }

    #[test]
    fn angles_of_a_toy_model() {
        let ids = [1, 2, T, 3, T];
        let hidden = toy(5, 5);
        let opts = RotationOptions { unit: AngleUnit::Radians, ..RotationOptions::new(T) };
        let r = rotate_sentence(3, &ids, hidden.view(), &opts).unwrap();
        assert_eq!(r.index, 3);
        assert_eq!(r.num_tokens, 5);
        assert_eq!(r.positions(), Positions { target: 2, non_target: 1 });
        assert_eq!(r.selection, RowSelection::at(2, 1));
        assert_eq!(r.angles.dim(), (4, 3));
        assert_eq!(r.draws, crate::analysis::draws_for_sentence(DEFAULT_SHUFFLE_SEED, 3, 4, 5));
        for l in 1..=4 {
            // f32 storage of the toy vectors limits agreement to ~1e-7 absolute.
            assert!((r.angles[[l - 1, 0]] - expected(l - 1, 2, l, 2)).abs() < 1e-6);
            assert!((r.angles[[l - 1, 1]] - expected(l - 1, 1, l, 1)).abs() < 1e-6);
            let d = r.draws[l - 1];
            let (sv, pv, su, pu) =
                (d.layer_v as usize, d.position_v as usize, d.layer_u as usize, d.position_u as usize);
            assert!(sv >= 1 && su >= 1);
            assert!((r.angles[[l - 1, 2]] - expected(sv, pv, su, pu)).abs() < 1e-6);
        }
        // Degrees are the same angles converted.
        let deg = rotate_sentence(3, &ids, hidden.view(), &RotationOptions::new(T)).unwrap();
        for (d, rad) in deg.angles.iter().zip(r.angles.iter()) {
            assert_relative_eq!(*d, rad * 180.0 / PI, max_relative = 1e-14);
        }
    }

    /// A row chosen by the caller (the last occurrence, number 2): the first occurrence's
    /// computation at other positions, with the row's own draws.
    #[test]
    fn rotation_of_a_chosen_row() {
        let ids = [1, 2, T, 3, T];
        let hidden = toy(5, 5);
        let opts = RotationOptions { unit: AngleUnit::Radians, ..RotationOptions::new(T) };
        let first = rotate_sentence(3, &ids, hidden.view(), &opts).unwrap();
        assert_eq!(rotate_row(3, hidden.view(), first.selection, &opts), Ok(first.clone()));
        let last = RowSelection { occurrence: 2, ..RowSelection::at(4, 3) };
        let r = rotate_row(3, hidden.view(), last, &opts).unwrap();
        assert_eq!((r.selection, &r.draws), (last, &draws_for_row(DEFAULT_SHUFFLE_SEED, 3, 2, 4, 5)));
        assert_ne!(r.draws, first.draws);
        for l in 1..=4 {
            assert!((r.angles[[l - 1, 0]] - expected(l - 1, 4, l, 4)).abs() < 1e-6);
            assert!((r.angles[[l - 1, 1]] - expected(l - 1, 3, l, 3)).abs() < 1e-6);
            let [(sv, pv), (su, pu)] = draw_vectors(&r.draws[l - 1]);
            assert!((r.angles[[l - 1, 2]] - expected(sv, pv, su, pu)).abs() < 1e-6);
        }
        let same = RowSelection::at(4, 4);
        assert_eq!(rotate_row(3, hidden.view(), same, &opts), Err(AnalysisError::NonTargetIsTarget { sentence: 3 }));
        let outside = RowSelection::at(5, 4);
        assert!(matches!(
            rotate_row(3, hidden.view(), outside, &opts),
            Err(AnalysisError::MissingHiddenVector { sentence: 3, position: 5, .. })
        ));
    }

    /// A word of two tokens: its last or first sub-token, or the mean of both (toy unit vectors
    /// at phases p and p+1 average to a vector at the mean phase, so the angle is known).
    #[test]
    fn words_of_several_tokens() {
        let hidden = toy(5, 6);
        let word =
            RowSelection { occurrence: 1, target: TokenRange { start: 2, end: 4 }, non_target: TokenRange::single(1) };
        let radians = |sub_token| RotationOptions { unit: AngleUnit::Radians, sub_token, ..RotationOptions::new(T) };
        let last = rotate_row(0, hidden.view(), word, &radians(SubToken::Last)).unwrap();
        let first = rotate_row(0, hidden.view(), word, &radians(SubToken::First)).unwrap();
        let mean = rotate_row(0, hidden.view(), word, &radians(SubToken::Mean)).unwrap();
        assert_eq!((last.positions().target, first.positions().target, mean.positions().target), (3, 2, 3));
        for l in 1..=4 {
            assert!((last.angles[[l - 1, 0]] - expected(l - 1, 3, l, 3)).abs() < 1e-6);
            assert!((first.angles[[l - 1, 0]] - expected(l - 1, 2, l, 2)).abs() < 1e-6);
            let mid = |s: usize| (phase(s, 2) + phase(s, 3)) / 2.0;
            assert!((mean.angles[[l - 1, 0]] - (mid(l) - mid(l - 1)).abs()).abs() < 1e-6);
            assert_eq!(mean.angles[[l - 1, 1]], last.angles[[l - 1, 1]]);
        }
    }

    /// With all_layers, each row carries its pairwise matrix; its super-diagonal is the target's
    /// consecutive rotation, and assembly sums the matrices exactly.
    #[test]
    fn all_layers_matrices() {
        let hidden = toy(5, 6);
        let opts = RotationOptions { all_layers: true, ..RotationOptions::new(T) };
        let rows: Vec<_> = [RowSelection::at(2, 1), RowSelection { occurrence: 2, ..RowSelection::at(4, 3) }]
            .into_iter()
            .map(|row| rotate_row(7, hidden.view(), row, &opts).unwrap())
            .collect();
        for r in &rows {
            let m = r.layer_matrix.as_ref().unwrap();
            assert_eq!(m.dim(), (5, 5));
            for l in 1..=4 {
                assert_eq!(m[[l - 1, l]], r.angles[[l - 1, 0]]);
            }
        }
        let assembled = Rotations::assemble(opts.unit, rows.clone()).unwrap();
        let mut sum = AngleMatrixSum::default();
        rows.iter().for_each(|r| sum.push(7, r.layer_matrix.as_ref().unwrap().view()).unwrap());
        assert_eq!(assembled.layer_matrices, Some(sum));
        assert_eq!(
            rotate_sentence(7, &[1, 2, T], toy(5, 3).view(), &RotationOptions::new(T)).unwrap().layer_matrix,
            None
        );
    }

    #[test]
    fn errors_name_sentence_and_vector() {
        let ids = [1, T, 3];
        let hidden = toy(4, 3);
        let opts = RotationOptions::new(T);
        assert_eq!(
            rotate_sentence(2, &ids[..2], hidden.view(), &opts),
            Err(AnalysisError::TokenCountMismatch { sentence: 2, num_ids: 2, hidden_tokens: 3 })
        );
        assert_eq!(
            rotate_sentence(2, &ids, hidden.slice(ndarray::s![..1, .., ..]), &opts),
            Err(AnalysisError::TooFewHiddenStates { sentence: 2, found: 1 })
        );
        assert_eq!(
            rotate_sentence(2, &ids, hidden.slice(ndarray::s![.., .., ..0]), &opts),
            Err(AnalysisError::EmptyHiddenSize { sentence: 2 })
        );
        assert_eq!(
            rotate_sentence(2, &[T, 1, 3], hidden.view(), &opts),
            Err(AnalysisError::NonTargetOutOfRange { sentence: 2, position: -1, num_tokens: 3 })
        );
        assert_eq!(
            rotate_sentence(2, &[4, 5, 6], hidden.view(), &opts),
            Err(AnalysisError::TargetNotFound { sentence: 2, target: T })
        );
        let mut zero = hidden.clone();
        zero.index_axis_mut(Axis(0), 2).index_axis_mut(Axis(0), 1).fill(0.0);
        assert_eq!(
            rotate_sentence(2, &ids, zero.view(), &opts),
            Err(AnalysisError::ZeroHiddenState { sentence: 2, hidden_state: 2, position: 1 })
        );
        let mut nan = hidden.clone();
        nan[[1, 0, 1]] = f32::NAN;
        assert_eq!(
            rotate_sentence(2, &ids, nan.view(), &opts),
            Err(AnalysisError::NonFiniteHiddenState { sentence: 2, hidden_state: 1, position: 0 })
        );
    }

    /// Only some vectors of a sentence, as a gathering graph returns them.
    struct Kept<'a>(ndarray::ArrayView3<'a, f32>, Vec<(u32, u32)>);

    impl HiddenVectors for Kept<'_> {
        fn dim(&self) -> (usize, usize, usize) {
            self.0.dim()
        }

        fn vector(&self, state: usize, position: usize) -> Option<ArrayView1<'_, f32>> {
            self.1.contains(&(state as u32, position as u32)).then(|| self.0.vector(state, position)).flatten()
        }
    }

    #[test]
    fn the_vectors_read_are_all_the_analysis_needs() {
        let ids = [1, 2, 3, T, 5, 6, 7, 8];
        let hidden = toy(13, ids.len());
        for seed in 0..20 {
            // Every other seed as for a tokenizer that puts a BOS token (id 1 here) first.
            let opts = RotationOptions { seed, special_prefix: (seed % 2) as usize, ..RotationOptions::new(T) };
            let read = vectors_read(4, &ids, 12, &opts).unwrap();
            assert!(read.len() <= 4 * 12 + 2 && read.windows(2).all(|w| w[0] < w[1]));
            let full = rotate_sentence(4, &ids, hidden.view(), &opts).unwrap();
            let kept = rotate_sentence(4, &ids, Kept(hidden.view(), read.clone()), &opts).unwrap();
            assert_eq!(full, kept);
            // Every listed vector is needed: drop one and the analysis names it.
            let (s, p) = read[seed as usize % read.len()];
            let without: Vec<_> = read.iter().copied().filter(|&v| v != (s, p)).collect();
            assert_eq!(
                rotate_sentence(4, &ids, Kept(hidden.view(), without), &opts),
                Err(AnalysisError::MissingHiddenVector { sentence: 4, hidden_state: s as usize, position: p as usize })
            );
        }
        assert_eq!(
            vectors_read(4, &[1, 2], 12, &RotationOptions::new(T)),
            Err(AnalysisError::TargetNotFound { sentence: 4, target: T })
        );
    }

    /// Rows of words of several tokens, mean sub-tokens and all layers: the vectors listed are
    /// exactly those read (a gathering graph can serve them).
    #[test]
    fn the_vectors_read_by_rows_are_all_they_need() {
        let hidden = toy(7, 9);
        let rows = [
            RowSelection { occurrence: 1, target: TokenRange { start: 2, end: 5 }, non_target: TokenRange::single(1) },
            RowSelection {
                occurrence: 2,
                target: TokenRange { start: 6, end: 9 },
                non_target: TokenRange { start: 0, end: 2 },
            },
        ];
        for (seed, sub_token, all_layers) in
            [(1, SubToken::Mean, true), (2, SubToken::First, false), (3, SubToken::Last, true)]
        {
            let opts = RotationOptions { seed, sub_token, all_layers, ..RotationOptions::new(T) };
            let read = rows_vectors_read(4, 9, &rows, 6, &opts);
            assert!(read.windows(2).all(|w| w[0] < w[1]));
            for row in rows {
                let full = rotate_row(4, hidden.view(), row, &opts).unwrap();
                assert_eq!(rotate_row(4, Kept(hidden.view(), read.clone()), row, &opts).unwrap(), full);
            }
            // Every listed vector is needed by some row.
            for (k, &(s, p)) in read.iter().enumerate() {
                let without: Vec<_> = read.iter().copied().filter(|&v| v != (s, p)).collect();
                let fails =
                    rows.iter().any(|&row| rotate_row(4, Kept(hidden.view(), without.clone()), row, &opts).is_err());
                assert!(fails, "vector {k} ({s}, {p}) is listed but not read");
            }
        }
    }

    fn sentences(n: usize, opts: &RotationOptions) -> Vec<SentenceRotations> {
        (0..n)
            .map(|i| {
                let tokens = 3 + i % 4;
                let mut ids: Vec<u32> = (100..100 + tokens as u32).collect();
                ids[1 + i % (tokens - 1)] = T;
                let hidden = toy(7, tokens);
                rotate_sentence(i, &ids, hidden.view(), opts).unwrap()
            })
            .collect()
    }

    #[test]
    fn assembly_is_independent_of_batching_order() {
        let opts = RotationOptions::new(T);
        let all = sentences(9, &opts);
        let ordered = Rotations::assemble(opts.unit, all.clone()).unwrap();
        let mut shuffled = all.clone();
        shuffled.reverse();
        shuffled.swap(0, 4);
        let reassembled = Rotations::assemble(opts.unit, shuffled).unwrap();
        assert_eq!(ordered, reassembled);
        assert_eq!(ordered.num_layers(), 6);
        assert_eq!(ordered.num_sentences(), 9);
        assert_eq!(ordered.angles.dim(), (6, 9, 3));
        for (j, s) in ordered.sentences.iter().enumerate() {
            assert_eq!(s.index, j);
            for l in 0..6 {
                for c in 0..3 {
                    assert_eq!(ordered.angles[[l, j, c]], s.angles[[l, c]]);
                }
            }
        }
        // Layer means.
        let means = ordered.layer_means();
        assert_eq!(means.dim(), (6, 3));
        for l in 0..6 {
            for c in 0..3 {
                let m = (0..9).map(|j| ordered.angles[[l, j, c]]).sum::<f64>() / 9.0;
                assert_relative_eq!(means[[l, c]], m, max_relative = 1e-14);
            }
        }
        // Draws, layer-major.
        let draws = ordered.draws_row_major();
        assert_eq!(draws.len(), 6 * 9);
        for l in 0..6 {
            for j in 0..9 {
                assert_eq!(draws[l * 9 + j], ordered.sentences[j].draws[l]);
            }
        }
        // The t-test shortcut.
        let sig = ordered.significance(&SignificanceOptions::default()).unwrap();
        assert_eq!(sig.layers.len(), 6);
    }

    #[test]
    fn assembly_errors() {
        let opts = RotationOptions::new(T);
        assert_eq!(Rotations::assemble(opts.unit, vec![]), Err(AnalysisError::NoSentences));
        let mut all = sentences(3, &opts);
        all.push(all[1].clone());
        assert_eq!(
            Rotations::assemble(opts.unit, all),
            Err(AnalysisError::DuplicateSentence { sentence: 1, occurrence: 1 })
        );
        let mut all = sentences(3, &opts);
        let short = rotate_sentence(7, &[1, T], toy(3, 2).view(), &opts).unwrap();
        all.push(short);
        assert_eq!(
            Rotations::assemble(opts.unit, all),
            Err(AnalysisError::LayerCountMismatch { sentence: 7, expected: 6, found: 2 })
        );
    }

    #[test]
    fn the_bos_token_is_never_drawn_and_never_silently_a_non_target() {
        const BOS: u32 = 1;
        // The target is the first word: its previous token is the BOS token.
        let ids = [BOS, T, 5, 6, T];
        let hidden = toy(4, 5);
        let opts = RotationOptions { special_prefix: 1, ..RotationOptions::new(T) };
        let refused = AnalysisError::NonTargetIsBos { sentence: 2, position: 0 };
        assert_eq!(rotate_sentence(2, &ids, hidden.view(), &opts), Err(refused.clone()));
        assert_eq!(vectors_read(2, &ids, 3, &opts), Err(refused.clone()));
        assert!(refused.to_string().contains("allow_bos_non_target"));
        let allowed = RotationOptions { allow_bos_non_target: true, ..opts };
        let r = rotate_sentence(2, &ids, hidden.view(), &allowed).unwrap();
        assert_eq!(r.positions(), Positions { target: 1, non_target: 0 });
        assert_relative_eq!(r.angles[[0, 1]], expected(0, 0, 1, 0).to_degrees(), max_relative = 1e-5);
        // The control draws over the 4 tokens of the text: a 4-token sentence's draws, shifted by one.
        let text = draws_for_sentence(DEFAULT_SHUFFLE_SEED, 2, 3, 4);
        let shifted: Vec<(u32, u32)> = text.iter().map(|d| (d.position_v + 1, d.position_u + 1)).collect();
        assert_eq!(r.draws.iter().map(|d| (d.position_v, d.position_u)).collect::<Vec<_>>(), shifted);
        // A non-target after the target needs no allowance; nor does a model without a BOS token.
        let after = RotationOptions { non_target_offset: 1, ..opts };
        assert_eq!(rotate_sentence(2, &ids, hidden.view(), &after).unwrap().positions().non_target, 2);
        let no_bos = rotate_sentence(2, &ids, hidden.view(), &RotationOptions::new(T)).unwrap();
        assert_eq!(no_bos.draws, draws_for_sentence(DEFAULT_SHUFFLE_SEED, 2, 3, 5));
    }
}
