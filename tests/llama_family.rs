//! The bundled Llama-like model (models/llama-tiny-random: rotary positions fed as position_ids,
//! RMSNorm, a SentencePiece-style tokenizer that prepends BOS) through the whole pipeline, against
//! PyTorch (golden values from tools/make_golden_llama_hidden_states.py): tokens, hidden states on
//! a right-padded batch, and Analyze through the real server, with the BOS rule and `▁` targets.
mod common;

use common::*;
use rotations::model::{OrtTuning, PassCost, RuntimeOptions};
use rotations::proto::rotation_request::Target;
use rotations::proto::rotation_service_client::RotationServiceClient;
use rotations::proto::{self, RotationRequest};
use tonic::transport::Channel;
use tonic::Code;

const GOLDEN: &str = "llama_hidden_states.json";
const BOS: u32 = 1;

#[test]
fn the_tokenizer_prepends_bos_as_hugging_face_does() {
    let model = load_model(&llama_model_dir());
    assert_eq!((model.info.family.as_str(), model.info.adds_bos, model.info.bos_token_id), ("llama", true, Some(BOS)));
    let (sentences, ids, g) = golden_hidden(GOLDEN);
    for (s, want) in sentences.iter().zip(&ids) {
        assert_eq!(&model.tokenizer.encode(s).unwrap().ids, want, "{s:?}");
    }
    // " her", "her" (the sentence-initial word) and the token's own string all name ▁her.
    let her = g["target_id"].as_u64().unwrap() as u32;
    for word in [" her", "her", "▁her"] {
        assert_eq!(model.tokenizer.word_id(word).unwrap(), Ok(her), "{word:?}");
    }
}

#[test]
fn hidden_states_equal_pytorch_on_a_right_padded_batch() {
    let (_, ids, g) = golden_hidden(GOLDEN);
    // One pass over the whole padded batch, and passes of similar length (the default).
    let one_pass = RuntimeOptions {
        tuning: OrtTuning { pass_cost_tokens: PassCost(None), ..Default::default() },
        ..runtime_options()
    };
    for opts in [one_pass, runtime_options()] {
        let model = rotations::model::Model::load(&llama_model_dir(), &opts).unwrap();
        let hidden = model.hidden_states_blocking(ids.clone()).unwrap();
        let max_err = max_error_vs_golden(&hidden, &g["hidden_states"], model.info.hidden_size);
        assert!(max_err <= 1e-4, "max abs error vs PyTorch {max_err:e}");
    }
}

fn request(sentences: &[String], target: &str, allow_bos_non_target: bool) -> RotationRequest {
    RotationRequest {
        sentences: sentences.to_vec(),
        target: Some(Target::TargetText(target.into())),
        allow_bos_non_target,
        ..Default::default()
    }
}

/// `angles[layer][sentence][condition]` of a result.
fn angle(r: &proto::RotationResult, layer: usize, sentence: usize, condition: usize) -> f64 {
    let t = r.angles.as_ref().unwrap();
    let (sentences, conditions) = (t.shape[1] as usize, t.shape[2] as usize);
    f64::from(t.values[(layer * sentences + sentence) * conditions + condition])
}

/// Target and non-target angles of the sentences of `r` (in order: golden sentence numbers
/// `which`) equal PyTorch's, and the shuffled control never drew the BOS token.
fn assert_matches_golden(r: &proto::RotationResult, which: &[usize], g: &serde_json::Value) {
    let golden: Vec<&serde_json::Value> = which
        .iter()
        .map(|&i| g["rotations"].as_array().unwrap().iter().find(|x| x["sentence"] == i).unwrap())
        .collect();
    for (j, want) in golden.iter().enumerate() {
        let report = &r.sentences[j];
        assert_eq!(report.target_position as u64, want["target"].as_u64().unwrap());
        assert_eq!(report.non_target_position as u64, want["non_target"].as_u64().unwrap());
        for (layer, pair) in want["angles_deg"].as_array().unwrap().iter().enumerate() {
            for condition in 0..2 {
                let expected = pair[condition].as_f64().unwrap();
                let got = angle(r, layer, j, condition);
                assert!((got - expected).abs() < 1e-3, "sentence {j} layer {layer}: {got} vs PyTorch {expected}");
            }
        }
    }
    assert!(r.shuffle_draws.iter().all(|d| d.position_v > 0 && d.position_u > 0), "a draw of the BOS token");
}

