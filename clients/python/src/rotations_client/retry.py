"""The retry policy: which failures are worth another try, and how long to wait before it.

Codes: UNAVAILABLE (a replica starting, draining or gone) and RESOURCE_EXHAUSTED (a busy server's
admission limit). Waits: bounded exponential backoff with full jitter (a uniform draw in
``[0, min(max_backoff, initial_backoff * multiplier**attempt)]``), so that many clients retrying at
once spread out instead of returning together. The Rust CLI's ``src/client/retry.rs`` is the same.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator

import grpc

#: Status codes after which the same request may succeed if sent again.
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


def is_retryable(code: grpc.StatusCode) -> bool:
    """Whether a call that failed with ``code`` is worth sending again."""
    return code in RETRYABLE_CODES


@dataclass(frozen=True)
class RetryPolicy:
    """At most ``max_attempts`` tries in all; backoff doubles from ``initial_backoff`` up to ``max_backoff`` seconds."""

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0

    def delays(self) -> Iterator[float]:
        """The wait before each retry (``max_attempts - 1`` of them), with full jitter."""
        for attempt in range(self.max_attempts - 1):
            cap = min(self.max_backoff, self.initial_backoff * self.multiplier**attempt)
            yield random.uniform(0.0, cap)
