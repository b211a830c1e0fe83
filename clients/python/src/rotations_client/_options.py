"""One request model for ``Client`` and ``Cluster``: every analysis option is defined once, here.

The public methods take these options as keywords (``client.analyze(sentences, " her", seed=1,
occurrence="all")``); :meth:`Options.parse` checks the keywords a method accepts and the values,
and :meth:`Options.rotation_request` builds the wire request. A new option is one field here and
one line in :meth:`Options.rotation_request` (or :meth:`Options.significance`), and every method of
both classes takes it.
"""

from __future__ import annotations

import dataclasses
import operator
import os
from typing import Any, Dict, FrozenSet, Iterable, List, Literal, Mapping, Optional, Sequence, Tuple, Union

from ._pb import pb
from ._types import CONDITIONS

Unit = Literal["degrees", "radians"]
Correction = Literal["bonferroni", "holm", "benjamini-hochberg", "none"]
Target = Union[str, int, None]
Condition = Union[int, str]
#: "first" (the notebook's), "last", "all" (each occurrence a row) or n (the n-th, from 1).
Occurrence = Union[Literal["first", "last", "all"], int]
SubToken = Literal["last", "first", "mean"]
#: Characters [start, end) of a sentence (Python str indices).
Span = Tuple[int, int]
Groups = Union[Mapping[str, Iterable[str]], Sequence[Tuple[str, Iterable[str]]]]

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
_STEPS: Dict[str, Any] = {"layers": pb.STEPS_LAYERS, "sublayers": pb.STEPS_SUBLAYERS}
_SUB_TOKENS: Dict[str, Any] = {"last": pb.SUB_TOKEN_LAST, "first": pb.SUB_TOKEN_FIRST, "mean": pb.SUB_TOKEN_MEAN}
_VECTOR_DTYPES: Dict[str, Any] = {"float32": pb.VECTOR_DTYPE_FLOAT32, "float16": pb.VECTOR_DTYPE_FLOAT16}
_VECTOR_CONDITIONS = ("target", "non_target")
#: The methods that write ``vectors_out`` (each row's vectors arrive in a stream's chunks).
_VECTOR_METHODS = frozenset({"analyze", "stream_rotations"})


@dataclasses.dataclass(frozen=True)
class VectorsOut:
    """Where and which vectors ``vectors_out`` writes: the target's to ``path`` (a ``.npy`` file), the
    non-target's to ``<stem>.non_target.npy``, each ``[rows, states, hidden]`` with the rows of the
    angles in their order. ``dtype`` "float32" (the vectors the angles are computed from, exactly) or
    "float16" (each value rounded by the server); ``states`` state indices (hidden states 0..L, then a
    model's sub-layer states, as ``norms``), default every state; ``conditions`` "target" and/or
    "non_target" (or 0, 1), default both."""

    path: Union[str, "os.PathLike[str]"]
    dtype: Literal["float32", "float16"] = "float32"
    states: Optional[Tuple[int, ...]] = None
    conditions: Tuple[Union[int, str], ...] = _VECTOR_CONDITIONS

    def condition_indices(self) -> List[int]:
        """The conditions as indices (0 target, 1 non_target), checked."""
        out = []
        for c in self.conditions:
            index = _VECTOR_CONDITIONS.index(c) if c in _VECTOR_CONDITIONS else c
            if isinstance(index, bool) or not isinstance(index, int) or index not in (0, 1):
                raise ValueError(f"vectors_out conditions are 'target' and 'non_target' (0, 1), not {c!r}")
            out.append(index)
        return out

    def to_pb(self) -> "pb.VectorOptions":
        if self.dtype not in _VECTOR_DTYPES:
            raise ValueError(f"vectors_out dtype must be 'float32' or 'float16', not {self.dtype!r}")
        if not os.fspath(self.path).endswith(".npy"):
            raise ValueError(f"vectors_out {os.fspath(self.path)!r}: give a file name ending in .npy")
        states = [operator.index(s) for s in self.states or ()]
        return pb.VectorOptions(dtype=_VECTOR_DTYPES[self.dtype], states=states, conditions=self.condition_indices())

    @classmethod
    def of(cls, value: Union[str, "os.PathLike[str]", VectorsOut]) -> VectorsOut:
        """A path alone: every state, both conditions, float32."""
        return value if isinstance(value, VectorsOut) else cls(path=value)