#[tokio::test]
async fn analyze_through_the_real_server_with_the_bos_rule_and_sentencepiece_targets() {
    let (_server, address) = serve_model(&llama_model_dir());
    let channel = Channel::from_shared(format!("http://{address}")).unwrap().connect().await.unwrap();
    let mut client = RotationServiceClient::new(channel);
    let info = client.get_model_info(proto::GetModelInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (info.family.as_str(), info.bos_token_id, info.adds_bos, info.pad_token_id),
        ("llama", Some(BOS), true, 2)
    );
    assert!(info.hidden_states.contains("after the final norm"), "{}", info.hidden_states);

    let (sentences, _, g) = golden_hidden(GOLDEN);
    // Sentences 0, 1, 3: " her" after other words; "▁her" and "her" name the same token.
    let inner: Vec<String> = [0, 1, 3].iter().map(|&i| sentences[i].clone()).collect();
    let mut results = Vec::new();
    for target in [" her", "her", "▁her"] {
        let analysis = client.analyze(request(&inner, target, false)).await.unwrap().into_inner();
        let r = analysis.rotations.unwrap();
        assert_matches_golden(&r, &[0, 1, 3], &g);
        assert!(analysis.significance.is_some());
        results.push(r);
    }
    assert!(results.windows(2).all(|w| w[0] == w[1]));

    // Sentence 2 starts with "her": its previous token is BOS, refused unless allowed.
    let all: Vec<String> = sentences[..4].to_vec();
    let refused = client.analyze(request(&all, " her", false)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    for part in ["sentence 2", "\"her dog barked", "BOS token", "allow_bos_non_target"] {
        assert!(refused.message().contains(part), "{part:?} not in {}", refused.message());
    }
    let allowed = client.analyze(request(&all, " her", true)).await.unwrap().into_inner();
    assert_matches_golden(&allowed.rotations.unwrap(), &[0, 1, 2, 3], &g);

    // "Her" is two pieces of this tokenizer (▁H, er), which occur nowhere: the error names them.
    let several = client.analyze(request(&inner, " Her", false)).await.unwrap_err();
    assert!(several.message().contains("[\"▁H\", \"er\"]"), "{}", several.message());
    assert!(several.message().contains("not found"), "{}", several.message());

    // A sentence without the target is named, whatever the spelling.
    let missing = client.analyze(request(&sentences[3..], " her", false)).await.unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert!(missing.message().contains("sentence 1 (\"Hi\")"), "{}", missing.message());
}

#[test]
fn the_cli_refuses_a_bos_non_target_by_line_and_allows_it_with_its_flag() {
    let (_server, address) = serve_model(&llama_model_dir());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sentences.txt");
    std::fs::write(&file, "I saw her at the market.\n\nher dog barked at the mailman.\n").unwrap();
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_rotations"))
            .args(["analyze", "--server", &format!("http://{address}"), "--target", "her", "--overwrite"])
            .arg("--sentences")
            .arg(&file)
            .arg("--out")
            .arg(dir.path().join("out"))
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = run(&[]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(err.contains(&format!("{}:3: ", file.display())) && err.contains("--allow-bos-non-target"), "{err}");
    let allowed = run(&["--allow-bos-non-target"]);
    assert!(allowed.status.success(), "{}", String::from_utf8_lossy(&allowed.stderr));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/analysis.json")).unwrap()).unwrap();
    assert!(json.to_string().contains("\"non_target_position\":0"), "sentence 2's non-target is the BOS token");

    let tokens = std::process::Command::new(env!("CARGO_BIN_EXE_rotations"))
        .args(["tokenize", "--server", &format!("http://{address}"), "I saw her."])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&tokens.stdout);
    assert!(stdout.contains("\"<s>\"") && stdout.contains("▁ is SentencePiece's mark"), "{stdout}");
}
