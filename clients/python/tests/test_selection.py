"""Which token and all layers from Python: the same references as the Rust tests
(tests/golden/selection.json: the Hugging Face tokenizer's offsets, numpy angles on PyTorch hidden
states), and the same rows and exact matrix sums through analyze, stream_rotations pieces and a
Cluster. Errors: the server's INVALID_ARGUMENT naming the sentence, or ValueError before sending."""

from __future__ import annotations

import json
from typing import Any, Dict, List

import grpc
import numpy as np
import pytest

from rotations_client import AllLayers, AngleMatrixSums, Client, Cluster, RotationsError, collect_stream

from .conftest import REPO

GOLDEN = json.loads((REPO / "tests" / "golden" / "selection.json").read_text())
#: ONNX Runtime against PyTorch hidden states, in degrees (the notebook test's tolerance).
ATOL = 1e-3


def keywords(case: Dict[str, Any]) -> Dict[str, Any]:
    """The golden case as client keywords."""
    out: Dict[str, Any] = {"target": case.get("target_text")}
    occurrence = case.get("occurrence", "first")
    out["occurrence"] = case["occurrence_number"] if occurrence == "nth" else occurrence
    for key in ("target_spans", "non_target_spans", "non_target_offset", "sub_token", "all_layers"):
        if key in case:
            out[key] = [tuple(s) for s in case[key]] if key.endswith("spans") else case[key]
    return out


@pytest.mark.parametrize("k", range(len(GOLDEN["cases"])))
def test_selections_match_the_reference(client: Client, k: int) -> None:
    golden = GOLDEN["cases"][k]
    result = client.rotations(GOLDEN["sentences"], **keywords(golden["case"]))
    rows = golden["rows"]
    assert result.angles.shape[1] == len(rows)
    for j, (report, want) in enumerate(zip(result.sentences, rows)):
        assert (report.index, report.occurrence) == (want["sentence"], want["occurrence"]), j
        assert report.target_tokens == tuple(want["target"]) and report.non_target_tokens == tuple(want["non_target"])
    np.testing.assert_allclose(result.angles[:, :, 0].T, [r["target_angles"] for r in rows], atol=ATOL, rtol=0)
    np.testing.assert_allclose(result.angles[:, :, 1].T, [r["non_target_angles"] for r in rows], atol=ATOL, rtol=0)
    if "mean_matrix" in golden:
        assert result.all_layers is not None and result.all_layers.row_matrices is None
        np.testing.assert_allclose(result.all_layers.mean_matrix, golden["mean_matrix"], atol=ATOL, rtol=0)
        np.testing.assert_allclose(result.all_layers.mean_cumulative, golden["mean_cumulative"], atol=ATOL, rtol=0)
    else:
        assert result.all_layers is None


def corpus(n: int) -> List[str]:
    return [f"{i}: {GOLDEN['sentences'][i % len(GOLDEN['sentences'])]}" for i in range(n)]


SELECT = dict(occurrence="all", sub_token="mean", all_layers=True, row_matrices=True)


def test_rows_and_matrix_sums_do_not_depend_on_the_split(client: Client, server) -> None:  # type: ignore[no-untyped-def]
    sentences = corpus(13)
    whole = client.analyze(sentences, " her", **SELECT)
    rot = whole.rotations
    assert rot.angles.shape[1] == 2 * len(sentences) and rot.all_layers is not None
    assert [r.occurrence for r in rot.sentences[:2]] == [1, 2]
    # The mean is the server's, recomputed from the exact sums.
    assert np.array_equal(AllLayers.from_sums(rot.all_layers.sums).mean_matrix, rot.all_layers.mean_matrix)
    streamed = collect_stream(client.stream_rotations(sentences, " her", **SELECT))
    sums = AngleMatrixSums(0, 0)
    for first in range(0, len(sentences), 4):
        piece = collect_stream(client.stream_rotations(sentences[first : first + 4], " her", first_sentence_index=first, **SELECT))
        assert piece.rotations.all_layers is not None
        sums = sums.merge(piece.rotations.all_layers.sums)
    assert sums == rot.all_layers.sums
    with Cluster([server.address, server.address], chunk_size=3, timeout=120) as cluster:
        sharded = cluster.analyze(sentences, " her", **SELECT)
    for other in (streamed, sharded):
        o = other.rotations
        assert np.array_equal(o.angles.view(np.uint32), rot.angles.view(np.uint32))
        assert np.array_equal(o.shuffle_draws, rot.shuffle_draws) and o.sentences == rot.sentences
        assert o.all_layers is not None and o.all_layers.sums == rot.all_layers.sums
        assert np.array_equal(o.all_layers.mean_matrix, rot.all_layers.mean_matrix)
        assert np.array_equal(o.all_layers.row_matrices, rot.all_layers.row_matrices)
        assert other.significance == whole.significance


def test_spans_shard_with_their_sentences(client: Client, server) -> None:  # type: ignore[no-untyped-def]
    case = GOLDEN["cases"][3]["case"]
    spans = {k: [tuple(s) for s in case[k]] * 3 for k in ("target_spans", "non_target_spans")}
    sentences = GOLDEN["sentences"] * 3
    one = client.analyze(sentences, None, sub_token="mean", **spans)
    with Cluster([server.address], chunk_size=2, timeout=120) as cluster:
        sharded = cluster.analyze(sentences, None, sub_token="mean", **spans)
    assert np.array_equal(sharded.rotations.angles, one.rotations.angles)
    assert sharded.rotations.sentences == one.rotations.sentences


def test_spans_from_tokenize(client: Client) -> None:
    """Tokenize's character offsets give spans: " her" of "Zoë told her twice." and the token before."""
    text = "Zoë told her twice."
    tokens = client.tokenize([text])[0]
    assert tokens.char_offsets[0][0] == 0 and tokens.char_offsets[-1][1] == len(text)
    her = tokens.tokens.index("Ġher")
    span, before = tokens.char_offsets[her], tokens.char_offsets[her - 1]
    assert text[span[0] : span[1]] == " her"
    result = client.rotations([text], None, target_spans=[span], non_target_spans=[before])
    assert result.sentences[0].target_tokens == (her, her + 1)
    assert np.array_equal(result.angles, client.rotations([text], " her").angles)


def test_selection_errors(client: Client) -> None:
    sentences = ["I saw her at the market.", "Nakamura met her twice."]
    with pytest.raises(RotationsError) as caught:
        client.analyze(sentences, None, target_spans=[(6, 9), (0, 4)])
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert 'sentence 1 ("Nakamura met her twice.")' in caught.value.message
    assert "token boundaries" in caught.value.message
    with pytest.raises(RotationsError) as caught:
        client.analyze(sentences, " her", occurrence=2)
    assert "sentence 0" in caught.value.message and "occurrence 2" in caught.value.message
    for bad, message in [
        (dict(occurrence=0), "count from 1"),
        (dict(occurrence="second"), "occurrence must be"),
        (dict(sub_token="middle"), "sub_token must be"),
        (dict(row_matrices=True), "needs all_layers"),
        (dict(target=None), "target_spans"),
        (dict(target=None, target_spans=[(0, 1)]), "1 spans for 2 sentences"),
        (dict(target_spans=[(6, 9), (0, 8)]), "not both"),
        (dict(target=None, target_spans=[(6, 9), (3, 3)]), "non-empty"),
    ]:
        keywords: Dict[str, Any] = {"target": " her", **bad}
        with pytest.raises(ValueError, match=message):
            client.analyze(sentences, **keywords)
