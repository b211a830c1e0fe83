"""Every wrapper method against the real server, and its numbers against the Rust CLI's CSV output."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
from pathlib import Path
from typing import Dict, List

import grpc
import numpy as np
import pytest

from rotations_client import (
    CONDITIONS,
    Analysis,
    Client,
    RotationChunk,
    RotationResult,
    RotationsError,
    SignificanceResult,
    collect_stream,
    read_angles_csv,
)

from .conftest import MODEL_DIR, REPO, SENTENCES_FILE, Server

HER = 607  # GPT-2's id of " her"
MODEL = json.loads((MODEL_DIR / "model.json").read_text())
LAYERS = MODEL["num_layers"]
RTOL = 1e-5  # float32 printed by Rust's shortest round-trip formatting, compared relatively


@pytest.fixture(scope="module")
def cli_output(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`rotations analyze` on the notebook's sentences: the server's own CSV for the same request."""
    out = tmp_path_factory.mktemp("cli")
    subprocess.run(
        [
            str(server.binary),
            "analyze",
            "--server",
            server.url,
            "--sentences",
            str(SENTENCES_FILE),
            "--target",
            " her",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        cwd=REPO,
        timeout=300,
    )
    return out


def read_csv(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- GetModelInfo, Tokenize ---------------------------------------------------------------------------


def test_model_info(client: Client) -> None:
    info = client.model_info()
    assert info.model_name == MODEL["name"]
    assert info.num_layers == LAYERS
    assert info.num_hidden_states == LAYERS + 1
    assert info.hidden_size == MODEL["hidden_size"]
    assert info.vocab_size == MODEL["vocab_size"]
    assert info.max_positions == MODEL["max_positions"]
    assert info.dtype == MODEL["dtype"]
    assert info.execution_provider == "cpu"
    assert info.source == MODEL["source"]


def test_wait_ready_returns_model_info(client: Client) -> None:
    assert client.wait_ready(timeout=10).num_layers == LAYERS


def test_tokenize(client: Client) -> None:
    her, sentence = client.tokenize([" her", "I saw her at the market."])
    assert her.ids == (HER,)
    assert len(her) == 1
    assert sentence.ids.index(HER) == 2
    assert len(sentence.ids) == len(sentence.tokens) == len(sentence.offsets)
    raw = sentence.text.encode("utf-8")
    assert b"".join(raw[a:b] for a, b in sentence.offsets) == raw
    assert raw[slice(*sentence.offsets[2])] == b" her"


def test_tokenize_empty_list(client: Client) -> None:
    assert client.tokenize([]) == []


# -- ComputeRotations -------------------------------------------------------------------------------


def test_rotations_shape_and_reports(client: Client, sentences: List[str]) -> None:
    result = client.rotations(sentences, target=" her")
    assert isinstance(result, RotationResult)
    assert result.angles.shape == (LAYERS, len(sentences), 3)  # the notebook's `angles`
    assert result.angles.dtype == np.float32
    assert (result.num_layers, result.num_sentences) == (LAYERS, len(sentences))
    assert result.conditions == CONDITIONS
    assert result.unit == "degrees"
    assert result.model_name == MODEL["name"]
    assert result.target_token_id == HER
    assert result.shuffle_seed == 20250901
    assert np.all((result.angles >= 0) & (result.angles <= 180))
    np.testing.assert_allclose(result.layer_means, result.angles.astype(np.float64).mean(axis=1), rtol=1e-5)

    # Positions: the notebook's targidx = ids.index(target_token), non-target the token before.
    tokenized = client.tokenize(sentences)
    assert [r.index for r in result.sentences] == list(range(len(sentences)))
    for report, tok in zip(result.sentences, tokenized):
        assert report.num_tokens == len(tok.ids)
        assert report.target_position == tok.ids.index(HER)
        assert report.non_target_position == report.target_position - 1

    # Shuffle draws: [layers, sentences, (layer_v, position_v, layer_u, position_u)], real tokens only.
    draws = result.shuffle_draws
    assert draws.shape == (LAYERS, len(sentences), 4)
    assert draws[..., [0, 2]].min() >= 1 and draws[..., [0, 2]].max() <= LAYERS
    num_tokens = np.array([r.num_tokens for r in result.sentences])
    assert np.all(draws[..., 1] < num_tokens) and np.all(draws[..., 3] < num_tokens)


def test_rotations_match_the_cli_csv(client: Client, sentences: List[str], cli_output: Path) -> None:
    import pandas as pd

    result = client.rotations(sentences, target=" her")
    frame = read_angles_csv(cli_output / "angles.csv")
    assert list(frame.columns) == ["sentence", "occurrence", "layer", "condition", "angle"]
    assert len(frame) == LAYERS * len(sentences) * 3
    # By hand: the long table is row-major over (sentence, layer, condition).
    from_csv = frame.angle.to_numpy().reshape(len(sentences), LAYERS, 3).transpose(1, 0, 2)
    np.testing.assert_array_equal(result.angles, from_csv)
    assert list(frame.condition[:3]) == list(CONDITIONS)
    pd.testing.assert_frame_equal(frame, result.to_frame(), check_dtype=False)


def test_analyze_matches_the_cli(client: Client, sentences: List[str], cli_output: Path) -> None:
    analysis = client.analyze(sentences, target=" her")
    assert isinstance(analysis, Analysis)
    assert analysis.angles.shape == (LAYERS, len(sentences), 3)

    rows = read_csv(cli_output / "significance.csv")
    assert list(rows[0]) == list(analysis.tests_frame().columns), "the CLI's columns are tests_frame()'s"
    sig = analysis.significance
    assert [int(r["layer"]) for r in rows] == list(sig.layer) == list(range(1, LAYERS + 1))
    np.testing.assert_allclose(sig.t, [float(r["t"]) for r in rows], rtol=RTOL)
    np.testing.assert_allclose(sig.p, [float(r["p"]) for r in rows], rtol=RTOL)
    assert list(sig.significant) == [r["significant"] == "true" for r in rows]

    summary = json.loads((cli_output / "analysis.json").read_text())
    assert summary["model_name"] == analysis.rotations.model_name
    assert analysis.rotations.shuffle_seed == 20250901


def test_target_as_token_id_equals_target_as_text(client: Client, sentences: List[str]) -> None:
    by_text = client.rotations(sentences, target=" her")
    by_id = client.rotations(sentences, target=HER)
    by_numpy_id = client.rotations(sentences, target=np.uint32(HER))
    np.testing.assert_array_equal(by_text.angles, by_id.angles)
    np.testing.assert_array_equal(by_text.angles, by_numpy_id.angles)
    assert by_id.target_token_id == HER


def test_radians(client: Client, sentences: List[str]) -> None:
    degrees = client.rotations(sentences).angles
    radians = client.rotations(sentences, unit="radians")
    assert radians.unit == "radians"
    np.testing.assert_allclose(radians.angles, np.deg2rad(degrees.astype(np.float64)), rtol=RTOL)


def test_seed_changes_only_the_shuffled_control(client: Client, sentences: List[str]) -> None:
    a = client.rotations(sentences, seed=1)
    again = client.rotations(sentences, seed=1)
    b = client.rotations(sentences, seed=2)
    assert a.shuffle_seed == 1 and b.shuffle_seed == 2
    np.testing.assert_array_equal(a.angles, again.angles)
    np.testing.assert_array_equal(a.shuffle_draws, again.shuffle_draws)
    np.testing.assert_array_equal(a.angles[:, :, :2], b.angles[:, :, :2])
    assert not np.array_equal(a.shuffle_draws, b.shuffle_draws)


def test_non_target_offset(client: Client) -> None:
    result = client.rotations(["I saw her at the market."], non_target_offset=1)
    report = result.sentences[0]
    assert report.non_target_position == report.target_position + 1


# -- TestSignificance --------------------------------------------------------------------------------


def test_significance_of_returned_angles_equals_analyze(client: Client, sentences: List[str]) -> None:
    analysis = client.analyze(sentences)
    sig = client.significance(analysis.angles)
    assert isinstance(sig, SignificanceResult)
    assert len(sig.layers) == LAYERS
    assert sig.num_tests == LAYERS
    assert sig.correction == "bonferroni"
    assert sig.alpha == 0.05
    assert sig.threshold == pytest.approx(0.05 / LAYERS)
    assert (sig.condition_a, sig.condition_b) == (0, 1)
    # Analyze tests the unrounded angles; TestSignificance gets them as float32.
    np.testing.assert_allclose(sig.t, analysis.significance.t, rtol=RTOL)
    np.testing.assert_array_equal(sig.significant, analysis.significance.significant)
    # The result objects are accepted too.
    np.testing.assert_allclose(client.significance(analysis).t, sig.t, rtol=1e-12)
    np.testing.assert_allclose(client.significance(analysis.rotations).t, sig.t, rtol=1e-12)
    # Direction agrees with the sign of t where significant.
    for test in sig.layers:
        expected = "not_significant" if not test.significant else ("a_greater" if test.t > 0 else "b_greater")
        assert test.direction == expected


def test_significance_options(client: Client, sentences: List[str]) -> None:
    angles = client.rotations(sentences).angles
    sig = client.significance(
        angles, condition_a="target", condition_b=2, alpha=0.01, correction="holm", num_tests=LAYERS + 1
    )
    assert (sig.condition_a, sig.condition_b, sig.alpha, sig.correction) == (0, 2, 0.01, "holm")
    # Matches a paired t-test computed here: t = mean(d) / (sd(d) / sqrt(n)).
    d = angles[:, :, 0].astype(np.float64) - angles[:, :, 2].astype(np.float64)
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / np.sqrt(d.shape[1]))
    np.testing.assert_allclose(sig.t, t, rtol=1e-6)
    # The notebook's Bonferroni divisor (n_hiddens = layers + 1) can be reproduced.
    notebook = client.significance(angles, num_tests=LAYERS + 1)
    assert notebook.threshold == pytest.approx(0.05 / (LAYERS + 1))


def test_significance_on_a_plain_list(client: Client) -> None:
    angles = [[[10.0, 5.0, 80.0], [11.0, 5.5, 81.0], [12.0, 4.0, 79.0]]]  # 1 layer, 3 sentences
    sig = client.significance(angles)
    assert len(sig.layers) == 1 and sig.t[0] > 0


# -- StreamRotations --------------------------------------------------------------------------------


def test_stream_rotations_chunks_in_order(client: Client, sentences: List[str]) -> None:
    corpus = sentences * 3  # 162 sentences: several chunks of --max-batch-sentences (64)
    chunks = list(client.stream_rotations(corpus))
    assert all(isinstance(c, RotationChunk) for c in chunks)
    *parts, last = chunks
    assert len(parts) >= 2
    assert last.last and not any(p.last for p in parts)
    assert [p.first_sentence for p in parts] == list(np.cumsum([0] + [p.angles.shape[1] for p in parts[:-1]]))
    assert [p.progress.done for p in parts] == list(np.cumsum([p.angles.shape[1] for p in parts]))
    assert last.progress.done == last.progress.total == len(corpus)
    assert len(last.statistics) == LAYERS and all(s.n == len(corpus) for s in last.statistics)
    assert last.model_name == MODEL["name"] and last.target_token_id == HER

    streamed = collect_stream(iter(chunks))
    unary = client.analyze(corpus)
    np.testing.assert_allclose(streamed.angles, unary.angles, rtol=RTOL)
    np.testing.assert_array_equal(streamed.rotations.shuffle_draws, unary.rotations.shuffle_draws)
    assert streamed.rotations.sentences == unary.rotations.sentences
    np.testing.assert_allclose(streamed.rotations.layer_means, unary.rotations.layer_means, rtol=RTOL)
    np.testing.assert_allclose(streamed.significance.t, unary.significance.t, rtol=1e-6)
    # The merged sufficient statistics give the same mean differences.
    np.testing.assert_allclose(
        [s.mean for s in last.statistics], [t.mean_difference for t in unary.significance.layers], rtol=1e-6
    )


def test_stream_rotations_can_stop_early(client: Client, sentences: List[str]) -> None:
    stream = client.stream_rotations(sentences * 3)
    first = next(stream)
    assert first.first_sentence == 0 and first.angles.shape[0] == LAYERS
    stream.close()  # cancels the call; the client keeps working
    assert client.model_info().num_layers == LAYERS


# -- errors -----------------------------------------------------------------------------------------


def test_sentence_without_target_names_the_sentence(client: Client) -> None:
    with pytest.raises(RotationsError) as caught:
        client.rotations(["I saw her at the market.", "No pronoun in this one.", "We invited her."])
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.code_name == "INVALID_ARGUMENT"
    assert "sentence 1" in error.message
    assert error.rpc == "ComputeRotations"
    assert "sentence 1" in str(error) and "INVALID_ARGUMENT" in str(error)


@pytest.mark.parametrize("method", ["analyze", "stream"])
def test_errors_from_analyze_and_stream(client: Client, method: str) -> None:
    bad = ["I saw her at the market.", "Nothing here."]
    with pytest.raises(RotationsError) as caught:
        if method == "analyze":
            client.analyze(bad)
        else:
            list(client.stream_rotations(bad))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "sentence 1" in caught.value.message


def test_multi_token_target_is_invalid_argument(client: Client) -> None:
    with pytest.raises(RotationsError) as caught:
        client.rotations(["I saw her at the market."], target=" market place")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_significance_error_propagates(client: Client) -> None:
    with pytest.raises(RotationsError) as caught:
        client.significance(np.zeros((2, 3, 3), dtype=np.float32), condition_b=7)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("method", ["analyze", "stream"])
def test_one_sentence_gives_rotations_and_the_reason_for_no_significance(client: Client, method: str) -> None:
    one = ["I saw her at the market."]
    analysis = client.analyze(one) if method == "analyze" else collect_stream(client.stream_rotations(one))
    assert analysis.rotations.angles.shape[1] == 1
    assert analysis.significance is None
    assert "at least 2 sentences" in analysis.significance_error


def test_constant_differences_are_flagged_like_scipy(client: Client) -> None:
    angles = np.zeros((2, 4, 3), dtype=np.float32)
    angles[:, :, 1] = [10.0, 11.25, 12.5, 13.75]
    angles[0, :, 0] = angles[0, :, 1] + 0.5  # constant difference: t = +inf, p = 0 (scipy.stats.ttest_rel)
    angles[1, :, 0] = angles[1, :, 1] + np.array([0.25, 1.0, 0.5, 2.0], dtype=np.float32)
    result = client.significance(angles)
    flagged, ordinary = result.layers
    assert flagged.flag == "zero_variance" and flagged.t == np.inf and flagged.p == 0.0
    assert not flagged.significant and np.isnan(flagged.p_adjusted)
    assert ordinary.flag == "" and ordinary.t == pytest.approx(2.422718559261745, rel=1e-6)


def test_client_side_argument_errors(client: Client) -> None:
    with pytest.raises(TypeError):
        client.rotations("I saw her.")  # one string, not a list of sentences
    with pytest.raises(TypeError):
        client.rotations(["I saw her."], target=True)
    with pytest.raises(TypeError):
        client.rotations(["I saw her."], target=6.07)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unit"):
        client.rotations(["I saw her."], unit="furlongs")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="correction"):
        client.significance(np.zeros((1, 3, 3)), correction="sidak")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="condition"):
        client.significance(np.zeros((1, 3, 3)), condition_a="other")
    with pytest.raises(ValueError, match="layers, sentences"):
        client.significance(np.zeros((3, 3)))


