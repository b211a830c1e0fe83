"""OpenTelemetry for the client, when the application uses it (``pip install rotations-client[tracing]``).

Every call carries the application's current trace context as W3C ``traceparent`` metadata, so the
server's spans (its call, queue, forward passes, analysis) join the application's trace. A
:class:`~rotations_client.Cluster` run also makes a span per chunk on each replica (its address,
the chunk's number, and whether it failed over). Without ``opentelemetry`` installed, or without a
tracer provider configured by the application, all of this costs nothing and sends nothing.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, List, Optional, Tuple

try:
    from opentelemetry import context as _context
    from opentelemetry import propagate as _propagate
    from opentelemetry import trace as _trace
except ImportError:  # the optional extra is not installed
    _trace = None

_TRACER_NAME = "rotations_client"


def metadata() -> List[Tuple[str, str]]:
    """The current trace context as gRPC metadata (``traceparent``, ``tracestate``); empty without one."""
    if _trace is None or not _trace.get_current_span().get_span_context().is_valid:
        return []
    carrier: dict = {}
    _propagate.inject(carrier)
    return sorted(carrier.items())


def current() -> Any:
    """The current context, to carry into a worker thread (threads do not inherit it)."""
    return None if _trace is None else _context.get_current()


@contextlib.contextmanager
def attached(context: Any) -> Iterator[None]:
    """Makes ``context`` (from :func:`current`) the current one inside the block."""
    if _trace is None or context is None:
        yield
        return
    token = _context.attach(context)
    try:
        yield
    finally:
        _context.detach(token)


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[Optional[Any]]:
    """A client span around a call (None without OpenTelemetry); an exception marks it failed."""
    if _trace is None:
        yield None
        return
    tracer = _trace.get_tracer(_TRACER_NAME)
    with tracer.start_as_current_span(name, kind=_trace.SpanKind.CLIENT, attributes=attributes) as current_span:
        yield current_span


def failed(current_span: Optional[Any], code: Any, message: str, failover: bool) -> None:
    """Marks a chunk's span failed with the gRPC status, and whether the chunk goes to another replica."""
    if current_span is None:
        return
    current_span.set_status(_trace.Status(_trace.StatusCode.ERROR, message))
    current_span.set_attribute("rpc.grpc.status_code", int(code.value[0]) if code is not None else 2)
    current_span.set_attribute("failover", failover)
