#!/usr/bin/env python3
"""Generate tests/golden/shuffle_draws.json: the shuffled control's draws, computed independently
of the Rust code (and of any RNG library) for `src/analysis/shuffle.rs`'s pinned-stream test.

What it reimplements, from the specifications only:
* the ChaCha20 block function (RFC 8439's quarter round, 20 rounds), laid out as rand_chacha
  uses it: key = the seed's 8 little-endian bytes followed by 24 zero bytes, a 64-bit block
  counter in words 12-13 and the stream number (the sentence index) in words 14-15; output words
  consumed in order, `next_u64` = two consecutive words, low word first;
* the unbiased sampler `below(n)`: draw `x = next_u64()` until `x >= 2**64 mod n`, return `x % n`;
* the draw rule per layer: `layer_v = 1 + below(L)`, `position_v = below(T)`, then
  `(layer_u = 1 + below(L), position_u = below(T))`, redrawn while it equals `(layer_v,
  position_v)` (a vector compared with itself would give an angle of exactly 0).

Pure Python, no dependencies. Usage (from the repository root):
    python3 tools/make_shuffle_golden.py            # writes the file
    python3 tools/make_shuffle_golden.py --check    # verifies it is up to date
"""

import argparse
import json
import struct
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "golden" / "shuffle_draws.json"
DEFAULT_SHUFFLE_SEED = 20250901
MASK32 = 0xFFFFFFFF


def rotl(x, n):
    return ((x << n) | (x >> (32 - n))) & MASK32


def quarter_round(s, a, b, c, d):
    s[a] = (s[a] + s[b]) & MASK32
    s[d] = rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & MASK32
    s[b] = rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & MASK32
    s[d] = rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & MASK32
    s[b] = rotl(s[b] ^ s[c], 7)


def chacha20_block(key_words, counter, stream):
    state = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574, *key_words]
    state += [counter & MASK32, counter >> 32, stream & MASK32, stream >> 32]
    working = list(state)
    for _ in range(10):
        quarter_round(working, 0, 4, 8, 12)
        quarter_round(working, 1, 5, 9, 13)
        quarter_round(working, 2, 6, 10, 14)
        quarter_round(working, 3, 7, 11, 15)
        quarter_round(working, 0, 5, 10, 15)
        quarter_round(working, 1, 6, 11, 12)
        quarter_round(working, 2, 7, 8, 13)
        quarter_round(working, 3, 4, 9, 14)
    return [(w + s) & MASK32 for w, s in zip(working, state)]


class ChaCha20:
    def __init__(self, seed, stream):
        key = struct.pack("<Q", seed) + bytes(24)
        self.key_words = list(struct.unpack("<8I", key))
        self.stream = stream
        self.counter = 0
        self.words = []

    def next_u32(self):
        if not self.words:
            self.words = chacha20_block(self.key_words, self.counter, self.stream)
            self.counter += 1
        return self.words.pop(0)

    def next_u64(self):
        low = self.next_u32()
        return low | (self.next_u32() << 32)

    def below(self, n):
        reject_below = (1 << 64) % n
        while True:
            x = self.next_u64()
            if x >= reject_below:
                return x % n


def draws_for_sentence(seed, sentence, layers, tokens):
    """Returns (draws, how many u-pairs were redrawn because they equalled the v-pair)."""
    rng = ChaCha20(seed, sentence)
    draws, redrawn = [], 0
    for _ in range(layers):
        v = (1 + rng.below(layers), rng.below(tokens))
        while True:
            u = (1 + rng.below(layers), rng.below(tokens))
            if u != v:
                break
            redrawn += 1
        draws.append([v[0], v[1], u[0], u[1]])
    return draws, redrawn


def self_test():
    # RFC 8439 section 2.3.2's test vector has a 96-bit nonce layout; check the block function on
    # the all-zero key, counter 0, stream 0 instead: the well-known first keystream words.
    block = chacha20_block([0] * 8, 0, 0)
    assert block[:4] == [0xADE0B876, 0x903DF1A0, 0xE56A5D40, 0x28BD8653], [hex(w) for w in block[:4]]


CASES = [
    # (seed, sentence, layers, tokens): the notebook's shape, small ones where self-pairs are common.
    (DEFAULT_SHUFFLE_SEED, 0, 4, 7),
    (DEFAULT_SHUFFLE_SEED, 5, 48, 9),
    (DEFAULT_SHUFFLE_SEED, 3, 2, 2),
    (DEFAULT_SHUFFLE_SEED, 11, 3, 2),
    (42, 1, 12, 5),
    (2**63 + 7, 2**32 + 1, 48, 20),
]


# (seed, sentence, occurrence, layers, tokens): rows of every occurrence (occurrence="all"), on
# ChaCha20 stream sentence + (occurrence - 1) * 2**32.
ROW_CASES = [
    (DEFAULT_SHUFFLE_SEED, 7, 2, 6, 11),
    (DEFAULT_SHUFFLE_SEED, 7, 3, 48, 9),
    (42, 2**32 - 1, 2, 12, 5),
]


def build():
    rows = []
    for seed, sentence, occurrence, layers, tokens in ROW_CASES:
        draws, _ = draws_for_sentence(seed, sentence + (occurrence - 1) * 2**32, layers, tokens)
        rows.append({"seed": seed, "sentence": sentence, "occurrence": occurrence, "layers": layers,
                     "tokens": tokens, "draws": draws})
    cases = []
    for seed, sentence, layers, tokens in CASES:
        draws, redrawn = draws_for_sentence(seed, sentence, layers, tokens)
        cases.append(
            {"seed": seed, "sentence": sentence, "layers": layers, "tokens": tokens, "redrawn": redrawn, "draws": draws}
        )
    assert sum(c["redrawn"] for c in cases) > 0, "the cases should exercise the redraw"
    return {"generator": "tools/make_shuffle_golden.py", "cases": cases, "row_cases": rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    args = parser.parse_args()
    self_test()
    text = json.dumps(build(), indent=1) + "\n"
    if args.check:
        if not OUT.is_file() or json.loads(OUT.read_text()) != json.loads(text):
            sys.exit(f"{OUT} is out of date; rerun tools/make_shuffle_golden.py")
        print(f"{OUT} is up to date")
        return
    OUT.write_text(text)
    for case in json.loads(text)["cases"]:
        print(f"seed {case['seed']} sentence {case['sentence']}: {case['layers']} layers, {case['tokens']} tokens, "
              f"{case['redrawn']} redrawn")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
