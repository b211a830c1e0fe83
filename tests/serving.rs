//! Serving under load: batching across requests must not change results, streaming delivers a large
//! corpus in order with mergeable statistics, cancelled work is dropped, and the server survives a
//! mixed load of valid, invalid and cancelled requests.
mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use rotations::analysis::{test_layers, SignificanceOptions};
use rotations::engine::{BatchLimits, Engine};
use rotations::proto::rotation_request::Target;
use rotations::proto::rotation_service_server::RotationService;
use rotations::proto::{self, RotationRequest};
use rotations::service::convert::RequestLimits;
use rotations::service::RotationServiceImpl;
use tokio_stream::StreamExt;
use tonic::{Code, Request};

const LIMITS: RequestLimits = RequestLimits { max_sentences: 4096, max_stream_sentences: 100_000 };

fn her(sentences: Vec<String>) -> RotationRequest {
    RotationRequest { sentences, target: Some(Target::TargetText(" her".into())), ..Default::default() }
}

/// Sentences of varied length, each with " her" after at least one token.
fn corpus(n: usize) -> Vec<String> {
    let nouns = ["market", "park", "station", "old library on the hill", "party", "concert hall downtown"];
    let verbs = ["saw", "met", "called", "thanked", "followed", "greeted warmly and then saw"];
    (0..n)
        .map(|i| {
            let extra = " very".repeat(i % 5);
            format!("On day {i} we {} her at the{extra} {}.", verbs[i % verbs.len()], nouns[(i / 7) % nouns.len()])
        })
        .collect()
}

fn angles_of(r: &proto::RotationResult) -> (usize, usize, Vec<f32>) {
    let t = r.angles.as_ref().unwrap();
    (t.shape[0] as usize, t.shape[1] as usize, t.values.clone())
}

/// Each sentence's angles `[layer][condition]` when it is sent alone, one request at a time.
async fn alone_angles(svc: &RotationServiceImpl, sentences: &[String]) -> HashMap<String, Vec<f32>> {
    let mut alone = HashMap::new();
    for s in sentences {
        let r = svc.compute_rotations(Request::new(her(vec![s.clone()]))).await.unwrap().into_inner();
        alone.insert(s.clone(), angles_of(&r).2);
    }
    alone
}

#[tokio::test]
async fn batching_across_concurrent_requests_does_not_change_results() {
    let model = load_bundled();
    // Small budgets force many mixed batches with padding.
    let svc =
        RotationServiceImpl::ready(Engine::new(model, BatchLimits { max_tokens: 160, max_sentences: 8 }), LIMITS, 64);
    let sentences = corpus(40);

    // Reference: each sentence alone, one request at a time.
    let alone = alone_angles(&svc, &sentences).await;

    // 32 clients at once, 1-3 sentences each.
    let mut tasks = Vec::new();
    for c in 0..32usize {
        let k = 1 + c % 3;
        let mine: Vec<String> = (0..k).map(|j| sentences[(c * 5 + j * 11) % sentences.len()].clone()).collect();
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let r = svc.compute_rotations(Request::new(her(mine.clone()))).await.unwrap().into_inner();
            (mine, r)
        }));
    }
    for t in tasks {
        let (mine, r) = t.await.unwrap();
        let (layers, n, values) = angles_of(&r);
        assert_eq!(n, mine.len());
        for (s, text) in mine.iter().enumerate() {
            let reference = &alone[text];
            for l in 0..layers {
                for c in 0..2 {
                    let (got, want) = (values[(l * n + s) * 3 + c], reference[l * 3 + c]);
                    assert!((got - want).abs() <= 1e-4, "{text:?} layer {l} condition {c}: {got} vs alone {want}");
                }
            }
        }
    }
}

