//! Draws for the shuffled control condition.
//!
//! For every layer transition the notebook compared two hidden-state vectors picked at random
//! (random hidden state in `1..n_hiddens`, random token position) as a baseline for "how far
//! apart are two unrelated vectors". It drew positions over the padded length (so padding
//! tokens were sometimes compared) from an unseeded global RNG. Here positions range over the
//! sentence's real tokens only and the draws are a pure function of
//! `(seed, sentence, num_layers, num_tokens)`, reproducible across runs, batch sizes, chunking,
//! streaming and sharding.

use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// The hidden states and token positions compared for one layer of the shuffled condition:
/// the angle is taken between `hidden[layer_v][position_v]` and `hidden[layer_u][position_u]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShuffleDraw {
    /// Hidden-state index of the first vector, in `1..=num_layers` (never the embeddings).
    pub layer_v: u32,
    /// Token position of the first vector, in `0..num_tokens`.
    pub position_v: u32,
    /// Hidden-state index of the second vector, in `1..=num_layers`.
    pub layer_u: u32,
    /// Token position of the second vector, in `0..num_tokens`.
    pub position_u: u32,
}

/// The default seed of the shuffled condition (fixed so that results are reproducible).
pub const DEFAULT_SHUFFLE_SEED: u64 = 20250901;

/// The shuffled condition's draws for sentence number `sentence`: one [`ShuffleDraw`] per
/// layer transition `1..=num_layers` (element `l - 1` is for layer `l`).
///
/// Each layer gets two draws of (hidden state uniform in `1..=num_layers`, as the notebook's
/// `torch.randint(1, n_hiddens)`; position uniform in `0..num_tokens`, real tokens only),
/// generated in the order `layer_v, position_v, layer_u, position_u`. The second pair is redrawn
/// while it equals the first: a vector compared with itself gives an angle of exactly 0 (about
/// 1 draw in 400 at GPT-2 XL's 48 layers and ~10 tokens), which would bias the baseline low; the
/// notebook's `nanmean` hid the NaN its float32 `acos` gave for it. So `(layer_u, position_u)` is
/// uniform over the other `num_layers · num_tokens − 1` vectors. With a single layer and a single
/// token there is no other vector, and that one pair is returned (the analysis never asks for it:
/// a sentence has at least a target and a non-target token).
///
/// The generator is ChaCha20 keyed with `seed`'s 8 little-endian bytes followed by 24 zero
/// bytes (via `from_seed`, not `seed_from_u64`, whose seed expansion is a `rand_core`
/// implementation detail), on stream number `sentence`. A sentence's draws therefore do not
/// depend on any other sentence, nor on how sentences are batched, chunked or sharded.
///
/// # Panics
/// If `num_layers > 0` and `num_tokens == 0` (there is nothing to draw from), or if
/// `num_layers` or `num_tokens` exceeds `u32::MAX`.
pub fn draws_for_sentence(seed: u64, sentence: usize, num_layers: usize, num_tokens: usize) -> Vec<ShuffleDraw> {
    draws_for_row(seed, sentence, 1, num_layers, num_tokens)
}

