"""Client and Cluster join the application's OpenTelemetry trace: the servers export their spans over
real OTLP/gRPC to a receiver built from the official ``opentelemetry-proto`` definitions, and those
spans are children of the application's span (Client) or of the Cluster's chunk spans."""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Dict, List

import grpc
import pytest

otel_sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="the tracing extra is not installed")
trace_service = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
trace_service_grpc = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from rotations_client import Client, Cluster  # noqa: E402

from .conftest import Replica, run_server, start_replicas  # noqa: E402


class _Receiver(trace_service_grpc.TraceServiceServicer):  # type: ignore[misc]
    """Keeps every span exported to it, with its resource's attributes."""

    def __init__(self) -> None:
        self.spans: List = []
        self.lock = threading.Lock()

    def Export(self, request, context):  # noqa: N802 (the gRPC method's name)
        with self.lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend((resource, span) for span in scope_spans.spans)
        return trace_service.ExportTraceServiceResponse()


@pytest.fixture()
def receiver():
    servicer = _Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"http://127.0.0.1:{port}"
    server.stop(grace=None)


_EXPORTER = InMemorySpanExporter()


@pytest.fixture()
def app_spans() -> InMemorySpanExporter:
    """The application's tracer provider (set once per process, as an application does)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, otel_sdk.TracerProvider):
        provider = otel_sdk.TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    return _EXPORTER


def _attributes(span) -> Dict[str, object]:
    out: Dict[str, object] = {}
    for a in span.attributes:
        kind = a.value.WhichOneof("value")
        out[a.key] = getattr(a.value, kind) if kind else None
    return out


def test_a_client_call_joins_the_applications_trace(receiver, app_spans, tmp_path_factory, sentences) -> None:
    servicer, endpoint = receiver
    with run_server(tmp_path_factory, ["--otlp-endpoint", endpoint]) as server:
        with Client(server.address) as client:
            with trace.get_tracer("study").start_as_current_span("her corpus") as study:
                analysis = client.analyze(sentences[:6], " her")
            untraced = client.model_info()  # outside any span: sends no trace context
    # The server flushed its spans when it stopped.
    assert analysis.angles.shape[1] == 6 and untraced.num_layers > 0
    context = study.get_span_context()
    calls = [s for _, s in servicer.spans if s.name == "rotations.v1.RotationService/Analyze"]
    assert len(calls) == 1
    (call,) = calls
    assert int.from_bytes(call.trace_id, "big") == context.trace_id
    assert int.from_bytes(call.parent_span_id, "big") == context.span_id
    below = {s.name for _, s in servicer.spans if s.trace_id == call.trace_id}
    assert {"tokenize", "queue", "forward_pass", "analysis"} <= below, below
    info = [s for _, s in servicer.spans if s.name.endswith("/GetModelInfo")]
    assert info and all(s.trace_id != call.trace_id and not s.parent_span_id for s in info)


def test_a_cluster_run_is_one_trace_with_a_span_per_chunk_and_replica(receiver, app_spans, tmp_path, sentences) -> None:
    servicer, endpoint = receiver
    hosts = ["127.0.0.2", "127.0.0.3"]
    replicas: List[Replica] = start_replicas(hosts, tmp_path, {h: ["--otlp-endpoint", endpoint] for h in hosts})
    try:
        with Cluster([r.address for r in replicas], chunk_size=2) as cluster:
            with trace.get_tracer("study").start_as_current_span("her corpus") as study:
                cluster.analyze(sentences[:12], " her")
    finally:
        for r in replicas:
            r.stop()  # flushes their spans
    trace_id = study.get_span_context().trace_id
    chunks = [s for s in app_spans.get_finished_spans() if s.name.startswith("chunk ")]
    assert {s.attributes["server.address"] for s in chunks} == {r.address for r in replicas}
    assert all(s.context.trace_id == trace_id and s.parent.span_id == study.get_span_context().span_id for s in chunks)
    chunk_ids = {s.context.span_id for s in chunks}
    calls = [(r, s) for r, s in servicer.spans if s.name == "rotations.v1.RotationService/StreamRotations"]
    assert len(calls) == len(chunks) == 6
    for resource, call in calls:
        assert resource["service.name"] == "rotations"
        assert int.from_bytes(call.trace_id, "big") == trace_id
        assert int.from_bytes(call.parent_span_id, "big") in chunk_ids
        assert _attributes(call)["rpc.grpc.status_code"] == 0  # each call read to its end
    addresses = {_attributes(call)["server.address"] for _, call in calls}
    assert addresses == set(hosts)
    passes = [s for _, s in servicer.spans if s.name == "forward_pass" and int.from_bytes(s.trace_id, "big") == trace_id]
    assert passes and all(_attributes(p)["pass.id"] >= 1 for p in passes)
