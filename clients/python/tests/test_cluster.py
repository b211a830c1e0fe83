"""Cluster: a corpus sharded over three real replicas equals one server's Analyze, bit for bit, even
when a replica is killed halfway; the exact statistics merge like the server's; the .npy memory map."""

from __future__ import annotations

import hashlib
import socket
import threading
from pathlib import Path
from typing import Iterator, List

import numpy as np
import pytest
import scipy.stats

from rotations_client import Analysis, Client, Cluster, RetryPolicy
from rotations_client.cluster import resolve

from .conftest import MODEL_DIR, REPLICA_HOSTS, start_replicas

#: Fast failover for the tests (the default waits up to seconds between tries).
FAST = RetryPolicy(max_attempts=4, initial_backoff=0.02, max_backoff=0.2)


def numbered(sentences: List[str], n: int) -> List[str]:
    """n distinct sentences: the notebook's, numbered and cycled."""
    return [f"{i}. {sentences[i % len(sentences)]}" for i in range(n)]


def assert_identical(got: Analysis, want: Analysis) -> None:
    """Angles, draws, reports, layer means and every t-test field equal, bit for bit."""
    g, w = got.rotations, want.rotations
    assert g.angles.shape == w.angles.shape
    assert np.array_equal(np.asarray(g.angles).view(np.uint32), w.angles.view(np.uint32)), "angles differ"
    assert np.array_equal(np.asarray(g.shuffle_draws), w.shuffle_draws), "shuffle draws differ"
    assert g.sentences == w.sentences
    assert (g.model_name, g.target_token_id, g.shuffle_seed, g.unit) == (
        w.model_name,
        w.target_token_id,
        w.shuffle_seed,
        w.unit,
    )
    assert got.significance == want.significance, "t-tests differ"


@pytest.fixture(scope="module")
def corpus(sentences: List[str]) -> List[str]:
    return numbered(sentences, 150)


@pytest.fixture(scope="module")
def reference(replicas, corpus) -> Analysis:  # type: ignore[no-untyped-def]
    """One server's Analyze of the whole corpus, in one request."""
    with Client(replicas[0].address, timeout=120) as one:
        return one.analyze(corpus, " her", correction="holm")


