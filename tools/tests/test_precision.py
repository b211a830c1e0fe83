"""--precision int8: the rotation angles' error measure, and the export's refusal past the user's bound.

The error measure is checked on vectors whose angles are known by construction; the export on the bundled
tiny GPT-2 (its float32 graph quantized with --graph-from, so no slow re-export), whose int8 graph is then
measured again here, independently of the tool's record: against the PyTorch checkpoint loaded fresh by
transformers, on other sentences.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from verification import PRECISION_BOUND, angle_error, rotation_angles  # noqa: E402

TINY = Path(__file__).resolve().parents[2] / "models" / "gpt2-tiny-random"


def planar(degrees, hidden=4, scale=1.0):
    """One [1, tokens, hidden] state per angle list entry: token t's vector at degrees[t] in the first plane."""
    rad = np.radians(np.asarray(degrees, dtype=np.float64))
    v = np.zeros((1, len(degrees), hidden))
    v[0, :, 0], v[0, :, 1] = scale * np.cos(rad), scale * np.sin(rad)
    return v


def test_rotation_angles_are_the_angles_between_consecutive_states():
    states = [planar([0, 10]), planar([30, 10], scale=5.0), planar([30, 100])]
    # Transition 1: token 0 turns 30°, token 1 stays; transition 2: 0° and 90°. Norms do not matter.
    np.testing.assert_allclose(rotation_angles(states, [2]), [30, 0, 0, 90], atol=1e-9)
    # Padding is not compared: with one real token only token 0's angles count.
    np.testing.assert_allclose(rotation_angles(states, [1]), [30, 0], atol=1e-9)


def test_angle_error_is_mean_and_max_of_the_differences():
    reference = [planar([0, 0]), planar([30, 60])]
    actual = [planar([0, 0]), planar([31, 60.5])]
    err = angle_error([(reference, actual, [2])])
    assert err.angles == 2
    assert err.max_deg == pytest.approx(1.0, abs=1e-9)
    assert err.mean_deg == pytest.approx(0.75, abs=1e-9)
    assert err.within(PRECISION_BOUND) is False  # 0.75° mean is past the default 0.05°
    assert err.within({"mean_deg": 0.8, "max_deg": 1.001})
    broken = [planar([0, 0]), planar([np.nan, 0])]
    assert not angle_error([(reference, broken, [2])]).within({"mean_deg": 1e9, "max_deg": 1e9})


# The export needs torch, transformers and onnxruntime (the tools venv); skipped where they are missing.
def quantize_tiny(out: Path, *bound: str):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("onnxruntime")
    import export_model

    argv = ["--model", str(TINY / "hf"), "--tokenizer", str(TINY / "tokenizer.json"), "--graph-from", str(TINY)]
    export_model.main([*argv, "--precision", "int8", "--out", str(out), *bound])


def test_an_error_past_the_bound_refuses_the_export(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        quantize_tiny(tmp_path, "--max-angle-error-mean", "1e-6", "--max-angle-error-max", "1e-5")
    assert exit_.value.code == 1
    assert "--precision int8 refused" in capsys.readouterr().err
    assert not (tmp_path / "model.json").exists()
    assert not (tmp_path / "model.onnx").exists()


def test_within_the_default_bound_the_int8_export_is_recorded_and_measures_as_it_says(tmp_path):
    quantize_tiny(tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    check = meta["precision_check"]
    assert meta["precision"] == "int8" and meta["dtype"] == "float32"
    assert check["mean_bound_deg"] == PRECISION_BOUND["mean_deg"] and check["max_bound_deg"] == PRECISION_BOUND["max_deg"]
    assert 0 < check["angle_error_mean_deg"] <= check["angle_error_max_deg"] <= PRECISION_BOUND["max_deg"]

    import onnx
    import onnxruntime as ort
    import torch
    import transformers
    from tokenizers import Tokenizer

    ops = {n.op_type for n in onnx.load(tmp_path / "model.onnx", load_external_data=False).graph.node}
    assert "DynamicQuantizeMatMul" in ops
    # Independently: other sentences, the checkpoint through transformers, the graph through ONNX Runtime.
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    sentences = ["Nobody told her the news.", "Her brother waited for her outside the old station until dark."]
    rows = [tok.encode(s).ids for s in sentences]
    width = max(map(len, rows))
    ids = np.array([r + [meta["pad_token_id"]] * (width - len(r)) for r in rows], dtype=np.int64)
    mask = np.array([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=np.int64)
    model = transformers.AutoModel.from_pretrained(TINY / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), output_hidden_states=True)
    reference = [h.numpy() for h in out.hidden_states]
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(meta["outputs"], {"input_ids": ids, "attention_mask": mask})
    err = angle_error([(reference, got, [len(r) for r in rows])])
    assert 0 < err.max_deg <= PRECISION_BOUND["max_deg"] and err.mean_deg <= PRECISION_BOUND["mean_deg"]


def test_the_streaming_quantizer_computes_what_onnxruntimes_quantize_dynamic_does(tmp_path):
    """precision.quantize_int8 writes directly what quantize_dynamic (QInt8, per channel) produces once ONNX
    Runtime has fused it, one weight at a time: both graphs must give the same hidden states."""
    ort = pytest.importorskip("onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import precision

    library, ours = tmp_path / "library.onnx", tmp_path / "ours.onnx"
    quantize_dynamic(TINY / "model.onnx", library, op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8,
                     per_channel=True, extra_options={"MatMulConstBOnly": True})
    precision.quantize_int8(TINY / "model.onnx", ours)
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, 50257, (3, 9), dtype=np.int64), "attention_mask": np.ones((3, 9), dtype=np.int64)}
    a = ort.InferenceSession(str(library), providers=["CPUExecutionProvider"]).run(None, feeds)
    b = ort.InferenceSession(str(ours), providers=["CPUExecutionProvider"]).run(None, feeds)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(y, x, rtol=0, atol=1e-5 * float(np.abs(x).max()))
