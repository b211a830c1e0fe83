"""Inside the layer over several chunks (``steps="sublayers"``, ``norms=True``, streamed or sharded):
each chunk's step angles, norms and growth ratios put back in row order, and the exact sums of each
chunk's final message (the step tests' differences, the step angles and norms per condition) merged
by integer addition. Means come from the merged sums as the server computes them
(``convert::step_summary``/``norm_summary`` in the Rust crate: the exact sum over n, rounded to
float32), so they equal one ``analyze``'s bit for bit however the corpus was split; the step tests
are asked of a replica from the merged sums. The Rust CLI's ``src/client/inside_merge.rs`` does the same.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ._types import ConditionStatistics, LayerStatistics, Norms, RotationChunk, SublayerRotations, merge_conditions
from ._validate import InvalidAnswer


def _means(conditions: Sequence[ConditionStatistics], shape: Tuple[int, ...]) -> np.ndarray:
    """``conditions[c].layers[k]``'s means as float32 ``[shape..., conditions]``, ``k`` row-major over ``shape``."""
    values = [[s.mean for s in c.layers] for c in conditions]
    return np.array(values, dtype=np.float64).T.astype(np.float32).reshape(*shape, len(conditions))


def _count(conditions: Sequence[ConditionStatistics]) -> int:
    """Values per condition."""
    return len(conditions[0].layers) if conditions else 0


def step_summary(conditions: Sequence[ConditionStatistics]) -> SublayerRotations:
    """Step means and sums of merged step-angle statistics (``layers[2 (l - 1) + step]``), without angles."""
    means = _means(conditions, (_count(conditions) // 2, 2))
    return SublayerRotations(angles=None, layer_means=means, condition_statistics=tuple(conditions))


def norm_summary(norms: Sequence[ConditionStatistics], growth: Sequence[ConditionStatistics]) -> Norms:
    """Mean norms and growth ratios of merged statistics, without the rows' values."""
    return Norms(
        norms=None,
        growth=None,
        mean_norms=_means(norms, (_count(norms),)),
        mean_growth=_means(growth, (_count(growth),)),
        norm_statistics=tuple(norms),
        growth_statistics=tuple(growth),
    )


@dataclasses.dataclass
class InsideSums:
    """The merged exact sums of the chunks' steps and norms (empty for what the run did not ask)."""

    #: Per step: target - non_target (the step tests' statistics).
    steps: List[LayerStatistics] = dataclasses.field(default_factory=list)
    step_conditions: Tuple[ConditionStatistics, ...] = ()
    norms: Tuple[ConditionStatistics, ...] = ()
    growth: Tuple[ConditionStatistics, ...] = ()

    def add(self, last: RotationChunk) -> None:
        """Adds a validated chunk's final message."""
        if self.steps:
            self.steps = [m.merge(s) for m, s in zip(self.steps, last.step_statistics)]
        else:
            self.steps = list(last.step_statistics)
        if last.sublayers is not None:
            self.step_conditions = merge_conditions(self.step_conditions, last.sublayers.condition_statistics)
        if last.norms is not None:
            self.norms = merge_conditions(self.norms, last.norms.norm_statistics)
            self.growth = merge_conditions(self.growth, last.norms.growth_statistics)

    def check(self, rows: int, steps: Optional[int], norms: Optional[Tuple[int, int]]) -> None:
        """The merge covers the corpus: ``steps`` (2 per layer) and ``norms`` (states, layers) merged
        when asked for, each of ``rows`` values."""
        states, layers = norms if norms is not None else (None, None)
        for what, merged, count in [
            ("step sums", self.step_conditions, steps),
            ("norm sums", self.norms, states),
            ("growth sums", self.growth, layers),
        ]:
            got = [len(c.layers) for c in merged]
            if got != ([] if count is None else [count, count]):
                raise InvalidAnswer(f"{what} of {got} values merged, not {count} per condition")
        if len(self.steps) != (steps or 0):
            raise InvalidAnswer(f"{len(self.steps)} steps' statistics merged, not {steps or 0}")
        sums = [s for m in (self.step_conditions, self.norms, self.growth) for c in m for s in c.layers]
        ns = [s.n for s in [*self.steps, *sums] if s.n != rows]
        if ns:
            raise InvalidAnswer(f"merged step or norm sums of n {ns} for {rows} rows")

    def summarize(self, last: RotationChunk, steps: bool, norms: bool) -> RotationChunk:
        """``last`` (the run's final message) with the merged sums and their means, as a stream's
        final chunk carries them; the step tests are asked apart."""
        return dataclasses.replace(
            last,
            sublayers=step_summary(self.step_conditions) if steps else None,
            step_statistics=tuple(self.steps) if steps else (),
            norms=norm_summary(self.norms, self.growth) if norms else None,
        )


def assemble(parts: Sequence[RotationChunk], last: RotationChunk) -> Tuple[Optional[SublayerRotations], Optional[Norms]]:
    """The chunks' step angles ``[L, 2, rows, 2]``, norms ``[states, rows, 2]`` and growth
    ``[L, rows, 2]`` in row order, with the final message's merged means and sums."""
    with_rows = [p for p in parts if p.sentences]  # a chunk whose every sentence was skipped has none
    sublayers, norms = last.sublayers, last.norms
    if sublayers is not None and with_rows:
        if any(p.sublayers is None or p.sublayers.angles is None for p in with_rows):
            raise ValueError("a chunk without step angles")
        angles = np.concatenate([p.sublayers.angles for p in with_rows], axis=2)  # type: ignore[union-attr]
        sublayers = dataclasses.replace(sublayers, angles=angles)
    if norms is not None and with_rows:
        if any(p.norms is None or p.norms.norms is None or p.norms.growth is None for p in with_rows):
            raise ValueError("a chunk without norms")
        values = np.concatenate([p.norms.norms for p in with_rows], axis=1)  # type: ignore[union-attr]
        growth = np.concatenate([p.norms.growth for p in with_rows], axis=1)  # type: ignore[union-attr]
        norms = dataclasses.replace(norms, norms=values, growth=growth)
    return sublayers, norms
