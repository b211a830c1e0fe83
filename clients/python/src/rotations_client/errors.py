"""The one exception the client raises for a failed call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import grpc


@dataclass(frozen=True)
class InvalidSentence:
    """One sentence the server cannot analyse: its corpus index, the request field that holds it
    (``sentences[3]``, ``groups[1].request.sentences[3]``), a reason code (``TARGET_NOT_FOUND``,
    ``TOO_LONG``, …), the reason in words, and its text when the client knows it."""

    index: int
    field: str
    code: str
    reason: str
    text: Optional[str] = None


class RotationsError(Exception):
    """A call failed: the server's (or the transport's) status code and message.

    ``code`` is a :class:`grpc.StatusCode` (e.g. ``grpc.StatusCode.INVALID_ARGUMENT``), ``message``
    the server's text, e.g. ``'sentence 3 ("I saw him."): target token 607 " her" not found'``; ``rpc`` names the call.
    When the connection itself failed, ``message`` says what to try and ``details`` keeps grpc's text.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        rpc: str = "",
        *,
        details: str = "",
        invalid_sentences: Sequence[InvalidSentence] = (),
        invalid_count: int = 0,
    ) -> None:
        self.code = code
        self.message = message
        self.rpc = rpc
        self.details = details or message
        #: With INVALID_ARGUMENT for invalid sentences: the ones the server listed (up to a bound;
        #: ``invalid_count`` says how many there are in all; ``skip_invalid=True`` reports every one).
        self.invalid_sentences: List[InvalidSentence] = list(invalid_sentences)
        self.invalid_count = invalid_count or len(self.invalid_sentences)
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
        trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
        invalid, count = _invalid_sentences(trailers or ())
        return cls(code or grpc.StatusCode.UNKNOWN, details or "", rpc, invalid_sentences=invalid, invalid_count=count)

    def with_texts(self, request: object) -> RotationsError:
        """Fills each invalid sentence's text from the request that failed (its ``sentences``, or a
        group's)."""
        for i, s in enumerate(self.invalid_sentences):
            try:
                owner = request
                if s.field.startswith("groups["):
                    owner = getattr(request, "groups")[_bracketed(s.field, "groups[")].request
                text = getattr(owner, "sentences")[_bracketed(s.field, "sentences[")]
            except (AttributeError, IndexError, TypeError, ValueError):
                continue
            self.invalid_sentences[i] = InvalidSentence(s.index, s.field, s.code, s.reason, text)
        return self


# google.rpc.Status in the trailer grpc-status-details-bin, read with a few lines of protobuf wire
# format rather than a dependency on googleapis-common-protos: Status{details=3: Any{type_url=1,
# value=2}}, BadRequest{field_violations=1: {field=1, description=2, reason=3}}, ErrorInfo{reason=1,
# domain=2, metadata=3: map entry{key=1, value=2}}.
_BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


def _fields(data: bytes) -> List[Tuple[int, object]]:
    """The (field number, value) pairs of a protobuf message: ints for varints, bytes otherwise."""
    out: List[Tuple[int, object]] = []
    at = 0

    def varint() -> int:
        nonlocal at
        value, shift = 0, 0
        while True:
            byte = data[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while at < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            out.append((number, varint()))
        elif wire == 2:
            length = varint()
            out.append((number, data[at : at + length]))
            at += length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            out.append((number, data[at : at + size]))
            at += size
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return out


def _strings(data: bytes) -> Dict[int, str]:
    return {n: v.decode() for n, v in _fields(data) if isinstance(v, bytes)}


def _invalid_sentences(trailers: Sequence[Tuple[str, object]]) -> Tuple[List[InvalidSentence], int]:
    """The invalid sentences a status's details list, and how many there are in all."""
    raw = next((v for k, v in trailers if k == "grpc-status-details-bin"), None)
    if not isinstance(raw, bytes):
        return [], 0
    try:
        violations: List[Dict[int, str]] = []
        metadata: Dict[str, str] = {}
        for number, any_message in _fields(raw):
            if number != 3 or not isinstance(any_message, bytes):
                continue
            parts = dict(_fields(any_message))
            type_url, value = bytes(parts.get(1, b"")).decode(), bytes(parts.get(2, b""))
            if type_url == _BAD_REQUEST:
                violations += [_strings(v) for n, v in _fields(value) if n == 1 and isinstance(v, bytes)]
            elif type_url == _ERROR_INFO:
                entries = [_strings(v) for n, v in _fields(value) if n == 3 and isinstance(v, bytes)]
                metadata = {e.get(1, ""): e.get(2, "") for e in entries}
    except (ValueError, IndexError, UnicodeDecodeError):
        return [], 0
    if "invalid" not in metadata:
        return [], 0
    first = int(metadata.get("first_sentence_index", "0"))
    invalid = [
        InvalidSentence(first + _bracketed(v.get(1, ""), "sentences["), v.get(1, ""), v.get(3, ""), v.get(2, ""))
        for v in violations
        if "sentences[" in v.get(1, "")
    ]
    return invalid, int(metadata["invalid"])


def _bracketed(field: str, key: str) -> int:
    """The number in ``key…]`` of a field path such as ``groups[1].request.sentences[12]``."""
    rest = field[field.rindex(key) + len(key) :]
    return int(rest[: rest.index("]")])
