//! `rotations compare --group A=FILE --group B=FILE`: two labelled groups of sentences, Welch's
//! t-test per layer between their angles of one condition; a table, CSV, JSON and a figure.
//!
//! On one server the comparison is one `CompareGroups`. With several servers (or a group above
//! `--stream-above`), each group is computed as `analyze` computes a corpus (streamed, or sharded
//! over the replicas), and a server tests the groups' merged exact statistics (`TestSignificance`
//! with `group_a`/`group_b`): the same numbers as `CompareGroups`, bit for bit.
use std::fmt::Write as _;
use std::path::Path;

use std::io::Write as _;

use anyhow::Context;

use super::report::{correction_name, direction_name, write_csv, Report, ANGLES_HEADER};
use super::sentences::SentenceFile;
use super::{cluster, connect, connect_to, output, rotation_request, with_retry};
use crate::config::{AnalyzeArgs, ClientArgs, CompareArgs, ConditionArg};
use crate::proto;

/// The files `compare` writes.
pub const FILES: [&str; 4] = ["group_angles.csv", "group_tests.csv", "groups.json", "groups.svg"];

pub async fn compare(args: CompareArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.analysis.sentences.is_none(), "compare takes --group LABEL=FILE twice, not --sentences");
    anyhow::ensure!(args.analysis.angles_out.is_none(), "compare writes no angle file: leave out --angles-out");
    anyhow::ensure!(
        args.groups.len() == 2,
        "give exactly two groups (--group LABEL=FILE twice), got {}",
        args.groups.len()
    );
    let (labels, files) = read_groups(&args)?;
    let requests: Vec<proto::RotationRequest> =
        files.iter().map(|f| rotation_request(&args.analysis, f.sentences.clone())).collect::<Result<_, _>>()?;
    let out = &args.analysis.out;
    let created = output::prepare_for(out, args.analysis.overwrite, &FILES)?;
    let comparison = match compute(&args, &labels, requests).await {
        Ok(comparison) => comparison,
        Err(e) => {
            if created {
                let _ = std::fs::remove_dir(out); // only if still empty
            }
            return Err(locate(&files, e));
        }
    };
    let mut report = GroupReport::new(&comparison, &files)?;
    for group in &mut report.groups {
        group.target = super::target_label(&args.analysis);
    }
    report.write_all(out)?;
    let mut stdout = std::io::stdout().lock();
    write!(stdout, "{}", report.table())?;
    writeln!(stdout, "\nwrote {}/{{{}}}", out.display(), FILES.join(", "))?;
    Ok(())
}

/// The groups' labels and sentence files; each group needs two sentences for a variance.
fn read_groups(args: &CompareArgs) -> anyhow::Result<(Vec<String>, Vec<SentenceFile>)> {
    let mut out = (Vec::new(), Vec::new());
    for (label, path) in &args.groups {
        let file = SentenceFile::read(path)?;
        anyhow::ensure!(
            file.sentences.len() >= 2,
            "group {label:?} ({}) has {} sentence(s); a two-group test needs at least 2 in each group",
            path.display(),
            file.sentences.len()
        );
        out.0.push(label.clone());
        out.1.push(file);
    }
    anyhow::ensure!(out.0[0] != out.0[1], "the two groups are both labelled {:?}; labels must differ", out.0[0]);
    Ok(out)
}

/// A server's error about a sentence of one group ("groups[1] (…): sentence 3 (…)") told as FILE:LINE.
fn locate(files: &[SentenceFile], e: anyhow::Error) -> anyhow::Error {
    if let Some(invalid) = e.downcast_ref::<super::sentences::InvalidSentences>() {
        // One list, each group's sentences at their lines of that group's file.
        let group_of = |g: Option<usize>| g.unwrap_or(0).min(files.len() - 1);
        let mut out = format!("{}:", invalid.header);
        for (group, index, _, reason) in &invalid.sentences {
            let file = &files[group_of(*group)];
            let line = file.lines.get(*index).map_or_else(|| format!("sentence {index}"), |l| l.to_string());
            out.push_str(&format!("\n{}:{line}: {reason}", file.path.display()));
        }
        return anyhow::anyhow!("{out}");
    }
    let message = format!("{e:#}");
    match (0..files.len()).find(|i| message.contains(&format!("groups[{i}]"))) {
        Some(i) => files[i].locate(e),
        None => e,
    }
}

