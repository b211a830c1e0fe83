//! How long the vectors are (issue 26): the norm of the target's and the non-target's vector at every
//! state a forward pass returns, and each layer's growth ratio `‖h_l‖ / ‖h_{l−1}‖` (the residual
//! stream grows through the layers: ×1.045 per layer in GPT-2 XL, Heimersheim & Turner). Exact,
//! mergeable sums come from [`super::condition_moments`] over these tensors, as for the angles.

use ndarray::{Array2, Array3, Axis};

use super::rotations::SentenceRotations;
use super::select::{sub_token_vector, RowSelection, SubToken};
use super::vectors::HiddenVectors;
use super::AnalysisError;

/// `[num_states, 2]`: the norm (f64, of the f32 vector) of the target's and the non-target's vector
/// (their sub-token, or the mean of their tokens) at each of the first `num_states` states.
///
/// # Errors
/// [`AnalysisError::MissingHiddenVector`] for a vector the pass did not return.
pub fn row_norms(
    index: usize,
    hidden: &impl HiddenVectors,
    num_states: usize,
    selection: RowSelection,
    sub_token: SubToken,
) -> Result<Array2<f64>, AnalysisError> {
    let mut out = Array2::zeros((num_states, 2));
    for state in 0..num_states {
        for (c, range) in [selection.target, selection.non_target].into_iter().enumerate() {
            let v = sub_token_vector(hidden, index, state, range, sub_token)?;
            out[[state, c]] = v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
        }
    }
    Ok(out)
}

/// `[num_layers, 2]`: each layer's growth ratio `norm[l] / norm[l − 1]` over the hidden states
/// (`norms` of at least `num_layers + 1` states; the last layer's ratio crosses the final norm).
pub fn growth(norms: &Array2<f64>, num_layers: usize) -> Array2<f64> {
    Array2::from_shape_fn((num_layers, 2), |(l, c)| norms[[l + 1, c]] / norms[[l, c]])
}

/// The rows' norms `[num_states, rows, 2]` and growth ratios `[num_layers, rows, 2]`, in row order.
pub type NormTensors = (Array3<f64>, Array3<f64>);

/// [`NormTensors`] of rows, in row order;
/// `None` when the rows carry no norms.
///
/// # Errors
/// [`AnalysisError::LayerCountMismatch`] when rows disagree.
pub fn norm_tensors(rows: &[SentenceRotations], num_layers: usize) -> Result<Option<NormTensors>, AnalysisError> {
    let Some(first) = rows.first().and_then(|r| r.norms.as_ref()) else { return Ok(None) };
    let num_states = first.nrows();
    let mut norms = Array3::zeros((num_states, rows.len(), 2));
    let mut ratios = Array3::zeros((num_layers, rows.len(), 2));
    for (j, row) in rows.iter().enumerate() {
        let n = row.norms.as_ref().filter(|n| n.dim() == first.dim()).ok_or(AnalysisError::LayerCountMismatch {
            sentence: row.index,
            expected: num_states,
            found: row.norms.as_ref().map_or(0, |n| n.nrows()),
        })?;
        norms.index_axis_mut(Axis(1), j).assign(n);
        ratios.index_axis_mut(Axis(1), j).assign(&growth(n, num_layers));
    }
    Ok(Some((norms, ratios)))
}

/// The (state, position) pairs [`row_norms`] reads.
pub fn norm_vectors_read(num_states: usize, rows: &[RowSelection], sub_token: SubToken) -> Vec<(usize, usize)> {
    let mut read = Vec::new();
    for row in rows {
        for range in [row.target, row.non_target] {
            let positions = super::rotations::word_positions(range, sub_token);
            read.extend((0..num_states).flat_map(|s| positions.clone().map(move |p| (s, p))));
        }
    }
    read
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3 as A3;

    #[test]
    fn norms_and_growth_of_known_vectors() {
        // State s, position p: (s + 1) * (p + 1) * (3, 4) / 5, norm (s + 1)(p + 1).
        let hidden =
            A3::from_shape_fn((4, 3, 2), |(s, p, k)| ((s + 1) * (p + 1)) as f32 * if k == 0 { 0.6 } else { 0.8 });
        let n = row_norms(0, &hidden.view(), 4, RowSelection::at(2, 1), SubToken::Last).unwrap();
        for s in 0..4 {
            assert!((n[[s, 0]] - 3.0 * (s + 1) as f64).abs() < 1e-6);
            assert!((n[[s, 1]] - 2.0 * (s + 1) as f64).abs() < 1e-6);
        }
        let g = growth(&n, 3);
        // f32 vectors: the ratios hold to ~1e-7.
        assert!((g[[2, 0]] - 4.0 / 3.0).abs() < 1e-6 && (g[[0, 1]] - 2.0).abs() < 1e-6);
        let read = norm_vectors_read(4, &[RowSelection::at(2, 1)], SubToken::Last);
        assert_eq!(read.len(), 8);
    }
}
