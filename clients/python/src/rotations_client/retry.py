"""The retry policy, mirroring the Rust CLI's (``src/client/retry.rs``): a call refused with
``RESOURCE_EXHAUSTED`` (the server's queue is full) or ``UNAVAILABLE`` (starting, shutting down,
unreachable) is retried with bounded exponential backoff and full jitter, unless the server's retry
pushback forbids it (a negative ``grpc-retry-pushback-ms``, gRFC A6: an answer too large to send,
which gRPC's own retries honour too).

:class:`Client` hands the policy to gRPC as the channel's service-config ``retryPolicy``, so gRPC
itself retries, with the same rule: before retry ``k`` (1-based) it waits a uniform random time in
``[0, min(max_backoff, initial_backoff * multiplier**(k - 1))]``, at most ``max_attempts`` calls.
gRPC retries a call only while it has not been committed: a unary call until its response arrives,
a ``StreamRotations`` call until its first chunk arrives (a failure after that is raised, since
chunks have been delivered), and only while the request fits in the channel's retry buffer (set
here to the largest message). :meth:`RetryPolicy.delays` and :func:`is_retryable` serve code that
retries at the application level with the same rule.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import grpc

#: Codes worth retrying: the request was not processed, and may be once the server has room.
RETRYABLE_CODES: Tuple[grpc.StatusCode, ...] = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)

SERVICE = "rotations.v1.RotationService"


def is_retryable(code: grpc.StatusCode) -> bool:
    return code in RETRYABLE_CODES


def pushback_forbids(error: grpc.RpcError) -> bool:
    """Whether the server asked not to retry: a negative (or unreadable) ``grpc-retry-pushback-ms``."""
    metadata = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in metadata or ():
        if key == "grpc-retry-pushback-ms":
            try:
                return int(value) < 0
            except (TypeError, ValueError):
                return True
    return False


@dataclass(frozen=True)
class RetryPolicy:
    """At most ``max_attempts`` calls in all; waits as described in the module's documentation."""

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {self.max_attempts}")
        if not 0 < self.initial_backoff <= self.max_backoff:
            raise ValueError("need 0 < initial_backoff <= max_backoff")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be at least 1, not {self.multiplier}")

    def ceilings(self) -> Iterator[float]:
        """The longest wait before each retry: ``min(max_backoff, initial_backoff * multiplier**(k - 1))``."""
        for k in range(1, self.max_attempts):
            yield min(self.max_backoff, self.initial_backoff * self.multiplier ** (k - 1))

    def delays(self, rng: Optional[random.Random] = None) -> Iterator[float]:
        """The wait before each retry (``max_attempts - 1`` of them): uniform in ``[0, ceiling]``."""
        uniform = (rng or random).uniform
        for ceiling in self.ceilings():
            yield uniform(0.0, ceiling)

    def service_config(self) -> Dict[str, Any]:
        """The gRPC service config applying this policy to every method of the service."""
        if self.max_attempts < 2:
            return {}
        return {
            "methodConfig": [
                {
                    "name": [{"service": SERVICE}],
                    "retryPolicy": {
                        # gRPC caps maxAttempts at 5 (more is treated as 5).
                        "maxAttempts": self.max_attempts,
                        "initialBackoff": f"{self.initial_backoff}s",
                        "maxBackoff": f"{self.max_backoff}s",
                        "backoffMultiplier": self.multiplier,
                        "retryableStatusCodes": [code.name for code in RETRYABLE_CODES],
                    },
                }
            ]
        }

    def channel_options(self, max_message_bytes: int) -> List[Tuple[str, Any]]:
        """Channel options that make gRPC retry with this policy (none when ``max_attempts`` is 1)."""
        if self.max_attempts < 2:
            return [("grpc.enable_retries", 0)]
        return [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", json.dumps(self.service_config())),
            ("grpc.per_rpc_retry_buffer_size", max_message_bytes),
        ]

    def call(self, fn: Callable[[], Any], sleep: Callable[[float], None] = time.sleep) -> Any:
        """Calls ``fn()`` and retries it on a retryable :class:`grpc.RpcError`, at most ``max_attempts`` calls."""
        delays = self.delays()
        while True:
            try:
                return fn()
            except grpc.RpcError as error:
                code = error.code() if hasattr(error, "code") else None
                delay = next(delays, None)
                if code is None or not is_retryable(code) or pushback_forbids(error) or delay is None:
                    raise
                sleep(delay)
