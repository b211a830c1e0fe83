"""One request model (``Options``) for ``Client`` and ``Cluster``: every method takes the same
option keywords, refuses unknown ones before any call, and the selection options reach the groups
of ``compare_groups`` on one server and sharded alike."""

from __future__ import annotations

import inspect
from typing import Dict, List

import pytest

from rotations_client import Client, Cluster, Options
from rotations_client._options import FIELDS, TEST_FIELDS

from .test_cluster import FAST, assert_identical
from .test_groups import _read


def test_every_analysis_method_of_both_classes_takes_the_options_as_keywords() -> None:
    for cls in (Client, Cluster):
        for name in ("analyze", "stream_rotations", "compare_groups"):
            parameters = inspect.signature(getattr(cls, name)).parameters
            assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()), (cls, name)
            # No option is also spelled out as a parameter of its own (it would be a second definition).
            assert not FIELDS & set(parameters), (cls, name, FIELDS & set(parameters))


def test_unknown_and_misplaced_options_are_refused_before_any_call(client: Client, sentences: List[str]) -> None:
    with pytest.raises(TypeError, match=r"analyze\(\) got unexpected keyword argument\(s\) 'sede'.*seed"):
        client.analyze(sentences, sede=1)
    with pytest.raises(TypeError, match=r"rotations\(\) got unexpected keyword argument\(s\) 'alpha'"):
        client.rotations(sentences, alpha=0.01)
    with pytest.raises(ValueError, match="occurrence must be"):
        Options.parse("analyze", {"occurrence": "second"})
    with pytest.raises(ValueError, match="row_matrices needs all_layers"):
        Options.parse("analyze", {"row_matrices": True})
    assert TEST_FIELDS < FIELDS


def test_options_for_a_chunk_send_that_chunks_spans() -> None:
    opts = Options.parse("analyze", {"target_spans": [(0, 1), (2, 3), (4, 5)]})
    assert opts.for_rows(1, 2).target_spans == ((2, 3), (4, 5))
    assert Options().for_rows(5, 3) == Options()


@pytest.fixture(scope="module")
def groups() -> Dict[str, List[str]]:
    return {"possessive": _read("her_possessive.txt"), "object": _read("her_object.txt")}


def test_compare_groups_takes_the_selection_options_on_one_server_and_sharded(replicas, groups) -> None:  # type: ignore[no-untyped-def]
    options = dict(occurrence="last", sub_token="first", non_target_offset=-2, correction="holm")
    with Client(replicas[0].address, timeout=120) as client:
        want = client.compare_groups(groups, " her", **options)
        # Each group is its own analyze with the same options.
        for label, sentences in groups.items():
            assert_identical(want[label], client.analyze(sentences, " her", **options))
    with Cluster([r.address for r in replicas], chunk_size=3, timeout=120, retry=FAST) as cluster:
        got = cluster.compare_groups(groups, " her", **options)
    assert got.tests == want.tests
    for label in got.labels:
        assert_identical(got[label], want[label])
