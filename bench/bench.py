#!/usr/bin/env python3
"""The notebook's PyTorch pipeline against the service's Analyze, side by side (`make bench`).

For each model directory (made by tools/export_model.py --random-init; speed does not depend on
the weights) this script, in one session on one machine:

  * starts `rotations serve` and times process start -> health SERVING;
  * loads the same weights (<model>/hf) into PyTorch as the notebook does (AutoModelForCausalLM);
  * alternates the notebook's pipeline (tokenize with padding, forward with all hidden states,
    angles, ttest_rel; timed in-process) with Analyze (timed at the gRPC client), after a warm-up
    of each, so drift and other load hit both;
  * measures the machine's float32 matrix-product rate before and after (torch.matmul 2048^3 and
    ONNX Runtime's MatMul at 2048^3 and at the model's widest product, same thread count; the best
    is the limit), and counts the work the forward pass needs on the real (unpadded) tokens;
  * reads the server's peak resident memory (VmHWM) after the runs.

It prints one table and, with --write, puts it into BENCHMARKS.md between the generated-section
markers (the hand-written parts of that file are kept).

    .venv-tools/bin/python bench/bench.py --models gpt2,gpt2-xl --write BENCHMARKS.md
    .venv-tools/bin/python bench/bench.py --models gpt2 --no-notebook --server-arg=--threads=1   # a lever
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import platform
import re
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.stats as stats
import torch
import transformers

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- make-bench:begin -->", "<!-- make-bench:end -->"
TARGET_TEXT = " her"


# ---------------------------------------------------------------------------------------------
# The notebook, as written (plots left out): only the model and tokenizer are passed in.
# ---------------------------------------------------------------------------------------------
def notebook_pipeline(model, tokenizer, sentences, target_token, device="cpu"):
    tokens = tokenizer(sentences, padding=True, return_tensors="pt").to(device)  # .to: the GPU variant
    with torch.no_grad():
        outputs = model(**tokens, output_hidden_states=True)

    n_hiddens = len(outputs.hidden_states)
    seq_len = outputs.hidden_states[3].shape[1]
    angles = np.zeros((n_hiddens - 1, len(sentences), 3))
    for senti in range(len(sentences)):
        targidx = tokens["input_ids"][senti].tolist().index(target_token)
        for layeri in range(1, n_hiddens):
            v = outputs.hidden_states[layeri - 1][senti, targidx, :].detach().squeeze()
            u = outputs.hidden_states[layeri][senti, targidx, :].detach().squeeze()
            angles[layeri - 1, senti, 0] = torch.acos(torch.dot(v, u) / (torch.linalg.norm(v) * torch.linalg.norm(u)))

            v = outputs.hidden_states[layeri - 1][senti, targidx - 1, :].detach().squeeze()
            u = outputs.hidden_states[layeri][senti, targidx - 1, :].detach().squeeze()
            angles[layeri - 1, senti, 1] = torch.acos(torch.dot(v, u) / (torch.linalg.norm(v) * torch.linalg.norm(u)))

            v = outputs.hidden_states[torch.randint(1, n_hiddens, (1,))][senti, torch.randint(seq_len, (1,)), :]
            u = outputs.hidden_states[torch.randint(1, n_hiddens, (1,))][senti, torch.randint(seq_len, (1,)), :]
            v, u = v.detach().squeeze(), u.detach().squeeze()
            angles[layeri - 1, senti, 2] = torch.acos(torch.dot(v, u) / (torch.linalg.norm(v) * torch.linalg.norm(u)))
    angles = angles * 180 / np.pi

    tres = stats.ttest_rel(angles[:, :, 0].T, angles[:, :, 1].T)
    t = tres.statistic
    issig = tres.pvalue < 0.05 / n_hiddens
    return angles, t, issig


# ---------------------------------------------------------------------------------------------
# gRPC client: stubs generated from proto/ at run time (nothing generated is checked in).
# ---------------------------------------------------------------------------------------------
_STUBS = None


def load_stubs_cached():
    global _STUBS
    if _STUBS is None:
        _STUBS = load_stubs()
    return _STUBS


def load_stubs():
    from grpc_tools import protoc

    out = Path(tempfile.mkdtemp(prefix="rotations-stubs-"))
    proto = "rotations/v1/rotations.proto"
    args = ["protoc", f"-I{REPO / 'proto'}", f"--python_out={out}", f"--grpc_python_out={out}", proto]
    if protoc.main(args) != 0:
        sys.exit("grpc_tools.protoc failed on proto/rotations/v1/rotations.proto")
    sys.path.insert(0, str(out))
    from rotations.v1 import rotations_pb2, rotations_pb2_grpc  # noqa: E402 (generated above)

    return rotations_pb2, rotations_pb2_grpc


def evict(model_dir: Path) -> None:
    """Drop the model's files from the page cache (only these files: other jobs keep theirs), so the
    next start reads them from disk: a cold start, as after a reboot."""
    for f in (model_dir / "model.onnx", model_dir / "model.onnx.data"):
        if f.exists():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`rotations serve` as a child process; times start -> SERVING."""

    live: list[subprocess.Popen] = []  # stopped at exit, whatever ended the run

    def __init__(self, binary: Path, model_dir: Path, extra: list[str], log: Path, threads: int, env: dict | None = None):
        import grpc

        self.port = free_port()
        cmd = [str(binary), "serve", "--model-dir", str(model_dir), "--host", "127.0.0.1", "--port", str(self.port)]
        # JSON logs: bench/levers.py reads the per-pass debug lines from them.
        cmd += ["--log-format", "json"]
        cmd += ([] if "--threads" in extra else ["--threads", str(threads)]) + extra
        self.cmd = cmd
        # The per-pass debug lines (rows, width, run and copy times) are what forward_passes() reads.
        env = {**os.environ, "RUST_LOG": "info,rotations::model::onnx=debug", **(env or {})}
        env.setdefault("ORT_DYLIB_PATH", str(REPO / ".ort/lib/libonnxruntime.so"))
        self.log = log
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=REPO)
        Server.live.append(self.proc)
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{self.port}", options=[("grpc.max_receive_message_length", 256 * 2**20)]
        )
        # grpc.health.v1.Health/Check with an empty request (service ""); the reply is
        # HealthCheckResponse{status: SERVING=1}, i.e. the two bytes 08 01: no extra package needed.
        check = self.channel.unary_unary("/grpc.health.v1.Health/Check", lambda b: b, lambda b: b)
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"server exited with {self.proc.returncode}; log:\n{log.read_text()[-4000:]}")
            try:
                if check(b"", timeout=1.0) == b"\x08\x01":
                    break
            except grpc.RpcError:
                pass
            time.sleep(0.02)
        self.start_to_serving = time.perf_counter() - t0

    def memory(self) -> dict[str, int]:
        """VmHWM, VmRSS, RssAnon, RssFile in bytes, from /proc/PID/status."""
        out = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
        return out

    def stop(self):
        self.channel.close()
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


