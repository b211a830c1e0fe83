//! A corpus sent in pieces (corpus-global `first_sentence_index`) gives exactly what one request
//! gives: angles, shuffle draws and reports bit for bit, and, from the pieces' exact statistics
//! merged, the very same t-tests (TestSignificance on statistics) as one Analyze.
mod common;

use common::*;
use rotations::engine::{BatchLimits, Engine};
use rotations::proto::rotation_request::Target;
use rotations::proto::rotation_service_server::RotationService;
use rotations::proto::{self, RotationRequest};
use rotations::service::convert::{self, RequestLimits};
use rotations::service::RotationServiceImpl;
use tokio_stream::StreamExt;
use tonic::{Code, Request};

const LIMITS: RequestLimits = RequestLimits { max_sentences: 4096, max_stream_sentences: 100_000 };

/// The notebook's sentences, numbered so that each is distinct, cycled to `n`.
fn numbered_corpus(n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("examples/her_sentences.txt")).unwrap();
    let base: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    (0..n).map(|i| format!("{i}. {}", base[i % base.len()])).collect()
}

fn request(sentences: &[String], first: u64) -> RotationRequest {
    RotationRequest {
        sentences: sentences.to_vec(),
        target: Some(Target::TargetText(" her".into())),
        first_sentence_index: first,
        ..Default::default()
    }
}

/// One piece's angles `[layer][sentence][3]`, draws and reports, through StreamRotations, with its
/// final chunk's statistics.
struct Piece {
    angles: Vec<Vec<[f32; 3]>>,
    draws: Vec<Vec<proto::ShuffleDraw>>,
    reports: Vec<proto::SentenceReport>,
    statistics: Vec<proto::LayerStatistics>,
}

async fn stream_piece(svc: &RotationServiceImpl, sentences: &[String], first: u64) -> Piece {
    let mut stream = svc.stream_rotations(Request::new(request(sentences, first))).await.unwrap().into_inner();
    let mut piece = Piece { angles: Vec::new(), draws: Vec::new(), reports: Vec::new(), statistics: Vec::new() };
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if chunk.last {
            assert_eq!(chunk.first_sentence as u64, first + sentences.len() as u64);
            piece.statistics = chunk.statistics;
            break;
        }
        assert_eq!(chunk.first_sentence as u64, first + piece.reports.len() as u64, "chunks carry corpus indices");
        let t = chunk.angles.unwrap();
        let (layers, k) = (t.shape[0] as usize, t.shape[1] as usize);
        piece.angles.resize(layers, Vec::new());
        piece.draws.resize(layers, Vec::new());
        for l in 0..layers {
            for s in 0..k {
                let at = (l * k + s) * 3;
                piece.angles[l].push([t.values[at], t.values[at + 1], t.values[at + 2]]);
                piece.draws[l].push(chunk.shuffle_draws[l * k + s]);
            }
        }
        piece.reports.extend(chunk.sentences);
    }
    piece
}

#[tokio::test]
async fn pieces_of_1_7_and_64_sentences_equal_one_request_exactly() {
    // Small passes so that the whole request and its pieces ride in different batches.
    let engine = Engine::new(load_bundled(), BatchLimits { max_tokens: 512, max_sentences: 16 });
    let svc = RotationServiceImpl::ready(engine, LIMITS, 16);
    let n = 150;
    let corpus = numbered_corpus(n);
    let whole = svc.analyze(Request::new(request(&corpus, 0))).await.unwrap().into_inner();
    let rotations = whole.rotations.unwrap();
    let t = rotations.angles.as_ref().unwrap();
    let layers = t.shape[0] as usize;

    for size in [1usize, 7, 64] {
        let mut merged = vec![rotations::analysis::PairedStats::default(); layers];
        let mut next = 0;
        while next < n {
            let end = (next + size).min(n);
            let piece = stream_piece(&svc, &corpus[next..end], next as u64).await;
            for (s, report) in piece.reports.iter().enumerate() {
                assert_eq!(report, &rotations.sentences[next + s], "size {size}: report of sentence {}", next + s);
            }
            for l in 0..layers {
                for (s, angles) in piece.angles[l].iter().enumerate() {
                    let at = (l * n + next + s) * 3;
                    let want = &t.values[at..at + 3];
                    assert_eq!(
                        angles.map(f32::to_bits),
                        [0, 1, 2].map(|c| want[c].to_bits()),
                        "size {size}: sentence {}, layer {}",
                        next + s,
                        l + 1
                    );
                    assert_eq!(piece.draws[l][s], rotations.shuffle_draws[l * n + next + s]);
                }
            }
            for (m, s) in merged.iter_mut().zip(convert::paired_stats_from_proto(&piece.statistics).unwrap()) {
                m.merge(&s);
            }
            next = end;
        }
        // The merged exact statistics give Analyze's significance, bit for bit.
        let req = proto::SignificanceRequest { statistics: convert::layer_statistics(&merged), ..Default::default() };
        let significance = svc.test_significance(Request::new(req)).await.unwrap().into_inner();
        assert_eq!(Some(significance), whole.significance, "size {size}: t-tests from merged statistics");
    }
}

#[tokio::test]
async fn bad_corpus_indices_and_statistics_are_invalid_arguments() {
    let svc = RotationServiceImpl::ready(Engine::new(load_bundled(), BatchLimits::default()), LIMITS, 4);
    let corpus = numbered_corpus(3);
    let status = svc.analyze(Request::new(request(&corpus, (1u64 << 32) - 2))).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("first_sentence_index"), "{}", status.message());
    // Errors name corpus indices.
    let mut bad = corpus.clone();
    bad[1] = "No target in this one.".into();
    let status = svc.analyze(Request::new(request(&bad, 1000))).await.unwrap_err();
    assert!(status.message().contains("sentence 1001"), "{}", status.message());

    let good = rotations::analysis::PairedStats::from_differences(&[1.0, 2.0, 4.0]).unwrap();
    let mut wire = convert::layer_statistics(&[good]);
    let ask = |statistics: Vec<proto::LayerStatistics>, angles: Option<proto::Tensor>| {
        let svc = svc.clone();
        async move {
            let req = proto::SignificanceRequest { statistics, angles, ..Default::default() };
            svc.test_significance(Request::new(req)).await
        }
    };
    assert!(ask(wire.clone(), None).await.is_ok());
    let status = ask(wire.clone(), Some(proto::Tensor::default())).await.unwrap_err();
    assert!(status.message().contains("not both"), "{}", status.message());
    wire[0].sum_exact.pop();
    let status = ask(wire.clone(), None).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("statistics[0].sum_exact") && status.message().contains("16 bytes"),
        "{}",
        status.message()
    );
    let mut impossible = convert::layer_statistics(&[good]);
    impossible[0].sum_sq_exact = vec![0; 32];
    let status = ask(impossible, None).await.unwrap_err();
    assert!(status.message().contains("negative variance"), "{}", status.message());
}
