#!/usr/bin/env python3
"""Write tests/golden/vectors/: the PyTorch reference for RotationRequest.vectors ("the vectors on
disk", issue 26) on the bundled models/gpt2-tiny-random and models/llama-tiny-random-sublayers, for
tests/vectors.rs and clients/python/tests/test_vectors.py.

Independent of the export and of the service: the Hugging Face checkpoints (models/*/hf) run by
transformers, each sentence on its own, float32. GPT-2: ``output_hidden_states`` (states 0..=L). Llama
with sub-layer states: the hidden states, then each block's mid state and the last block's output
before the final norm from forward hooks (tools/make_golden_sublayers.py's ``states_of``: mid = block
output - MLP output), the service's state order. Rows: the first `` her`` (``▁her``) of each sentence
and the token before it.

For each model, ``NAME.target.npy`` and ``NAME.non_target.npy`` hold ``[sentences, states, hidden]``
float32, and ``vectors.json`` the sentences, the positions and the library versions.

    /work/main/.venv-tools/bin/python tools/make_golden_vectors.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformers

# The sentences of the sub-layer reference, and its hooks.
from make_golden_sublayers import SENTENCES, states_of

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = REPO_ROOT / "tests" / "golden" / "vectors"


def gpt2_states(model, ids: list[int]) -> list[np.ndarray]:
    """Hidden states 0..=L of one sentence, each [tokens, hidden] float32."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return [h[0].numpy() for h in out.hidden_states]


def llama_states(model, ids: list[int]) -> list[np.ndarray]:
    """Hidden states, mid states and the last block's output, in the service's state order."""
    hidden, mids, final = states_of(model, ids)
    return hidden + mids + [final]


def rows(tokenizer, states, target_token: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """[sentences, states, hidden] of the target and of the token before it, and the target positions."""
    target = tokenizer.convert_tokens_to_ids(target_token)
    targets, non_targets, positions = [], [], []
    for sentence in SENTENCES:
        ids = tokenizer(sentence)["input_ids"]
        t = ids.index(target)
        every = states(ids)
        targets.append(np.stack([s[t] for s in every]))
        non_targets.append(np.stack([s[t - 1] for s in every]))
        positions.append(t)
    return np.stack(targets).astype(np.float32), np.stack(non_targets).astype(np.float32), positions


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    models = {
        "gpt2": ("models/gpt2-tiny-random", "models/gpt2-tiny-random/hf", transformers.GPT2Model, gpt2_states, "Ġher"),
        "llama_sublayers": (
            "models/llama-tiny-random-sublayers",
            "models/llama-tiny-random/hf",
            transformers.LlamaModel,
            llama_states,
            "▁her",
        ),
    }
    index = {"sentences": SENTENCES, "models": {}}
    for name, (model_dir, checkpoint, cls, states, token) in models.items():
        tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(REPO_ROOT / model_dir / "tokenizer.json"))
        model = cls.from_pretrained(REPO_ROOT / checkpoint, dtype=torch.float32).eval()
        target, non_target, positions = rows(tokenizer, lambda ids: states(model, ids), token)
        np.save(OUT_DIR / f"{name}.target.npy", target)
        np.save(OUT_DIR / f"{name}.non_target.npy", non_target)
        index["models"][name] = {"model_dir": model_dir, "target_token": token, "target_positions": positions,
                                 "shape": list(target.shape)}
        print(f"wrote {name}: {target.shape}")
    index["torch_version"] = torch.__version__
    index["transformers_version"] = transformers.__version__
    (OUT_DIR / "vectors.json").write_text(json.dumps(index, indent=1) + "\n")


if __name__ == "__main__":
    main()
