//! Per-sentence rotation angles (the unit of batching) and their assembly into the
//! `[num_layers, num_sentences, 3]` tensor the notebook called `angles`.

use ndarray::{Array2, Array3, ArrayView1, Axis};

use super::angles::{angle_between, AngleUnit};
use super::shuffle::{draws_after_prefix, ShuffleDraw, DEFAULT_SHUFFLE_SEED};
use super::stats::{test_layers, SignificanceOptions, SignificanceResult};
use super::target::{locate, Positions, DEFAULT_NON_TARGET_OFFSET};
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
    /// Seed of the shuffled condition (see [`draws_for_sentence`]).
    pub seed: u64,
    /// Unit of the reported angles.
    pub unit: AngleUnit,
    /// Tokens the tokenizer puts before every text: 1 for a BOS token (Llama), else 0. The shuffled
    /// control never draws them ([`draws_after_prefix`]); see `allow_bos_non_target`.
    pub special_prefix: usize,
    /// Whether the non-target may be the BOS token (for a target that is the sentence's first word
    /// and offset −1); refused by default ([`AnalysisError::NonTargetIsBos`]).
    pub allow_bos_non_target: bool,
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
            special_prefix: 0,
            allow_bos_non_target: false,
        }
    }
}

/// The rotation angles of one sentence.
#[derive(Clone, Debug, PartialEq)]
pub struct SentenceRotations {
    /// Index of the sentence in the request (also the shuffled condition's stream number).
    pub index: usize,
    /// Number of real tokens (no padding).
    pub num_tokens: usize,
    /// Target and non-target token positions.
    pub positions: Positions,
    /// `[num_layers, 3]`: row `l − 1` holds, for layer transition `l`, the angle between
    /// hidden states `l − 1` and `l` at the target position, the same at the non-target
    /// position, and the shuffled control angle (see `draws`), in the options' unit.
    pub angles: Array2<f64>,
    /// `[num_layers]`: the vectors compared by the shuffled condition for each layer.
    pub draws: Vec<ShuffleDraw>,
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
    rotate_checked(index, &hidden, positions, opts)
}

/// [`locate`] with the options' rule for the BOS token: the non-target may be it only when
/// `opts.allow_bos_non_target` says so, never silently.
///
/// # Errors
/// Those of [`locate`], and [`AnalysisError::NonTargetIsBos`].
pub fn locate_target(index: usize, ids: &[u32], opts: &RotationOptions) -> Result<Positions, AnalysisError> {
    let positions = locate(index, ids, opts.target, opts.non_target_offset)?;
    if positions.non_target < opts.special_prefix && !opts.allow_bos_non_target {
        return Err(AnalysisError::NonTargetIsBos { sentence: index, position: positions.non_target });
    }
    Ok(positions)
}

