//! Inside the layer (issue 26): how far a token's vector rotates across each block's attention step
//! and its MLP step, for models exported with `tools/export_model.py --sublayers`.
//!
//! Such a model returns, after hidden states `0..=L`, each block's mid state (`resid_mid_l`: the
//! residual stream after attention's residual add; `x + attn` for parallel-residual GPT-NeoX) and the
//! last block's output before the final norm. Layer `l`'s attention step goes from hidden state
//! `l − 1` to `resid_mid_l`, its MLP step from `resid_mid_l` to the block's output: hidden state `l`,
//! or for the last layer the output before the final norm (hidden state `L` is after it).

use ndarray::{Array3, ArrayView1, Axis};

use super::rotations::{word_angle_between, word_positions, SentenceRotations};
use super::select::{RowSelection, SubToken};
use super::stats::{paired_stats, PairedStats, SignificanceOptions};
use super::vectors::HiddenVectors;
use super::AnalysisError;

/// The two steps of a layer, in the order of the steps axis.
pub const STEPS: [&str; 2] = ["attention", "mlp"];
/// The conditions measured across each step (the shuffled control compares unrelated vectors and
/// has no step of its own).
pub const STEP_CONDITIONS: [&str; 2] = ["target", "non_target"];

/// Where a model's states are: hidden states `0..=L`, then (with sub-layer states) `resid_mid_1..=L`
/// at `L + 1..=2L` and the last block's output before the final norm at `2L + 1`. The graph's
/// outputs and a gathering graph's state indices follow the same order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateLayout {
    pub num_layers: usize,
    pub sublayers: bool,
}

impl StateLayout {
    /// Every state a forward pass returns.
    pub fn num_states(&self) -> usize {
        (self.num_layers + 1) * if self.sublayers { 2 } else { 1 }
    }

    /// The hidden states (embeddings and each block's output).
    pub fn num_hidden_states(&self) -> usize {
        self.num_layers + 1
    }

    /// The states layer `l` (1-based) goes through: `[(start, end)]` of its attention and MLP steps.
    pub fn steps(&self, l: usize) -> [(usize, usize); 2] {
        let last = self.num_layers;
        let mid = last + l;
        let output = if l < last { l } else { 2 * last + 1 };
        [(l - 1, mid), (mid, output)]
    }

    /// The layout of `found` states, refused unless it is this one.
    ///
    /// # Errors
    /// [`AnalysisError::StateCountMismatch`].
    pub fn check(&self, sentence: usize, found: usize) -> Result<(), AnalysisError> {
        if found == self.num_states() {
            return Ok(());
        }
        Err(AnalysisError::StateCountMismatch { sentence, expected: self.num_states(), found })
    }
}

/// The first `count` states of a forward pass: what the layer analysis reads of a model that also
/// returns sub-layer states, without copying them.
pub struct FirstStates<H> {
    pub inner: H,
    pub count: usize,
}

impl<H: HiddenVectors> HiddenVectors for FirstStates<H> {
    fn dim(&self) -> (usize, usize, usize) {
        let (states, tokens, hidden) = self.inner.dim();
        (states.min(self.count), tokens, hidden)
    }

    fn vector(&self, state: usize, position: usize) -> Option<ArrayView1<'_, f32>> {
        (state < self.count).then(|| self.inner.vector(state, position)).flatten()
    }
}

/// `[num_layers, 2 steps, 2 conditions]` in radians: the target's and the non-target's angle across
/// each layer's attention and MLP steps ([`STEPS`], [`STEP_CONDITIONS`]); `hidden` holds every state
/// of `layout`.
///
/// # Errors
/// [`AnalysisError::StateCountMismatch`] and the undefined-angle errors of the layer angles.
pub fn step_angles(
    index: usize,
    hidden: &impl HiddenVectors,
    layout: StateLayout,
    selection: RowSelection,
    sub_token: SubToken,
) -> Result<Array3<f64>, AnalysisError> {
    layout.check(index, hidden.dim().0)?;
    let mut out = Array3::zeros((layout.num_layers, STEPS.len(), STEP_CONDITIONS.len()));
    for l in 1..=layout.num_layers {
        for (s, states) in layout.steps(l).into_iter().enumerate() {
            for (c, range) in [selection.target, selection.non_target].into_iter().enumerate() {
                out[[l - 1, s, c]] = word_angle_between(index, hidden, range, sub_token, states)?;
            }
        }
    }
    Ok(out)
}

