//! `analyze --marked`: sentences that mark their target as `[[word]]` (and optionally the
//! non-target as `{{word}}`). The marks are removed; what they enclosed becomes a character span
//! (Unicode scalar values, as the API counts them) of the unmarked sentence.

use crate::engine::quote;

/// The sentences without marks, each one's target span, and each one's non-target span if every
/// sentence marks one (none may mark one when others do not).
pub struct Marked {
    pub sentences: Vec<String>,
    pub targets: Vec<(u32, u32)>,
    pub non_targets: Option<Vec<(u32, u32)>>,
}

/// Reads the marks of every sentence; errors name the sentence as the server does
/// (`sentence N ("…"): …`), so the CLI can point at its line.
/// `first_index` is the corpus index of `sentences[0]`.
pub fn unmark(sentences: &[String], first_index: usize) -> anyhow::Result<Marked> {
    let mut out = Marked { sentences: Vec::new(), targets: Vec::new(), non_targets: Some(Vec::new()) };
    for (i, marked) in sentences.iter().enumerate() {
        let fail = |why: &str| anyhow::anyhow!("sentence {} ({}): {why}", first_index + i, quote(marked));
        let (text, target, non_target) = unmark_one(marked).map_err(|why| fail(&why))?;
        let target = target.ok_or_else(|| fail("no [[target]] mark"))?;
        match (&mut out.non_targets, non_target) {
            (Some(spans), Some(span)) if spans.len() == i => spans.push(span),
            (Some(spans), None) if spans.is_empty() => out.non_targets = None,
            (None, None) => {}
            _ => return Err(fail("some sentences mark a {{non-target}} and others do not: mark all or none")),
        }
        out.sentences.push(text);
        out.targets.push(target);
    }
    Ok(out)
}

/// One sentence: its text without marks, the `[[…]]` span and the `{{…}}` span.
type Unmarked = (String, Option<(u32, u32)>, Option<(u32, u32)>);

fn unmark_one(marked: &str) -> Result<Unmarked, String> {
    let (mut text, mut chars) = (String::new(), 0u32);
    let (mut target, mut non_target) = (Open::None, Open::None);
    let mut rest = marked;
    while let Some(c) = rest.chars().next() {
        let mark = ["[[", "]]", "{{", "}}"].into_iter().find(|m| rest.starts_with(m));
        match mark {
            Some("[[") => target.open(chars, "[[")?,
            Some("]]") => target.close(chars, "]]")?,
            Some("{{") => non_target.open(chars, "{{")?,
            Some("}}") => non_target.close(chars, "}}")?,
            _ => {
                text.push(c);
                chars += 1;
            }
        }
        rest = &rest[mark.map_or(c.len_utf8(), str::len)..];
    }
    Ok((text, target.span()?, non_target.span()?))
}

/// A mark pair as it is read: not seen, opened at a character, or closed.
#[derive(Clone, Copy)]
enum Open {
    None,
    At(u32),
    Span(u32, u32),
}

impl Open {
    fn open(&mut self, at: u32, mark: &str) -> Result<(), String> {
        if !matches!(self, Open::None) {
            return Err(format!("a second {mark}"));
        }
        *self = Open::At(at);
        Ok(())
    }

    fn close(&mut self, at: u32, mark: &str) -> Result<(), String> {
        *self = match *self {
            Open::At(start) if start < at => Open::Span(start, at),
            Open::At(_) => return Err(format!("nothing between the marks before {mark}")),
            _ => return Err(format!("{mark} without its opening mark")),
        };
        Ok(())
    }

    fn span(self) -> Result<Option<(u32, u32)>, String> {
        match self {
            Open::None => Ok(None),
            Open::At(_) => Err("a mark is not closed".into()),
            Open::Span(start, end) => Ok(Some((start, end))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn marks_become_character_spans() {
        let m = unmark(&strings(&["[[Her]] mother saw her.", "Zoë told [[her]] twice."]), 0).unwrap();
        assert_eq!(m.sentences, ["Her mother saw her.", "Zoë told her twice."]);
        assert_eq!(m.targets, [(0, 3), (9, 12)]);
        assert!(m.non_targets.is_none());
        let m = unmark(&strings(&["{{Zoë}} saw [[her]].", "I {{met}} [[ her]]."]), 0).unwrap();
        assert_eq!(m.sentences, ["Zoë saw her.", "I met  her."]);
        assert_eq!((m.targets, m.non_targets), (vec![(8, 11), (6, 10)], Some(vec![(0, 3), (2, 5)])));
    }

    #[test]
    fn bad_marks_name_the_sentence() {
        let err = |s: &[&str]| unmark(&strings(s), 0).err().unwrap().to_string();
        assert_eq!(err(&["I saw [[her]].", "No mark."]), r#"sentence 1 ("No mark."): no [[target]] mark"#);
        assert!(err(&["I saw [[her."]).contains("not closed"));
        assert!(err(&["I saw her]]."]).contains("]] without its opening mark"));
        assert!(err(&["[[I]] saw [[her]]."]).contains("a second [["));
        assert!(err(&["I saw [[]]her."]).contains("nothing between"));
        assert!(err(&["{{I}} saw [[her]].", "I saw [[her]]."]).contains("mark all or none"));
        assert!(err(&["I saw [[her]].", "{{I}} saw [[her]]."]).contains("mark all or none"));
    }
}
