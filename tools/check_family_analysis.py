#!/usr/bin/env python3
"""Checks an `rotations analyze` result (analysis.json) on an exported model against PyTorch.

Used by scripts/test-families (make test-families): for every sentence, the target token must be the
word asked for, and the service's angles between consecutive hidden states of the target and of the
token before it must equal the angles computed here from the model's PyTorch checkpoint (<model>/hf,
loaded by transformers, each sentence run alone: no padding), within twice the export's angle bound.
With --vectors (the analysis's --vectors-out file), the vectors on disk must be PyTorch's hidden
states of the target and of the token before it (and, for a model exported with --sublayers, its
sub-layer states from forward hooks: tools/sublayer_hooks.py): within 1e-4 degrees and 1e-5 in
relative norm.

    python tools/check_family_analysis.py <model dir>/model.json <out>/analysis.json [--word her] [--vectors V.npy]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import transformers
from sublayer_hooks import sublayer_reference
from tokenizers import Tokenizer

transformers.utils.logging.disable_progress_bar()
CONDITIONS = ("target", "non_target")  # the first two conditions, in analysis.json's order
WORD_MARKERS = "▁Ġ "  # SentencePiece's and byte-level BPE's word-start markers


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Kahan's 2·atan2(‖â−b̂‖, ‖â+b̂‖) in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    return float(np.degrees(2 * np.arctan2(np.linalg.norm(a - b), np.linalg.norm(a + b))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_json", type=Path)
    p.add_argument("analysis_json", type=Path)
    p.add_argument("--word", default="her")
    p.add_argument("--vectors", type=Path, help="the --vectors-out file (the non-target's beside it)")
    args = p.parse_args()
    meta = json.loads(args.model_json.read_text())
    result = json.loads(args.analysis_json.read_text())
    model_dir = args.model_json.parent
    layers, sentences, _ = result["shape"]
    assert layers == meta["num_layers"], (layers, meta["num_layers"])
    assert result["unit"] in ("degrees", "deg"), result["unit"]
    assert [c.lower().replace("-", "_") for c in result["conditions"][:2]] == list(CONDITIONS), result["conditions"]
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    model = transformers.AutoModel.from_pretrained(model_dir / "hf", attn_implementation="eager").eval()
    bound = 2 * meta["verification"]["angle_bound_deg"]
    worst = 0.0
    num_states = (layers + 1) * (2 if meta.get("sublayers") else 1)
    on_disk = vector_files(args.vectors, sentences, num_states, meta["hidden_size"]) if args.vectors else None
    worst_vector = (0.0, 0.0)
    for s, info in enumerate(result["sentences"]):
        ids = tok.encode(info["text"]).ids
        assert info["num_tokens"] == len(ids), (info, len(ids))
        target, previous = info["target_position"], info["non_target_position"]
        assert tok.id_to_token(ids[target]).lstrip(WORD_MARKERS) == args.word, (info, tok.id_to_token(ids[target]))
        assert previous == target - 1 and (not meta.get("adds_bos") or previous >= 1), info
        with torch.no_grad():
            states = model(input_ids=torch.tensor([ids]), output_hidden_states=True, use_cache=False).hidden_states
        for layer in range(layers):
            for c, position in enumerate((target, previous)):
                expected = angle_deg(states[layer][0, position].numpy(), states[layer + 1][0, position].numpy())
                got = result["angles"][layer][s][c]
                assert np.isfinite(got) and abs(got - expected) <= bound, (s, layer, CONDITIONS[c], got, expected)
                worst = max(worst, abs(got - expected))
        if on_disk and meta.get("sublayers"):
            feeds = {"input_ids": np.array([ids], dtype=np.int64), "attention_mask": np.ones((1, len(ids)), np.int64)}
            states = [h.numpy() for h in states] + list(sublayer_reference(model, meta.get("family", "gpt2"), feeds))
        for c, position in enumerate((target, previous)):
            for state in range(num_states) if on_disk else ():
                want, got = np.asarray(states[state][0, position]), on_disk[c][s, state]
                norm = abs(np.linalg.norm(got.astype(np.float64)) / np.linalg.norm(want.astype(np.float64)) - 1)
                angle = angle_deg(got, want)
                assert angle <= 1e-4 and norm <= 1e-5, (s, state, CONDITIONS[c], angle, norm)
                worst_vector = (max(worst_vector[0], angle), max(worst_vector[1], norm))
    print(
        f"{meta.get('family', 'gpt2')}: {sentences} sentences x {layers} layers, target and previous token: "
        f"angles within {worst:.2g} deg of PyTorch (bound {bound:g})"
    )
    if on_disk:
        print(f"  vectors on disk: within {worst_vector[0]:.2g} deg and {worst_vector[1]:.2g} relative norm of PyTorch")


def vector_files(path: Path, sentences: int, states: int, hidden: int) -> tuple:
    """The target's and the non-target's --vectors-out files, [sentences, states, hidden] each."""
    files = (np.load(path), np.load(path.with_name(path.stem + ".non_target.npy")))
    for f in files:
        assert f.shape == (sentences, states, hidden) and f.dtype == np.float32, (f.shape, f.dtype)
    return files


if __name__ == "__main__":
    main()
