#!/usr/bin/env python3
"""Write tests/golden/llama_hidden_states.json: PyTorch hidden states and rotation angles of the
bundled Llama-like model (models/llama-tiny-random), the reference its Rust tests compare with.

Independent of the service: the Hugging Face checkpoint (models/llama-tiny-random/hf) run by
transformers' LlamaModel, the tokenizer through transformers (BOS prepended by its post-processor,
as `tokenizer(text)` does), positions as transformers makes them (no position_ids passed: 0..len-1
on every row of the right-padded batch), float32 as deployed. Angles are numpy float64 between
PyTorch's vectors, at the first ``▁her`` (looked up in the vocabulary, not through the service's
target resolution) and the token before it — the BOS token for a sentence that starts with "her".

    python tools/make_golden_llama_hidden_states.py            # writes the golden file
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformers
from make_golden_hidden_states import padded_batch_checked, write_golden

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = "models/llama-tiny-random"
OUT_FILE = REPO_ROOT / "tests" / "golden" / "llama_hidden_states.json"
TARGET_TOKEN = "▁her"

# Different lengths so padding matters; the third starts with "her" (its previous token is BOS).
SENTENCES = [
    "I saw her at the market.",
    "She gave her the book yesterday after a long day at work.",
    "her dog barked at the mailman.",
    "They told her.",
    "Hi",
]


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle between two vectors in degrees, float64 (2·atan2(|â − b̂|, |â + b̂|), exact for small angles)."""
    a = a.astype(np.float64) / np.linalg.norm(a.astype(np.float64))
    b = b.astype(np.float64) / np.linalg.norm(b.astype(np.float64))
    return float(np.degrees(2 * np.arctan2(np.linalg.norm(a - b), np.linalg.norm(a + b))))


def main() -> None:
    model_dir = REPO_ROOT / MODEL_DIR
    manifest = json.loads((model_dir / "model.json").read_text())
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"))
    model = transformers.LlamaModel.from_pretrained(model_dir / "hf", dtype=torch.float32).eval()

    ids = [tokenizer(s)["input_ids"] for s in SENTENCES]
    bos = manifest["bos_token_id"]
    if any(row[0] != bos for row in ids):
        raise SystemExit(f"the tokenizer did not prepend BOS {bos}: {ids}")
    batched = padded_batch_checked(model, ids, manifest["pad_token_id"])

    target = tokenizer.convert_tokens_to_ids(TARGET_TOKEN)
    states = [[h[i, : len(row)].numpy() for h in batched] for i, row in enumerate(ids)]
    rotations = []
    for i, row in enumerate(ids):
        if target not in row:
            continue
        t = row.index(target)
        per_layer = [
            [angle_deg(states[i][l - 1][p], states[i][l][p]) for p in (t, t - 1)] for l in range(1, len(batched))
        ]
        rotations.append({"sentence": i, "target": t, "non_target": t - 1, "angles_deg": per_layer})

    golden = {
        "model_dir": MODEL_DIR,
        "sentences": SENTENCES,
        "input_ids": ids,
        "target_token": TARGET_TOKEN,
        "target_id": target,
        "num_hidden_states": len(batched),
        "hidden_size": model.config.hidden_size,
        # [sentence][state][position][dim], real tokens only
        "hidden_states": [[s.tolist() for s in per_sentence] for per_sentence in states],
        # Sentences holding the target: target and non-target (target - 1) angles per layer transition.
        "rotations": rotations,
    }
    write_golden(OUT_FILE, golden)


if __name__ == "__main__":
    main()