atexit.register(lambda: [stop_process(p) for p in Server.live])


# ---------------------------------------------------------------------------------------------
# The machine's limit and the work the forward pass needs.
# ---------------------------------------------------------------------------------------------
def timed_rate(flop: float, product, sync=lambda: None, runs: int = 10, min_seconds: float = 0.2) -> list[float]:
    """GFLOP/s of `product` (one call = `flop` floating-point operations), one value per run; a run
    repeats the call for at least `min_seconds`, so thread wake-up is amortized as in a forward pass."""
    for _ in range(2):
        product()
    sync()
    t0 = time.perf_counter()
    product()
    sync()
    reps = max(1, int(min_seconds / max(1e-6, time.perf_counter() - t0)))
    rates = []
    for _ in range(runs):
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            product()
        sync()
        rates.append(flop * reps / (time.perf_counter() - t0) / 1e9)
    return rates


def matmul_rate(device: str = "cpu", dtype=torch.float32, runs: int = 10) -> list[float]:
    """GFLOP/s of torch.matmul n x n x n (2048 on CPU, 8192 on a GPU)."""
    n = 2048 if device == "cpu" else 8192
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return timed_rate(2 * n**3, lambda: torch.matmul(a, b), sync, runs)


def ort_matmul_rate(threads: int, m: int = 2048, k: int = 2048, n: int = 2048, runs: int = 10) -> list[float]:
    """The product [m, k] x [k, n] in ONNX Runtime's CPU kernels (MLAS), which the service's forward
    pass uses, with the right-hand side a constant as a model's weights are (so ORT pre-packs it,
    as it does the model's). At a model's own shapes this is the rate its dense layers can reach."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "B")
    a = helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])
    c = helper.make_tensor_value_info("C", TensorProto.FLOAT, [m, n])
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "mm", [a], [c], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {"A": rng.standard_normal((m, k), dtype=np.float32)}
    return timed_rate(2 * m * k * n, lambda: session.run(None, feeds), runs=runs)


def forward_flop(cfg, lengths: list[int]) -> float:
    """Multiply-adds x 2 of GPT-2's transformer on unpadded sentences (what the analysis needs).

    Dense layers: 2 x weight-matrix parameters x tokens (per block: qkv 3d^2, out d^2, MLP 8d^2).
    Attention: per block and sentence, scores QK^T and the value product, 2 x L^2 x d each.
    The embedding is a lookup; biases, layer norms, softmax and GELU are O(tokens x d) and left out.
    """
    d, layers = cfg.n_embd, cfg.n_layer
    inner = cfg.n_inner or 4 * d
    dense = layers * (4 * d * d + 2 * d * inner)
    tokens = sum(lengths)
    return 2.0 * dense * tokens + layers * sum(4.0 * n * n * d for n in lengths)


def weights_bytes(checkpoint: Path) -> int:
    """Bytes of the float32 weights the server loads: the tensors of the saved GPT2Model checkpoint
    (transformer only, as exported), read from the safetensors headers."""
    total = 0
    for f in checkpoint.glob("*.safetensors"):
        with f.open("rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        total += sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")
    return total


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    flags = re.search(r"^flags\s*:\s*(.*)$", cpuinfo, re.M)
    flags = flags.group(1).split() if flags else []
    simd = [f for f in flags if re.match(r"^(avx|avx2|fma|f16c|avx512\w*|amx\w*)$", f)]
    mem = re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text())
    # "AMD EPYC" or "Intel Xeon" alone does not say which generation: family and model numbers do.
    ids = [re.search(rf"^{k}\s*:\s*(\S+)$", cpuinfo, re.M) for k in ("vendor_id", "cpu family", "model")]
    detail = " ".join(f"{k} {m.group(1)}" for k, m in zip(("vendor", "family", "model"), ids) if m)
    return {
        "cpu": (model.group(1) if model else platform.processor()) + (f" ({detail})" if detail else ""),
        "cores": os.cpu_count(),
        "simd_flags": simd,
        "mem_gib": int(mem.group(1)) / 2**20 if mem else None,
        "kernel": platform.release(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


# ---------------------------------------------------------------------------------------------
# One model: server and notebook alternated.
# ---------------------------------------------------------------------------------------------
def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "all": values}


def forward_passes(log: Path, skip: int = 0) -> list[dict]:
    """The server's per-pass debug lines (rows, width, run_ms, copy_ms) from its JSON log, after `skip`."""
    found = []
    for line in log.read_text().splitlines():
        fields = json.loads(line).get("fields", {}) if line.startswith("{") else {}
        if fields.get("message") == "forward pass":
            found.append(fields)
    return found[skip:]


