//! `rotations compare`: one server (CompareGroups), a stream per group and two replicas give the
//! same tests in groups.json, bit for bit; the files and the figure are written; mistakes are told
//! as the group's FILE:LINE or before any work.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn compare(args: &[&str], out: &Path) -> Output {
    let (possessive, object) = (repo().join("examples/her_possessive.txt"), repo().join("examples/her_object.txt"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_rotations"));
    command.args(["compare", "--target", " her", "--correction", "holm", "--overwrite"]).args(args);
    if !args.contains(&"--group") {
        command.arg("--group").arg(format!("possessive={}", possessive.display()));
        command.arg("--group").arg(format!("object={}", object.display()));
    }
    command.arg("--out").arg(out).output().unwrap()
}

fn succeeded(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "should fail: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn groups_json(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("groups.json")).unwrap()).unwrap()
}

#[test]
fn one_server_a_stream_per_group_and_two_replicas_give_the_same_tests() {
    let ((_one, a), (_two, b)) = (serve_bundled(), serve_bundled());
    let dir = tempfile::tempdir().unwrap();
    let (single, streamed, sharded) =
        (dir.path().join("single"), dir.path().join("streamed"), dir.path().join("sharded"));
    let (url_a, url_b) = (format!("http://{a}"), format!("http://{b}"));

    let table = succeeded(&compare(&["--server", &url_a], &single));
    assert!(table.starts_with("possessive: 16 sentences, object: 16 sentences; 6 layers;"), "{table}");
    assert!(table.contains("Welch's t-test per layer, possessive − object (Holm over 6 tests, α = 0.05)"), "{table}");
    succeeded(&compare(&["--server", &url_a, "--stream-above", "4"], &streamed));
    succeeded(&compare(&["--server", &url_a, "--server", &url_b, "--chunk-size", "3"], &sharded));

    let want = groups_json(&single);
    assert_eq!(want["labels"], serde_json::json!(["possessive", "object"]));
    assert_eq!(want["tests"]["layers"].as_array().unwrap().len(), 6);
    for other in [&streamed, &sharded] {
        let got = groups_json(other);
        assert_eq!(got["tests"], want["tests"], "{}", other.display());
        for g in 0..2 {
            let (got, want) = (&got["groups"][g]["analysis"], &want["groups"][g]["analysis"]);
            assert_eq!(got["angles"], want["angles"]);
            assert_eq!(got["significance"], want["significance"]);
        }
    }

    let tests_csv = std::fs::read_to_string(single.join("group_tests.csv")).unwrap();
    assert_eq!(tests_csv.lines().count(), 7);
    assert!(tests_csv.starts_with("layer,n_a,n_b,mean_a,mean_b,sd_a,sd_b,mean_difference,ci_low,ci_high,t,df,p,"));
    let angles_csv = std::fs::read_to_string(single.join("group_angles.csv")).unwrap();
    assert_eq!(angles_csv.lines().count(), 1 + 2 * 16 * 6 * 3, "two groups of 16, 6 layers, 3 conditions");
    assert!(angles_csv.starts_with("group,sentence,occurrence,layer,condition,angle\npossessive,0,1,1,target,"));
    assert!(angles_csv.lines().last().unwrap().starts_with("object,15,1,6,shuffled,"));
    let svg = std::fs::read_to_string(single.join("groups.svg")).unwrap();
    assert!(svg.contains("possessive (n = 16): mean ± 95% CI") && svg.contains("object (n = 16)"));
}

#[test]
fn mistakes_are_told_by_group_and_line_or_before_any_work() {
    let (_server, address) = serve_bundled();
    let url = format!("http://{address}");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let good: PathBuf = repo().join("examples/her_possessive.txt");
    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, "I saw her at the market.\n\nNobody was there.\n").unwrap();
    let group = |label: &str, path: &Path| format!("{label}={}", path.display());

    let err = failed(&compare(&["--server", &url, "--group", &group("a", &good), "--group", &group("b", &bad)], &out));
    let expected = format!(r#"{}:3: target token 607 " her" not found"#, bad.display());
    assert!(err.contains(&expected), "{err}");
    assert!(!out.exists(), "a failed comparison leaves no empty output folder behind");

    // Before any work (nothing listens on port 1).
    let offline = "http://127.0.0.1:1";
    let err = failed(&compare(&["--server", offline, "--group", &group("a", &good)], &out));
    assert!(err.contains("give exactly two groups"), "{err}");
    let err =
        failed(&compare(&["--server", offline, "--group", &group("a", &good), "--group", &group("a", &good)], &out));
    assert!(err.contains("both labelled \"a\""), "{err}");
    std::fs::write(&bad, "I saw her.\n").unwrap();
    let err =
        failed(&compare(&["--server", offline, "--group", &group("a", &good), "--group", &group("b", &bad)], &out));
    assert!(err.contains("group \"b\"") && err.contains("has 1 sentence(s)"), "{err}");
    let err = failed(&compare(&["--server", offline, "--group", "no-equals-sign"], &out));
    assert!(err.contains("is not LABEL=FILE"), "{err}");
}