/// The same angles as [`rotate_sentence`] at positions chosen by the caller (e.g. an occurrence
/// other than the first, or a span: [`crate::analysis::select`]); `opts.target` and
/// `opts.non_target_offset` are not used.
///
/// # Errors
/// [`AnalysisError::TooFewHiddenStates`], [`AnalysisError::EmptyHiddenSize`],
/// [`AnalysisError::NonTargetIsTarget`] (equal positions), [`AnalysisError::MissingHiddenVector`]
/// for a position past the sentence's tokens, and the undefined-angle errors of
/// [`rotate_sentence`].
pub fn rotate_at_positions(
    index: usize,
    hidden: impl HiddenVectors,
    positions: Positions,
    opts: &RotationOptions,
) -> Result<SentenceRotations, AnalysisError> {
    check_hidden(index, &hidden)?;
    if positions.target == positions.non_target {
        return Err(AnalysisError::NonTargetIsTarget { sentence: index });
    }
    rotate_checked(index, &hidden, positions, opts)
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

/// The angles of the three conditions at every layer transition, on checked hidden states.
fn rotate_checked(
    index: usize,
    hidden: &impl HiddenVectors,
    positions: Positions,
    opts: &RotationOptions,
) -> Result<SentenceRotations, AnalysisError> {
    let (num_states, num_tokens, _) = hidden.dim();
    let num_layers = num_states - 1;
    let draws = draws_after_prefix(opts.seed, index, num_layers, num_tokens, opts.special_prefix);
    let mut angles = Array2::<f64>::zeros((num_layers, CONDITIONS.len()));
    for (l, draw) in (1..=num_layers).zip(&draws) {
        for (condition, [a, b]) in compared_vectors(l, positions, draw).into_iter().enumerate() {
            angles[[l - 1, condition]] = opts.unit.from_radians(vector_angle(index, hidden, a, b)?);
        }
    }
    Ok(SentenceRotations { index, num_tokens, positions, angles, draws })
}

/// The (hidden state, position) pairs whose angle each condition takes at layer transition `l`,
/// in [`CONDITIONS`] order: the one place that says which vectors the analysis reads.
fn compared_vectors(l: usize, positions: Positions, draw: &ShuffleDraw) -> [[(usize, usize); 2]; 3] {
    let (t, nt) = (positions.target, positions.non_target);
    let draw_v = (draw.layer_v as usize, draw.position_v as usize);
    let draw_u = (draw.layer_u as usize, draw.position_u as usize);
    [[(l - 1, t), (l, t)], [(l - 1, nt), (l, nt)], [draw_v, draw_u]]
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
    let draws = draws_after_prefix(opts.seed, index, num_layers, ids.len(), opts.special_prefix);
    let mut read: Vec<(u32, u32)> = (1..=num_layers)
        .zip(&draws)
        .flat_map(|(l, draw)| compared_vectors(l, positions, draw).into_iter().flatten())
        .map(|(s, p)| (s as u32, p as u32))
        .collect();
    read.sort_unstable();
    read.dedup();
    Ok(read)
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

/// The rotations of all sentences of a request.
#[derive(Clone, Debug, PartialEq)]
pub struct Rotations {
    /// Unit of the angles.
    pub unit: AngleUnit,
    /// `[num_layers, num_sentences, 3]` (the notebook's `angles`): layer transition, sentence
    /// (in index order), condition ([`CONDITIONS`]).
    pub angles: Array3<f64>,
    /// The per-sentence results, sorted by index.
    pub sentences: Vec<SentenceRotations>,
}

impl Rotations {
    /// Assembles per-sentence results (in any order, e.g. from batches or shards) into one
    /// tensor, sorted by sentence index. `unit` must be the unit the sentences were computed
    /// in.
    ///
    /// # Errors
    /// [`AnalysisError::NoSentences`], [`AnalysisError::DuplicateSentence`], and
    /// [`AnalysisError::LayerCountMismatch`] if a sentence's layer count (or the shape of its
    /// `angles`/`draws`) differs from the lowest-index sentence's.
    pub fn assemble(unit: AngleUnit, mut sentences: Vec<SentenceRotations>) -> Result<Self, AnalysisError> {
        sentences.sort_by_key(|s| s.index);
        let first = sentences.first().ok_or(AnalysisError::NoSentences)?;
        let num_layers = first.angles.nrows();
        for (i, s) in sentences.iter().enumerate() {
            if i > 0 && sentences[i - 1].index == s.index {
                return Err(AnalysisError::DuplicateSentence { sentence: s.index });
            }
            let (rows, cols) = s.angles.dim();
            if rows != num_layers || cols != CONDITIONS.len() || s.draws.len() != num_layers {
                return Err(AnalysisError::LayerCountMismatch { sentence: s.index, expected: num_layers, found: rows });
            }
        }
        let mut angles = Array3::<f64>::zeros((num_layers, sentences.len(), CONDITIONS.len()));
        for (j, s) in sentences.iter().enumerate() {
            angles.index_axis_mut(Axis(1), j).assign(&s.angles);
        }
        Ok(Rotations { unit, angles, sentences })
    }

    /// Number of layer transitions.
    pub fn num_layers(&self) -> usize {
        self.angles.shape()[0]
    }

    /// Number of sentences.
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
    use crate::analysis::shuffle::draws_for_sentence;
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
        assert_eq!(r.positions, Positions { target: 2, non_target: 1 });
        assert_eq!(r.angles.dim(), (4, 3));
        assert_eq!(r.draws, draws_for_sentence(DEFAULT_SHUFFLE_SEED, 3, 4, 5));
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

    /// Positions chosen by the caller (the last occurrence): the first occurrence's computation
    /// at other positions, with the same draws.
    #[test]
    fn rotation_at_chosen_positions() {
        let ids = [1, 2, T, 3, T];
        let hidden = toy(5, 5);
        let opts = RotationOptions { unit: AngleUnit::Radians, ..RotationOptions::new(T) };
        let first = rotate_sentence(3, &ids, hidden.view(), &opts).unwrap();
        assert_eq!(rotate_at_positions(3, hidden.view(), first.positions, &opts), Ok(first.clone()));
        let last = Positions { target: 4, non_target: 3 };
        let r = rotate_at_positions(3, hidden.view(), last, &opts).unwrap();
        assert_eq!((r.positions, &r.draws), (last, &first.draws));
        for l in 1..=4 {
            assert!((r.angles[[l - 1, 0]] - expected(l - 1, 4, l, 4)).abs() < 1e-6);
            assert!((r.angles[[l - 1, 1]] - expected(l - 1, 3, l, 3)).abs() < 1e-6);
            assert_eq!(r.angles[[l - 1, 2]], first.angles[[l - 1, 2]]);
        }
        let same = Positions { target: 4, non_target: 4 };
        assert_eq!(
            rotate_at_positions(3, hidden.view(), same, &opts),
            Err(AnalysisError::NonTargetIsTarget { sentence: 3 })
        );
        let outside = Positions { target: 5, non_target: 4 };
        assert!(matches!(
            rotate_at_positions(3, hidden.view(), outside, &opts),
            Err(AnalysisError::MissingHiddenVector { sentence: 3, position: 5, .. })
        ));
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
        assert_eq!(Rotations::assemble(opts.unit, all), Err(AnalysisError::DuplicateSentence { sentence: 1 }));
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
        assert_eq!(r.positions, Positions { target: 1, non_target: 0 });
        assert_relative_eq!(r.angles[[0, 1]], expected(0, 0, 1, 0).to_degrees(), max_relative = 1e-5);
        // The control draws over the 4 tokens of the text: a 4-token sentence's draws, shifted by one.
        let text = draws_for_sentence(DEFAULT_SHUFFLE_SEED, 2, 3, 4);
        let shifted: Vec<(u32, u32)> = text.iter().map(|d| (d.position_v + 1, d.position_u + 1)).collect();
        assert_eq!(r.draws.iter().map(|d| (d.position_v, d.position_u)).collect::<Vec<_>>(), shifted);
        // A non-target after the target needs no allowance; nor does a model without a BOS token.
        let after = RotationOptions { non_target_offset: 1, ..opts };
        assert_eq!(rotate_sentence(2, &ids, hidden.view(), &after).unwrap().positions.non_target, 2);
        let no_bos = rotate_sentence(2, &ids, hidden.view(), &RotationOptions::new(T)).unwrap();
        assert_eq!(no_bos.draws, draws_for_sentence(DEFAULT_SHUFFLE_SEED, 2, 3, 5));
    }
}
