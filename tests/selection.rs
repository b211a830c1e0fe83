//! Which token, through the service on the bundled model: every occurrence, the last or n-th,
//! character spans (sentence-initial words, words GPT-2 splits), sub-token last / first / mean, and
//! a target across all layers, against `tests/golden/selection.json` (made by
//! `tools/make_selection_golden.py`: the Hugging Face tokenizer's character offsets and numpy
//! angles on PyTorch hidden states). Then: rows and the mean matrix do not depend on how the
//! corpus was split (pieces by `first_sentence_index`, StreamRotations, Analyze), and bad
//! selections are INVALID_ARGUMENT naming the sentence.
mod common;

use common::*;
use rotations::analysis::AngleMatrixSum;
use rotations::engine::{BatchLimits, Engine};
use rotations::proto::rotation_request::Target;
use rotations::proto::rotation_service_server::RotationService;
use rotations::proto::{self, CharSpan, RotationRequest};
use rotations::service::convert::{self, RequestLimits};
use rotations::service::RotationServiceImpl;
use serde_json::Value;
use tokio_stream::StreamExt;
use tonic::{Code, Request};

/// ONNX Runtime against PyTorch hidden states: the notebook test's tolerance, in degrees.
const ATOL_DEGREES: f64 = 1e-3;

fn service(max_tokens: usize, max_sentences: usize) -> RotationServiceImpl {
    let engine = Engine::new(load_bundled(), BatchLimits { max_tokens, max_sentences });
    RotationServiceImpl::ready(engine, RequestLimits { max_sentences: 4096, max_stream_sentences: 100_000 }, 16)
}

fn spans(v: &Value) -> Vec<CharSpan> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| CharSpan { start: s[0].as_u64().unwrap() as u32, end: s[1].as_u64().unwrap() as u32 })
        .collect()
}

/// The request a golden case describes.
fn request_of(case: &Value, sentences: &[String]) -> RotationRequest {
    let mut req = RotationRequest { sentences: sentences.to_vec(), ..Default::default() };
    if let Some(t) = case["target_text"].as_str() {
        req.target = Some(Target::TargetText(t.into()));
    }
    if !case["target_spans"].is_null() {
        req.target_spans = spans(&case["target_spans"]);
    }
    if !case["non_target_spans"].is_null() {
        req.non_target_spans = spans(&case["non_target_spans"]);
    }
    req.non_target_offset = case["non_target_offset"].as_i64().map(|o| o as i32);
    req.occurrence = match case["occurrence"].as_str() {
        Some("all") => proto::Occurrence::All,
        Some("last") => proto::Occurrence::Last,
        Some("nth") => proto::Occurrence::Nth,
        _ => proto::Occurrence::Unspecified,
    } as i32;
    req.occurrence_number = case["occurrence_number"].as_u64().unwrap_or(0) as u32;
    req.sub_token = match case["sub_token"].as_str() {
        Some("mean") => proto::SubToken::Mean,
        Some("first") => proto::SubToken::First,
        _ => proto::SubToken::Unspecified,
    } as i32;
    req.all_layers = case["all_layers"].as_bool().unwrap_or(false);
    req
}

fn close(what: &str, got: f64, want: f64) {
    assert!((got - want).abs() <= ATOL_DEGREES, "{what}: got {got}, want {want}");
}

