"""TLS, mutual TLS and API keys between the Python client and the real server.

Certificates are made here (the ``cryptography`` package): a CA, a server certificate for localhost
and 127.0.0.1, a client certificate from the CA and one from a stranger CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from rotations_client import Client, RotationsError, collect_stream
from rotations_client.connect import Address, open_channel, parse_address

from .conftest import Server, run_server

Key = ec.EllipticCurvePrivateKey


def _certificate(
    name: str, key: Key, issuer: Optional[Tuple[x509.Name, Key]], sans: List[x509.GeneralName]
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class Pki:
    dir: Path

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def read(self, name: str) -> bytes:
        return (self.dir / name).read_bytes()


def _write(dir: Path, name: str, cert: x509.Certificate, key: Key) -> None:
    (dir / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (dir / f"{name}.key").write_bytes(pem)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    dir = tmp_path_factory.mktemp("pki")
    cas = {}
    for ca in ("ca", "stranger-ca"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(f"rotations test {ca}", key, None, [])
        _write(dir, ca, cert, key)
        cas[ca] = (cert.subject, key)
    leaves = {
        "server": ("ca", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        "client": ("ca", [x509.DNSName("client.test")]),
        "stranger": ("stranger-ca", [x509.DNSName("stranger.test")]),
        # A replica's certificate naming only its Service, as behind a headless Service.
        "service": ("ca", [x509.DNSName(SERVICE_NAME)]),
    }
    for name, (ca, sans) in leaves.items():
        key = ec.generate_private_key(ec.SECP256R1())
        _write(dir, name, _certificate(name, key, cas[ca], sans), key)
    return Pki(dir)


#: The name the "service" certificate carries (and no IP address).
SERVICE_NAME = "rotations-headless.default.svc"


@dataclass(frozen=True)
class Secured:
    server: Server
    keys_file: Path


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Secured]:
    """TLS, and API keys from a file (rotated by a test below)."""
    keys = tmp_path_factory.mktemp("keys") / "api-keys"
    keys.write_text("# one key a line\nkey-one\n")
    serve = ["--tls-cert", pki.path("server.pem"), "--tls-key", pki.path("server.key"), "--api-keys-file", str(keys)]
    with run_server(tmp_path_factory, serve, ["--ca-cert", pki.path("ca.pem")]) as srv:
        yield Secured(srv, keys)


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Server]:
    serve = ["--tls-cert", pki.path("server.pem"), "--tls-key", pki.path("server.key")]
    serve += ["--tls-client-ca", pki.path("ca.pem")]
    client = ["--ca-cert", pki.path("ca.pem"), "--client-cert", pki.path("client.pem")]
    client += ["--client-key", pki.path("client.key")]
    with run_server(tmp_path_factory, serve, client) as srv:
        yield srv


def _failure(client: Client) -> RotationsError:
    with pytest.raises(RotationsError) as caught:
        client.model_info()
    return caught.value


def test_one_address_syntax() -> None:
    assert parse_address("localhost:50051") == Address("localhost:50051", False)
    assert parse_address("localhost:50051", tls=True) == Address("localhost:50051", True)
    assert parse_address("http://127.0.0.1:50051/") == Address("127.0.0.1:50051", False)
    assert parse_address("https://rotations.example.org") == Address("rotations.example.org:443", True)
    assert parse_address("[::1]:50051") == Address("[::1]:50051", False)
    assert str(parse_address("127.0.0.1:1")) == "http://127.0.0.1:1"
    for bad, message in [
        ("localhost", "has no port"),
        ("50051", "has no host: give host:port, e.g. localhost:50051"),
        ("grpc://localhost:50051", "unsupported scheme grpc://"),
        ("localhost:50051/v1", "is not an address"),
        ("", "is not an address"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_address(bad)
    with pytest.raises(ValueError, match="use https://localhost:50051"):
        parse_address("http://localhost:50051", tls=True)
    with pytest.raises(ValueError, match="cannot read the CA certificate /nonexistent/ca.pem"):
        Client("localhost:1", root_certificates="/nonexistent/ca.pem")
    with pytest.raises(ValueError, match="both certificate_chain= and private_key="):
        Client("localhost:1", certificate_chain=b"-----BEGIN CERTIFICATE-----")


def test_a_closed_port_says_no_server(server: Server) -> None:
    import socket

    with socket.socket() as s:  # bound, then released: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Client(f"127.0.0.1:{port}", timeout=10) as c:
        error = _failure(c)
    expected = f"no server at http://127.0.0.1:{port} — is `rotations serve` running, on that host and port?"
    assert error.message == expected
    assert "Connection refused" in error.details


def test_tls_handshake_and_api_keys(tls_server: Secured, pki: Pki) -> None:
    port = tls_server.server.port
    with Client(f"https://127.0.0.1:{port}", root_certificates=pki.path("ca.pem"), api_key="key-one", timeout=30) as c:
        assert c.model_info().model_name == "gpt2-tiny-random"
        chunks = c.stream_rotations(["I saw her.", "We met her there.", "They told her so."], " her")
        assert collect_stream(chunks).rotations.angles.shape[1] == 3, "the key rides on streaming calls too"
        assert "key-one" not in repr(c)
    # Health needs no key (probes cannot send one): grpc.health.v1.Health/Check answers SERVING (field 1 = 1).
    health = open_channel(f"https://127.0.0.1:{port}", root_certificates=pki.path("ca.pem"))
    check = health.channel.unary_unary("/grpc.health.v1.Health/Check", lambda _: b"", bytes)
    assert check(None, timeout=30) == b"\x08\x01"
    health.channel.close()
    # Bare host:port with a CA is TLS; the CA as bytes works as well as a path.
    with Client(f"127.0.0.1:{port}", root_certificates=pki.read("ca.pem"), timeout=30) as c:
        error = _failure(c)
    assert error.code == grpc.StatusCode.UNAUTHENTICATED
    assert error.message.startswith("missing API key") and "api_key=" in error.message
    with Client(f"https://127.0.0.1:{port}", root_certificates=pki.path("ca.pem"), api_key="key-two", timeout=30) as c:
        error = _failure(c)
    assert error.code == grpc.StatusCode.UNAUTHENTICATED and error.message.startswith("wrong API key")


def test_keys_rotate_through_the_keys_file_and_sighup(tls_server: Secured, pki: Pki) -> None:
    address = f"https://127.0.0.1:{tls_server.server.port}"
    old = Client(address, root_certificates=pki.path("ca.pem"), api_key="key-one", timeout=30)
    new = Client(address, root_certificates=pki.path("ca.pem"), api_key="key-two", timeout=30)
    with old, new:
        old.model_info()
        tls_server.keys_file.write_text("key-two\n")
        os.kill(tls_server.server.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:
            try:
                new.model_info()
                break
            except RotationsError:
                assert time.monotonic() < deadline, "key-two not accepted after SIGHUP"
                time.sleep(0.1)
        assert _failure(old).code == grpc.StatusCode.UNAUTHENTICATED
    log = tls_server.server.log.read_text()
    assert "API keys reloaded" in log and "key-one" not in log and "key-two" not in log


def test_plaintext_against_tls_and_the_reverse_say_what_to_do(tls_server: Secured, server: Server, pki: Pki) -> None:
    tls_port = tls_server.server.port
    with Client(f"127.0.0.1:{tls_port}", timeout=10) as c:
        error = _failure(c)
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert f"if the server uses TLS, use https://127.0.0.1:{tls_port}" in error.message, error.message
    with Client(f"https://127.0.0.1:{server.port}", root_certificates=pki.path("ca.pem"), timeout=10) as c:
        error = _failure(c)
    assert f"does not speak TLS — use http://127.0.0.1:{server.port}" in error.message, error.message
    with Client(f"https://127.0.0.1:{tls_port}", timeout=10) as c:  # grpc's bundled roots do not know our CA
        error = _failure(c)
    assert "not trusted" in error.message and "root_certificates=" in error.message, error.message


def test_mutual_tls_needs_a_client_certificate_from_its_ca(mtls_server: Server, pki: Pki) -> None:
    address = f"https://127.0.0.1:{mtls_server.port}"
    ca = pki.path("ca.pem")
    mine = {"certificate_chain": pki.path("client.pem"), "private_key": pki.path("client.key")}
    with Client(address, root_certificates=ca, **mine) as c:
        assert c.model_info().model_name == "gpt2-tiny-random"
    with Client(address, root_certificates=ca, timeout=10) as c:
        error = _failure(c)
    assert "mutual TLS" in error.message and "certificate_chain=" in error.message, error.message
    theirs = {"certificate_chain": pki.read("stranger.pem"), "private_key": pki.read("stranger.key")}
    stranger = Client(address, root_certificates=ca, timeout=10, **theirs)
    with stranger:
        assert _failure(stranger).code == grpc.StatusCode.UNAVAILABLE


@pytest.fixture(scope="module")
def service_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Server]:
    """TLS with a certificate that names the Service only: reached by IP, it needs the name given."""
    serve = ["--tls-cert", pki.path("service.pem"), "--tls-key", pki.path("service.key")]
    client = ["--ca-cert", pki.path("ca.pem"), "--tls-server-name", SERVICE_NAME]
    with run_server(tmp_path_factory, serve, client) as srv:
        yield srv


def test_replicas_by_ip_with_a_certificate_for_the_service(service_server: Server, pki: Pki, tmp_path: Path) -> None:
    """A dns:/// Cluster reaches replicas by IP; tls_server_name= (grpc.ssl_target_name_override)
    checks their certificate against the Service's name. The CLI's --tls-server-name does the same."""
    import subprocess

    from rotations_client import Cluster

    from .conftest import REPO, _binary, _env

    address, ca = service_server.address, pki.path("ca.pem")
    with Client(address, root_certificates=ca, timeout=30) as c:
        assert _failure(c).code == grpc.StatusCode.UNAVAILABLE, "the certificate does not name 127.0.0.1"
    with Client(address, root_certificates=ca, tls_server_name=SERVICE_NAME, timeout=30) as c:
        reference = c.analyze(["I saw her.", "We met her there.", "They told her so."], " her")
    with pytest.raises(ValueError, match="is plaintext"):
        Client(f"http://{address}", tls_server_name=SERVICE_NAME)
    dns = f"dns:///localhost:{service_server.port}"
    with Cluster(dns, chunk_size=2, root_certificates=ca, tls_server_name=SERVICE_NAME, timeout=60) as cluster:
        got = cluster.analyze(["I saw her.", "We met her there.", "They told her so."], " her")
    assert got.rotations.angles.tobytes() == reference.rotations.angles.tobytes()

    text = tmp_path / "corpus.txt"
    text.write_text("I saw her.\nWe met her there.\nThey told her so.\n", encoding="utf-8")
    cli = [str(_binary()), "analyze", "--server", dns, "--sentences", str(text), "--target", " her"]
    cli += ["--out", str(tmp_path / "out"), "--chunk-size", "2", "--ca-cert", ca]

    def run(extra: List[str]) -> subprocess.CompletedProcess:
        return subprocess.run(cli + extra, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=120)

    refused = run([])
    assert refused.returncode != 0 and "--tls-server-name" in refused.stderr, refused.stderr
    done = run(["--tls-server-name", SERVICE_NAME])
    assert done.returncode == 0, done.stderr


def test_the_default_address_is_where_the_server_listens_by_default() -> None:
    """The server binds 127.0.0.1 only; `localhost` may resolve to ::1 first, where nothing listens."""
    from rotations_client.client import DEFAULT_ADDRESS

    assert DEFAULT_ADDRESS == "127.0.0.1:50051"
