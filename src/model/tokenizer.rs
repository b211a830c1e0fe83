//! The model's tokenizer through the `tokenizers` crate (no network features: the file ships with
//! the model): byte-level BPE (GPT-2, GPT-NeoX, OPT, Qwen) or SentencePiece-style with `▁` word
//! markers (Llama, Mistral, Gemma), with the BOS token where the tokenizer adds one.
use std::path::Path;

use super::{Manifest, ModelError};

/// One text's tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokenized {
    pub ids: Vec<u32>,
    pub tokens: Vec<String>,
    /// Byte offsets `[start, end)` into the UTF-8 text.
    pub offsets: Vec<(usize, usize)>,
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The BOS token the post-processor puts before every text, where model.json says it does.
    bos: Option<u32>,
}

/// The word before a target word when it is tokenized as inside a sentence ([`Tokenizer::encode_word`]).
const PROBE: &str = "a";

impl Tokenizer {
    /// A tokenizer that adds no special tokens (GPT-2's); see [`Tokenizer::with_special_tokens`].
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(Self { inner, bos: None })
    }

    /// Adds the special tokens model.json says the tokenizer adds (`adds_bos`), after checking that
    /// the tokenizer's post-processor adds exactly those: one BOS token before the text, or nothing.
    /// A disagreement is an error at load, never a silent change of every position.
    pub fn with_special_tokens(mut self, manifest: &Manifest) -> Result<Self, ModelError> {
        let plain = self.encode_with(PROBE, false)?.ids;
        let full = self.encode_with(PROBE, true)?.ids;
        let added = match full.strip_suffix(plain.as_slice()) {
            Some([]) => None,
            Some(&[bos]) => Some(bos),
            _ => {
                return Err(ModelError::Tokenizer(format!(
                    "the tokenizer's post-processor turns {plain:?} into {full:?}; only one BOS token before the \
                     text is supported"
                )))
            }
        };
        if added != manifest.added_bos() {
            let says = match manifest.added_bos() {
                Some(bos) => format!("adds_bos with bos_token_id {bos}"),
                None => "no BOS token added (adds_bos false or absent)".into(),
            };
            let does = added.map_or("adds none".into(), |bos| format!("puts token {bos} before every text"));
            return Err(ModelError::Tokenizer(format!(
                "model.json says {says}, but tokenizer.json's post-processor {does}; re-export the model"
            )));
        }
        self.bos = added;
        Ok(self)
    }

    /// Vocabulary size including added tokens (50257 for GPT-2).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The BOS token put before every text, if the tokenizer adds one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// Tokenizes a sentence as the model sees it, as Hugging Face's tokenizer does by default: with
    /// the BOS token first where the tokenizer adds one (then at offsets `(0, 0)`), nothing else.
    pub fn encode(&self, text: &str) -> Result<Tokenized, ModelError> {
        self.encode_with(text, self.bos.is_some())
    }

    fn encode_with(&self, text: &str, special: bool) -> Result<Tokenized, ModelError> {
        let enc = self.inner.encode(text, special).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(Tokenized {
            ids: enc.get_ids().to_vec(),
            tokens: enc.get_tokens().to_vec(),
            offsets: enc.get_offsets().to_vec(),
        })
    }

    /// The tokens of `word` as it occurs in a sentence, without special tokens. With leading
    /// whitespace (" her") it is a word inside a sentence, tokenized after a probe word: byte-level
    /// BPE keeps the space (`Ġher`), SentencePiece makes it the word marker (`▁her`), whatever the
    /// tokenizer does at the start of a text. Without (`"her"`) it is tokenized as at the start of
    /// a sentence: `▁her` again for SentencePiece, `her` for byte-level BPE.
    pub fn encode_word(&self, word: &str) -> Result<Tokenized, ModelError> {
        if !word.starts_with(char::is_whitespace) {
            return self.encode_with(word, false);
        }
        let probe = self.encode_with(PROBE, false)?;
        let mut both = self.encode_with(&format!("{PROBE}{word}"), false)?;
        let k = probe.ids.len();
        // The word's tokens are those after the probe's, if the probe tokenized alike and none straddles.
        let separate = both.ids.len() > k
            && both.ids[..k] == probe.ids[..]
            && both.offsets[k..].iter().all(|&(start, _)| start >= PROBE.len());
        if !separate {
            return self.encode_with(word, false);
        }
        let shift = |(s, e): (usize, usize)| (s - PROBE.len(), e - PROBE.len());
        Ok(Tokenized {
            ids: both.ids.split_off(k),
            tokens: both.tokens.split_off(k),
            offsets: both.offsets.split_off(k).into_iter().map(shift).collect(),
        })
    }

    /// The id of a word that is one token in a sentence ([`Tokenizer::encode_word`]), or of a token
    /// named by its own string (`"▁her"`, `"Ġher"`); `Err` holds the word's tokens otherwise.
    pub fn word_id(&self, word: &str) -> Result<Result<u32, Tokenized>, ModelError> {
        let tokens = self.encode_word(word)?;
        Ok(match (tokens.ids.as_slice(), self.inner.token_to_id(word)) {
            ([id], _) => Ok(*id),
            (_, Some(id)) => Ok(id),
            _ => Err(tokens),
        })
    }

    /// The text of token ids (GPT-2's byte-level `Ġ` and SentencePiece's `▁` back to a space).
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.inner.decode(ids, false).map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// The token string of an id, if it is in the vocabulary.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
}