#[tokio::test]
async fn a_large_corpus_streams_in_order_with_exact_merged_statistics() {
    let svc = RotationServiceImpl::ready(Engine::new(load_bundled(), BatchLimits::default()), LIMITS, 8);
    let n = 20_000;
    let sentences = corpus(n);
    let mut stream = svc.stream_rotations(Request::new(her(sentences.clone()))).await.unwrap().into_inner();

    let mut next = 0usize;
    let mut layers = 0usize;
    let mut all: Vec<Vec<[f64; 3]>> = Vec::new(); // [sentence][layer][condition]
    let mut last = None;
    let mut chunks = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if chunk.last {
            last = Some(chunk);
            break;
        }
        chunks += 1;
        assert_eq!(chunk.first_sentence as usize, next, "chunks arrive in input order");
        let t = chunk.angles.as_ref().unwrap();
        let (l, k) = (t.shape[0] as usize, t.shape[1] as usize);
        layers = l;
        assert_eq!(chunk.sentences.len(), k);
        assert_eq!(chunk.shuffle_draws.len(), l * k);
        for s in 0..k {
            assert_eq!(chunk.sentences[s].index as usize, next + s);
            all.push((0..l).map(|li| std::array::from_fn(|c| f64::from(t.values[(li * k + s) * 3 + c]))).collect());
        }
        next += k;
        let p = chunk.progress.unwrap();
        assert_eq!((p.done as usize, p.total as usize), (next, n));
    }
    assert_eq!(next, n);
    assert!(chunks > 1);
    let last = last.expect("a final chunk with statistics");

    // The merged statistics give the same t-test as the whole angle tensor (f32 wire values aside).
    let angles = ndarray::Array3::from_shape_fn((layers, n, 3), |(l, s, c)| all[s][l][c]);
    let whole = test_layers(angles.view(), &SignificanceOptions::default()).unwrap();
    let streamed = last.significance.unwrap();
    for (w, s) in whole.layers.iter().zip(&streamed.layers) {
        assert!((w.t - s.t).abs() <= 1e-4 * w.t.abs().max(1.0), "layer {}: {} vs {}", w.layer, w.t, s.t);
    }
    for (l, st) in last.statistics.iter().enumerate() {
        assert_eq!(st.n as usize, n);
        let sum: f64 = (0..n).map(|s| all[s][l][0] - all[s][l][1]).sum();
        assert!((st.sum - sum).abs() <= 1e-3 * sum.abs().max(1.0), "layer {l}: {} vs {sum}", st.sum);
    }

    // A sample of streamed sentences equals the unary result for the same sentences.
    let sample: Vec<String> = sentences[..50].to_vec();
    let unary = svc.compute_rotations(Request::new(her(sample))).await.unwrap().into_inner();
    let (l, k, values) = angles_of(&unary);
    for s in 0..k {
        for li in 0..l {
            for c in 0..3 {
                assert!((f64::from(values[(li * k + s) * 3 + c]) - all[s][li][c]).abs() <= 1e-4);
            }
        }
    }
}

#[tokio::test]
async fn a_cancelled_request_is_dropped_from_the_queue() {
    let (model, computed) = slow_model(Duration::from_millis(40));
    let svc =
        RotationServiceImpl::ready(Engine::new(model, BatchLimits { max_tokens: 4096, max_sentences: 1 }), LIMITS, 8);
    let sentences = corpus(200);
    // The client gives up after 150 ms (as a deadline or a cancel does: the handler future is dropped).
    let call = svc.compute_rotations(Request::new(her(sentences)));
    assert!(tokio::time::timeout(Duration::from_millis(150), call).await.is_err());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let done = computed.load(Ordering::SeqCst);
    assert!(done <= 12, "{done} of 200 sentences computed after cancellation");
    // And the server carries on.
    svc.compute_rotations(Request::new(her(corpus(2)))).await.unwrap();
}

#[tokio::test]
async fn a_stream_whose_client_leaves_stops_computing() {
    let (model, computed) = slow_model(Duration::from_millis(20));
    let svc =
        RotationServiceImpl::ready(Engine::new(model, BatchLimits { max_tokens: 4096, max_sentences: 4 }), LIMITS, 8);
    let mut stream = svc.stream_rotations(Request::new(her(corpus(2000)))).await.unwrap().into_inner();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let done = computed.load(Ordering::SeqCst);
    assert!(done < 100, "{done} of 2000 sentences computed after the client left");
}

