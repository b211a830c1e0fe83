#!/usr/bin/env python3
"""Export a decoder-only transformer (no LM head) to ONNX, one output per hidden state.

Families (Hugging Face model_type): gpt2, gpt_neo, gpt_neox (Pythia), opt, llama, mistral, qwen2,
qwen3, gemma (tools/families.py). The model directory written here is what the rotations service loads:

    model.onnx        inputs input_ids, attention_mask [batch, seq] int64 (dynamic axes), and
                      position_ids [batch, seq] int64 for rotary families (0..len-1 per row);
                      outputs hidden_state_0 .. hidden_state_N [batch, seq, hidden] float32,
                      equal to Hugging Face's output_hidden_states=True (last one after the final norm)
    model.onnx.data   the weights (always, unless --external-data auto: then only past protobuf's
                      2 GB limit); ONNX Runtime memory-maps them, so the server holds one copy
    tokenizer.json    the model's tokenizer, Hugging Face tokenizers format
    model.json        family, shapes, token ids (BOS, padding), hidden-state semantics, provenance and
                      the verification result
    hf/               the PyTorch checkpoint (always for --random-init, else --save-checkpoint)

The export checks itself: ONNX Runtime (CPU) must reproduce PyTorch's hidden states on a
right-padded batch, or the script exits non-zero and writes no model.json.

Examples:
    python tools/export_model.py --model gpt2-xl --out models/gpt2-xl
    python tools/export_model.py --random-init --preset tiny --seed 0 --out /tmp/tiny
    python tools/export_model.py --random-init --preset llama-tiny --out /tmp/llama-tiny
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import logging
import operator
import resource
import shutil
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import onnxscript
import torch
import transformers
from families import FAMILIES, GATHER_INPUT, POSITION_INPUT, PRESETS, REPO_ROOT
from families import bos_handling, choose_pad, graph_inputs, manifest, random_init_config, random_init_tokenizer
from tokenizers import Tokenizer, processors
from verification import BOUNDS, Deviation, compare, gather_index_for

# Different lengths (1 token up to ~20) so right padding is exercised on most rows.
VERIFY_SENTENCES = [
    "I saw her at the market.",
    "She gave her the book yesterday after a long day at work, and then she went home.",
    "Hi",
    "The author based the character on her.",
    "They thanked her for his help with the move last spring.",
]
# --gather-outputs: (batch row, hidden state, token position) triples in (GATHER_INPUT), those vectors out.
GATHER_OUTPUT = "gathered_hidden_states"

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Traced with a right-padded mask that contains zeros: transformers' mask helpers take
# shortcuts when a mask has no padding, and an example without zeros risks baking such a
# shortcut into the graph. (The legacy TorchScript exporter, dynamo=False, was measured off
# by up to 2.7 with transformers 5.x; only dynamo=True is used and verified here.)
TRACE_SENTENCES = ["The author based the character on her.", "I saw her."]
TRACE_GATHER_INDEX = [[0, 0, 6], [1, 1, 2], [0, 2, 5]]  # (row, hidden state, token); every preset has >= 3 states

_START = time.monotonic()
# Both inputs share the batch and seq dims on purpose; the exporter warns about the shared names.
warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used")
# torch.onnx's registry says for each torchvision operator that torchvision is not installed: no
# language model uses them, so the lines only alarm the user.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


def log(msg: str) -> None:
    print(f"[{time.monotonic() - _START:7.1f}s] {msg}", flush=True)


def peak_rss_gib() -> float:
    # ru_maxrss is KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


#: The export's stages, in order: every step belongs to one, and its log lines say which ("[2/3 export] …").
STAGES = ("load", "export", "verify")


@contextmanager
def step(stage: str, name: str):
    label = f"[{STAGES.index(stage) + 1}/{len(STAGES)} {stage}] {name}"
    log(f"{label} ...")
    t0 = time.monotonic()
    yield
    log(f"{label}: done in {time.monotonic() - t0:.1f}s (peak RSS {peak_rss_gib():.2f} GiB)")


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="Hugging Face model id or local checkpoint folder (families: " + ", ".join(FAMILIES) + ")")
    src.add_argument("--random-init", action="store_true", help="randomly initialised model (offline)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="architecture for --random-init")
    p.add_argument("--seed", type=int, default=0, help="torch seed for --random-init (default 0)")
    p.add_argument("--out", required=True, type=Path, help="model directory to write")
    p.add_argument(
        "--tokenizer",
        type=Path,
        help="tokenizer.json to bundle (default: the checkpoint's tokenizer for --model; for --random-init GPT-2's "
        "for byte-level families, tools/tokenizers/metaspace-bpe.json for llama, mistral and gemma)",
    )
    p.add_argument(
        "--dtype",
        choices=sorted(BOUNDS),
        default="float32",
        help="weights and compute (float16/bfloat16: for GPU execution providers); outputs stay float32",
    )
    p.add_argument("--fp16", action="store_true", help="same as --dtype float16")
    p.add_argument(
        "--gather-outputs",
        action="store_true",
        help=f"also take {GATHER_INPUT} [n, 3] int64 (batch row, hidden state, token) and return those vectors "
        f"as {GATHER_OUTPUT} [n, hidden]: a GPU server copies only what the analysis reads",
    )
    p.add_argument(
        "--optimize",
        action="store_true",
        help="apply onnxruntime.transformers' gpt2 optimizer (gpt2 family only), kept only if verification still passes",
    )
    p.add_argument(
        "--external-data",
        choices=["always", "auto"],
        default="always",
        help="weights in model.onnx.data: always (default; memory-mapped by ONNX Runtime, BENCHMARKS.md: "
        "GPT-2's peak memory 1.0x instead of 1.5x the weights) or auto (only past protobuf's 2 GB limit)",
    )
    p.add_argument("--save-checkpoint", action="store_true", help="with --model: also save the checkpoint to <out>/hf")
    p.add_argument(
        "--attn-implementation",
        default="eager",
        choices=["eager", "sdpa"],
        help="attention implementation traced into the graph (default eager: plain MatMul/Softmax)",
    )
    args = p.parse_args(argv)
    if args.random_init and not args.preset:
        p.error("--random-init needs --preset")
    if args.model and args.preset:
        p.error("--preset only applies to --random-init")
    if args.fp16:
        if args.dtype not in ("float32", "float16"):
            p.error("--fp16 contradicts --dtype")
        args.dtype = "float16"
    return args


class HiddenStates(torch.nn.Module):
    """forward(input_ids, attention_mask[, position_ids]) -> tuple of every hidden state, as float32."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids=None):
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_hidden_states=True,
            use_cache=False,
            return_dict=True,
        )
        # Reduced-precision models still return float32 so the service reads one output type.
        return tuple(h.float() for h in out.hidden_states)


