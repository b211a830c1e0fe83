#!/usr/bin/env python3
"""Train the SentencePiece-style tokenizer the Llama-like random-init presets use, offline.

No hub is reachable here, so Llama's, Mistral's and Gemma's own tokenizers cannot be fetched. This
trains one of the same kind with the `tokenizers` library: BPE over `▁`-marked words (Metaspace,
`▁` prepended to the first word, as SentencePiece does), byte fallback (`<0x00>`..`<0xFF>`: any
text encodes, no `<unk>` in practice) and a post-processor that prepends BOS, with Llama 2's
special tokens and ids: `<unk>` 0, `<s>` 1 (BOS), `</s>` 2 (EOS); there is no pad token.

Training text, all available offline on any machine with Python: the docstrings of Python's
standard library (modules, classes and functions, files in sorted order) and the repository's
`examples/her_sentences.txt`. The docstrings differ between Python versions, so the committed file
is reproduced byte for byte by the Python version recorded in tools/tokenizers/README.md.

    python tools/train_tokenizer.py                    # writes tools/tokenizers/metaspace-bpe.json
    python tools/train_tokenizer.py --check            # exit 1 unless the committed file is what this makes
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import platform
import sys
import sysconfig
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT = REPO_ROOT / "tools" / "tokenizers" / "metaspace-bpe.json"
EXAMPLES = REPO_ROOT / "examples" / "her_sentences.txt"
VOCAB_SIZE = 8000
SPECIALS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2 as in Llama 2's tokenizer
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]  # ids 3..258: SentencePiece's byte fallback
BOS, EOS = "<s>", "</s>"


def stdlib_docstrings() -> list[str]:
    """Every module, class and function docstring of the standard library's .py files, in path order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if rel[0] in ("site-packages", "test", "idlelib", "lib2to3") or "tests" in rel:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    texts.append(doc)
    return texts


def corpus() -> list[str]:
    lines = [line for doc in stdlib_docstrings() for line in doc.splitlines() if line.strip()]
    return lines + [line for line in EXAMPLES.read_text().splitlines() if line.strip()]


def train(lines: list[str]) -> Tokenizer:
    # Metaspace splits on spaces and marks each word with ▁ (the first one too: prepend_scheme
    # "first"), so no merge crosses a word boundary, as with SentencePiece's default.
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIALS + BYTE_TOKENS,
        min_frequency=2,
        limit_alphabet=200,
        show_progress=False,
    )
    tokenizer.train_from_iterator(lines, trainer=trainer)
    # The byte tokens were reserved as special tokens only to get ids 3..258; make them ordinary
    # vocabulary (as in Llama's file), so a literal "<0x41>" in a sentence is not one token.
    spec = json.loads(tokenizer.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] in SPECIALS]
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    bos_id, eos_id = tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    assert (bos_id, eos_id) == (1, 2), (bos_id, eos_id)
    # Llama 2's decoder: ▁ back to spaces, byte tokens back to UTF-8, the prepended space dropped.
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return tokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--check", action="store_true", help="exit 1 unless --out is what this script makes")
    args = p.parse_args()
    lines = corpus()
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    print(f"corpus: {len(lines)} lines, {sum(map(len, lines))} characters, sha256 {digest[:16]}… (Python {platform.python_version()})")
    text = train(lines).to_str() + "\n"
    if args.check:
        if not args.out.exists() or args.out.read_text() != text:
            sys.exit(f"{args.out} is not what {Path(__file__).name} makes with Python {platform.python_version()}")
        print(f"{args.out.name} is up to date")
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(text.encode())} bytes)")


if __name__ == "__main__":
    main()
