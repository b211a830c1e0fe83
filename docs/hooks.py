"""MkDocs hook: a page may include a file of the repository kept where other tools write or read it.

A line ``{% include "ARCHITECTURE.md" %}`` (path from the repository root) is replaced by that file,
its first heading dropped and the rest one level deeper, so ARCHITECTURE.md and BENCHMARKS.md (which
scripts/bench rewrites) stay single sources and the book shows them. A missing file fails the build.
"""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INCLUDE = re.compile(r'^\{% include "([^"]+)" %\}$', flags=re.M)


def _included(match: re.Match) -> str:
    text = (REPO / match.group(1)).read_text(encoding="utf-8")
    body = text.split("\n", 1)[1] if text.startswith("# ") else text
    fenced, out = False, []
    for line in body.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        out.append("#" + line if not fenced and re.match(r"^#{1,5} ", line) else line)
    return "\n".join(out)


def on_page_markdown(markdown, page, config, files):  # noqa: ARG001 - MkDocs' hook signature
    return INCLUDE.sub(_included, markdown)