def gathered(states, gather_index):
    """(*states, the vectors gather_index [n, 3] picks): row n is hidden_state_{state}[batch row, position]."""
    stacked = torch.stack(states)  # [states, batch, seq, hidden]
    num_states, batch, seq, hidden = stacked.shape
    flat = (gather_index[:, 1] * batch + gather_index[:, 0]) * seq + gather_index[:, 2]
    return (*states, stacked.reshape(num_states * batch * seq, hidden).index_select(0, flat))


class GatheredHiddenStates(HiddenStates):
    """forward(input_ids, attention_mask, gather_index) -> (*every hidden state, the gathered vectors).

    gather_index [n, 3] holds (batch row, hidden state, token position); output n is
    hidden_state_{state}[row, position]. The full outputs stay in the graph, so one model serves
    both ways: a runtime asks ONNX Runtime for the outputs it wants.
    """

    def forward(self, input_ids, attention_mask, gather_index):
        return gathered(super().forward(input_ids, attention_mask), gather_index)


class GatheredPositionedHiddenStates(HiddenStates):
    """GatheredHiddenStates for rotary families: forward(input_ids, attention_mask, position_ids, gather_index).
    (A separate class, not a None argument: a None input shifts the exporter's names for the dynamic axes.)"""

    def forward(self, input_ids, attention_mask, position_ids, gather_index):
        return gathered(super().forward(input_ids, attention_mask, position_ids), gather_index)


def load_model(args):
    """Return (base model without LM head in eval mode, family, source string)."""
    if args.random_init:
        family, fields = random_init_config(args.preset)
        cfg = transformers.AutoConfig.for_model(family, **fields)
        cfg._attn_implementation = args.attn_implementation
        torch.manual_seed(args.seed)
        model = transformers.AutoModel.from_config(cfg)  # Hugging Face's own init, deterministic on CPU
        return model.eval(), family, f"random-init:{args.preset}:seed={args.seed}"
    family = transformers.AutoConfig.from_pretrained(args.model).model_type
    if family not in FAMILIES:
        fail(f"{args.model} is a {family!r} model; supported families: {', '.join(FAMILIES)}")
    model = transformers.AutoModel.from_pretrained(args.model, dtype=torch.float32, attn_implementation=args.attn_implementation)
    return model.eval(), family, args.model