def bench_model(args, name: str, sentences: list[str], pb2, pb2_grpc) -> dict:
    model_dir = args.cache / name
    meta = json.loads((model_dir / "model.json").read_text())
    log = args.cache / f"server-{name}.log"

    # The server first and alone: its start-up time and memory are not disturbed by PyTorch's.
    # Once from a cold page cache (the weights come from disk), then again warm (a restart).
    evict(model_dir)
    cold = Server(args.binary, model_dir, args.server_arg, log, args.threads)
    cold.stop()
    server = Server(args.binary, model_dir, args.server_arg, log, args.threads)
    print(
        f"[{name}] start to SERVING: cold cache {cold.start_to_serving:.2f} s, warm {server.start_to_serving:.2f} s"
        f"  ({shlex.join(server.cmd)})",
        flush=True,
    )
    stub = pb2_grpc.RotationServiceStub(server.channel)
    request = pb2.RotationRequest(sentences=sentences, target_text=TARGET_TEXT)

    def analyze():
        t0 = time.perf_counter()
        reply, call = stub.Analyze.with_call(request, timeout=3600)
        elapsed = time.perf_counter() - t0
        timing = dict(call.initial_metadata()).get("server-timing", "")
        return elapsed, reply, timing

    nb = None
    if not args.no_notebook:
        # The notebook's loading: AutoModelForCausalLM (the tied LM head runs too, as in the notebook).
        nb_model = transformers.AutoModelForCausalLM.from_pretrained(model_dir / "hf", dtype=torch.float32)
        nb_model = nb_model.to(args.device).eval()
        tokenizer = transformers.PreTrainedTokenizerFast(
            tokenizer_file=str(model_dir / "tokenizer.json"), eos_token="<|endoftext|>"
        )
        tokenizer.pad_token = tokenizer.eos_token  # as in the notebook
        target_token = tokenizer.encode(TARGET_TEXT)[0]
        nb = lambda: notebook_pipeline(nb_model, tokenizer, sentences, target_token, args.device)  # noqa: E731

    # Warm-up of both (first runs allocate, pick kernels, fault weights in).
    _, reply, _ = analyze()
    ours_angles = np.asarray(reply.rotations.angles.values, dtype=np.float64).reshape(tuple(reply.rotations.angles.shape))
    agreement = None
    if nb:
        nb_angles, _, _ = nb()
        # Same model, same sentences: target and non-target angles must agree (the notebook's
        # float32 acos is only good to ~0.1 degree on small angles; the shuffled draws differ by design).
        agreement = float(np.abs(ours_angles[:, :, :2] - nb_angles[:, :, :2]).max())
        print(f"[{name}] max |ours - notebook| over target/non-target angles: {agreement:.3g} degrees", flush=True)
    passes_before = len(forward_passes(log))

    ours_t, nb_t, timings = [], [], []
    for i in range(args.runs):
        # Alternate which goes first, and let the other side's spinning threads settle.
        order = ["ours", "nb"] if i % 2 == 0 else ["nb", "ours"]
        for who in order:
            time.sleep(args.pause)
            if who == "ours":
                elapsed, _, timing = analyze()
                ours_t.append(elapsed)
                timings.append(timing)
            elif nb:
                t0 = time.perf_counter()
                nb()
                nb_t.append(time.perf_counter() - t0)
        print(
            f"[{name}] run {i + 1}/{args.runs}: ours {ours_t[-1]:.3f} s"
            + (f", notebook {nb_t[-1]:.3f} s" if nb else "")
            + f"  ({timings[-1]})",
            flush=True,
        )
    memory = server.memory()
    passes = forward_passes(log, passes_before)
    if nb:
        # The notebook's copy goes before a second server loads: never three copies of the weights at once.
        nb = None
        del nb_model
        import gc

        gc.collect()
    precision = precision_pair(args, name, analyze, nb_angles if agreement is not None else None)
    server.stop()

    cfg = transformers.GPT2Config.from_pretrained(model_dir / "hf")
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"))
    lengths = [len(tok.encode(s)) for s in sentences]
    result = {
        "model": name,
        "layers": meta["num_layers"],
        "hidden": meta["hidden_size"],
        "dtype": meta["dtype"],
        "optimized_export": meta.get("optimized", False),
        "server_cmd": shlex.join(server.cmd),
        "start_to_serving_s": server.start_to_serving,
        "cold_start_to_serving_s": cold.start_to_serving,
        "ours_s": summary(ours_t),
        "notebook_s": summary(nb_t) if nb else None,
        "server_timing": timings,
        "forward_passes_per_analyze": len(passes) / args.runs,
        "padded_tokens_ours": sum(p["rows"] * p["width"] for p in passes) / args.runs,
        "copy_share": sum(p["copy_ms"] for p in passes) / max(1e-9, sum(p["run_ms"] + p["copy_ms"] for p in passes)),
        "real_tokens": sum(lengths),
        "padded_tokens_notebook": len(lengths) * max(lengths),
        "forward_gflop": forward_flop(cfg, lengths) / 1e9,
        "memory": memory,
        "weights_bytes": weights_bytes(model_dir / "hf"),
        "agreement_deg": agreement,
        "angles": ours_angles.tolist() if args.save_angles else None,
        "precision": precision,
    }
    return result


