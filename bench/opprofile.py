#!/usr/bin/env python3
"""Where the time goes (`make bench-profile`): ONNX Runtime's per-operator profile of one Analyze as the
server runs it, and the notebook's PyTorch profile beside it, summarised by operator type.

One model directory (bench/cache/<model>, from make bench) per run:

  1. `rotations serve` answers one Analyze of examples/her_sentences.txt; its per-pass debug log gives
     the passes it ran (rows x padded width, after cutting the batch by length);
  2. the same passes, same shapes, run in ONNX Runtime (Python, the same version and settings as the
     server: all graph optimizations, pre-packed weights, the same threads) with its profiler on; the
     outputs are copied out as the server copies them. Summed by operator type;
  3. each pass's achieved GFLOP/s (its matrix work on the padded tokens it computes) against ONNX
     Runtime's own MatMul rate at that pass's four weight shapes (qkv, attention out, MLP up, MLP down);
  4. the notebook's pipeline (bench.notebook_pipeline) under torch.profiler, summed by aten operator.

The server and each runtime are alive one after the other, never together (GPT-2 XL is 6 GB a copy).

    .venv-tools/bin/python bench/opprofile.py --model gpt2 --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402 (the harness next to this file)

TOP = 8  # operator types listed per side; the rest summed as "other"


def server_passes(args, model_dir: Path, sentences: list[str]) -> list[tuple[int, int]]:
    """(rows, width) of every forward pass of one Analyze, from the server's own log (after a warm-up)."""
    pb2, pb2_grpc = bench.load_stubs()
    log = args.cache / f"profile-{args.model}-server.log"
    server = bench.Server(args.binary, model_dir, [], log, args.threads)
    try:
        stub = pb2_grpc.RotationServiceStub(server.channel)
        request = pb2.RotationRequest(sentences=sentences, target_text=bench.TARGET_TEXT)
        stub.Analyze(request, timeout=3600)
        before = len(bench.forward_passes(log))
        stub.Analyze(request, timeout=3600)
        passes = bench.forward_passes(log, before)
    finally:
        server.stop()
    return [(int(p["rows"]), int(p["width"])) for p in passes]


def ort_profile(model_dir: Path, passes, threads: int, runs: int):
    """Per-operator-type time (ms per Analyze, summed over the passes) and each pass's wall time."""
    prefix = Path(tempfile.mkdtemp(prefix="ort-profile-")) / "ort"
    session, feeds, names = session_and_feeds(model_dir, passes, threads, str(prefix))
    for f in feeds:  # warm-up (kernels chosen, buffers allocated): not profiled below
        session.run(names, f)
    walls = [[] for _ in passes]
    for _ in range(runs):
        for i, f in enumerate(feeds):
            t0 = time.perf_counter()
            session.run(names, f)
            walls[i].append(time.perf_counter() - t0)
    path = session.end_profiling()
    events = json.loads(Path(path).read_text())
    by_op = collections.Counter()
    # Node events ("<name>_kernel_time") carry op_name; the first len(passes) runs are the warm-up.
    kernel = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    run_events = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    start_after = run_events[len(passes) - 1]["ts"] + run_events[len(passes) - 1]["dur"] if len(run_events) > len(passes) else 0
    for e in kernel:
        if e["ts"] >= start_after:
            by_op[e["args"]["op_name"]] += e["dur"] / 1e3 / runs
    total_run = sum(e["dur"] for e in run_events[len(passes):]) / 1e3 / runs
    Path(path).unlink(missing_ok=True)
    del session
    return by_op, total_run, [float(np.median(w)) for w in walls]


