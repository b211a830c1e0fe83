"""``Cluster``: one corpus sharded over replicas, with the results of one server, bit for bit.

The corpus is cut into fixed chunks by corpus index; each replica pulls the next chunk (a few in
flight each), computes it with ``StreamRotations`` at its corpus offset (``first_sentence_index``:
the shuffled draws are keyed by corpus index) and returns its angles and its exact per-layer
statistics. A chunk whose replica fails (UNAVAILABLE, RESOURCE_EXHAUSTED, INTERNAL, UNKNOWN, or the
deadline: a default one derived from the chunk's size) goes to another; every answer is validated
(``_validate.py``) before it is merged, and a replica whose answer is invalid is left out. Chunks
are delivered in corpus order and their integer sums merged; the t-tests are asked of a replica
from the merged sums (``TestSignificance`` on statistics), so one implementation, the
server's, computes them. Integer addition is associative, hence the result depends neither on the
number of replicas, nor on which ran what, nor on failures.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

import grpc
import numpy as np

from ._types import (
    CONDITIONS,
    AllLayers,
    AngleMatrixSums,
    Analysis,
    ConditionStatistics,
    GroupComparison,
    LayerStatistics,
    ModelInfo,
    Progress,
    RotationChunk,
    RotationResult,
    SignificanceResult,
    merge_conditions,
)
from . import _tracing
from ._options import Condition, Groups, Options, Target, condition_index, labelled_groups
from ._npy import NpyAppender as _NpyAppender
from ._vectors import write_vectors
from .client import Client, collect_stream
from .connect import Pem
from .errors import InvalidSentence, RotationsError
from ._inside import InsideSums
from ._validate import Expected, InvalidAnswer, validate_chunk, validate_merged, validate_significance
from .retry import RetryPolicy, is_retryable

T = TypeVar("T")

#: Sentences per chunk: large enough to fill a replica's batches, small enough to fail over cheaply.
DEFAULT_CHUNK_SIZE = 256


#: Codes that say a replica failed, not the request: its chunk goes to another replica. The codes
#: that say the request is wrong (INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE,
#: UNAUTHENTICATED, ...) end the run: every replica would answer them alike.
_REPLICA_FAULTS = (
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.CANCELLED,
)

#: A chunk's default deadline: this many seconds, and CHUNK_DEADLINE_PER_SENTENCE for each of its
#: sentences (as the Rust CLI's). Generous: a frozen replica is found sooner by the channel's
#: keepalive pings (connect.py); this bounds one that answers pings but not the call.
CHUNK_DEADLINE_BASE = 60.0
CHUNK_DEADLINE_PER_SENTENCE = 2.0


def chunk_deadline(sentences: int) -> float:
    """The default deadline in seconds of a chunk of ``sentences`` sentences."""
    return CHUNK_DEADLINE_BASE + CHUNK_DEADLINE_PER_SENTENCE * sentences


def _failover(code: grpc.StatusCode) -> bool:
    """Worth sending to another replica: the retry policy's codes, and every replica fault."""
    return is_retryable(code) or code in _REPLICA_FAULTS


def _model_key(info: ModelInfo) -> Tuple[str, int, str]:
    """What every replica must serve alike."""
    return (info.model_name, info.num_layers, info.weights_sha256)


def resolve(addresses: Union[str, Sequence[str]]) -> List[str]:
    """``host:port`` addresses of the replicas: a list as given, or every address a
    ``dns:///name:port`` name resolves to (a Kubernetes headless Service lists one per ready pod)."""
    if isinstance(addresses, str):
        if not addresses.startswith("dns:///"):
            return [addresses]
        host, _, port = addresses[len("dns:///") :].rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{addresses!r}: give dns:///name:port")
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        found = sorted({(info[4][0], info[4][1]) for info in infos})
        return [f"[{ip}]:{p}" if ":" in ip else f"{ip}:{p}" for ip, p in found]
    out = list(addresses)
    if not out:
        raise ValueError("a Cluster needs at least one address")
    return out


