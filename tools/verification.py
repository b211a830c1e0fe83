"""How an export is verified: every hidden vector against the reference, by what the analysis measures.

numpy only, so its tests run without torch (make tools-test).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# What the analysis measures is each hidden vector's direction: verification bounds, per hidden
# vector (every hidden state, every real token), the angle between the checked vector and float32
# PyTorch's, and the relative error of its norm. An angle bound holds whatever the vectors' scale
# (trained GPT-2 has "massive activations" in the thousands in a few dimensions, where a
# per-component bound would allow 0.3), and an error of e degrees in each vector moves any angle the
# analysis reports by at most 2e degrees (triangle inequality on the sphere).
# Calibrated on random-init GPT-2 and GPT-2 XL (tools/README.md lists the measured values).
BOUNDS = {
    "float32": {"angle_deg": 1e-3, "rel_norm_error": 1e-4},
    "float16": {"angle_deg": 0.5, "rel_norm_error": 2e-3},
    "bfloat16": {"angle_deg": 3.0, "rel_norm_error": 2e-2},
}


@dataclass
class Deviation:
    """How far checked hidden vectors are from the reference ones: the worst over every vector compared."""

    max_angle_deg: float = 0.0
    max_rel_norm_error: float = 0.0
    max_abs_error: float = 0.0  # for information only: it scales with the vectors
    vectors: int = 0
    worst_at: tuple[int, int, int] | None = None  # (hidden state, batch row, token) of the largest angle

    def merge(self, other: Deviation) -> Deviation:
        worse = other if not other.max_angle_deg <= self.max_angle_deg else self
        return Deviation(
            max(self.max_angle_deg, other.max_angle_deg),
            max(self.max_rel_norm_error, other.max_rel_norm_error),
            max(self.max_abs_error, other.max_abs_error),
            self.vectors + other.vectors,
            worse.worst_at,
        )

    def within(self, bound: dict) -> bool:
        """Both bounds hold (False for NaN)."""
        return self.max_angle_deg <= bound["angle_deg"] and self.max_rel_norm_error <= bound["rel_norm_error"]

    def describe(self) -> str:
        return (
            f"{self.vectors} hidden vectors: max angle {self.max_angle_deg:.3g} deg, max relative norm error "
            f"{self.max_rel_norm_error:.3g} (max |component error| {self.max_abs_error:.3g}; "
            f"largest angle at hidden state, row, token {self.worst_at})"
        )


def vector_errors(reference, actual):
    """Per vector (last axis) of two [..., hidden] arrays: (angle in degrees, relative norm error, max |error|).

    The angle is Kahan's 2*atan2(|a^ - b^|, |a^ + b^|) in float64, exact down to tiny angles where
    acos(cos) returns 0. Two zero vectors agree (0, 0); one zero or non-finite vector is inf.
    """
    r = np.asarray(reference, dtype=np.float64)
    g = np.asarray(actual, dtype=np.float64)
    nr, ng = np.linalg.norm(r, axis=-1), np.linalg.norm(g, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ru, gu = r / nr[..., None], g / ng[..., None]
        angle = np.degrees(2 * np.arctan2(np.linalg.norm(ru - gu, axis=-1), np.linalg.norm(ru + gu, axis=-1)))
        rel_norm = np.abs(ng - nr) / nr
        abs_error = np.abs(r - g).max(axis=-1, initial=0.0)
    both_zero = (nr == 0) & (ng == 0)
    angle, rel_norm = np.where(both_zero, 0.0, angle), np.where(both_zero, 0.0, rel_norm)
    broken = ~(np.isfinite(r).all(axis=-1) & np.isfinite(g).all(axis=-1)) | ((nr == 0) != (ng == 0))
    angle, rel_norm = np.where(broken, np.inf, angle), np.where(broken, np.inf, rel_norm)
    return angle, rel_norm, np.where(broken, np.inf, abs_error)


def compare(reference, actual, lengths) -> Deviation:
    """Compares every hidden vector of every real token: reference and actual are lists (one per
    hidden state) of [batch, seq, hidden] arrays, right-padded; row r has lengths[r] real tokens."""
    result = Deviation()
    for k, (ref, got) in enumerate(zip(reference, actual, strict=True)):
        for row, n in enumerate(lengths):
            if n == 0:
                continue
            angle, rel_norm, abs_error = vector_errors(ref[row, :n], got[row, :n])
            token = int(np.argmax(angle))
            found = Deviation(float(angle.max()), float(rel_norm.max()), float(abs_error.max()), n, (k, row, token))
            result = result.merge(found)
    return result


def gather_index_for(lengths, num_states: int, seed: int = 0) -> np.ndarray:
    """Every (row, hidden state, real token) triple, shuffled, plus some repeated: [n, 3] int64."""
    triples = [(r, k, p) for r, n in enumerate(lengths) for k in range(num_states) for p in range(n)]
    rng = np.random.default_rng(seed)
    index = np.asarray(triples, dtype=np.int64)[rng.permutation(len(triples))]
    return np.concatenate([index, index[: max(1, len(index) // 10)]])


# Reduced-precision exports (export_model.py --precision): what the analysis reports is the angle
# between consecutive hidden states of a token; the default bound on its error against float32
# PyTorch, in degrees, over every layer transition of every real token.
PRECISION_BOUND = {"mean_deg": 0.05, "max_deg": 0.5}


def rotation_angles(states, lengths) -> np.ndarray:
    """The angles (degrees) the analysis measures: between hidden state k-1 and k of each real token.

    states: one [batch, seq, hidden] array per hidden state (right-padded; row r has lengths[r] real
    tokens). Returns a flat array over (transition, row, token), in that order."""
    angles = []
    for before, after in zip(states[:-1], states[1:]):
        for row, n in enumerate(lengths):
            angle, _, _ = vector_errors(before[row, :n], after[row, :n])
            angles.append(angle)
    return np.concatenate(angles) if angles else np.zeros(0)


@dataclass
class AngleError:
    """|angle - reference angle| over every rotation angle compared (degrees)."""

    mean_deg: float
    max_deg: float
    angles: int

    def within(self, bound: dict) -> bool:
        """Both bounds hold (False for NaN)."""
        return self.mean_deg <= bound["mean_deg"] and self.max_deg <= bound["max_deg"]

    def describe(self) -> str:
        return f"{self.angles} rotation angles: error mean {self.mean_deg:.3g} deg, max {self.max_deg:.3g} deg"


def angle_error(batches) -> AngleError:
    """The error of the analysis's rotation angles (rotation_angles) over (reference, actual, lengths)
    batches: every layer transition of every real token, against the reference's."""
    diffs = [np.abs(rotation_angles(actual, n) - rotation_angles(reference, n)) for reference, actual, n in batches]
    diff = np.concatenate(diffs) if diffs else np.zeros(0)
    if diff.size == 0:
        return AngleError(0.0, 0.0, 0)
    if not np.isfinite(diff).all():
        return AngleError(float("inf"), float("inf"), int(diff.size))
    return AngleError(float(diff.mean()), float(diff.max()), int(diff.size))