def test_cluster_equals_one_server_and_every_replica_serves(replicas, corpus, reference) -> None:  # type: ignore[no-untyped-def]
    with Cluster([r.address for r in replicas], chunk_size=7, timeout=120, retry=FAST) as cluster:
        info = cluster.model_info()
        assert info.weights_sha256 and len(info.weights_sha256) == 64
        got = cluster.analyze(iter(corpus), " her", correction="holm", progress=True)
        assert_identical(got, reference)
        served = dict(cluster.stats.chunks)
        assert set(served) == {r.address for r in replicas}, f"chunks per replica: {served}"
        assert all(count > 0 for count in served.values()), f"chunks per replica: {served}"
        assert sum(served.values()) == -(-len(corpus) // 7)
        assert sum(cluster.stats.failures.values()) == 0


def test_chunk_size_and_replica_count_do_not_matter(replicas, corpus, reference) -> None:  # type: ignore[no-untyped-def]
    for addresses, chunk_size in [([replicas[1].address], 64), ([r.address for r in replicas[:2]], 1)]:
        with Cluster(addresses, chunk_size=chunk_size, in_flight=3, timeout=120, retry=FAST) as cluster:
            assert_identical(cluster.analyze(corpus, " her", correction="holm"), reference)


def test_merged_exact_statistics_mirror_the_server_and_match_scipy(replicas, corpus, reference) -> None:  # type: ignore[no-untyped-def]
    with Cluster([r.address for r in replicas], chunk_size=11, timeout=120, retry=FAST) as cluster:
        chunks = list(cluster.stream_rotations(corpus, " her"))
    last = chunks[-1]
    assert last.last and last.first_sentence == len(corpus)
    assert [c.first_sentence for c in chunks[:-1]] == sorted(c.first_sentence for c in chunks[:-1])
    angles = reference.rotations.angles.astype(np.float64)
    for stats, test in zip(last.statistics, last.significance.layers):
        assert stats.n == len(corpus)
        # Python's mean, variance and t from the merged integers are the server's floats, bit for bit.
        assert stats.mean == test.mean_difference
        assert stats.variance**0.5 == test.sd_difference
        assert stats.t == test.t
        # And scipy on the (float32) angles agrees to float32 precision.
        want = scipy.stats.ttest_rel(angles[stats.layer - 1, :, 0], angles[stats.layer - 1, :, 1])
        assert stats.t == pytest.approx(want.statistic, rel=1e-5)
        assert test.p == pytest.approx(want.pvalue, rel=1e-4)


def test_angles_can_go_to_a_npy_memory_map(replicas, corpus, reference, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, text = tmp_path / "angles.npy", tmp_path / "corpus.txt"
    text.write_text("\n".join(corpus) + "\n", encoding="utf-8")
    with Cluster([r.address for r in replicas], chunk_size=16, timeout=120, retry=FAST) as cluster:
        with open(text, encoding="utf-8") as lines:  # a file, read lazily line by line
            got = cluster.analyze(lines, " her", correction="holm", angles_out=path)
    assert isinstance(got.rotations.angles.base, np.memmap) or isinstance(got.rotations.angles, np.memmap)
    assert_identical(got, reference)
    on_disk = np.load(path)
    assert on_disk.shape == (len(corpus), reference.rotations.num_layers, 3)
    assert np.array_equal(on_disk.transpose(1, 0, 2), reference.rotations.angles)
    assert np.array_equal(np.load(tmp_path / "angles.draws.npy").transpose(1, 0, 2), reference.rotations.shuffle_draws)


def test_a_replica_killed_halfway_changes_nothing(sentences, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    corpus = numbered(sentences, 240)
    replicas = start_replicas(REPLICA_HOSTS, tmp_path)
    try:
        with Client(replicas[0].address, timeout=120) as one:
            reference = one.analyze(corpus, " her")
        victim = replicas[2]
        killed = threading.Event()

        def lazily() -> Iterator[str]:
            """The corpus read lazily; halfway through, one replica dies (SIGKILL, by its PID)."""
            for i, s in enumerate(corpus):
                if i == len(corpus) // 2:
                    victim.process.kill()
                    killed.set()
                yield s

        with Cluster([r.address for r in replicas], chunk_size=5, in_flight=2, timeout=60, retry=FAST) as cluster:
            got = cluster.analyze(lazily(), " her", progress=True)
            stats = cluster.stats
        assert killed.is_set()
        assert_identical(got, reference)
        assert stats.failures[victim.address] >= 1, f"failures: {dict(stats.failures)}"
        assert stats.resent >= 1
        survivors = [r.address for r in replicas[:2]]
        assert all(stats.chunks[a] > 0 for a in survivors), f"chunks: {dict(stats.chunks)}"
    finally:
        for r in replicas:
            r.stop()


def test_weights_fingerprint_is_the_documented_sha256(replicas) -> None:  # type: ignore[no-untyped-def]
    digest = hashlib.sha256()
    for path in sorted(p for p in MODEL_DIR.iterdir() if p.name == "model.onnx" or p.name.startswith("model.onnx.")):
        digest.update(path.name.encode() + b"\0" + path.stat().st_size.to_bytes(8, "little") + path.read_bytes())
    with Client(replicas[0].address) as client:
        assert client.model_info().weights_sha256 == digest.hexdigest()


def test_dns_names_resolve_to_every_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(host, port, type=0):  # type: ignore[no-untyped-def]
        assert (host, port) == ("rotations-headless.default.svc", 50051)
        return [(socket.AF_INET, type, 6, "", (ip, port)) for ip in ["10.0.0.7", "10.0.0.5", "10.0.0.7"]]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    assert resolve("dns:///rotations-headless.default.svc:50051") == ["10.0.0.5:50051", "10.0.0.7:50051"]
    assert resolve(["a:1", "b:2"]) == ["a:1", "b:2"]
    with pytest.raises(ValueError):
        resolve("dns:///no-port")


def run_cli(servers: List[str], sentences_file: Path, out: Path) -> str:
    """`rotations analyze` with these --server values; returns its stderr."""
    import subprocess

    from .conftest import REPO, _binary, _env

    args = [str(_binary()), "analyze", "--sentences", str(sentences_file), "--target", " her", "--out", str(out)]
    args += ["--chunk-size", "9", "--correction", "holm"]
    for s in servers:
        args += ["--server", s]
    done = subprocess.run(args, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stderr


def assert_same_cli_output(got: Path, want: Path) -> None:
    import json

    for name in ["angles.csv", "significance.csv"]:
        assert (got / name).read_bytes() == (want / name).read_bytes(), name
    one, three = (json.loads((d / "analysis.json").read_text()) for d in [want, got])
    # Layer means are the one thing not compared: Analyze averages the float64 angles, a
    # reassembled stream their float32 wire values.
    one.pop("layer_means"), three.pop("layer_means")
    assert three == one


def test_cli_with_three_servers_equals_one_server(replicas, corpus, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`rotations analyze --server A --server B --server C` writes what one server's Analyze gives."""
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(corpus) + "\n", encoding="utf-8")
    run_cli([f"http://{replicas[0].address}"], text, tmp_path / "one")
    log = run_cli([f"http://{r.address}" for r in replicas], text, tmp_path / "three")
    assert_same_cli_output(tmp_path / "three", tmp_path / "one")
    for r in replicas:
        served = [line for line in log.splitlines() if line.startswith(f"replica http://{r.address}:")]
        assert served and not served[0].split(": ")[1].startswith("0 chunks"), log


def test_cli_with_a_dns_name_and_a_dead_address(server, replicas, corpus, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(corpus) + "\n", encoding="utf-8")
    run_cli([f"http://{replicas[0].address}"], text, tmp_path / "one")
    log = run_cli([f"dns:///localhost:{server.port}", "http://127.0.0.6:9"], text, tmp_path / "dns")
    assert "leaving out http://127.0.0.6:9" in log, log
    assert_same_cli_output(tmp_path / "dns", tmp_path / "one")


def test_a_dns_name_and_a_dead_address(server, sentences: List[str]) -> None:  # type: ignore[no-untyped-def]
    """dns:///localhost:PORT finds the replica; an address nobody answers on is left out."""
    corpus = numbered(sentences, 30)
    with Client(server.address, timeout=120) as one:
        reference = one.analyze(corpus, " her")
    with Cluster(f"dns:///localhost:{server.port}", chunk_size=8, timeout=60, retry=FAST) as cluster:
        assert cluster.replicas == [f"127.0.0.1:{server.port}"]
        assert_identical(cluster.analyze(corpus, " her"), reference)
    dead = "127.0.0.6:9"  # nothing listens there
    with Cluster([dead, server.address], chunk_size=8, timeout=60, retry=FAST) as cluster:
        assert_identical(cluster.analyze(corpus, " her"), reference)
        assert cluster.replicas == [server.address]


def test_cli_survives_a_replica_killed_halfway(sentences: List[str], tmp_path: Path) -> None:
    """The CLI over three replicas; once the third has computed some sentences (its metrics say
    so), it is killed by its PID: the same files, and its failures counted."""
    import re
    import subprocess
    import time
    import urllib.request

    from .conftest import REPO, _binary, _env

    corpus = numbered(sentences, 400)
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(corpus) + "\n", encoding="utf-8")
    with socket.socket() as s:
        s.bind((REPLICA_HOSTS[2], 0))
        metrics_port = s.getsockname()[1]
    metrics = ["--metrics-host", REPLICA_HOSTS[2], "--metrics-port", str(metrics_port)]
    replicas = start_replicas(REPLICA_HOSTS, tmp_path, {REPLICA_HOSTS[2]: metrics})
    victim = replicas[2]
    try:
        run_cli([f"http://{replicas[0].address}"], text, tmp_path / "one")
        args = [str(_binary()), "analyze", "--sentences", str(text), "--target", " her", "--out", str(tmp_path / "three")]
        args += ["--chunk-size", "5", "--correction", "holm"]
        for r in replicas:
            args += ["--server", f"http://{r.address}"]
        cli = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and cli.poll() is None:
            page = urllib.request.urlopen(f"http://{victim.host}:{metrics_port}/metrics", timeout=5).read().decode()
            done = re.search(r"^rotations_sentences_total (\S+)", page, re.M)
            if done and float(done.group(1)) >= 20:
                break
            time.sleep(0.05)
        assert cli.poll() is None, "the CLI finished before the replica could be killed"
        victim.process.kill()
        _, log = cli.communicate(timeout=300)
        assert cli.returncode == 0, log
        assert_same_cli_output(tmp_path / "three", tmp_path / "one")
        line = next(line for line in log.splitlines() if line.startswith(f"replica http://{victim.address}:"))
        failures = int(re.search(r"(\d+) failures", line).group(1))  # type: ignore[union-attr]
        assert failures >= 1, log
    finally:
        for r in replicas:
            r.stop()


def test_replicas_that_appear_in_dns_during_a_run_join_it(replicas, corpus, reference, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The name first resolves to one replica, then to all three (pods scaled up): they join."""
    import rotations_client.cluster as cluster_module

    calls = []

    def growing(addresses):  # type: ignore[no-untyped-def]
        calls.append(addresses)
        return [replicas[0].address] if len(calls) == 1 else [r.address for r in replicas]

    monkeypatch.setattr(cluster_module, "resolve", growing)
    with Cluster("dns:///rotations-headless:50051", chunk_size=3, in_flight=1, resolve_interval=0.05, retry=FAST) as cluster:
        assert cluster.replicas == [replicas[0].address]
        assert_identical(cluster.analyze(corpus, " her", correction="holm"), reference)
        served = dict(cluster.stats.chunks)
    assert len(calls) > 1
    assert all(served.get(r.address, 0) > 0 for r in replicas), f"chunks per replica: {served}"


def test_a_replica_that_leaves_the_lookup_takes_no_more_chunks(replicas, corpus, reference, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """All three at first, then the first is no longer listed (a pod scaled away): it stops taking
    chunks, the others finish the corpus, and the result is the same."""
    import rotations_client.cluster as cluster_module

    calls = []

    def shrinking(addresses):  # type: ignore[no-untyped-def]
        calls.append(addresses)
        return [r.address for r in replicas] if len(calls) == 1 else [r.address for r in replicas[1:]]

    monkeypatch.setattr(cluster_module, "resolve", shrinking)
    with Cluster("dns:///rotations-headless:50051", chunk_size=3, in_flight=1, resolve_interval=0.05, retry=FAST) as cluster:
        got = cluster.analyze(corpus, " her", correction="holm")
        assert cluster._unlisted == {replicas[0].address}
        served = dict(cluster.stats.chunks)
    assert_identical(got, reference)
    assert sum(served.values()) == -(-len(corpus) // 3), f"each chunk once: {served}"
    assert all(served.get(r.address, 0) > 0 for r in replicas[1:]), f"chunks per replica: {served}"
