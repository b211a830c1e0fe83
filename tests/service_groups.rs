//! CompareGroups called directly (no network): each group is its own Analyze, the Welch tests equal
//! those of TestSignificance on the groups' statistics from Analyze and from streamed pieces merged
//! (bit for bit), agree with Welch's formulas on the returned angles, and bad requests name the group.
mod common;

use std::time::Duration;

use common::*;
use rotations::analysis::{merge_conditions, ExactMoments};
use rotations::engine::{BatchLimits, Engine};
use rotations::model::Model;
use rotations::proto::rotation_request::Target;
use rotations::proto::rotation_service_server::RotationService;
use rotations::proto::{self, Group, GroupComparisonRequest, GroupTestOptions, RotationRequest};
use rotations::service::convert::{condition_moments_from_proto, condition_statistics, RequestLimits};
use rotations::service::RotationServiceImpl;
use tonic::{Code, Request};

fn service(model: Model) -> RotationServiceImpl {
    let limits = RequestLimits { max_sentences: 64, max_stream_sentences: 1000 };
    RotationServiceImpl::ready(Engine::new(model, BatchLimits::default()), limits, 4)
}

fn sentences(file: &str) -> Vec<String> {
    rotations::client::read_sentences(&repo().join("examples").join(file)).unwrap()
}

fn her(sentences: Vec<String>) -> RotationRequest {
    RotationRequest { sentences, target: Some(Target::TargetText(" her".into())), ..Default::default() }
}

fn group(label: &str, request: RotationRequest) -> Group {
    Group { label: label.into(), request: Some(request) }
}

fn her_groups() -> Vec<Group> {
    vec![group("possessive", her(sentences("her_possessive.txt"))), group("object", her(sentences("her_object.txt")))]
}

fn holm() -> Option<GroupTestOptions> {
    Some(GroupTestOptions { correction: proto::Correction::Holm as i32, ..Default::default() })
}

/// The final chunk's per-condition statistics of a stream of `req`.
async fn streamed_conditions(svc: &RotationServiceImpl, req: RotationRequest) -> Vec<Vec<ExactMoments>> {
    let mut stream = svc.stream_rotations(Request::new(req)).await.unwrap().into_inner();
    use tokio_stream::StreamExt;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if chunk.last {
            return condition_moments_from_proto(&chunk.condition_statistics).unwrap();
        }
    }
    panic!("the stream ended without its final chunk");
}

/// Welch's t and df from the (f32) angles by the textbook two-pass formulas.
fn welch_by_hand(a: &[f64], b: &[f64]) -> (f64, f64) {
    let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
    let var = |x: &[f64]| {
        let m = mean(x);
        x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (x.len() - 1) as f64
    };
    let (va, vb) = (var(a) / a.len() as f64, var(b) / b.len() as f64);
    let t = (mean(a) - mean(b)) / (va + vb).sqrt();
    let df = (va + vb).powi(2) / (va * va / (a.len() - 1) as f64 + vb * vb / (b.len() - 1) as f64);
    (t, df)
}

fn target_angles(analysis: &proto::Analysis, layer: usize) -> Vec<f64> {
    let t = analysis.rotations.as_ref().unwrap().angles.as_ref().unwrap();
    let n = t.shape[1] as usize;
    (0..n).map(|s| f64::from(t.values[(layer * n + s) * 3])).collect()
}

