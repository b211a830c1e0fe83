"""``serve(model_dir)``: a local ``rotations serve`` for a notebook, started, waited for and stopped."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

from .client import Client
from .errors import RotationsError


def _binary(binary: Optional[Union[str, Path]]) -> str:
    found = str(binary) if binary else os.environ.get("ROTATIONS_BIN") or shutil.which("rotations")
    if not found or not Path(found).is_file():
        raise FileNotFoundError(
            "the `rotations` binary is not installed: `cargo install --path .` in the repository puts it on "
            "PATH, or pass binary= (or set ROTATIONS_BIN)"
        )
    return found


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(
    model_dir: Union[str, Path],
    *,
    host: str = "127.0.0.1",
    port: Optional[int] = None,
    binary: Optional[Union[str, Path]] = None,
    args: Sequence[str] = (),
    startup_timeout: float = 300.0,
) -> Iterator[Client]:
    """Starts ``rotations serve --model-dir model_dir`` on a free port of ``host``, waits until the
    model is loaded, yields a :class:`Client` connected to it, and stops the server (SIGTERM: it
    drains and exits) when the block ends. ``args`` are more ``serve`` flags; a server that exits
    while starting raises ``RuntimeError`` with the end of its log.

    >>> with serve("models/gpt2-tiny-random") as client:   # doctest: +SKIP
    ...     analysis = client.analyze(sentences, " her")
    """
    port = port or _free_port(host)
    command = [_binary(binary), "serve", "--host", host, "--port", str(port), "--model-dir", str(model_dir), *args]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        client = Client(f"{host}:{port}")
        try:
            _wait(process, client, log, startup_timeout)
            yield client
        finally:
            client.close()
            stop(process)


def stop(process: "subprocess.Popen[bytes]") -> None:
    """SIGTERM (graceful: the server drains and exits 0), then a kill after 30 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait(process: "subprocess.Popen[bytes]", client: Client, log: "tempfile._TemporaryFileWrapper[bytes]", timeout: float) -> None:
    """Until the model answers; the server's own words if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"rotations serve exited with status {process.returncode}:\n{tail}")
        try:
            client.wait_ready(timeout=1.0, no_server_after=1.0)
            return
        except RotationsError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)
