//! One token across all layers: the angle between every pair of its hidden states (how far the
//! representation at layer 30 is from the embedding, not only from layer 29) and the cumulative
//! angle travelled from the embedding, per sentence and averaged over sentences.
//!
//! The pairwise matrix `M` is `[L + 1, L + 1]` over hidden states (0 = embeddings), symmetric with
//! a zero diagonal; the consecutive angles of [`crate::analysis::rotate_sentence`] are its
//! super-diagonal `M[l − 1, l]`. The cumulative angle `C[l] = Σ_{k ≤ l} M[k − 1, k]` (`C[0] = 0`)
//! is the length of the path the vector's direction travels, never shorter than the direct
//! angle `M[0, l]`; the gap between them says how much of the rotation turned back.
//!
//! Means over sentences are exact: [`AngleMatrixSum`] keeps fixed-point integer sums, so sums
//! merged from any split of the sentences equal the whole. The mean of the cumulative angles is
//! the cumulative of the mean matrix (a sum of means), so it needs no accumulator of its own.

use ndarray::{Array1, Array2, ArrayView2};

use super::moments::fixed_point;
use super::rotations::undefined_angle;
use super::select::{sub_token_vector, SubToken, TokenRange};
use super::{angle_between, AnalysisError, AngleUnit, HiddenVectors};

/// The angles between every pair of hidden states of the word `range` of sentence `sentence`
/// (its sub-token `sub_token`, or their mean), in `unit`: `[num_hidden_states; 2]`, symmetric,
/// zero diagonal.
///
/// # Errors
/// [`AnalysisError::TooFewHiddenStates`] (fewer than 2), [`AnalysisError::MissingHiddenVector`],
/// and [`AnalysisError::ZeroHiddenState`] / [`AnalysisError::NonFiniteHiddenState`] naming the
/// hidden state and the word's representative position (its first token for a mean).
pub fn pairwise_angles(
    hidden: &impl HiddenVectors,
    sentence: usize,
    range: TokenRange,
    sub_token: SubToken,
    unit: AngleUnit,
) -> Result<Array2<f64>, AnalysisError> {
    let (num_states, _, _) = hidden.dim();
    if num_states < 2 {
        return Err(AnalysisError::TooFewHiddenStates { sentence, found: num_states });
    }
    let vectors: Vec<Array1<f32>> = (0..num_states)
        .map(|state| sub_token_vector(hidden, sentence, state, range, sub_token))
        .collect::<Result<_, _>>()?;
    let position = sub_token.position(range).unwrap_or(range.start);
    let mut matrix = Array2::<f64>::zeros((num_states, num_states));
    for i in 0..num_states {
        for j in i + 1..num_states {
            let (a, b) = (vectors[i].view(), vectors[j].view());
            let angle =
                angle_between(a, b).map_err(|_| undefined_angle(sentence, (&a, (i, position)), (&b, (j, position))))?;
            matrix[[i, j]] = unit.from_radians(angle);
            matrix[[j, i]] = matrix[[i, j]];
        }
    }
    Ok(matrix)
}

/// The cumulative angle from the embedding, `C[l] = Σ_{k=1..=l} M[k − 1, k]` with `C[0] = 0`, of
/// a pairwise matrix (per sentence, or the mean matrix for the mean over sentences).
pub fn cumulative_angles(matrix: ArrayView2<f64>) -> Array1<f64> {
    let mut total = 0.0;
    let mut cumulative = Array1::<f64>::zeros(matrix.nrows());
    for l in 1..matrix.nrows() {
        total += matrix[[l - 1, l]];
        cumulative[l] = total;
    }
    cumulative
}

/// Exact, mergeable sums of pairwise matrices over sentences, for their mean.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AngleMatrixSum {
    /// Number of matrices (sentences) added.
    n: u64,
    /// Side of the matrices (hidden states); 0 before the first one.
    size: usize,
    /// Row-major fixed-point sums `Σ round(M·2^64)`.
    sums: Vec<i128>,
}

impl AngleMatrixSum {
    /// Adds the matrix of sentence number `sentence` (used only in errors).
    ///
    /// # Errors
    /// [`AnalysisError::MatrixSizeMismatch`] for a matrix of another size than the first one (or
    /// not square); [`AnalysisError::MatrixEntryOutOfRange`] for a non-finite entry or one of
    /// `2^31` or more.
    pub fn push(&mut self, sentence: usize, matrix: ArrayView2<f64>) -> Result<(), AnalysisError> {
        let size = matrix.nrows();
        if matrix.ncols() != size {
            return Err(AnalysisError::MatrixSizeMismatch { expected: size, found: matrix.ncols() });
        }
        self.check_size(size)?;
        let mut fixed = Vec::with_capacity(size * size);
        for ((row, column), &angle) in matrix.indexed_iter() {
            let entry = fixed_point(angle).ok_or(AnalysisError::MatrixEntryOutOfRange { sentence, row, column })?;
            fixed.push(entry);
        }
        self.add(size, 1, &fixed);
        Ok(())
    }

    /// Adds the sums of another shard (exact; the order of merges does not matter).
    ///
    /// # Errors
    /// [`AnalysisError::MatrixSizeMismatch`] when both hold matrices of different sizes.
    pub fn merge(&mut self, other: &AngleMatrixSum) -> Result<(), AnalysisError> {
        if other.n == 0 {
            return Ok(());
        }
        self.check_size(other.size)?;
        self.add(other.size, other.n, &other.sums);
        Ok(())
    }

    /// Number of matrices added.
    pub fn n(&self) -> u64 {
        self.n
    }

    /// Side of the matrices (0 before the first one).
    pub fn size(&self) -> usize {
        self.size
    }