def session_and_feeds(model_dir: Path, passes, threads: int, profile_prefix: str | None = None):
    """An ONNX Runtime session as the server opens it (all optimizations, pre-packing, the threads) and
    random token ids of each pass's shape (cost does not depend on the ids)."""
    import onnxruntime as ort

    meta = json.loads((model_dir / "model.json").read_text())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    session = ort.InferenceSession(str(model_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = []
    for rows, width in passes:
        f = {
            "input_ids": rng.integers(0, meta["vocab_size"], (rows, width), dtype=np.int64),
            "attention_mask": np.ones((rows, width), dtype=np.int64),
        }
        if "position_ids" in meta["inputs"]:
            f["position_ids"] = np.tile(np.arange(width, dtype=np.int64), (rows, 1))
        feeds.append(f)
    return session, feeds, [n for n in meta["outputs"] if n.startswith("hidden_state_")]


def alternated(dirs: dict, passes, threads: int, runs: int) -> dict:
    """Seconds per Analyze's passes for each model directory, both sessions alive, runs alternated A B B A."""
    sessions = {k: session_and_feeds(d, passes, threads) for k, d in dirs.items()}
    for session, feeds, names in sessions.values():
        for f in feeds:
            session.run(names, f)
    times = {k: [] for k in dirs}
    order = list(dirs)
    for i in range(runs):
        for k in order if i % 2 == 0 else order[::-1]:
            session, feeds, names = sessions[k]
            t0 = time.perf_counter()
            for f in feeds:
                session.run(names, f)
            times[k].append(time.perf_counter() - t0)
    del sessions
    return {k: bench.summary(v) for k, v in times.items()}


def pass_limits(cfg, passes, threads: int) -> list[float]:
    """ONNX Runtime MatMul GFLOP/s over each pass's four weight products (qkv, out, MLP up, MLP down),
    combined as the pass spends its time: total work / sum of (work / rate) per shape."""
    d, inner = cfg.n_embd, cfg.n_inner or 4 * cfg.n_embd
    cache, limits = {}, []
    for rows, width in passes:
        m = rows * width
        seconds = flop = 0.0
        for k, n in ((d, 3 * d), (d, d), (d, inner), (inner, d)):
            if (m, k, n) not in cache:
                cache[(m, k, n)] = float(np.median(bench.ort_matmul_rate(threads, m, k, n, runs=3)))
            work = 2.0 * m * k * n
            flop += work
            seconds += work / (cache[(m, k, n)] * 1e9)
        limits.append(flop / seconds / 1e9)
    return limits


def torch_profile(model_dir: Path, sentences: list[str], threads: int, runs: int):
    """The notebook's pipeline under torch.profiler: ms per call by aten operator (self CPU time) and wall."""
    import torch
    import transformers
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir / "hf", dtype=torch.float32).eval()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"), eos_token="<|endoftext|>")
    tok.pad_token = tok.eos_token
    target = tok.encode(bench.TARGET_TEXT)[0]
    bench.notebook_pipeline(model, tok, sentences, target)  # warm-up
    walls = []
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            t0 = time.perf_counter()
            bench.notebook_pipeline(model, tok, sentences, target)
            walls.append(time.perf_counter() - t0)
    by_op = collections.Counter()
    for avg in prof.key_averages():
        by_op[avg.key] += avg.self_cpu_time_total / 1e3 / runs
    del model
    return by_op, float(np.median(walls))


def table(by_op: collections.Counter, total_ms: float) -> list[str]:
    rows, shown = [], 0.0
    for op, ms in by_op.most_common(TOP):
        rows.append(f"| {op} | {ms:.0f} | {ms / total_ms:.1%} |")
        shown += ms
    rest = sum(by_op.values()) - shown
    rows.append(f"| other ({max(0, len(by_op) - TOP)} types) | {rest:.0f} | {rest / total_ms:.1%} |")
    return rows


def render(r: dict) -> str:
    m = r["machine"]
    lines = [
        f"{r['model']}: measured {r['date']} on {m['cpu']}, {m['cores']} cores, {r['threads']} threads; SIMD flags: "
        f"{' '.join(m['simd_flags'])}; load average before / after: {r['load_before']} / {r['load_after']}. "
        f"Command: `{r['command']}`.",
        "",
        f"`Analyze` ran {len(r['passes'])} passes (rows × padded width: "
        + ", ".join(f"{a}×{b}" for a, b in r["passes"])
        + f"); ONNX Runtime ran them in {r['ort_wall_ms']:.0f} ms (median per pass, summed; profiler on), "
        f"the notebook's pipeline took {r['torch_wall_ms']:.0f} ms (profiler on).",
        "",
        "| ONNX Runtime operator (server's passes) | ms per `Analyze` | share of kernel time |",
        "|---|---|---|",
        *table(collections.Counter(r["ort_by_op"]), sum(r["ort_by_op"].values())),
        "",
        "| PyTorch operator (notebook, self time) | ms per call | share |",
        "|---|---|---|",
        *table(collections.Counter(r["torch_by_op"]), sum(r["torch_by_op"].values())),
        "",
        "| pass (rows × width) | matrix work, GFLOP | wall, ms | achieved GFLOP/s | MatMul rate at its shapes | share |",
        "|---|---|---|---|---|---|",
    ]
    for (rows, width), work, wall, limit in zip(r["passes"], r["pass_gflop"], r["pass_wall_s"], r["pass_limit_gflops"]):
        lines.append(f"| {rows} × {width} | {work:.1f} | {wall * 1e3:.0f} | {work / wall:.0f} | {limit:.0f} | **{work / wall / limit:.0%}** |")
    for name, s in r.get("compare", {}).items():
        lines.append(f"\n{name}: the same passes, ONNX Runtime alone, sessions alternated: {s['median']:.3f} s per `Analyze` "
                     f"({s['min']:.3f}–{s['max']:.3f}, {len(s['all'])} runs)." if name == "float32" else
                     f"{name}: {s['median']:.3f} s ({s['min']:.3f}–{s['max']:.3f}); float32 / {name} = "
                     f"**{r['compare']['float32']['median'] / s['median']:.2f}×**.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2", help="model directory under --cache")
    p.add_argument("--cache", type=Path, default=bench.REPO / "bench/cache")
    p.add_argument("--binary", type=Path, default=bench.REPO / "target/release/rotations")
    p.add_argument("--sentences", type=Path, default=bench.REPO / "examples/her_sentences.txt")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--runs", type=int, default=3, help="profiled Analyze-equivalents per side")
    p.add_argument("--no-notebook", action="store_true")
    p.add_argument("--compare", help="also time the passes on <model>-COMPARE/ (e.g. int8) alternated with float32")
    p.add_argument("--write", type=Path, help="put the summary into this Markdown file between markers")
    args = p.parse_args()

    import onnxruntime  # noqa: F401 (its version is recorded)
    import transformers

    model_dir = args.cache / args.model
    sentences = [s for s in args.sentences.read_text().splitlines() if s.strip()]
    report = {
        "model": args.model,
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "command": os.environ.get("BENCH_COMMAND", f"bench/opprofile.py --model {args.model}"),
        "machine": bench.machine(),
        "threads": args.threads,
        "load_before": bench.load_average(),
    }
    passes = server_passes(args, model_dir, sentences)
    ort_by_op, _, walls = ort_profile(model_dir, passes, args.threads, args.runs)
    cfg = transformers.GPT2Config.from_pretrained(model_dir / "hf")
    report.update(
        passes=passes,
        ort_by_op=dict(ort_by_op),
        ort_wall_ms=sum(walls) * 1e3,
        pass_wall_s=walls,
        pass_gflop=[bench.forward_flop(cfg, [w] * r) / 1e9 for r, w in passes],
        pass_limit_gflops=pass_limits(cfg, passes, args.threads),
    )
    if args.compare:
        other = args.cache / f"{args.model}-{args.compare}"
        report["compare"] = alternated({"float32": model_dir, args.compare: other}, passes, args.threads, max(3, args.runs))
        c = report["compare"]
        print(f"[{args.model}] passes alternated: float32 {c['float32']['median']:.3f} s, {args.compare} "
              f"{c[args.compare]['median']:.3f} s", flush=True)
    torch_by_op, torch_wall = ({}, float("nan")) if args.no_notebook else torch_profile(model_dir, sentences, args.threads, args.runs)
    report.update(torch_by_op=dict(torch_by_op), torch_wall_ms=torch_wall * 1e3, load_after=bench.load_average())
    (args.cache / f"profile-{args.model}.json").write_text(json.dumps(report, indent=2) + "\n")
    block = render(report)
    print("\n" + block)
    if args.write:
        bench.write_markdown(args.write, block, f"<!-- profile-{args.model}:begin -->", f"<!-- profile-{args.model}:end -->")
        print(f"\nwrote {args.write}")


if __name__ == "__main__":
    main()
