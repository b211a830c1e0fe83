//! Handlers called directly (no network): the notebook's analysis against its PyTorch reference,
//! and every error path with its code and a message naming what is wrong and where.
mod common;

use std::time::Duration;

use common::*;
use rotations::analysis::angles::angle_between;
use rotations::engine::{BatchLimits, Engine};
use rotations::model::Model;
use rotations::proto::rotation_request::Target;
use rotations::proto::rotation_service_server::RotationService;
use rotations::proto::{self, RotationRequest};
use rotations::service::convert::RequestLimits;
use rotations::service::RotationServiceImpl;
use tonic::{Code, Request};

fn service_with(model: Model, max_sentences: usize, max_concurrent: usize) -> RotationServiceImpl {
    RotationServiceImpl::ready(
        Engine::new(model, BatchLimits::default()),
        RequestLimits { max_sentences, max_stream_sentences: 100_000 },
        max_concurrent,
    )
}

fn notebook_sentences() -> Vec<String> {
    rotations::client::read_sentences(&repo().join("examples/her_sentences.txt")).unwrap()
}

fn her_request(sentences: Vec<String>) -> RotationRequest {
    RotationRequest { sentences, target: Some(Target::TargetText(" her".into())), ..Default::default() }
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

#[tokio::test]
async fn analyze_reproduces_the_notebook_run_in_pytorch() {
    let model = load_bundled();
    let svc = service_with(model.clone(), 4096, 4);
    let sentences = notebook_sentences();
    let res = svc.analyze(Request::new(her_request(sentences.clone()))).await.unwrap().into_inner();
    let rot = res.rotations.unwrap();
    let sig = res.significance.unwrap();

    let g: serde_json::Value = golden("notebook_angles.json");
    let layers = g["num_layers"].as_u64().unwrap() as usize;
    let n = sentences.len();
    let angles = rot.angles.as_ref().unwrap();
    assert_eq!(angles.shape, vec![layers as u32, n as u32, 3]);
    assert_eq!(rot.conditions, vec!["target", "non_target", "shuffled"]);
    assert_eq!(rot.target_token_id, 607);

    // Positions: the notebook's .index and .index - 1.
    for (s, report) in rot.sentences.iter().enumerate() {
        assert_eq!(report.index as usize, s);
        assert_eq!(u64::from(report.target_position), g["target_positions"][s].as_u64().unwrap());
        assert_eq!(u64::from(report.non_target_position), g["non_target_positions"][s].as_u64().unwrap());
    }

    // Target and non-target angles: the notebook's algorithm in PyTorch, to 1e-3 degrees.
    let want = &g["angles_f64_deg"];
    let mut max_err = 0f64;
    for l in 0..layers {
        for s in 0..n {
            for c in 0..2 {
                let ours = f64::from(angles.values[(l * n + s) * 3 + c]);
                max_err = max_err.max((ours - want[l][s][c].as_f64().unwrap()).abs());
            }
        }
    }
    assert!(max_err <= 1e-3, "max angle error vs the notebook in PyTorch: {max_err:e} degrees");

    // t per layer: scipy's ttest_rel on the reference angles, to 1e-4 relative.
    assert_eq!(sig.layers.len(), layers);
    for (l, t) in sig.layers.iter().enumerate() {
        let want_t = g["ttest_f64"]["t"][l].as_f64().unwrap();
        assert!(rel(t.t, want_t) <= 1e-4, "layer {}: t {} vs scipy {}", l + 1, t.t, want_t);
        assert_eq!(t.df, (n - 1) as f64);
    }
    // Bonferroni over the layers actually tested (the notebook divided by num_layers + 1).
    assert_eq!(sig.num_tests as usize, layers);
    assert!((sig.threshold - 0.05 / layers as f64).abs() < 1e-15);

    // Shuffled angles equal their recomputation from the returned draws.
    let ids: Vec<Vec<u32>> = sentences.iter().map(|s| model.tokenizer.encode(s).unwrap().ids).collect();
    let hidden = model.hidden_states(ids.clone()).await.unwrap();
    assert_eq!(rot.shuffle_draws.len(), layers * n);
    for l in 0..layers {
        for s in 0..n {
            let d = &rot.shuffle_draws[l * n + s];
            assert!((1..=layers as u32).contains(&d.layer_v) && (1..=layers as u32).contains(&d.layer_u));
            assert!((d.position_v as usize) < ids[s].len() && (d.position_u as usize) < ids[s].len());
            let h = &hidden[s];
            let v = h.slice(ndarray::s![d.layer_v as usize, d.position_v as usize, ..]);
            let u = h.slice(ndarray::s![d.layer_u as usize, d.position_u as usize, ..]);
            let want = angle_between(v, u).unwrap().to_degrees();
            let ours = f64::from(angles.values[(l * n + s) * 3 + 2]);
            assert!((ours - want).abs() <= 1e-3, "shuffled ({l}, {s}): {ours} vs {want}");
        }
    }
}

#[tokio::test]
async fn same_seed_same_result_other_seed_other_draws_radians_on_request() {
    let svc = service_with(load_bundled(), 4096, 4);
    let sentences: Vec<String> = notebook_sentences().into_iter().take(6).collect();
    let run = |seed: Option<u64>, unit: proto::AngleUnit| {
        let mut req = her_request(sentences.clone());
        req.shuffle_seed = seed;
        req.unit = unit as i32;
        let svc = svc.clone();
        async move { svc.compute_rotations(Request::new(req)).await.unwrap().into_inner() }
    };
    let a = run(None, proto::AngleUnit::Unspecified).await;
    let b = run(None, proto::AngleUnit::Degrees).await;
    assert_eq!(a.angles, b.angles);
    assert_eq!(a.shuffle_seed, rotations::analysis::DEFAULT_SHUFFLE_SEED);
    let c = run(Some(7), proto::AngleUnit::Degrees).await;
    assert_ne!(a.shuffle_draws, c.shuffle_draws);
    let r = run(None, proto::AngleUnit::Radians).await;
    assert_eq!(r.unit, proto::AngleUnit::Radians as i32);
    for (deg, rad) in a.angles.unwrap().values.iter().zip(&r.angles.unwrap().values) {
        assert!((f64::from(*deg).to_radians() - f64::from(*rad)).abs() < 1e-5);
    }
}

async fn expect_error(svc: &RotationServiceImpl, req: RotationRequest, code: Code, words: &[&str]) {
    let status = svc.analyze(Request::new(req)).await.expect_err("must fail");
    assert_eq!(status.code(), code, "{}", status.message());
    for w in words {
        assert!(status.message().contains(w), "message {:?} lacks {w:?}", status.message());
    }
}

#[tokio::test]
async fn bad_requests_get_invalid_argument_naming_the_sentence() {
    let svc = service_with(load_bundled(), 10, 4);
    let ok = || vec!["I saw her at the market.".to_string(), "She gave her the book.".to_string()];

    expect_error(&svc, her_request(vec![]), Code::InvalidArgument, &["sentences"]).await;

    let mut sentences = ok();
    sentences.push("Nobody else was there.".into());
    expect_error(&svc, her_request(sentences), Code::InvalidArgument, &["sentence 2"]).await;

    // A target at position 0 has no token before it: the notebook silently wrapped to padding.
    let mut sentences = ok();
    sentences.insert(1, " her book was there.".into());
    expect_error(&svc, her_request(sentences), Code::InvalidArgument, &["sentence 1"]).await;

    let mut req = her_request(ok());
    // A word of several tokens is looked for as a whole; here it does not occur.
    req.target = Some(Target::TargetText(" herself and".into()));
    expect_error(&svc, req, Code::InvalidArgument, &["sentence 0", "target tokens", "not found"]).await;
    // "herself" is two GPT-2 tokens, " herself" one: the error names the spelling that is.
    let mut req = her_request(ok());
    req.target = Some(Target::TargetText("herself".into()));
    expect_error(&svc, req, Code::InvalidArgument, &["\" herself\" is one token (5223)"]).await;

    let mut req = her_request(ok());
    req.target = Some(Target::TargetTokenId(50257));
    expect_error(&svc, req, Code::InvalidArgument, &["target_token_id", "vocabulary"]).await;

    let mut req = her_request(ok());
    req.target = None;
    expect_error(&svc, req, Code::InvalidArgument, &["target"]).await;

    let mut req = her_request(ok());
    req.non_target_offset = Some(5);
    expect_error(&svc, req, Code::InvalidArgument, &["sentence 0"]).await;

    expect_error(&svc, her_request(vec![String::new(), "x her".into()]), Code::InvalidArgument, &["sentence 0"]).await;

    let long = format!("a{}", " her".repeat(1100));
    expect_error(
        &svc,
        her_request(vec!["I saw her.".into(), long]),
        Code::InvalidArgument,
        &["sentence 1", "positions"],
    )
    .await;

    expect_error(&svc, her_request(vec!["I saw her.".into(); 11]), Code::InvalidArgument, &["max_sentences", "10"])
        .await;

    let mut req = her_request(ok());
    req.unit = 9;
    expect_error(&svc, req, Code::InvalidArgument, &["unit"]).await;

    // The service is unharmed: a good request still works.
    svc.analyze(Request::new(her_request(ok()))).await.unwrap();
}

#[tokio::test]
async fn sentence_errors_quote_the_sentence_and_suggest_the_spelling_that_occurs() {
    let svc = service_with(load_bundled(), 10, 4);
    let ok = || vec!["I saw her at the market.".to_string(), "She gave her the book.".to_string()];

    // The likeliest mistake: "her" without GPT-2's leading space (372 is "her", 607 is " her").
    let mut req = her_request(ok());
    req.target = Some(Target::TargetText("her".into()));
    let message =
        r#"sentence 0 ("I saw her at the market."): target token 372 "her" not found; did you mean " her" (607)?"#;
    expect_error(&svc, req, Code::InvalidArgument, &[message]).await;

    // The other way round, and a capital at the start of the sentence.
    let mut req = her_request(vec!["I saw her.".into(), "Her book was there.".into()]);
    req.target = Some(Target::TargetText(" her".into()));
    expect_error(
        &svc,
        req,
        Code::InvalidArgument,
        &[r#"target token 607 " her" not found; did you mean "Her" (9360)?"#],
    )
    .await;

    // No spelling of the target occurs: no suggestion.
    let mut sentences = ok();
    sentences.push("Nobody else was there.".into());
    let status = svc.analyze(Request::new(her_request(sentences))).await.unwrap_err();
    assert_eq!(status.message(), r#"sentence 2 ("Nobody else was there."): target token 607 " her" not found"#);

    // Long sentences are quoted shortened; length errors quote them too.
    let long = format!("a{}", " her".repeat(1100));
    let status = svc.analyze(Request::new(her_request(vec!["I saw her.".into(), long]))).await.unwrap_err();
    assert!(status.message().starts_with(r#"sentence 1 ("a her her"#), "{}", status.message());
    assert!(status.message().contains(r#"…"): 1101 tokens exceed the model's 1024 positions"#), "{}", status.message());
}

#[tokio::test]
async fn test_significance_checks_its_tensor() {
    let svc = service_with(load_bundled(), 10, 4);
    let bad = |shape: Vec<u32>, values: Vec<f32>| proto::SignificanceRequest {
        angles: Some(proto::Tensor { shape, values }),
        options: None,
        ..Default::default()
    };
    for (req, words) in [
        (bad(vec![2, 3], vec![0.0; 6]), "3 dimensions"),
        (bad(vec![2, 3, 3], vec![0.0; 5]), "needs 18 values"),
        (proto::SignificanceRequest { angles: None, options: None, ..Default::default() }, "angles"),
    ] {
        let status = svc.test_significance(Request::new(req)).await.expect_err("must fail");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(words), "{}", status.message());
    }
    let mut values = vec![f32::NAN; 2 * 3 * 3];
    values[0] = 1.0;
    let status = svc.test_significance(Request::new(bad(vec![2, 3, 3], values))).await.expect_err("NaN");
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn before_the_model_is_ready_requests_are_unavailable() {
    let svc = RotationServiceImpl::new(RequestLimits { max_sentences: 10, max_stream_sentences: 100 }, 4);
    let status = svc.get_model_info(Request::new(proto::GetModelInfoRequest {})).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let status = svc.analyze(Request::new(her_request(vec!["I saw her.".into()]))).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
}

#[tokio::test]
async fn model_info_and_tokenize() {
    let svc = service_with(load_bundled(), 10, 4);
    let info = svc.get_model_info(Request::new(proto::GetModelInfoRequest {})).await.unwrap().into_inner();
    assert_eq!(info.num_hidden_states, info.num_layers + 1);
    assert_eq!(info.vocab_size, 50257);
    assert_eq!(info.execution_provider, "cpu");
    let t = svc
        .tokenize(Request::new(proto::TokenizeRequest { texts: vec!["I saw her".into()] }))
        .await
        .unwrap()
        .into_inner();
    let t = &t.texts[0];
    assert_eq!(t.ids[2], 607);
    assert_eq!(t.tokens.len(), 3);
    assert_eq!((t.offset_starts[2], t.offset_ends[2]), (5, 9));
}

#[tokio::test]
async fn past_the_concurrency_limit_requests_are_refused_at_once() {
    let (model, _) = slow_model(Duration::from_millis(400));
    let svc = service_with(model, 10, 1);
    let req = || her_request(vec!["I saw her.".into(), "We met her.".into()]);
    let first = tokio::spawn({
        let svc = svc.clone();
        async move { svc.compute_rotations(Request::new(req())).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = svc.compute_rotations(Request::new(req())).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("max_concurrent_requests (1)"), "{}", status.message());
    first.await.unwrap().unwrap();
    svc.compute_rotations(Request::new(req())).await.unwrap();
}

/// Bad options are refused before any forward pass, in Analyze and StreamRotations alike.
#[tokio::test]
async fn bad_options_cost_no_compute() {
    let (model, computed) = slow_model(Duration::from_millis(50));
    let layers = model.info.num_layers as u32;
    let svc = service_with(model, 10, 4);
    let ok = || her_request(vec!["I saw her at the market.".into(), "She gave her the book.".into()]);
    let with = |opts: proto::SignificanceOptions| RotationRequest { significance: Some(opts), ..ok() };
    let o = proto::SignificanceOptions::default;
    let cases: Vec<(RotationRequest, &[&str])> = vec![
        (with(proto::SignificanceOptions { alpha: Some(0.0), ..o() }), &["significance", "alpha", "got 0"]),
        (with(proto::SignificanceOptions { alpha: Some(f64::NAN), ..o() }), &["alpha"]),
        (with(proto::SignificanceOptions { num_tests: Some(layers - 1), ..o() }), &["num_tests", "layers"]),
        (with(proto::SignificanceOptions { num_tests: Some(0), ..o() }), &["num_tests"]),
        (with(proto::SignificanceOptions { condition_b: Some(3), ..o() }), &["condition 3"]),
        (with(proto::SignificanceOptions { condition_a: Some(1), ..o() }), &["condition_a and condition_b"]),
        (RotationRequest { non_target_offset: Some(0), ..ok() }, &["non_target_offset", "target itself"]),
        (RotationRequest { non_target_offset: Some(i32::MIN), ..ok() }, &["non_target_offset", "positions"]),
        (RotationRequest { non_target_offset: Some(5000), ..ok() }, &["non_target_offset", "positions"]),
    ];
    for (req, words) in cases {
        expect_error(&svc, req.clone(), Code::InvalidArgument, words).await;
        let Err(status) = svc.stream_rotations(Request::new(req)).await else {
            panic!("the stream must fail before any chunk");
        };
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        for w in words {
            assert!(status.message().contains(w), "stream message {:?} lacks {w:?}", status.message());
        }
    }
    assert_eq!(computed.load(std::sync::atomic::Ordering::SeqCst), 0, "a bad option cost a forward pass");
}

/// One sentence: the rotations come back, the significance is absent with its reason.
#[tokio::test]
async fn one_sentence_returns_rotations_without_significance() {
    let svc = service_with(load_bundled(), 10, 4);
    let res = svc.analyze(Request::new(her_request(vec!["I saw her.".into()]))).await.unwrap().into_inner();
    let rot = res.rotations.unwrap();
    assert_eq!(rot.angles.unwrap().shape[1], 1);
    assert!(res.significance.is_none());
    assert!(res.significance_error.contains("at least 2 sentences"), "{}", res.significance_error);
}

/// A layer whose paired differences are constant comes back flagged, with t and p as scipy gives
/// them (±inf and 0; NaN and NaN for all-zero differences); the other layers are tested as usual.
#[tokio::test]
async fn degenerate_layers_are_answered_like_scipy() {
    let svc = service_with(load_bundled(), 10, 4);
    let (layers, sentences) = (3usize, 4usize);
    let mut values = Vec::new();
    for l in 0..layers {
        for s in 0..sentences {
            let b = 10.0 + s as f32 * 1.25 + l as f32;
            let a = match l {
                0 => b + 0.5,                      // constant difference 0.5: t = +inf, p = 0
                1 => b,                            // all-zero differences: t = p = NaN
                _ => b + [0.25, 1.0, 0.5, 2.0][s], // ordinary
            };
            values.extend([a, b, 0.0]);
        }
    }
    let req = proto::SignificanceRequest {
        angles: Some(proto::Tensor { shape: vec![layers as u32, sentences as u32, 3], values }),
        options: None,
        ..Default::default()
    };
    let r = svc.test_significance(Request::new(req)).await.unwrap().into_inner();
    let flag = |l: &proto::LayerTest| proto::LayerFlag::try_from(l.flag).unwrap();
    assert_eq!(flag(&r.layers[0]), proto::LayerFlag::ZeroVariance);
    assert_eq!((r.layers[0].t, r.layers[0].p, r.layers[0].significant), (f64::INFINITY, 0.0, false));
    assert_eq!(flag(&r.layers[1]), proto::LayerFlag::ZeroVariance);
    assert!(r.layers[1].t.is_nan() && r.layers[1].p.is_nan() && !r.layers[1].significant);
    assert_eq!(flag(&r.layers[2]), proto::LayerFlag::None);
    // scipy.stats.ttest_rel([0.25, 1, 0.5, 2] + b, b).statistic = 2.422718559261745
    assert!((r.layers[2].t - 2.422_718_559_261_745).abs() < 1e-6, "{}", r.layers[2].t);
}

fn default_serve_config() -> rotations::config::ServeConfig {
    use clap::Parser;
    match rotations::config::Cli::try_parse_from(["rotations", "serve"]).unwrap().command {
        rotations::config::Command::Serve(config) => config,
        _ => unreachable!(),
    }
}

/// 128 clients each sending four small requests one after another: with the default limits the
/// queued work (a few hundred tokens) is admitted and served, none refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinary_overload_is_queued_not_refused() {
    let (model, _) = slow_model(Duration::from_millis(5));
    let svc = RotationServiceImpl::from_config(&default_serve_config());
    svc.set_engine(Engine::new(model, BatchLimits::default()));
    let texts = ["I saw her at the market.", "We met her.", "They called her twice."];
    let clients: Vec<_> = (0..128usize)
        .map(|c| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let mut refused = 0;
                for r in 0..4 {
                    let n = 1 + (c + r) % 3;
                    let req = her_request(texts[..n].iter().map(|t| t.to_string()).collect());
                    if let Err(status) = svc.compute_rotations(Request::new(req)).await {
                        assert_eq!(status.code(), Code::ResourceExhausted, "{}", status.message());
                        refused += 1;
                    }
                }
                refused
            })
        })
        .collect();
    let mut refused = 0;
    for c in clients {
        refused += c.await.unwrap();
    }
    assert_eq!(refused, 0, "{refused} of 512 requests refused");
}

/// Past the queued-token budget a request is refused at once, naming the limit; one that can never
/// fit is told so (retrying cannot help).
#[tokio::test]
async fn past_the_queued_token_budget_requests_are_refused_at_once() {
    let (model, _) = slow_model(Duration::from_millis(400));
    let svc = service_with(model, 10, 8).with_max_queued_tokens(16);
    let req = || her_request(vec!["I saw her.".into(), "We met her.".into()]); // 4 + 4 tokens
    let spawn = || {
        let svc = svc.clone();
        tokio::spawn(async move { svc.compute_rotations(Request::new(req())).await })
    };
    let first = spawn();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = spawn(); // 8 + 8 = 16 tokens fit
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let status = svc.compute_rotations(Request::new(req())).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(300), "refused only after {:?}", started.elapsed());
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("max_queued_tokens (16)"), "{}", status.message());
    second.await.unwrap().unwrap();
    first.await.unwrap().unwrap();
    let big = her_request(vec!["I saw her at the market on a sunny day with friends.".into(); 2]);
    let status = svc.compute_rotations(Request::new(big)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("exceed max_queued_tokens (16) on their own"), "{}", status.message());
}

/// Tokenize and TestSignificance take a concurrency slot like every RPC that does work.
#[tokio::test]
async fn every_rpc_that_works_takes_a_slot() {
    let (model, _) = slow_model(Duration::from_millis(400));
    let svc = service_with(model, 10, 1);
    let busy = tokio::spawn({
        let svc = svc.clone();
        async move {
            svc.compute_rotations(Request::new(her_request(vec!["I saw her.".into(), "We met her.".into()]))).await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = svc.tokenize(Request::new(proto::TokenizeRequest { texts: vec!["x".into()] })).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{}", status.message());
    let angles = proto::Tensor { shape: vec![1, 2, 2], values: vec![1.0, 0.0, 2.0, 0.5] };
    let req = proto::SignificanceRequest { angles: Some(angles), options: None, ..Default::default() };
    let status = svc.test_significance(Request::new(req)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{}", status.message());
    // GetModelInfo does no work and is always answered.
    svc.get_model_info(Request::new(proto::GetModelInfoRequest {})).await.unwrap();
    busy.await.unwrap().unwrap();
}

/// Tokenizing megabytes runs off the async executor: on a single-threaded runtime GetModelInfo is
/// answered while the tokenization is still going on.
#[tokio::test(flavor = "current_thread")]
async fn tokenizing_does_not_block_the_executor() {
    let input = rotations::service::convert::InputLimits { max_text_bytes: 8 << 20, ..Default::default() };
    let svc = service_with(load_bundled(), 10, 4).with_input_limits(input);
    let text = "She gave her the book and the old man smiled. ".repeat(80_000); // ~3.7 MB
    let tokenizing = tokio::spawn({
        let svc = svc.clone();
        async move { svc.tokenize(Request::new(proto::TokenizeRequest { texts: vec![text] })).await }
    });
    tokio::task::yield_now().await; // let the tokenize call start
    svc.get_model_info(Request::new(proto::GetModelInfoRequest {})).await.unwrap();
    assert!(!tokenizing.is_finished(), "the tokenization finished before GetModelInfo was answered");
    let t = tokenizing.await.unwrap().unwrap().into_inner();
    assert!(t.texts[0].ids.len() > 500_000);
}

/// Input sizes have limits named in the errors; a shape whose product overflows is reported
/// with its true size.
#[tokio::test]
async fn input_sizes_are_limited_and_named() {
    let svc = service_with(load_bundled(), 10, 4);
    let long = "a".repeat(rotations::service::convert::DEFAULT_MAX_TEXT_BYTES + 1);
    let status = svc
        .tokenize(Request::new(proto::TokenizeRequest { texts: vec!["ok".into(), long.clone()] }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("texts[1]") && status.message().contains("max_text_bytes"),
        "{}",
        status.message()
    );
    let status = svc.analyze(Request::new(her_request(vec!["I saw her.".into(), long]))).await.unwrap_err();
    assert!(
        status.message().contains("sentences[1]") && status.message().contains("max_text_bytes"),
        "{}",
        status.message()
    );

    let side = u32::MAX;
    let huge = proto::SignificanceRequest {
        angles: Some(proto::Tensor { shape: vec![side; 3], values: vec![0.0; 8] }),
        options: None,
        ..Default::default()
    };
    let status = svc.test_significance(Request::new(huge)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let product = u128::from(side).pow(3).to_string();
    assert!(status.message().contains(&product), "{} lacks {product}", status.message());
    assert!(status.message().contains("max_tensor_values"), "{}", status.message());
}

/// A model whose output is broken in one way.
struct FaultyBackend {
    layers: usize,
    fault: &'static str,
}

impl rotations::model::Backend for FaultyBackend {
    fn forward(
        &mut self,
        batch: &[Vec<u32>],
    ) -> Result<Vec<rotations::model::SentenceHidden>, rotations::model::ModelError> {
        let mut out: Vec<_> = batch
            .iter()
            .map(|ids| {
                let tokens = if self.fault == "tokens" { ids.len() + 1 } else { ids.len() };
                rotations::model::SentenceHidden::from_shape_fn((self.layers + 1, tokens, 4), |(k, p, d)| {
                    if self.fault == "nan" && k == 2 {
                        f32::NAN
                    } else {
                        (1 + k * k + p * 3 + d) as f32
                    }
                })
            })
            .collect();
        if self.fault == "count" {
            out.pop();
        }
        Ok(out)
    }
}

/// Faults in the model's output are INTERNAL (the client's request was fine), not INVALID_ARGUMENT.
#[tokio::test]
async fn model_faults_are_internal() {
    let dir = bundled_model_dir();
    let manifest = rotations::model::Manifest::read(&dir.join("model.json")).unwrap();
    for fault in ["nan", "tokens", "count"] {
        let tokenizer = rotations::model::Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
        let backend = FaultyBackend { layers: manifest.num_layers, fault };
        let model = Model::with_backend(&manifest, tokenizer, backend).unwrap();
        let svc = service_with(model, 10, 4);
        let req = her_request(vec!["I saw her at the market.".into(), "She gave her the book.".into()]);
        let status = svc.analyze(Request::new(req)).await.unwrap_err();
        assert_eq!(status.code(), Code::Internal, "{fault}: {}", status.message());
    }
}

/// A result that cannot fit in a message is refused before any forward pass, naming the limit.
#[tokio::test]
async fn a_result_over_the_message_limit_costs_no_compute() {
    let (model, computed) = slow_model(Duration::from_millis(50));
    let input = rotations::service::convert::InputLimits { max_message_bytes: 1000, ..Default::default() };
    let svc = service_with(model, 100, 4).with_input_limits(input);
    let status = svc.compute_rotations(Request::new(her_request(vec!["I saw her.".into(); 20]))).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("max_message_bytes") && status.message().contains("1000"),
        "{}",
        status.message()
    );
    assert_eq!(computed.load(std::sync::atomic::Ordering::SeqCst), 0);
}
