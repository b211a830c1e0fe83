"""A real server on the bundled model for the whole session: free port, spawn, wait for health, stop."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import pytest

from rotations_client import Client
from rotations_client.serve import stop as _stop

REPO = Path(__file__).resolve().parents[3]
MODEL_DIR = REPO / "models" / "gpt2-tiny-random"
SENTENCES_FILE = REPO / "examples" / "her_sentences.txt"
STARTUP_SECONDS = 120


@dataclass(frozen=True)
class Server:
    binary: Path
    port: int
    log: Path
    pid: int = 0

    @property
    def address(self) -> str:
        """What the Python client takes."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """What the Rust CLI takes."""
        return f"http://127.0.0.1:{self.port}"


def _binary() -> Path:
    binary = Path(os.environ.get("ROTATIONS_BIN", REPO / "target" / "debug" / "rotations"))
    if not binary.is_file():
        pytest.fail(f"{binary} is missing: run `cargo build --bins` (make python-test does)", pytrace=False)
    return binary


def _env() -> dict:
    env = dict(os.environ)
    ort = REPO / ".ort" / "lib" / "libonnxruntime.so"
    if "ORT_DYLIB_PATH" not in env and ort.exists():
        env["ORT_DYLIB_PATH"] = str(ort)
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




def _healthy(binary: Path, url: str, client_args: Sequence[str] = ()) -> bool:
    probe = subprocess.run(
        [str(binary), "health", "--server", url, *client_args], capture_output=True, timeout=30, env=_env(), cwd=REPO
    )
    return probe.returncode == 0


@contextmanager
def run_server(
    tmp_path_factory: pytest.TempPathFactory,
    serve_args: Sequence[str] = (),
    client_args: Sequence[str] = (),
    model_dir: Path = MODEL_DIR,
) -> Iterator[Server]:
    """``rotations serve`` of ``model_dir`` on a free port with extra ``serve_args``, SERVING by
    ``rotations health`` (given ``client_args``: TLS material for a TLS server); stopped with SIGTERM
    afterwards."""
    binary = _binary()
    log = tmp_path_factory.mktemp("server") / "server.log"
    port = _free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(binary), "serve", "--port", str(port), "--host", "127.0.0.1", "--model-dir", str(model_dir)]
            + list(serve_args),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(),
            cwd=REPO,
        )
    srv = Server(binary, port, log, process.pid)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        # host:port with --ca-cert among client_args is TLS to the CLI, as to the Python client.
        while not _healthy(binary, srv.address, client_args):
            if process.poll() is not None:
                pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"the server was not SERVING after {STARTUP_SECONDS}s:\n{log.read_text()}", pytrace=False)
            time.sleep(0.5)
        yield srv
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(tmp_path_factory) as srv:
        yield srv


@pytest.fixture()
def client(server: Server) -> Iterator[Client]:
    with Client(server.address, timeout=120) as c:
        yield c


@pytest.fixture(scope="session")
def sentences() -> List[str]:
    """The notebook's 54 sentences, read as the CLI reads them (one a line, blank lines skipped)."""
    lines = SENTENCES_FILE.read_text(encoding="utf-8").splitlines()
    return [line.rstrip() for line in lines if line.strip()]


@dataclass
class Replica:
    """A `rotations serve` on its own loopback address and an ephemeral port (as a pod would have)."""

    host: str
    port: int
    process: subprocess.Popen
    log: Path

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        _stop(self.process)


def start_replicas(
    hosts: List[str], folder: Path, extra: Optional[Dict[str, List[str]]] = None, model_dir: Path = MODEL_DIR
) -> List[Replica]:
    """Starts one server of ``model_dir`` per host with --port 0 (and the host's ``extra`` flags),
    reads each bound port from its --port-file, and waits until all are SERVING."""
    binary = _binary()
    started = []
    for host in hosts:
        log, port_file = folder / f"{host}.log", folder / f"{host}.port"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [str(binary), "serve", "--host", host, "--port", "0", "--port-file", str(port_file)]
                + ["--model-dir", str(model_dir), "--threads", "1"]
                + (extra or {}).get(host, []),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_env(),
                cwd=REPO,
            )
        started.append((host, process, log, port_file))
    replicas: List[Replica] = []
    deadline = time.monotonic() + STARTUP_SECONDS
    try:
        for host, process, log, port_file in started:
            while not port_file.exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"{host}: no port file (exit {process.poll()}):\n{log.read_text()}", pytrace=False)
                time.sleep(0.05)
            replica = Replica(host, int(port_file.read_text()), process, log)
            replicas.append(replica)
            while not _healthy(binary, f"http://{replica.address}"):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"{host} did not become SERVING:\n{log.read_text()}", pytrace=False)
                time.sleep(0.2)
    except BaseException:
        for _, process, _, _ in started:
            process.kill()
        raise
    return replicas


#: Three replicas on their own loopback addresses (127.0.0.2-4), as pods behind a headless Service.
REPLICA_HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


@pytest.fixture(scope="session")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[List[Replica]]:
    started = start_replicas(REPLICA_HOSTS, tmp_path_factory.mktemp("replicas"))
    try:
        yield started
    finally:
        for r in started:
            r.stop()
