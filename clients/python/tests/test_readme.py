"""The Python snippets of the README's quick start and of the Python page (docs/src/python.md) run as
written; the notebook's own t-tests (scipy, from the ``[examples]`` extra) run unchanged on the page's
``angles`` and agree with the server's."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from .conftest import REPO, Server

README = REPO / "README.md"
PYTHON_PAGE = REPO / "docs" / "src" / "python.md"
README_ADDRESS = "127.0.0.1:50051"
#: The spelling of earlier README snippets, replaced as well.
README_ADDRESSES = (README_ADDRESS, "localhost:50051")


def readme_snippet() -> str:
    blocks = re.findall(r"```python\n(.*?)```", PYTHON_PAGE.read_text(encoding="utf-8"), flags=re.S)
    # The first block that calls rotations: the notebook's cells as three lines.
    return next(b for b in blocks if "client.rotations(sentences" in b)


def quick_start() -> str:
    readme = README.read_text(encoding="utf-8")
    return readme[readme.index("\n## Quick start") : readme.index("\n## ", readme.index("\n## Quick start") + 1)]


def test_the_readme_quick_start_analyses_your_own_sentences_from_python(
    server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """In a folder of the user's own, the quick start's sentence file, then its Python block."""
    section = quick_start()
    [make_file] = [l for l in re.findall(r"```sh\n(.*?)```", section, flags=re.S)[1].splitlines() if l.startswith("printf ")]
    subprocess.run(["bash", "-c", make_file], cwd=tmp_path, check=True)
    [snippet] = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert "localhost:50051" in snippet and "my_sentences.txt" in snippet
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(snippet.replace("localhost:50051", server.address), scope)  # noqa: S102 - our own README
    analysis = scope["analysis"]
    sentences = (tmp_path / "my_sentences.txt").read_text(encoding="utf-8").splitlines()
    assert analysis.rotations.angles.shape[1:] == (len(sentences), 3)
    assert len(analysis.significance.t) == analysis.rotations.angles.shape[0]


def test_the_examples_extra_brings_scipy() -> None:
    pyproject = (REPO / "clients" / "python" / "pyproject.toml").read_text(encoding="utf-8")
    [extra] = re.findall(r"^examples = \[(.*)\]$", pyproject, flags=re.M)
    assert '"scipy' in extra and '"matplotlib' in extra, extra


def test_the_readme_snippet_and_the_notebooks_t_tests_run_unchanged(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    snippet = readme_snippet()
    assert README_ADDRESS in snippet and "sentences = " in snippet, "the snippet defines its sentences"
    monkeypatch.chdir(REPO)  # the snippet reads examples/her_sentences.txt from the repository root
    scope: dict = {}
    for spelling in README_ADDRESSES:
        snippet = snippet.replace(spelling, server.address)
    exec(snippet, scope)  # noqa: S102 - our own README
    client, angles = scope["client"], scope["angles"]
    try:
        assert angles.shape[1:] == (len(scope["sentences"]), 3) == (angles.shape[1], 3)
        assert len(scope["sentences"]) == 54
        # The notebook's cell, as it is: one paired t-test per layer, target vs non-target.
        n_hiddens = angles.shape[0] + 1
        t = np.zeros(n_hiddens - 1)
        for layeri in range(n_hiddens - 1):
            t[layeri] = stats.ttest_rel(angles[layeri, :, 0], angles[layeri, :, 1]).statistic
        np.testing.assert_allclose(client.significance(angles).t, t, rtol=1e-6)
    finally:
        client.close()
