"""``Client``: a thin, typed wrapper over the generated ``RotationServiceStub``."""

from __future__ import annotations

import dataclasses
from typing import (
    Any,
    Callable,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    TypeVar,
    Union,
)

import grpc
import numpy as np

from . import _inside, _tracing
from ._pb import pb, pb_grpc
from ._types import (
    CONDITIONS,
    Analysis,
    GroupComparison,
    GroupTests,
    LayerStatistics,
    ModelInfo,
    RotationChunk,
    RotationResult,
    SentenceReport,
    SignificanceResult,
    Tokenized,
)
from ._options import (
    Condition,
    Correction,
    Groups,
    Options,
    Target,
    labelled_groups,
    sentences_list,
)
from ._vectors import write_vectors
from .connect import Pem, open_channel
from .errors import RotationsError
from .retry import RetryPolicy

#: Where ``rotations serve`` listens by default: 127.0.0.1 only, so not ``localhost``, which may
#: also resolve to ::1 where nothing listens (and an error could come from that attempt).
DEFAULT_ADDRESS = "127.0.0.1:50051"
#: Largest message either way; the server's default limit (a unary GPT-2 XL result for 4096 sentences is ~6 MB).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

T = TypeVar("T")


def _angle_tensor(angles: Union[np.ndarray, RotationResult, Analysis, Sequence[Any]]) -> "pb.Tensor":
    if isinstance(angles, Analysis):
        angles = angles.rotations
    if isinstance(angles, RotationResult):
        angles = angles.angles
    array = np.asarray(angles, dtype=np.float32)
    if array.ndim != 3:
        raise ValueError(f"angles must be [layers, sentences, conditions], got shape {list(array.shape)}")
    return pb.Tensor(shape=list(array.shape), values=array.ravel(order="C").tolist())


