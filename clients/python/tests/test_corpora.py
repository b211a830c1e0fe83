"""Real corpora (issue 25): every invalid sentence on the exception, skip_invalid alike on one server
and over three replicas (equal to the valid sentences alone at their corpus indices), tidy pandas
tables, a fast "no server" answer, and serve() starting and stopping a local server."""

from __future__ import annotations

import time
from typing import List

import numpy as np
import pytest

from rotations_client import Client, Cluster, RotationsError, serve, stream_frame

from .conftest import MODEL_DIR, REPO, _binary


def corpus(sentences: List[str], n: int, bad: List[int]) -> List[str]:
    return [f"{i}. Nobody was there." if i in bad else f"{i}. {sentences[i % len(sentences)]}" for i in range(n)]


def test_every_invalid_sentence_is_listed_on_the_exception(client: Client, sentences: List[str]) -> None:
    bad = [1, 4, 5]
    with pytest.raises(RotationsError) as caught:
        client.analyze(corpus(sentences, 8, bad), " her")
    error = caught.value
    assert error.code_name == "INVALID_ARGUMENT" and error.invalid_count == 3
    assert [s.index for s in error.invalid_sentences] == bad
    assert [s.field for s in error.invalid_sentences] == ["sentences[1]", "sentences[4]", "sentences[5]"]
    assert {s.code for s in error.invalid_sentences} == {"TARGET_NOT_FOUND"}
    assert error.invalid_sentences[0].text == "1. Nobody was there."
    assert 'target token 607 " her" not found' in error.invalid_sentences[0].reason
    assert error.message.startswith("3 of 8 sentences are invalid")


def test_a_cluster_lists_every_invalid_sentence_of_the_corpus_as_one_client_does(
    client: Client, replicas, sentences: List[str]  # type: ignore[no-untyped-def]
) -> None:
    bad = [2, 9, 10, 31, 47, 58]  # in five different chunks of 7
    texts = corpus(sentences, 60, bad)
    with pytest.raises(RotationsError) as one:
        client.analyze(texts, " her")
    with Cluster([r.address for r in replicas], chunk_size=7, timeout=120) as cluster, pytest.raises(RotationsError) as sharded:
        cluster.analyze(iter(texts), " her")
    listed = lambda e: [(s.index, s.field, s.code, s.reason, s.text) for s in e.invalid_sentences]  # noqa: E731
    assert [s.index for s in sharded.value.invalid_sentences] == bad
    assert listed(sharded.value) == listed(one.value.with_texts(type("R", (), {"sentences": texts})()))
    assert sharded.value.invalid_count == one.value.invalid_count == len(bad)
    assert sharded.value.code_name == "INVALID_ARGUMENT"
    assert sharded.value.message.startswith("6 of 60 sentences are invalid")


def test_skipping_equals_the_valid_sentences_alone_and_sharding_changes_nothing(
    client: Client, replicas, sentences: List[str]  # type: ignore[no-untyped-def]
) -> None:
    bad = [0, 9, 10, 33]
    texts = corpus(sentences, 40, bad)
    got = client.analyze(texts, " her", skip_invalid=True)
    assert [(s.index, s.reason) for s in got.skipped] == [(i, "TARGET_NOT_FOUND") for i in bad]
    # Reference: each valid sentence alone, at its corpus index (the shuffled draws keyed by it).
    valid = [i for i in range(40) if i not in bad]
    for k, i in enumerate(valid[:6]):
        alone = client.stream_rotations([texts[i]], " her", first_sentence_index=i)
        rows = [c for c in alone if not c.last][0]
        np.testing.assert_array_equal(got.angles[:, k], rows.angles[:, 0])
        np.testing.assert_array_equal(got.rotations.shuffle_draws[:, k], rows.shuffle_draws[:, 0])
    # Chunks of one sentence: four chunks have every sentence skipped (no rows at all).
    for chunk_size in (7, 1):
        with Cluster([r.address for r in replicas], chunk_size=chunk_size, timeout=120) as cluster:
            sharded = cluster.analyze(iter(texts), " her", skip_invalid=True)
        assert sharded.skipped == got.skipped
        np.testing.assert_array_equal(sharded.angles, got.angles)
        assert sharded.significance == got.significance
    # With all_layers too: pieces with no rows send no mean matrix, and the merge is one server's.
    with Cluster([r.address for r in replicas], chunk_size=1, timeout=120) as cluster:
        sharded = cluster.analyze(iter(texts), " her", skip_invalid=True, all_layers=True)
    whole = client.analyze(texts, " her", skip_invalid=True, all_layers=True)
    np.testing.assert_array_equal(sharded.rotations.all_layers.mean_matrix, whole.rotations.all_layers.mean_matrix)
    with pytest.raises(RotationsError, match="only 1 of 3 sentences are valid"):
        client.analyze(corpus(sentences, 3, [0, 2]), " her", skip_invalid=True)


