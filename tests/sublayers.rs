//! Inside the layer (issue 26): steps = SUBLAYERS on the bundled models/llama-tiny-random-sublayers
//! (models/llama-tiny-random's checkpoint exported with --sublayers) against PyTorch forward hooks
//! (tests/golden/llama_sublayers.json, tools/make_golden_sublayers.py: mid state = block output − MLP
//! output, each sentence run alone) and scipy's paired t-tests; streams, pieces and CompareGroups give
//! Analyze's results bit for bit; a model without sub-layer states answers FAILED_PRECONDITION.
mod common;

use common::*;
use rotations::engine::{BatchLimits, Engine};
use rotations::proto::rotation_request::Target;
use rotations::proto::rotation_service_server::RotationService;
use rotations::proto::{self, RotationRequest, Steps};
use rotations::service::convert::{self, RequestLimits};
use rotations::service::RotationServiceImpl;
use tokio_stream::StreamExt;
use tonic::{Code, Request};

const LIMITS: RequestLimits = RequestLimits { max_sentences: 4096, max_stream_sentences: 100_000 };
const GOLDEN: &str = "llama_sublayers.json";

fn sublayer_model_dir() -> std::path::PathBuf {
    repo().join("models/llama-tiny-random-sublayers")
}

fn service(dir: &std::path::Path, max_sentences: usize) -> RotationServiceImpl {
    let engine = Engine::new(load_model(dir), BatchLimits { max_tokens: 512, max_sentences });
    RotationServiceImpl::ready(engine, LIMITS, 8)
}

fn request(sentences: &[String], first: u64, steps: Steps) -> RotationRequest {
    RotationRequest {
        sentences: sentences.to_vec(),
        target: Some(Target::TargetText(" her".into())),
        first_sentence_index: first,
        steps: steps as i32,
        norms: true,
        ..Default::default()
    }
}

