//! `--skip-invalid`: the sentences the server left out, as `skipped.csv` (one line each: corpus
//! index, line in the file, reason code, reason, the sentence) and a one-line summary. The same
//! file whether one server analysed the corpus or several replicas shared it.
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use crate::error::thousands;
use crate::proto;

/// One skipped sentence, placed in the sentences file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub index: u32,
    /// 1-based line in the sentences file (0 when unknown).
    pub line: usize,
    pub reason: String,
    pub message: String,
    pub text: String,
}

/// The server's reports, in corpus order, with each sentence's line and text.
pub fn place(
    reports: &[proto::SkippedSentence],
    line_of: impl Fn(usize) -> Option<usize>,
    text_of: impl Fn(usize) -> Option<String>,
) -> Vec<Skipped> {
    let mut out: Vec<Skipped> = reports
        .iter()
        .map(|s| Skipped {
            index: s.index,
            line: line_of(s.index as usize).unwrap_or(0),
            reason: s.reason.clone(),
            message: s.message.clone(),
            text: text_of(s.index as usize).unwrap_or_default(),
        })
        .collect();
    out.sort_by_key(|s| s.index);
    out
}

/// `sentence,line,reason,message,text`, fields quoted as CSV needs.
pub fn csv(skipped: &[Skipped]) -> String {
    let mut out = String::from("sentence,line,reason,message,text\n");
    for s in skipped {
        let _ = writeln!(out, "{},{},{},{},{}", s.index, s.line, s.reason, field(&s.message), field(&s.text));
    }
    out
}

pub fn write(dir: &Path, skipped: &[Skipped]) -> anyhow::Result<()> {
    let path = dir.join("skipped.csv");
    std::fs::write(&path, csv(skipped)).with_context(|| format!("cannot write {}", path.display()))
}

/// "analysed 99,812 of 100,000 sentences; 188 skipped (see skipped.csv)".
pub fn summary(total: usize, skipped: usize) -> String {
    let analysed = total - skipped;
    match skipped {
        0 => format!("analysed all {} sentences; none skipped", thousands(total)),
        _ => format!(
            "analysed {} of {} sentences; {} skipped (see skipped.csv)",
            thousands(analysed),
            thousands(total),
            thousands(skipped)
        ),
    }
}

/// With `--skip-invalid`, fewer than two sentences left is an error that says why.
pub fn ensure_enough(total: usize, skipped: &[Skipped]) -> anyhow::Result<()> {
    let left = total - skipped.len();
    if skipped.is_empty() || left >= 2 {
        return Ok(());
    }
    let first: Vec<String> = skipped.iter().take(5).map(|s| format!("line {}: {}", s.line, s.message)).collect();
    anyhow::bail!(
        "only {left} of {total} sentences left after skipping {} invalid ones; the t-test needs at least 2 (first: {})",
        skipped.len(),
        first.join("; ")
    )
}

/// A CSV field: quoted when it holds a comma, a quote or a line break.
fn field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_it_and_summary_counts() {
        let s =
            Skipped { index: 3, line: 5, reason: "TOO_LONG".into(), message: "a, b".into(), text: "say \"hi\"".into() };
        assert_eq!(csv(&[s]), "sentence,line,reason,message,text\n3,5,TOO_LONG,\"a, b\",\"say \"\"hi\"\"\"\n");
        assert_eq!(summary(100_000, 188), "analysed 99,812 of 100,000 sentences; 188 skipped (see skipped.csv)");
    }
}
