"""Typed Python client of the rotations gRPC service (``rotations.v1.RotationService``).

    >>> from rotations_client import Client
    >>> with Client("127.0.0.1:50051") as client:
    ...     result = client.rotations(sentences, target=" her")
    ...     result.angles.shape        # [layers, sentences, 3]: target, non_target, shuffled

The gRPC stubs are generated from the repository's ``proto/`` when the package is built or
installed (``pip install ./clients/python``); see ``docs/src/python.md``.

gRPC's C core writes its own log lines to stderr (connection failures it retries, fork warnings);
they say nothing a ``RotationsError`` does not, so they are off unless asked for: set
``GRPC_VERBOSITY`` (e.g. ``GRPC_VERBOSITY=debug``) to see them. This must happen before grpc is
first imported, hence here, first.
"""

import os as _os

_os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from ._types import (
    CONDITIONS,
    DRAW_FIELDS,
    AllLayers,
    AngleMatrixSums,
    Analysis,
    ConditionStatistics,
    GroupComparison,
    GroupLayerTest,
    GroupTests,
    LayerStatistics,
    LayerTest,
    ModelInfo,
    Norms,
    Progress,
    RotationChunk,
    RotationResult,
    SentenceReport,
    SignificanceResult,
    SublayerRotations,
    SkippedSentence,
    Tokenized,
    Vectors,
    read_angles_csv,
    stream_frame,
)
from ._options import Options, VectorsOut
from .client import DEFAULT_ADDRESS, Client, collect_stream
from .connect import open_channel
from .cluster import Cluster, ClusterStats
from .errors import InvalidSentence, RotationsError
from .serve import serve
from .retry import RETRYABLE_CODES, RetryPolicy, is_retryable

__all__ = [
    "InvalidSentence",
    "serve",
    "SkippedSentence",
    "AllLayers",
    "AngleMatrixSums",
    "CONDITIONS",
    "DEFAULT_ADDRESS",
    "DRAW_FIELDS",
    "Analysis",
    "Client",
    "Cluster",
    "ClusterStats",
    "ConditionStatistics",
    "GroupComparison",
    "GroupLayerTest",
    "GroupTests",
    "LayerStatistics",
    "LayerTest",
    "ModelInfo",
    "Norms",
    "Options",
    "RETRYABLE_CODES",
    "RetryPolicy",
    "Progress",
    "RotationChunk",
    "RotationResult",
    "RotationsError",
    "SentenceReport",
    "SignificanceResult",
    "SublayerRotations",
    "Tokenized",
    "Vectors",
    "VectorsOut",
    "collect_stream",
    "read_angles_csv",
    "stream_frame",
    "open_channel",
    "is_retryable",
]

__version__ = "0.1.0"
