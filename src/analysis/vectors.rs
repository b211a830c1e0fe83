//! Where the analysis reads hidden vectors from: every hidden state of a sentence, or only the
//! vectors it needs (a graph that gathers them on the device, so fewer bytes leave a GPU).

use ndarray::{s, Array3, ArrayView1, ArrayView3, Axis};

use super::rotations::word_positions;
use super::select::{sub_token_vector, RowSelection, SubToken};
use super::AnalysisError;

/// Read access to one sentence's hidden vectors, hidden state `s` (0 = embeddings) at token `p`.
pub trait HiddenVectors {
    /// `(hidden states, real tokens, hidden size)`.
    fn dim(&self) -> (usize, usize, usize);

    /// The vector of hidden state `state` at token `position`; `None` if it was not kept.
    fn vector(&self, state: usize, position: usize) -> Option<ArrayView1<'_, f32>>;
}

/// Every hidden state: `[num_hidden_states, num_tokens, hidden_size]`.
impl HiddenVectors for ArrayView3<'_, f32> {
    fn dim(&self) -> (usize, usize, usize) {
        ArrayView3::dim(self)
    }

    fn vector(&self, state: usize, position: usize) -> Option<ArrayView1<'_, f32>> {
        let (states, tokens, _) = ArrayView3::dim(self);
        (state < states && position < tokens)
            .then(|| self.index_axis(Axis(0), state).index_axis_move(Axis(0), position))
    }
}

impl<T: HiddenVectors + ?Sized> HiddenVectors for &T {
    fn dim(&self) -> (usize, usize, usize) {
        (**self).dim()
    }

    fn vector(&self, state: usize, position: usize) -> Option<ArrayView1<'_, f32>> {
        (**self).vector(state, position)
    }
}

/// Which vectors of a row are returned themselves (issue 26, "the vectors on disk"): states in the
/// order of [`super::StateLayout`] (hidden states, then sub-layer states) and conditions (0 target,
/// 1 non-target), both already checked against the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VectorSelection {
    pub states: Vec<usize>,
    pub conditions: Vec<usize>,
}

/// `[conditions, states, hidden_size]`: the row's word vectors (its sub-token's, or the mean of its
/// tokens': the very vectors its angles and norms are computed from) at each chosen state.
///
/// # Errors
/// [`AnalysisError::MissingHiddenVector`] for a vector the pass did not return.
pub fn row_vectors(
    index: usize,
    hidden: &impl HiddenVectors,
    selection: RowSelection,
    sub_token: SubToken,
    chosen: &VectorSelection,
) -> Result<Array3<f32>, AnalysisError> {
    let hidden_size = hidden.dim().2;
    let mut out = Array3::zeros((chosen.conditions.len(), chosen.states.len(), hidden_size));
    for (c, &condition) in chosen.conditions.iter().enumerate() {
        let range = [selection.target, selection.non_target][condition];
        for (k, &state) in chosen.states.iter().enumerate() {
            out.slice_mut(s![c, k, ..]).assign(&sub_token_vector(hidden, index, state, range, sub_token)?);
        }
    }
    Ok(out)
}

/// The (state, position) pairs [`row_vectors`] reads for `rows`: for a gathering graph.
pub fn vectors_read(chosen: &VectorSelection, rows: &[RowSelection], sub_token: SubToken) -> Vec<(usize, usize)> {
    let mut read = Vec::new();
    for row in rows {
        for &condition in &chosen.conditions {
            let positions = word_positions([row.target, row.non_target][condition], sub_token);
            read.extend(chosen.states.iter().flat_map(|&s| positions.clone().map(move |p| (s, p))));
        }
    }
    read
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::TokenRange;
    use ndarray::Array3 as A3;

    /// State s, position p, component k: 100 s + 10 p + k.
    fn toy() -> A3<f32> {
        A3::from_shape_fn((5, 4, 3), |(s, p, k)| (100 * s + 10 * p + k) as f32)
    }

    #[test]
    fn chosen_states_and_conditions_in_request_order() {
        let chosen = VectorSelection { states: vec![4, 0, 2], conditions: vec![1, 0] };
        let v = row_vectors(0, &toy().view(), RowSelection::at(3, 1), SubToken::Last, &chosen).unwrap();
        assert_eq!(v.dim(), (2, 3, 3));
        assert_eq!(v.slice(s![0, 0, ..]).to_vec(), [410.0, 411.0, 412.0], "non-target (position 1) at state 4");
        assert_eq!(v.slice(s![1, 2, ..]).to_vec(), [230.0, 231.0, 232.0], "target (position 3) at state 2");
        let read = vectors_read(&chosen, &[RowSelection::at(3, 1)], SubToken::Last);
        assert_eq!(read.len(), 6);
        assert!(read.contains(&(4, 1)) && read.contains(&(0, 3)));
    }

    #[test]
    fn a_word_of_several_tokens_is_the_mean_of_its_vectors() {
        let row = RowSelection { target: TokenRange { start: 1, end: 4 }, ..RowSelection::at(3, 0) };
        let chosen = VectorSelection { states: vec![1], conditions: vec![0] };
        let v = row_vectors(0, &toy().view(), row, SubToken::Mean, &chosen).unwrap();
        assert_eq!(v.slice(s![0, 0, ..]).to_vec(), [120.0, 121.0, 122.0]);
        assert_eq!(vectors_read(&chosen, &[row], SubToken::Mean), [(1, 1), (1, 2), (1, 3)]);
        let missing = VectorSelection { states: vec![5], conditions: vec![0] };
        assert!(row_vectors(0, &toy().view(), row, SubToken::Mean, &missing).is_err());
    }
}