fn golden_sentences(g: &serde_json::Value) -> Vec<String> {
    g["sentences"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn attention_and_mlp_step_angles_and_tests_equal_pytorch_hooks_and_scipy() {
    let g: serde_json::Value = golden(GOLDEN);
    let sentences = golden_sentences(&g);
    let svc = service(&sublayer_model_dir(), 4);
    let info = svc.get_model_info(Request::new(proto::GetModelInfoRequest {})).await.unwrap().into_inner();
    assert!(info.sublayers && info.sublayer_states.contains("post_attention_layernorm"), "{info:?}");
    let analysis = svc.analyze(Request::new(request(&sentences, 0, Steps::Sublayers))).await.unwrap().into_inner();
    let rotations = analysis.rotations.unwrap();
    let sub = rotations.sublayers.unwrap();
    assert_eq!(
        (sub.steps, sub.conditions),
        (vec!["attention".to_string(), "mlp".into()], vec!["target".to_string(), "non_target".into()])
    );
    let t = sub.angles.unwrap();
    let (layers, rows) = (t.shape[0] as usize, sentences.len());
    assert_eq!(t.shape, [4, 2, rows as u32, 2]);
    let layer_angles = rotations.angles.unwrap();
    let mut worst = 0f64;
    for (r, row) in g["rows"].as_array().unwrap().iter().enumerate() {
        for l in 0..layers {
            for c in 0..2 {
                for s in 0..2 {
                    let want = row["steps_deg"][l][s][c].as_f64().unwrap();
                    let got = f64::from(t.values[((l * 2 + s) * rows + r) * 2 + c]);
                    worst = worst.max((got - want).abs());
                }
                let want = row["layers_deg"][l][c].as_f64().unwrap();
                worst = worst.max((f64::from(layer_angles.values[(l * rows + r) * 3 + c]) - want).abs());
            }
        }
    }
    eprintln!("largest difference from PyTorch hooks: {worst:e} degrees");
    // f32 on the wire: ~1e-6 of angles up to ~90 degrees.
    assert!(worst <= 1e-4, "largest difference from PyTorch hooks {worst:e} degrees");
    let means = sub.layer_means.unwrap();
    assert_eq!(means.shape, [4, 2, 2]);
    // The means (from the exact sums) are the hooks' means over the rows.
    for (k, got) in means.values.iter().enumerate() {
        let (l, s, c) = (k / 4, k / 2 % 2, k % 2);
        let rows = g["rows"].as_array().unwrap();
        let want = rows.iter().map(|row| row["steps_deg"][l][s][c].as_f64().unwrap()).sum::<f64>() / rows.len() as f64;
        assert!((f64::from(*got) - want).abs() <= 1e-4, "layer {} step {s} condition {c}: {got} vs {want}", l + 1);
    }

    let tests = analysis.step_significance.unwrap();
    assert_eq!((tests.num_tests, tests.layers.len()), (8, 8), "one test per step, corrected over all steps");
    for (k, (test, want)) in tests.layers.iter().zip(g["step_tests"].as_array().unwrap()).enumerate() {
        assert_eq!(test.layer as usize, k + 1);
        let (t_want, p_want) = (want["t"].as_f64().unwrap(), want["p"].as_f64().unwrap());
        assert!((test.t - t_want).abs() <= 1e-4 * t_want.abs().max(1.0), "step {k}: t {} vs scipy {t_want}", test.t);
        assert!((test.p - p_want).abs() <= 1e-4 * p_want.max(1e-12), "step {k}: p {} vs scipy {p_want}", test.p);
        let bonferroni = want["p_bonferroni"].as_f64().unwrap();
        assert!((test.p_adjusted - bonferroni).abs() <= 1e-4 * bonferroni.max(1e-12));
    }
    assert_eq!(analysis.step_statistics.len(), 8);

    // Norms at every state (4 + 1 hidden, 4 mids, the last block's output) and the growth ratios.
    let norms = rotations.norms.unwrap();
    let (values, growth) = (norms.norms.unwrap(), norms.growth.unwrap());
    assert_eq!((values.shape.clone(), growth.shape.clone()), (vec![10, rows as u32, 2], vec![4, rows as u32, 2]));
    let mut worst = 0f64;
    for (r, row) in g["rows"].as_array().unwrap().iter().enumerate() {
        let want = |k: usize, c: usize| row["norms"][k][c].as_f64().unwrap();
        for k in 0..10 {
            for c in 0..2 {
                worst = worst.max((f64::from(values.values[(k * rows + r) * 2 + c]) / want(k, c) - 1.0).abs());
            }
        }
        for l in 0..4 {
            for c in 0..2 {
                let ratio = want(l + 1, c) / want(l, c);
                worst = worst.max((f64::from(growth.values[(l * rows + r) * 2 + c]) / ratio - 1.0).abs());
            }
        }
    }
    eprintln!("largest relative norm difference from PyTorch: {worst:e}");
    assert!(worst <= 1e-5, "largest relative norm difference from PyTorch {worst:e}");
    let mean_norms = norms.mean_norms.unwrap();
    assert_eq!(mean_norms.shape, [10, 2]);
    let want: f64 =
        g["rows"].as_array().unwrap().iter().map(|r| r["norms"][9][1].as_f64().unwrap()).sum::<f64>() / rows as f64;
    assert!((f64::from(mean_norms.values[19]) / want - 1.0).abs() <= 1e-5);
}

#[tokio::test]
async fn streams_pieces_and_groups_equal_one_analyze_bit_for_bit() {
    let g: serde_json::Value = golden(GOLDEN);
    let sentences = golden_sentences(&g);
    let n = sentences.len();
    let svc = service(&sublayer_model_dir(), 2);
    let whole = svc.analyze(Request::new(request(&sentences, 0, Steps::Sublayers))).await.unwrap().into_inner();
    let sub = whole.rotations.as_ref().unwrap().sublayers.clone().unwrap().angles.unwrap();

    // A stream of chunks of 2 sentences: each chunk's step angles are Analyze's, and the final
    // chunk's merged statistics and tests are Analyze's.
    let mut stream =
        svc.stream_rotations(Request::new(request(&sentences, 0, Steps::Sublayers))).await.unwrap().into_inner();
    let mut seen = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if chunk.last {
            assert_eq!(chunk.step_statistics, whole.step_statistics);
            assert_eq!(chunk.step_significance, whole.step_significance);
            // The merged step sums and means: Analyze's, without the rows' angles.
            let summary = whole
                .rotations
                .as_ref()
                .unwrap()
                .sublayers
                .clone()
                .map(|s| proto::SublayerRotations { angles: None, ..s });
            assert_eq!(chunk.sublayers, summary);
            let (streamed, analyzed) = (chunk.norms.unwrap(), whole.rotations.as_ref().unwrap().norms.clone().unwrap());
            assert_eq!(streamed.norm_statistics, analyzed.norm_statistics);
            assert_eq!(streamed.growth_statistics, analyzed.growth_statistics);
            assert_eq!((streamed.mean_norms, streamed.mean_growth), (analyzed.mean_norms, analyzed.mean_growth));
            break;
        }
        let part = chunk.sublayers.unwrap().angles.unwrap();
        let k = part.shape[2] as usize;
        for ls in 0..8 {
            for r in 0..k {
                for c in 0..2 {
                    let (got, want) = (part.values[(ls * k + r) * 2 + c], sub.values[(ls * n + seen + r) * 2 + c]);
                    assert_eq!(got.to_bits(), want.to_bits(), "step {ls}, row {}", seen + r);
                }
            }
        }
        seen += k;
    }
    assert_eq!(seen, n);

    // Pieces (as the CLI's shards send them): merged exact statistics give the same tests and norms.
    let mut merged = vec![rotations::analysis::PairedStats::default(); 8];
    let mut norm_sums: Vec<Vec<rotations::analysis::ExactMoments>> = Vec::new();
    for (start, end) in [(0, 1), (1, 4), (4, n)] {
        let piece = request(&sentences[start..end], start as u64, Steps::Sublayers);
        let part = svc.analyze(Request::new(piece)).await.unwrap().into_inner();
        for (m, s) in merged.iter_mut().zip(convert::paired_stats_from_proto(&part.step_statistics).unwrap()) {
            m.merge(&s);
        }
        let piece_norms = part.rotations.unwrap().norms.unwrap().norm_statistics;
        let piece_norms = convert::condition_moments_from_proto(&piece_norms).unwrap();
        rotations::analysis::merge_conditions(&mut norm_sums, &piece_norms);
    }
    let whole_norms = whole.rotations.as_ref().unwrap().norms.clone().unwrap();
    assert_eq!(convert::condition_statistics(&norm_sums), whole_norms.norm_statistics);
    assert_eq!(convert::layer_statistics(&merged), whole.step_statistics);
    let req = proto::SignificanceRequest { statistics: convert::layer_statistics(&merged), ..Default::default() };
    let tests = svc.test_significance(Request::new(req)).await.unwrap().into_inner();
    assert_eq!(Some(tests), whole.step_significance);

    // CompareGroups: each group's analysis is Analyze's.
    let group = |label: &str, range: std::ops::Range<usize>| proto::Group {
        label: label.into(),
        request: Some(request(&sentences[range.clone()], range.start as u64, Steps::Sublayers)),
    };
    let req = proto::GroupComparisonRequest { groups: vec![group("a", 0..3), group("b", 3..n)], options: None };
    let compared = svc.compare_groups(Request::new(req)).await.unwrap().into_inner();
    let alone = svc.analyze(Request::new(request(&sentences[0..3], 0, Steps::Sublayers))).await.unwrap().into_inner();
    let in_group = compared.groups[0].analysis.as_ref().unwrap();
    assert_eq!(
        (&in_group.step_statistics, &in_group.step_significance),
        (&alone.step_statistics, &alone.step_significance)
    );
    assert_eq!(in_group.rotations.as_ref().unwrap().sublayers, alone.rotations.unwrap().sublayers);
}

#[tokio::test]
async fn a_model_without_sublayer_states_answers_failed_precondition() {
    let sentences = vec!["I saw her at the market.".to_string(), "They told her.".to_string()];
    let plain = service(&llama_model_dir(), 4);
    let status = plain.analyze(Request::new(request(&sentences, 0, Steps::Sublayers))).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("--sublayers") && status.message().contains("llama-tiny-random"),
        "{}",
        status.message()
    );
    let status = plain.stream_rotations(Request::new(request(&sentences, 0, Steps::Sublayers))).await.err().unwrap();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let bad = RotationRequest { steps: 9, ..request(&sentences, 0, Steps::Layers) };
    let status = plain.analyze(Request::new(bad)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("steps"), "{}", status.message());

    // Without steps, the sub-layer model's layer angles are the plain export's (the same weights).
    let layers = plain.analyze(Request::new(request(&sentences, 0, Steps::Layers))).await.unwrap().into_inner();
    let sub = service(&sublayer_model_dir(), 4);
    let same = sub.analyze(Request::new(request(&sentences, 0, Steps::Unspecified))).await.unwrap().into_inner();
    let (a, b) = (layers.rotations.unwrap(), same.rotations.unwrap());
    assert!(b.sublayers.is_none() && same.step_significance.is_none());
    for (x, y) in a.angles.unwrap().values.iter().zip(&b.angles.unwrap().values) {
        assert!((x - y).abs() <= 1e-4, "{x} vs {y}");
    }
}
