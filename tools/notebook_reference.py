#!/usr/bin/env python3
"""Write tests/golden/notebook_angles.json: the notebook's rotation analysis, in PyTorch.

Reproduces "Calculating rotations of embeddings vectors" on the bundled model's Hugging Face
checkpoint (random weights: the numbers test the pipeline, not GPT-2's behaviour):
tokenize the sentences with right padding (pad = EOS), take all hidden states, and for each
sentence measure the angle each layer turns the " her" token (target) and the token before
it (non-target) relative to the previous layer; then a paired t-test per layer.

Angles are computed twice: exactly as the notebook (float32 torch.acos of the cosine) and in
float64 with a formula that stays accurate for small angles, from the same float32 states.
The shuffled condition is skipped: it is random in the notebook.

    python tools/notebook_reference.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy
import scipy.stats as stats
import statsmodels
import torch
import transformers
from statsmodels.stats.multitest import multipletests

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = "models/gpt2-tiny-random"
SENTENCES_FILE = REPO_ROOT / "examples" / "her_sentences.txt"
OUT_FILE = REPO_ROOT / "tests" / "golden" / "notebook_angles.json"
TARGET = " her"
TARGET_ID = 607
EOS_ID = 50256


def notebook_angle(v: torch.Tensor, u: torch.Tensor) -> float:
    """The notebook's formula, float32 (acos loses accuracy near 0 degrees, NaN if |cos| > 1)."""
    return torch.acos(torch.dot(v, u) / (torch.linalg.norm(v) * torch.linalg.norm(u))).item()


def stable_angle(a: np.ndarray, b: np.ndarray) -> float:
    """2*atan2(|a^ - b^|, |a^ + b^|) in float64: accurate at every angle."""
    a = a.astype(np.float64) / np.linalg.norm(a.astype(np.float64))
    b = b.astype(np.float64) / np.linalg.norm(b.astype(np.float64))
    return 2.0 * np.arctan2(np.linalg.norm(a - b), np.linalg.norm(a + b))


def ttest(angles_deg: np.ndarray, n_hiddens: int) -> dict:
    """Paired t-test target vs non-target per layer, as the notebook; angles [layer][sentence][2]."""
    res = stats.ttest_rel(angles_deg[:, :, 0].T, angles_deg[:, :, 1].T)
    p = np.asarray(res.pvalue)
    return {
        "t": np.asarray(res.statistic).tolist(),
        "p": p.tolist(),
        "df": int(np.asarray(res.df).flat[0]),
        # The notebook's threshold divides by the number of hidden states (N+1), not of tests.
        "significant_notebook": (p < 0.05 / n_hiddens).tolist(),
        # Bonferroni over the N tests actually run, for comparison.
        "p_bonferroni": multipletests(p, alpha=0.05, method="bonferroni")[1].tolist(),
    }


def main() -> None:
    sentences = [s for s in SENTENCES_FILE.read_text().splitlines() if s.strip()]
    model_dir = REPO_ROOT / MODEL_DIR
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"))
    tokenizer.pad_token = "<|endoftext|>"  # as the notebook: pad with EOS, on the right
    assert tokenizer.pad_token_id == EOS_ID and tokenizer.padding_side == "right"
    target_id = tokenizer.encode(TARGET)[0]
    assert target_id == TARGET_ID, target_id

    # The notebook loads AutoModelForCausalLM; its hidden states are the transformer's.
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir / "hf", dtype=torch.float32).eval()
    tokens = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**tokens, output_hidden_states=True)
    hs = outputs.hidden_states
    n_hiddens = len(hs)
    n_layers = n_hiddens - 1

    angles_nb = np.zeros((n_layers, len(sentences), 2))
    angles_f64 = np.zeros((n_layers, len(sentences), 2))
    targets, non_targets = [], []
    for s in range(len(sentences)):
        targidx = tokens["input_ids"][s].tolist().index(target_id)
        targets.append(targidx)
        non_targets.append(targidx - 1)
        for k in range(1, n_hiddens):
            for cond, pos in enumerate((targidx, targidx - 1)):
                v, u = hs[k - 1][s, pos, :], hs[k][s, pos, :]
                angles_nb[k - 1, s, cond] = notebook_angle(v, u)
                angles_f64[k - 1, s, cond] = stable_angle(v.numpy(), u.numpy())
    angles_nb *= 180 / np.pi
    angles_f64 *= 180 / np.pi
    if min(non_targets) < 0:
        raise SystemExit("a sentence starts with the target; the notebook's non-target would wrap to -1")

    print(f"{len(sentences)} sentences, {n_layers} layers, target id {target_id}")
    print(f"max |notebook - f64| angle: {np.nanmax(np.abs(angles_nb - angles_f64)):.3g} degrees")
    print(f"angle range (f64): {angles_f64.min():.3f} .. {angles_f64.max():.3f} degrees")

    t_f64, t_nb = ttest(angles_f64, n_hiddens), ttest(angles_nb, n_hiddens)
    print("t (f64):", np.round(t_f64["t"], 4).tolist())
    print("max |t_notebook - t_f64|:", float(np.max(np.abs(np.subtract(t_nb["t"], t_f64["t"])))))

    golden = {
        "model_dir": MODEL_DIR,
        "target_token_id": target_id,
        "sentences": sentences,
        "target_positions": targets,
        "non_target_positions": non_targets,
        "num_layers": n_layers,
        # [layer][sentence][0 = target, 1 = non-target], degrees, layer k compares states k-1 and k
        "angles_notebook_deg": angles_nb.tolist(),
        "angles_f64_deg": angles_f64.tolist(),
        "ttest_f64": t_f64,
        "ttest_notebook": t_nb,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "numpy_version": np.__version__,
        "scipy_version": scipy.__version__,
        "statsmodels_version": statsmodels.__version__,
    }
    OUT_FILE.parent.mkdir(parents=True, exist_ok=True)
    OUT_FILE.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {OUT_FILE.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