#[tokio::test]
async fn compare_groups_equals_analyze_test_significance_and_merged_streams() {
    let svc = service(load_bundled());
    let req = GroupComparisonRequest { groups: her_groups(), options: holm() };
    let got = svc.compare_groups(Request::new(req.clone())).await.unwrap().into_inner();
    assert_eq!(got.groups.iter().map(|g| g.label.as_str()).collect::<Vec<_>>(), ["possessive", "object"]);
    let tests = got.tests.clone().unwrap();
    let layers = tests.layers.len();
    assert_eq!((tests.condition, tests.num_tests as usize), (0, layers));

    // Each group's analysis is its own Analyze, condition statistics included.
    let mut from_analyze = Vec::new();
    for g in &req.groups {
        let alone = svc.analyze(Request::new(g.request.clone().unwrap())).await.unwrap().into_inner();
        let mine = got.groups.iter().find(|x| x.label == g.label).unwrap().analysis.clone().unwrap();
        assert_eq!(mine, alone, "group {}", g.label);
        assert_eq!(alone.condition_statistics.len(), 3);
        from_analyze.push(alone.condition_statistics[0].layers.clone());
    }

    // TestSignificance on the groups' statistics from Analyze: the same tests, bit for bit.
    let ask = |a, b| proto::SignificanceRequest { group_a: a, group_b: b, group_options: holm(), ..Default::default() };
    let answer = svc.test_significance(Request::new(ask(from_analyze[0].clone(), from_analyze[1].clone())));
    assert_eq!(answer.await.unwrap().into_inner().group_tests.unwrap(), tests);

    // Each group streamed in two pieces (corpus offsets), the pieces' statistics merged: the same.
    let mut merged_groups = Vec::new();
    for g in &req.groups {
        let whole = g.request.clone().unwrap();
        let mut merged = Vec::new();
        for (lo, hi) in [(9, whole.sentences.len()), (0, 9)] {
            let piece = RotationRequest {
                sentences: whole.sentences[lo..hi].to_vec(),
                first_sentence_index: lo as u64,
                ..whole.clone()
            };
            merge_conditions(&mut merged, &streamed_conditions(&svc, piece).await);
        }
        merged_groups.push(condition_statistics(&merged).swap_remove(0).layers);
    }
    assert_eq!(merged_groups, from_analyze);

    // Welch's formulas on the returned float32 angles agree to float32 precision.
    let (a, b) = (got.groups[0].analysis.as_ref().unwrap(), got.groups[1].analysis.as_ref().unwrap());
    for (l, test) in tests.layers.iter().enumerate() {
        let (t, df) = welch_by_hand(&target_angles(a, l), &target_angles(b, l));
        assert!((test.t - t).abs() <= 1e-4 * t.abs().max(1.0), "layer {}: t {} vs {t}", l + 1, test.t);
        assert!((test.df - df).abs() <= 1e-3 * df, "layer {}: df {} vs {df}", l + 1, test.df);
        assert_eq!((test.n_a, test.n_b), (16, 16));
        assert_eq!(test.flag, proto::GroupFlag::None as i32);
    }
}

#[tokio::test]
async fn another_condition_and_a_group_of_one_sentence() {
    let svc = service(load_bundled());
    let mut groups = her_groups();
    groups[1] = group("single", her(vec!["I saw her at the market.".into()]));
    let options = Some(GroupTestOptions { condition: Some(2), ..Default::default() });
    let got = svc.compare_groups(Request::new(GroupComparisonRequest { groups, options })).await.unwrap().into_inner();
    let tests = got.tests.unwrap();
    assert_eq!(tests.condition, 2);
    for t in &tests.layers {
        assert_eq!(t.flag, proto::GroupFlag::TooFewSentences as i32);
        assert!(t.t.is_nan() && t.p.is_nan() && !t.significant);
    }
    let single = got.groups[1].analysis.as_ref().unwrap();
    assert!(single.significance.is_none() && single.significance_error.contains("at least 2 sentences"));
}

async fn expect_group_error(svc: &RotationServiceImpl, req: GroupComparisonRequest, words: &[&str]) {
    let status = svc.compare_groups(Request::new(req)).await.expect_err("must fail");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    for w in words {
        assert!(status.message().contains(w), "message {:?} lacks {w:?}", status.message());
    }
}