@dataclasses.dataclass
class ClusterStats:
    """What a run did: chunks served and failures per replica, chunks sent again."""

    chunks: Dict[str, int] = dataclasses.field(default_factory=lambda: collections.defaultdict(int))
    failures: Dict[str, int] = dataclasses.field(default_factory=lambda: collections.defaultdict(int))
    resent: int = 0
    dropped_replicas: List[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Chunk:
    number: int
    first: int
    sentences: List[str]
    attempts: int = 0


@dataclasses.dataclass(frozen=True)
class _Request:
    """What every chunk of a run asks: the target, the options, each chunk's deadline."""

    target: Target
    options: Options
    timeout: Optional[float]


@dataclasses.dataclass
class _Result:
    parts: List[RotationChunk]
    statistics: Tuple[LayerStatistics, ...]
    last: RotationChunk
    #: Rows (sentences, or occurrences with occurrence="all"), validated against the statistics.
    rows: int
    sentences: int


class _Run:
    """One corpus over the replicas: workers pull chunks, the caller's thread reads results in order."""

    def __init__(self, cluster: Cluster, sentences: Iterable[str], request: _Request, expected: Expected) -> None:
        if isinstance(sentences, (str, bytes)):
            raise TypeError("sentences must be an iterable of strings, not one string")
        self.cluster = cluster
        self.request = request
        self.expected = expected
        #: The target's token ids, from the first valid chunk: every other chunk's must agree.
        self.target_ids: Optional[Tuple[int, Tuple[int, ...]]] = None
        #: The latest failure, for the error when no replica is left.
        self.last_failure = ""
        self.source = iter(sentences)
        self.exhausted = False
        self.read = 0  # sentences taken from the source
        self.taken = 0  # chunks cut so far
        self.resend: Deque[_Chunk] = collections.deque()
        self.results: Dict[int, _Result] = {}
        self.delivered = 0  # chunks handed to the caller
        self.window = 0  # chunks cut and not yet handed to the caller
        self.error: Optional[BaseException] = None
        self.stopped = False
        self.live: Dict[str, int] = {}  # replica -> workers still running
        self.cond = threading.Condition()
        # The caller's trace context: worker threads do not inherit it, and chunk spans join it.
        self.trace_context = _tracing.current()
        #: Once a chunk fails with invalid sentences: every invalid sentence found (by corpus index),
        #: the chunks left only checked (validate_only, no forward pass); ``checked`` counts them.
        self.checking: Optional[Dict[int, InvalidSentence]] = None
        self.checked = 0

    # -- workers ----------------------------------------------------------------------------------

    def start(self, address: str) -> None:
        """Workers for ``address``, unless it has some or was dropped (listed again: restarted)."""
        with self.cond:
            if self.live.get(address, 0) > 0 or address in self.cluster.stats.dropped_replicas:
                return
            self.live[address] = self.cluster.in_flight
        for _ in range(self.cluster.in_flight):
            threading.Thread(target=self._work, args=(address,), daemon=True).start()

    def _next_chunk(self, address: str) -> Optional[_Chunk]:
        """The next chunk to compute (a failed one first); None when every chunk is computed, or when
        ``address`` is no longer listed or was dropped (it takes no more chunks). While chunks are
        in flight elsewhere it waits: one may fail and come back. Holds the lock."""
        while True:
            if self.stopped or self.error is not None or address in self.cluster._unlisted:
                return None
            if address in self.cluster.stats.dropped_replicas:
                return None
            if self.resend:
                return self.resend.popleft()
            if self.exhausted:
                if self.delivered + len(self.results) + self.checked == self.taken:
                    return None
                self.cond.wait(0.5)
                continue
            # Checked chunks are never handed to the caller: the window does not hold them back.
            if self.window < self.cluster.max_window or self.checking is not None:
                sentences = list(itertools.islice(self.source, self.cluster.chunk_size))
                for i, s in enumerate(sentences):
                    if not isinstance(s, str):
                        raise TypeError(f"sentence {self.read + i} is {type(s).__name__}, not str")
                if len(sentences) < self.cluster.chunk_size:
                    self.exhausted = True
                if not sentences:
                    self.cond.notify_all()
                    return None
                chunk = _Chunk(self.taken, self.read, sentences)
                self.taken += 1
                self.read += len(sentences)
                self.window += 1
                return chunk
            self.cond.wait(0.5)

    def _work(self, address: str) -> None:
        with _tracing.attached(self.trace_context):
            self._pull(address)

    def _pull(self, address: str) -> None:
        client = self.cluster._client(address)
        delays = self.cluster.retry.delays()
        try:
            while True:
                with self.cond:
                    try:
                        chunk = self._next_chunk(address)
                    except BaseException as e:  # a bad sentence in the caller's iterable
                        self.error = e
                        self.cond.notify_all()
                        return
                if chunk is None:
                    return
                try:
                    result = self._compute(client, chunk)
                except InvalidAnswer as e:  # nothing this replica sends can be trusted any more
                    self._invalid(address, chunk, e)
                    return
                except RotationsError as e:
                    if self._check_the_rest(chunk, e):
                        continue
                    if not self._failed(address, chunk, e):
                        return
                    delay = next(delays, None)
                    if delay is None:  # this replica failed too often in a row: leave it
                        with self.cond:
                            self.cluster.stats.dropped_replicas.append(address)
                        return
                    time.sleep(delay)
                    continue
                except BaseException as e:  # anything else ends the run, with its error
                    with self.cond:
                        self.error = e
                        self.cond.notify_all()
                    return
                delays = self.cluster.retry.delays()  # a success resets the backoff
                if result is None:  # the chunk was only checked
                    continue
                with self.cond:
                    self.results[chunk.number] = result
                    self.cluster.stats.chunks[address] += 1
                    self.cond.notify_all()
        finally:
            with self.cond:
                self.live[address] -= 1
                self.cond.notify_all()

    def _compute(self, client: Client, chunk: _Chunk) -> _Result:
        attributes = {
            "server.address": client.address,
            "chunk.number": chunk.number,
            "chunk.failures": chunk.attempts,
            "first_sentence": chunk.first,
            "sentences": len(chunk.sentences),
        }
        with _tracing.span(f"chunk {chunk.number}", **attributes) as span:
            try:
                return self._stream_chunk(client, chunk)
            except RotationsError as e:
                _tracing.failed(span, e.code, e.message, _failover(e.code))
                raise

    def _stream_chunk(self, client: Client, chunk: _Chunk) -> Optional[_Result]:
        """The chunk's answer, validated (``InvalidAnswer`` otherwise); None when only checked."""
        parts: List[RotationChunk] = []
        r = self.request
        options = r.options.for_rows(chunk.first, len(chunk.sentences))
        request = options.rotation_request(chunk.sentences, r.target, first_sentence_index=chunk.first)
        checking = request.validate_only = self.checking is not None
        timeout = chunk_deadline(len(chunk.sentences)) if r.timeout is None else r.timeout
        try:
            stream = iter(client.stream_request(request, timeout))
            for part in stream:
                if part.last:
                    # Read the call to its status: left early, the server would see it cancelled.
                    for _ in stream:
                        pass
                    if checking:
                        self._checked(chunk, part)
                        return None
                    rows = validate_chunk(self.expected, chunk.first, len(chunk.sentences), parts, part)
                    self._agrees(part)
                    return _Result(parts, part.statistics, part, rows, len(chunk.sentences))
                parts.append(part)
        except InvalidAnswer:
            raise
        except ValueError as e:  # a message that does not even decode (a tensor of the wrong size)
            raise InvalidAnswer(str(e)) from e
        raise RotationsError(grpc.StatusCode.UNAVAILABLE, "the stream ended without its final chunk", "StreamRotations")

    def _check_the_rest(self, chunk: _Chunk, error: RotationsError) -> bool:
        """A chunk failed with invalid sentences: from now on every chunk, this one first, is only
        checked, so that the run names every invalid sentence of the corpus. True if so."""
        if error.code != grpc.StatusCode.INVALID_ARGUMENT or not error.invalid_sentences:
            return False
        if self.request.options.skip_invalid:  # not a sentence-by-sentence refusal: the run's error
            return False
        with self.cond:
            if self.checking is None:
                self.checking = {}
            self.resend.appendleft(chunk)
            self.cond.notify_all()
        return True

    def _checked(self, chunk: _Chunk, answer: RotationChunk) -> None:
        """A checked chunk's invalid sentences (``answer.skipped``), as a Client's error lists them."""
        found = {}
        for s in answer.skipped:
            k = s.index - chunk.first
            if not 0 <= k < len(chunk.sentences):
                raise InvalidAnswer(f"checked sentence {s.index} outside its chunk at {chunk.first}")
            found[s.index] = InvalidSentence(s.index, f"sentences[{s.index}]", s.reason, s.message, chunk.sentences[k])
        with self.cond:
            assert self.checking is not None
            self.checking.update(found)
            self.checked += 1
            self.cond.notify_all()

    def _every_invalid(self) -> RotationsError:
        """The run's error: every invalid sentence of the corpus (not only the first chunk's)."""
        assert self.checking is not None
        invalid = [self.checking[i] for i in sorted(self.checking)]
        lines = [f"sentence {s.index}: {s.reason}" for s in invalid[:20]]
        more = [f"and {len(invalid) - 20:,} more"] if len(invalid) > 20 else []
        header = f"{len(invalid)} of {self.read} sentences are invalid (skip_invalid analyses the others):"
        message = "\n".join([header, *lines, *more])
        return RotationsError(
            grpc.StatusCode.INVALID_ARGUMENT, message, "StreamRotations", invalid_sentences=invalid, invalid_count=len(invalid)
        )

    def _agrees(self, last: RotationChunk) -> None:
        """What a chunk cannot check alone: the target's token ids, the same in every chunk."""
        ids = (last.target_token_id, last.target_token_ids)
        with self.cond:
            if self.target_ids is None:
                self.target_ids = ids
        if ids != self.target_ids:
            raise InvalidAnswer(f"target token ids {ids}, other chunks {self.target_ids}")

    def _invalid(self, address: str, chunk: _Chunk, error: InvalidAnswer) -> None:
        """An invalid answer: ``address`` is left out of the run, its chunk goes to another replica."""
        print(f"rotations Cluster: leaving out {address}: its answer is invalid: {error}", file=sys.stderr)
        with self.cond:
            self.cluster.stats.failures[address] += 1
            self.cluster.stats.dropped_replicas.append(address)
            self.last_failure = f"{address}, sentences {chunk.first}..{chunk.first + len(chunk.sentences)}: {error}"
            self.cluster.stats.resent += 1
            self.resend.appendleft(chunk)
            self.cond.notify_all()

    def _failed(self, address: str, chunk: _Chunk, error: RotationsError) -> bool:
        """Records a failure; True when the chunk was handed back for another replica."""
        with self.cond:
            self.cluster.stats.failures[address] += 1
            self.last_failure = f"{address}, sentences {chunk.first}..{chunk.first + len(chunk.sentences)}: {error}"
            chunk.attempts += 1
            limit = self.cluster.retry.max_attempts * max(1, len(self.live))
            if not _failover(error.code) or chunk.attempts >= limit:
                self.error = error
                self.cond.notify_all()
                return False
            self.cluster.stats.resent += 1
            self.resend.appendleft(chunk)
            self.cond.notify_all()
            return True

    # -- the caller's side ------------------------------------------------------------------------

    def results_in_order(self) -> Iterator[_Result]:
        """Chunk results in corpus order; looks for new replicas every ``resolve_interval`` seconds."""
        next_resolve = time.monotonic() + self.cluster.resolve_interval
        try:
            while True:
                if time.monotonic() >= next_resolve:
                    next_resolve = time.monotonic() + self.cluster.resolve_interval
                    for address in self.cluster._refresh():
                        self.start(address)
                with self.cond:
                    result = self._next_result(until=next_resolve)
                if result is _FINISHED:
                    return
                if result is not None:
                    yield result  # type: ignore[misc]
        finally:
            with self.cond:
                self.stopped = True
                self.cond.notify_all()

    def _next_result(self, until: float) -> Any:
        """The next chunk's result, ``_FINISHED``, or None at ``until``; raises the run's error. Holds the lock."""
        while self.delivered not in self.results:
            if self.error is not None:
                raise self.error
            if self.checking is not None and self.exhausted and not self.resend:
                if self.delivered + len(self.results) + self.checked == self.taken:
                    raise self._every_invalid()
            if self.exhausted and self.delivered == self.taken and not self.resend:
                return _FINISHED
            if not any(self.live.values()):
                dropped = ", ".join(self.cluster.stats.dropped_replicas) or "none"
                last = f"; the last failure: {self.last_failure}" if self.last_failure else ""
                raise RotationsError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"no replica left to compute chunk {self.delivered} (dropped: {dropped}){last}",
                    "StreamRotations",
                )
            left = until - time.monotonic()
            if left <= 0:
                return None
            self.cond.wait(min(left, 0.5))
        self.delivered += 1
        self.window -= 1
        self.cond.notify_all()
        return self.results.pop(self.delivered - 1)


