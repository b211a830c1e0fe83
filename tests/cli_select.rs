//! `rotations analyze` with the selection flags, against the real server process: every
//! occurrence with the mean sub-token and all layers gives the same files through Analyze,
//! StreamRotations and the sharding client (matrix sums merged exactly), and `--marked` sentences
//! are read with errors that point at their line.
mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use rotations::client::angles_file::read_angles_csv;

fn analyze(args: &[&str], sentences: &Path, out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rotations"))
        .arg("analyze")
        .args(args)
        .arg("--sentences")
        .arg(sentences)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn json_field(dir: &Path, field: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("analysis.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()[field].clone()
}

#[test]
fn every_occurrence_and_all_layers_agree_through_analyze_streams_and_shards() {
    let (_server, address) = serve_bundled();
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    let base = ["Her mother gave her the book and her brother smiled.", "Zoë told her sister about her plans."];
    let lines: Vec<String> = (0..9).map(|i| format!("{i}: {}", base[i % 2])).collect();
    std::fs::write(&corpus, lines.join("\n")).unwrap();
    let select = ["--target", " her", "--occurrence", "all", "--sub-token", "mean", "--all-layers", "--row-matrices"];
    let runs = [
        ("unary", vec!["--server", &address]),
        ("stream", vec!["--server", &address, "--stream-above", "0"]),
        ("shards", vec!["--server", &address, "--server", &address, "--chunk-size", "2"]),
    ];
    for (name, how) in &runs {
        let args: Vec<&str> = how.iter().copied().chain(select).collect();
        let run = analyze(&args, &corpus, &dir.path().join(name));
        assert!(run.status.success(), "{name}: {}", String::from_utf8_lossy(&run.stderr));
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(stdout.contains("all_layers.svg"), "{name}: {stdout}");
    }
    let read = |run: &str, file: &str| std::fs::read_to_string(dir.path().join(run).join(file)).unwrap();
    let angles = read_angles_csv(&dir.path().join("unary/angles.csv")).unwrap();
    assert_eq!(angles.len(), 6 * 18 * 3, "6 layers x 2 occurrences x 9 sentences x 3 conditions");
    let second = &angles[6 * 3];
    assert_eq!((second.sentence, second.occurrence, second.layer), (0, 2, 1), "the second occurrence's row");
    for (name, _) in &runs[1..] {
        for file in ["angles.csv", "all_layers.csv"] {
            assert_eq!(read(name, file), read("unary", file), "{name}: {file}");
        }
        for field in ["sentences", "all_layers", "shuffle_draws"] {
            assert_eq!(
                json_field(&dir.path().join(name), field),
                json_field(&dir.path().join("unary"), field),
                "{name}: {field}"
            );
        }
    }
    let all = json_field(&dir.path().join("unary"), "all_layers");
    assert_eq!(all["rows"], 18);
    assert_eq!(all["row_matrices"].as_array().unwrap().len(), 18);
    let svg = read("unary", "all_layers.svg");
    assert!(svg.contains("<svg") && svg.contains("mean angle between hidden states"));
}

#[test]
fn marked_sentences_become_spans_and_errors_name_their_line() {
    let (_server, address) = serve_bundled();
    let dir = tempfile::tempdir().unwrap();
    let marked = dir.path().join("marked.txt");
    std::fs::write(&marked, "[[Her]] {{mother}} gave her the book.\n\n[[Nakamura]] {{met}} her twice.\n").unwrap();
    let run = analyze(&["--server", &address, "--marked", "--sub-token", "first"], &marked, &dir.path().join("ok"));
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let sentences = json_field(&dir.path().join("ok"), "sentences");
    assert_eq!(sentences[0]["text"], "Her mother gave her the book.");
    assert_eq!(sentences[1]["target_tokens"], serde_json::json!([0, 3]), "Nakamura is N|ak|amura");
    assert_eq!(sentences[1]["target_position"], 0, "--sub-token first");
    assert_eq!(sentences[1]["non_target_tokens"], serde_json::json!([3, 4]));

    // A mark that is missing, and a span the server refuses: both point at line 3.
    std::fs::write(&marked, "She gave [[her]] the book.\n\nNakamura met her twice.\n").unwrap();
    let run = analyze(&["--server", &address, "--marked"], &marked, &dir.path().join("bad"));
    let stderr = String::from_utf8_lossy(&run.stderr);
    let located = !run.status.success() && stderr.contains(":3 (sentence 1)");
    assert!(located && stderr.contains("no [[target]] mark"), "{stderr}");
    std::fs::write(&marked, "She gave [[her]] the book.\n\n[[Naka]]mura met her twice.\n").unwrap();
    let run = analyze(&["--server", &address, "--marked"], &marked, &dir.path().join("bad"));
    let stderr = String::from_utf8_lossy(&run.stderr);
    // The server's invalid sentences are listed as FILE:LINE: reason.
    assert!(stderr.contains("marked.txt:3: ") && stderr.contains("token boundaries"), "{stderr}");
}
