#!/usr/bin/env python3
"""Generate tests/golden/layer_angles.json: reference angles between every pair of hidden states
of one token, cumulative angles from the embedding and their means over sentences, for
`tests/analysis_layers.rs`.

Input: the PyTorch hidden states of the bundled model in tests/golden/hidden_states.json (made by
tools/make_golden_hidden_states.py). For each sentence the token is the first ' her' (id 607) or
else the last token; a second selection takes the mean of the token's vector and the one before
it (the "mean" sub-token of a two-token word), averaged in float64 and rounded to float32 as the
hidden states are. Angles are numpy `arccos` of the float64 cosine, in degrees: accurate to
about 1e-14 / sin(angle), ample for the angles of these random-init states (checked below).

Usage (from the repository root, numpy only):
    .venv-stats/bin/python tools/make_layer_angles_golden.py            # writes the file
    .venv-stats/bin/python tools/make_layer_angles_golden.py --check    # verifies it is up to date
"""

import argparse
import json
from pathlib import Path

import numpy as np

from golden_io import write_or_check

ROOT = Path(__file__).resolve().parent.parent
IN = ROOT / "tests" / "golden" / "hidden_states.json"
OUT = ROOT / "tests" / "golden" / "layer_angles.json"
HER = 607


def pairwise_degrees(vectors):
    """[S, H] float32 vectors -> [S, S] angles in degrees (float64 arccos of the cosine)."""
    v = vectors.astype(np.float64)
    unit = v / np.linalg.norm(v, axis=1, keepdims=True)
    cos = np.clip(unit @ unit.T, -1.0, 1.0)
    angles = np.degrees(np.arccos(cos))
    np.fill_diagonal(angles, 0.0)
    off_diagonal = angles[~np.eye(len(angles), dtype=bool)]
    assert off_diagonal.min() > 1e-3, "angles too small for an arccos reference"
    return angles


def cumulative(matrix):
    steps = np.diagonal(matrix, offset=1)
    return np.concatenate([[0.0], np.cumsum(steps)])


def selection(hidden, ids, mean):
    """The token's vectors per hidden state [S, H] and its (start, end) token range."""
    position = ids.index(HER) if HER in ids else len(ids) - 1
    if not mean:
        return hidden[:, position, :], (position, position + 1)
    start = max(position - 1, 0)
    word = hidden[:, start : position + 1, :].astype(np.float64).mean(axis=1).astype(np.float32)
    return word, (start, position + 1)


def analyse(golden, mean):
    rows = []
    for ids, states in zip(golden["input_ids"], golden["hidden_states"]):
        hidden = np.asarray(states, dtype=np.float32)  # [S, T, H]
        vectors, (start, end) = selection(hidden, ids, mean)
        matrix = pairwise_degrees(vectors)
        rows.append({"start": start, "end": end, "matrix": matrix.tolist(), "cumulative": cumulative(matrix).tolist()})
    mean_matrix = np.mean([r["matrix"] for r in rows], axis=0)
    return {
        "sub_token": "mean" if mean else "last",
        "sentences": rows,
        "mean_matrix": mean_matrix.tolist(),
        "mean_cumulative": cumulative(mean_matrix).tolist(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed file differs")
    args = parser.parse_args()
    golden = json.loads(IN.read_text())
    out = {"unit": "degrees", "selections": [analyse(golden, mean) for mean in (False, True)]}
    write_or_check(OUT, out, __file__, args.check)


if __name__ == "__main__":
    main()
