//! A token across all layers against numpy: `tests/golden/layer_angles.json` is made by
//! `tools/make_layer_angles_golden.py` from the PyTorch hidden states of the bundled model
//! (`tests/golden/hidden_states.json`), with numpy's float64 `arccos` of the cosine. At these
//! angles (all above 10°) arccos is accurate to ~1e-13°, so entries must agree within 1e-9°.

mod common;

use ndarray::{Array2, Array3};
use rotations::analysis::{
    cumulative_angles, pairwise_angles, rotate_sentence, AngleMatrixSum, AngleUnit, RotationOptions, SubToken,
    TokenRange,
};
use serde::Deserialize;

const ATOL_DEGREES: f64 = 1e-9;

#[derive(Deserialize)]
struct HiddenStates {
    input_ids: Vec<Vec<u32>>,
    hidden_states: Vec<Vec<Vec<Vec<f32>>>>,
}

#[derive(Deserialize)]
struct Golden {
    unit: String,
    selections: Vec<Selection>,
}

#[derive(Deserialize)]
struct Selection {
    sub_token: String,
    sentences: Vec<SentenceRef>,
    mean_matrix: Vec<Vec<f64>>,
    mean_cumulative: Vec<f64>,
}

#[derive(Deserialize)]
struct SentenceRef {
    start: usize,
    end: usize,
    matrix: Vec<Vec<f64>>,
    cumulative: Vec<f64>,
}

/// `[states, tokens, hidden]` of each sentence.
fn hidden_states() -> (Vec<Vec<u32>>, Vec<Array3<f32>>) {
    let h: HiddenStates = common::golden("hidden_states.json");
    let arrays = h
        .hidden_states
        .iter()
        .map(|s| {
            let (states, tokens, size) = (s.len(), s[0].len(), s[0][0].len());
            let flat: Vec<f32> = s.iter().flatten().flatten().copied().collect();
            Array3::from_shape_vec((states, tokens, size), flat).unwrap()
        })
        .collect();
    (h.input_ids, arrays)
}

fn assert_all_close(what: &str, got: impl IntoIterator<Item = f64>, want: impl IntoIterator<Item = f64>) {
    for (k, (g, w)) in got.into_iter().zip(want).enumerate() {
        assert!((g - w).abs() <= ATOL_DEGREES, "{what}[{k}]: got {g}, want {w}");
    }
}

fn sub_token(name: &str) -> SubToken {
    match name {
        "last" => SubToken::Last,
        "mean" => SubToken::Mean,
        other => panic!("unknown sub-token {other}"),
    }
}

#[test]
fn pairwise_and_cumulative_angles_match_numpy() {
    let golden: Golden = common::golden("layer_angles.json");
    assert_eq!(golden.unit, "degrees");
    let (_, hidden) = hidden_states();
    for selection in &golden.selections {
        let sub = sub_token(&selection.sub_token);
        let mut sum = AngleMatrixSum::default();
        for (s, (reference, states)) in selection.sentences.iter().zip(&hidden).enumerate() {
            let range = TokenRange { start: reference.start, end: reference.end };
            let m = pairwise_angles(&states.view(), s, range, sub, AngleUnit::Degrees).unwrap();
            let what = format!("{} sentence {s}", selection.sub_token);
            assert_all_close(&what, m.iter().copied(), reference.matrix.iter().flatten().copied());
            assert_eq!(m, m.t(), "{what}: symmetric");
            assert!(m.diag().iter().all(|&d| d == 0.0), "{what}: zero diagonal");
            assert_all_close(&what, cumulative_angles(m.view()), reference.cumulative.iter().copied());
            sum.push(s, m.view()).unwrap();
        }
        let mean = sum.mean().unwrap();
        let want = Array2::from_shape_vec(mean.raw_dim(), selection.mean_matrix.concat()).unwrap();
        assert_all_close("mean matrix", mean.iter().copied(), want.iter().copied());
        assert_all_close("mean cumulative", cumulative_angles(mean.view()), selection.mean_cumulative.iter().copied());
    }
}

/// The super-diagonal is the consecutive-layer rotation of the paired analysis, bit for bit.
#[test]
fn super_diagonal_is_the_consecutive_rotation() {
    let (ids, hidden) = hidden_states();
    let her = 607;
    for (s, (ids, states)) in ids.iter().zip(&hidden).enumerate() {
        let Some(position) = ids.iter().position(|&id| id == her).filter(|&p| p > 0) else { continue };
        let rotations = rotate_sentence(s, ids, states.view(), &RotationOptions::new(her)).unwrap();
        let m = pairwise_angles(&states.view(), s, TokenRange::single(position), SubToken::Last, AngleUnit::Degrees);
        let m = m.unwrap();
        for l in 1..m.nrows() {
            assert_eq!(m[[l - 1, l]], rotations.angles[[l - 1, 0]], "sentence {s} layer {l}");
        }
    }
}