/// The (state, position) pairs [`step_angles`] reads for `rows`: for a gathering graph.
pub fn step_vectors_read(layout: StateLayout, rows: &[RowSelection], sub_token: SubToken) -> Vec<(usize, usize)> {
    let mut read = Vec::new();
    for row in rows {
        for l in 1..=layout.num_layers {
            for (a, b) in layout.steps(l) {
                for range in [row.target, row.non_target] {
                    read.extend(word_positions(range, sub_token).flat_map(|p| [(a, p), (b, p)]));
                }
            }
        }
    }
    read
}

/// `[2 · num_layers, rows, 2 conditions]`: the rows' step angles with layer and step merged into one
/// axis (index `2 (l − 1) + step`), the shape the paired tests take: one test per step, so the family
/// of tests counts steps. `None` when the rows carry no step angles.
///
/// # Errors
/// [`AnalysisError::LayerCountMismatch`] when rows disagree.
pub fn step_tensor(rows: &[SentenceRotations]) -> Result<Option<Array3<f64>>, AnalysisError> {
    let Some(first) = rows.first().and_then(|r| r.steps.as_ref()) else { return Ok(None) };
    let num_layers = first.shape()[0];
    let mut out = Array3::zeros((num_layers * STEPS.len(), rows.len(), STEP_CONDITIONS.len()));
    for (j, row) in rows.iter().enumerate() {
        let steps = row.steps.as_ref().filter(|s| s.dim() == first.dim()).ok_or(AnalysisError::LayerCountMismatch {
            sentence: row.index,
            expected: num_layers,
            found: row.steps.as_ref().map_or(0, |s| s.shape()[0]),
        })?;
        let merged = steps.to_shape((num_layers * STEPS.len(), STEP_CONDITIONS.len())).expect("contiguous");
        out.index_axis_mut(Axis(1), j).assign(&merged);
    }
    Ok(Some(out))
}

/// The step tests' options: target against non-target, one test per step (the family size is the
/// number of steps), with the request's level and correction.
pub fn step_test_options(opts: &SignificanceOptions) -> SignificanceOptions {
    SignificanceOptions { condition_a: 0, condition_b: 1, num_tests: None, ..*opts }
}