def write_tokenizer(args, out: Path, family: str, bos_token_id) -> Path:
    dest = out / "tokenizer.json"
    if args.tokenizer is None and args.model:
        tok = transformers.AutoTokenizer.from_pretrained(args.model)
        backend = tok.backend_tokenizer
        # The service pads by itself; a padding/truncation block in the file would fight it.
        backend.no_padding()
        backend.no_truncation()
        backend.save(str(dest))
        return dest
    src = args.tokenizer or random_init_tokenizer(family)
    if not src.is_file():
        fail(f"tokenizer {src} not found (pass --tokenizer)")
    tok = Tokenizer.from_file(str(src))
    if args.random_init and FAMILIES[family].bos_prepended and not tokenizer_bos(tok, None)[1]:
        # OPT's tokenizer prepends BOS and GPT-2's does not: add it, keeping the byte-level post-processor.
        bos = tok.id_to_token(bos_token_id)
        template = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_token_id)])
        tok.post_processor = processors.Sequence([p for p in [tok.post_processor] if p is not None] + [template])
        tok.save(str(dest))
    elif src.resolve() != dest.resolve():
        shutil.copyfile(src, dest)
    return dest


def tokenizer_bos(tok: Tokenizer, config_bos) -> tuple[int | None, bool]:
    """(bos_token_id, adds_bos): what the post-processor adds, seen on one sentence."""
    text = VERIFY_SENTENCES[0]
    try:
        return bos_handling(tok.encode(text).ids, tok.encode(text, add_special_tokens=False).ids, config_bos)
    except ValueError as e:
        fail(str(e))


def token_ids(cfg, tok: Tokenizer) -> dict:
    """bos_token_id, adds_bos, pad (id, source) and eos_token_id for model.json."""
    bos, adds_bos = tokenizer_bos(tok, cfg.bos_token_id)
    eos = cfg.eos_token_id[0] if isinstance(cfg.eos_token_id, list) else cfg.eos_token_id
    pad_token = tok.padding["pad_id"] if tok.padding else None
    pad = choose_pad(pad_token, cfg.pad_token_id, eos)
    if eos is None:
        fail("the model's config has no eos_token_id")
    return {"bos_token_id": bos, "adds_bos": adds_bos, "pad": pad, "eos_token_id": int(eos)}


def encode_batch(tok: Tokenizer, sentences, vocab_size: int, pad_id: int, rotary: bool):
    """Right-pad as the service does; return (feeds, lengths): input_ids, attention_mask and, for rotary
    families, position_ids 0..seq-1 in every row (0..len-1 on the real tokens; pads' positions are unused)."""
    ids = [tok.encode(s).ids for s in sentences]
    if any(not row for row in ids):
        fail("the tokenizer produced an empty sequence")
    if max(max(row) for row in ids) >= vocab_size:
        fail(f"the tokenizer produces ids beyond the model's vocabulary ({vocab_size})")
    width = max(len(row) for row in ids)
    feeds = {
        "input_ids": np.asarray([row + [pad_id] * (width - len(row)) for row in ids], dtype=np.int64),
        "attention_mask": np.asarray([[1] * len(row) + [0] * (width - len(row)) for row in ids], dtype=np.int64),
    }
    if rotary:
        feeds[POSITION_INPUT] = np.tile(np.arange(width, dtype=np.int64), (len(ids), 1))
    return feeds, [len(row) for row in ids]


def check_gathered(session, feeds: dict, full_states, num_states: int, lengths) -> None:
    """The gathered output must equal slicing the full outputs, bit for bit; an empty index must run."""
    index = gather_index_for(lengths, num_states)
    (gathered,) = session.run([GATHER_OUTPUT], {**feeds, GATHER_INPUT: index})
    expected = np.stack([full_states[k][r, p] for r, k, p in index])
    if gathered.shape != expected.shape or not np.array_equal(gathered, expected):
        raise ValueError(f"{GATHER_OUTPUT} differs from slicing the full outputs")
    (empty,) = session.run([GATHER_OUTPUT], {**feeds, GATHER_INPUT: np.zeros((0, 3), dtype=np.int64)})
    if empty.shape[0] != 0:
        raise ValueError(f"an empty {GATHER_INPUT} gave {empty.shape[0]} vectors")


