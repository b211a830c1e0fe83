#!/usr/bin/env python3
"""Generate tests/golden/selection.json: which tokens each selection picks (occurrence first /
last / n-th / all, character spans, sub-token last / first / mean) and the angles of those words,
for `tests/selection.rs`, which sends the same requests to the real server.

Two stages, so that the second runs in `make golden-check` without PyTorch:

1. `--hidden` (PyTorch + transformers, tools/requirements.txt) writes
   tests/golden/selection_hidden.json: for each sentence the Hugging Face tokenizer's ids and its
   *character* offsets (`return_offsets_mapping`, an independent path from the service's byte
   offsets) and the bundled model's PyTorch hidden states (run alone, float32).
2. Without `--hidden` (numpy only) writes tests/golden/selection.json from it: occurrences are
   found by scanning the ids, spans are mapped to the tokens holding a non-space character of the
   span, words of several tokens are their last / first token or the float64 mean of their tokens
   rounded to float32, and angles are numpy `arccos` of the float64 cosine in degrees. With
   all_layers, every pair of hidden states of the target word, their mean over rows and the
   cumulative angle of the mean.

Usage (from the repository root):
    .venv-tools/bin/python tools/make_selection_golden.py --hidden   # needs torch
    .venv-stats/bin/python tools/make_selection_golden.py [--check]
"""

import argparse
import json
from pathlib import Path

import numpy as np

from golden_io import write_or_check

ROOT = Path(__file__).resolve().parent.parent
HIDDEN = ROOT / "tests" / "golden" / "selection_hidden.json"
OUT = ROOT / "tests" / "golden" / "selection.json"
MODEL_DIR = ROOT / "models" / "gpt2-tiny-random"

SENTENCES = [
    "Her mother gave her the book and her brother smiled.",
    "I saw her at the market, and her brother waved.",
    "Nakamura met her twice; then Nakamura thanked her.",
    "Zoë told her sister about her plans.",
]


def char_span(text, word, k=0):
    """Characters [start, end) of the k-th occurrence of `word` in `text`."""
    start = -1
    for _ in range(k + 1):
        start = text.index(word, start + 1)
    return [start, start + len(word)]


# Each case is one request: its fields (as tests/selection.rs sends them) and what it selects.
CASES = [
    {"name": "all occurrences of ' her', all layers", "target_text": " her", "occurrence": "all", "all_layers": True},
    {"name": "last ' her'", "target_text": " her", "occurrence": "last"},
    {"name": "second ' her'", "target_text": " her", "occurrence": "nth", "occurrence_number": 2},
    {
        "name": "spans (sentence-initial, split words), mean of sub-tokens, non-target spans, all layers",
        "target_spans": [char_span(SENTENCES[0], "Her"), char_span(SENTENCES[1], "market"),
                         char_span(SENTENCES[2], "Nakamura", 1), char_span(SENTENCES[3], "Zoë")],
        "non_target_spans": [char_span(SENTENCES[0], " mother"), char_span(SENTENCES[1], "saw"),
                             char_span(SENTENCES[2], "met"), char_span(SENTENCES[3], "sister")],
        "sub_token": "mean",
        "all_layers": True,
    },
    {
        "name": "spans, first sub-token, offset +1",
        "target_spans": [char_span(SENTENCES[0], "mother"), char_span(SENTENCES[1], " market"),
                         char_span(SENTENCES[2], "Nakamura"), char_span(SENTENCES[3], "Zoë")],
        "non_target_offset": 1,
        "sub_token": "first",
    },
]


def hidden_stage():
    import torch
    import transformers

    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(MODEL_DIR / "tokenizer.json"))
    model = transformers.GPT2Model.from_pretrained(MODEL_DIR / "hf", dtype=torch.float32).eval()
    rows = []
    for text in SENTENCES:
        enc = tokenizer(text, return_offsets_mapping=True)
        with torch.no_grad():
            out = model(input_ids=torch.tensor([enc["input_ids"]]), output_hidden_states=True)
        rows.append({
            "text": text,
            "ids": enc["input_ids"],
            "char_offsets": [list(o) for o in enc["offset_mapping"]],
            "hidden_states": [h[0].tolist() for h in out.hidden_states],  # [state][position][dim]
        })
    HIDDEN.write_text(json.dumps({"torch_version": torch.__version__,
                                  "transformers_version": transformers.__version__,
                                  "sentences": rows}) + "\n")
    print(f"wrote {HIDDEN}")