def test_unreachable_server_is_unavailable() -> None:
    with socket.socket() as s:  # a port nothing listens on: bound, then released
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Client(f"127.0.0.1:{port}", timeout=5) as c:
        with pytest.raises(RotationsError) as caught:
            c.model_info()
    assert caught.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_context_manager_closes_the_channel(server: Server) -> None:
    with Client(server.url) as c:  # the CLI's http:// form is accepted too
        assert c.model_info().num_layers == LAYERS
        assert not c.closed
    assert c.closed
    with pytest.raises(ValueError, match="closed"):
        c.model_info()
    c.close()  # idempotent



def test_grpc_core_logs_stay_off_stderr_unless_asked() -> None:
    """A failing call prints nothing from gRPC's C core; GRPC_VERBOSITY set by the user is kept."""
    import os
    import sys

    script = (
        "import os, rotations_client\n"
        "print(os.environ['GRPC_VERBOSITY'])\n"
        "try:\n"
        "    rotations_client.Client('127.0.0.1:1', timeout=2).model_info()\n"
        "except rotations_client.RotationsError as e:\n"
        "    print(e.code_name)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    quiet = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert quiet.stdout.split() == ["NONE", "UNAVAILABLE"], quiet.stdout + quiet.stderr
    assert quiet.stderr == "", quiet.stderr
    asked = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env={**env, "GRPC_VERBOSITY": "info"}, timeout=60
    )
    assert asked.stdout.split()[0] == "info" and asked.stderr, asked.stdout + asked.stderr