/// The group test's options: the condition, and the alpha, correction and family size `analyze` uses.
fn group_options(condition: ConditionArg, request: &proto::RotationRequest) -> proto::GroupTestOptions {
    let paired = request.significance.unwrap_or_default();
    let condition = match condition {
        ConditionArg::Target => 0,
        ConditionArg::NonTarget => 1,
        ConditionArg::Shuffled => 2,
    };
    proto::GroupTestOptions {
        condition: Some(condition),
        alpha: paired.alpha,
        correction: paired.correction,
        num_tests: paired.num_tests,
    }
}

async fn compute(
    args: &CompareArgs,
    labels: &[String],
    requests: Vec<proto::RotationRequest>,
) -> anyhow::Result<proto::GroupComparison> {
    let options = group_options(args.condition, &requests[0]);
    let analysis_args = &args.analysis;
    let sharded = super::over_replicas(&analysis_args.client);
    let small = requests.iter().all(|r| r.sentences.len() <= analysis_args.stream_above);
    if !sharded && small {
        let groups = labels
            .iter()
            .zip(requests)
            .map(|(label, request)| proto::Group { label: label.clone(), request: Some(request) })
            .collect();
        let request = proto::GroupComparisonRequest { groups, options: Some(options) };
        let client = connect(&analysis_args.client).await?;
        return with_retry(&client, request, |mut c, r| async move { c.compare_groups(r).await }).await;
    }
    let mut groups = Vec::new();
    for (i, (label, request)) in labels.iter().zip(requests).enumerate() {
        let path = &args.groups[i].1;
        let analysis = group_analysis(analysis_args, request, path, sharded)
            .await
            .with_context(|| format!("groups[{i}] ({label:?})"))?;
        groups.push(proto::GroupAnalysis { label: label.clone(), analysis: Some(analysis) });
    }
    let condition = options.condition.unwrap_or(0) as usize;
    let statistics = |g: &proto::GroupAnalysis| {
        let of_condition = g.analysis.as_ref().and_then(|a| a.condition_statistics.get(condition));
        of_condition.map(|c| c.layers.clone()).context("the server returned no angle statistics (an older server?)")
    };
    let ask = proto::SignificanceRequest {
        group_a: statistics(&groups[0])?,
        group_b: statistics(&groups[1])?,
        group_options: Some(options),
        ..Default::default()
    };
    let tests = ask_any_server(&analysis_args.client, ask).await?.group_tests;
    Ok(proto::GroupComparison { groups, tests: Some(tests.context("the server answered without group tests")?) })
}

/// One group's analysis: over the replicas with its file read in chunks (as `analyze` does), else
/// from one server.
async fn group_analysis(
    args: &AnalyzeArgs,
    mut request: proto::RotationRequest,
    path: &Path,
    sharded: bool,
) -> anyhow::Result<proto::Analysis> {
    if !sharded {
        let n = request.sentences.len();
        return super::compute(args, request, n).await;
    }
    request.sentences.clear(); // the replicas' chunks are cut from the file
    let interval = std::time::Duration::from_secs_f64(args.resolve_interval);
    let replicas = cluster::Replicas::from_servers(&args.client.server, interval);
    let corpus = cluster::CorpusFile { path, marked: args.select.marked };
    Ok(cluster::analyze(replicas, &args.client.connect, request, corpus, super::chunking(args), None).await?.analysis)
}

