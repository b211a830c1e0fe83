"""How a client reaches a server, in one place (mirrors the Rust CLI's ``src/client/connect.rs``).

One address syntax: ``host:port`` (plaintext, unless TLS material is given), ``http://host:port``
(plaintext), ``https://host:port`` (TLS; never silently plaintext). The API key travels as
``authorization: Bearer <key>`` on every call. Connection failures become a :class:`RotationsError`
that says once what failed and what to try; grpc's own text stays in ``error.details``.

:func:`open_channel` is what :class:`~rotations_client.Client` (and anything else that talks to a
server) uses to create its channel.
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import grpc

from .errors import RotationsError

#: PEM material: the bytes themselves, or the path of a PEM file.
Pem = Union[bytes, str, "os.PathLike[str]"]

_FORMS = "give host:port, http://host:port or https://host:port"


@dataclass(frozen=True)
class Address:
    """A server address: grpc's ``target`` (``host:port``) and whether it speaks TLS."""

    target: str
    secure: bool

    def __str__(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.target}"


def parse_address(address: str, tls: bool = False) -> Address:
    """``host:port`` (TLS when ``tls``, i.e. TLS material was given), ``http://…`` or ``https://…``.

    ``http://`` together with TLS material is an error rather than a plaintext connection nobody meant.
    """
    text = address.strip().rstrip("/")
    if "://" in text:
        scheme, rest = text.split("://", 1)
        if scheme == "https":
            secure = True
        elif scheme == "http":
            if tls:
                raise ValueError(f"{text} is plaintext but TLS credentials were given: use https://{rest}")
            secure = False
        else:
            raise ValueError(f"unsupported scheme {scheme}:// in {text!r}: {_FORMS}")
        if not rest or "/" in rest or "@" in rest:
            raise ValueError(f"{address!r} is not an address: {_FORMS}")
        return Address(rest if _has_port(rest) else f"{rest}:{443 if secure else 80}", secure)
    if not text or "/" in text or "@" in text:
        raise ValueError(f"{address!r} is not an address: {_FORMS}")
    if text.isdigit():  # a bare port: the host is what is missing, as in the CLI
        raise ValueError(f"{address!r} has no host: give host:port, e.g. localhost:{text}")
    if not _has_port(text):
        raise ValueError(f"{address!r} has no port: give host:port (the server's default is 50051)")
    return Address(text, tls)


def _has_port(host_port: str) -> bool:
    host, sep, port = host_port.rpartition(":")
    return bool(sep) and port.isdigit() and bool(host) and (not host.startswith("[") or host.endswith("]"))


def _pem(value: Optional[Pem], what: str) -> Optional[bytes]:
    """PEM bytes as given, or read from a path (an error names the file)."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    path = Path(value)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read the {what} {path}: {e.strerror or e}") from None
    if b"-----BEGIN" not in data:
        raise ValueError(f"the {what} {path} holds no PEM data (-----BEGIN …)")
    return data


class _ApiKey(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Adds ``authorization: Bearer <key>`` to every call; its repr never shows the key."""

    def __init__(self, key: str) -> None:
        if not key or not key.isascii() or not all(c.isprintable() and not c.isspace() for c in key):
            raise ValueError("an API key is non-empty visible ASCII without spaces")
        self._header = ("authorization", f"Bearer {key}")

    def __repr__(self) -> str:
        return "_ApiKey(<redacted>)"

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self._header]
        return _Details(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


class _Details(  # type: ignore[misc]
    collections.namedtuple(
        "_Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    """Call details with the key added to the metadata."""


@dataclass(frozen=True)
class Connection:
    """An open channel, the address it goes to, and how to explain its failures."""

    channel: grpc.Channel
    address: Address

    def error(self, error: grpc.RpcError, rpc: str = "") -> RotationsError:
        """A :class:`RotationsError` for ``error``, with what to try when the connection failed."""
        wrapped = RotationsError.from_rpc_error(error, rpc)
        hint = explain(self.address, wrapped.code, wrapped.message)
        if hint is not None:
            wrapped = RotationsError(wrapped.code, hint, rpc, details=wrapped.message)
        return wrapped


def explain(address: Address, code: grpc.StatusCode, details: str) -> Optional[str]:
    """What failed on the way to ``address`` and what to try; ``None`` when the server itself answered."""
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return f"{details} (pass api_key= to the Client)"
    if code != grpc.StatusCode.UNAVAILABLE or "failed to connect" not in details:
        return None
    host_port = address.target
    if "Connection refused" in details:
        return f"no server at {address} — is `rotations serve` running, on that host and port?"
    if address.secure and "WRONG_VERSION_NUMBER" in details:
        return f"{address}: the server does not speak TLS — use http://{host_port}"
    if address.secure and "CERTIFICATE_VERIFY_FAILED" in details:
        return f"{address}: the server's certificate is not trusted — pass its CA as root_certificates="
    if address.secure:
        return (
            f"{address} closed the TLS connection — if it requires mutual TLS, pass certificate_chain= and "
            "private_key= signed by its client CA"
        )
    if "Socket closed" in details or "Connection reset" in details:
        return (
            f"{address} hung up without a gRPC answer — if the server uses TLS, use https://{host_port} "
            "(with root_certificates=)"
        )
    return None


def open_channel(
    address: str,
    *,
    api_key: Optional[str] = None,
    root_certificates: Optional[Pem] = None,
    certificate_chain: Optional[Pem] = None,
    private_key: Optional[Pem] = None,
    credentials: Optional[grpc.ChannelCredentials] = None,
    options: Sequence[tuple[str, Any]] = (),
    tls_server_name: Optional[str] = None,
) -> Connection:
    """A channel to ``address`` with TLS and the API key as asked.

    ``root_certificates`` (the CA to trust; default: grpc's bundled roots), ``certificate_chain`` and
    ``private_key`` (mutual TLS) are PEM bytes or paths of PEM files; ``credentials`` is a ready
    ``grpc.ChannelCredentials`` instead. Any of them makes a bare ``host:port`` a TLS address.
    ``tls_server_name`` is the name to check the server's certificate against instead of the host.
    """
    if (certificate_chain is None) != (private_key is None):
        raise ValueError("mutual TLS needs both certificate_chain= and private_key=")
    if credentials is not None and (root_certificates or certificate_chain):
        raise ValueError("give credentials= or root_certificates=/certificate_chain=/private_key=, not both")
    tls_material = credentials is not None or root_certificates is not None or certificate_chain is not None
    where = parse_address(address, tls_material)
    if tls_server_name is not None:
        if not where.secure:
            raise ValueError(f"tls_server_name= checks a TLS certificate, but {where} is plaintext")
        options = [*options, ("grpc.ssl_target_name_override", tls_server_name)]
    if where.secure:
        credentials = credentials or grpc.ssl_channel_credentials(
            _pem(root_certificates, "CA certificate"),
            _pem(private_key, "client key"),
            _pem(certificate_chain, "client certificate"),
        )
        channel = grpc.secure_channel(where.target, credentials, list(options))
    else:
        channel = grpc.insecure_channel(where.target, list(options))
    if api_key is not None:
        channel = grpc.intercept_channel(channel, _ApiKey(api_key))
    return Connection(channel, where)
