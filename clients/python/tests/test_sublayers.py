"""Inside the layer on the bundled models/llama-tiny-random-sublayers: steps="sublayers" and norms=True
through the client, against PyTorch forward hooks (tests/golden/llama_sublayers.json, made by
tools/make_golden_sublayers.py) and scipy; streamed equals Analyze; a model without sub-layer states
answers FAILED_PRECONDITION."""

from __future__ import annotations

import json
from typing import Iterator

import grpc
import numpy as np
import pytest

from rotations_client import Client, Cluster, RotationsError

from .conftest import REPO, run_server

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


def test_a_model_without_sublayer_states_is_a_failed_precondition(tmp_path_factory: pytest.TempPathFactory) -> None:
    with run_server(tmp_path_factory, model_dir=REPO / "models" / "llama-tiny-random") as srv, Client(srv.address, timeout=60) as c:
        with pytest.raises(RotationsError) as refused:
            c.analyze(GOLDEN["sentences"], " her", steps="sublayers")
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "--sublayers" in refused.value.message
    with pytest.raises(ValueError, match="steps"):
        Client("127.0.0.1:1").analyze(["x"], " her", steps="attention")


def test_the_cluster_refuses_what_it_does_not_merge_yet() -> None:
    with pytest.raises(ValueError, match="Cluster does not merge"):
        list(Cluster(["127.0.0.1:1"]).stream_rotations(["I saw her."], " her", steps="sublayers"))


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
