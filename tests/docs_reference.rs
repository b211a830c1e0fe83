//! The docs' reference tables cannot drift from the program: every flag table row (flag, variable,
//! default) is checked against `rotations serve --help`, every server flag is in one, and the
//! Docker page's "in the image" table against the Dockerfile's ENV. Plus the stale sentences that
//! once crept into the README, kept out.
mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::repo;

/// The pages whose `| flag | variable | default | … |` tables document `rotations serve`.
const FLAG_PAGES: [&str; 3] = ["docs/src/serving.md", "docs/src/security.md", "docs/src/observability.md"];

#[derive(Debug, Default, Clone)]
struct HelpFlag {
    env: Option<String>,
    default: Option<String>,
}

/// `rotations serve --help`: each long flag with its `[env: …]` and `[default: …]`.
fn serve_help() -> BTreeMap<String, HelpFlag> {
    let out = Command::new(env!("CARGO_BIN_EXE_rotations")).args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    let (mut flags, mut current) = (BTreeMap::new(), None::<String>);
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("--").filter(|_| line.len() - trimmed.len() <= 6) {
            let name = format!("--{}", rest.split([' ', '=']).next().unwrap());
            flags.insert(name.clone(), HelpFlag::default());
            current = Some(name);
        } else if let Some(flag) = current.as_ref().and_then(|c| flags.get_mut(c)) {
            if let Some(env) = trimmed.strip_prefix("[env: ") {
                flag.env = Some(env.split(['=', ']']).next().unwrap().to_string());
            } else if let Some(default) = trimmed.strip_prefix("[default: ") {
                flag.default = Some(default.trim_end_matches(']').to_string());
            }
        }
    }
    flags.remove("--help");
    flags
}

/// The code spans of a table cell, in order.
fn spans(cell: &str) -> Vec<String> {
    cell.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// Rows of the tables whose header starts `| flag | variable | default |`, as cells.
fn flag_rows(page: &str) -> Vec<Vec<String>> {
    let (mut rows, mut in_table) = (Vec::new(), false);
    for line in page.lines() {
        if line.starts_with("| flag | variable | default |") {
            in_table = true;
        } else if !line.starts_with('|') {
            in_table = false;
        } else if in_table && !line.starts_with("|---") {
            rows.push(line.trim_matches('|').split(" | ").map(|c| c.trim().to_string()).collect());
        }
    }
    rows
}

#[test]
fn every_flag_table_row_agrees_with_serve_help_and_every_flag_has_a_row() {
    let help = serve_help();
    assert!(help.len() > 30 && help.contains_key("--max-concurrent-requests"), "{help:?}");
    let mut documented = Vec::new();
    for page in FLAG_PAGES {
        let text = std::fs::read_to_string(repo().join(page)).unwrap();
        for row in flag_rows(&text) {
            let (flags, vars, defaults) = (spans(&row[0]), spans(&row[1]), &row[2]);
            assert_eq!(flags.len(), vars.len(), "{page}: one variable per flag: {row:?}");
            let values = spans(defaults);
            for (i, (flag, var)) in flags.iter().zip(&vars).enumerate() {
                let known =
                    help.get(flag).unwrap_or_else(|| panic!("{page}: {flag} is not a flag of `rotations serve`"));
                assert_eq!(known.env.as_deref(), Some(var.as_str()), "{page}: {flag}'s variable");
                match &known.default {
                    Some(want) => {
                        let shown = values.get(i).or(values.first());
                        assert_eq!(shown, Some(want), "{page}: {flag}'s default (`rotations serve --help`): {row:?}");
                        assert!(defaults.starts_with('`'), "{page}: {flag}: the default first: {row:?}");
                    }
                    None => assert!(!defaults.starts_with('`'), "{page}: {flag} has no default in --help: {row:?}"),
                }
                documented.push(flag.clone());
            }
        }
    }
    let missing: Vec<_> = help.keys().filter(|f| !documented.contains(f)).collect();
    assert!(missing.is_empty(), "flags of `rotations serve` in no table of {FLAG_PAGES:?}: {missing:?}");
}

/// `ENV NAME=value \` lines of the Dockerfile's runtime stage.
fn dockerfile_env() -> BTreeMap<String, String> {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let runtime = &dockerfile[dockerfile.find("AS runtime").expect("a runtime stage")..];
    let block = &runtime[runtime.find("\nENV ").expect("ENV in the runtime stage") + 5..];
    let mut env = BTreeMap::new();
    for line in block.lines() {
        let (name, value) = line.trim().trim_end_matches('\\').trim().split_once('=').expect("NAME=value");
        env.insert(name.to_string(), value.replace("${VARIANT}", "cpu"));
        if !line.trim_end().ends_with('\\') {
            break;
        }
    }
    env
}

#[test]
fn the_docker_pages_image_settings_are_the_dockerfiles() {
    let page = std::fs::read_to_string(repo().join("docs/src/deployment.md")).unwrap();
    let start = page.find("| variable | in the image | meaning |").expect("the image's settings table");
    let table: BTreeMap<String, String> = page[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").collect();
            (spans(cells[0])[0].clone(), spans(cells[1])[0].clone())
        })
        .collect();
    assert_eq!(table, dockerfile_env(), "docs/src/deployment.md vs the Dockerfile's ENV");
}