def verify_onnx(path: Path, batches, input_names: list, num_states: int) -> Deviation:
    """Runs each (feeds, lengths, reference) batch in ONNX Runtime (CPU) and compares every hidden vector
    with the reference; with a gather input, also checks the gathered output against the full ones."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # keep the console to our own messages
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    gather = GATHER_INPUT in input_names
    if inputs != input_names:
        raise ValueError(f"unexpected ONNX inputs {inputs}, expected {input_names}")
    state_names = [f"hidden_state_{i}" for i in range(num_states)]
    expected = state_names + [GATHER_OUTPUT] * gather
    if outputs != expected:
        raise ValueError(f"unexpected ONNX outputs {outputs}, expected {expected}")
    result = Deviation()
    for feeds, lengths, reference in batches:
        if gather:
            feeds = {**feeds, GATHER_INPUT: np.zeros((0, 3), dtype=np.int64)}
        got = session.run(state_names, feeds)
        result = result.merge(compare(reference, got, lengths))
        if gather:
            check_gathered(session, feeds, got, num_states, lengths)
    del session
    return result


def add_zero_gemm_biases(model: onnx.ModelProto) -> None:
    """Give bias-less Gemm nodes an explicit zero bias, in place.

    The onnxscript optimizer drops all-zero biases (a random init has them), and the gpt2
    fusion pass of onnxruntime.transformers assumes every Gemm has one (IndexError otherwise).
    Real checkpoints have non-zero biases and are left unchanged.
    """
    weights = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gemm" and len(node.input) == 2 and node.input[1] in weights:
            w = weights[node.input[1]]
            zeros = np.zeros(w.dims[1], dtype=onnx.helper.tensor_dtype_to_np_dtype(w.data_type))
            bias = onnx.numpy_helper.from_array(zeros, f"{node.name}.zero_bias")
            model.graph.initializer.append(bias)
            node.input.append(bias.name)


def optimize(onnx_path: Path, cfg, use_gpu: bool, batches, names: tuple[list, int], bound: dict):
    """Try ORT's gpt2 fusions; keep the result only if it still verifies. Returns (optimized, Deviation).

    The fusions work on the graph only: weights in model.onnx.data are neither loaded nor
    rewritten (loading them costs several copies of GPT-2 XL's 6 GB), and the optimized graph
    is saved next to the original so it refers to the same data file.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    out = onnx_path.parent
    candidate = out / ".optimized.onnx"
    try:
        with step("export", "optimizing with onnxruntime.transformers (model_type gpt2)"):
            model = onnx.load(onnx_path, load_external_data=False)
            add_zero_gemm_biases(model)
            # opt_level=0: Python fusions only; ONNX Runtime applies its own graph
            # optimizations when it loads the model anyway.
            opt = optimize_model(
                model,
                model_type="gpt2",
                num_heads=cfg.num_attention_heads,
                hidden_size=cfg.hidden_size,
                opt_level=0,
                use_gpu=use_gpu,
            )
            fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
            log(f"fused operators: {fused}")
            onnx.save(opt.model, candidate)
            del opt, model
        with step("verify", "verifying the optimized model"):
            deviation = verify_onnx(candidate, batches, *names)
            log(f"optimized: {deviation.describe()}")
    except Exception as e:  # the fusion passes target the legacy exporter's graphs
        log(f"warning: optimization failed ({type(e).__name__}: {e}); keeping the unoptimized export")
        candidate.unlink(missing_ok=True)
        return False, None
    if not deviation.within(bound):
        log("warning: the optimized model does not pass verification; keeping the unoptimized export")
        candidate.unlink()
        return False, None
    candidate.replace(onnx_path)
    return True, deviation


def reference_batches(wrapper: HiddenStates, tok: Tokenizer, vocab_size: int, pad_id: int, rotary: bool):
    """PyTorch hidden states for a right-padded batch and an unpadded single sentence.

    Returns [(feeds, lengths, [state arrays])]; the two shapes differ from the traced example, so the
    check also covers the dynamic axes. PyTorch gets no position_ids: Hugging Face's own positions are
    the reference the ONNX graph, fed 0..len-1, must reproduce.
    """
    batches = []
    for sentences in (VERIFY_SENTENCES, VERIFY_SENTENCES[3:4]):
        feeds, lengths = encode_batch(tok, sentences, vocab_size, pad_id, rotary)
        with torch.no_grad():
            states = wrapper(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))
        batches.append((feeds, lengths, [h.numpy() for h in states]))
    return batches


