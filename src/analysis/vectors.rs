//! Where the analysis reads hidden vectors from: every hidden state of a sentence, or only the
//! vectors it needs (a graph that gathers them on the device, so fewer bytes leave a GPU).

use ndarray::{ArrayView1, ArrayView3, Axis};

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
