"""The retry policy: its waits, and gRPC retrying through it against an in-process server that
refuses the first calls (no Rust server needed)."""

from __future__ import annotations

import random
import threading
from concurrent import futures
from typing import Iterator, List

import grpc
import pytest

from rotations_client import RETRYABLE_CODES, Client, RetryPolicy, RotationsError, is_retryable
from rotations_client._pb import pb, pb_grpc


def test_delays_are_bounded_exponential_with_full_jitter() -> None:
    policy = RetryPolicy()
    assert list(policy.ceilings()) == pytest.approx([0.1, 0.2, 0.4, 0.8])
    capped = RetryPolicy(max_attempts=9, max_backoff=1.0)
    assert list(capped.ceilings())[-3:] == [1.0, 1.0, 1.0]
    rng = random.Random(0)
    samples = [list(policy.delays(rng)) for _ in range(200)]
    for delays in samples:
        assert len(delays) == 4
        assert all(0 <= d <= c for d, c in zip(delays, policy.ceilings()))
    assert len({round(s[0], 9) for s in samples}) > 150  # jittered, not fixed
    assert set(RETRYABLE_CODES) == {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert is_retryable(grpc.StatusCode.RESOURCE_EXHAUSTED) and not is_retryable(grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


class Refusing(pb_grpc.RotationServiceServicer):  # type: ignore[misc]
    """Refuses the first `refusals` calls of each method with `code`, then answers."""

    def __init__(self, refusals: int, code: grpc.StatusCode) -> None:
        self.refusals, self.code = refusals, code
        self.calls: List[str] = []
        self.lock = threading.Lock()

    def _refuse(self, method: str, context: grpc.ServicerContext) -> bool:
        with self.lock:
            self.calls.append(method)
            n = self.calls.count(method)
        if n <= self.refusals:
            context.abort(self.code, f"refused call {n}")
        return False

    def GetModelInfo(self, request: "pb.GetModelInfoRequest", context: grpc.ServicerContext) -> "pb.ModelInfo":
        self._refuse("GetModelInfo", context)
        return pb.ModelInfo(model_name="fake", num_layers=2, num_hidden_states=3)

    def StreamRotations(self, request: "pb.RotationRequest", context: grpc.ServicerContext) -> Iterator["pb.RotationChunk"]:
        self._refuse("StreamRotations", context)
        yield pb.RotationChunk(last=True, significance_error="no sentences")


def serve(servicer: Refusing) -> "tuple[grpc.Server, str]":
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_RotationServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.mark.parametrize("code", RETRYABLE_CODES)
def test_refused_calls_are_retried_by_grpc(code: grpc.StatusCode) -> None:
    servicer = Refusing(2, code)
    server, address = serve(servicer)
    try:
        with Client(address, timeout=10, retry=RetryPolicy(initial_backoff=0.01)) as client:
            assert client.model_info().model_name == "fake"
            chunks = list(client.stream_rotations(["x"], target=1))
            assert chunks[-1].last
        assert servicer.calls.count("GetModelInfo") == 3
        assert servicer.calls.count("StreamRotations") == 3
    finally:
        server.stop(None)


def test_retries_are_bounded_and_can_be_turned_off() -> None:
    servicer = Refusing(100, grpc.StatusCode.RESOURCE_EXHAUSTED)
    server, address = serve(servicer)
    try:
        with Client(address, timeout=10, retry=RetryPolicy(max_attempts=3, initial_backoff=0.01)) as client:
            with pytest.raises(RotationsError) as error:
                client.model_info()
            assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert servicer.calls.count("GetModelInfo") == 3
        with Client(address, timeout=10, retry=None) as client:
            with pytest.raises(RotationsError):
                client.model_info()
        assert servicer.calls.count("GetModelInfo") == 4
    finally:
        server.stop(None)


def test_other_codes_are_not_retried() -> None:
    servicer = Refusing(1, grpc.StatusCode.INVALID_ARGUMENT)
    server, address = serve(servicer)
    try:
        with Client(address, timeout=10) as client:
            with pytest.raises(RotationsError) as error:
                client.model_info()
            assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert servicer.calls.count("GetModelInfo") == 1
    finally:
        server.stop(None)


class TooLarge(Refusing):
    """Refuses as the server refuses an answer too large to send: RESOURCE_EXHAUSTED with a
    negative retry pushback (gRFC A6)."""

    def GetModelInfo(self, request: "pb.GetModelInfoRequest", context: grpc.ServicerContext) -> "pb.ModelInfo":
        context.set_trailing_metadata((("grpc-retry-pushback-ms", "-1"),))
        return super().GetModelInfo(request, context)


class FakeError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, trailers: "tuple[tuple[str, str], ...]") -> None:
        self._code, self._trailers = code, trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def trailing_metadata(self) -> "tuple[tuple[str, str], ...]":
        return self._trailers


def test_a_negative_retry_pushback_is_not_retried() -> None:
    servicer = TooLarge(5, grpc.StatusCode.RESOURCE_EXHAUSTED)
    server, address = serve(servicer)
    try:
        with Client(address, timeout=10) as client:
            with pytest.raises(RotationsError) as error:
                client.model_info()
            assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert servicer.calls.count("GetModelInfo") == 1
    finally:
        server.stop(None)
    calls: List[int] = []

    def refused() -> None:
        calls.append(1)
        raise FakeError(grpc.StatusCode.RESOURCE_EXHAUSTED, (("grpc-retry-pushback-ms", "-1"),))

    with pytest.raises(grpc.RpcError):
        RetryPolicy().call(refused, sleep=lambda _: None)
    assert len(calls) == 1