def check_hidden_state_semantics(model, family: str, feeds: dict, states) -> None:
    """hidden_states must be what families.py says: the first block's input, each block's output, and the
    final norm's output last (checked with hooks, so model.json's hidden_states field is measured, not assumed)."""
    fam = FAMILIES[family]
    blocks, norm = operator.attrgetter(fam.blocks)(model), operator.attrgetter(fam.final_norm)(model)
    seen = {}

    def first_input(_module, args, kwargs):
        seen["first"] = args[0] if args else kwargs["hidden_states"]

    hooks = [blocks[0].register_forward_pre_hook(first_input, with_kwargs=True)]
    for i, block in enumerate(blocks):
        hooks.append(block.register_forward_hook(lambda _m, _a, out, i=i: seen.__setitem__(i, out[0] if isinstance(out, tuple) else out)))
    hooks.append(norm.register_forward_hook(lambda _m, _a, out: seen.__setitem__("norm", out)))
    with torch.no_grad():
        model(input_ids=torch.from_numpy(feeds["input_ids"]), attention_mask=torch.from_numpy(feeds["attention_mask"]), use_cache=False)
    for hook in hooks:
        hook.remove()
    expected = [seen["first"]] + [seen[i] for i in range(len(blocks) - 1)] + [seen["norm"]]
    for k, (state, want) in enumerate(zip(states, expected, strict=True)):
        if not np.array_equal(state, want.float().numpy()):
            fail(f"hidden state {k} of this {family} model is not what tools/families.py describes ({fam.first}; {fam.last})")


def export_onnx(wrapper: HiddenStates, onnx_path: Path, names: tuple[list, list], example: dict, external_data: str, max_positions: int):
    """Exports wrapper (HiddenStates, or a Gathered* one when the inputs include GATHER_INPUT) traced on example's feeds."""
    input_names, output_names = names
    batch = torch.export.Dim("batch", min=1)
    seq = torch.export.Dim("seq", min=1, max=max_positions)
    axes = {0: batch, 1: seq}
    # Arguments in forward's order: the graph's inputs.
    args = [torch.from_numpy(example["input_ids"]), torch.from_numpy(example["attention_mask"])]
    dynamic_shapes = {"input_ids": axes, "attention_mask": axes}
    if POSITION_INPUT in input_names:
        args.append(torch.from_numpy(example[POSITION_INPUT]))
        dynamic_shapes[POSITION_INPUT] = axes
    if GATHER_INPUT in input_names:
        args.append(torch.tensor(TRACE_GATHER_INDEX))
        dynamic_shapes[GATHER_INPUT] = {0: torch.export.Dim("gathered", min=0)}
    with step("export", "exporting with torch.onnx.export(dynamo=True)"):
        program = torch.onnx.export(
            wrapper,
            tuple(args),
            dynamo=True,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
        )
    # Per-node Python stack traces hold absolute paths and line numbers of this checkout;
    # dropping them keeps the file free of local paths and byte-identical across machines.
    for node in program.model.graph.all_nodes():
        node.metadata_props.pop("pkg.torch.onnx.stack_trace", None)
    with step("export", f"saving {onnx_path}"):
        (onnx_path.parent / "model.onnx.data").unlink(missing_ok=True)
        # None: a separate model.onnx.data only past protobuf's 2 GB limit.
        program.save(onnx_path, external_data=True if external_data == "always" else None)
    # onnxscript 0.7's rewriter keeps a module-level reference to the last graph it matched,
    # which would keep every weight alive next to ONNX Runtime's copy (12 GB peak for XL).
    for value in program.model.graph.initializers.values():
        value.const_value = None


def compare_torch(wrapper: HiddenStates, batches) -> Deviation:
    """Runs the (reduced-precision) PyTorch model on each batch and compares it with the float32 reference."""
    result = Deviation()
    for feeds, lengths, reference in batches:
        with torch.no_grad():
            states = wrapper(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))
        result = result.merge(compare(reference, [h.numpy() for h in states], lengths))
    return result


