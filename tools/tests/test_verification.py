"""compare(), the export's verification, against vectors whose angles and norms are known by construction."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from verification import BOUNDS, Deviation, compare, gather_index_for, vector_errors  # noqa: E402

HIDDEN = 64


def rotated(v: np.ndarray, w: np.ndarray, degrees: float) -> np.ndarray:
    """v turned by `degrees` towards w (v, w orthonormal): the angle to v is exactly `degrees`."""
    t = np.radians(degrees)
    return np.cos(t) * v + np.sin(t) * w


def orthonormal_pair(rng):
    q, _ = np.linalg.qr(rng.standard_normal((HIDDEN, 2)))
    return q[:, 0], q[:, 1]


@pytest.mark.parametrize("degrees", [1e-6, 1e-3, 0.5, 30.0, 90.0, 179.0])
def test_angles_are_exact_from_tiny_to_large(degrees):
    rng = np.random.default_rng(1)
    v, w = orthonormal_pair(rng)
    angle, rel_norm, _ = vector_errors(1000 * v, 1000 * rotated(v, w, degrees))
    assert angle == pytest.approx(degrees, rel=1e-6, abs=1e-9)
    assert rel_norm == pytest.approx(0.0, abs=1e-12)


def test_the_angle_ignores_scale_and_the_norm_error_is_relative():
    rng = np.random.default_rng(2)
    v, w = orthonormal_pair(rng)
    # Massive activations: a vector of norm 3000 off by 0.3 per component in one direction only.
    angle, rel_norm, abs_error = vector_errors(3000 * v, 3000 * v * (1 + 1e-4))
    assert angle == pytest.approx(0.0, abs=1e-9)
    assert rel_norm == pytest.approx(1e-4, rel=1e-6)
    assert abs_error == pytest.approx(0.3 * np.abs(v).max(), rel=1e-6)


def states(rng, num_states, batch, seq):
    return [rng.standard_normal((batch, seq, HIDDEN)).astype(np.float32) for _ in range(num_states)]


def test_compare_reports_the_worst_vector_over_real_tokens_only():
    rng = np.random.default_rng(3)
    lengths = [5, 2, 7]
    reference = states(rng, 4, 3, 7)
    actual = [s.copy() for s in reference]
    # Padding (row 1 past token 2) is garbage and must not count.
    actual[2][1, 2:] = np.nan
    actual[0][1, 3:] = 1e6
    # One real vector turned by 0.01 degrees and one scaled by 1 + 2e-5.
    r = reference[3][2, 6].astype(np.float64)
    v = r / np.linalg.norm(r)
    w = rng.standard_normal(HIDDEN)
    w -= w.dot(v) * v
    w /= np.linalg.norm(w)
    actual[3][2, 6] = (np.linalg.norm(r) * rotated(v, w, 0.01)).astype(np.float32)
    actual[1][0, 4] = reference[1][0, 4] * np.float32(1 + 2e-5)

    found = compare(reference, actual, lengths)
    assert found.vectors == 4 * sum(lengths)
    assert found.max_angle_deg == pytest.approx(0.01, rel=1e-3)
    assert found.worst_at == (3, 2, 6)
    assert found.max_rel_norm_error == pytest.approx(2e-5, rel=1e-2)
    assert not found.within(BOUNDS["float32"])  # 0.01 deg > 1e-3 deg
    assert found.within({"angle_deg": 0.02, "rel_norm_error": 1e-4})


def test_identical_states_pass_with_zero_error():
    rng = np.random.default_rng(4)
    reference = states(rng, 3, 2, 4)
    found = compare(reference, [s.copy() for s in reference], [4, 1])
    assert (found.max_angle_deg, found.max_rel_norm_error, found.max_abs_error) == (0.0, 0.0, 0.0)
    assert found.within(BOUNDS["float32"])


@pytest.mark.parametrize("bad", [np.nan, np.inf, 0.0])
def test_non_finite_or_zero_vectors_fail(bad):
    rng = np.random.default_rng(5)
    reference = states(rng, 2, 1, 3)
    actual = [s.copy() for s in reference]
    actual[1][0, 1] = bad  # every component: NaN, inf, or the zero vector
    found = compare(reference, actual, [3])
    assert found.max_angle_deg == np.inf
    assert not found.within(BOUNDS["bfloat16"])


def test_two_zero_vectors_agree():
    zeros = np.zeros((3, HIDDEN))
    angle, rel_norm, _ = vector_errors(zeros, zeros)
    assert angle.tolist() == [0.0] * 3 and rel_norm.tolist() == [0.0] * 3


def test_merge_keeps_the_worst_and_counts_every_vector():
    a = Deviation(1e-4, 1e-6, 1e-5, 10, (1, 0, 2))
    b = Deviation(2e-4, 1e-7, 1e-6, 5, (3, 1, 0))
    m = a.merge(b)
    assert (m.max_angle_deg, m.max_rel_norm_error, m.max_abs_error, m.vectors, m.worst_at) == (
        2e-4,
        1e-6,
        1e-5,
        15,
        (3, 1, 0),
    )
    assert not Deviation(float("nan"), 0.0).within(BOUNDS["float32"])


def test_the_gather_index_covers_every_real_vector():
    index = gather_index_for([3, 1], num_states=4)
    triples = {tuple(t) for t in index.tolist()}
    assert triples == {(r, k, p) for r, n in enumerate([3, 1]) for k in range(4) for p in range(n)}
    assert index.dtype == np.int64 and index.shape[1] == 3 and len(index) > len(triples)