def angle_differences(reply, reference) -> dict:
    """|Analyze's target and non-target angles - the notebook's float32 PyTorch angles|: mean and max, degrees."""
    got = np.asarray(reply.rotations.angles.values, dtype=np.float64).reshape(tuple(reply.rotations.angles.shape))
    diff = np.abs(got[:, :, :2] - reference[:, :, :2])
    return {"mean_deg": float(diff.mean()), "max_deg": float(diff.max())}


def precision_pair(args, name: str, analyze_float32, nb_angles) -> dict | None:
    """With --precision-variant: the model's reduced-precision export (<name>-<variant>/) served beside the
    float32 server, Analyze alternated between the two, and its angles against the notebook's float32 ones."""
    if not args.precision_variant:
        return None
    model_dir = args.cache / f"{name}-{args.precision_variant}"
    if not (model_dir / "model.json").exists():
        print(f"[{name}] no {model_dir}/model.json: precision variant skipped", flush=True)
        return None
    meta = json.loads((model_dir / "model.json").read_text())
    pb2, pb2_grpc = load_stubs_cached()
    server = Server(args.binary, model_dir, args.server_arg, args.cache / f"server-{model_dir.name}.log", args.threads)
    stub = pb2_grpc.RotationServiceStub(server.channel)
    sentences = [s for s in args.sentences.read_text().splitlines() if s.strip()] * args.repeat
    request = pb2.RotationRequest(sentences=sentences, target_text=TARGET_TEXT)
    info = stub.GetModelInfo(pb2.GetModelInfoRequest(), timeout=60)
    reply = stub.Analyze(request, timeout=3600)  # warm-up
    errors = angle_differences(reply, nb_angles) if nb_angles is not None else None
    fp32_t, low_t = [], []
    for i in range(args.runs):
        for who in (["fp32", "low"] if i % 2 == 0 else ["low", "fp32"]):
            time.sleep(args.pause)
            if who == "fp32":
                fp32_t.append(analyze_float32()[0])
            else:
                t0 = time.perf_counter()
                stub.Analyze(request, timeout=3600)
                low_t.append(time.perf_counter() - t0)
        print(f"[{name}] precision run {i + 1}/{args.runs}: float32 {fp32_t[-1]:.3f} s, {info.precision} {low_t[-1]:.3f} s", flush=True)
    memory = server.memory()
    server.stop()
    return {
        "model_dir": model_dir.name,
        "precision": info.precision,
        "export_check": meta.get("precision_check"),
        "float32_s": summary(fp32_t),
        "reduced_s": summary(low_t),
        "angles_vs_notebook": errors,
        "memory": memory,
        "start_to_serving_s": server.start_to_serving,
    }