/// A SentencePiece-style tokenizer for tests: Metaspace `▁` word markers, BOS (id 1) added by its
/// post-processor; its vocabulary is [`tests::WORDS`] after `<unk>`, `<s>`, `</s>`.
#[cfg(test)]
pub(crate) fn metaspace_fixture() -> Tokenizer {
    tests::metaspace()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::str::FromStr;

    use super::*;

    /// Words, each one vocabulary entry; ids 0..=2 are <unk>, <s>, </s>.
    pub const WORDS: [&str; 9] = ["▁I", "▁saw", "▁her", "▁Her", "▁dog", "▁a", "her", "▁", "a"];

    /// A SentencePiece-style tokenizer as Llama's: `▁` word markers (Metaspace), BOS before every text.
    fn sentencepiece(pre_tokenizer: &str, normalizer: &str) -> Tokenizer {
        let vocab: serde_json::Map<String, serde_json::Value> =
            ["<unk>", "<s>", "</s>"].iter().chain(&WORDS).enumerate().map(|(i, w)| (w.to_string(), i.into())).collect();
        let special = |id: u32, content: &str| {
            serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                               "normalized": false, "special": true})
        };
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
            "normalizer": serde_json::from_str::<serde_json::Value>(normalizer).unwrap(),
            "pre_tokenizer": serde_json::from_str::<serde_json::Value>(pre_tokenizer).unwrap(),
            "post_processor": {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
            "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true},
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
        });
        Tokenizer { inner: tokenizers::Tokenizer::from_str(&json.to_string()).unwrap(), bos: None }
    }

    /// The Metaspace pre-tokenizer (tokenizers ≥ 0.19, SentencePiece-converted tokenizers).
    pub fn metaspace() -> Tokenizer {
        let pre = r#"{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true}"#;
        sentencepiece(pre, "null")
    }

    /// Older Llama tokenizer.json files: a normalizer prepends `▁` and turns spaces into `▁`.
    fn legacy() -> Tokenizer {
        let normalizer = r#"{"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}"#;
        let split = r#"{"type": "Split", "pattern": {"String": "▁"}, "behavior": "MergedWithNext", "invert": false}"#;
        sentencepiece(split, normalizer)
    }

    fn manifest(bos: Option<u32>, adds_bos: bool) -> Manifest {
        serde_json::from_value(serde_json::json!({"format_version": 1, "name": "m", "num_layers": 1, "hidden_size": 2,
            "vocab_size": 12, "max_positions": 8, "pad_token_id": 2, "eos_token_id": 2, "bos_token_id": bos,
            "adds_bos": adds_bos, "inputs": ["input_ids", "attention_mask"],
            "outputs": ["hidden_state_0", "hidden_state_1"], "dtype": "float32"}))
        .unwrap()
    }

    fn id(word: &str) -> u32 {
        3 + WORDS.iter().position(|w| *w == word).unwrap() as u32
    }

    #[test]
    fn sentencepiece_words_are_found_with_or_without_their_space() {
        for tok in [metaspace(), legacy()] {
            let her = id("▁her");
            // " her" (GPT-2's habit), "her" (a sentence's first word) and the token's own string.
            for word in [" her", "her", "▁her"] {
                assert_eq!(tok.word_id(word).unwrap(), Ok(her), "{word:?}");
            }
            assert_eq!(tok.word_id(" Her").unwrap(), Ok(id("▁Her")));
            let words = tok.encode_word(" her dog").unwrap();
            assert_eq!(words.ids, [her, id("▁dog")]);
            assert_eq!(words.offsets, [(0, 4), (4, 8)]);
            // Both the sentence-initial and the inner "her" are ▁her.
            assert_eq!(tok.encode("her saw her").unwrap().ids, [her, id("▁saw"), her]);
        }
    }

    #[test]
    fn byte_level_words_keep_gpt2_spelling() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/gpt2-tiny-random/tokenizer.json");
        let tok = Tokenizer::from_file(&dir).unwrap();
        assert_eq!(tok.word_id(" her").unwrap(), Ok(607));
        assert_eq!(tok.word_id("Ġher").unwrap(), Ok(607));
        let initial = tok.word_id("her").unwrap().unwrap();
        assert_ne!(initial, 607);
        assert_eq!(tok.encode("her").unwrap().ids, [initial]);
        let several = tok.word_id(" Nakamura").unwrap().unwrap_err();
        assert_eq!(several.ids, tok.encode(" Nakamura").unwrap().ids);
        assert_eq!(tok.encode_word("  her").unwrap().ids, tok.encode("  her").unwrap().ids);
        // GPT-2's tokenizer adds nothing, and model.json must not say it does.
        let tok = tok.with_special_tokens(&manifest(Some(2), false)).unwrap();
        assert_eq!(tok.bos(), None);
    }

    #[test]
    fn the_bos_token_is_added_where_model_json_says_and_checked_against_the_tokenizer() {
        let tok = metaspace().with_special_tokens(&manifest(Some(1), true)).unwrap();
        assert_eq!(tok.bos(), Some(1));
        let t = tok.encode("I saw her").unwrap();
        assert_eq!(t.ids, [1, id("▁I"), id("▁saw"), id("▁her")]);
        assert_eq!(t.offsets[0], (0, 0));
        // Target words never include it.
        assert_eq!(tok.word_id(" her").unwrap(), Ok(id("▁her")));
        let undeclared = metaspace().with_special_tokens(&manifest(Some(1), false)).err().unwrap().to_string();
        assert!(undeclared.contains("puts token 1 before every text"), "{undeclared}");
        let wrong = metaspace().with_special_tokens(&manifest(Some(2), true)).err().unwrap().to_string();
        assert!(wrong.contains("bos_token_id 2"), "{wrong}");
    }
}
