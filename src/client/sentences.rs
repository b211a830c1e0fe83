//! The `--sentences` file: one sentence per line, blank lines skipped, with each sentence's line
//! number kept so that the server's "sentence N" can be told as a place in the file.
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
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let (lines, sentences) = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| (i + 1, l.trim_end().to_string()))
            .unzip();
        Ok(Self { path: path.to_path_buf(), sentences, lines })
    }

    /// Prefixes `path:line:` to an error that names one of our sentences ("sentence N (…): …").
    pub fn locate(&self, error: anyhow::Error) -> anyhow::Error {
        match sentence_index(&format!("{error:#}")).and_then(|i| self.lines.get(i)) {
            Some(line) => error.context(format!("{}:{line}", self.path.display())),
            None => error,
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
            format!(r#"{}:5: server answered InvalidArgument: sentence 1 ("She met her."): x"#, path.display())
        );
        let unrelated = file.locate(anyhow::anyhow!("no sentence here"));
        assert_eq!(unrelated.to_string(), "no sentence here");
    }

    #[test]
    fn the_index_is_read_from_the_servers_message() {
        assert_eq!(sentence_index(r#"x: sentence 12 ("a sentence 3 (b)"): y"#), Some(12));
        assert_eq!(sentence_index("sentences: no sentences given"), None);
        assert_eq!(sentence_index("sentence 4: old form"), None);
    }
}
