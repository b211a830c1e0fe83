"""Two groups of sentences (``" her"`` possessive vs object): CompareGroups against scipy's
``ttest_ind(equal_var=False)`` on the target angles the server returned, each group equal to its own
``analyze``, and Client, TestSignificance on merged statistics and a Cluster equal bit for bit."""

from __future__ import annotations

from typing import Dict, List

import grpc
import numpy as np
import pytest
import scipy.stats

from rotations_client import Client, Cluster, GroupComparison, RotationsError
from rotations_client._types import merge_conditions

from .conftest import REPO
from .test_cluster import FAST, assert_identical


def _read(name: str) -> List[str]:
    lines = (REPO / "examples" / name).read_text(encoding="utf-8").splitlines()
    return [line.rstrip() for line in lines if line.strip()]


@pytest.fixture(scope="module")
def groups() -> Dict[str, List[str]]:
    return {"possessive": _read("her_possessive.txt"), "object": _read("her_object.txt")}


@pytest.fixture(scope="module")
def comparison(server, groups) -> GroupComparison:  # type: ignore[no-untyped-def]
    with Client(server.address, timeout=120) as client:
        return client.compare_groups(groups, " her", correction="holm")


def hedges_g(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's d on the pooled sd times J = 1 - 3 / (4N - 9), from numpy's variances."""
    n = len(a) + len(b)
    pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (n - 2))
    return float((1 - 3 / (4 * n - 9)) * (a.mean() - b.mean()) / pooled)


def test_welch_tests_match_scipy_ttest_ind_on_the_returned_angles(comparison, groups) -> None:  # type: ignore[no-untyped-def]
    assert comparison.labels == ("possessive", "object")
    a = comparison["possessive"].angles[:, :, 0].astype(np.float64)
    b = comparison["object"].angles[:, :, 0].astype(np.float64)
    assert a.shape[1] == len(groups["possessive"]) and b.shape[1] == len(groups["object"])
    tests = comparison.tests
    assert tests.condition == 0 and tests.correction == "holm" and len(tests.layers) == a.shape[0]
    for layer, test in enumerate(tests.layers):
        want = scipy.stats.ttest_ind(a[layer], b[layer], equal_var=False)
        ci = want.confidence_interval(0.95)
        assert test.layer == layer + 1 and test.flag == ""
        assert test.t == pytest.approx(want.statistic, rel=1e-4)
        assert test.p == pytest.approx(want.pvalue, rel=1e-3, abs=1e-12)
        assert test.df == pytest.approx(want.df, rel=1e-4)
        assert (test.ci_low, test.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-4, abs=1e-6)
        assert test.mean_a == pytest.approx(a[layer].mean(), rel=1e-6)
        assert test.hedges_g == pytest.approx(hedges_g(a[layer], b[layer]), rel=1e-4)
        assert test.g_ci_low < test.hedges_g < test.g_ci_high
    # Holm over the layers, as scipy's p-values adjusted by hand.
    order = np.argsort(tests.p)
    m = len(tests.p)
    holm = np.minimum(1, np.maximum.accumulate((m - np.arange(m)) * tests.p[order]))
    assert np.allclose(tests.p_adjusted[order], holm, rtol=1e-12)
    assert np.array_equal(tests.significant, tests.p_adjusted < 0.05)
    assert set(tests.direction) <= {"a_greater", "b_greater", "not_significant"}


def test_each_group_is_its_own_analyze_and_merged_statistics_give_the_same_tests(server, groups, comparison) -> None:  # type: ignore[no-untyped-def]
    with Client(server.address, timeout=120) as client:
        alone = {label: client.analyze(s, " her", correction="holm") for label, s in groups.items()}
        for label, analysis in alone.items():
            assert_identical(comparison[label], analysis)
            assert comparison[label].condition_statistics == analysis.condition_statistics
        # Each group streamed in two pieces; the pieces' final statistics merged exactly.
        merged = {}
        for label, s in groups.items():
            total: tuple = ()
            for lo, hi in [(5, len(s)), (0, 5)]:
                *_, last = client.stream_rotations(s[lo:hi], first_sentence_index=lo)
                total = merge_conditions(total, last.condition_statistics)
            assert total == alone[label].condition_statistics
            merged[label] = total
        tests = client.group_significance_from_statistics(
            merged["possessive"][0].layers, merged["object"][0].layers, correction="holm"
        )
    assert tests == comparison.tests


def test_cluster_equals_client_whatever_the_replicas(replicas, groups, comparison) -> None:  # type: ignore[no-untyped-def]
    for addresses, chunk_size in [([r.address for r in replicas], 3), ([replicas[0].address], 64)]:
        with Cluster(addresses, chunk_size=chunk_size, timeout=120, retry=FAST) as cluster:
            got = cluster.compare_groups(groups, " her", correction="holm")
        assert got.labels == comparison.labels
        assert got.tests == comparison.tests, f"{len(addresses)} replicas, chunks of {chunk_size}"
        for label in got.labels:
            assert_identical(got[label], comparison[label])
            assert got[label].condition_statistics == comparison[label].condition_statistics


def test_another_condition_and_a_group_of_one(client: Client, groups) -> None:  # type: ignore[no-untyped-def]
    got = client.compare_groups(
        [("possessive", groups["possessive"]), ("one", groups["object"][:1])], condition="shuffled"
    )
    assert got.tests.condition == 2
    assert all(t.flag == "too_few_sentences" and np.isnan(t.p) for t in got.tests.layers)
    assert got["one"].significance is None and "at least 2 sentences" in got["one"].significance_error
    with pytest.raises(KeyError, match="no group 'two'"):
        got["two"]


def test_errors_name_the_group(client: Client, groups) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="exactly two"):
        client.compare_groups({"possessive": groups["possessive"]})
    with pytest.raises(RotationsError) as caught:
        client.compare_groups([("same", groups["possessive"]), ("same", groups["object"])])
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "groups[1].label" in caught.value.message and "must differ" in caught.value.message
    bad = dict(groups, object=groups["object"][:3] + ["Nobody was there."])
    with pytest.raises(RotationsError) as caught:
        client.compare_groups(bad)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.message.startswith('groups[1] ("object"): sentence 3 ("Nobody was there.")')
    with pytest.raises(RotationsError) as caught:
        client.compare_groups(groups, condition=1, num_tests=1)
    assert "options" in caught.value.message and "num_tests" in caught.value.message



def test_group_frames_are_long_tables_whose_means_are_the_groups_layer_means(comparison) -> None:  # type: ignore[no-untyped-def]
    frame = comparison.to_frame()
    assert list(frame.columns) == ["group", "sentence", "occurrence", "layer", "condition", "angle"]
    for label in comparison.labels:
        angles = comparison[label].angles  # [layers, rows, 3], reshaped by hand below
        part = frame[frame.group == label]
        layers, rows, _ = angles.shape
        assert len(part) == layers * rows * 3
        for l, s, c in [(0, 0, 0), (layers - 1, rows - 1, 2), (2, rows // 2, 1)]:
            cell = part[(part.sentence == s) & (part.layer == l + 1) & (part.condition == ("target", "non_target", "shuffled")[c])]
            assert cell.angle.item() == angles[l, s, c]
        # pandas' own groupby means against the float64 means of the returned angles.
        means = part.groupby(["layer", "condition"]).angle.apply(lambda a: a.astype(np.float64).mean()).unstack()
        np.testing.assert_allclose(means[["target", "non_target", "shuffled"]].to_numpy(), angles.astype(np.float64).mean(axis=1), rtol=1e-12)
    tests = comparison.tests_frame()
    assert list(tests.layer) == list(comparison.tests.layer) and list(tests.columns)[:3] == ["layer", "n_a", "n_b"]
    np.testing.assert_array_equal(tests.p_adjusted.to_numpy(), comparison.tests.p_adjusted)
    target = frame[frame.condition == "target"]
    for layer in (1, 4):
        a, b = (target[(target.group == g) & (target.layer == layer)].angle.to_numpy(np.float64) for g in comparison.labels)
        want = scipy.stats.ttest_ind(a, b, equal_var=False)
        row = tests[tests.layer == layer]
        np.testing.assert_allclose(row.t.item(), want.statistic, rtol=1e-6)
        np.testing.assert_allclose(row.p.item(), want.pvalue, rtol=1e-5)


def test_the_clis_group_tables_are_the_frames(server, comparison, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`rotations compare` on the same groups writes group_angles.csv and group_tests.csv with the
    columns (and here the values) of comparison.to_frame() and tests_frame()."""
    import subprocess

    import pandas as pd

    from rotations_client import read_angles_csv

    from .conftest import _env

    examples = REPO / "examples"
    args = [str(server.binary), "compare", "--server", server.url, "--target", " her", "--correction", "holm"]
    args += ["--group", f"possessive={examples / 'her_possessive.txt'}", "--group", f"object={examples / 'her_object.txt'}"]
    done = subprocess.run([*args, "--out", str(tmp_path / "out")], capture_output=True, text=True, env=_env(), cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    pd.testing.assert_frame_equal(read_angles_csv(tmp_path / "out" / "group_angles.csv"), comparison.to_frame(), check_dtype=False)
    tests = pd.read_csv(tmp_path / "out" / "group_tests.csv", keep_default_na=False)
    assert list(tests.columns) == list(comparison.tests_frame().columns)
    np.testing.assert_allclose(tests.p_adjusted.to_numpy(float), comparison.tests.p_adjusted, rtol=1e-12)