/// TestSignificance on the first server (or replica) that answers.
async fn ask_any_server(
    args: &ClientArgs,
    ask: proto::SignificanceRequest,
) -> anyhow::Result<proto::SignificanceResult> {
    let mut failure = anyhow::anyhow!("no server to ask for the group tests");
    for address in cluster::resolve(&args.server)? {
        let answer = async {
            let client = connect_to(&address, &args.connect).await?;
            with_retry(&client, ask.clone(), |mut c, r| async move { c.test_significance(r).await }).await
        };
        match answer.await {
            Ok(result) => return Ok(result),
            Err(e) => failure = e,
        }
    }
    Err(failure)
}

/// A `GroupComparison` unpacked for printing and plotting.
pub struct GroupReport {
    pub labels: [String; 2],
    /// Each group's analysis, as `analyze` reports it.
    pub groups: [Report; 2],
    pub tests: proto::GroupTests,
}

impl GroupReport {
    pub fn new(comparison: &proto::GroupComparison, files: &[SentenceFile]) -> anyhow::Result<Self> {
        let [a, b] = &comparison.groups[..] else {
            anyhow::bail!("the answer holds {} groups, not 2", comparison.groups.len());
        };
        let report = |g: &proto::GroupAnalysis, file: &SentenceFile| {
            let analysis = g.analysis.as_ref().context("a group without its analysis")?;
            Report::new(analysis, &file.sentences).with_context(|| format!("group {:?}", g.label))
        };
        let tests = comparison.tests.clone().context("the answer holds no group tests")?;
        let groups = [report(a, &files[0])?, report(b, &files[1])?];
        anyhow::ensure!(tests.layers.len() == groups[0].num_layers, "one group test per layer expected");
        Ok(Self { labels: [a.label.clone(), b.label.clone()], groups, tests })
    }

    /// The compared condition's name ("target").
    pub fn condition(&self) -> &str {
        self.groups[0].conditions.get(self.tests.condition as usize).map_or("?", String::as_str)
    }

    pub fn unit(&self) -> &str {
        self.groups[0].unit
    }

    /// "Holm over 6 tests, α = 0.05".
    pub fn rule(&self) -> String {
        let t = &self.tests;
        let over = match correction_name(t.correction) {
            "none" => "no correction".to_string(),
            "benjamini-hochberg" => format!("Benjamini–Hochberg over {} tests", t.num_tests),
            "holm" => format!("Holm over {} tests", t.num_tests),
            _ => format!("Bonferroni over {} tests", t.num_tests),
        };
        format!("{over}, α = {}", t.alpha)
    }