#[tokio::test]
async fn bad_requests_name_the_group_and_cost_no_compute() {
    let (model, computed) = slow_model(Duration::from_millis(20));
    let svc = service(model);
    let two = her_groups;
    let with = |groups: Vec<Group>| GroupComparisonRequest { groups, options: None };
    let mut one_bad_sentence = two();
    one_bad_sentence[1].request.as_mut().unwrap().sentences[3] = "Nobody was there.".into();
    let mut bad_target = two();
    bad_target[0].request.as_mut().unwrap().target = Some(Target::TargetText(" hers elf".into()));
    let mut bad_paired = two();
    bad_paired[1].request.as_mut().unwrap().significance =
        Some(proto::SignificanceOptions { alpha: Some(2.0), ..Default::default() });
    let mut unlabelled = two();
    unlabelled[1].label = " ".into();
    let mut same = two();
    same[1].label = "possessive".into();
    let mut no_request = two();
    no_request[0].request = None;
    let mut empty = two();
    empty[1].request.as_mut().unwrap().sentences.clear();
    let cases: Vec<(GroupComparisonRequest, &[&str])> = vec![
        (with(two()[..1].to_vec()), &["groups", "exactly two", "got 1"]),
        (with([two(), two()].concat()[..3].to_vec()), &["exactly two", "got 3"]),
        (with(unlabelled), &["groups[1].label", "empty"]),
        (with(same), &["groups[1].label", "\"possessive\"", "must differ"]),
        (with(no_request), &["groups[0] (\"possessive\").request", "missing"]),
        (with(empty), &["groups[1] (\"object\")", "no sentences"]),
        (with(one_bad_sentence), &["groups[1] (\"object\")", "sentence 3 (\"Nobody was there.\")", "not found"]),
        (with(bad_target), &["groups[0] (\"possessive\")", "sentence 0", "target tokens", "not found"]),
        (with(bad_paired), &["groups[1] (\"object\")", "alpha"]),
        (
            GroupComparisonRequest {
                options: Some(GroupTestOptions { condition: Some(3), ..Default::default() }),
                ..with(two())
            },
            &["options", "condition 3"],
        ),
        (
            GroupComparisonRequest {
                options: Some(GroupTestOptions { alpha: Some(0.0), ..Default::default() }),
                ..with(two())
            },
            &["options", "alpha"],
        ),
    ];
    for (req, words) in cases {
        expect_group_error(&svc, req, words).await;
    }
    assert_eq!(computed.load(std::sync::atomic::Ordering::SeqCst), 0, "a bad request cost a forward pass");
}

#[tokio::test]
async fn test_significance_refuses_incomplete_or_mixed_group_statistics() {
    let svc = service(load_bundled());
    let stats = |n: usize| {
        let moments = vec![ExactMoments::from_values(&[1.0, 2.5, 4.0]).unwrap(); n];
        condition_statistics(&[moments]).swap_remove(0).layers
    };
    let cases: Vec<(proto::SignificanceRequest, &[&str])> = vec![
        (proto::SignificanceRequest { group_a: stats(2), ..Default::default() }, &["group_b", "missing"]),
        (proto::SignificanceRequest { group_a: stats(2), group_b: stats(3), ..Default::default() }, &["layers"]),
        (
            proto::SignificanceRequest {
                group_a: stats(2),
                group_b: stats(2),
                statistics: stats(2),
                ..Default::default()
            },
            &["group_a", "one of them"],
        ),
        (
            proto::SignificanceRequest {
                group_a: stats(2),
                group_b: stats(2),
                group_options: Some(GroupTestOptions { num_tests: Some(1), ..Default::default() }),
                ..Default::default()
            },
            &["group_options", "num_tests"],
        ),
    ];
    for (req, words) in cases {
        let status = svc.test_significance(Request::new(req)).await.expect_err("must fail");
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        for w in words {
            assert!(status.message().contains(w), "message {:?} lacks {w:?}", status.message());
        }
    }
    let mut broken = stats(2);
    broken[1].sum_sq_exact = vec![0; 31];
    let req = proto::SignificanceRequest { group_a: stats(2), group_b: broken, ..Default::default() };
    let status = svc.test_significance(Request::new(req)).await.expect_err("must fail");
    assert!(status.message().contains("group_b[1].sum_sq_exact"), "{}", status.message());
}
