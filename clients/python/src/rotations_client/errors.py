"""The one exception the client raises for a failed call."""

from __future__ import annotations

import grpc


class RotationsError(Exception):
    """A call failed: the server's (or the transport's) status code and message.

    ``code`` is a :class:`grpc.StatusCode` (e.g. ``grpc.StatusCode.INVALID_ARGUMENT``), ``message``
    the server's text, e.g. ``'sentence 3 ("I saw him."): target token 607 " her" not found'``; ``rpc`` names the call.
    When the connection itself failed, ``message`` says what to try and ``details`` keeps grpc's text.
    """

    def __init__(self, code: grpc.StatusCode, message: str, rpc: str = "", *, details: str = "") -> None:
        self.code = code
        self.message = message
        self.rpc = rpc
        self.details = details or message
        super().__init__(code, message)

    @property
    def code_name(self) -> str:
        """The status code's name, e.g. ``"INVALID_ARGUMENT"``."""
        return str(self.code.name)

    def __str__(self) -> str:
        where = f" ({self.rpc})" if self.rpc else ""
        return f"{self.code.name}{where}: {self.message}"

    def __repr__(self) -> str:
        return f"RotationsError({self.code!s}, {self.message!r})"

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError, rpc: str = "") -> RotationsError:
        """Wraps what grpcio raises (a ``grpc.Call`` as well as an ``RpcError``)."""
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = error.details() if hasattr(error, "details") else str(error)
        return cls(code or grpc.StatusCode.UNKNOWN, details or "", rpc)
