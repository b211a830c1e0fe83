#!/usr/bin/env python3
"""Write tests/golden/llama_sublayers.json: the PyTorch reference for steps = SUBLAYERS on the bundled
models/llama-tiny-random-sublayers (the same checkpoint as models/llama-tiny-random, exported with
--sublayers), for tests/sublayers.rs.

Independent of the export: transformers' LlamaModel from models/llama-tiny-random/hf, each sentence run
on its own, with forward hooks on other modules than the export's (it reads the input of each block's
post_attention_layernorm): each block's mid state is the block's output minus its MLP's output, and the
last block's output is what the block returns (before the final norm). Angles are numpy float64
(2·atan2(|â − b̂|, |â + b̂|)) at the first ``▁her`` and the token before it: per layer, the attention
step (hidden state l-1 -> mid l) and the MLP step (mid l -> block l's output); the norms (float64) of
both vectors at every state (hidden states, mids, last block's output). Also each step's paired
t-test (scipy.stats.ttest_rel, target - non-target) with Bonferroni over all 2L steps.

    /work/main/.venv-tools/bin/python tools/make_golden_sublayers.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.stats
import torch
import transformers

REPO_ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = REPO_ROOT / "models" / "llama-tiny-random" / "hf"
MODEL_DIR = "models/llama-tiny-random-sublayers"
OUT_FILE = REPO_ROOT / "tests" / "golden" / "llama_sublayers.json"
TARGET_TOKEN = "▁her"
SENTENCES = [
    "I saw her at the market.",
    "She gave her the book yesterday after a long day at work.",
    "They told her.",
    "We met her brother and her sister at the station last night.",
    "The author based the character on her.",
    "Nobody asked her about it.",
]


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64) / np.linalg.norm(a.astype(np.float64))
    b = b.astype(np.float64) / np.linalg.norm(b.astype(np.float64))
    return float(np.degrees(2 * np.arctan2(np.linalg.norm(a - b), np.linalg.norm(a + b))))


def states_of(model, ids: list[int]) -> tuple[list, list, np.ndarray]:
    """(hidden states, mid states, last block's output) of one sentence, each [tokens, hidden] float32."""
    seen = {}
    hooks = []
    for i, block in enumerate(model.layers):
        hooks.append(block.mlp.register_forward_hook(lambda _m, _a, out, i=i: seen.__setitem__(("mlp", i), out)))
        hooks.append(block.register_forward_hook(lambda _m, _a, out, i=i: seen.__setitem__(("out", i), out[0] if isinstance(out, tuple) else out)))
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True, use_cache=False)
    for hook in hooks:
        hook.remove()
    n = len(model.layers)
    hidden = [h[0].numpy() for h in out.hidden_states]
    mids = [(seen[("out", i)] - seen[("mlp", i)])[0].numpy() for i in range(n)]
    return hidden, mids, seen[("out", n - 1)][0].numpy()


def main() -> None:
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(REPO_ROOT / MODEL_DIR / "tokenizer.json"))
    model = transformers.LlamaModel.from_pretrained(CHECKPOINT, dtype=torch.float32).eval()
    target = tokenizer.convert_tokens_to_ids(TARGET_TOKEN)
    rows = []
    for sentence in SENTENCES:
        ids = tokenizer(sentence)["input_ids"]
        t = ids.index(target)
        hidden, mids, final = states_of(model, ids)
        n = len(mids)
        outputs = hidden[1:n] + [final]  # block l's output: hidden state l, the last one before the final norm
        steps = [
            [[angle_deg(a[p], b[p]) for p in (t, t - 1)] for a, b in ((hidden[l], mids[l]), (mids[l], outputs[l]))]
            for l in range(n)
        ]
        layers = [[angle_deg(hidden[l][p], hidden[l + 1][p]) for p in (t, t - 1)] for l in range(n)]
        every = hidden + mids + [final]  # the service's state order
        norms = [[float(np.linalg.norm(state[p].astype(np.float64))) for p in (t, t - 1)] for state in every]
        rows.append({"target": t, "non_target": t - 1, "steps_deg": steps, "layers_deg": layers, "norms": norms})
    steps = np.array([r["steps_deg"] for r in rows])  # [rows, L, 2, 2]
    flat = steps.reshape(len(rows), -1, 2)  # [rows, 2L, 2]: step 2(l-1) + s
    tests = []
    for k in range(flat.shape[1]):
        res = scipy.stats.ttest_rel(flat[:, k, 0], flat[:, k, 1])
        tests.append({"t": float(res.statistic), "p": float(res.pvalue), "p_bonferroni": float(min(1.0, res.pvalue * flat.shape[1]))})
    golden = {
        "model_dir": MODEL_DIR,
        "sentences": SENTENCES,
        "target_token": TARGET_TOKEN,
        "unit": "degrees",
        # rows[r].steps_deg[layer - 1][step: 0 attention, 1 mlp][condition: 0 target, 1 non_target]
        "rows": rows,
        # One per step, 2 (layer - 1) + step: target - non_target.
        "step_tests": tests,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }
    OUT_FILE.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {OUT_FILE.relative_to(REPO_ROOT)}: {len(rows)} sentences")


if __name__ == "__main__":
    main()