@dataclasses.dataclass(frozen=True)
class Options:
    """The options of an analysis, shared by :class:`Client` and :class:`Cluster`.

    What is compared: ``unit`` ("degrees" or "radians"); ``seed`` seeds the shuffled control
    (server default 20250901); ``non_target_offset`` picks the non-target relative to the target
    (default -1, the token before); ``allow_bos_non_target`` lets a sentence-initial target be
    compared with the BOS token of a tokenizer that adds one (refused by default).

    Which token (the docs' "Which token"): ``occurrence`` "first" (default), "last", "all" (each
    occurrence one row) or n (the n-th); ``target_spans`` one ``(start, end)`` character span per
    sentence instead of a target (pass ``target=None``), ``non_target_spans`` instead of
    ``non_target_offset``; ``sub_token`` "last" (default), "first" or "mean" for words of several
    tokens; ``all_layers`` the target's angle between every pair of hidden states,
    ``row_matrices`` every row's matrix too.

    Inside the layer (a model exported with ``--sublayers``): ``steps="sublayers"`` adds each layer's
    attention-step and MLP-step angles (``result.sublayers``) and one paired test per step
    (``analysis.step_significance``); ``norms=True`` the vectors' norms at every state and each
    layer's growth ratio (``result.norms``).

    The paired t-tests: ``condition_a`` and ``condition_b`` (default target and non_target),
    ``alpha`` (0.05), ``correction`` ("bonferroni", "holm", "benjamini-hochberg", "none") over
    ``num_tests`` tests (default the number of layers tested).

    ``skip_invalid``: analyse the valid sentences and list the others in the result's ``skipped``
    (corpus index, reason code, message) instead of failing; without it, a request with invalid
    sentences raises one :class:`RotationsError` whose ``invalid_sentences`` lists them.
    """

    unit: Unit = "degrees"
    seed: Optional[int] = None
    non_target_offset: Optional[int] = None
    allow_bos_non_target: bool = False
    occurrence: Occurrence = "first"
    target_spans: Optional[Tuple[Span, ...]] = None
    non_target_spans: Optional[Tuple[Span, ...]] = None
    sub_token: SubToken = "last"
    all_layers: bool = False
    row_matrices: bool = False
    steps: Literal["layers", "sublayers"] = "layers"
    norms: bool = False
    condition_a: Optional[Condition] = None
    condition_b: Optional[Condition] = None
    alpha: Optional[float] = None
    correction: Optional[Correction] = None
    num_tests: Optional[int] = None
    #: Analyse the valid sentences and report the others (``.skipped``) instead of failing.
    skip_invalid: bool = False
    #: A ``.npy`` path or a :class:`VectorsOut`: each row's vectors written to disk as they arrive
    #: (``analyze`` and ``stream_rotations``, which then stream).
    vectors_out: Union[str, "os.PathLike[str]", VectorsOut, None] = None

    @classmethod
    def parse(cls, method: str, keywords: Mapping[str, Any], *, tests: bool = True) -> Options:
        """The options of a call to ``method``, checked; ``tests=False`` for a method that runs no
        t-test (its test keywords would be silently ignored otherwise, so they are refused)."""
        accepted = FIELDS if tests else FIELDS - TEST_FIELDS
        unknown = sorted(set(keywords) - accepted)
        if unknown:
            raise TypeError(
                f"{method}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
                f"its options are {', '.join(sorted(accepted))}"
            )
        values = dict(keywords)
        for spans in ("target_spans", "non_target_spans"):
            if values.get(spans) is not None:
                values[spans] = tuple(values[spans])
        options = cls(**values)
        options.check()
        if options.vectors_out is not None and method not in _VECTOR_METHODS:
            raise ValueError(f"vectors_out is written by analyze and stream_rotations, not by {method}()")
        return options

    def check(self) -> None:
        """Raises ``ValueError``/``TypeError`` for a value the server would refuse anyway, before any call."""
        _unit(self.unit)
        _correction(self.correction)
        condition_index(self.condition_a)
        condition_index(self.condition_b)
        self._check_selection()

    def for_rows(self, first: int, count: int) -> Options:
        """These options for ``count`` sentences from the ``first``: each chunk sends its sentences' spans."""
        spans = {
            name: value[first : first + count]
            for name, value in (("target_spans", self.target_spans), ("non_target_spans", self.non_target_spans))
            if value is not None
        }
        return dataclasses.replace(self, **spans) if spans else self

    def rotation_request(
        self, sentences: Iterable[str], target: Target, *, first_sentence_index: int = 0, tests: bool = True
    ) -> "pb.RotationRequest":
        """The wire request for ``sentences`` (``tests``: with the significance options)."""
        request = pb.RotationRequest(sentences=sentences_list(sentences), unit=_unit(self.unit))
        request.allow_bos_non_target = bool(self.allow_bos_non_target)
        request.skip_invalid = bool(self.skip_invalid)
        request.first_sentence_index = operator.index(first_sentence_index)
        self.selection(request)
        _set_target(request, target)
        if self.seed is not None:
            request.shuffle_seed = operator.index(self.seed)
        if self.non_target_offset is not None:
            request.non_target_offset = operator.index(self.non_target_offset)
        if tests:
            request.significance.CopyFrom(self.significance())
        return request

    def selection(self, request: "pb.RotationRequest") -> None:
        """Which token and all layers onto ``request``; the server checks them against the
        sentences and names the sentence that does not fit."""
        self._check_selection()
        request.occurrence, number = _occurrence(self.occurrence)
        if number:
            request.occurrence_number = number
        if self.target_spans is not None:
            request.target_spans.extend(_spans("target_spans", self.target_spans, len(request.sentences)))
        if self.non_target_spans is not None:
            request.non_target_spans.extend(_spans("non_target_spans", self.non_target_spans, len(request.sentences)))
        request.sub_token = _SUB_TOKENS[self.sub_token]
        request.all_layers, request.row_matrices = bool(self.all_layers), bool(self.row_matrices)
        request.steps = _STEPS[self.steps]
        request.norms = bool(self.norms)
        if self.vectors_out is not None:
            request.vectors.CopyFrom(VectorsOut.of(self.vectors_out).to_pb())

    def _check_selection(self) -> None:
        _occurrence(self.occurrence)
        if self.steps not in _STEPS:
            raise ValueError(f"steps must be one of {', '.join(_STEPS)}, not {self.steps!r}")
        if self.sub_token not in _SUB_TOKENS:
            raise ValueError(f"sub_token must be 'last', 'first' or 'mean', not {self.sub_token!r}")
        if self.row_matrices and not self.all_layers:
            raise ValueError("row_matrices needs all_layers=True")
        if self.vectors_out is not None:
            VectorsOut.of(self.vectors_out).to_pb()

    def significance(self) -> "pb.SignificanceOptions":
        """The paired tests' options (conditions, alpha, correction, number of tests)."""
        options = pb.SignificanceOptions(correction=_correction(self.correction))
        a, b = condition_index(self.condition_a), condition_index(self.condition_b)
        if a is not None:
            options.condition_a = a
        if b is not None:
            options.condition_b = b
        _set_alpha_tests(options, self.alpha, self.num_tests)
        return options

    def group_tests(self, condition: Optional[Condition]) -> "pb.GroupTestOptions":
        """The two-group tests' options: of ``condition``'s angles, with this alpha and correction."""
        options = pb.GroupTestOptions(correction=_correction(self.correction))
        c = condition_index(condition)
        if c is not None:
            options.condition = c
        _set_alpha_tests(options, self.alpha, self.num_tests)
        return options