#[test]
fn stale_sentences_stay_out() {
    let read = |p: &str| std::fs::read_to_string(repo().join(p)).unwrap();
    let mut pages = vec![("README.md".to_string(), read("README.md"))];
    for entry in std::fs::read_dir(repo().join("docs/src")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push((path.display().to_string(), std::fs::read_to_string(&path).unwrap()));
        }
    }
    for (name, text) in &pages {
        // make demo writes three figures (angles, significance, groups).
        assert!(!text.contains("the two figures"), "{name}: make demo writes three figures");
        // The export runs in the tools' venv, not a system Python.
        for line in text.lines() {
            let t = line.trim_start();
            assert!(
                !(t.starts_with("python tools/") || t.starts_with("python3 tools/")),
                "{name}: `{t}`: use .venv-tools/bin/python"
            );
        }
    }
    // The quick start promises no target/ paths: none in the front door at all.
    assert!(!pages[0].1.contains("target/debug") && !pages[0].1.contains("target/release"), "README.md");
    let help = Command::new(env!("CARGO_BIN_EXE_rotations")).arg("--help").output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(!help.contains("GPT-2's hidden state") && help.contains("transformer layer"), "{help}");
    // The CUDA image has the same debian base as the CPU image (docs/src/cuda-image.md).
    assert!(!read("deploy/README.md").contains("RUNTIME_IMAGE=nvidia/cuda"), "deploy/README.md");
    // The --occurrence all example needs sentences that hold the target twice.
    let analyses = read("docs/src/analyses.md").replace("\\\n", " ");
    let example = analyses
        .lines()
        .find(|l| l.starts_with("rotations analyze") && l.contains("--occurrence all"))
        .expect("an --occurrence all example");
    let file = example.split_whitespace().skip_while(|w| *w != "--sentences").nth(1).unwrap();
    let twice = read(file).lines().filter(|l| l.matches(" her").count() >= 2).count();
    assert!(twice >= 2, "{file}: sentences with \" her\" twice: {twice}");
}

#[test]
fn the_readmes_links_lead_to_files_and_its_map_names_every_page() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let targets: Vec<&str> = readme.split("](").skip(1).filter_map(|rest| rest.split(')').next()).collect();
    for target in &targets {
        let path = target.split('#').next().unwrap();
        assert!(repo().join(path).exists(), "README.md links to {target}, which is not there");
    }
    // The map of the documentation: every page of the book (docs/mkdocs.yml's nav) is in it.
    let config = std::fs::read_to_string(repo().join("docs/mkdocs.yml")).unwrap();
    for page in config.lines().filter_map(|l| l.trim().strip_prefix("- ")?.split(": ").nth(1)) {
        assert!(targets.contains(&format!("docs/src/{page}").as_str()), "README.md's map lacks docs/src/{page}");
    }
}