#: Marks the end of a run's results.
_FINISHED = object()


class Cluster:
    """Replicas of the rotations service, used as one: the same results as one ``Client``, bit for bit.

    ``addresses`` is a list of ``host:port`` (or ``http://host:port``), or one ``dns:///name:port``
    whose every address is a replica (a Kubernetes headless Service); the name is resolved again
    every ``resolve_interval`` seconds during a run so that new replicas join (and replicas no
    longer listed finish their chunks and take no more). ``chunk_size``
    sentences go to a replica at a time, ``in_flight`` chunks per replica at once. ``timeout`` is
    each chunk's deadline (a chunk past it goes to another replica; default :func:`chunk_deadline`,
    60 s and 2 s per sentence). ``options``,
    ``credentials``, ``api_key`` and the TLS material (``root_certificates``, ``certificate_chain``,
    ``private_key``) are passed to each replica's channel as :class:`Client` takes them;
    ``tls_server_name`` too, for a ``dns:///`` name whose replicas are reached by IP while their
    certificate names the Service.

    Every replica must serve the same model (name, layers and weights fingerprint): checked when
    a run starts and when a replica joins; one that serves another is left out with a warning.
    Every answer is checked before it is merged (layer count and ranges, ``n`` against the rows,
    rows contiguous to the chunk's end, model and weights); a replica whose answer is invalid is
    left out of the run and its chunk goes to another. ``stats`` counts chunks and failures per
    replica, and lists the replicas dropped.
    """

    def __init__(
        self,
        addresses: Union[str, Sequence[str]],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        in_flight: int = 2,
        timeout: Optional[float] = None,
        retry: Optional[RetryPolicy] = None,
        resolve_interval: float = 30.0,
        options: Sequence[Tuple[str, Any]] = (),
        credentials: Optional[grpc.ChannelCredentials] = None,
        api_key: Optional[str] = None,
        root_certificates: Optional[Pem] = None,
        certificate_chain: Optional[Pem] = None,
        private_key: Optional[Pem] = None,
        tls_server_name: Optional[str] = None,
    ) -> None:
        if chunk_size < 1 or in_flight < 1:
            raise ValueError("chunk_size and in_flight must be at least 1")
        self.addresses = addresses
        self.chunk_size = chunk_size
        self.in_flight = in_flight
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.resolve_interval = resolve_interval
        self._channel_args: Dict[str, Any] = {
            "options": options,
            "credentials": credentials,
            "api_key": api_key,
            "root_certificates": root_certificates,
            "certificate_chain": certificate_chain,
            "private_key": private_key,
            "tls_server_name": tls_server_name,
            # The cluster's own failover resends a refused chunk to another replica at once.
            "retry": None,
        }
        self._clients: Dict[str, Client] = {}
        #: Replicas the latest lookup no longer lists: they finish their chunks and take no more.
        self._unlisted: frozenset = frozenset()
        #: Replicas left out for serving another model (never asked again).
        self._other_model: set = set()
        self._info: Optional[ModelInfo] = None
        self._lock = threading.Lock()
        self.stats = ClusterStats()
        self._refresh()
        if not self._clients:
            raise ValueError(f"{addresses!r} names no replica")

    @property
    def max_window(self) -> int:
        """Chunks read ahead of the caller (bounds memory whatever the corpus size)."""
        return 2 * self.in_flight * max(1, len(self._clients)) + 2

    def _client(self, address: str) -> Client:
        with self._lock:
            return self._clients[address]

    def _refresh(self) -> List[str]:
        """Resolves the addresses again; returns the listed replicas, those that joined checked for
        the same model. Replicas no longer listed are marked to take no more chunks."""
        listed = resolve(self.addresses)
        with self._lock:
            self._unlisted = frozenset(set(self._clients) - set(listed))
        joined = []
        for address in listed:
            with self._lock:
                if address in self._other_model:
                    continue
                if address in self._clients:
                    joined.append(address)
                    continue
            client = Client(address, timeout=self.timeout, **self._channel_args)
            if self._info is not None:
                try:
                    self._check_same_model(address, client.model_info(timeout=self.timeout or 30))
                except RotationsError as e:
                    print(f"rotations Cluster: not using {address} for now: {e}", file=sys.stderr)
                    client.close()
                    continue
                except ValueError as e:
                    print(f"rotations Cluster: not using {address}: {e}", file=sys.stderr)
                    client.close()
                    with self._lock:
                        self._other_model.add(address)
                    continue
            with self._lock:
                self._clients[address] = client
            joined.append(address)
        return joined

    def _check_same_model(self, address: str, info: ModelInfo) -> None:
        assert self._info is not None
        mine = (self._info.model_name, self._info.num_layers, self._info.weights_sha256)
        theirs = (info.model_name, info.num_layers, info.weights_sha256)
        if mine != theirs:
            raise ValueError(
                f"replica {address} serves {info.model_name} ({info.num_layers} layers, weights {info.weights_sha256[:12]}) "
                f"but the cluster serves {mine[0]} ({mine[1]} layers, weights {mine[2][:12]})"
            )

    @property
    def replicas(self) -> List[str]:
        with self._lock:
            return list(self._clients)

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Cluster({self.replicas!r})"

    def model_info(self, *, timeout: Optional[float] = None) -> ModelInfo:
        """The model the replicas serve: the one most of them serve (the first listed among
        equals). A replica that serves another (name, layers or weights fingerprint) is left out
        with a warning; one that does not answer (e.g. a pod not ready yet) until it rejoins."""
        answers: Dict[str, ModelInfo] = {}
        for address in self.replicas:
            try:
                answers[address] = self._client(address).model_info(timeout=timeout)
            except RotationsError as e:
                if not _failover(e.code):
                    raise
                print(f"rotations Cluster: leaving out {address} for now: {e}", file=sys.stderr)
                with self._lock:
                    self._clients.pop(address).close()
        if not answers:
            raise RotationsError(grpc.StatusCode.UNAVAILABLE, f"no replica of {self.addresses!r} answers", "GetModelInfo")
        keys = [_model_key(info) for info in answers.values()]
        chosen = max(keys, key=keys.count)  # max keeps the first of equals
        self._info = next(info for info in answers.values() if _model_key(info) == chosen)
        for address, info in answers.items():
            try:
                self._check_same_model(address, info)
            except ValueError as e:
                print(f"rotations Cluster: leaving out {address}: {e}", file=sys.stderr)
                with self._lock:
                    self._clients.pop(address).close()
                    self._other_model.add(address)
        return self._info

    def stream_rotations(
        self,
        sentences: Iterable[str],
        target: Target = " her",
        *,
        timeout: Optional[float] = None,
        progress: bool = False,
        **options: Any,
    ) -> Iterator[RotationChunk]:
        """As :meth:`Client.stream_rotations`, over the replicas: chunks in corpus order (their
        ``first_sentence`` and reports carry corpus indices), then a final chunk with the merged
        exact statistics and their t-tests. ``sentences`` is read lazily (a file object works).
        ``timeout`` is each chunk's deadline (default the cluster's). ``progress`` shows a progress
        bar on stderr (tqdm if installed) with the failures so far. ``options`` are :class:`Options`."""
        opts = Options.parse("stream_rotations", options)
        info = self.model_info(timeout=self.timeout or 30)
        request = _Request(target, opts, self.timeout if timeout is None else timeout)
        expected = Expected.of(info, opts.unit, opts.seed, opts.all_layers, opts.steps == "sublayers", opts.norms)
        total = len(sentences) if hasattr(sentences, "__len__") else None  # type: ignore[arg-type]
        if hasattr(sentences, "readline"):  # a text file: one sentence a line, without its line break
            sentences = (line.rstrip("\r\n") for line in sentences)
        chunks = self._stream(sentences, request, expected, total, progress)
        return chunks if opts.vectors_out is None else write_vectors(chunks, opts.vectors_out)

    def _stream(
        self, sentences: Iterable[str], request: _Request, expected: Expected, total: Optional[int], progress: bool
    ) -> Iterator[RotationChunk]:
        run = _Run(self, sentences, request, expected)
        for address in self.replicas:
            run.start(address)
        bar = _progress_bar(total) if progress else None
        merged: Optional[List[LayerStatistics]] = None
        conditions: Tuple[ConditionStatistics, ...] = ()
        matrices = AngleMatrixSums(0, 0)
        inside = InsideSums()
        done = rows = computed = 0
        last: Optional[RotationChunk] = None
        try:
            for result in run.results_in_order():
                rows, computed = rows + result.rows, computed + result.sentences
                for part in result.parts:
                    # Sentences so far (rows are occurrences with occurrence="all").
                    done = part.sentences[-1].index + 1 if part.sentences else done
                    yield dataclasses.replace(part, progress=Progress(done, total or 0))
                if result.last.all_layers is not None:
                    matrices = matrices.merge(result.last.all_layers.sums)
                # Validated: each chunk has one statistic per layer, so these merges lose nothing.
                if merged is None:
                    merged = list(result.statistics)
                else:
                    merged = [m.merge(s) for m, s in zip(merged, result.statistics)]
                conditions = merge_conditions(conditions, result.last.condition_statistics)
                inside.add(result.last)
                last = result.last
                if bar is not None:
                    bar.update(done, sum(self.stats.failures.values()))
        finally:
            if bar is not None:
                bar.close()
        if last is None or merged is None:
            raise ValueError("no sentences given")
        try:
            validate_merged(expected, merged, conditions, rows, computed, run.read)
            layers = expected.num_layers
            steps, norms = (2 * layers if expected.steps else None), (expected.num_states, layers) if expected.norms else None
            inside.check(rows, steps, norms)
        except InvalidAnswer as e:
            raise RotationsError(grpc.StatusCode.DATA_LOSS, f"merging the replicas' answers: {e}", "StreamRotations") from e
        if matrices.n:
            last = dataclasses.replace(last, all_layers=AllLayers.from_sums(matrices))
        last = inside.summarize(last, expected.steps, expected.norms)
        if expected.steps:
            last = dataclasses.replace(last, step_significance=self._significance(inside.steps, request, steps=True))
        yield dataclasses.replace(self._final_chunk(last, merged, done, request), condition_statistics=conditions)

    def _final_chunk(
        self, last: RotationChunk, merged: List[LayerStatistics], done: int, request: _Request
    ) -> RotationChunk:
        significance, error = None, ""
        try:
            significance = self._significance(merged, request)
        except RotationsError as e:
            if e.code != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            error = e.message
        return dataclasses.replace(
            last,
            first_sentence=done,
            progress=Progress(done, done),
            statistics=tuple(merged),
            significance=significance,
            significance_error=error,
        )

    def _significance(self, merged: List[LayerStatistics], request: _Request, steps: bool = False) -> Any:
        """The t-tests from the merged sums, by the first replica whose answer is valid; with ``steps``
        the step tests (target against non-target, one test per step, as Analyze's)."""
        o = request.options
        num_tests = None if steps else o.num_tests

        def ask(client: Client) -> SignificanceResult:
            answer = client.significance_from_statistics(
                merged, alpha=o.alpha, correction=o.correction, num_tests=num_tests, timeout=request.timeout or 60
            )
            validate_significance(merged, answer)
            return answer

        return self._ask_replicas(ask)

    def _ask_replicas(self, call: Callable[[Client], T]) -> T:
        """``call`` on the first replica that answers validly (one that is unavailable, fails or
        answers invalidly is skipped); never a replica dropped from a run."""
        failure: Optional[RotationsError] = None
        for address in [a for a in self.replicas if a not in self.stats.dropped_replicas]:
            try:
                return call(self._client(address))
            except RotationsError as e:
                if not _failover(e.code):
                    raise
                failure = e
            except InvalidAnswer as e:
                print(f"rotations Cluster: {address} answered invalidly: {e}", file=sys.stderr)
                failure = RotationsError(grpc.StatusCode.DATA_LOSS, f"{address} answered invalidly: {e}")
        if failure is None:
            failure = RotationsError(grpc.StatusCode.UNAVAILABLE, f"no replica of {self.addresses!r} left to ask")
        raise failure

    def analyze(
        self,
        sentences: Iterable[str],
        target: Target = " her",
        *,
        timeout: Optional[float] = None,
        progress: bool = False,
        angles_out: Union[str, Path, None] = None,
        **options: Any,
    ) -> Analysis:
        """As :meth:`Client.analyze`, over the replicas: equal to one server's ``analyze`` bit for bit.

        ``angles_out`` (a ``.npy`` path) writes the angles to disk as they arrive instead of holding
        them (10^7 sentences x 48 layers x 3 angles are 5.8 GB): the file holds them sentence-major,
        ``[sentences, layers, 3]``, and the result's ``angles`` is a read-only memory map of it,
        transposed to ``[layers, sentences, 3]``. The shuffle draws go to ``<stem>.draws.npy``
        (``[sentences, layers, 4]``, int32) the same way. ``options`` are :class:`Options`.
        """
        Options.parse("analyze", options)  # refused before any replica is asked
        chunks = self.stream_rotations(sentences, target, timeout=timeout, progress=progress, **options)
        if angles_out is None:
            return collect_stream(chunks)
        return _collect_to_disk(chunks, Path(angles_out))

    def compare_groups(
        self,
        groups: Groups,
        target: Target = " her",
        *,
        condition: Condition = "target",
        timeout: Optional[float] = None,
        progress: bool = False,
        **options: Any,
    ) -> GroupComparison:
        """As :meth:`Client.compare_groups`, over the replicas: each group's corpus sharded as
        :meth:`analyze` shards it, its per-condition statistics merged exactly, and the Welch tests
        asked of a replica from the merged statistics; equal to one server's ``compare_groups``
        bit for bit, whatever the number of replicas."""
        opts = Options.parse("compare_groups", options)
        labelled = labelled_groups(groups)
        c = condition_index(condition)
        if c is None or not 0 <= c < len(CONDITIONS):
            raise ValueError(f"condition must be one of {CONDITIONS} or its index, not {condition!r}")
        analyses = tuple(
            self.analyze(sentences, target, timeout=timeout, progress=progress, **options) for _, sentences in labelled
        )
        a, b = (analysis.condition_statistics[c].layers for analysis in analyses)
        tests = self._ask_replicas(
            lambda client: client.group_significance_from_statistics(
                a, b, condition=c, alpha=opts.alpha, correction=opts.correction, num_tests=opts.num_tests, timeout=timeout
            )
        )
        return GroupComparison((labelled[0][0], labelled[1][0]), analyses, tests)  # type: ignore[arg-type]