class Client:
    """A connection to a rotations server.

    ``address`` is ``host:port`` (default ``127.0.0.1:50051``); ``http://host:port`` as the Rust CLI
    takes it works too, and ``https://`` uses TLS. ``timeout`` (seconds) is every call's deadline
    unless a call gives its own. Use it as a context manager, or call :meth:`close`.

    Security: ``api_key`` is sent as ``authorization: Bearer <key>``. For TLS, ``root_certificates``
    is the CA to trust (default: grpc's bundled roots); ``certificate_chain`` and ``private_key`` are
    the client's certificate for mutual TLS; each is PEM bytes or a PEM file's path. Any of them (or
    ``credentials``, a ready ``grpc.ChannelCredentials``) makes a bare ``host:port`` a TLS address.
    ``tls_server_name`` is the name the server's certificate must carry instead of the address's
    host (replicas reached by IP, certificates naming the Service).

    Calls refused with ``RESOURCE_EXHAUSTED`` or ``UNAVAILABLE`` are retried by gRPC with bounded
    exponential backoff and jitter (``retry``, default :class:`RetryPolicy`\ (); ``None`` turns it
    off); see :mod:`rotations_client.retry` for when gRPC can and cannot retry.

    Every failed call raises :class:`RotationsError` with the server's status code and message.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        timeout: Optional[float] = None,
        options: Sequence[tuple[str, Any]] = (),
        credentials: Optional[grpc.ChannelCredentials] = None,
        api_key: Optional[str] = None,
        root_certificates: Optional[Pem] = None,
        certificate_chain: Optional[Pem] = None,
        private_key: Optional[Pem] = None,
        retry: Optional[RetryPolicy] = RetryPolicy(),
        tls_server_name: Optional[str] = None,
    ) -> None:
        channel_options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            *(retry or RetryPolicy(max_attempts=1)).channel_options(MAX_MESSAGE_BYTES),
            *options,
        ]
        self._connection = open_channel(
            address,
            api_key=api_key,
            root_certificates=root_certificates,
            certificate_chain=certificate_chain,
            private_key=private_key,
            credentials=credentials,
            options=channel_options,
            tls_server_name=tls_server_name,
        )
        self._channel = self._connection.channel
        self._stub = pb_grpc.RotationServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self.address = address
        self.timeout = timeout
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the channel (idempotent); later calls raise ``ValueError``."""
        if not self._closed:
            self._closed = True
            self._channel.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Client({self.address!r}, {state})"

    def wait_ready(self, timeout: float = 30.0, *, no_server_after: float = 3.0) -> ModelInfo:
        """Waits until the server answers ``GetModelInfo`` (it is UNAVAILABLE while the model loads); returns it.

        A server that is starting opens its port before it loads the model, so an address where
        nothing listens for ``no_server_after`` seconds fails at once with "no server at … — is
        `rotations serve` running?" instead of waiting the whole ``timeout``."""
        import time

        started = time.monotonic()
        deadline = started + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                return self.model_info(timeout=max(min(left, no_server_after), 0.1))
            except RotationsError as e:
                if e.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) or left <= 0:
                    raise
                nobody = e.message.startswith("no server at") or e.code == grpc.StatusCode.DEADLINE_EXCEEDED
                if nobody and time.monotonic() - started >= no_server_after:
                    raise RotationsError(
                        grpc.StatusCode.UNAVAILABLE,
                        f"no server at {self._connection.address} — is `rotations serve` running, on that host and port?",
                        "GetModelInfo",
                        details=e.details,
                    ) from None
            time.sleep(min(0.2, max(left, 0)))

    def _call(self, rpc: str, method: Callable[..., T], request: Any, timeout: Optional[float]) -> T:
        if self._closed:
            raise ValueError("this Client is closed")
        try:
            # The application's trace context, when it uses OpenTelemetry (_tracing).
            metadata = _tracing.metadata()
            return method(request, timeout=self.timeout if timeout is None else timeout, metadata=metadata or None)
        except grpc.RpcError as error:
            raise self._connection.error(error, rpc).with_texts(request) from None

    # -- the RPCs --------------------------------------------------------------------------------

    def model_info(self, *, timeout: Optional[float] = None) -> ModelInfo:
        """The served model's name, layers, hidden size, vocabulary, positions, execution provider, dtype."""
        m = self._call("GetModelInfo", self._stub.GetModelInfo, pb.GetModelInfoRequest(), timeout)
        return ModelInfo.from_pb(m)

    def tokenize(self, texts: Iterable[str], *, timeout: Optional[float] = None) -> List[Tokenized]:
        """Token ids, strings and byte offsets of each text (to pick a target: note GPT-2's leading space, ``" her"``)."""
        texts = sentences_list(texts)
        m = self._call("Tokenize", self._stub.Tokenize, pb.TokenizeRequest(texts=texts), timeout)
        return [Tokenized.from_pb(text, t) for text, t in zip(texts, m.texts)]

    def rotations(
        self, sentences: Iterable[str], target: Target = " her", *, timeout: Optional[float] = None, **options: Any
    ) -> RotationResult:
        """The notebook's ``angles`` (``[layers, rows, 3]``) with positions and shuffle draws.

        ``target`` is a word as text (``" her"``; one token or several) or a token id. ``options``
        are those of :class:`Options` but the t-tests' (what is compared, which token, all layers).
        """
        opts = Options.parse("rotations", options, tests=False)
        request = opts.rotation_request(sentences, target, tests=False)
        m = self._call("ComputeRotations", self._stub.ComputeRotations, request, timeout)
        return RotationResult.from_pb(m)

    def significance(
        self,
        angles: Union[np.ndarray, RotationResult, Analysis],
        *,
        condition_a: Optional[Condition] = None,
        condition_b: Optional[Condition] = None,
        alpha: Optional[float] = None,
        correction: Optional[Correction] = None,
        num_tests: Optional[int] = None,
        timeout: Optional[float] = None,
    ) -> SignificanceResult:
        """Per-layer paired t-tests of ``angles[:, :, a]`` against ``angles[:, :, b]``.

        Defaults (the server's): conditions 0 (target) and 1 (non_target), alpha 0.05, Bonferroni
        over the number of layers tested (the notebook divided by ``n_hiddens``: pass
        ``num_tests=n_hiddens`` to reproduce that).
        """
        opts = Options(
            condition_a=condition_a, condition_b=condition_b, alpha=alpha, correction=correction, num_tests=num_tests
        )
        request = pb.SignificanceRequest(angles=_angle_tensor(angles), options=opts.significance())
        m = self._call("TestSignificance", self._stub.TestSignificance, request, timeout)
        return SignificanceResult.from_pb(m)

    def significance_from_statistics(
        self,
        statistics: Sequence[LayerStatistics],
        *,
        alpha: Optional[float] = None,
        correction: Optional[Correction] = None,
        num_tests: Optional[int] = None,
        timeout: Optional[float] = None,
    ) -> SignificanceResult:
        """Per-layer t-tests from merged exact statistics (one per layer, in order): the server's own
        computation, so the result equals one ``analyze`` of the whole corpus bit for bit."""
        opts = Options(alpha=alpha, correction=correction, num_tests=num_tests)
        request = pb.SignificanceRequest(statistics=[s.to_pb() for s in statistics], options=opts.significance())
        m = self._call("TestSignificance", self._stub.TestSignificance, request, timeout)
        return SignificanceResult.from_pb(m)

    def group_significance_from_statistics(
        self,
        group_a: Sequence[LayerStatistics],
        group_b: Sequence[LayerStatistics],
        *,
        condition: Optional[Condition] = None,
        alpha: Optional[float] = None,
        correction: Optional[Correction] = None,
        num_tests: Optional[int] = None,
        timeout: Optional[float] = None,
    ) -> GroupTests:
        """Welch's t-tests per layer from two groups' merged statistics of one condition's angles
        (``Analysis.condition_statistics[c].layers`` of each, merged over shards): the server's own
        computation, so the result equals :meth:`compare_groups` of the whole groups bit for bit.
        ``condition`` only records which condition the statistics describe (default target)."""
        opts = Options(alpha=alpha, correction=correction, num_tests=num_tests)
        request = pb.SignificanceRequest(
            group_a=[s.to_pb() for s in group_a],
            group_b=[s.to_pb() for s in group_b],
            group_options=opts.group_tests(condition),
        )
        m = self._call("TestSignificance", self._stub.TestSignificance, request, timeout)
        return GroupTests.from_pb(m.group_tests)

    def compare_groups(
        self,
        groups: Groups,
        target: Target = " her",
        *,
        condition: Condition = "target",
        timeout: Optional[float] = None,
        **options: Any,
    ) -> GroupComparison:
        """Two labelled groups of sentences (``{"possessive": [...], "object": [...]}``, the first is
        A): each group's :meth:`analyze`, and per layer Welch's t-test of the groups' ``condition``
        angles (default the target's), with Hedges' g and the correction over layers. ``options``
        are :class:`Options`; ``alpha``, ``correction`` and ``num_tests`` apply to the group tests
        and to each group's paired tests."""
        opts = Options.parse("compare_groups", options)
        request = pb.GroupComparisonRequest(options=opts.group_tests(condition))
        for label, sentences in labelled_groups(groups):
            request.groups.add(label=label).request.CopyFrom(opts.rotation_request(sentences, target))
        m = self._call("CompareGroups", self._stub.CompareGroups, request, timeout)
        return GroupComparison.from_pb(m)

    def analyze(
        self, sentences: Iterable[str], target: Target = " her", *, timeout: Optional[float] = None, **options: Any
    ) -> Analysis:
        """The notebook in one call: :meth:`rotations` and :meth:`significance` of the result.
        ``options`` are :class:`Options` (what is compared, which token, all layers, the t-tests);
        with ``vectors_out`` the analysis streams (:meth:`stream_rotations`), its vectors going to disk."""
        opts = Options.parse("analyze", options)
        if opts.vectors_out is not None:
            return collect_stream(self.stream_rotations(sentences, target, timeout=timeout, **options))
        request = opts.rotation_request(sentences, target)
        m = self._call("Analyze", self._stub.Analyze, request, timeout)
        return Analysis.from_pb(m)

    def stream_rotations(
        self,
        sentences: Iterable[str],
        target: Target = " her",
        *,
        timeout: Optional[float] = None,
        first_sentence_index: int = 0,
        **options: Any,
    ) -> Iterator[RotationChunk]:
        """For large corpora: chunks of sentences in input order as they finish, then a final chunk
        (``last``) with the merged per-layer statistics and their t-tests. :func:`collect_stream`
        reassembles them into an :class:`Analysis`. Closing the iterator early cancels the request.
        ``first_sentence_index`` is the corpus index of ``sentences[0]`` (a piece of a larger corpus:
        draws, reports and chunks then carry corpus indices, exactly as in one request of the whole).
        ``options`` are :class:`Options`; with ``all_layers`` the final chunk carries the merged
        exact matrix sums and the mean matrix.
        """
        opts = Options.parse("stream_rotations", options)
        request = opts.rotation_request(sentences, target, first_sentence_index=first_sentence_index)
        chunks = self.stream_request(request, timeout)
        return chunks if opts.vectors_out is None else write_vectors(chunks, opts.vectors_out)

    def stream_request(self, request: "pb.RotationRequest", timeout: Optional[float] = None) -> Iterator[RotationChunk]:
        """``StreamRotations`` of a request built by :meth:`Options.rotation_request` (the Cluster's chunks)."""
        call = self._call("StreamRotations", self._stub.StreamRotations, request, timeout)
        return self._chunks(call)

    def _chunks(self, call: Any) -> Iterator[RotationChunk]:
        try:
            for message in call:
                yield RotationChunk.from_pb(message)
        except grpc.RpcError as error:
            raise self._connection.error(error, "StreamRotations") from None
        finally:
            call.cancel()  # a no-op once the stream has ended; stops the server's work otherwise


