"""Reduced-precision exports for the CPU (export_model.py --precision): the verified float32 graph's
weight products quantized, then measured against float32 PyTorch and refused past the user's bound.

int8: ONNX Runtime's dynamic quantization. Each constant-weight MatMul becomes DynamicQuantizeMatMul with
signed int8 weights (one scale per output column) and input activations quantized to uint8 at run time,
per tensor; it runs on MLAS's integer kernels (AVX512-VNNI, AMX-INT8 where the CPU has them). The residual stream, layer norms, softmax, GELU and
the attention products (both operands computed) stay float32, as do the hidden-state outputs.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from verification import AngleError, Deviation, angle_error, compare

PRECISIONS = {
    "float32": "float32 weights and compute (the reference)",
    "int8": "int8 weight products: signed int8 weights per output column, activations quantized to uint8 "
    "per tensor at run time (ONNX Runtime dynamic quantization); everything else float32",
}


def quantize_int8(onnx_path: Path, out_path: Path) -> None:
    """Writes onnx_path's graph with every constant-weight MatMul as DynamicQuantizeMatMul to out_path,
    the weights in out_path's name + ".data".

    What onnxruntime.quantization.quantize_dynamic(weight_type=QInt8, per_channel=True) produces once ONNX
    Runtime has fused it, written directly and one weight at a time: quantize_dynamic holds several copies
    of the model (about 4.5x the float32 weights at its peak, measured on GPT-2: 29 GB for GPT-2 XL), this
    holds one weight. Per output column j: scale_j = max_i |W_ij| / 127, W_q = round(W / scale_j) in int8.
    """
    model = onnx.load(onnx_path, load_external_data=False)
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    nodes = [node for node in graph.node if quantizable(node, weights)]
    uses = collections.Counter(name for node in graph.node for name in node.input)
    # A weight also read elsewhere stays float32 where it is read (quantized only where all reads are products).
    targets = {n.input[1] for n in nodes}
    targets = {w for w in targets if uses[w] == sum(1 for n in nodes if n.input[1] == w)}
    data_name = out_path.name + ".data"
    with open(out_path.with_name(data_name), "wb") as data:
        kept = []
        for tensor in graph.initializer:
            array = numpy_helper.to_array(tensor, base_dir=str(onnx_path.parent))
            if tensor.name in targets:
                scale = np.abs(array).max(axis=0) / 127.0
                scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
                quantized = np.clip(np.rint(array / scale), -127, 127).astype(np.int8)
                kept.append(external(numpy_helper.from_array(quantized, tensor.name + "_int8"), data, data_name))
                kept.append(external(numpy_helper.from_array(scale, tensor.name + "_scale"), data, data_name))
            else:
                kept.append(external(numpy_helper.from_array(array, tensor.name), data, data_name))
            del array
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for node in nodes:
        if node.input[1] in targets:
            w, bias = node.input[1], list(node.input[2:3])
            node.op_type, node.domain = "DynamicQuantizeMatMul", "com.microsoft"
            del node.input[1:]
            del node.attribute[:]  # Gemm's: only the defaults were accepted (quantizable)
            # A, B, b_scale, b_zero_point (none: symmetric), bias.
            node.input.extend([w + "_int8", w + "_scale"] + (["", *bias] if bias else []))
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, out_path)


def quantizable(node, weights: dict) -> bool:
    """MatMul(A, W), or Gemm(A, W[, bias]) that is A @ W + bias: W a float32 matrix, bias a vector."""
    if node.domain not in ("", "ai.onnx") or len(node.input) < 2 or node.input[1] not in weights:
        return False
    w = weights[node.input[1]]
    if len(w.dims) != 2 or w.data_type != onnx.TensorProto.FLOAT:
        return False
    if node.op_type == "MatMul":
        return True
    if node.op_type != "Gemm":
        return False
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0) and not attrs.get("transB", 0)
    bias = node.input[2] if len(node.input) > 2 else ""
    return plain and (not bias or (bias in weights and list(weights[bias].dims) == [w.dims[1]]))


def external(tensor, data, location: str, min_bytes: int = 1024):
    """tensor with its bytes appended to the open file `data` (named `location`), 64-byte aligned;
    tensors under min_bytes stay inside the graph."""
    raw = tensor.raw_data
    if len(raw) < min_bytes:
        return tensor
    data.write(b"\0" * (-data.tell() % 64))
    offset = data.tell()
    data.write(raw)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(raw)))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def rename_data(graph_path: Path, dest: Path, data_name: str) -> None:
    """Moves graph_path (weights in graph_path's name + ".data") to dest, the weights to data_name beside it."""
    model = onnx.load(graph_path, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = data_name
    graph_path.with_name(graph_path.name + ".data").replace(dest.with_name(data_name))
    onnx.save(model, dest)
    graph_path.unlink()


def measure(onnx_path: Path, batches, state_names: list[str]) -> tuple[AngleError, Deviation]:
    """The rotation angles' error and every hidden vector's deviation of the graph against the reference
    batches [(feeds, lengths, float32 PyTorch states)]; gathering graphs get an empty index."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    pairs, deviation = [], Deviation()
    for feeds, lengths, reference in batches:
        if "gather_index" in inputs:
            feeds = {**feeds, "gather_index": np.zeros((0, 3), dtype=np.int64)}
        got = session.run(state_names, feeds)
        pairs.append((reference, got, lengths))
        deviation = deviation.merge(compare(reference, got, lengths))
    del session
    return angle_error(pairs), deviation


def record(precision: str, error: AngleError, deviation: Deviation, bound: dict, sentences: int) -> dict:
    """model.json's precision_check: what was measured, against what, and the bound it met."""
    return {
        "precision": precision,
        "method": PRECISIONS[precision],
        "reference": "pytorch-float32-cpu",
        "criterion": "|rotation angle - float32 PyTorch's| over every layer transition of every real token "
        "(the angle between hidden states k-1 and k that the analysis reports): mean <= mean_bound_deg, "
        "max <= max_bound_deg",
        "sentences": sentences,
        "rotation_angles": error.angles,
        "angle_error_mean_deg": error.mean_deg,
        "angle_error_max_deg": error.max_deg,
        "mean_bound_deg": bound["mean_deg"],
        "max_bound_deg": bound["max_deg"],
        "hidden_vector_max_angle_deg": deviation.max_angle_deg,
        "hidden_vector_max_rel_norm_error": deviation.max_rel_norm_error,
    }
