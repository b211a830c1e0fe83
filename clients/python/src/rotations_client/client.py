"""``Client``: a thin, typed wrapper over the generated ``RotationServiceStub``."""

from __future__ import annotations

import dataclasses
import operator
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Literal,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

import grpc
import numpy as np

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
from .connect import Pem, open_channel
from .errors import RotationsError
from .retry import RetryPolicy

#: Where ``rotations serve`` listens by default: 127.0.0.1 only, so not ``localhost``, which may
#: also resolve to ::1 where nothing listens (and an error could come from that attempt).
DEFAULT_ADDRESS = "127.0.0.1:50051"
#: Largest message either way; the server's default limit (a unary GPT-2 XL result for 4096 sentences is ~6 MB).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

Unit = Literal["degrees", "radians"]
Correction = Literal["bonferroni", "holm", "benjamini-hochberg", "none"]
Target = Union[str, int, None]
Condition = Union[int, str]
#: "first" (the notebook's), "last", "all" (each occurrence a row) or n (the n-th, from 1).
Occurrence = Union[Literal["first", "last", "all"], int]
SubToken = Literal["last", "first", "mean"]
#: Characters [start, end) of a sentence (Python str indices).
Span = Tuple[int, int]

_UNITS: Dict[str, Any] = {"degrees": pb.ANGLE_UNIT_DEGREES, "radians": pb.ANGLE_UNIT_RADIANS}
_CORRECTIONS: Dict[str, Any] = {
    "bonferroni": pb.CORRECTION_BONFERRONI,
    "holm": pb.CORRECTION_HOLM,
    "benjamini-hochberg": pb.CORRECTION_BENJAMINI_HOCHBERG,
    "none": pb.CORRECTION_NONE,
}

_OCCURRENCES: Dict[str, Any] = {
    "first": pb.OCCURRENCE_FIRST,
    "last": pb.OCCURRENCE_LAST,
    "all": pb.OCCURRENCE_ALL,
}
_SUB_TOKENS: Dict[str, Any] = {"last": pb.SUB_TOKEN_LAST, "first": pb.SUB_TOKEN_FIRST, "mean": pb.SUB_TOKEN_MEAN}

T = TypeVar("T")


def _sentences(sentences: Iterable[str]) -> List[str]:
    if isinstance(sentences, (str, bytes)):
        raise TypeError("sentences must be a list of strings, not one string")
    out = list(sentences)
    for i, s in enumerate(out):
        if not isinstance(s, str):
            raise TypeError(f"sentence {i} is {type(s).__name__}, not str")
    return out


def _spans(name: str, spans: Sequence[Span], count: int) -> List["pb.CharSpan"]:
    spans = list(spans)
    if len(spans) != count:
        raise ValueError(f"{name} has {len(spans)} spans for {count} sentences: give one per sentence")
    out = []
    for i, span in enumerate(spans):
        try:
            start, end = (operator.index(x) for x in span)
        except (TypeError, ValueError):
            raise TypeError(f"{name}[{i}] must be a (start, end) pair of ints, not {span!r}") from None
        if not 0 <= start < end:
            raise ValueError(f"{name}[{i}] = ({start}, {end}) is not a non-empty range of characters")
        out.append(pb.CharSpan(start=start, end=end))
    return out


def _selection(*values: Any) -> Dict[str, Any]:
    """The selection keywords of the public methods, in :func:`_select`'s order, as a dict."""
    names = ("occurrence", "target_spans", "non_target_spans", "sub_token", "all_layers", "row_matrices")
    return dict(zip(names, values))