def collect_stream(chunks: Iterable[RotationChunk]) -> Analysis:
    """Reassembles :meth:`Client.stream_rotations` into what :meth:`Client.analyze` returns.

    Layer means are computed here from the float32 angles (in float64, then rounded to float32, as
    the server does). Raises ``ValueError`` if the stream ends early. Without a significance test
    (fewer than two sentences) ``significance`` is None and ``significance_error`` says why, as in
    :meth:`Client.analyze`.
    """
    parts: List[RotationChunk] = []
    last: Optional[RotationChunk] = None
    for chunk in chunks:
        if chunk.last:
            last = chunk
            break
        parts.append(chunk)
    if last is None:
        raise ValueError("the stream ended without its final chunk")
    total = last.progress.total
    # A chunk whose every sentence was skipped has no rows (but still its layers).
    layers = max((p.angles.shape[0] for p in parts), default=0)
    for part in parts:
        if part.angles.shape[0] != layers:
            raise ValueError(f"chunk of shape {list(part.angles.shape)} at sentence {part.first_sentence} does not fit")
    # Rows in corpus order: one per sentence, or one per occurrence (occurrence="all").
    angles = np.concatenate([p.angles for p in parts], axis=1) if parts else np.zeros((0, 0, 3), np.float32)
    draws = np.concatenate([p.shuffle_draws for p in parts], axis=1) if parts else np.zeros((0, 0, 4), np.int64)
    reports: List[SentenceReport] = [r for part in parts for r in part.sentences]
    delivered = len({r.index for r in reports})
    skipped = tuple(s for part in parts for s in part.skipped)
    if delivered + len(skipped) != total:
        raise ValueError(f"the stream delivered {delivered} of {total} sentences and skipped {len(skipped)}")
    all_layers = last.all_layers
    row_matrices = [p.all_layers.row_matrices for p in parts if p.all_layers and p.all_layers.row_matrices is not None]
    if all_layers is not None and row_matrices:
        all_layers = dataclasses.replace(all_layers, row_matrices=np.concatenate(row_matrices))
    sublayers, norms = _inside.assemble(parts, last)
    rotations = RotationResult(
        angles=angles,
        layer_means=angles.astype(np.float64).mean(axis=1).astype(np.float32),
        conditions=CONDITIONS,
        unit=last.unit,
        sentences=tuple(reports),
        shuffle_draws=draws,
        shuffle_seed=last.shuffle_seed,
        model_name=last.model_name,
        target_token_id=last.target_token_id,
        all_layers=all_layers,
        target_token_ids=last.target_token_ids,
        sublayers=sublayers,
        norms=norms,
        skipped=skipped,
    )
    steps = (last.step_significance, last.step_statistics)
    return Analysis(rotations, last.significance, last.significance_error, last.condition_statistics, *steps)