def verify_export(onnx_path: Path, batches, names: tuple[list, int], dtype: str, proxy: Deviation | None):
    """ONNX Runtime (CPU) against float32 PyTorch; returns (Deviation, what was checked).

    A reduced-precision graph that ONNX Runtime's CPU provider cannot run (it lacks float16 or bfloat16
    kernels for some operators) falls back to the PyTorch proxy measured before the export.
    """
    with step("verify", "verifying ONNX Runtime (CPU) against float32 PyTorch"):
        try:
            deviation = verify_onnx(onnx_path, batches, *names)
            checked = "onnxruntime-cpu"
        except Exception as e:
            if proxy is None:
                fail(f"verification could not run: {type(e).__name__}: {e}")
            log(f"ONNX Runtime's CPU provider cannot run the {dtype} graph ({type(e).__name__}: {str(e)[:300]})")
            log(f"verified by PyTorch {dtype} on CPU instead (the proxy): GPU kernels need a GPU to check")
            deviation, checked = proxy, f"pytorch-{dtype}-cpu-proxy"
        log(deviation.describe())
    return deviation, checked


def verification_record(deviation: Deviation, checked: str, bound: dict, proxy: Deviation | None) -> dict:
    record = {
        "criterion": "every hidden state, every real token of a right-padded batch: the angle between the "
        "checked vector and float32 PyTorch's <= angle_bound_deg, and |norm error| / norm <= rel_norm_bound",
        "checked": checked,
        "reference": "pytorch-float32-cpu",
        "max_angle_deg": deviation.max_angle_deg,
        "angle_bound_deg": bound["angle_deg"],
        "max_rel_norm_error": deviation.max_rel_norm_error,
        "rel_norm_bound": bound["rel_norm_error"],
        "max_abs_error": deviation.max_abs_error,
        "vectors": deviation.vectors,
        "batch_sentences": len(VERIFY_SENTENCES),
        "padding": "right",
    }
    if proxy is not None:
        record["pytorch_same_dtype_cpu"] = {
            "max_angle_deg": proxy.max_angle_deg,
            "max_rel_norm_error": proxy.max_rel_norm_error,
        }
    return record


def load(args, out: Path):
    """The model, its family and source, its tokenizer (written to out) and its token ids."""
    with step("load", "loading model"):
        model, family, source = load_model(args)
        cfg = model.config
        n_params = sum(p.numel() for p in model.parameters())
        log(
            f"{source}: {family}, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
            f"{cfg.num_attention_heads} heads, {n_params / 1e6:.1f}M params"
        )
    with step("load", "writing tokenizer.json"):
        tokenizer_file = write_tokenizer(args, out, family, cfg.bos_token_id)
        tok = Tokenizer.from_file(str(tokenizer_file))
        ids = token_ids(cfg, tok)
        log(f"BOS {ids['bos_token_id']} (prepended: {ids['adds_bos']}), pad {ids['pad'][0]} ({ids['pad'][1]})")
    if args.random_init or args.save_checkpoint:
        with step("load", f"saving checkpoint to {out / 'hf'}"):
            save_checkpoint(model, tokenizer_file, ids, out / "hf")
    return model, family, source, tok, ids


def save_checkpoint(model, tokenizer_file: Path, ids: dict, dest: Path) -> None:
    """The PyTorch model and its tokenizer, so `--model <out>/hf` exports it again, offline."""
    model.save_pretrained(dest)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file))
    named = {"bos_token": ids["bos_token_id"], "eos_token": ids["eos_token_id"], "pad_token": ids["pad"][0]}
    tok.add_special_tokens({k: tok.convert_ids_to_tokens(v) for k, v in named.items() if v is not None})
    tok.save_pretrained(dest)


def check_outputs(deviation: Deviation, proxy: Deviation | None, dtype: str, bound: dict) -> None:
    # A reduced-precision export must pass both: ONNX Runtime's run of the graph (on CPU, where it
    # casts operators without such kernels to float32) and PyTorch's arithmetic in that precision.
    for name, found in (("ONNX Runtime", deviation), ("PyTorch " + dtype, proxy)):
        if found is not None and not found.within(bound):  # also catches NaN
            fail(
                f"verification failed ({name}): {found.describe()}; bounds: angle {bound['angle_deg']:g} deg, "
                f"relative norm error {bound['rel_norm_error']:g}; model.json not written"
            )