#[tokio::test]
async fn selections_match_the_tokenizer_and_numpy_on_pytorch_hidden_states() {
    let svc = service(4096, 64);
    let golden: Value = golden("selection.json");
    let sentences: Vec<String> = serde_json::from_value(golden["sentences"].clone()).unwrap();
    for case in golden["cases"].as_array().unwrap() {
        let name = case["case"]["name"].as_str().unwrap();
        let req = request_of(&case["case"], &sentences);
        let analysis = svc.analyze(Request::new(req)).await.unwrap().into_inner();
        let rot = analysis.rotations.unwrap();
        let rows = case["rows"].as_array().unwrap();
        let t = rot.angles.as_ref().unwrap();
        let (layers, n) = (t.shape[0] as usize, t.shape[1] as usize);
        assert_eq!(n, rows.len(), "{name}: one row per selected occurrence");
        let sub_token = case["case"]["sub_token"].as_str().unwrap_or("last");
        for (j, (report, want)) in rot.sentences.iter().zip(rows).enumerate() {
            let range = |k: &str| [want[k][0].as_u64().unwrap() as u32, want[k][1].as_u64().unwrap() as u32];
            let got = (report.index, report.occurrence, [report.target_start, report.target_end]);
            let expected = (want["sentence"].as_u64().unwrap() as u32, want["occurrence"].as_u64().unwrap() as u32);
            assert_eq!(got, (expected.0, expected.1, range("target")), "{name}: row {j}");
            assert_eq!([report.non_target_start, report.non_target_end], range("non_target"), "{name}: row {j}");
            let standing = if sub_token == "first" { range("target")[0] } else { range("target")[1] - 1 };
            assert_eq!(report.target_position, standing, "{name}: row {j}: the sub-token standing for the word");
            for l in 0..layers {
                let angle = |c: usize| f64::from(t.values[(l * n + j) * 3 + c]);
                close(
                    &format!("{name}: row {j} layer {} target", l + 1),
                    angle(0),
                    want["target_angles"][l].as_f64().unwrap(),
                );
                let nt = want["non_target_angles"][l].as_f64().unwrap();
                close(&format!("{name}: row {j} layer {} non-target", l + 1), angle(1), nt);
            }
        }
        match (&rot.all_layers, case.get("mean_matrix")) {
            (Some(all), Some(want)) => {
                let mean = all.mean_matrix.as_ref().unwrap();
                let states = layers + 1;
                assert_eq!(mean.shape, [states as u32, states as u32]);
                for (k, w) in want.as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap()).enumerate() {
                    close(
                        &format!("{name}: mean matrix [{}, {}]", k / states, k % states),
                        f64::from(mean.values[k]),
                        w.as_f64().unwrap(),
                    );
                }
                let cumulative = &all.mean_cumulative.as_ref().unwrap().values;
                for (l, w) in case["mean_cumulative"].as_array().unwrap().iter().enumerate() {
                    close(&format!("{name}: mean cumulative {l}"), f64::from(cumulative[l]), w.as_f64().unwrap());
                }
                assert_eq!(all.sums.as_ref().unwrap().n, rows.len() as u64);
                assert!(all.row_matrices.is_none(), "per-row matrices only on request");
            }
            (None, None) => {}
            (got, _) => panic!("{name}: all_layers {got:?} where the reference has {:?}", case.get("mean_matrix")),
        }
    }
}

/// A row: its report, its angles `[layer][condition]` as bits, its draws.
type Row = (proto::SentenceReport, Vec<[u32; 3]>, Vec<proto::ShuffleDraw>);

/// Rows of an angle tensor `[layers, rows, 3]` with their draws (layer-major) and reports.
fn rows_of(t: &proto::Tensor, draws: &[proto::ShuffleDraw], reports: &[proto::SentenceReport]) -> Vec<Row> {
    let (layers, n) = (t.shape[0] as usize, t.shape[1] as usize);
    (0..n)
        .map(|j| {
            let angles = (0..layers).map(|l| [0, 1, 2].map(|c| t.values[(l * n + j) * 3 + c].to_bits())).collect();
            (reports[j], angles, (0..layers).map(|l| draws[l * n + j]).collect())
        })
        .collect()
}

/// A streamed piece's rows, per-row matrices and final exact matrix sums.
async fn stream_rows(svc: &RotationServiceImpl, req: RotationRequest) -> (Vec<Row>, Vec<u32>, AngleMatrixSum) {
    let mut stream = svc.stream_rotations(Request::new(req)).await.unwrap().into_inner();
    let (mut rows, mut matrices) = (Vec::new(), Vec::new());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        let all = chunk.all_layers.clone().unwrap();
        if chunk.last {
            return (rows, matrices, convert::angle_matrix_sums_from_proto(all.sums.as_ref().unwrap()).unwrap());
        }
        rows.extend(rows_of(chunk.angles.as_ref().unwrap(), &chunk.shuffle_draws, &chunk.sentences));
        matrices.extend(all.row_matrices.unwrap().values.iter().map(|v| v.to_bits()));
    }
    panic!("the stream ended without its final chunk")
}