    /// The per-layer table: each group's mean, the difference with its CI, Welch's test, Hedges' g.
    pub fn table(&self) -> String {
        let [a, b] = &self.labels;
        let w = a.chars().count().max(b.chars().count()).max(8);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{a}: {} sentences, {b}: {} sentences; {} layers; mean {} angle to the previous layer in {}",
            self.groups[0].num_sentences,
            self.groups[1].num_sentences,
            self.tests.layers.len(),
            self.condition(),
            self.unit()
        );
        let _ = writeln!(out, "Welch's t-test per layer, {a} − {b} ({})", self.rule());
        let _ = writeln!(
            out,
            "{:>5} {a:>w$} {b:>w$} {:>29} {:>8} {:>6} {:>10} {:>10} {:>25}  significant",
            "layer", "difference [95% CI]", "t", "df", "p", "p_adj", "Hedges' g [95% CI]"
        );
        for t in &self.tests.layers {
            let difference = format!("{:.4} [{:.4}, {:.4}]", t.mean_difference, t.ci_low, t.ci_high);
            let g = format!("{:.3} [{:.3}, {:.3}]", t.hedges_g, t.g_ci_low, t.g_ci_high);
            let _ = writeln!(
                out,
                "{:>5} {:>w$.4} {:>w$.4} {difference:>29} {:>8.3} {:>6.1} {:>10.3e} {:>10.3e} {g:>25}  {}",
                t.layer,
                t.mean_a,
                t.mean_b,
                t.t,
                t.df,
                t.p,
                t.p_adjusted,
                self.verdict(t)
            );
        }
        out
    }

    fn verdict(&self, t: &proto::GroupLayerTest) -> String {
        let [a, b] = &self.labels;
        let flag = match proto::GroupFlag::try_from(t.flag) {
            Ok(proto::GroupFlag::ZeroVariance) => " (zero variance)",
            Ok(proto::GroupFlag::TooFewSentences) => " (too few sentences)",
            _ => "",
        };
        match proto::Direction::try_from(t.direction) {
            Ok(proto::Direction::AGreater) => format!("yes: {a} > {b}"),
            Ok(proto::Direction::BGreater) => format!("yes: {b} > {a}"),
            _ => format!("no{flag}"),
        }
    }

    fn tests_csv(&self) -> String {
        let mut out = String::from(
            "layer,n_a,n_b,mean_a,mean_b,sd_a,sd_b,mean_difference,ci_low,ci_high,t,df,p,p_adjusted,hedges_g,\
             g_ci_low,g_ci_high,significant,direction,flag\n",
        );
        for t in &self.tests.layers {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                t.layer,
                t.n_a,
                t.n_b,
                t.mean_a,
                t.mean_b,
                t.sd_a,
                t.sd_b,
                t.mean_difference,
                t.ci_low,
                t.ci_high,
                t.t,
                t.df,
                t.p,
                t.p_adjusted,
                t.hedges_g,
                t.g_ci_low,
                t.g_ci_high,
                t.significant,
                direction_name(t.direction),
                flag_name(t.flag)
            );
        }
        out
    }

    fn json(&self) -> serde_json::Value {
        let t = &self.tests;
        serde_json::json!({
            "labels": self.labels,
            "condition": self.condition(),
            "unit": self.unit(),
            "groups": self.labels.iter().zip(&self.groups)
                .map(|(label, r)| serde_json::json!({ "label": label, "analysis": r.json() })).collect::<Vec<_>>(),
            "tests": {
                "test": "Welch's t-test (scipy.stats.ttest_ind, equal_var=False), group A − group B",
                "alpha": t.alpha,
                "correction": correction_name(t.correction),
                "threshold": t.threshold,
                "num_tests": t.num_tests,
                "layers": t.layers.iter().map(|l| serde_json::json!({
                    "layer": l.layer, "n_a": l.n_a, "n_b": l.n_b, "mean_a": l.mean_a, "mean_b": l.mean_b,
                    "sd_a": l.sd_a, "sd_b": l.sd_b, "mean_difference": l.mean_difference,
                    "ci_low": l.ci_low, "ci_high": l.ci_high, "t": l.t, "df": l.df, "p": l.p,
                    "p_adjusted": l.p_adjusted, "hedges_g": l.hedges_g, "g_ci_low": l.g_ci_low,
                    "g_ci_high": l.g_ci_high, "significant": l.significant,
                    "direction": direction_name(l.direction), "flag": flag_name(l.flag),
                })).collect::<Vec<_>>(),
            },
        })
    }

    /// Writes [`FILES`] into `dir`.
    pub fn write_all(&self, dir: &Path) -> anyhow::Result<()> {
        let write = |name: &str, body: String| {
            std::fs::write(dir.join(name), body).with_context(|| format!("cannot write {}", dir.join(name).display()))
        };
        let header = format!("group,{ANGLES_HEADER}");
        write_csv(&dir.join("group_angles.csv"), &header, |out| {
            for (label, r) in self.labels.iter().zip(&self.groups) {
                r.write_angles_csv(out, &format!("{},", csv_field(label)))?;
            }
            Ok(())
        })?;
        write("group_tests.csv", self.tests_csv())?;
        write("groups.json", serde_json::to_string_pretty(&self.json())?)?;
        super::group_plot::groups_figure(self, &dir.join("groups.svg"))
    }
}

/// A label as a CSV field: quoted when it holds a comma, a quote or a line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn flag_name(f: i32) -> &'static str {
    match proto::GroupFlag::try_from(f) {
        Ok(proto::GroupFlag::ZeroVariance) => "zero_variance",
        Ok(proto::GroupFlag::TooFewSentences) => "too_few_sentences",
        _ => "",
    }
}
