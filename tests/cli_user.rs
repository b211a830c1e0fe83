//! What a user of the CLI sees: when something is wrong, the place in their file, the spelling to
//! try, the output folder checked before any work, a model folder that does not exist; and
//! `tokenize` output that explains itself.
mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn rotations(args: &[&str], paths: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rotations"));
    command.args(args);
    for (flag, path) in paths {
        command.arg(flag).arg(path);
    }
    command.output().unwrap()
}

fn stderr(out: &Output) -> String {
    assert!(!out.status.success(), "should fail: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_output_folder_is_checked_before_the_server_is_called() {
    let dir = tempfile::tempdir().unwrap();
    let sentences = repo().join("examples/her_sentences.txt");
    // Nothing listens on port 1: getting past the output check would fail to connect instead.
    let analyze = ["analyze", "--server", "http://127.0.0.1:1", "--target", " her"];
    std::fs::write(dir.path().join("a-file"), "").unwrap();
    let err = stderr(&rotations(&analyze, &[("--sentences", &sentences), ("--out", &dir.path().join("a-file/out"))]));
    assert!(err.contains("cannot create the output folder"), "{err}");

    let earlier = dir.path().join("earlier");
    std::fs::create_dir(&earlier).unwrap();
    std::fs::write(earlier.join("analysis.json"), "{}").unwrap();
    let err = stderr(&rotations(&analyze, &[("--sentences", &sentences), ("--out", &earlier)]));
    assert!(err.contains("already holds an analysis (analysis.json)") && err.contains("--overwrite"), "{err}");
    assert_eq!(std::fs::read_to_string(earlier.join("analysis.json")).unwrap(), "{}", "left as it was");

    let with_overwrite = [&analyze[..], &["--overwrite"]].concat();
    let err = stderr(&rotations(&with_overwrite, &[("--sentences", &sentences), ("--out", &earlier)]));
    assert!(!err.contains("already holds"), "--overwrite passes the check and goes on to connect: {err}");
}

#[test]
fn a_bad_sentence_is_named_by_its_line_in_the_file() {
    let (_server, address) = serve_bundled();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sentences.txt");
    // Blank lines count: the third sentence is on line 6.
    std::fs::write(&file, "I saw her at the market.\n\nShe gave her the book.\n\n\nWe thanked him for the help.\n")
        .unwrap();
    let url = format!("http://{address}");
    let out = dir.path().join("out");
    let err = stderr(&rotations(
        &["analyze", "--server", &url, "--target", "her"],
        &[("--sentences", &file), ("--out", &out)],
    ));
    let message = r#"target token 372 "her" not found; did you mean " her" (607)?"#;
    assert!(err.contains(&format!("{}:1: {message}", file.display())), "{err}");

    let err = stderr(&rotations(
        &["analyze", "--server", &url, "--target", " her", "--overwrite"],
        &[("--sentences", &file), ("--out", &out)],
    ));
    let expected = format!(r#"{}:6: target token 607 " her" not found"#, file.display());
    assert!(err.contains(&expected), "{err}");
    assert!(!out.exists(), "a failed analysis leaves no empty output folder behind");
}

#[test]
fn a_model_folder_that_does_not_exist_says_so_with_the_resolved_path() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rotations"))
        .args(["serve", "--host", "127.0.0.1", "--port", "0", "--model-dir", "models/no-such-model"])
        .arg("--ort-library")
        .arg(ort_library())
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = stderr(&out);
    let resolved = dir.path().join("models/no-such-model");
    let expected = format!("model directory models/no-such-model does not exist (resolved to {})", resolved.display());
    assert!(err.contains(&expected), "{err}");
}

#[test]
fn tokenize_prints_a_header_and_explains_the_space_mark() {
    let (_server, address) = serve_bundled();
    let out = rotations(&["tokenize", "--server", &format!("http://{address}"), "I saw her."], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], r#""I saw her.""#);
    let header: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(header, ["pos", "id", "token", "text", "bytes"], "{stdout}");
    let her: Vec<&str> = lines[4].split_whitespace().collect();
    assert_eq!(her, ["2", "607", r#""Ġher""#, r#"""#, r#"her""#, "5..9"], "{stdout}");
    assert!(stdout.contains(r#"Ġ is GPT-2's mark for a leading space: token "Ġher" is the text " her""#), "{stdout}");
}