# ---------------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------------
def gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


def fmt_s(s: dict) -> str:
    return f"{s['median']:.3f} ({s['min']:.3f}–{s['max']:.3f})"


def render(report: dict) -> str:
    m = report["machine"]
    limit = report["limit_gflops"]["float32"]
    rates = report["matmul_gflops"]
    where = "GPU" if report["device"] == "cuda" else f"{report['threads']} threads"
    lines = [
        f"Measured {report['date']} on {m['cpu']}, {m['cores']} cores ({report['threads']} threads for both sides), "
        f"{m['mem_gib']:.0f} GiB RAM; SIMD flags: {' '.join(m['simd_flags'])}; load average before / after: "
        f"{report['load_before']} / {report['load_after']}.",
        "",
        f"Command: `{report['command']}`: {report['runs']} alternated runs per model after a warm-up of each; "
        f"torch {m['torch']}, transformers {m['transformers']}, ONNX Runtime {report['onnxruntime']}.",
        "",
        "The machine's float32 matrix-product rate, measured before and after each model, each run repeating "
        "the product for at least 0.2 s ("
        + "; ".join(f"{k}: median {v['median']:.1f} GFLOP/s, {v['min']:.1f}–{v['max']:.1f}" for k, v in rates.items())
        + f"); the best float32 median, **{limit:.1f} GFLOP/s**, is the limit the shares below are of ({where}"
        + ("; float16 models against the float16 rate)." if "float16" in report["limit_gflops"] else ")."),
        "",
        "| model | real tokens (notebook pads to) | work on real tokens | notebook pipeline, s | `Analyze`, s "
        "| notebook / ours | ours: sentences/s | ours: GFLOP/s, share of limit | notebook: share "
        "| start → SERVING: cold, warm cache |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["models"]:
        ours, nb, work = r["ours_s"]["median"], r["notebook_s"], r["forward_gflop"]
        limit = report["limit_gflops"].get(r["dtype"], report["limit_gflops"]["float32"])
        ratio = f"**{nb['median'] / ours:.2f}×**" if nb else "—"
        nb_share = f"{work / nb['median'] / limit:.0%}" if nb else "—"
        lines.append(
            f"| {r['model']} ({r['layers']} layers × {r['hidden']}, {r['dtype']}) | {r['real_tokens']} "
            f"({r['padded_tokens_notebook']}) | {work:.0f} GFLOP | {fmt_s(nb) if nb else '—'} | {fmt_s(r['ours_s'])} "
            f"| {ratio} | {r['sentences'] / ours:.1f} | {work / ours:.0f}, **{work / ours / limit:.0%}** "
            f"| {nb_share} | {r['cold_start_to_serving_s']:.1f} s, {r['start_to_serving_s']:.1f} s |"
        )
    lines += ["", "Medians, with min–max in brackets. Work = 2 × weight-matrix parameters × real tokens + attention products."]
    for r in report["models"]:
        mem, w = r["memory"], r["weights_bytes"]
        agree = f"; ours vs notebook angles agree to {r['agreement_deg']:.2g}°" if r["agreement_deg"] is not None else ""
        lines.append(
            f"- {r['model']}: server peak resident memory (VmHWM) **{gib(mem['VmHWM'])} = {mem['VmHWM'] / w:.2f}× "
            f"the float32 weights** ({gib(w)}; after the runs anonymous {gib(mem['RssAnon'])}, file-backed "
            f"{gib(mem['RssFile'])}); {r['forward_passes_per_analyze']:.0f} ONNX Runtime passes per `Analyze` over "
            f"{r['padded_tokens_ours']:.0f} tokens with padding; copying hidden states out of the runtime "
            f"{r['copy_share']:.1%} of pass time{agree}. Server: `{r['server_cmd'].replace(str(REPO) + '/', '')}`."
        )
    return "\n".join(lines + precision_rows(report))


def precision_rows(report: dict) -> list[str]:
    """The opt-in reduced-precision export against float32, alternated in the same run (--precision-variant)."""
    rows = [r for r in report["models"] if r.get("precision")]
    if not rows:
        return []
    lines = [
        "",
        "Reduced precision (opt-in, `tools/export_model.py --precision int8`), served beside the float32 server "
        "after the notebook's runs, `Analyze` alternated between the two:",
        "",
        "| model | float32 `Analyze`, s | reduced `Analyze`, s | float32 / reduced | its angles against the notebook's "
        "float32 PyTorch: mean, max | export's own check: mean, max | peak memory (float32 server) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = r["precision"]
        err, check = p["angles_vs_notebook"], p["export_check"] or {}
        err_s = f"{err['mean_deg']:.3g}°, {err['max_deg']:.3g}°" if err else "—"
        check_s = f"{check.get('angle_error_mean_deg', float('nan')):.3g}°, {check.get('angle_error_max_deg', float('nan')):.3g}°"
        lines.append(
            f"| {r['model']} ({p['precision']}) | {fmt_s(p['float32_s'])} | {fmt_s(p['reduced_s'])} "
            f"| **{p['float32_s']['median'] / p['reduced_s']['median']:.2f}×** | {err_s} | {check_s} "
            f"| {gib(p['memory']['VmHWM'])} ({gib(r['memory']['VmHWM'])}) |"
        )
    lines.append(
        "\nAngles compared: every sentence's target and non-target angle at every layer (the shuffled control "
        "differs by design); the export's check: every layer transition of every real token of its sentences."
    )
    return lines


def targets(report: dict) -> str:
    by = {r["model"]: r for r in report["models"]}
    limit = report["limit_gflops"]["float32"]
    rows = []

    def row(what, value, goal, ok):
        rows.append(f"| {what} | {value} | {goal} | {'met' if ok else '**not met**'} |")

    for name, goal in (("gpt2-xl", 1.6), ("gpt2", 1.3)):
        r = by.get(name)
        if r and r["notebook_s"]:
            x = r["notebook_s"]["median"] / r["ours_s"]["median"]
            row(f"{name}: notebook / `Analyze`", f"{x:.2f}×", f"≥ {goal}×", x >= goal)
    if "gpt2-xl" in by:
        r = by["gpt2-xl"]
        share = r["forward_gflop"] / r["ours_s"]["median"] / limit
        row("gpt2-xl: share of the matrix-product rate, real tokens", f"{share:.0%}", "≥ 85%", share >= 0.85)
        ratio = r["memory"]["VmHWM"] / r["weights_bytes"]
        row("gpt2-xl: server peak memory / float32 weights", f"{ratio:.2f}×", "≤ 1.25×", ratio <= 1.25)
        worst = max(r["start_to_serving_s"], r["cold_start_to_serving_s"])
        row("gpt2-xl: start → SERVING, cold page cache", f"{worst:.1f} s", "< 30 s", worst < 30)
    if "gpt2-xl" in by and by["gpt2-xl"].get("precision"):
        p = by["gpt2-xl"]["precision"]
        x = p["float32_s"]["median"] / p["reduced_s"]["median"]
        row(f"gpt2-xl: float32 / {p['precision']} `Analyze` (opt-in)", f"{x:.2f}×", "≥ 3×", x >= 3)
    for r in report["models"]:  # the GPU variant: fp16 against fp32 of the same shape
        ref = by.get(r["model"].removesuffix("-fp16"))
        if r["dtype"] == "float16" and ref and r["angles"] and ref["angles"]:
            err = float(np.abs(np.asarray(r["angles"]) - np.asarray(ref["angles"])).max())
            row(f"{r['model']}: max angle error against float32", f"{err:.3g}°", "(reported)", True)
    if not rows:
        return ""
    return "\n".join(["", "| target | measured | goal | |", "|---|---|---|---|", *rows])


def write_markdown(path: Path, block: str, begin: str = BEGIN, end: str = END) -> None:
    """Replaces what lies between the markers (appended when missing); the rest of the file is kept."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin not in text or end not in text:
        text = text.rstrip("\n") + f"\n\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{block}\n{end}{tail}")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="gpt2,gpt2-xl", help="model directories under --cache, comma-separated")
    p.add_argument("--cache", type=Path, default=REPO / "bench/cache")
    p.add_argument("--binary", type=Path, default=REPO / "target/release/rotations")
    p.add_argument("--sentences", type=Path, default=REPO / "examples/her_sentences.txt")
    p.add_argument("--runs", type=int, default=5, help="alternated timed runs per model (default 5)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for torch and the server")
    p.add_argument("--pause", type=float, default=0.5, help="seconds between runs (lets spinning threads park)")
    p.add_argument("--server-arg", action="append", default=[], help="extra `rotations serve` argument (repeatable)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the notebook runs (bench/gpu.sh)")
    p.add_argument("--no-notebook", action="store_true", help="time only the service")
    p.add_argument("--save-angles", action="store_true", help="keep Analyze's angles in the --json output")
    p.add_argument("--repeat", type=int, default=1, help="send the sentences this many times over (GPU throughput)")
    p.add_argument(
        "--precision-variant",
        help="also serve <model>-VARIANT/ (e.g. int8: tools/export_model.py --precision int8) beside the float32 "
        "server after the notebook's runs, alternate the two, and compare its angles with the notebook's",
    )
    p.add_argument("--write", type=Path, help="put the table into this Markdown file between the markers")
    p.add_argument("--json", type=Path, help="also write every measurement as JSON")
    args = p.parse_args()

    import onnxruntime

    torch.set_num_threads(args.threads)
    sentences = [s for s in args.sentences.read_text().splitlines() if s.strip()] * args.repeat
    pb2, pb2_grpc = load_stubs_cached()
    report = {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "command": os.environ.get("BENCH_COMMAND", shlex.join(["bench/bench.py", *sys.argv[1:]])),
        "machine": machine(),
        "device": args.device,
        "onnxruntime": onnxruntime.__version__,
        "threads": args.threads,
        "runs": args.runs,
        "load_before": load_average(),
        "models": [],
    }

    # The limit before and after each model, so a change in clock or load shows as a spread.
    # The model's widest product (MLP up-projection, [tokens of a pass, d] x [d, 4d]); a pass of
    # the notebook's sentences holds about 128 tokens.
    shapes = {}
    for name in args.models.split(","):
        cfg = transformers.GPT2Config.from_pretrained(args.cache / name / "hf")
        d, inner = cfg.n_embd, cfg.n_inner or 4 * cfg.n_embd
        shapes[f"onnxruntime MatMul 128×{d}×{inner} ({name}'s MLP)"] = (128, d, inner)

    def limit_rates(into):
        into.setdefault("torch.matmul 2048³", []).extend(matmul_rate(args.device))
        if args.device == "cpu":
            into.setdefault("onnxruntime MatMul 2048³", []).extend(ort_matmul_rate(args.threads))
            for label, (m, k, n) in shapes.items():
                into.setdefault(label, []).extend(ort_matmul_rate(args.threads, m, k, n))
        else:  # fp16 exports are meant for the GPU: their limit is the fp16 rate
            into.setdefault("torch.matmul float16", []).extend(matmul_rate(args.device, torch.float16))

    rates: dict[str, list[float]] = {}
    limit_rates(rates)
    for name in args.models.split(","):
        result = bench_model(args, name, sentences, pb2, pb2_grpc)
        result["sentences"] = len(sentences)
        report["models"].append(result)
        limit_rates(rates)
    report["matmul_gflops"] = {k: summary(v) for k, v in rates.items()}
    medians = {k: v["median"] for k, v in report["matmul_gflops"].items()}
    report["limit_gflops"] = {"float32": max(v for k, v in medians.items() if "float16" not in k)}
    if "torch.matmul float16" in medians:
        report["limit_gflops"]["float16"] = medians["torch.matmul float16"]
    report["load_after"] = load_average()

    block = render(report) + "\n" + targets(report)
    print("\n" + block)
    if args.write:
        write_markdown(args.write, block)
        print(f"\nwrote {args.write}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