/// The draws of one row: occurrence number `occurrence` (from 1) of the target in sentence
/// `sentence`, as [`draws_for_sentence`] on ChaCha20 stream `sentence + (occurrence − 1)·2^32`.
///
/// Corpus indices stay below 2^32 (the API refuses more) and occurrences number at most a
/// sentence's tokens, so every row of a corpus has its own stream: its draws depend only on
/// (seed, corpus index, occurrence number), never on how the corpus was split, batched or
/// streamed, nor on the other rows of its sentence. Occurrence 1 is the sentence's stream, so the
/// first occurrence's row (the notebook's) draws what it always drew, and the second occurrence's
/// row is the same whether asked for as `Nth(2)` or within `All`.
///
/// # Panics
/// As [`draws_for_sentence`], and for `occurrence == 0`.
pub fn draws_for_row(
    seed: u64,
    sentence: usize,
    occurrence: usize,
    num_layers: usize,
    num_tokens: usize,
) -> Vec<ShuffleDraw> {
    assert!(occurrence >= 1, "occurrences count from 1");
    let stream = sentence as u64 + ((occurrence as u64 - 1) << 32);
    if num_layers == 0 {
        return Vec::new();
    }
    assert!(num_tokens > 0, "shuffled draws need at least one token");
    let layers = u32::try_from(num_layers).expect("num_layers exceeds u32::MAX");
    let tokens = u32::try_from(num_tokens).expect("num_tokens exceeds u32::MAX");
    let mut rng = rng_for_stream(seed, stream);
    (0..num_layers)
        .map(|_| {
            let v = (1 + below(&mut rng, layers), below(&mut rng, tokens));
            let mut u = (1 + below(&mut rng, layers), below(&mut rng, tokens));
            while u == v && (layers, tokens) != (1, 1) {
                u = (1 + below(&mut rng, layers), below(&mut rng, tokens));
            }
            ShuffleDraw { layer_v: v.0, position_v: v.1, layer_u: u.0, position_u: u.1 }
        })
        .collect()
}

/// [`draws_for_row`] over the tokens after the first `skip` (the BOS token a tokenizer puts
/// before the text, whose vector is no token of the sentence): the draws of a sentence of
/// `num_tokens − skip` tokens, positions shifted by `skip`. So a sentence's control compares the
/// same words with or without a BOS token; with `skip == 0` these are exactly
/// [`draws_for_row`]'s. With no token after the first `skip`, over all tokens.
pub fn draws_after_prefix(
    seed: u64,
    sentence: usize,
    occurrence: usize,
    num_layers: usize,
    num_tokens: usize,
    skip: usize,
) -> Vec<ShuffleDraw> {
    if skip == 0 || num_tokens <= skip {
        return draws_for_row(seed, sentence, occurrence, num_layers, num_tokens);
    }
    let shift = u32::try_from(skip).expect("skip below num_tokens");
    draws_for_row(seed, sentence, occurrence, num_layers, num_tokens - skip)
        .into_iter()
        .map(|d| ShuffleDraw { position_v: d.position_v + shift, position_u: d.position_u + shift, ..d })
        .collect()
}

/// ChaCha20 keyed by the seed's little-endian bytes (rest zero), on stream `stream`.
fn rng_for_stream(seed: u64, stream: u64) -> ChaCha20Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut rng = ChaCha20Rng::from_seed(key);
    rng.set_stream(stream);
    rng
}