    /// The exact row-major sums `Σ round(M·2^64)` (empty before the first matrix).
    pub fn sums_exact(&self) -> &[i128] {
        &self.sums
    }

    /// Sums from their exact parts (e.g. received from another process); `None` when they cannot
    /// come from matrices: sums without a count or a count without sums, or not `size²` of them.
    pub fn from_exact(n: u64, size: usize, sums: Vec<i128>) -> Option<Self> {
        let consistent = if n == 0 { size == 0 && sums.is_empty() } else { size > 0 && sums.len() == size * size };
        consistent.then_some(AngleMatrixSum { n, size, sums })
    }

    /// The mean matrix (`None` before any matrix was added).
    pub fn mean(&self) -> Option<Array2<f64>> {
        (self.n > 0).then(|| {
            let scale = 2f64.powi(-64) / self.n as f64;
            Array2::from_shape_fn((self.size, self.size), |(i, j)| self.sums[i * self.size + j] as f64 * scale)
        })
    }

    fn check_size(&self, size: usize) -> Result<(), AnalysisError> {
        if self.n > 0 && size != self.size {
            return Err(AnalysisError::MatrixSizeMismatch { expected: self.size, found: size });
        }
        Ok(())
    }

    fn add(&mut self, size: usize, n: u64, sums: &[i128]) {
        if self.n == 0 {
            (self.size, self.sums) = (size, vec![0; size * size]);
        }
        self.n += n;
        self.sums.iter_mut().zip(sums).for_each(|(s, x)| *s += x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array3};

    /// Hidden states of one token turning by 30° per layer in a plane: `[4 states, 2 tokens, 2]`.
    fn turning() -> Array3<f32> {
        Array3::from_shape_fn((4, 2, 2), |(s, p, k)| {
            let angle = (30.0 * s as f64 + 90.0 * p as f64).to_radians();
            (if k == 0 { angle.cos() } else { angle.sin() } * (1.0 + s as f64)) as f32
        })
    }

    #[test]
    fn pairwise_matrix_and_cumulative() {
        let hidden = turning();
        let m = pairwise_angles(&hidden.view(), 0, TokenRange::single(0), SubToken::Last, AngleUnit::Degrees).unwrap();
        for i in 0..4 {
            for j in 0..4 {
                assert!((m[[i, j]] - 30.0 * (i as f64 - j as f64).abs()).abs() < 1e-4, "{i},{j}: {}", m[[i, j]]);
                assert_eq!(m[[i, j]], m[[j, i]]);
            }
        }
        let c = cumulative_angles(m.view());
        assert_eq!(c[0], 0.0);
        assert!((c[3] - 90.0).abs() < 1e-4);
        // Back and forth: the path is longer than the direct angle.
        let zigzag = array![[0.0, 10.0, 0.0], [10.0, 0.0, 10.0], [0.0, 10.0, 0.0]];
        assert_eq!(cumulative_angles(zigzag.view()).to_vec(), [0.0, 10.0, 20.0]);
    }

    #[test]
    fn errors_name_state_and_position() {
        let mut hidden = turning();
        hidden[[2, 1, 0]] = f32::NAN;
        let word = TokenRange { start: 0, end: 2 };
        let err = pairwise_angles(&hidden.view(), 3, word, SubToken::Last, AngleUnit::Degrees).unwrap_err();
        assert_eq!(err, AnalysisError::NonFiniteHiddenState { sentence: 3, hidden_state: 2, position: 1 });
        hidden[[2, 1, 0]] = 0.0;
        hidden[[2, 1, 1]] = 0.0;
        let err = pairwise_angles(&hidden.view(), 3, TokenRange::single(1), SubToken::Last, AngleUnit::Degrees);
        assert_eq!(err, Err(AnalysisError::ZeroHiddenState { sentence: 3, hidden_state: 2, position: 1 }));
        let one = Array3::<f32>::ones((1, 2, 2));
        let err = pairwise_angles(&one.view(), 4, word, SubToken::Mean, AngleUnit::Radians);
        assert_eq!(err, Err(AnalysisError::TooFewHiddenStates { sentence: 4, found: 1 }));
    }

    #[test]
    fn mean_matrix_merges_exactly() {
        let matrices: Vec<Array2<f64>> = (0..7)
            .map(|s| {
                Array2::from_shape_fn(
                    (3, 3),
                    |(i, j)| if i == j { 0.0 } else { 1e-9 * s as f64 + (i + j) as f64 * 33.3 },
                )
            })
            .collect();
        let mut whole = AngleMatrixSum::default();
        matrices.iter().for_each(|m| whole.push(0, m.view()).unwrap());
        let mut parts = [AngleMatrixSum::default(), AngleMatrixSum::default(), AngleMatrixSum::default()];
        for (s, m) in matrices.iter().enumerate() {
            parts[s % 3].push(s, m.view()).unwrap();
        }
        let mut merged = AngleMatrixSum::default();
        for part in parts.iter().rev() {
            merged.merge(part).unwrap();
        }
        assert_eq!(merged, whole);
        let mean = whole.mean().unwrap();
        assert!((mean[[0, 1]] - (33.3 + 3e-9)).abs() < 1e-12);
        assert_eq!(AngleMatrixSum::default().mean(), None);
        let small = Array2::<f64>::zeros((2, 2));
        assert_eq!(whole.push(1, small.view()), Err(AnalysisError::MatrixSizeMismatch { expected: 3, found: 2 }));
        let mut nan = Array2::<f64>::zeros((3, 3));
        nan[[2, 1]] = f64::NAN;
        let err = whole.push(5, nan.view());
        assert_eq!(err, Err(AnalysisError::MatrixEntryOutOfRange { sentence: 5, row: 2, column: 1 }));
        assert_eq!(whole.n(), 7);
    }
}