def main(argv: list[str] | None = None) -> None:
    """Exports as the command line says (argv: sys.argv[1:] by default); exits 1 when verification fails."""
    args = parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    # A model.json marks a verified export, so drop any stale one first.
    (out / "model.json").unlink(missing_ok=True)
    model, family, source, tok, ids = load(args, out)
    cfg, rotary = model.config, FAMILIES[family].rotary
    if args.optimize and family != "gpt2":
        fail("--optimize applies onnxruntime.transformers' gpt2 fusions: gpt2 family only")

    # References first, so the PyTorch weights can be freed before ONNX Runtime loads its
    # own copy (GPT-2 XL is ~6 GB per copy).
    wrapper = HiddenStates(model).eval()
    with step("verify", "computing PyTorch float32 reference hidden states"):
        batches = reference_batches(wrapper, tok, cfg.vocab_size, ids["pad"][0], rotary)
        check_hidden_state_semantics(model, family, *batches[0][::2])
    num_states = len(batches[0][2])
    if num_states != cfg.num_hidden_layers + 1:
        fail(f"model returned {num_states} hidden states, expected {cfg.num_hidden_layers + 1}")
    input_names = graph_inputs(family, args.gather_outputs)
    output_names = [f"hidden_state_{i}" for i in range(num_states)] + [GATHER_OUTPUT] * args.gather_outputs

    # Reduced precision is checked against the float32 reference too, with its own bound.
    dtype, bound, proxy = args.dtype, BOUNDS[args.dtype], None
    if dtype != "float32":
        model.to(TORCH_DTYPES[dtype])
        with step("verify", f"computing PyTorch {dtype} (CPU) hidden states against the float32 reference"):
            proxy = compare_torch(wrapper, batches)
            log(f"PyTorch {dtype}: {proxy.describe()}")

    onnx_path = out / "model.onnx"
    if args.gather_outputs:
        wrapper = (GatheredPositionedHiddenStates if rotary else GatheredHiddenStates)(model).eval()
    example, _ = encode_batch(tok, TRACE_SENTENCES, cfg.vocab_size, ids["pad"][0], rotary)
    export_onnx(wrapper, onnx_path, (input_names, output_names), example, args.external_data, cfg.max_position_embeddings)
    del wrapper, model
    gc.collect()
    opset = next(o.version for o in onnx.load(onnx_path, load_external_data=False).opset_import if o.domain == "")
    log(f"ONNX opset {opset}, external data file: {(out / 'model.onnx.data').exists()}")

    deviation, checked = verify_export(onnx_path, batches, (input_names, num_states), dtype, proxy)
    check_outputs(deviation, proxy, dtype, bound)
    optimized = False
    if args.optimize and checked == "onnxruntime-cpu":
        use_gpu = dtype != "float32"
        optimized, opt_deviation = optimize(onnx_path, cfg, use_gpu, batches, (input_names, num_states), bound)
        if optimized:
            deviation = opt_deviation

    meta = manifest(
        name=out.resolve().name,
        shape={
            "num_layers": cfg.num_hidden_layers,
            "hidden_size": cfg.hidden_size,
            "num_heads": cfg.num_attention_heads,
            "vocab_size": cfg.vocab_size,
            "max_positions": cfg.max_position_embeddings,
        },
        family=family,
        ids=ids,
        gather=args.gather_outputs,
        outputs=output_names,
        dtype=dtype,
        source=source,
        exporter={
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__,
            "onnxruntime": ort.__version__,
        },
        verification=verification_record(deviation, checked, bound, proxy),
        optimized=optimized,
        # Replicas compare it (GetModelInfo.weights_sha256); recorded here so a server need not hash
        # the weights at every start. The same bytes as src/model/fingerprint.rs hashes.
        weights_sha256=weights_sha256(out),
    )
    (out / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    log(f"wrote {out / 'model.json'}; total peak RSS {peak_rss_gib():.2f} GiB")


def weights_sha256(model_dir: Path) -> str:
    """SHA-256 of model.onnx and its external data (model.onnx.*) in name order, each as its name,
    a NUL byte, its length (8 bytes little-endian) and its bytes."""
    digest = hashlib.sha256()
    files = sorted(p for p in model_dir.iterdir() if p.is_file() and (p.name == "model.onnx" or p.name.startswith("model.onnx.")))
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.stat().st_size.to_bytes(8, "little"))
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


if __name__ == "__main__":
    main()
