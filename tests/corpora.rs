//! Real corpora (issue 25): every invalid sentence named in one INVALID_ARGUMENT (text and
//! google.rpc.BadRequest details), skip-and-report that equals an analysis of the valid sentences
//! alone at their corpus indices, the CLI's skipped.csv identical on one server and sharded over
//! three replicas, and the day-one edges (a closed stdout, a sentence-initial target).
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use rotations::client::angles_file::read_angles_csv;
use rotations::proto;
use tonic_types::StatusExt;

/// `n` sentences with " her" (the examples', numbered), and at the 0-based places in `bad` one
/// without it; blank lines after every 13th so that lines and indices differ.
fn corpus(n: usize, bad: &[usize]) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("examples/her_sentences.txt")).unwrap();
    let examples: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    (0..n)
        .map(
            |i| if bad.contains(&i) { format!("{i}. Nobody was there.") } else { format!("{i}. {}", examples[i % 54]) },
        )
        .collect()
}

fn write_corpus(dir: &Path, sentences: &[String]) -> PathBuf {
    let mut body = String::new();
    for (i, s) in sentences.iter().enumerate() {
        body.push_str(s);
        body.push('\n');
        if i % 13 == 0 {
            body.push('\n');
        }
    }
    let path = dir.join("corpus.txt");
    std::fs::write(&path, body).unwrap();
    path
}

fn request(sentences: Vec<String>, skip_invalid: bool) -> proto::RotationRequest {
    proto::RotationRequest {
        sentences,
        target: Some(proto::rotation_request::Target::TargetText(" her".into())),
        skip_invalid,
        ..Default::default()
    }
}