def _collect_to_disk(chunks: Iterator[RotationChunk], path: Path) -> Analysis:
    draws_path = path.with_name(path.stem + ".draws.npy")
    angles_file, draws_file = _NpyAppender(path, np.float32), _NpyAppender(draws_path, np.int32)
    reports = []
    last: Optional[RotationChunk] = None
    for chunk in chunks:
        if chunk.last:
            last = chunk
            break
        angles_file.append(chunk.angles.transpose(1, 0, 2))
        draws_file.append(chunk.shuffle_draws.transpose(1, 0, 2))
        reports.extend(chunk.sentences)
    if last is None or last.significance is None:
        raise ValueError(f"no significance test: {last.significance_error if last else 'the stream ended early'}")
    angles = angles_file.finish().transpose(1, 0, 2)
    draws = draws_file.finish().transpose(1, 0, 2)
    means = np.stack([angles[layer].astype(np.float64).mean(axis=0) for layer in range(angles.shape[0])])
    rotations = RotationResult(
        angles=angles,
        layer_means=means.astype(np.float32),
        conditions=CONDITIONS,
        unit=last.unit,
        sentences=tuple(reports),
        shuffle_draws=draws,
        shuffle_seed=last.shuffle_seed,
        model_name=last.model_name,
        target_token_id=last.target_token_id,
        all_layers=last.all_layers,
        target_token_ids=last.target_token_ids,
        # The merged means and sums (the file holds the layer angles only).
        sublayers=last.sublayers,
        norms=last.norms,
    )
    steps = (last.step_significance, last.step_statistics)
    return Analysis(rotations, last.significance, last.significance_error, last.condition_statistics, *steps)


class _Bar:
    """tqdm when installed, else a line on stderr at most once a second."""

    def __init__(self, total: Optional[int]) -> None:
        self.total, self.shown, self.last_print = total, 0, 0.0
        try:
            from tqdm import tqdm

            self.tqdm: Any = tqdm(total=total, unit=" sentences", file=sys.stderr)
        except ImportError:
            self.tqdm = None

    def update(self, done: int, failures: int) -> None:
        if self.tqdm is not None:
            self.tqdm.update(done - self.shown)
            self.tqdm.set_postfix(failures=failures, refresh=False)
        elif time.monotonic() - self.last_print >= 1.0:
            self.last_print = time.monotonic()
            of = f"/{self.total}" if self.total else ""
            print(f"\r{done}{of} sentences, {failures} failures", end="", file=sys.stderr, flush=True)
        self.shown = done

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()
        else:
            print(file=sys.stderr)


def _progress_bar(total: Optional[int]) -> _Bar:
    return _Bar(total)
