"""Every family's tiny random-init preset exports and verifies (tools/export_model.py), and the export is
then checked again here, independently of the tool's own record: the saved PyTorch checkpoint (hf/),
loaded fresh by transformers, against ONNX Runtime on other sentences, fed as the service feeds them.

Needs torch and transformers (the tools venv: make export-test); skipped where they are missing, so
make tools-test (numpy only) collects this file too.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
# torch.onnx warns that the inputs share their dynamic axes' names, which they do on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:# The axis name")
transformers = pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import export_model  # noqa: E402
from families import FAMILIES  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from sublayer_hooks import sublayer_reference  # noqa: E402
from verification import BOUNDS, compare  # noqa: E402

# Not the export's own sentences; lengths from 2 tokens to ~20, right-padded.
SENTENCES = [
    "Nobody told her.",
    "The committee reviewed her proposal twice before the vote on Thursday evening, then adjourned.",
    "Why?",
    "Her brother waited for her outside the station.",
]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return tmp_path_factory.mktemp("exports")


def feeds_for(meta: dict, tok: Tokenizer, sentences):
    """Right padding with model.json's pad id; position_ids 0..seq-1 per row where the graph takes them."""
    rows = [tok.encode(s).ids for s in sentences]
    width = max(map(len, rows))
    feeds = {
        "input_ids": np.array([r + [meta["pad_token_id"]] * (width - len(r)) for r in rows], dtype=np.int64),
        "attention_mask": np.array([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=np.int64),
    }
    if "position_ids" in meta["inputs"]:
        feeds["position_ids"] = np.tile(np.arange(width, dtype=np.int64), (len(rows), 1))
    return feeds, [len(r) for r in rows]


def export_tiny(family: str, exports: Path) -> Path:
    out = exports / family
    if not (out / "model.json").exists():
        export_model.main(["--random-init", "--preset", f"{family}-tiny", "--out", str(out)])
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_tiny_export_verifies_and_matches_transformers(family, exports, capfd):
    out = export_tiny(family, exports)
    said = capfd.readouterr()
    # The export says its stages, and nothing from third parties that means nothing to the user.
    for stage in ("[1/3 load]", "[2/3 export]", "[3/3 verify]"):
        assert stage in said.out, said.out
    assert "torchvision" not in said.out + said.err, said.err
    meta = json.loads((out / "model.json").read_text())
    fam = FAMILIES[family]
    assert meta["family"] == family
    assert meta["verification"]["max_angle_deg"] <= BOUNDS["float32"]["angle_deg"]
    assert meta["inputs"] == ["input_ids", "attention_mask"] + ["position_ids"] * fam.rotary
    assert meta["adds_bos"] == fam.bos_prepended

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    feeds, lengths = feeds_for(meta, tok, SENTENCES)
    if meta["adds_bos"]:
        assert (feeds["input_ids"][:, 0] == meta["bos_token_id"]).all()
    model = transformers.AutoModel.from_pretrained(out / "hf", attn_implementation="eager").eval()
    with torch.no_grad():
        reference = model(
            input_ids=torch.from_numpy(feeds["input_ids"]),
            attention_mask=torch.from_numpy(feeds["attention_mask"]),
            output_hidden_states=True,
            use_cache=False,
        ).hidden_states
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(meta["outputs"], feeds)
    assert len(got) == meta["num_layers"] + 1
    deviation = compare([h.numpy() for h in reference], got, lengths)
    assert deviation.within(BOUNDS["float32"]), deviation.describe()

    if "position_ids" in feeds:
        # Pads' positions never reach a real token: a runtime may give them 0 or keep counting.
        zeroed = {**feeds, "position_ids": feeds["position_ids"] * feeds["attention_mask"]}
        again = session.run(meta["outputs"], zeroed)
        for state, other in zip(got, again, strict=True):
            for row, n in enumerate(lengths):
                np.testing.assert_array_equal(state[row, :n], other[row, :n])


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_a_checkpoint_folder_exports_the_same_model(family, exports):
    """--model <folder> (the path real checkpoints take, offline): the random-init export's hf/ (weights,
    config, tokenizer) exports to the same graph, tokenizer and family fields; llama and opt are the
    families whose tokenizers prepend BOS, so their post-processors survive transformers' round trip."""
    first = export_tiny(family, exports)
    again = exports / f"{family}-from-folder"
    export_model.main(["--model", str(first / "hf"), "--out", str(again)])
    a, b = (json.loads((d / "model.json").read_text()) for d in (first, again))
    assert b["source"] == str(first / "hf")
    for key in ["weights_sha256", "inputs", "family", "bos_token_id", "adds_bos", "pad_token_id", "eos_token_id", "hidden_states"]:
        assert a[key] == b[key], key
    # The same tokenizer (the file's layout may differ: transformers writes it indented).
    assert json.loads((first / "tokenizer.json").read_text()) == json.loads((again / "tokenizer.json").read_text())


def test_gather_outputs_with_position_ids(exports):
    """--gather-outputs on a rotary family: position_ids then gather_index; the export checks the gathered
    vectors against slicing the full outputs, bit for bit."""
    out = exports / "llama-gather"
    export_model.main(["--random-init", "--preset", "llama-tiny", "--gather-outputs", "--out", str(out)])
    meta = json.loads((out / "model.json").read_text())
    assert meta["inputs"] == ["input_ids", "attention_mask", "position_ids", "gather_index"]
    assert meta["outputs"][-1] == "gathered_hidden_states"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_sublayer_states_match_pytorch_hooks(family, exports):
    """--sublayers: resid_mid_1 ..= resid_mid_L and final_block_output out of ONNX Runtime equal independent
    PyTorch hooks (block output - MLP output; the last block's output) by angle, on other sentences than the
    export's; the hidden states are those of the export without --sublayers, bit for bit."""
    out = exports / f"{family}-sublayers"
    export_model.main(["--random-init", "--preset", f"{family}-tiny", "--sublayers", "--out", str(out)])
    meta = json.loads((out / "model.json").read_text())
    num_layers = meta["num_layers"]
    hidden = [f"hidden_state_{i}" for i in range(num_layers + 1)]
    sub = [f"resid_mid_{i}" for i in range(1, num_layers + 1)] + ["final_block_output"]
    assert meta["outputs"] == hidden + sub
    assert meta["sublayers"]["states"] == ["resid_mid", "final_block_output"]
    assert meta["sublayers"]["parallel_residual"] == (family == "gpt_neox")
    assert meta["verification"]["vectors"] > 0 and meta["verification"]["max_angle_deg"] <= BOUNDS["float32"]["angle_deg"]

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    feeds, lengths = feeds_for(meta, tok, SENTENCES)
    model = transformers.AutoModel.from_pretrained(out / "hf", attn_implementation="eager").eval()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(sub, feeds)
    deviation = compare(sublayer_reference(model, family, feeds), got, lengths)
    assert deviation.within(BOUNDS["float32"]), deviation.describe()

    plain = ort.InferenceSession(str(export_tiny(family, exports) / "model.onnx"), providers=["CPUExecutionProvider"])
    for a, b in zip(session.run(hidden, feeds), plain.run(hidden, feeds), strict=True):
        for row, n in enumerate(lengths):
            np.testing.assert_allclose(a[row, :n], b[row, :n], rtol=1e-5, atol=1e-6)


def test_sublayers_with_gather_outputs(exports):
    """--sublayers with --gather-outputs: gather_index's state k counts the hidden states, then the sub-layer
    states (the export checks the gathered vectors against the full outputs, bit for bit)."""
    out = exports / "gpt2-sublayers-gather"
    export_model.main(["--random-init", "--preset", "gpt2-tiny", "--sublayers", "--gather-outputs", "--out", str(out)])
    meta = json.loads((out / "model.json").read_text())
    assert meta["outputs"][-2:] == ["final_block_output", "gathered_hidden_states"]
