#!/usr/bin/env python3
"""Train a small GPT-2 here, on CPU, for a few minutes on the repository's own text (`make bench-precision`).

Reduced precision fails on trained models' outlier features (a few hidden dimensions far larger than
the rest), which random weights do not have; this gives the precision benchmark a trained model
without downloading one. The text is every tracked Markdown, Rust and Python file of the checkout,
tokenized with GPT-2's tokenizer (the bundled model's copy); the model is GPT-2's architecture at a
small shape, trained with AdamW on 128-token windows. Writes a Hugging Face checkpoint that
tools/export_model.py exports with --model.

    .venv-tools/bin/python bench/train_small.py --out bench/cache/gpt2-trained-hf --minutes 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer

REPO = Path(__file__).resolve().parent.parent
TOKENIZER = REPO / "models" / "gpt2-tiny-random" / "tokenizer.json"


def corpus_ids(tok: Tokenizer) -> torch.Tensor:
    files = subprocess.run(["git", "ls-files", "*.md", "*.rs", "*.py", "*.txt"], cwd=REPO, capture_output=True, text=True, check=True)
    text = "\n\n".join((REPO / f).read_text(errors="replace") for f in sorted(files.stdout.split()) if (REPO / f).is_file())
    return torch.tensor(tok.encode(text).ids, dtype=torch.long)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--minutes", type=float, default=5.0, help="training time (wall clock)")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", type=Path, help="continue training this checkpoint (an earlier --out)")
    args = p.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    tok = Tokenizer.from_file(str(TOKENIZER))
    ids = corpus_ids(tok)
    cfg = transformers.GPT2Config(
        vocab_size=tok.get_vocab_size(), n_positions=1024, n_embd=args.hidden, n_layer=args.layers, n_head=args.heads
    )
    model = (transformers.GPT2LMHeadModel.from_pretrained(args.init) if args.init else transformers.GPT2LMHeadModel(cfg)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    print(f"corpus {len(ids)} tokens; model {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters", flush=True)

    start, step, losses = time.monotonic(), 0, []
    while time.monotonic() - start < args.minutes * 60:
        offsets = torch.randint(0, len(ids) - args.context - 1, (args.batch,))
        batch = torch.stack([ids[o : o + args.context] for o in offsets])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % 20 == 0:
            print(f"step {step} ({time.monotonic() - start:.0f} s): loss {sum(losses[-20:]) / 20:.3f}", flush=True)

    model.eval().save_pretrained(args.out)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER), eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    fast.save_pretrained(args.out)
    earlier = json.loads((args.init / "training.json").read_text()) if args.init else {}
    before = (earlier.get("total_steps", earlier.get("steps", 0)), earlier.get("total_minutes", earlier.get("minutes", 0)))
    record = {
        "steps": step,
        "total_steps": step + before[0],
        "total_minutes": args.minutes + before[1],
        "corpus_tokens": len(ids),
        "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
    }
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    # With --init the shape is the checkpoint's, whatever the shape flags say.
    settings.update(layers=model.config.n_layer, hidden=model.config.n_embd, heads=model.config.n_head)
    (args.out / "training.json").write_text(json.dumps({**settings, **record}, indent=2) + "\n")
    print(f"wrote {args.out}: {record}", flush=True)


if __name__ == "__main__":
    main()
