//! The reduced-output graph (`tools/export_model.py --gather-outputs`): it returns only the vectors
//! the analysis reads, and those equal slicing the full outputs, so the analysis is the same.
mod common;

use common::*;
use rotations::analysis::{self, AngleUnit, RotationOptions, Rotations};
use rotations::analysis::{Occurrence, SubToken};
use rotations::engine::{BatchLimits, Engine, RotationJob, Selection, Target};
use rotations::model::{GatherOutputs, Hidden, Model, ModelError, OrtTuning, RuntimeOptions, VectorIndex};

/// The tiny model exported with `--gather-outputs`: same weights as the bundled one.
fn gather_model_dir() -> std::path::PathBuf {
    repo().join("models/gpt2-tiny-random-gather")
}

fn load(dir: &std::path::Path, gather_outputs: GatherOutputs) -> Result<Model, ModelError> {
    let tuning = OrtTuning { gather_outputs, ..Default::default() };
    Model::load(dir, &RuntimeOptions { tuning, ..runtime_options() })
}

fn sentences() -> Vec<String> {
    rotations::client::read_sentences(&repo().join("examples/her_sentences.txt")).unwrap()
}

fn token_ids(model: &Model, texts: &[String]) -> Vec<Vec<u32>> {
    texts.iter().map(|t| model.tokenizer.encode(t).unwrap().ids).collect()
}

#[test]
fn gathered_vectors_equal_slices_of_every_hidden_state() {
    let gathering = load(&gather_model_dir(), GatherOutputs::On).unwrap();
    assert!(gathering.info.gathers);
    let full = load(&gather_model_dir(), GatherOutputs::Off).unwrap();
    assert!(!full.info.gathers);
    let bundled = load_bundled();

    let ids = token_ids(&gathering, &sentences()[..12]);
    let states = gathering.info.num_hidden_states() as u32;
    // Per sentence: every vector, none, or a sparse pattern (sorted, distinct, as the analysis lists them).
    let wanted: Vec<Vec<VectorIndex>> = ids
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let all = (0..states).flat_map(|k| (0..s.len() as u32).map(move |p| (k, p)));
            match i % 3 {
                0 => all.collect(),
                1 => Vec::new(),
                _ => all.filter(|(k, p)| (k + p) % 4 == 1).collect(),
            }
        })
        .collect();
    let gathered = gathering.hidden_wanted_blocking(ids.clone(), wanted.clone()).unwrap();
    let every = full.hidden_states_blocking(ids.clone()).unwrap();
    // The two graphs hold the same weights and compute the hidden states with the same nodes.
    assert_eq!(every, bundled.hidden_states_blocking(ids.clone()).unwrap());

    for (i, (g, want)) in gathered.iter().zip(&wanted).enumerate() {
        let Hidden::Gathered(g) = g else { panic!("sentence {i}: every state returned, not the gathered ones") };
        assert_eq!(&g.index, want);
        assert_eq!((g.num_states, g.num_tokens), (states as usize, ids[i].len()));
        for (row, &(k, p)) in want.iter().enumerate() {
            let slice = every[i].slice(ndarray::s![k as usize, p as usize, ..]);
            assert_eq!(g.vectors.row(row), slice, "sentence {i}, hidden state {k}, position {p}");
        }
    }
}

/// The rotations of `texts` as the corpus sentences `first_index..` (the shuffled draws, and so the
/// gathered vectors, depend on the corpus index).
async fn rotations_of(model: Model, texts: &[String], first_index: usize) -> Rotations {
    selected_rotations_of(model, texts, first_index, Target::Text(" her".into()), Selection::default()).await
}

