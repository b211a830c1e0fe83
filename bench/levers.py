#!/usr/bin/env python3
"""Measure the performance levers of BENCHMARKS.md on the service alone (no notebook).

Each lever runs in its own `rotations serve` beside a baseline server with the defaults; the two
are alive together and their Analyze calls alternate, so drift and other load hit both alike.
Reported per lever: its median against the baseline's median of the same pair, start to SERVING,
peak memory (VmHWM), forward passes per Analyze, and the share of each pass spent copying hidden
states out of ONNX Runtime's outputs (from the server's debug log).

    .venv-tools/bin/python bench/levers.py --model gpt2 --runs 5
    .venv-tools/bin/python bench/levers.py --model gpt2-xl --runs 3 --only pass-split-0,threads-1
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402 (the harness next to this file)

# label -> (model directory suffix, extra `serve` arguments)
LEVERS = {
    "pass-split-0": ("", ["--pass-cost-tokens", "0"]),
    "pass-split-48": ("", ["--pass-cost-tokens", "48"]),
    "pass-split-off": ("", ["--pass-cost-tokens", "off"]),
    "batch-sentences-27": ("", ["--max-batch-sentences", "27"]),
    "batch-sentences-8": ("", ["--max-batch-sentences", "8"]),
    "threads-1": ("", ["--threads", "1"]),
    "spinning-off": ("", ["--ort-spinning", "false"]),
    "graph-opt-extended": ("", ["--graph-optimization", "extended"]),
    "graph-opt-basic": ("", ["--graph-optimization", "basic"]),
    "graph-opt-disable": ("", ["--graph-optimization", "disable"]),
    "prepack-off": ("", ["--prepack-weights", "false"]),
    "saved-optimized-graph": ("-saved", ["--graph-optimization", "disable"]),
    "transformer-optimizer": ("-opt", []),
}
# Levers of the start only: timed from a cold page cache, one server at a time, alternated.
START_LEVERS = {
    "prefetch-off": ("", ["--prefetch-weights", "false"]),
    "prepack-off": ("", ["--prepack-weights", "false"]),
    "saved-optimized-graph": ("-saved", ["--graph-optimization", "disable"]),
}


def cold_starts(args, label: str, suffix: str, extra: list[str], rounds: int = 4) -> str:
    dirs = {"baseline": args.cache / args.model, label: args.cache / f"{args.model}{suffix}"}
    times = {"baseline": [], label: []}
    for i in range(rounds):
        for name in (["baseline", label] if i % 2 == 0 else [label, "baseline"]):
            bench.evict(dirs[name])
            log = args.cache / f"levers-{args.model}-{name}.log"
            server = bench.Server(args.binary, dirs[name], extra if name == label else [], log, args.threads)
            times[name].append(server.start_to_serving)
            server.stop()
    fmt = lambda v: ", ".join(f"{t:.1f}" for t in v)  # noqa: E731
    line = f"| {label} | start → SERVING, s: {fmt(times[label])} | {fmt(times['baseline'])} |"
    print(line, flush=True)
    return line


def saved_optimized(args) -> None:
    """<model>-saved/: ONNX Runtime's own optimized graph, written once by a server started with
    --save-optimized-model; the lever loads it with optimization off (the fusions are already in it)."""
    base, saved = args.cache / args.model, args.cache / f"{args.model}-saved"
    if (saved / "model.json").exists():
        return
    saved.mkdir(exist_ok=True)
    log = args.cache / f"levers-{args.model}-save.log"
    bench.Server(args.binary, base, ["--save-optimized-model", str(saved / "model.onnx")], log, args.threads).stop()
    for f in ("tokenizer.json", "model.json"):  # model.json last: it marks the directory complete
        shutil.copy(base / f, saved / f)


def memory_gib(server) -> float:
    return server.memory()["VmHWM"] / 2**30


def passes(log: Path) -> tuple[int, float | None]:
    """ONNX Runtime passes in the server's log, and the share of their time spent copying states."""
    found = bench.forward_passes(log)
    run, copy = sum(p["run_ms"] for p in found), sum(p["copy_ms"] for p in found)
    return len(found), (copy / (run + copy) if run + copy else None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2")
    p.add_argument("--cache", type=Path, default=bench.REPO / "bench/cache")
    p.add_argument("--binary", type=Path, default=bench.REPO / "target/release/rotations")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", help="comma-separated lever labels (default: all whose model exists)")
    p.add_argument("--write", type=Path, help="put the table into this Markdown file between its markers")
    args = p.parse_args()
    args.command = os.environ.get("BENCH_COMMAND", shlex.join(["bench/levers.py", *sys.argv[1:]]))
    load_before = bench.load_average()

    pb2, pb2_grpc = bench.load_stubs()
    sentences = [s for s in (bench.REPO / "examples/her_sentences.txt").read_text().splitlines() if s.strip()]
    request = pb2.RotationRequest(sentences=sentences, target_text=bench.TARGET_TEXT)
    labels = args.only.split(",") if args.only else [*LEVERS, *(f"{k} (start)" for k in START_LEVERS)]

    rows, start_rows = [], []
    for label in labels:
        start_only = label.endswith(" (start)")
        suffix, extra = START_LEVERS[label.removesuffix(" (start)")] if start_only else LEVERS[label]
        if suffix == "-saved":
            saved_optimized(args)
        if start_only:
            start_rows.append(cold_starts(args, label, suffix, extra))
            continue
        model_dir = args.cache / f"{args.model}{suffix}"
        if not (model_dir / "model.json").exists():
            print(f"[{label}] skipped: {model_dir} has no model.json", flush=True)
            continue
        # One at a time with its own baseline: two GPT-2 XL servers fit in memory, more may not.
        servers = {}
        for name, (d, x) in (("baseline", (args.cache / args.model, [])), (label, (model_dir, extra))):
            log = args.cache / f"levers-{args.model}-{name}.log"
            servers[name] = bench.Server(args.binary, d, x, log, args.threads)
        stubs = {n: pb2_grpc.RotationServiceStub(s.channel) for n, s in servers.items()}
        times = {n: [] for n in servers}
        for n in servers:  # warm-up
            stubs[n].Analyze(request, timeout=3600)
        for i in range(args.runs):
            for n in list(servers)[:: 1 if i % 2 == 0 else -1]:
                time.sleep(0.5)
                t0 = time.perf_counter()
                stubs[n].Analyze(request, timeout=3600)
                times[n].append(time.perf_counter() - t0)
        base, lever = statistics.median(times["baseline"]), statistics.median(times[label])
        s = servers[label]
        hwm = {n: memory_gib(srv) for n, srv in servers.items()}
        for srv in servers.values():
            srv.stop()  # flushes the logs
        ort_passes, copy = passes(s.log)
        row = {
            "lever": label,
            "baseline_s": base,
            "lever_s": lever,
            "lever_min_max": (min(times[label]), max(times[label])),
            # Under intermittent load from other jobs, the fastest run is the steadier estimate.
            "min_change": min(times[label]) / min(times["baseline"]) - 1,
            "baseline_min": min(times["baseline"]),
            "change": lever / base - 1,
            "start_s": s.start_to_serving,
            "base_start_s": servers["baseline"].start_to_serving,
            "vmhwm_gib": hwm[label],
            "base_vmhwm_gib": hwm["baseline"],
            # Minus the server's own start-up warm-up pass; per Analyze (warm-up call included).
            "passes": (ort_passes - 1) / (args.runs + 1),
            "copy_share": copy,
        }
        rows.append(row)
        print(
            f"[{label}] {lever:.3f} s vs baseline {base:.3f} s ({row['change']:+.1%}); start {row['start_s']:.1f} s "
            f"(baseline {row['base_start_s']:.1f}); VmHWM {row['vmhwm_gib']:.2f} GiB (baseline "
            f"{row['base_vmhwm_gib']:.2f}); {row['passes']:.1f} passes; copy {row['copy_share'] or 0:.1%} of a pass",
            flush=True,
        )

    m = bench.machine()
    out = [
        f"{args.model}: measured {time.strftime('%Y-%m-%d %H:%M %Z')} on {m['cpu']}, {m['cores']} cores, "
        f"{args.threads} threads; {args.runs} alternated runs per pair after a warm-up; load average before / "
        f"after: {load_before} / {bench.load_average()}. Command: `{args.command}`.",
        "",
        "| lever | `Analyze`, s: median (min–max) | baseline of the pair: median, min | change: medians, minima "
        "| start → SERVING, started second (baseline, first) | VmHWM (baseline) | passes per `Analyze` |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["lever_min_max"]
        out.append(
            f"| {r['lever']} | {r['lever_s']:.3f} ({lo:.3f}–{hi:.3f}) | {r['baseline_s']:.3f}, {r['baseline_min']:.3f} "
            f"| {r['change']:+.1%}, {r['min_change']:+.1%} "
            f"| {r['start_s']:.1f} s ({r['base_start_s']:.1f}) | {r['vmhwm_gib']:.2f} GiB ({r['base_vmhwm_gib']:.2f}) "
            f"| {r['passes']:.1f} |"
        )
    if start_rows:
        out += [
            "",
            "Start from a cold page cache (the weights read from disk), one server at a time, alternated:",
            "",
            "| lever | with the lever | without |",
            "|---|---|---|",
            *start_rows,
        ]
    block = "\n".join(out)
    print("\n" + block)
    if args.write:
        tag = f"levers-{args.model}"
        bench.write_markdown(args.write, block, f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->")
        print(f"\nwrote {args.write}")


if __name__ == "__main__":
    main()
