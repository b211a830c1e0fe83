"""examples/notebook.py against the real server: both figures written; the .ipynb in step with the .py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import Server

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_notebook_script_writes_both_figures(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "figures"
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / "notebook.py"), "--server", server.address, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # the script finds the sentences relative to itself, not the working directory
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "There are 54 sentences." in run.stdout
    for name in ("angles.png", "significance.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        assert len(data) > 10_000, f"{name} is suspiciously small ({len(data)} bytes)"


@pytest.mark.parametrize(
    "script, call", [("notebook.py", "client.rotations(sentences"), ("groups_notebook.py", "client.compare_groups(groups")]
)
def test_ipynb_is_the_script_with_outputs_cleared(script: str, call: str) -> None:
    check = subprocess.run(
        [sys.executable, str(EXAMPLES / "py_to_ipynb.py"), str(EXAMPLES / script), "--check"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    nb = json.loads((EXAMPLES / script).with_suffix(".ipynb").read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    assert any(call in "".join(c["source"]) for c in code)


def test_groups_notebook_script_compares_the_two_groups(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "figures"
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / "groups_notebook.py"), "--server", server.address, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "possessive: 16 sentences" in run.stdout and "object: 16 sentences" in run.stdout
    assert "possessive vs object: Welch's t-test on the target angles" in run.stdout
    data = (out / "groups.png").read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
