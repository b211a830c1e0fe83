//! Property tests: target location and request validation never panic, and either succeed with
//! positions inside the sentence or fail naming the sentence, for arbitrary text and ids.
mod common;

use proptest::prelude::*;
use rotations::analysis::{locate, AnalysisError};
use rotations::proto::rotation_request::Target;
use rotations::proto::RotationRequest;
use rotations::service::convert::rotation_job;

proptest! {
    #[test]
    fn locate_finds_the_first_occurrence_or_names_the_sentence(
        ids in proptest::collection::vec(0u32..20, 0..40),
        target in 0u32..20,
        offset in -50i32..50,
        sentence in 0usize..1000,
    ) {
        match locate(sentence, &ids, target, offset) {
            Ok(p) => {
                prop_assert_eq!(ids[p.target], target);
                prop_assert!(!ids[..p.target].contains(&target), "not the first occurrence");
                prop_assert_eq!(p.non_target as i64, p.target as i64 + i64::from(offset));
                prop_assert!(p.non_target < ids.len());
                prop_assert_ne!(p.non_target, p.target);
            }
            Err(e) => {
                prop_assert!(e.to_string().contains(&format!("sentence {sentence}")), "{}", e);
                let expected = match ids.iter().position(|&i| i == target) {
                    None => matches!(e, AnalysisError::TargetNotFound { .. }),
                    Some(_) => !matches!(e, AnalysisError::TargetNotFound { .. }),
                };
                prop_assert!(expected, "{:?}", e);
            }
        }
    }

    #[test]
    fn request_validation_accepts_or_explains(
        sentences in proptest::collection::vec(".{0,30}", 0..8),
        text in proptest::option::of(".{0,6}"),
        id in proptest::option::of(any::<u32>()),
        unit in -2i32..5,
        max in 0usize..10,
    ) {
        let target = match (text, id) {
            (Some(t), _) => Some(Target::TargetText(t)),
            (None, Some(i)) => Some(Target::TargetTokenId(i)),
            (None, None) => None,
        };
        let req = RotationRequest { sentences: sentences.clone(), target, unit, ..Default::default() };
        match rotation_job(&req, max, "max_sentences") {
            Ok(job) => {
                prop_assert_eq!(job.sentences, sentences);
                prop_assert!((0..=2).contains(&unit));
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}

/// The whole path from text to positions, through the real tokenizer, on arbitrary text.
#[tokio::test]
async fn tokenized_arbitrary_text_never_panics_the_engine_checks() {
    let model = common::load_bundled();
    let engine = rotations::engine::Engine::new(model, Default::default());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(200));
    runner
        .run(&(proptest::collection::vec("\\PC{0,40}", 1..5), "\\PC{0,8}"), |(sentences, target)| {
            let job = rotations::engine::RotationJob {
                sentences,
                target: rotations::engine::Target::Text(target),
                unit: Default::default(),
                non_target_offset: -1,
                seed: 1,
                first_index: 0,
                allow_bos_non_target: false,
            };
            if let Ok(prepared) = engine.prepare(&job) {
                prop_assert_eq!(prepared.len(), job.sentences.len());
            }
            Ok(())
        })
        .unwrap();
}
