//! The `--sentences` file: one sentence per line, blank lines skipped, with each sentence's line
//! number kept so that the server's "sentence N" can be told as a place in the file. Read whole
//! ([`SentenceFile`]) for one request, or line by line ([`SentenceLines`]) for a corpus sharded
//! over replicas, which never holds more than the chunks in flight.
use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::Context;

pub struct SentenceFile {
    pub path: PathBuf,
    pub sentences: Vec<String>,
    /// 1-based line number of each sentence, blank lines counted as the file has them.
    pub lines: Vec<usize>,
}

impl SentenceFile {
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let numbered: Vec<(usize, String)> = SentenceLines::open(path)?.collect::<anyhow::Result<_>>()?;
        let (lines, sentences) = numbered.into_iter().unzip();
        Ok(Self { path: path.to_path_buf(), sentences, lines })
    }

    /// Prefixes `path:line:` to an error that names one of our sentences ("sentence N (…): …"), or
    /// lists the server's invalid sentences as `path:line: reason`, one a line.
    pub fn locate(&self, error: anyhow::Error) -> anyhow::Error {
        locate(&self.path, |i| self.lines.get(i).copied(), error)
    }
}

/// Prefixes `path:line (sentence N):` to an error that names a sentence ("sentence N (…): …") whose
/// line `line_of(N)` knows, or lists [`InvalidSentences`] as `path:line: reason` lines; other errors
/// pass unchanged. Both numbers are shown, each named: the
/// line counts from 1 with blank lines, the server's sentence index from 0 without them.
pub fn locate(path: &Path, line_of: impl Fn(usize) -> Option<usize>, error: anyhow::Error) -> anyhow::Error {
    if let Some(invalid) = error.downcast_ref::<InvalidSentences>() {
        return anyhow::anyhow!("{}", invalid.located(path, line_of));
    }
    let index = sentence_index(&format!("{error:#}"));
    match index.and_then(|i| Some((i, line_of(i)?))) {
        Some((index, line)) => error.context(format!("{}:{line} (sentence {index})", path.display())),
        None => error,
    }
}

/// The server's INVALID_ARGUMENT for invalid sentences, read from its `google.rpc.BadRequest`
/// details: each listed sentence's corpus index, reason code and reason, and how many there are.
#[derive(Debug)]
pub struct InvalidSentences {
    /// The message's first line (how many of how many sentences).
    pub header: String,
    /// (group of a CompareGroups request, corpus index, reason code, reason).
    pub sentences: Vec<(Option<usize>, usize, String, String)>,
    /// How many invalid sentences there are in all (the details list the first ones).
    pub total: usize,
}

impl InvalidSentences {
    /// The invalid sentences a status lists in its details; `None` for any other status.
    pub fn from_status(status: &tonic::Status) -> Option<Self> {
        use tonic_types::StatusExt;
        let details = status.get_error_details();
        let info = details.error_info().filter(|i| i.reason == "INVALID_SENTENCES")?;
        let number = |key: &str| info.metadata.get(key).and_then(|v| v.parse::<usize>().ok());
        let (total, first) = (number("invalid")?, number("first_sentence_index").unwrap_or(0));
        let sentences = details.bad_request()?.field_violations.iter().filter_map(|v| {
            let group = bracketed(&v.field, "groups[");
            let position = bracketed(&v.field, "sentences[")?;
            Some((group, first + position, v.reason.clone(), v.description.clone()))
        });
        let sentences: Vec<_> = sentences.collect();
        let header = match status.message().split_once('\n') {
            // The CLI's name for the request option.
            Some((header, _)) => header.trim_end_matches(':').replace("skip_invalid", "--skip-invalid"),
            None => "a sentence is invalid".to_string(),
        };
        Some(Self { header, sentences, total })
    }

    /// `path:line: reason`, one a line, under the header (sentences of another group left out).
    pub fn located(&self, path: &Path, line_of: impl Fn(usize) -> Option<usize>) -> String {
        let mut out = format!("{}:", self.header);
        for (_, index, _, reason) in &self.sentences {
            match line_of(*index) {
                Some(line) => out.push_str(&format!("\n{}:{line}: {reason}", path.display())),
                None => out.push_str(&format!("\n{}: sentence {index}: {reason}", path.display())),
            }
        }
        out.push_str(&self.more());
        out
    }