fn bits(t: &Option<proto::Tensor>) -> Vec<u32> {
    t.as_ref().unwrap().values.iter().map(|v| v.to_bits()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_sentence_is_named_at_once_in_text_and_details() {
    let (_server, address) = serve_bundled();
    let mut client = rotations::client::connect_to(&address, &Default::default()).await.unwrap();
    let bad = [1, 3, 4];
    let mut req = request(corpus(8, &bad), false);
    req.sentences[6] = "her first.".into(); // GPT-2: "her" without the space, not " her"
    req.first_sentence_index = 100;
    for streamed in [false, true] {
        let status = if streamed {
            let mut stream = client.stream_rotations(req.clone()).await.unwrap().into_inner();
            loop {
                match stream.message().await {
                    Err(status) => break status,
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("the stream ended without an error"),
                }
            }
        } else {
            client.analyze(req.clone()).await.unwrap_err()
        };
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let message = status.message();
        assert!(message.starts_with("4 of 8 sentences are invalid"), "{message}");
        for (line, index) in message.lines().skip(1).zip([101, 103, 104, 106]) {
            assert!(line.starts_with(&format!("sentence {index} (\"")), "{line}");
        }
        let details = status.get_error_details();
        let violations = &details.bad_request().expect("BadRequest details").field_violations;
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["sentences[1]", "sentences[3]", "sentences[4]", "sentences[6]"]);
        assert!(violations.iter().all(|v| v.reason == "TARGET_NOT_FOUND"));
        assert!(violations[3].description.contains("did you mean \"her\""), "{}", violations[3].description);
        let info = details.error_info().unwrap();
        assert_eq!((info.metadata["invalid"].as_str(), info.metadata["first_sentence_index"].as_str()), ("4", "100"));
    }

    // Many: the message stops at a bound and says how many more; the details list the same ones.
    let many: Vec<usize> = (0..300).filter(|i| i % 3 == 0).collect();
    let status = client.analyze(request(corpus(300, &many), false)).await.unwrap_err();
    let listed = status.message().lines().filter(|l| l.starts_with("sentence ")).count();
    assert!((1..=20).contains(&listed), "{}", status.message());
    assert!(status.message().ends_with(&format!("and {} more", 100 - listed)), "{}", status.message());
    let details = status.get_error_details();
    assert_eq!(details.bad_request().unwrap().field_violations.len(), listed);
    assert_eq!(details.error_info().unwrap().metadata["invalid"], "100");
}

/// Forward passes the server has run (its `rotations_sentences_total`), read from its metrics page.
fn sentences_computed(metrics_port: u16) -> f64 {
    let page = http_get(metrics_port, "/metrics");
    let line = page.lines().find(|l| l.starts_with("rotations_sentences_total"));
    line.and_then(|l| l.split_whitespace().last()).map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_only_lists_every_invalid_sentence_without_a_forward_pass() {
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let port = metrics_port.to_string();
    let (_server, address) = serve_model_with(&bundled_model_dir(), "127.0.0.1", &["--metrics-port", &port], &[]);
    let mut client = rotations::client::connect_to(&address, &Default::default()).await.unwrap();
    let many: Vec<usize> = (0..300).filter(|i| i % 3 == 0).collect();
    // A sharding client's check of the rest: every invalid sentence, unbounded, in one final
    // message without angles or statistics, and no sentence through the model.
    let mut check = request(corpus(300, &many), false);
    check.validate_only = true;
    check.first_sentence_index = 1000;
    let mut stream = client.stream_rotations(check.clone()).await.unwrap().into_inner();
    let mut messages = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        messages.push(message);
    }
    let [only] = &messages[..] else { panic!("{} messages", messages.len()) };
    assert!(only.last && only.angles.is_none() && only.statistics.is_empty());
    assert_eq!(only.skipped.iter().map(|s| s.index as usize - 1000).collect::<Vec<_>>(), many);
    assert_eq!(only.progress.unwrap().done, 300);
    assert_eq!(sentences_computed(metrics_port), 0.0, "validate_only ran no forward pass");
    // The same valid sentences analysed do go through the model (the metric counts them).
    client.analyze(request(corpus(3, &[]), false)).await.unwrap();
    assert_eq!(sentences_computed(metrics_port), 3.0);
    // The unary RPCs refuse the option.
    let refused = client.analyze(check).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("validate_only"), "{}", refused.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipping_equals_the_valid_sentences_alone_at_their_corpus_indices() {
    let (_server, address) = serve_bundled();
    let mut client = rotations::client::connect_to(&address, &Default::default()).await.unwrap();
    let bad = [0, 5, 6, 17];
    let sentences = corpus(24, &bad);
    let analysis = client.analyze(request(sentences.clone(), true)).await.unwrap().into_inner();
    let rotations = analysis.rotations.clone().unwrap();
    let skipped: Vec<(u32, &str)> = rotations.skipped.iter().map(|s| (s.index, s.reason.as_str())).collect();
    assert_eq!(skipped, bad.map(|i| (i as u32, "TARGET_NOT_FOUND")));

    // The reference: each run of valid sentences as a request of its own at its corpus index,
    // merged through the exact statistics (TestSignificance), angles and draws side by side.
    let (mut angles, mut draws, mut stats) = (Vec::new(), Vec::new(), Vec::new());
    let runs = [(1, 5), (7, 17), (18, 24)];
    let layers = 6;
    let mut per_layer: Vec<Vec<(Vec<f32>, proto::ShuffleDraw)>> = vec![Vec::new(); layers];
    for (start, end) in runs {
        let mut piece = request(sentences[start..end].to_vec(), false);
        piece.first_sentence_index = start as u64;
        let mut stream = client.stream_rotations(piece).await.unwrap().into_inner();
        while let Some(chunk) = stream.message().await.unwrap() {
            if chunk.last {
                let merged = rotations::service::convert::paired_stats_from_proto(&chunk.statistics).unwrap();
                rotations::analysis::merge_layers(&mut stats, &merged);
                continue;
            }
            let t = chunk.angles.unwrap();
            let k = t.shape[1] as usize;
            for (l, rows) in per_layer.iter_mut().enumerate() {
                for s in 0..k {
                    let at = (l * k + s) * 3;
                    rows.push((t.values[at..at + 3].to_vec(), chunk.shuffle_draws[l * k + s]));
                }
            }
        }
    }
    for rows in per_layer {
        for (a, d) in rows {
            angles.extend(a.iter().map(|v| v.to_bits()));
            draws.push(d);
        }
    }
    assert_eq!(bits(&rotations.angles), angles, "angles of the valid sentences at their corpus indices");
    assert_eq!(rotations.shuffle_draws, draws, "draws keyed by corpus index, unchanged by skipping");
    let indices: Vec<u32> = rotations.sentences.iter().map(|r| r.index).collect();
    assert_eq!(indices, (0..24).filter(|i| !bad.contains(&(*i as usize))).collect::<Vec<u32>>());
    let ask = proto::SignificanceRequest {
        statistics: rotations::service::convert::layer_statistics(&stats),
        ..Default::default()
    };
    let reference = client.test_significance(ask).await.unwrap().into_inner();
    let tested = analysis.significance.unwrap();
    for (a, b) in tested.layers.iter().zip(&reference.layers) {
        assert_eq!((a.t.to_bits(), a.p.to_bits()), (b.t.to_bits(), b.p.to_bits()), "layer {}", a.layer);
    }

    // A stream reports each chunk's skipped sentences; with its rows they cover the chunk's range.
    let mut stream = client.stream_rotations(request(sentences.clone(), true)).await.unwrap().into_inner();
    let mut covered = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        if chunk.last {
            assert!(chunk.significance.is_some(), "{}", chunk.significance_error);
            break;
        }
        let mut in_chunk: Vec<u32> =
            chunk.sentences.iter().map(|r| r.index).chain(chunk.skipped.iter().map(|s| s.index)).collect();
        in_chunk.sort();
        assert_eq!(in_chunk, (chunk.first_sentence..chunk.end_sentence).collect::<Vec<_>>());
        covered.extend(in_chunk);
    }
    assert_eq!(covered, (0..24).collect::<Vec<u32>>());

    // Degenerate: none left, or one left for a t-test, are errors that say so.
    let status = client.analyze(request(corpus(3, &[0, 1, 2]), true)).await.unwrap_err();
    assert!(
        status.message().starts_with("every sentence is invalid, none is left to analyse (3)"),
        "{}",
        status.message()
    );
    let status = client.analyze(request(corpus(3, &[0, 2]), true)).await.unwrap_err();
    assert!(
        status.message().starts_with("only 1 of 3 sentences are valid and the t-test needs 2"),
        "{}",
        status.message()
    );
    assert_eq!(status.get_error_details().bad_request().unwrap().field_violations.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_groups_skips_per_group_and_names_the_group_in_details() {
    let (_server, address) = serve_bundled();
    let mut client = rotations::client::connect_to(&address, &Default::default()).await.unwrap();
    let group = |label: &str, skip| proto::Group { label: label.into(), request: Some(request(corpus(6, &[2]), skip)) };
    let comparison = proto::GroupComparisonRequest { groups: vec![group("a", true), group("b", true)], options: None };
    let answer = client.compare_groups(comparison).await.unwrap().into_inner();
    for g in &answer.groups {
        let skipped = &g.analysis.as_ref().unwrap().rotations.as_ref().unwrap().skipped;
        assert_eq!(skipped.iter().map(|s| s.index).collect::<Vec<_>>(), [2]);
    }
    let comparison = proto::GroupComparisonRequest { groups: vec![group("a", true), group("b", false)], options: None };
    let status = client.compare_groups(comparison).await.unwrap_err();
    let fields: Vec<String> =
        status.get_error_details().bad_request().unwrap().field_violations.iter().map(|v| v.field.clone()).collect();
    assert_eq!(fields, ["groups[1].request.sentences[2]"]);
}

fn analyze_cli(server_args: &[String], corpus: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let target = if extra.contains(&"--target") { &[][..] } else { &["--target", " her"][..] };
    Command::new(env!("CARGO_BIN_EXE_rotations"))
        .arg("analyze")
        .args(server_args)
        .args(target)
        .args(extra)
        .arg("--sentences")
        .arg(corpus)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn the_cli_skips_alike_on_one_server_and_sharded_over_three() {
    let dir = tempfile::tempdir().unwrap();
    let bad = [2, 9, 10, 31, 47, 58];
    let path = write_corpus(dir.path(), &corpus(60, &bad));
    let servers: Vec<_> = ["127.0.0.2", "127.0.0.3", "127.0.0.4"].into_iter().map(serve_bundled_on).collect();
    let one = vec!["--server".to_string(), format!("http://{}", servers[0].1)];
    let three: Vec<String> = servers.iter().flat_map(|(_, a)| ["--server".to_string(), a.clone()]).collect();

    // Without the flag: every bad line, as FILE:LINE: reason.
    let out = analyze_cli(&one, &path, &dir.path().join("refused"), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let lines: Vec<usize> = bad.iter().map(|i| i + 1 + i.div_ceil(13)).collect(); // blank lines counted
    for line in &lines {
        assert!(
            stderr.contains(&format!("{}:{line}: target token 607 \" her\" not found", path.display())),
            "{stderr}"
        );
    }

    // Sharded (bad lines in five different chunks of 7): the same list in one run.
    let sharded = analyze_cli(&three, &path, &dir.path().join("refused3"), &["--chunk-size", "7"]);
    assert!(!sharded.status.success());
    let listed = |stderr: &str| -> Vec<String> {
        let lines =
            stderr.lines().filter(|l| l.contains("sentences are invalid") || l.contains(&*path.to_string_lossy()));
        lines.map(str::to_string).collect()
    };
    let want = listed(&stderr);
    assert_eq!(want.len(), 1 + bad.len(), "{stderr}");
    assert_eq!(listed(&String::from_utf8_lossy(&sharded.stderr)), want, "sharded lists what one server lists");

    let mut results = Vec::new();
    for (name, servers, extra) in [
        ("one", &one, &["--stream-above", "1000"][..]),
        ("streamed", &one, &["--stream-above", "10"]),
        ("three", &three, &["--chunk-size", "7"]),
        // Chunks of one sentence: six chunks have every sentence skipped (no rows at all).
        ("three, chunks of one", &three, &["--chunk-size", "1", "--all-layers"]),
    ] {
        let out_dir = dir.path().join(name);
        let out = analyze_cli(servers, &path, &out_dir, &[extra, &["--skip-invalid"]].concat());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("analysed 54 of 60 sentences; 6 skipped (see skipped.csv)"), "{stdout}");
        let read = |f: &str| std::fs::read_to_string(out_dir.join(f)).unwrap();
        results.push((read("skipped.csv"), read("angles.csv"), read("significance.csv")));
    }
    let skipped_csv = &results[0].0;
    assert_eq!(skipped_csv.lines().count(), 1 + bad.len());
    for (row, (i, line)) in skipped_csv.lines().skip(1).zip(bad.iter().zip(&lines)) {
        assert!(row.starts_with(&format!("{i},{line},TARGET_NOT_FOUND,")), "{row}");
    }
    assert_eq!(results[0], results[1], "Analyze and a stream give the same files");
    assert_eq!(results[0], results[2], "one server and three replicas give the same files");
    assert_eq!(results[0], results[3], "chunks with no valid sentence merge as no rows");
    let one_all = dir.path().join("one, all layers");
    let out = analyze_cli(&one, &path, &one_all, &["--skip-invalid", "--all-layers"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let all_layers = |d: &Path| std::fs::read_to_string(d.join("all_layers.csv")).unwrap();
    assert_eq!(all_layers(&one_all), all_layers(&dir.path().join("three, chunks of one")));
}

#[test]
fn a_closed_stdout_ends_quietly_and_a_sentence_initial_target_says_what_to_do() {
    let (_server, address) = serve_bundled();
    let dir = tempfile::tempdir().unwrap();
    let sentences = repo().join("examples/her_sentences.txt");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rotations"))
        .args(["analyze", "--server", &address, "--target", " her", "--out"])
        .arg(dir.path().join("out"))
        .arg("--sentences")
        .arg(&sentences)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader has gone before the first line
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.path().join("out/analysis.json").exists(), "the files are written before the table");

    let file = dir.path().join("initial.txt");
    std::fs::write(&file, "Her dog saw her there.\nHer cat slept.\n").unwrap();
    let out =
        analyze_cli(&["--server".into(), address.clone()], &file, &dir.path().join("o2"), &["--target", "Her"][..]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--offset 1") && stderr.contains("{{word}}") && stderr.contains("--marked"), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:1: ", file.display()))
            && stderr.contains(r#"or target " her" (607), which occurs at position 3"#),
        "{stderr}"
    );
}

/// The issue's "done when": a large corpus with bad lines (three in a thousand, at places a
/// multiplicative hash picks) analysed with --skip-invalid on one server and sharded over three
/// replicas gives identical files, and without the flag both list the same bad lines. 10,000
/// sentences here; `make corpus-test` runs 100,000 (ROTATIONS_CORPUS_SENTENCES).
#[test]
fn a_large_corpus_with_bad_lines_gives_identical_files_on_one_server_and_sharded_over_three() {
    let n: usize = std::env::var("ROTATIONS_CORPUS_SENTENCES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let bad: Vec<usize> = (0..n).filter(|i| (i * 7919) % 1000 < 3).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = write_corpus(dir.path(), &corpus(n, &bad));
    let servers: Vec<_> = ["127.0.0.5", "127.0.0.6", "127.0.0.7"].into_iter().map(serve_bundled_on).collect();
    let one = vec!["--server".to_string(), servers[0].1.clone()];
    let three: Vec<String> = servers.iter().flat_map(|(_, a)| ["--server".to_string(), a.clone()]).collect();
    let mut files = Vec::new();
    for (name, servers) in [("one", &one), ("three", &three)] {
        let out_dir = dir.path().join(name);
        let out = analyze_cli(servers, &path, &out_dir, &["--skip-invalid", "--chunk-size", "1000"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let summary = format!("{} skipped (see skipped.csv)", bad.len());
        assert!(stdout.contains(&summary), "{name}: {stdout}");
        let read = |f: &str| std::fs::read(out_dir.join(f)).unwrap();
        files.push([read("skipped.csv"), read("angles.csv"), read("significance.csv")]);
    }
    let skipped = String::from_utf8_lossy(&files[0][0]).into_owned();
    let indices: Vec<usize> = skipped.lines().skip(1).map(|l| l.split(',').next().unwrap().parse().unwrap()).collect();
    assert_eq!(indices, bad);
    assert!(
        files[0] == files[1],
        "one server and three replicas write identical skipped.csv, angles.csv, significance.csv"
    );
    let angles = read_angles_csv(&dir.path().join("one/angles.csv")).unwrap();
    assert_eq!(angles.len(), (n - bad.len()) * 6 * 3);

    // Without the flag: the same bad lines listed (the first of them, and how many more) by both.
    let refused: Vec<Vec<String>> = [&one, &three]
        .iter()
        .map(|servers| {
            let out = analyze_cli(servers, &path, &dir.path().join("refused"), &["--chunk-size", "1000"]);
            assert!(!out.status.success());
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            stderr.lines().filter(|l| !l.starts_with("replica ")).map(str::to_string).collect()
        })
        .collect();
    assert!(refused[0][0].contains(&format!("{} of {n} sentences are invalid", bad.len())), "{:?}", refused[0]);
    assert_eq!(refused[0], refused[1]);
}