def test_to_frame_is_a_tidy_long_table(client: Client, sentences: List[str]) -> None:
    analysis = client.analyze(corpus(sentences, 5, [2]), " her", skip_invalid=True)
    frame = analysis.to_frame()
    assert list(frame.columns) == ["sentence", "occurrence", "layer", "condition", "angle"]
    layers = analysis.angles.shape[0]
    assert len(frame) == layers * 4 * 3 and 2 not in set(frame.sentence)
    one = frame[(frame.sentence == 3) & (frame.layer == 2) & (frame.condition == "non_target")].angle
    row = [r.index for r in analysis.rotations.sentences].index(3)
    assert one.item() == analysis.angles[1, row, 1]
    tests = analysis.tests_frame()
    assert list(tests.layer) == list(range(1, layers + 1)) and "p_adjusted" in tests.columns


def test_a_streams_frame_equals_the_one_shot_frame_and_pandas_means_equal_the_layer_means(
    client: Client, replicas, sentences: List[str]  # type: ignore[no-untyped-def]
) -> None:
    import pandas as pd

    texts = corpus(sentences, 30, [3, 17])
    whole = client.analyze(texts, " her", skip_invalid=True)
    frame = whole.to_frame()
    streamed = stream_frame(client.stream_rotations(texts, " her", skip_invalid=True))
    pd.testing.assert_frame_equal(streamed, frame)
    with Cluster([r.address for r in replicas], chunk_size=7, timeout=120) as cluster:
        sharded = stream_frame(cluster.stream_rotations(iter(texts), " her", skip_invalid=True))
    pd.testing.assert_frame_equal(sharded, frame)
    # pandas' own groupby means against the server's layer means (float64 means rounded to float32).
    means = frame.groupby(["layer", "condition"], sort=False).angle.apply(lambda a: a.astype(np.float64).mean())
    np.testing.assert_allclose(means.to_numpy().reshape(-1, 3), whole.rotations.layer_means, rtol=1e-6)


def test_the_all_layers_frame_is_the_mean_matrix_in_long_form(client: Client, sentences: List[str]) -> None:
    all_layers = client.rotations(sentences[:6], " her", all_layers=True).all_layers
    frame = all_layers.to_frame()
    assert list(frame.columns) == ["from_layer", "to_layer", "condition", "angle"]
    states = all_layers.mean_matrix.shape[0]
    want = [(i, j, "target", all_layers.mean_matrix[i, j]) for i in range(states) for j in range(states)]
    assert list(zip(frame.from_layer, frame.to_layer, frame.condition, frame.angle)) == want


def test_no_server_fails_within_seconds_and_serve_starts_one() -> None:
    started = time.monotonic()
    with Client("127.0.0.1:1") as nobody, pytest.raises(RotationsError, match="no server at .* `rotations serve` running"):
        nobody.wait_ready(timeout=60)
    assert time.monotonic() - started < 20, "fails within seconds, not after the whole timeout"
    ort = ["--ort-library", str(REPO / ".ort" / "lib" / "libonnxruntime.so")]
    with pytest.raises(RuntimeError, match="rotations serve exited with status 1"):
        with serve(MODEL_DIR / "missing", binary=_binary(), args=ort):
            pass
    with serve(MODEL_DIR, binary=_binary(), args=ort) as local:
        assert local.model_info().num_layers == 6
        address = local.address
    with Client(address) as after, pytest.raises(RotationsError):
        after.model_info(timeout=5)
