"""A replica that lies or fails on purpose: a gRPC proxy (grpcio generic handlers) on its own
loopback address in front of a real server, passing every call through as bytes and changing what
``StreamRotations`` answers as a broken or hostile replica would (as tests/tamper/mod.rs does for
the Rust CLI's tests)."""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any, Callable, Iterator, List, Optional

import grpc

from rotations_client._pb import pb

STREAM = "/rotations.v1.RotationService/StreamRotations"


def truncate_layers(messages: List[Any]) -> None:
    """The final message's statistics keep only the first half of the layers."""
    last = messages[-1]
    del last.statistics[len(last.statistics) // 2 :]


def double_n(messages: List[Any]) -> None:
    """Every layer's n doubled (the sums left as they are)."""
    for s in messages[-1].statistics:
        s.n *= 2


def drop_last_rows(messages: List[Any]) -> None:
    """The stream's last message with rows left out."""
    del messages[max(i for i, m in enumerate(messages) if not m.last)]


def other_model(messages: List[Any]) -> None:
    """The final message names another model."""
    messages[-1].model_name = "another-model"


def truncate_steps(messages: List[Any]) -> None:
    """The first part's step angles lose their last layer (shape and values alike)."""
    angles = messages[0].sublayers.angles
    angles.shape[0] -= 1
    keep = 1
    for d in angles.shape:
        keep *= d
    del angles.values[keep:]


class Proxy:
    """``tamper`` changes each StreamRotations answer (its messages, in place); ``fail`` may instead
    return a status code to fail a request with."""

    def __init__(
        self,
        host: str,
        upstream: str,
        tamper: Optional[Callable[[List[Any]], None]] = None,
        fail: Optional[Callable[[Any], Optional[grpc.StatusCode]]] = None,
    ) -> None:
        self.channel = grpc.insecure_channel(upstream)
        self.tamper, self.fail = tamper, fail
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers([_Handler(self)])
        self.port = self.server.add_insecure_port(f"{host}:0")
        self.address = f"{host}:{self.port}"
        self.server.start()

    def close(self) -> None:
        self.server.stop(grace=None)
        self.channel.close()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stream(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        code = self.fail(request) if self.fail else None
        if code is not None:
            context.abort(code, "the tampering proxy fails this chunk")
        call = self.channel.unary_stream(
            STREAM, request_serializer=pb.RotationRequest.SerializeToString, response_deserializer=pb.RotationChunk.FromString
        )
        try:
            messages = list(call(request, timeout=context.time_remaining()))
        except grpc.RpcError as e:
            context.abort(e.code(), e.details())
        if self.tamper:
            self.tamper(messages)
        yield from messages

    def unary(self, method: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        forward = self.channel.unary_unary(method)

        def call(request: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                return forward(request, timeout=context.time_remaining())  # type: ignore[no-any-return]
            except grpc.RpcError as e:
                context.abort(e.code(), e.details())
                raise

        return call


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def service(self, details: Any) -> Any:
        if details.method == STREAM:
            return grpc.unary_stream_rpc_method_handler(
                self.proxy.stream,
                request_deserializer=pb.RotationRequest.FromString,
                response_serializer=pb.RotationChunk.SerializeToString,
            )
        return grpc.unary_unary_rpc_method_handler(self.proxy.unary(details.method))


def fail_corpus_end(end: int, code: grpc.StatusCode, times: Optional[int] = None) -> Callable[[Any], Any]:
    """Fails the chunk that ends the corpus (``end`` sentences) with ``code``, the first ``times``
    times (None: always); other chunks pass."""
    lock, failed = threading.Lock(), [0]

    def fail(request: Any) -> Optional[grpc.StatusCode]:
        if request.first_sentence_index + len(request.sentences) != end:
            return None
        with lock:
            failed[0] += 1
            return code if times is None or failed[0] <= times else None

    return fail