/// A uniform integer in `0..n` (`n > 0`) by unbiased rejection sampling on `next_u64`.
///
/// Why not `rand`'s `random_range`: its algorithm (and thus the values drawn for a given seed)
/// is not part of rand's stability promise and has changed between versions; the draws here
/// must stay the same forever for a given seed. Values below `2⁶⁴ mod n` are rejected so that
/// the remaining range is a multiple of `n` and `x % n` is exactly uniform.
fn below(rng: &mut ChaCha20Rng, n: u32) -> u32 {
    debug_assert!(n > 0);
    let n = u64::from(n);
    let reject_below = n.wrapping_neg() % n; // = 2^64 mod n
    loop {
        let x = rng.next_u64();
        if x >= reject_below {
            return (x % n) as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_after_a_bos_token_never_draw_it() {
        for (layers, tokens) in [(4, 2), (12, 9), (3, 40)] {
            for sentence in 0..20 {
                let text = draws_for_sentence(7, sentence, layers, tokens - 1);
                let after = draws_after_prefix(7, sentence, 1, layers, tokens, 1);
                for (t, a) in text.iter().zip(&after) {
                    assert!(a.position_v >= 1 && a.position_u >= 1);
                    assert_eq!((a.layer_v, a.layer_u), (t.layer_v, t.layer_u));
                    assert_eq!((a.position_v, a.position_u), (t.position_v + 1, t.position_u + 1));
                }
            }
        }
        // No prefix: the very draws of draws_for_sentence; nothing after the prefix: over all tokens.
        assert_eq!(draws_after_prefix(7, 3, 1, 5, 6, 0), draws_for_sentence(7, 3, 5, 6));
        assert_eq!(draws_after_prefix(7, 3, 1, 5, 1, 1), draws_for_sentence(7, 3, 5, 1));
    }

    #[test]
    fn ranges_and_length() {
        for (layers, tokens) in [(1, 1), (48, 7), (12, 2), (3, 40)] {
            for sentence in 0..20 {
                let draws = draws_for_sentence(DEFAULT_SHUFFLE_SEED, sentence, layers, tokens);
                assert_eq!(draws.len(), layers);
                for d in draws {
                    for l in [d.layer_v, d.layer_u] {
                        assert!((1..=layers as u32).contains(&l));
                    }
                    for p in [d.position_v, d.position_u] {
                        assert!(p < tokens as u32);
                    }
                }
            }
        }
        assert!(draws_for_sentence(1, 0, 0, 0).is_empty());
        assert!(draws_for_sentence(1, 0, 1, 1)
            .iter()
            .all(|d| d == &ShuffleDraw { layer_v: 1, position_v: 0, layer_u: 1, position_u: 0 }));
    }

    #[test]
    #[should_panic(expected = "at least one token")]
    fn no_tokens_panics() {
        draws_for_sentence(1, 0, 3, 0);
    }

    #[test]
    fn deterministic_and_independent_of_other_sentences() {
        let alone = draws_for_sentence(DEFAULT_SHUFFLE_SEED, 17, 48, 9);
        // Interleave other sentences (as another batching/sharding would) and recompute.
        for s in (0..40).rev() {
            let _ = draws_for_sentence(DEFAULT_SHUFFLE_SEED, s, 48, 9);
        }
        assert_eq!(draws_for_sentence(DEFAULT_SHUFFLE_SEED, 17, 48, 9), alone);
        // Different sentences and different seeds give different draws.
        assert_ne!(draws_for_sentence(DEFAULT_SHUFFLE_SEED, 18, 48, 9), alone);
        assert_ne!(draws_for_sentence(DEFAULT_SHUFFLE_SEED + 1, 17, 48, 9), alone);
        // The seed's bytes all matter (not only the low ones).
        assert_ne!(draws_for_sentence(DEFAULT_SHUFFLE_SEED | (1 << 63), 17, 48, 9), alone);
    }

    /// Pins the stream: if rand_chacha's output or our key layout ever changed, previously
    /// published shuffled results would silently change. The expected draws are written by
    /// `tools/make_shuffle_golden.py`, an independent pure-Python implementation of the ChaCha20
    /// block function (key = seed LE bytes + 24 zero bytes, 64-bit block counter in words 12–13,
    /// stream in words 14–15, `next_u64` = two consecutive words, low first), the same rejection
    /// sampler and the same redraw rule.
    #[test]
    fn stream_is_pinned() {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&DEFAULT_SHUFFLE_SEED.to_le_bytes());
        let mut direct = ChaCha20Rng::from_seed(key);
        direct.set_stream(5);
        let mut ours = rng_for_stream(DEFAULT_SHUFFLE_SEED, 5);
        for _ in 0..10 {
            assert_eq!(ours.next_u64(), direct.next_u64());
        }
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/shuffle_draws.json");
        let golden: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut redrawn = 0;
        for case in golden["cases"].as_array().unwrap() {
            let field = |k: &str| case[k].as_u64().unwrap();
            let draws = draws_for_sentence(
                field("seed"),
                field("sentence") as usize,
                field("layers") as usize,
                field("tokens") as usize,
            );
            assert_golden_draws(case, &draws);
            redrawn += field("redrawn");
        }
        assert!(redrawn > 0, "the golden cases exercise the redraw");
    }

    /// The draws of a golden case, as `[[layer_v, position_v, layer_u, position_u], …]`.
    fn assert_golden_draws(case: &serde_json::Value, draws: &[ShuffleDraw]) {
        let flat: Vec<u64> =
            draws.iter().flat_map(|d| [d.layer_v, d.position_v, d.layer_u, d.position_u]).map(u64::from).collect();
        let want: Vec<u64> = case["draws"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|d| d.as_array().unwrap())
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(flat, want, "{case}");
    }

    /// A row's draws are keyed by (seed, sentence, occurrence): occurrence 1 is the sentence's
    /// own stream, others are stream `sentence + (occurrence − 1)·2^32`, pinned by the same
    /// independent ChaCha20 (`row_cases` of tools/make_shuffle_golden.py).
    #[test]
    fn rows_have_streams_of_their_own() {
        let first = draws_for_sentence(DEFAULT_SHUFFLE_SEED, 17, 48, 9);
        assert_eq!(draws_for_row(DEFAULT_SHUFFLE_SEED, 17, 1, 48, 9), first);
        assert_ne!(draws_for_row(DEFAULT_SHUFFLE_SEED, 17, 2, 48, 9), first);
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/shuffle_draws.json");
        let golden: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let rows = golden["row_cases"].as_array().unwrap();
        assert!(!rows.is_empty());
        for case in rows {
            let field = |k: &str| case[k].as_u64().unwrap() as usize;
            let draws = draws_for_row(
                case["seed"].as_u64().unwrap(),
                field("sentence"),
                field("occurrence"),
                field("layers"),
                field("tokens"),
            );
            assert_golden_draws(case, &draws);
        }
    }

    /// No draw compares a vector with itself, also where self-pairs are most likely (2 × 2).
    #[test]
    fn never_a_vector_with_itself() {
        for (layers, tokens) in [(2, 2), (1, 2), (2, 1), (48, 9)] {
            for sentence in 0..300 {
                for d in draws_for_sentence(7, sentence, layers, tokens) {
                    assert!((d.layer_v, d.position_v) != (d.layer_u, d.position_u), "{d:?}");
                }
            }
        }
    }

    #[test]
    fn below_is_uniform_enough() {
        // Chi-square goodness of fit on deterministic draws; the bounds are ~6 sd above the
        // expected value (df) so a correct sampler cannot fail for this fixed seed by chance.
        let layers = 48usize;
        let tokens = 7usize;
        let mut layer_counts = vec![0u64; layers];
        let mut pos_counts = vec![0u64; tokens];
        for s in 0..500 {
            for d in draws_for_sentence(42, s, layers, tokens) {
                layer_counts[d.layer_v as usize - 1] += 1;
                layer_counts[d.layer_u as usize - 1] += 1;
                pos_counts[d.position_v as usize] += 1;
                pos_counts[d.position_u as usize] += 1;
            }
        }
        let chi2 = |counts: &[u64]| {
            let total: u64 = counts.iter().sum();
            let expected = total as f64 / counts.len() as f64;
            counts.iter().map(|&c| (c as f64 - expected).powi(2) / expected).sum::<f64>()
        };
        let (c_layers, c_pos) = (chi2(&layer_counts), chi2(&pos_counts));
        // df = 47: mean 47, sd ≈ 9.7; df = 6: mean 6, sd ≈ 3.5.
        assert!(c_layers < 47.0 + 6.0 * 9.7, "layer chi2 {c_layers}");
        assert!(c_pos < 6.0 + 6.0 * 3.5, "position chi2 {c_pos}");
        // And not suspiciously perfect either.
        assert!(c_layers > 10.0, "layer chi2 {c_layers}");
        // v and u draws are not copies of each other.
        let same =
            (0..500).flat_map(|s| draws_for_sentence(42, s, layers, tokens)).filter(|d| d.layer_v == d.layer_u).count();
        let n = 500 * layers;
        // Expected n/48 = 500 matches; allow a wide margin.
        assert!((350..650).contains(&same), "{same} equal layer pairs of {n}");
    }

    #[test]
    fn below_handles_non_power_of_two_and_max() {
        let mut rng = rng_for_stream(1, 0);
        for n in [1u32, 2, 3, 5, 48, 1000, u32::MAX] {
            for _ in 0..100 {
                assert!(below(&mut rng, n) < n);
            }
        }
    }
}