#: Every option's keyword, and those of the t-tests.
FIELDS: FrozenSet[str] = frozenset(f.name for f in dataclasses.fields(Options))
TEST_FIELDS: FrozenSet[str] = frozenset({"condition_a", "condition_b", "alpha", "correction", "num_tests"})


def sentences_list(sentences: Iterable[str]) -> List[str]:
    """``sentences`` as a list of str, or a ``TypeError`` naming the first that is not one."""
    if isinstance(sentences, (str, bytes)):
        raise TypeError("sentences must be a list of strings, not one string")
    out = list(sentences)
    for i, s in enumerate(out):
        if not isinstance(s, str):
            raise TypeError(f"sentence {i} is {type(s).__name__}, not str")
    return out


def labelled_groups(groups: Groups) -> List[Tuple[str, List[str]]]:
    """Two labelled groups of sentences: a dict ``{label: sentences}`` or ``[(label, sentences), …]``."""
    items = list(groups.items()) if isinstance(groups, Mapping) else list(groups)
    if len(items) != 2:
        raise ValueError(f"give exactly two labelled groups of sentences, got {len(items)}")
    out = []
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise TypeError("each group is a (label, sentences) pair with a str label")
        out.append((item[0], sentences_list(item[1])))
    return out


def _set_target(request: "pb.RotationRequest", target: Target) -> None:
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


def _occurrence(occurrence: Occurrence) -> Tuple[Any, int]:
    """The wire enum and, for the n-th, n."""
    if isinstance(occurrence, str):
        if occurrence not in _OCCURRENCES:
            raise ValueError(f"occurrence must be 'first', 'last', 'all' or a number from 1, not {occurrence!r}")
        return _OCCURRENCES[occurrence], 0
    if isinstance(occurrence, bool) or operator.index(occurrence) < 1:
        raise ValueError(f"occurrence numbers count from 1, not {occurrence!r}")
    return pb.OCCURRENCE_NTH, operator.index(occurrence)


def _spans(name: str, spans: Sequence[Span], count: int) -> List["pb.CharSpan"]:
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


def _set_alpha_tests(options: Any, alpha: Optional[float], num_tests: Optional[int]) -> None:
    if alpha is not None:
        options.alpha = float(alpha)
    if num_tests is not None:
        options.num_tests = operator.index(num_tests)


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


def condition_index(condition: Optional[Condition]) -> Optional[int]:
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
