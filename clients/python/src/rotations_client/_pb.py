"""The generated stubs (written by setup.py at build/install time, never committed)."""

from __future__ import annotations

try:
    from ._proto.rotations.v1 import rotations_pb2 as pb
    from ._proto.rotations.v1 import rotations_pb2_grpc as pb_grpc
except ImportError as error:  # pragma: no cover - only when run from an uninstalled source tree
    raise ImportError(
        "rotations_client's gRPC stubs are missing: they are generated from proto/ when the package is "
        "installed. Run `pip install ./clients/python` (or `make python-test`) from the repository root."
    ) from error

__all__ = ["pb", "pb_grpc"]