def occurrences(ids, word):
    """Non-overlapping (start, end) token ranges of `word` in `ids`, left to right."""
    found, i = [], 0
    while i + len(word) <= len(ids):
        if ids[i : i + len(word)] == word:
            found.append((i, i + len(word)))
            i += len(word)
        else:
            i += 1
    return found


def span_tokens(text, offsets, span):
    """The tokens holding a non-space character of the span; the span must cover them whole."""
    a, b = span
    covered = [i for i, (s, e) in enumerate(offsets) if any(not text[c].isspace() for c in range(max(s, a), min(e, b)))]
    first, last = covered[0], covered[-1]
    assert text[offsets[first][0] : a].strip() == "" and text[b : offsets[last][1]].strip() == "", span
    return first, last + 1


def word_vectors(hidden, word, sub_token):
    """[S, H] float32: the word's vector at every hidden state."""
    start, end = word
    if sub_token == "last":
        return hidden[:, end - 1, :]
    if sub_token == "first":
        return hidden[:, start, :]
    return hidden[:, start:end, :].astype(np.float64).mean(axis=1).astype(np.float32)


def degrees(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    cos = np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1.0, 1.0)
    return float(np.degrees(np.arccos(cos)))


def rows_of(case, tokenizer_ids, sentences):
    rows = []
    for s, sentence in enumerate(sentences):
        ids, text, offsets = sentence["ids"], sentence["text"], sentence["char_offsets"]
        if "target_spans" in case:
            targets = [(1, span_tokens(text, offsets, case["target_spans"][s]))]
        else:
            found = occurrences(ids, tokenizer_ids)
            numbered = list(enumerate(found, start=1))
            targets = {"all": numbered, "last": numbered[-1:],
                       "nth": numbered[case.get("occurrence_number", 1) - 1 : case.get("occurrence_number", 1)],
                       "first": numbered[:1]}[case.get("occurrence", "first")]
        for occurrence, target in targets:
            if "non_target_spans" in case:
                non_target = span_tokens(text, offsets, case["non_target_spans"][s])
            else:
                offset = case.get("non_target_offset", -1)
                p = target[0] + offset if offset < 0 else target[1] - 1 + offset
                non_target = (p, p + 1)
            rows.append({"sentence": s, "occurrence": occurrence, "target": list(target),
                         "non_target": list(non_target)})
    return rows


def analyse(case, sentences, her_ids):
    sub_token = case.get("sub_token", "last")
    rows = rows_of(case, her_ids, sentences)
    matrices = []
    for row in rows:
        hidden = np.asarray(sentences[row["sentence"]]["hidden_states"], dtype=np.float32)
        target = word_vectors(hidden, row["target"], sub_token)
        non_target = word_vectors(hidden, row["non_target"], sub_token)
        states = len(target)
        row["target_angles"] = [degrees(target[l - 1], target[l]) for l in range(1, states)]
        row["non_target_angles"] = [degrees(non_target[l - 1], non_target[l]) for l in range(1, states)]
        if case.get("all_layers"):
            matrix = np.array([[0.0 if i == j else degrees(target[i], target[j]) for j in range(states)]
                               for i in range(states)])
            matrices.append(matrix)
    out = {"case": case, "rows": rows}
    if matrices:
        mean = np.mean(matrices, axis=0)
        out["mean_matrix"] = mean.tolist()
        out["mean_cumulative"] = np.concatenate([[0.0], np.cumsum(np.diagonal(mean, offset=1))]).tolist()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", action="store_true", help="write the PyTorch hidden states first (torch)")
    parser.add_argument("--check", action="store_true", help="fail if the committed file differs")
    args = parser.parse_args()
    if args.hidden:
        hidden_stage()
    sentences = json.loads(HIDDEN.read_text())["sentences"]
    # The word ids as the tokenizer gave them in context: ' her' is 607, ' Nakamura' several.
    her_ids = [607]
    out = {"unit": "degrees", "sentences": SENTENCES, "cases": [analyse(c, sentences, her_ids) for c in CASES]}
    write_or_check(OUT, out, __file__, args.check)


if __name__ == "__main__":
    main()