def _select(
    request: "pb.RotationRequest",
    occurrence: Occurrence = "first",
    target_spans: Optional[Sequence[Span]] = None,
    non_target_spans: Optional[Sequence[Span]] = None,
    sub_token: SubToken = "last",
    all_layers: bool = False,
    row_matrices: bool = False,
) -> None:
    """The selection keywords (which token, all layers) onto ``request``; the server checks them
    against the sentences and names the sentence that does not fit."""
    if isinstance(occurrence, str):
        if occurrence not in _OCCURRENCES:
            raise ValueError(f"occurrence must be 'first', 'last', 'all' or a number from 1, not {occurrence!r}")
        request.occurrence = _OCCURRENCES[occurrence]
    elif isinstance(occurrence, bool) or operator.index(occurrence) < 1:
        raise ValueError(f"occurrence numbers count from 1, not {occurrence!r}")
    else:
        request.occurrence = pb.OCCURRENCE_NTH
        request.occurrence_number = operator.index(occurrence)
    if target_spans is not None:
        request.target_spans.extend(_spans("target_spans", target_spans, len(request.sentences)))
    if non_target_spans is not None:
        request.non_target_spans.extend(_spans("non_target_spans", non_target_spans, len(request.sentences)))
    if sub_token not in _SUB_TOKENS:
        raise ValueError(f"sub_token must be 'last', 'first' or 'mean', not {sub_token!r}")
    request.sub_token = _SUB_TOKENS[sub_token]
    if row_matrices and not all_layers:
        raise ValueError("row_matrices needs all_layers=True")
    request.all_layers, request.row_matrices = bool(all_layers), bool(row_matrices)


def _unit(unit: str) -> Any:
    try:
        return _UNITS[unit]
    except KeyError:
        raise ValueError(f"unit must be 'degrees' or 'radians', not {unit!r}") from None


def _correction(correction: Optional[str]) -> Any:
    if correction is None:
        return pb.CORRECTION_UNSPECIFIED
    key = correction.lower().replace("_", "-")
    try:
        return _CORRECTIONS[key]
    except KeyError:
        raise ValueError(f"correction must be one of {sorted(_CORRECTIONS)}, not {correction!r}") from None


def _condition(condition: Optional[Condition]) -> Optional[int]:
    """An index (0, 1, 2) or a name from CONDITIONS; None keeps the server's default."""
    if condition is None:
        return None
    if isinstance(condition, str):
        if condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {CONDITIONS}, not {condition!r}")
        return CONDITIONS.index(condition)
    if isinstance(condition, bool):
        raise TypeError("a condition is an index (0, 1, 2) or a name ('target', 'non_target', 'shuffled')")
    return operator.index(condition)


def _significance_options(
    condition_a: Optional[Condition],
    condition_b: Optional[Condition],
    alpha: Optional[float],
    correction: Optional[str],
    num_tests: Optional[int],
) -> "pb.SignificanceOptions":
    options = pb.SignificanceOptions(correction=_correction(correction))
    a, b = _condition(condition_a), _condition(condition_b)
    if a is not None:
        options.condition_a = a
    if b is not None:
        options.condition_b = b
    if alpha is not None:
        options.alpha = float(alpha)
    if num_tests is not None:
        options.num_tests = operator.index(num_tests)
    return options


def _group_test_options(
    condition: Optional[Condition], alpha: Optional[float], correction: Optional[str], num_tests: Optional[int]
) -> "pb.GroupTestOptions":
    options = pb.GroupTestOptions(correction=_correction(correction))
    c = _condition(condition)
    if c is not None:
        options.condition = c
    if alpha is not None:
        options.alpha = float(alpha)
    if num_tests is not None:
        options.num_tests = operator.index(num_tests)
    return options


Groups = Union[Mapping[str, Iterable[str]], Sequence[Tuple[str, Iterable[str]]]]