#[tokio::test]
async fn stream_limits_and_errors_arrive_before_any_chunk() {
    let svc = RotationServiceImpl::ready(
        Engine::new(load_bundled(), BatchLimits::default()),
        RequestLimits { max_sentences: 10, max_stream_sentences: 100 },
        8,
    );
    let status = svc.stream_rotations(Request::new(her(corpus(101)))).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("max_stream_sentences") && status.message().contains("100"),
        "{}",
        status.message()
    );
    // A bad sentence is reported by its index when its chunk is reached (sentences are tokenized a
    // chunk at a time), after the chunks before it.
    let mut bad = corpus(20);
    bad[13] = "No target here.".into();
    let mut stream = svc.stream_rotations(Request::new(her(bad))).await.unwrap().into_inner();
    let status = stream.next().await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("sentence 13"), "{}", status.message());
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn mixed_load_loses_nothing_and_leaves_the_server_serving() {
    let model = load_bundled();
    let svc =
        RotationServiceImpl::ready(Engine::new(model, BatchLimits { max_tokens: 256, max_sentences: 16 }), LIMITS, 256);
    let sentences = corpus(30);
    let alone = alone_angles(&svc, &sentences).await;

    let mut tasks = Vec::new();
    for c in 0..60usize {
        let svc = svc.clone();
        let mine: Vec<String> = (0..1 + c % 4).map(|j| sentences[(c * 7 + j * 3) % sentences.len()].clone()).collect();
        let alone = alone.clone();
        tasks.push(tokio::spawn(async move {
            match c % 4 {
                // Valid: every sentence's angles are its own.
                0 | 1 => {
                    let r = svc.compute_rotations(Request::new(her(mine.clone()))).await.unwrap().into_inner();
                    let (layers, n, values) = angles_of(&r);
                    for (s, text) in mine.iter().enumerate() {
                        for l in 0..layers {
                            let (got, want) = (values[(l * n + s) * 3], alone[text][l * 3]);
                            assert!((got - want).abs() <= 1e-4, "client {c}: {text:?} mixed up");
                        }
                    }
                }
                // Invalid: the error names the bad sentence.
                2 => {
                    let mut bad = mine.clone();
                    bad.push("Nobody else.".into());
                    let status = svc.compute_rotations(Request::new(her(bad))).await.unwrap_err();
                    assert_eq!(status.code(), Code::InvalidArgument);
                    assert!(status.message().contains(&format!("sentence {}", mine.len())), "{}", status.message());
                }
                // Cancelled before it can finish.
                _ => {
                    let call = svc.compute_rotations(Request::new(her(corpus(400))));
                    let _ = tokio::time::timeout(Duration::from_millis(5), call).await;
                }
            }
        }));
    }
    tokio::time::timeout(Duration::from_secs(120), async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .expect("the load finishes in bounded time");

    let info = svc.get_model_info(Request::new(proto::GetModelInfoRequest {})).await.unwrap().into_inner();
    assert_eq!(info.num_layers, 6);
    svc.analyze(Request::new(her(sentences[..5].to_vec()))).await.unwrap();
}

/// A one-sentence stream: its chunk, then a final chunk without significance that says why.
#[tokio::test]
async fn a_stream_too_small_for_a_test_says_why_in_its_last_chunk() {
    let svc = RotationServiceImpl::ready(Engine::new(load_bundled(), BatchLimits::default()), LIMITS, 8);
    let mut stream = svc.stream_rotations(Request::new(her(corpus(1)))).await.unwrap().into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert!(!first.last && first.angles.unwrap().shape == vec![6, 1, 3]);
    let last = stream.next().await.unwrap().unwrap();
    assert!(last.last && last.significance.is_none());
    assert!(last.significance_error.contains("at least 2 sentences"), "{}", last.significance_error);
    assert_eq!(last.statistics.len(), 6);
    assert!(last.statistics.iter().all(|s| s.n == 1));
    assert!(stream.next().await.is_none());
}
