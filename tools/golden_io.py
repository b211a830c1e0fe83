"""What the golden-reference scripts share: JSON numbers that may be non-finite, and writing a
golden file or, with ``--check``, failing when the committed one is not what the script makes."""

import json
import sys
from pathlib import Path

import numpy as np


def number(x):
    """A float for JSON: non-finite values as strings ("nan", "inf", "-inf"; tests/common reads them)."""
    x = float(x)
    if np.isnan(x):
        return "nan"
    if np.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def write_or_check(out: Path, golden, script: str, check: bool) -> None:
    """Writes ``golden`` to ``out`` as indented JSON, or with ``check`` exits 1 unless the committed
    file is exactly that text."""
    text = json.dumps(golden, indent=1) + "\n"
    if check:
        if not out.exists() or out.read_text() != text:
            sys.exit(f"{out} is not what {Path(script).name} makes: rerun it")
        print(f"{out.name} is up to date")
        return
    out.write_text(text)
    print(f"wrote {out}")
