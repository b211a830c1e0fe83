#!/usr/bin/env python3
"""Write tests/golden/hidden_states.json: PyTorch hidden states of the bundled model.

The reference comes from the Hugging Face checkpoint (models/gpt2-tiny-random/hf) run by
transformers, not from the ONNX file, so the service's ONNX Runtime path is checked
against an independent computation. Float32 throughout, as deployed; the batch is
right-padded with EOS (50256) and only real tokens are written.

    python tools/make_golden_hidden_states.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = "models/gpt2-tiny-random"
OUT_FILE = REPO_ROOT / "tests" / "golden" / "hidden_states.json"
PAD_ID = 50256  # GPT-2's EOS, the notebook's padding token

# Different lengths, including a single token, so padding matters for most rows.
SENTENCES = [
    "I saw her at the market.",
    "She gave her the book yesterday after a long day at work.",
    "Hi",
    "The author based the character on her.",
]


def hidden_states(model, rows: list[list[int]], pad_id: int = PAD_ID) -> list[torch.Tensor]:
    """Run a right-padded batch; return the hidden states, [state][batch, seq, hidden]."""
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows])
    attention_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    return list(out.hidden_states)


def padded_batch_checked(model, ids: list[list[int]], pad_id: int = PAD_ID) -> list[torch.Tensor]:
    """The hidden states of the right-padded batch ``ids``, after checking that padding does not change
    real tokens: each sentence run on its own must give the same vectors."""
    batched = hidden_states(model, ids, pad_id)
    alone_vs_batched = 0.0
    for i, row in enumerate(ids):
        alone = hidden_states(model, [row], pad_id)
        for a, b in zip(alone, batched, strict=True):
            alone_vs_batched = max(alone_vs_batched, (a[0] - b[i, : len(row)]).abs().max().item())
    print(f"max |alone - batched| over real tokens: {alone_vs_batched:.3g}")
    if alone_vs_batched > 1e-4:
        raise SystemExit("padding changes real-token hidden states; the reference would be wrong")
    return batched


def main() -> None:
    model_dir = REPO_ROOT / MODEL_DIR
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"))
    model = transformers.GPT2Model.from_pretrained(model_dir / "hf", dtype=torch.float32).eval()

    ids = [tokenizer.encode(s) for s in SENTENCES]
    batched = padded_batch_checked(model, ids)

    golden = {
        "model_dir": MODEL_DIR,
        "sentences": SENTENCES,
        "input_ids": ids,
        "num_hidden_states": len(batched),
        "hidden_size": model.config.n_embd,
        # [sentence][state][position][dim], real tokens only
        "hidden_states": [[h[i, : len(row)].tolist() for h in batched] for i, row in enumerate(ids)],
    }
    write_golden(OUT_FILE, golden)


def write_golden(out: Path, golden: dict) -> None:
    """Writes a hidden-states golden file (``sentences``, ``input_ids``, …) with the library versions."""
    golden = {**golden, "torch_version": torch.__version__, "transformers_version": transformers.__version__}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(golden) + "\n")
    lengths = [len(r) for r in golden["input_ids"]]
    print(f"wrote {out.relative_to(REPO_ROOT)}: {len(golden['sentences'])} sentences, lengths {lengths}")


if __name__ == "__main__":
    main()