/// Every occurrence as a row, with all layers: Analyze of the whole corpus, pieces of it streamed
/// with their `first_sentence_index`, and the pieces' exact matrix sums merged give the same rows
/// (angles, draws, reports), the same per-row matrices and the same mean matrix, bit for bit.
#[tokio::test]
async fn rows_and_the_mean_matrix_do_not_depend_on_the_split() {
    let svc = service(256, 4);
    let golden: Value = golden("selection.json");
    let base: Vec<String> = serde_json::from_value(golden["sentences"].clone()).unwrap();
    let corpus: Vec<String> = (0..23).map(|i| format!("{i}: {}", base[i % base.len()])).collect();
    let request = |sentences: &[String], first: usize| RotationRequest {
        sentences: sentences.to_vec(),
        target: Some(Target::TargetText(" her".into())),
        occurrence: proto::Occurrence::All as i32,
        sub_token: proto::SubToken::Mean as i32,
        all_layers: true,
        row_matrices: true,
        first_sentence_index: first as u64,
        ..Default::default()
    };
    let whole = svc.analyze(Request::new(request(&corpus, 0))).await.unwrap().into_inner().rotations.unwrap();
    let whole_rows = rows_of(whole.angles.as_ref().unwrap(), &whole.shuffle_draws, &whole.sentences);
    assert_eq!(whole_rows.len(), 2 * corpus.len(), "two occurrences of ' her' per sentence");
    let all = whole.all_layers.unwrap();
    let whole_matrices: Vec<u32> = all.row_matrices.unwrap().values.iter().map(|v| v.to_bits()).collect();
    let whole_sums = convert::angle_matrix_sums_from_proto(all.sums.as_ref().unwrap()).unwrap();
    assert_eq!(whole_sums.n(), whole_rows.len() as u64);

    for size in [1usize, 5, 23] {
        let (mut rows, mut matrices, mut sums) = (Vec::new(), Vec::new(), AngleMatrixSum::default());
        for first in (0..corpus.len()).step_by(size) {
            let end = (first + size).min(corpus.len());
            let (r, m, s) = stream_rows(&svc, request(&corpus[first..end], first)).await;
            rows.extend(r);
            matrices.extend(m);
            sums.merge(&s).unwrap();
        }
        assert_eq!(rows, whole_rows, "pieces of {size}: rows");
        assert_eq!(matrices, whole_matrices, "pieces of {size}: per-row matrices");
        assert_eq!(sums, whole_sums, "pieces of {size}: exact matrix sums");
    }
    let mean = convert::all_layers(&whole_sums, None).unwrap().mean_matrix.unwrap();
    assert_eq!(Some(mean), all.mean_matrix);
}

/// A row is the same whichever way it was asked for: the second occurrence alone (n-th, last) or
/// within all, and the first occurrence as the notebook's default request, draws included.
#[tokio::test]
async fn a_row_is_keyed_by_sentence_and_occurrence() {
    let svc = service(4096, 64);
    let golden: Value = golden("selection.json");
    let sentences: Vec<String> = serde_json::from_value(golden["sentences"].clone()).unwrap();
    let rows = |occurrence: proto::Occurrence, number: u32| {
        let req = RotationRequest {
            sentences: sentences.clone(),
            target: Some(Target::TargetText(" her".into())),
            occurrence: occurrence as i32,
            occurrence_number: number,
            ..Default::default()
        };
        let svc = svc.clone();
        async move {
            let rot = svc.compute_rotations(Request::new(req)).await.unwrap().into_inner();
            rows_of(rot.angles.as_ref().unwrap(), &rot.shuffle_draws, &rot.sentences)
        }
    };
    let all = rows(proto::Occurrence::All, 0).await;
    let (firsts, seconds): (Vec<Row>, Vec<Row>) = all.into_iter().partition(|r| r.0.occurrence == 1);
    assert_eq!(rows(proto::Occurrence::Unspecified, 0).await, firsts);
    assert_eq!(rows(proto::Occurrence::Nth, 2).await, seconds);
    assert_eq!(rows(proto::Occurrence::Last, 0).await, seconds);
    assert_ne!(firsts[0].2, seconds[0].2, "each occurrence draws its own shuffled control");
}