    /// "and 1,234 more …" when the details list fewer than there are.
    fn more(&self) -> String {
        match self.total.saturating_sub(self.sentences.len()) {
            0 => String::new(),
            more => format!(
                "\nand {} more (--skip-invalid analyses the valid sentences and lists every invalid one in skipped.csv)",
                crate::error::thousands(more)
            ),
        }
    }
}

impl std::fmt::Display for InvalidSentences {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "server answered InvalidArgument: {}:", self.header)?;
        for (group, index, _, reason) in &self.sentences {
            match group {
                Some(g) => write!(f, "\ngroups[{g}] sentence {index}: {reason}")?,
                None => write!(f, "\nsentence {index}: {reason}")?,
            }
        }
        write!(f, "{}", self.more())
    }
}

impl std::error::Error for InvalidSentences {}

/// The number in `key…]` of a field path such as `groups[1].request.sentences[12]`.
fn bracketed(field: &str, key: &str) -> Option<usize> {
    let rest = &field[field.rfind(key)? + key.len()..];
    rest[..rest.find(']')?].parse().ok()
}

/// The sentences of a file one at a time, each with its 1-based line number (blank lines skipped
/// but counted, trailing white space cut).
pub struct SentenceLines {
    path: PathBuf,
    lines: std::io::Lines<std::io::BufReader<std::fs::File>>,
    number: usize,
}

impl SentenceLines {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Self { path: path.to_path_buf(), lines: std::io::BufReader::new(file).lines(), number: 0 })
    }

    /// How many sentences the file holds (one pass, nothing kept).
    pub fn count(path: &Path) -> anyhow::Result<usize> {
        Self::open(path)?.try_fold(0, |n, line| line.map(|_| n + 1))
    }
}

impl Iterator for SentenceLines {
    type Item = anyhow::Result<(usize, String)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.number += 1;
            match self.lines.next()? {
                Ok(line) if line.trim().is_empty() => continue,
                Ok(line) => return Some(Ok((self.number, line.trim_end().to_string()))),
                Err(e) => {
                    return Some(Err(anyhow::anyhow!("cannot read {}:{}: {e}", self.path.display(), self.number)))
                }
            }
        }
    }
}

/// The index N of the server's `sentence N (…): …` message, wherever it appears in `message`.
fn sentence_index(message: &str) -> Option<usize> {
    message.match_indices("sentence ").find_map(|(at, key)| {
        let rest = &message[at + key.len()..];
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        rest[digits..].starts_with(" (").then(|| rest[..digits].parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_lines_are_skipped_but_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.txt");
        std::fs::write(&path, "\nI saw her.  \n\n   \nShe met her.\r\nHer dog.").unwrap();
        let file = SentenceFile::read(&path).unwrap();
        assert_eq!(file.sentences, ["I saw her.", "She met her.", "Her dog."]);
        assert_eq!(file.lines, [2, 5, 6]);
        let located =
            file.locate(anyhow::anyhow!(r#"server answered InvalidArgument: sentence 1 ("She met her."): x"#));
        assert_eq!(
            format!("{located:#}"),
            format!(
                r#"{}:5 (sentence 1): server answered InvalidArgument: sentence 1 ("She met her."): x"#,
                path.display()
            )
        );
        let unrelated = file.locate(anyhow::anyhow!("no sentence here"));
        assert_eq!(unrelated.to_string(), "no sentence here");
        assert_eq!(SentenceLines::count(&path).unwrap(), 3);
        let lazily: Vec<_> = SentenceLines::open(&path).unwrap().map(Result::unwrap).collect();
        assert_eq!(lazily, [(2, "I saw her.".to_string()), (5, "She met her.".into()), (6, "Her dog.".into())]);
    }

    #[test]
    fn a_line_that_is_not_utf8_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.txt");
        std::fs::write(&path, b"I saw her.\n\xff her\n").unwrap();
        let e = SentenceFile::read(&path).err().unwrap();
        assert!(format!("{e:#}").starts_with(&format!("cannot read {}:2: ", path.display())), "{e:#}");
    }

    #[test]
    fn the_index_is_read_from_the_servers_message() {
        assert_eq!(sentence_index(r#"x: sentence 12 ("a sentence 3 (b)"): y"#), Some(12));
        assert_eq!(sentence_index("sentences: no sentences given"), None);
        assert_eq!(sentence_index("sentence 4: old form"), None);
    }
}