def _labelled_groups(groups: Groups) -> List[Tuple[str, List[str]]]:
    """Two labelled groups of sentences: a dict ``{label: sentences}`` or ``[(label, sentences), …]``."""
    items = list(groups.items()) if isinstance(groups, Mapping) else list(groups)
    if len(items) != 2:
        raise ValueError(f"give exactly two labelled groups of sentences, got {len(items)}")
    out = []
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise TypeError("each group is a (label, sentences) pair with a str label")
        out.append((item[0], _sentences(item[1])))
    return out


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

    def wait_ready(self, timeout: float = 30.0) -> ModelInfo:
        """Waits until the server answers ``GetModelInfo`` (it is UNAVAILABLE while the model loads); returns it."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                return self.model_info(timeout=max(left, 0.1))
            except RotationsError as e:
                if e.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) or left <= 0:
                    raise
            time.sleep(min(0.2, max(left, 0)))

    def _call(self, rpc: str, method: Callable[..., T], request: Any, timeout: Optional[float]) -> T:
        if self._closed:
            raise ValueError("this Client is closed")
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as error:
            raise self._connection.error(error, rpc) from None

    # -- the RPCs --------------------------------------------------------------------------------

    def model_info(self, *, timeout: Optional[float] = None) -> ModelInfo:
        """The served model's name, layers, hidden size, vocabulary, positions, execution provider, dtype."""
        m = self._call("GetModelInfo", self._stub.GetModelInfo, pb.GetModelInfoRequest(), timeout)
        return ModelInfo.from_pb(m)

    def tokenize(self, texts: Iterable[str], *, timeout: Optional[float] = None) -> List[Tokenized]:
        """Token ids, strings and byte offsets of each text (to pick a target: note GPT-2's leading space, ``" her"``)."""
        texts = _sentences(texts)
        m = self._call("Tokenize", self._stub.Tokenize, pb.TokenizeRequest(texts=texts), timeout)
        return [Tokenized.from_pb(text, t) for text, t in zip(texts, m.texts)]

    def _rotation_request(
        self,
        sentences: Iterable[str],
        target: Target,
        unit: str,
        seed: Optional[int],
        non_target_offset: Optional[int],
        significance: Optional["pb.SignificanceOptions"] = None,
        first_sentence_index: int = 0,
        selection: Optional[Dict[str, Any]] = None,
        allow_bos_non_target: bool = False,
    ) -> "pb.RotationRequest":
        request = pb.RotationRequest(sentences=_sentences(sentences), unit=_unit(unit))
        request.allow_bos_non_target = bool(allow_bos_non_target)
        request.first_sentence_index = operator.index(first_sentence_index)
        _select(request, **(selection or {}))
        if target is None:
            if not request.target_spans:
                raise ValueError("give a target (a text or a token id) or target_spans")
        elif request.target_spans:
            raise ValueError("give a target or target_spans, not both (pass target=None with spans)")
        elif isinstance(target, str):
            request.target_text = target
        elif isinstance(target, bool):
            raise TypeError("target must be a text (e.g. ' her') or a token id, not bool")
        else:
            try:
                request.target_token_id = operator.index(target)
            except TypeError:
                raise TypeError(f"target must be a text or a token id, not {type(target).__name__}") from None
        if seed is not None:
            request.shuffle_seed = operator.index(seed)
        if non_target_offset is not None:
            request.non_target_offset = operator.index(non_target_offset)
        if significance is not None:
            request.significance.CopyFrom(significance)
        return request

    def rotations(
        self,
        sentences: Iterable[str],
        target: Target = " her",
        *,
        unit: Unit = "degrees",
        seed: Optional[int] = None,
        non_target_offset: Optional[int] = None,
        timeout: Optional[float] = None,
        occurrence: Occurrence = "first",
        target_spans: Optional[Sequence[Span]] = None,
        non_target_spans: Optional[Sequence[Span]] = None,
        sub_token: SubToken = "last",
        all_layers: bool = False,
        row_matrices: bool = False,
        allow_bos_non_target: bool = False,
    ) -> RotationResult:
        """The notebook's ``angles`` (``[layers, rows, 3]``) with positions and shuffle draws.

        ``target`` is a word as text (``" her"``; one token or several) or a token id. ``seed`` seeds
        the shuffled control (server default 20250901); ``non_target_offset`` picks the non-target
        relative to the target (default -1, the token before). With a tokenizer that puts a BOS
        token before every sentence (``model_info().adds_bos``), ``allow_bos_non_target=True``
        lets a target that is a sentence's first word be compared with the BOS token (refused by
        default, naming the sentence).

        Which token (see the README's "Which token"): ``occurrence`` "first" (default), "last",
        "all" (each occurrence one row; ``sentences[k].occurrence`` says which) or n (the n-th);
        ``target_spans`` one ``(start, end)`` character span per sentence instead of ``target``
        (pass ``target=None``), and ``non_target_spans`` instead of ``non_target_offset``;
        ``sub_token`` "last" (default: in a causal model the last token of a word has seen all of
        it), "first" or "mean" for words of several tokens. ``all_layers`` adds the target's angle
        between every pair of hidden states (``result.all_layers``: the mean ``[L+1, L+1]`` matrix,
        its cumulative angle, exact sums), ``row_matrices`` every row's matrix too.
        """
        selection = _selection(occurrence, target_spans, non_target_spans, sub_token, all_layers, row_matrices)
        request = self._rotation_request(
            sentences, target, unit, seed, non_target_offset, selection=selection, allow_bos_non_target=allow_bos_non_target
        )
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
        request = pb.SignificanceRequest(
            angles=_angle_tensor(angles),
            options=_significance_options(condition_a, condition_b, alpha, correction, num_tests),
        )
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
        request = pb.SignificanceRequest(
            statistics=[s.to_pb() for s in statistics],
            options=_significance_options(None, None, alpha, correction, num_tests),
        )
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
        request = pb.SignificanceRequest(
            group_a=[s.to_pb() for s in group_a],
            group_b=[s.to_pb() for s in group_b],
            group_options=_group_test_options(condition, alpha, correction, num_tests),
        )
        m = self._call("TestSignificance", self._stub.TestSignificance, request, timeout)
        return GroupTests.from_pb(m.group_tests)

    def compare_groups(
        self,
        groups: Groups,
        target: Target = " her",
        *,
        condition: Condition = "target",
        unit: Unit = "degrees",
        seed: Optional[int] = None,
        non_target_offset: Optional[int] = None,
        alpha: Optional[float] = None,
        correction: Optional[Correction] = None,
        num_tests: Optional[int] = None,
        timeout: Optional[float] = None,
    ) -> GroupComparison:
        """Two labelled groups of sentences (``{"possessive": [...], "object": [...]}``, the first is
        A): each group's :meth:`analyze`, and per layer Welch's t-test of the groups' ``condition``
        angles (default the target's), with Hedges' g and the correction over layers. ``alpha``,
        ``correction`` and ``num_tests`` apply to the group tests and to each group's paired tests."""
        significance = _significance_options(None, None, alpha, correction, num_tests)
        request = pb.GroupComparisonRequest(options=_group_test_options(condition, alpha, correction, num_tests))
        for label, sentences in _labelled_groups(groups):
            rotation = self._rotation_request(sentences, target, unit, seed, non_target_offset, significance)
            request.groups.add(label=label).request.CopyFrom(rotation)
        m = self._call("CompareGroups", self._stub.CompareGroups, request, timeout)
        return GroupComparison.from_pb(m)

    def analyze(
        self,
        sentences: Iterable[str],
        target: Target = " her",
        *,
        unit: Unit = "degrees",
        seed: Optional[int] = None,
        non_target_offset: Optional[int] = None,
        condition_a: Optional[Condition] = None,
        condition_b: Optional[Condition] = None,
        alpha: Optional[float] = None,
        correction: Optional[Correction] = None,
        num_tests: Optional[int] = None,
        timeout: Optional[float] = None,
        occurrence: Occurrence = "first",
        target_spans: Optional[Sequence[Span]] = None,
        non_target_spans: Optional[Sequence[Span]] = None,
        sub_token: SubToken = "last",
        all_layers: bool = False,
        row_matrices: bool = False,
        allow_bos_non_target: bool = False,
    ) -> Analysis:
        """The notebook in one call: :meth:`rotations` and :meth:`significance` of the result (the
        selection keywords as in :meth:`rotations`)."""
        options = _significance_options(condition_a, condition_b, alpha, correction, num_tests)
        selection = _selection(occurrence, target_spans, non_target_spans, sub_token, all_layers, row_matrices)
        request = self._rotation_request(
            sentences,
            target,
            unit,
            seed,
            non_target_offset,
            options,
            selection=selection,
            allow_bos_non_target=allow_bos_non_target,
        )
        m = self._call("Analyze", self._stub.Analyze, request, timeout)
        return Analysis.from_pb(m)

    def stream_rotations(
        self,
        sentences: Iterable[str],
        target: Target = " her",
        *,
        unit: Unit = "degrees",
        seed: Optional[int] = None,
        non_target_offset: Optional[int] = None,
        condition_a: Optional[Condition] = None,
        condition_b: Optional[Condition] = None,
        alpha: Optional[float] = None,
        correction: Optional[Correction] = None,
        num_tests: Optional[int] = None,
        timeout: Optional[float] = None,
        first_sentence_index: int = 0,
        occurrence: Occurrence = "first",
        target_spans: Optional[Sequence[Span]] = None,
        non_target_spans: Optional[Sequence[Span]] = None,
        sub_token: SubToken = "last",
        all_layers: bool = False,
        row_matrices: bool = False,
        allow_bos_non_target: bool = False,
    ) -> Iterator[RotationChunk]:
        """For large corpora: chunks of sentences in input order as they finish, then a final chunk
        (``last``) with the merged per-layer statistics and their t-tests. :func:`collect_stream`
        reassembles them into an :class:`Analysis`. Closing the iterator early cancels the request.
        ``first_sentence_index`` is the corpus index of ``sentences[0]`` (a piece of a larger corpus:
        draws, reports and chunks then carry corpus indices, exactly as in one request of the whole).
        The selection keywords are those of :meth:`rotations`; with ``all_layers`` the final chunk
        carries the merged exact matrix sums and the mean matrix.
        """
        options = _significance_options(condition_a, condition_b, alpha, correction, num_tests)
        selection = _selection(occurrence, target_spans, non_target_spans, sub_token, all_layers, row_matrices)
        request = self._rotation_request(
            sentences,
            target,
            unit,
            seed,
            non_target_offset,
            options,
            first_sentence_index,
            selection,
            allow_bos_non_target=allow_bos_non_target,
        )
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
    layers = parts[0].angles.shape[0] if parts else 0
    for part in parts:
        if part.angles.shape[0] != layers:
            raise ValueError(f"chunk of shape {list(part.angles.shape)} at sentence {part.first_sentence} does not fit")
    # Rows in corpus order: one per sentence, or one per occurrence (occurrence="all").
    angles = np.concatenate([p.angles for p in parts], axis=1) if parts else np.zeros((0, 0, 3), np.float32)
    draws = np.concatenate([p.shuffle_draws for p in parts], axis=1) if parts else np.zeros((0, 0, 4), np.int64)
    reports: List[SentenceReport] = [r for part in parts for r in part.sentences]
    delivered = len({r.index for r in reports})
    if delivered != total:
        raise ValueError(f"the stream delivered {delivered} of {total} sentences")
    all_layers = last.all_layers
    row_matrices = [p.all_layers.row_matrices for p in parts if p.all_layers and p.all_layers.row_matrices is not None]
    if all_layers is not None and row_matrices:
        all_layers = dataclasses.replace(all_layers, row_matrices=np.concatenate(row_matrices))
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
    )
    return Analysis(rotations, last.significance, last.significance_error, last.condition_statistics)
