"""The vectors on disk (``vectors_out``, issue 26): the files a Client (one stream) and a Cluster (three
replicas) write hold the same bytes, equal the PyTorch reference (tests/golden/vectors, made by
tools/make_golden_vectors.py from the Hugging Face checkpoint) and the CLI's ``--vectors-out`` files;
float16 is numpy's rounding of float32; chosen states and conditions are slices; bad options are
named before any call."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import List

import numpy as np
import pytest

from rotations_client import Client, Cluster, RotationsError, VectorsOut

from .conftest import REPO, Replica, Server, _binary, _env

GOLDEN = REPO / "tests" / "golden" / "vectors"
SENTENCES = json.loads((GOLDEN / "vectors.json").read_text())["sentences"]


def corpus() -> List[str]:
    """Enough sentences for several chunks: the reference's, numbered."""
    return [f"{SENTENCES[i % len(SENTENCES)].rstrip('.')} ({i})" for i in range(13)]


def angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kahan's stable angle between the last axes' vectors, in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    ua = a / np.linalg.norm(a, axis=-1, keepdims=True)
    ub = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.degrees(2 * np.arctan2(np.linalg.norm(ua - ub, axis=-1), np.linalg.norm(ua + ub, axis=-1)))


def test_client_vectors_equal_pytorch(client: Client, tmp_path: Path) -> None:
    out = tmp_path / "v.npy"
    analysis = client.analyze(SENTENCES, " her", vectors_out=out)
    assert analysis.rotations.angles.shape[1] == len(SENTENCES)
    for condition, path in (("target", out), ("non_target", tmp_path / "v.non_target.npy")):
        got, want = np.load(path), np.load(GOLDEN / f"gpt2.{condition}.npy")
        assert got.shape == want.shape == (len(SENTENCES), 7, 32)
        assert angles_deg(got, want).max() <= 1e-4
        np.testing.assert_allclose(np.linalg.norm(got, axis=-1), np.linalg.norm(want.astype(np.float64), axis=-1), rtol=1e-5)


def test_client_and_cluster_write_the_same_bytes_as_the_cli_values(
    client: Client, server: Server, replicas: List[Replica], tmp_path: Path
) -> None:
    sentences = corpus()
    one, three = tmp_path / "one.npy", tmp_path / "three.npy"
    chunks = list(client.stream_rotations(sentences, " her", vectors_out=one))
    assert chunks[-1].last and sum(c.vectors is not None for c in chunks) >= 1
    with Cluster([r.address for r in replicas], chunk_size=4, timeout=120) as cluster:
        analysis = cluster.analyze(sentences, " her", vectors_out=three)
    assert analysis.rotations.angles.shape[1] == len(sentences)
    for a, b in ((one, three), (tmp_path / "one.non_target.npy", tmp_path / "three.non_target.npy")):
        assert a.read_bytes() == b.read_bytes()

    # The CLI's files (another writer, ndarray-npy's header) hold the same values.
    corpus_file = tmp_path / "sentences.txt"
    corpus_file.write_text("\n".join(sentences) + "\n")
    cli = tmp_path / "cli.npy"
    subprocess.run(
        [str(_binary()), "analyze", "--server", server.address, "--target", " her", "--sentences", str(corpus_file),
         "--out", str(tmp_path / "out"), "--vectors-out", str(cli)],
        check=True, env=_env(), cwd=REPO, capture_output=True,
    )
    np.testing.assert_array_equal(np.load(cli), np.load(one))
    np.testing.assert_array_equal(np.load(tmp_path / "cli.non_target.npy"), np.load(tmp_path / "one.non_target.npy"))

    # float16: numpy's rounding of the float32 values; chosen states in the order asked, one condition.
    half = tmp_path / "half.npy"
    client.analyze(sentences, " her", vectors_out=VectorsOut(half, dtype="float16", states=(6, 0, 3), conditions=("target",)))
    got = np.load(half)
    assert got.dtype == np.dtype("<f2") and not (tmp_path / "half.non_target.npy").exists()
    np.testing.assert_array_equal(got, np.load(one)[:, [6, 0, 3], :].astype(np.float16))


def test_bad_vector_options_are_named(client: Client, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ending in .npy"):
        client.analyze(SENTENCES, " her", vectors_out=tmp_path / "v.bin")
    with pytest.raises(ValueError, match="not by rotations"):
        client.rotations(SENTENCES, " her", vectors_out=tmp_path / "v.npy")
    with pytest.raises(ValueError, match="conditions"):
        client.analyze(SENTENCES, " her", vectors_out=VectorsOut(tmp_path / "v.npy", conditions=("shuffled",)))
    with pytest.raises(RotationsError, match=r"vectors.states\[0\]"):
        client.analyze(SENTENCES, " her", vectors_out=VectorsOut(tmp_path / "v.npy", states=(99,)))
    with pytest.raises(RotationsError, match="sub-layer") as failed:
        client.analyze(SENTENCES, " her", vectors_out=VectorsOut(tmp_path / "v.npy", states=(7,)))
    assert failed.value.code.name == "FAILED_PRECONDITION"
