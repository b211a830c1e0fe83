"""What :class:`Cluster` checks before it merges a replica's answer (the Rust CLI's
``src/client/validate.rs`` makes the same checks): a replica that returns another model, a layer
short, an ``n`` that is not its rows, or rows that stop before its chunk's end is treated as
failed and left out, and its chunk goes to another replica; nothing of it is merged. One function
per kind of answer, each check one line, so that a new field is validated by adding a line.
"""

from __future__ import annotations

import dataclasses
import math
from typing import FrozenSet, Optional, Sequence

import numpy as np

from ._types import ConditionStatistics, LayerStatistics, ModelInfo, RotationChunk, SignificanceResult

#: The server's shuffle seed when a request gives none (src/analysis/shuffle.rs).
DEFAULT_SHUFFLE_SEED = 20250901
_SCALE = 2.0**64


class InvalidAnswer(ValueError):
    """A replica's answer that cannot be right; the message says what is wrong."""


def _ensure(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidAnswer(message)


@dataclasses.dataclass(frozen=True)
class Expected:
    """What every answer of a run must agree with: the model checked when the replicas joined, and
    what the request asked for."""

    model_name: str
    weights_sha256: str
    num_layers: int
    num_hidden_states: int
    unit: str
    seed: int
    all_layers: bool
    #: ``steps="sublayers"``: step angles and their sums in every answer.
    steps: bool = False
    #: ``norms=True``: norms at each of ``num_states`` states and growth ratios in every answer.
    norms: bool = False
    num_states: int = 0

    @classmethod
    def of(
        cls, model: ModelInfo, unit: str, seed: Optional[int], all_layers: bool, steps: bool = False, norms: bool = False
    ) -> Expected:
        seed = DEFAULT_SHUFFLE_SEED if seed is None else seed
        # Hidden states, then (sub-layer states) as many again: the mids and the last block's output.
        states = (model.num_layers + 1) * (2 if model.sublayers else 1)
        return cls(
            model.model_name,
            model.weights_sha256,
            model.num_layers,
            model.num_hidden_states,
            unit,
            seed,
            all_layers,
            steps,
            norms,
            states,
        )

    @property
    def max_angle(self) -> float:
        """The largest angle in the run's unit (a difference of two angles lies within +- this)."""
        return math.pi if self.unit == "radians" else 180.0


def validate_chunk(
    expected: Expected, first: int, sentences: int, parts: Sequence[RotationChunk], last: RotationChunk
) -> int:
    """One chunk's answer (its messages ``parts``, then ``last``) for the sentences ``first`` to
    ``first + sentences``: every row in place, every number in range, the statistics those of its
    rows. Returns its rows (sentences, or occurrences with ``occurrence="all"``)."""
    end = first + sentences
    skipped = _skipped(parts, first, end)
    seen: Optional[tuple] = None  # (index, occurrence) of the last row
    for part in parts:
        seen = _validate_part(expected, part, first, seen, skipped)
    reached = _next_row(first if seen is None else seen[0] + 1, skipped)
    _ensure(reached == end, f"rows stop before sentence {reached}, the chunk ends before {end}")
    rows = sum(len(part.sentences) for part in parts)
    _validate_last(expected, end, rows, last)
    return rows


def _skipped(parts: Sequence[RotationChunk], first: int, end: int) -> FrozenSet[int]:
    """The corpus indices the chunk's parts report skipped (``skip_invalid``): each within the chunk, once."""
    indices = [s.index for part in parts for s in part.skipped]
    _ensure(all(first <= i < end for i in indices), f"a skipped sentence outside the chunk {first}..{end}")
    _ensure(len(set(indices)) == len(indices), "a sentence reported skipped twice")
    return frozenset(indices)


def _next_row(index: int, skipped: FrozenSet[int]) -> int:
    """The first corpus index from ``index`` on that is not skipped: where the next row must be."""
    while index in skipped:
        index += 1
    return index


def _validate_part(
    expected: Expected, part: RotationChunk, first: int, seen: Optional[tuple], skipped: FrozenSet[int] = frozenset()
) -> Optional[tuple]:
    layers, rows = expected.num_layers, len(part.sentences)
    where = f"the part at sentence {part.first_sentence}"
    _ensure(not part.last, f"{where}: marked last before the end")
    _ensure((part.unit, part.shuffle_seed) == (expected.unit, expected.seed), f"{where}: another unit or seed")
    _ensure(part.angles.shape == (layers, rows, 3), f"{where}: angles of shape {part.angles.shape} for {rows} rows")
    top = np.float32(expected.max_angle)
    _ensure(bool(np.all((part.angles >= 0) & (part.angles <= top))), f"{where}: an angle outside [0, {top}]")
    _ensure(part.shuffle_draws.shape == (layers, rows, 4), f"{where}: {part.shuffle_draws.shape} shuffle draws")
    for s, report in enumerate(part.sentences):
        row = (report.index, report.occurrence)
        if seen is None:
            in_order = row[0] == _next_row(first, skipped)
        else:
            in_order = (row[0] == seen[0] and row[1] > seen[1]) or row[0] == _next_row(seen[0] + 1, skipped)
        _ensure(in_order, f"{where}: row {s} is sentence {row[0]} (occurrence {row[1]}) after {seen or first}")
        _ensure(s > 0 or part.first_sentence <= row[0], f"{where}: first_sentence is past its first row")
        _ensure(report.target_position < report.num_tokens, f"sentence {row[0]}: target outside its tokens")
        _ensure(report.non_target_position < report.num_tokens, f"sentence {row[0]}: non-target outside its tokens")
        seen = row
    draw_layers = part.shuffle_draws[..., [0, 2]]
    _ensure(bool(np.all((draw_layers >= 0) & (draw_layers <= layers))), f"{where}: a shuffle draw outside the layers")
    _validate_part_inside(expected, part, where)
    return seen


def _validate_last(expected: Expected, end: int, rows: int, last: RotationChunk) -> None:
    where = "the final message"
    _ensure(last.last, f"{where} is not marked last")
    _ensure(last.model_name == expected.model_name, f"model {last.model_name!r}, not {expected.model_name!r}")
    weights = last.weights_sha256
    _ensure(weights == expected.weights_sha256, f"weights {weights!r}, not {expected.weights_sha256!r}")
    _ensure((last.unit, last.shuffle_seed) == (expected.unit, expected.seed), f"{where}: another unit or seed")
    _ensure(last.first_sentence == end, f"{where} ends at sentence {last.first_sentence}, not {end}")
    _validate_layers("statistics", expected, last.statistics, rows, -expected.max_angle)
    for layer, s in enumerate(last.statistics):
        _ensure(s.sum == s.sum_exact * 2.0**-64, f"statistics[{layer}]: sum is not its exact sum rounded")
    _ensure(len(last.condition_statistics) == 3, f"{len(last.condition_statistics)} conditions' statistics, not 3")
    for c, condition in enumerate(last.condition_statistics):
        _ensure(condition.condition == c, f"condition_statistics[{c}] is condition {condition.condition}")
        _validate_layers(f"condition_statistics[{c}]", expected, condition.layers, rows, 0.0)
    sums = last.all_layers.sums if last.all_layers is not None else None
    # No rows (a piece whose every sentence was skipped) have no mean matrix to send.
    sent_as_asked = (sums is not None) == expected.all_layers or (rows == 0 and sums is None)
    _ensure(sent_as_asked, f"all_layers sums {sums is not None}, asked {expected.all_layers}")
    if sums is not None:
        size = expected.num_hidden_states
        _ensure(sums.n == rows, f"matrix sums of {sums.n} rows, not {rows}")
        _ensure(sums.size == size and len(sums.sums_exact) == size * size, f"matrix sums of side {sums.size}")
        most = rows * expected.max_angle * (1 + 1e-9) * _SCALE
        _ensure(all(0 <= s <= most for s in sums.sums_exact), f"a matrix sum beyond {rows} angles in range")
    _validate_last_inside(expected, rows, last)


def _validate_layers(field: str, expected: Expected, layers: Sequence[LayerStatistics], rows: int, low: float) -> None:
    """One per layer, in order, each of ``rows`` values within ``[low, max_angle]``."""
    _ensure(len(layers) == expected.num_layers, f"{field}: {len(layers)} layers, the model has {expected.num_layers}")
    _validate_sums(field, layers, rows, low, expected.max_angle)


def _validate_sums(field: str, layers: Sequence[LayerStatistics], rows: int, low: float, high: float) -> None:
    """In order, each of ``rows`` values within ``[low, high]``."""
    largest = max(abs(low), high)
    for i, s in enumerate(layers):
        _ensure(s.layer == i + 1, f"{field}[{i}]: layer {s.layer}")
        _ensure(s.n == rows, f"{field}[{i}]: n = {s.n}, but {rows} rows came")
        slack = 1e-9 * rows * high * _SCALE
        in_range = low * rows * _SCALE - slack <= s.sum_exact <= high * rows * _SCALE + slack
        _ensure(in_range, f"{field}[{i}]: a sum beyond {rows} values in range")
        squares_in_range = 0 <= s.sum_sq_exact <= rows * (largest * _SCALE) ** 2 * (1 + 1e-9)
        _ensure(squares_in_range, f"{field}[{i}]: a sum of squares out of range")
        _ensure(s.n * s.sum_sq_exact >= s.sum_exact**2, f"{field}[{i}]: sums that imply a negative variance")


#: Norms and growth ratios are bounded by the exact sums' range, as the server's own sums are.
_MAX_NORM = 2.0**31


def _validate_tensor(what: str, t: Optional[np.ndarray], shape: tuple, high: float) -> None:
    """``t`` has ``shape`` and values within ``[0, high]``."""
    _ensure(t is not None, f"no {what}")
    _ensure(t.shape == shape, f"{what} of shape {list(t.shape)}, not {list(shape)}")  # type: ignore[union-attr]
    _ensure(bool(np.all((t >= 0) & (t <= np.float32(high)))), f"a {what} value outside [0, {high}]")


def _validate_part_inside(expected: Expected, part: RotationChunk, where: str) -> None:
    """A part's step angles ``[L, 2, rows, 2]``, norms ``[states, rows, 2]`` and growth ``[L, rows, 2]``:
    there when asked for (and only then), of its rows, in range."""
    layers, rows = expected.num_layers, len(part.sentences)
    sub, norms = part.sublayers, part.norms
    _ensure((sub is not None) == expected.steps, f"{where}: step angles asked for {expected.steps}, sent {sub is not None}")
    if sub is not None:
        _validate_tensor(f"{where}: step angle", sub.angles, (layers, 2, rows, 2), expected.max_angle)
    _ensure((norms is not None) == expected.norms, f"{where}: norms asked for {expected.norms}, sent {norms is not None}")
    if norms is not None:
        _validate_tensor(f"{where}: norm", norms.norms, (expected.num_states, rows, 2), _MAX_NORM)
        _validate_tensor(f"{where}: growth ratio", norms.growth, (layers, rows, 2), _MAX_NORM)


def _validate_conditions(field: str, conditions: Sequence[ConditionStatistics], count: int, rows: int, high: float) -> None:
    """Per condition (target, non_target), ``count`` statistics of ``rows`` values each within ``[0, high]``."""
    _ensure(len(conditions) == 2, f"{field}: {len(conditions)} conditions' statistics, not 2")
    for c, condition in enumerate(conditions):
        _ensure(condition.condition == c, f"{field}[{c}] is condition {condition.condition}")
        _ensure(len(condition.layers) == count, f"{field}[{c}]: {len(condition.layers)} values' statistics, not {count}")
        _validate_sums(f"{field}[{c}]", condition.layers, rows, 0.0, high)


def _validate_last_inside(expected: Expected, rows: int, last: RotationChunk) -> None:
    """The final message's step and norm sums: one per step (state, layer), each of ``rows`` rows, in range."""
    layers, top = expected.num_layers, expected.max_angle
    sub, norms = last.sublayers, last.norms
    _ensure((sub is not None) == expected.steps, f"step sums asked for {expected.steps}, sent {sub is not None}")
    if sub is not None:
        steps = last.step_statistics
        _ensure(len(steps) == 2 * layers, f"step_statistics: {len(steps)} steps, the model has {2 * layers}")
        _validate_sums("step_statistics", steps, rows, -top, top)
        _validate_conditions("sublayers.condition_statistics", sub.condition_statistics, 2 * layers, rows, top)
    _ensure((norms is not None) == expected.norms, f"norm sums asked for {expected.norms}, sent {norms is not None}")
    if norms is not None:
        _validate_conditions("norms.norm_statistics", norms.norm_statistics, expected.num_states, rows, _MAX_NORM)
        _validate_conditions("norms.growth_statistics", norms.growth_statistics, layers, rows, _MAX_NORM)


def validate_merged(
    expected: Expected,
    merged: Sequence[LayerStatistics],
    conditions: Sequence[ConditionStatistics],
    rows: int,
    sentences: int,
    total: int,
) -> None:
    """The merge covers the corpus: every sentence once, every layer's and condition's ``n`` the
    rows received."""
    _ensure(sentences == total, f"{sentences} sentences computed of {total}")
    _ensure(len(merged) == expected.num_layers, f"{len(merged)} layers merged, the model has {expected.num_layers}")
    ns = [s.n for s in merged] + [s.n for c in conditions for s in c.layers]
    _ensure(all(n == rows for n in ns), f"merged n {ns} for {rows} rows")
    _ensure(len(conditions) == 3 and all(len(c.layers) == expected.num_layers for c in conditions), "conditions merged")


def validate_significance(merged: Sequence[LayerStatistics], answer: SignificanceResult) -> None:
    """The t-tests a replica computed from the merged statistics: one per layer, of their n and mean."""
    _ensure(len(answer.layers) == len(merged), f"{len(answer.layers)} layers tested, {len(merged)} sent")
    for i, (test, s) in enumerate(zip(answer.layers, merged)):
        _ensure(test.layer == i + 1, f"layer {test.layer} in place {i + 1}")
        _ensure(test.df == s.n - 1, f"layer {i + 1}: df {test.df} for n = {s.n}")
        _ensure(test.mean_difference == s.mean, f"layer {i + 1}: another mean")
        p_ok = 0 <= test.p <= test.p_adjusted <= 1 or math.isnan(test.p)
        _ensure(p_ok, f"layer {i + 1}: p {test.p} adjusted to {test.p_adjusted}")