/// [`rotations_of`] for another target and selection.
async fn selected_rotations_of(
    model: Model,
    texts: &[String],
    first_index: usize,
    target: Target,
    selection: Selection,
) -> Rotations {
    let engine = Engine::new(model, BatchLimits { max_tokens: 96, max_sentences: 5 });
    let job = RotationJob {
        sentences: texts.to_vec(),
        target,
        unit: AngleUnit::Degrees,
        non_target_offset: -1,
        seed: 7,
        first_index,
        selection,
        allow_bos_non_target: false,
        steps: false,
        norms: false,
        skip_invalid: false,
        vectors: None,
        validate_only: false,
    };
    let prepared = engine.prepare(&job).unwrap();
    engine.rotations(&prepared, job.unit, &mut Default::default()).await.unwrap()
}

#[tokio::test]
async fn the_reduced_output_graph_gives_the_same_analysis_bit_for_bit() {
    let texts = sentences();
    let gathering = load(&gather_model_dir(), GatherOutputs::On).unwrap();
    for first_index in [0, 1000] {
        let reduced = rotations_of(gathering.clone(), &texts, first_index).await;
        let full = rotations_of(load_bundled(), &texts, first_index).await;
        assert_eq!(reduced, full, "first_index {first_index}");
        let sig = analysis::SignificanceOptions::default();
        assert_eq!(reduced.significance(&sig), full.significance(&sig));
    }

    // The graph really returned only what the analysis reads: at most 4 per layer and 2 more.
    let opts = RotationOptions { seed: 7, ..RotationOptions::new(607) };
    let ids = token_ids(&gathering, &texts[..3]);
    let layers = gathering.info.num_layers;
    let wanted: Vec<_> =
        ids.iter().enumerate().map(|(i, s)| analysis::vectors_read(i, s, layers, &opts).unwrap()).collect();
    for (i, h) in gathering.forward_wanted_unchecked(ids.clone(), Some(wanted)).await.unwrap().iter().enumerate() {
        let Hidden::Gathered(g) = h else { panic!("not gathered") };
        assert!(g.vectors.nrows() <= 4 * layers + 2 && g.vectors.nrows() < (layers + 1) * ids[i].len());
    }
}

/// Every occurrence of a word GPT-2 splits, its sub-tokens' mean, and all layers: the gathering
/// graph serves the words' every token and every hidden state of the target, bit for bit.
#[tokio::test]
async fn words_of_several_tokens_and_all_layers_gather_the_same() {
    let texts: Vec<String> = [
        "Nakamura met her twice, and Nakamura thanked her.",
        "They say Nakamura is late.",
        "I asked Nakamura, then Nakamura and Nakamura again.",
    ]
    .map(String::from)
    .to_vec();
    let gathering = load(&gather_model_dir(), GatherOutputs::On).unwrap();
    for sub_token in [SubToken::Mean, SubToken::First] {
        let selection = Selection { occurrence: Occurrence::All, sub_token, all_layers: true, ..Default::default() };
        let target = || Target::Text(" Nakamura".into());
        let reduced = selected_rotations_of(gathering.clone(), &texts, 3, target(), selection.clone()).await;
        let full = selected_rotations_of(load_bundled(), &texts, 3, target(), selection).await;
        assert_eq!(reduced, full, "{sub_token:?}");
        assert_eq!(reduced.num_sentences(), 5, "every occurrence is a row");
        assert!(reduced.sentences.iter().all(|r| r.selection.target.len() > 1), "a word of several tokens");
        assert!(reduced.layer_matrices.is_some());
    }
}

#[test]
fn gather_on_needs_a_gathering_graph_and_auto_gathers_only_on_cuda() {
    match load(&bundled_model_dir(), GatherOutputs::On) {
        Err(ModelError::GraphMismatch(m)) => assert!(m.contains("--gather-outputs"), "{m}"),
        other => panic!("expected GraphMismatch, got {:?}", other.map(|m| m.info)),
    }
    // On the CPU provider the hidden states are in host memory already: auto does not gather.
    let auto = load(&gather_model_dir(), GatherOutputs::Auto).unwrap();
    assert_eq!((auto.info.execution_provider, auto.info.gathers), ("cpu", false));
    assert!(!load(&bundled_model_dir(), GatherOutputs::Auto).unwrap().info.gathers);
}
