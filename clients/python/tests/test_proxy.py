"""Behind a real gRPC-aware proxy (Debian's nginx, grpc_pass): one client channel spread over the
three replicas gives the same results, bit for bit. The test installs nginx where it is missing."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator, List

import pytest

from rotations_client import Client, Cluster

from .test_cluster import FAST, assert_identical, numbered

PROXY_HOST = "127.0.0.5"


def nginx_binary() -> str:
    """nginx, installed with apt-get (nginx-light) when missing; skipped loudly if that is impossible."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "nginx-light"]
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            subprocess.run(install, env=env, capture_output=True)
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if not found:
        message = "NGINX IS MISSING AND COULD NOT BE INSTALLED (apt-get install nginx-light): the proxy test did NOT run"
        print(f"\n{'!' * 20} {message} {'!' * 20}")
        pytest.skip(message)
    return found


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def proxy(replicas, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:  # type: ignore[no-untyped-def]
    """nginx on 127.0.0.5 passing gRPC round-robin to the replicas; yields its address and access log."""
    binary = nginx_binary()
    folder = tmp_path_factory.mktemp("nginx")
    port = free_port(PROXY_HOST)
    upstreams = "\n".join(f"    server {r.address};" for r in replicas)
    temp = " ".join(f"{kind}_temp_path {folder}/{kind};" for kind in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"])
    (folder / "nginx.conf").write_text(
        f"""
{"user root;" if os.geteuid() == 0 else ""}
daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 256; }}
http {{
  log_format upstream '$upstream_addr $status $request_uri';
  access_log {folder}/access.log upstream;
  {temp}
  client_max_body_size 64m;
  upstream replicas {{
{upstreams}
  }}
  server {{
    listen {PROXY_HOST}:{port} http2;
    location / {{
      grpc_pass grpc://replicas;
      grpc_read_timeout 300s;
      grpc_next_upstream error timeout;
    }}
  }}
}}
"""
    )
    process = subprocess.Popen([binary, "-p", str(folder), "-c", str(folder / "nginx.conf")], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((PROXY_HOST, port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    err = process.stderr.read().decode() if process.stderr else ""
                    pytest.fail(f"nginx did not start: {err}\n{(folder / 'error.log').read_text()}", pytrace=False)
                time.sleep(0.1)
        yield f"{PROXY_HOST}:{port}", folder / "access.log"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_one_channel_through_nginx_spreads_over_the_replicas(replicas, proxy, sentences: List[str]) -> None:  # type: ignore[no-untyped-def]
    address, access_log = proxy
    corpus = numbered(sentences, 120)
    with Client(replicas[0].address, timeout=120) as one:
        reference = one.analyze(corpus, " her")
    # One address, so one channel: nginx spreads its requests (chunks) over the replicas.
    with Cluster([address], chunk_size=6, in_flight=4, timeout=120, retry=FAST) as cluster:
        assert_identical(cluster.analyze(corpus, " her"), reference)
    with Client(address, timeout=120) as through:
        assert_identical(through.analyze(corpus, " her"), reference)
    time.sleep(0.2)  # nginx writes its access log line when a request ends
    lines = access_log.read_text().splitlines()
    served = {line.split()[0] for line in lines if "StreamRotations" in line and line.split()[1] == "200"}
    assert served == {r.address for r in replicas}, f"nginx sent the chunks to {served}:\n" + "\n".join(lines[:20])
