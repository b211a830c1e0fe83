"""Cluster trusts nothing it did not check, and fails over to the end: replicas that lie (a proxy
rewrites their answers) are found out and left out; a failing last chunk, INTERNAL and UNKNOWN fail
over; a frozen replica does not hang the run; a replica with other weights is left out."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import List

import grpc
import pytest

from rotations_client import Client, Cluster, RotationsError

from . import tamper
from .conftest import MODEL_DIR, run_server
from .test_cluster import FAST, assert_identical, numbered

LIAR_HOST, SECOND_PROXY_HOST = "127.0.0.6", "127.0.0.7"


@pytest.fixture(scope="module")
def small(sentences: List[str]) -> List[str]:
    return numbered(sentences, 30)


@pytest.fixture(scope="module")
def small_reference(replicas, small):  # type: ignore[no-untyped-def]
    with Client(replicas[0].address, timeout=120) as one:
        return one.analyze(small, " her")


@pytest.mark.parametrize(
    "how, why",
    [
        (tamper.truncate_layers, "statistics: 3 layers, the model has 6"),
        (tamper.double_n, "statistics[0]: n = 6, but 3 rows came"),
        (tamper.drop_last_rows, "rows stop before sentence"),
        (tamper.other_model, "model 'another-model', not 'gpt2-tiny-random'"),
    ],
)
def test_a_replica_whose_answers_are_wrong_is_left_out_and_never_merged(replicas, small, small_reference, how, why) -> None:  # type: ignore[no-untyped-def]
    with tamper.Proxy(LIAR_HOST, replicas[1].address, tamper=how) as liar:
        # With an honest replica beside it: the run completes, its result exact.
        with Cluster([liar.address, replicas[0].address], chunk_size=3, timeout=60, retry=FAST) as cluster:
            assert_identical(cluster.analyze(small, " her"), small_reference)
            assert cluster.stats.chunks.get(liar.address, 0) == 0, dict(cluster.stats.chunks)
            assert cluster.stats.failures[liar.address] >= 1
            assert liar.address in cluster.stats.dropped_replicas
        # Alone: a clear error that says what was wrong.
        with Cluster([liar.address], chunk_size=3, timeout=60, retry=FAST) as cluster:
            with pytest.raises(RotationsError) as raised:
                cluster.analyze(small, " her")
    message = str(raised.value)
    assert "no replica left to compute chunk" in message and why in message, message


def test_the_last_chunk_failing_internal_or_unknown_goes_to_another_replica(replicas, small, small_reference) -> None:  # type: ignore[no-untyped-def]
    """Whichever replica takes the last chunk first fails it: one always (INTERNAL), one once
    (UNKNOWN). Its workers must not have left: the chunk goes to the other, the run completes."""
    end = len(small)
    always = tamper.fail_corpus_end(end, grpc.StatusCode.INTERNAL)
    once = tamper.fail_corpus_end(end, grpc.StatusCode.UNKNOWN, times=1)
    with tamper.Proxy(LIAR_HOST, replicas[0].address, fail=always) as a, tamper.Proxy(
        SECOND_PROXY_HOST, replicas[1].address, fail=once
    ) as b:
        with Cluster([a.address, b.address], chunk_size=3, timeout=60, retry=FAST) as cluster:
            assert_identical(cluster.analyze(small, " her"), small_reference)
            assert sum(cluster.stats.failures.values()) >= 1, dict(cluster.stats.failures)
            assert sum(cluster.stats.chunks.values()) == 10


def test_a_replica_with_other_weights_is_left_out_not_the_run(replicas, small, small_reference, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    """The bundled model with another weights fingerprint recorded, listed first: the model most
    replicas serve is the run's; the odd one is left out with a warning."""
    other = tmp_path_factory.mktemp("other-weights")
    for name in ["model.onnx", "tokenizer.json"]:
        os.symlink(MODEL_DIR / name, other / name)
    manifest = json.loads((MODEL_DIR / "model.json").read_text())
    manifest["weights_sha256"] = "0" * 64
    (other / "model.json").write_text(json.dumps(manifest))
    with run_server(tmp_path_factory, ["--threads", "1"], model_dir=other) as odd:
        addresses = [odd.address, replicas[0].address, replicas[1].address]
        with Cluster(addresses, chunk_size=3, timeout=60, retry=FAST) as cluster:
            assert_identical(cluster.analyze(small, " her"), small_reference)
            assert odd.address not in cluster.replicas
            assert cluster.stats.chunks.get(odd.address, 0) == 0


def test_a_frozen_replica_does_not_hang_the_run(replicas, sentences: List[str], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """One of two replicas is stopped (SIGSTOP: its connections stay open, silent) once the run is
    under way; with the default timeout (none given) the keepalive finds it and its chunks go to
    the other. A replica of its own, so that the session's replicas are not left stopped."""
    from .conftest import start_replicas

    corpus = numbered(sentences, 240)
    (frozen,) = start_replicas([SECOND_PROXY_HOST], tmp_path)
    try:
        with Client(replicas[0].address, timeout=120) as one:
            reference = one.analyze(corpus, " her")
        stopped = threading.Event()

        def lazily():  # type: ignore[no-untyped-def]
            for i, s in enumerate(corpus):
                if i == 60:
                    os.kill(frozen.process.pid, signal.SIGSTOP)
                    stopped.set()
                yield s

        started = time.monotonic()
        with Cluster([replicas[0].address, frozen.address], chunk_size=3, retry=FAST) as cluster:
            got = cluster.analyze(lazily(), " her")
            failures = cluster.stats.failures[frozen.address]
        assert stopped.is_set()
        assert_identical(got, reference)
        assert failures >= 1, "the frozen replica's chunks failed over"
        assert time.monotonic() - started < 170, "found by the keepalive, not a long deadline"
    finally:
        os.kill(frozen.process.pid, signal.SIGCONT)
        frozen.stop()