async fn expect_invalid(svc: &RotationServiceImpl, req: RotationRequest, needles: &[&str]) {
    let status = svc.analyze(Request::new(req)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    for needle in needles {
        assert!(status.message().contains(needle), "{:?} lacks {needle:?}", status.message());
    }
}

#[tokio::test]
async fn bad_selections_are_invalid_arguments_naming_the_sentence() {
    let svc = service(4096, 64);
    let sentences = vec!["I saw her at the market.".to_string(), "Nakamura met her twice.".to_string()];
    let base = RotationRequest { sentences: sentences.clone(), ..Default::default() };
    let span = |start, end| CharSpan { start, end };
    let with_spans = |target_spans: Vec<CharSpan>| RotationRequest { target_spans, ..base.clone() };

    // "Nakamura" is N|ak|amura: a span ending inside it cuts a token.
    let quoted = r#"sentence 1 ("Nakamura met her twice."): span (0, 4) does not start and end on token boundaries"#;
    expect_invalid(&svc, with_spans(vec![span(6, 9), span(0, 4)]), &[quoted]).await;
    expect_invalid(&svc, with_spans(vec![span(6, 9), span(9, 40)]), &["sentence 1", "span (9, 40)", "23 characters"])
        .await;
    expect_invalid(&svc, with_spans(vec![span(6, 9)]), &["target_spans", "1 spans for 2 sentences"]).await;
    let both = RotationRequest { target: Some(Target::TargetText(" her".into())), ..with_spans(vec![span(6, 9); 2]) };
    expect_invalid(&svc, both, &["target_spans", "not both"]).await;
    let overlap =
        RotationRequest { non_target_spans: vec![span(2, 9), span(0, 8)], ..with_spans(vec![span(6, 9), span(0, 8)]) };
    expect_invalid(&svc, overlap, &["sentence 0", "shares a token with the target"]).await;

    let all = RotationRequest { occurrence: proto::Occurrence::All as i32, ..with_spans(vec![span(6, 9); 2]) };
    expect_invalid(&svc, all, &["occurrence", "target_spans"]).await;

    let her = RotationRequest { target: Some(Target::TargetText(" her".into())), ..base.clone() };
    let nth = |n| RotationRequest { occurrence: proto::Occurrence::Nth as i32, occurrence_number: n, ..her.clone() };
    expect_invalid(&svc, nth(2), &["sentence 0", "occurrence 2", "1 time"]).await;
    expect_invalid(&svc, nth(0), &["occurrence_number", "from 1"]).await;
    let stray = RotationRequest { occurrence_number: 2, ..her.clone() };
    expect_invalid(&svc, stray, &["occurrence_number", "OCCURRENCE_NTH"]).await;
    expect_invalid(&svc, RotationRequest { occurrence: 9, ..her.clone() }, &["occurrence", "9"]).await;
    expect_invalid(&svc, RotationRequest { sub_token: 7, ..her.clone() }, &["sub_token", "7"]).await;
    expect_invalid(&svc, RotationRequest { row_matrices: true, ..her.clone() }, &["row_matrices", "all_layers"]).await;
    let word = RotationRequest { target: Some(Target::TargetText(" Nakamura met".into())), ..base.clone() };
    expect_invalid(&svc, word, &["sentence 0", "target tokens", "not found"]).await;
    // The service is unharmed.
    svc.analyze(Request::new(her)).await.unwrap();
}
