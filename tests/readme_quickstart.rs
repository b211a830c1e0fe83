//! The README's quick start, typed as written in a fresh folder outside the checkout: after the install
//! `make install` does (the binary in PREFIX/bin, then `scripts/install-data PREFIX`), with no
//! ORT_DYLIB_PATH and no ROTATIONS_* variable, `rotations` is found on the PATH, finds its ONNX Runtime
//! and the bundled model relative to itself, serves, and analyses the user's own sentences.
//! The one change made to the README's lines: the server's port, a free one instead of 50051.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::repo;

/// The shell lines of the README's "Quick start" section, continuation lines joined.
fn quick_start_lines() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme.find("\n## Quick start").expect("README has a Quick start section");
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let (mut lines, mut in_sh, mut current) = (Vec::new(), false, String::new());
    for line in section.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if in_sh {
            current.push_str(line.trim_end_matches('\\').trim());
            if line.ends_with('\\') {
                current.push(' ');
            } else if !current.is_empty() {
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    lines
}

/// What `make install` does, into `prefix`: the Makefile's recipe is checked to be exactly these two steps.
fn install_like_make(prefix: &Path) {
    let makefile = std::fs::read_to_string(repo().join("Makefile")).unwrap();
    let recipe = makefile.split("\ninstall: ").nth(1).expect("the Makefile has an install target");
    let recipe: Vec<&str> = recipe.lines().skip(1).take_while(|l| l.starts_with('\t')).collect();
    assert_eq!(
        recipe,
        ["\tcargo install --path . --locked --root \"$(PREFIX)\"", "\tscripts/install-data \"$(PREFIX)\""],
        "make install changed: update this test"
    );
    // `cargo install` builds and copies the binary; the test binary's build stands in for its release build.
    std::fs::create_dir_all(prefix.join("bin")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_rotations"), prefix.join("bin/rotations")).unwrap();
    let out = Command::new(repo().join("scripts/install-data")).arg(prefix).output().unwrap();
    assert!(out.status.success(), "scripts/install-data: {}", String::from_utf8_lossy(&out.stderr));
}

/// A shell as the user has it after `make install`: PREFIX/bin on the PATH, none of our variables set.
fn user_shell(prefix: &Path, home: &Path, line: &str) -> Command {
    let mut command = Command::new("bash");
    command.args(["-c", line]).current_dir(home);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("ROTATIONS_") || name == "ORT_DYLIB_PATH" || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    let path = std::env::var("PATH").unwrap_or_default();
    command.env("PATH", format!("{}:{path}", prefix.join("bin").display()));
    command
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The README's port, replaced by a free one: `serve` gets `--port`, the client commands `--server`.
fn on_port(line: &str, port: u16) -> String {
    if let Some(rest) = line.strip_prefix("rotations serve") {
        return format!("rotations serve --port {port}{rest}");
    }
    for command in ["analyze", "compare", "tokenize", "info", "health"] {
        if let Some(rest) = line.strip_prefix(&format!("rotations {command} ")) {
            assert!(!rest.contains("--server"), "the quick start relies on the default server: {line}");
            return format!("rotations {command} --server http://127.0.0.1:{port} {rest}");
        }
    }
    line.to_string()
}

fn wait_serving(prefix: &Path, home: &Path, port: u16, server: &mut Server, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let health = format!("rotations health --server http://127.0.0.1:{port}");
    while !user_shell(prefix, home, &health).stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap().success() {
        let log = std::fs::read_to_string(log).unwrap_or_default();
        assert!(server.0.try_wait().unwrap().is_none(), "`rotations serve` exited:\n{log}");
        assert!(Instant::now() < deadline, "`rotations serve` did not become SERVING:\n{log}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn run_line(prefix: &Path, home: &Path, line: &str) -> String {
    let out = user_shell(prefix, home, line).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "`{line}` failed:\n{stdout}{stderr}");
    stdout.into_owned()
}

fn json(path: PathBuf) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_quick_start_runs_as_written_after_make_install() {
    let lines = quick_start_lines();
    for expected in ["make install", "rotations --version", "rotations serve &"] {
        assert!(lines.iter().any(|l| l == expected), "the quick start lacks `{expected}`: {lines:?}");
    }
    assert!(lines.iter().any(|l| l.starts_with("rotations analyze ")), "{lines:?}");
    let (prefix, home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (prefix, home) = (prefix.path(), home.path());
    let port = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port();
    let log = home.join("server.log");
    let mut server = None;
    for line in &lines {
        match line.as_str() {
            "make install" => install_like_make(prefix),
            "rotations --version" => {
                let out = run_line(prefix, home, line);
                let library = prefix.join("lib/libonnxruntime.so");
                let want = format!("ONNX Runtime 1.32.0 ({})", library.display());
                assert!(out.starts_with(&format!("rotations {}\n", env!("CARGO_PKG_VERSION"))), "{out}");
                assert!(out.contains(&want) && out.contains("execution providers compiled in: cpu"), "{out}");
            }
            serve if serve.starts_with("rotations serve") && serve.ends_with('&') => {
                let command = on_port(serve.trim_end_matches('&').trim(), port);
                let log_file = std::fs::File::create(&log).unwrap();
                let child = user_shell(prefix, home, &format!("exec {command}")).stderr(log_file).spawn().unwrap();
                let mut started = Server(child);
                wait_serving(prefix, home, port, &mut started, &log);
                server = Some(started);
                // The bundled model was found where make install put it, not in a checkout.
                let log = std::fs::read_to_string(&log).unwrap();
                assert!(log.contains("share/rotations/models/gpt2-tiny-random"), "{log}");
                // ModelInfo says what its hidden states are (GPT-2's, for a model.json that predates the field).
                let info = run_line(prefix, home, &on_port("rotations info ", port));
                assert!(info.contains("last state         after the final norm"), "{info}");
            }
            // The Python client's venv: what `make python-test` installs, and whose Python
            // clients/python/tests/test_readme.py runs the quick start's snippet in.
            "python3 -m venv .venv && .venv/bin/pip install ./clients/python" | ".venv/bin/python" => {}
            other => {
                assert!(!other.contains(".venv"), "no check for the quick start's `{other}`: add one");
                run_line(prefix, home, &on_port(other, port));
            }
        }
    }
    assert!(server.is_some(), "the quick start starts a server");
    // The user's own sentences were analysed: three sentences, one with the target twice.
    let analysis = json(home.join("my-analysis/analysis.json"));
    assert_eq!(analysis["sentences"].as_array().map(Vec::len), Some(3), "{analysis}");
    assert!(home.join("my-analysis/angles.svg").is_file() && home.join("my-analysis/significance.csv").is_file());
    let every = json(home.join("my-analysis-all/analysis.json"));
    assert_eq!(every["sentences"].as_array().map(Vec::len), Some(4), "--occurrence all: 4 rows");
    assert!(home.join("my-analysis-all/all_layers.csv").is_file());
}

/// The shell lines of a docs page that a reader runs against a local server (`localhost:50051` or
/// `127.0.0.1:50051`), and the `printf` lines that make their input files.
fn page_lines(page: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join(page)).unwrap().replace("\\\n", " ");
    let (mut lines, mut in_sh) = (Vec::new(), false);
    for line in text.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
        } else if in_sh
            && (line.contains("localhost:50051") || line.contains("127.0.0.1:50051") || line.starts_with("printf "))
        {
            lines.push(line.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    lines
}

#[test]
fn the_analyses_pages_commands_run_as_written() {
    let lines = page_lines("docs/src/analyses.md");
    for expected in ["--occurrence all", "--marked", "rotations compare"] {
        assert!(lines.iter().any(|l| l.contains(expected)), "docs/src/analyses.md lacks `{expected}`: {lines:?}");
    }
    let (_server, address) = common::serve_bundled();
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(repo().join("examples"), home.path().join("examples")).unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_rotations")).parent().unwrap().to_path_buf();
    for line in &lines {
        let line = line.replace("localhost:50051", &address).replace("127.0.0.1:50051", &address);
        let mut shell = Command::new("bash");
        shell.args(["-c", &line]).current_dir(home.path());
        shell.env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()));
        let out = shell.output().unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "`{line}` failed:\n{said}");
    }
    // --occurrence all on examples/her_twice.txt: more rows than sentences.
    let rows = json(home.path().join("her-all-layers/analysis.json"))["sentences"].as_array().unwrap().len();
    let sentences = std::fs::read_to_string(repo().join("examples/her_twice.txt")).unwrap().lines().count();
    assert_eq!(rows, 2 * sentences, "every sentence of examples/her_twice.txt holds \" her\" twice");
    assert!(home.path().join("groups-output/groups.svg").is_file());
    // --vectors-out: the target's and the non-target's files beside the analysis.
    assert!(
        home.path().join("her-vectors/vectors.npy").is_file()
            && home.path().join("her-vectors/vectors.non_target.npy").is_file()
    );
}