/// The exact paired statistics (target − non-target) of each step of a [`step_tensor`]: merged
/// across chunks and shards by integer sums, they give the tests of the whole corpus bit for bit.
///
/// # Errors
/// Those of [`paired_stats`].
pub fn step_stats(steps: ndarray::ArrayView3<f64>) -> Result<Vec<PairedStats>, AnalysisError> {
    paired_stats(steps, 0, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::angles::AngleUnit;
    use crate::analysis::rotations::{rotate_row, rows_vectors_read, RotationOptions};
    use ndarray::Array3 as A3;

    /// Unit vectors in the plane at known phases: state s, position p at `0.01 s² + 0.1 p`.
    fn phase(s: usize, p: usize) -> f64 {
        0.013 * (s * s) as f64 + 0.1 * p as f64
    }

    fn toy(states: usize, tokens: usize) -> A3<f32> {
        A3::from_shape_fn((states, tokens, 2), |(s, p, k)| {
            let a = phase(s, p);
            (if k == 0 { a.cos() } else { a.sin() }) as f32
        })
    }

    #[test]
    fn layout_steps_go_through_the_mid_state_and_the_last_block_output_before_the_norm() {
        let layout = StateLayout { num_layers: 3, sublayers: true };
        assert_eq!(layout.num_states(), 8);
        assert_eq!(layout.steps(1), [(0, 4), (4, 1)]);
        assert_eq!(layout.steps(2), [(1, 5), (5, 2)]);
        assert_eq!(layout.steps(3), [(2, 6), (6, 7)]);
        assert_eq!(StateLayout { num_layers: 3, sublayers: false }.num_states(), 4);
        assert_eq!(layout.check(9, 4), Err(AnalysisError::StateCountMismatch { sentence: 9, expected: 8, found: 4 }));
    }

    #[test]
    fn step_angles_of_a_toy_model_and_the_layer_angles_unchanged() {
        let (layout, hidden) = (StateLayout { num_layers: 3, sublayers: true }, toy(8, 5));
        let row = RowSelection::at(3, 2);
        let opts =
            RotationOptions { unit: AngleUnit::Radians, states: Some(layout), steps: true, ..RotationOptions::new(1) };
        let r = rotate_row(4, hidden.view(), row, &opts).unwrap();
        let steps = r.steps.clone().unwrap();
        for l in 1..=3 {
            for (s, (a, b)) in layout.steps(l).into_iter().enumerate() {
                for (c, p) in [3, 2].into_iter().enumerate() {
                    assert!((steps[[l - 1, s, c]] - (phase(a, p) - phase(b, p)).abs()).abs() < 1e-6);
                }
            }
            // The layer angles read hidden states l-1 and l only, as without sub-layer states.
            assert!((r.angles[[l - 1, 0]] - (phase(l, 3) - phase(l - 1, 3))).abs() < 1e-6);
        }
        let plain = RotationOptions { unit: AngleUnit::Radians, ..RotationOptions::new(1) };
        let without = rotate_row(4, hidden.view(), row, &RotationOptions { steps: false, ..opts }).unwrap();
        assert_eq!((without.steps, &without.angles), (None, &r.angles));
        let first = FirstStates { inner: hidden.view(), count: 4 };
        let hidden_only = rotate_row(4, &first, row, &plain).unwrap();
        assert_eq!((r.angles.clone(), r.draws.clone()), (hidden_only.angles, hidden_only.draws));
        // A gathering graph returns what rows_vectors_read lists: the step angles read nothing else.
        let read = rows_vectors_read(4, 5, &[row], 3, &opts);
        for (a, p) in step_vectors_read(layout, &[row], SubToken::Last) {
            assert!(read.binary_search(&(a as u32, p as u32)).is_ok());
        }
        let tensor = step_tensor(&[r.clone(), r]).unwrap().unwrap();
        assert_eq!(tensor.dim(), (6, 2, 2));
        assert_eq!(tensor[[3, 1, 0]], steps[[1, 1, 0]]);
    }

    /// Step statistics of pieces merge to those of the whole, and the tests from them equal the tests
    /// of the whole tensor bit for bit.
    #[test]
    fn step_tests_from_merged_pieces_equal_the_whole() {
        use crate::analysis::stats::{merge_layers, test_layers, test_layers_from_stats};
        let tensor = A3::from_shape_fn((6, 7, 2), |(k, r, c)| ((k * 13 + r * 7 + c * 5) % 11) as f64 * 0.37 + c as f64);
        let opts = step_test_options(&SignificanceOptions { condition_a: 2, num_tests: Some(3), ..Default::default() });
        assert_eq!((opts.condition_a, opts.condition_b, opts.num_tests), (0, 1, None));
        let whole = test_layers(tensor.view(), &opts).unwrap();
        assert_eq!(whole.num_tests, 6);
        let mut merged = Vec::new();
        for piece in [0..3, 3..4, 4..7] {
            merge_layers(&mut merged, &step_stats(tensor.slice(ndarray::s![.., piece, ..])).unwrap());
        }
        assert_eq!(test_layers_from_stats(&merged, &opts).unwrap(), whole);
    }
}
