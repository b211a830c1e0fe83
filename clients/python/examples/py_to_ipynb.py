"""Writes a notebook (nbformat 4.5 JSON, outputs cleared) from a script in the "percent" format.

Cells start at lines `# %%` (code) and `# %% [markdown]` (markdown; its lines lose their leading
`# `), as VS Code, Spyder and jupytext read them. Standard library only, deterministic output:

    python py_to_ipynb.py notebook.py            # writes notebook.ipynb beside it
    python py_to_ipynb.py notebook.py --check    # exit 1 if notebook.ipynb is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Tuple


def cells(source: str) -> List[Tuple[str, List[str]]]:
    out: List[Tuple[str, List[str]]] = []
    kind, lines = "code", []  # anything before the first marker is a code cell
    for line in source.splitlines():
        if line.startswith("# %%"):
            out.append((kind, lines))
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
            continue
        if kind == "markdown":
            line = line[2:] if line.startswith("# ") else line.lstrip("#")
        lines.append(line)
    out.append((kind, lines))
    trimmed = []
    for kind, lines in out:
        while lines and not lines[0].strip():
            lines.pop(0)
        while lines and not lines[-1].strip():
            lines.pop()
        if lines:
            trimmed.append((kind, lines))
    return trimmed


def notebook(source: str) -> dict:
    nb_cells = []
    for i, (kind, lines) in enumerate(cells(source)):
        text = [line + "\n" for line in lines[:-1]] + [lines[-1]]
        cell = {"cell_type": kind, "id": f"cell-{i:02d}", "metadata": {}, "source": text}
        if kind == "code":
            cell["execution_count"] = None
            cell["outputs"] = []
        nb_cells.append(cell)
    return {
        "cells": nb_cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def render(script: Path) -> str:
    return json.dumps(notebook(script.read_text(encoding="utf-8")), indent=1, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("script", type=Path)
    parser.add_argument("--check", action="store_true", help="only check that the .ipynb is up to date")
    args = parser.parse_args()
    target = args.script.with_suffix(".ipynb")
    text = render(args.script)
    if args.check:
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            print(f"{target} is out of date: run python {Path(__file__).name} {args.script}", file=sys.stderr)
            return 1
        return 0
    target.write_text(text, encoding="utf-8")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
