"""Inside the layer on the bundled models/llama-tiny-random-sublayers: steps="sublayers" and norms=True
through the client, against PyTorch forward hooks (tests/golden/llama_sublayers.json, made by
tools/make_golden_sublayers.py) and scipy; streamed equals Analyze; a model without sub-layer states
answers FAILED_PRECONDITION; a Cluster of three replicas (one killed halfway) gives the one Client's
step angles, step tests and norms bit for bit, and leaves out a replica whose step angles do not fit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, List

import grpc
import numpy as np
import pytest

from rotations_client import Analysis, Client, Cluster, RotationsError
from rotations_client.client import collect_stream

from . import tamper
from .conftest import REPLICA_HOSTS, REPO, Replica, run_server, start_replicas
from .test_cluster import FAST, assert_identical, numbered
from .test_cluster_trust import LIAR_HOST

SUBLAYERS_DIR = REPO / "models" / "llama-tiny-random-sublayers"
GOLDEN = json.loads((REPO / "tests" / "golden" / "llama_sublayers.json").read_text())


@pytest.fixture(scope="module")
def sub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    with run_server(tmp_path_factory, model_dir=SUBLAYERS_DIR) as srv, Client(srv.address, timeout=120) as c:
        yield c


def test_step_angles_norms_and_tests_equal_pytorch_hooks(sub: Client) -> None:
    assert sub.model_info().sublayers
    analysis = sub.analyze(GOLDEN["sentences"], " her", steps="sublayers", norms=True)
    steps = analysis.rotations.sublayers
    want = np.array([row["steps_deg"] for row in GOLDEN["rows"]])  # [rows, L, 2, 2]
    np.testing.assert_allclose(steps.angles.transpose(2, 0, 1, 3), want, atol=1e-4, rtol=0)
    assert steps.layer_means.shape == (4, 2, 2)
    norms = np.array([row["norms"] for row in GOLDEN["rows"]])  # [rows, states, 2]
    np.testing.assert_allclose(analysis.rotations.norms.norms.transpose(1, 0, 2), norms, rtol=1e-5)
    tests = analysis.step_significance
    assert tests.num_tests == 8 and len(analysis.step_statistics) == 8
    np.testing.assert_allclose([t.t for t in tests.layers], [t["t"] for t in GOLDEN["step_tests"]], rtol=1e-4)


def test_the_stream_gives_analyzes_step_tests_and_norms(sub: Client) -> None:
    sentences = GOLDEN["sentences"]
    whole = sub.analyze(sentences, " her", steps="sublayers", norms=True)
    chunks = list(sub.stream_rotations(sentences, " her", steps="sublayers", norms=True))
    last = chunks[-1]
    assert last.last and last.step_significance == whole.step_significance
    assert last.step_statistics == whole.step_statistics
    np.testing.assert_array_equal(last.norms.mean_norms, whole.rotations.norms.mean_norms)
    streamed = np.concatenate([c.sublayers.angles for c in chunks[:-1]], axis=2)
    np.testing.assert_array_equal(streamed, whole.rotations.sublayers.angles)
    # Reassembled (as Cluster does), the stream gives Analyze's steps and norms bit for bit.
    assert_same_inside(collect_stream(chunks), whole)


def test_a_model_without_sublayer_states_is_a_failed_precondition(tmp_path_factory: pytest.TempPathFactory) -> None:
    with run_server(tmp_path_factory, model_dir=REPO / "models" / "llama-tiny-random") as srv, Client(srv.address, timeout=60) as c:
        with pytest.raises(RotationsError) as refused:
            c.analyze(GOLDEN["sentences"], " her", steps="sublayers")
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "--sublayers" in refused.value.message
    with pytest.raises(ValueError, match="steps"):
        Client("127.0.0.1:1").analyze(["x"], " her", steps="attention")


def assert_same_inside(got: Analysis, want: Analysis) -> None:
    """Step angles, step tests, norms and growth (and their means and sums) equal, bit for bit."""
    assert_identical(got, want)
    g, w = got.rotations.sublayers, want.rotations.sublayers
    assert g is not None and w is not None
    for a, b in [(g.angles, w.angles), (g.layer_means, w.layer_means)]:
        assert a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32)), "step angles or means differ"
    assert g.condition_statistics == w.condition_statistics
    assert got.step_statistics == want.step_statistics
    assert got.step_significance == want.step_significance and len(want.step_significance.layers) == 8
    n, m = got.rotations.norms, want.rotations.norms
    assert n is not None and m is not None
    for a, b in [(n.norms, m.norms), (n.growth, m.growth), (n.mean_norms, m.mean_norms), (n.mean_growth, m.mean_growth)]:
        assert a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32)), "norms differ"
    assert (n.norm_statistics, n.growth_statistics) == (m.norm_statistics, m.growth_statistics)


@pytest.fixture(scope="module")
def sub_replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[List[Replica]]:
    started = start_replicas(REPLICA_HOSTS, tmp_path_factory.mktemp("sub-replicas"), model_dir=SUBLAYERS_DIR)
    try:
        yield started
    finally:
        for r in started:
            r.stop()


def test_cluster_steps_and_norms_equal_one_client_with_a_replica_killed_halfway(sub_replicas, sentences) -> None:  # type: ignore[no-untyped-def]
    corpus = numbered(sentences, 80)
    with Client(sub_replicas[0].address, timeout=120) as one:
        reference = one.analyze(corpus, " her", steps="sublayers", norms=True)
    victim = sub_replicas[2]

    def lazily() -> Iterator[str]:
        """The corpus read lazily; halfway through, one replica dies (SIGKILL)."""
        for i, s in enumerate(corpus):
            if i == len(corpus) // 2:
                victim.process.kill()
            yield s

    addresses = [r.address for r in sub_replicas]
    with Cluster(addresses, chunk_size=3, in_flight=2, timeout=60, retry=FAST) as cluster:
        got = cluster.analyze(lazily(), " her", steps="sublayers", norms=True)
        assert cluster.stats.failures[victim.address] >= 1, dict(cluster.stats.failures)
    assert_same_inside(got, reference)
    # The survivors alone, in other chunks, without failures: the same bits again.
    with Cluster(addresses[:2], chunk_size=7, timeout=60, retry=FAST) as cluster:
        assert_same_inside(cluster.analyze(corpus, " her", steps="sublayers", norms=True), reference)


def test_a_replica_whose_step_angles_do_not_fit_is_left_out(sub_replicas, sentences) -> None:  # type: ignore[no-untyped-def]
    corpus = numbered(sentences, 12)
    honest = sub_replicas[0].address
    with Client(honest, timeout=120) as one:
        reference = one.analyze(corpus, " her", steps="sublayers", norms=True)
    with tamper.Proxy(LIAR_HOST, honest, tamper=tamper.truncate_steps) as liar:
        with Cluster([liar.address, honest], chunk_size=3, timeout=60, retry=FAST) as cluster:
            assert_same_inside(cluster.analyze(corpus, " her", steps="sublayers", norms=True), reference)
            assert cluster.stats.chunks.get(liar.address, 0) == 0 and liar.address in cluster.stats.dropped_replicas
        with Cluster([liar.address], chunk_size=3, timeout=60, retry=FAST) as cluster:
            with pytest.raises(RotationsError) as raised:
                cluster.analyze(corpus, " her", steps="sublayers", norms=True)
    assert "step angle of shape [3, 2, 3, 2], not [4, 2, 3, 2]" in str(raised.value), raised.value


def test_cluster_compare_groups_gives_each_groups_steps_and_norms(sub_replicas, sentences) -> None:  # type: ignore[no-untyped-def]
    corpus = numbered(sentences, 16)
    groups = {"a": corpus[:7], "b": corpus[7:]}
    with Client(sub_replicas[0].address, timeout=120) as one:
        want = one.compare_groups(groups, " her", steps="sublayers", norms=True)
    with Cluster([r.address for r in sub_replicas[:2]], chunk_size=3, timeout=60, retry=FAST) as cluster:
        got = cluster.compare_groups(groups, " her", steps="sublayers", norms=True)
    assert got.tests == want.tests
    for g, w in zip(got.groups, want.groups):
        assert_same_inside(g, w)
def test_step_and_norm_frames_are_the_arrays_in_long_form(sub: Client) -> None:
    result = sub.rotations(GOLDEN["sentences"], " her", steps="sublayers", norms=True)
    steps, norms = result.sublayers, result.norms
    frame = steps.to_frame(result.sentences)
    assert list(frame.columns) == ["sentence", "occurrence", "layer", "step", "condition", "angle"]
    layers, _, rows, _ = steps.angles.shape
    # By hand: row-major over (row, layer, step, condition).
    want = [
        (result.sentences[r].index, l + 1, step, cond, steps.angles[l, k, r, c])
        for r in range(rows)
        for l in range(layers)
        for k, step in enumerate(("attention", "mlp"))
        for c, cond in enumerate(("target", "non_target"))
    ]
    got = list(zip(frame.sentence, frame.layer, frame.step, frame.condition, frame.angle))
    assert got == want
    means = frame.groupby(["layer", "step", "condition"], sort=False).angle.apply(lambda a: a.astype(np.float64).mean())
    np.testing.assert_allclose(means.to_numpy().reshape(layers, 2, 2), steps.layer_means, rtol=1e-6)

    norm_frame = norms.to_frame(result.sentences)
    assert list(norm_frame.columns) == ["sentence", "occurrence", "state", "condition", "norm"]
    states = norms.norms.shape[0]
    assert states == 2 * layers + 2
    names = list(norm_frame.state[: 2 * states : 2])
    assert names[0] == "hidden_0" and names[layers] == f"hidden_{layers}"
    assert names[layers + 1] == "resid_mid_1" and names[-1] == "final_block_output"
    np.testing.assert_array_equal(norm_frame.norm.to_numpy().reshape(rows, states, 2), norms.norms.transpose(1, 0, 2))


def test_analyze_with_vectors_out_keeps_the_steps_and_norms(sub: Client, tmp_path: Path) -> None:
    """vectors_out makes analyze stream; the stream's steps and norms are still collected, equal to
    Analyze's, and the files hold every state (hidden, resid_mid, final block output)."""
    want = sub.analyze(GOLDEN["sentences"], " her", steps="sublayers", norms=True)
    got = sub.analyze(GOLDEN["sentences"], " her", steps="sublayers", norms=True, vectors_out=tmp_path / "v.npy")
    assert_same_inside(got, want)
    layers = want.rotations.sublayers.angles.shape[0]
    assert np.load(tmp_path / "v.npy").shape[:2] == (len(GOLDEN["sentences"]), 2 * layers + 2)
