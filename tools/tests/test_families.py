"""The family table, the random-init presets and model.json's family fields (tools/families.py), without torch."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import families  # noqa: E402
from families import FAMILIES, PRESETS, bos_handling, choose_pad, graph_inputs, manifest, random_init_config  # noqa: E402

ISSUE_FAMILIES = ["gpt2", "gpt_neo", "gpt_neox", "opt", "llama", "mistral", "qwen2", "qwen3", "gemma"]
ROTARY = {"gpt_neox", "llama", "mistral", "qwen2", "qwen3", "gemma"}


def test_every_family_of_the_issue_has_a_tiny_preset():
    assert sorted(FAMILIES) == sorted(ISSUE_FAMILIES)
    for name in ISSUE_FAMILIES:
        assert PRESETS[f"{name}-tiny"].family == name
    assert all(p.family in FAMILIES for p in PRESETS.values())


def test_presets_at_the_cost_table_shapes():
    assert random_init_config("pythia-1.4b")[0] == "gpt_neox"
    llama = random_init_config("llama-3.2-1b")[1]
    assert (llama["num_hidden_layers"], llama["hidden_size"], llama["num_key_value_heads"], llama["vocab_size"]) == (16, 2048, 8, 128256)
    qwen = random_init_config("qwen2.5-1.5b")[1]
    assert (qwen["num_hidden_layers"], qwen["hidden_size"], qwen["intermediate_size"], qwen["vocab_size"]) == (28, 1536, 8960, 151936)


def test_the_old_gpt2_preset_names_still_work():
    assert PRESETS["tiny"] == PRESETS["gpt2-tiny"]
    assert PRESETS["gpt2-xl"].config == {"n_layer": 48, "n_embd": 1600, "n_head": 25}


@pytest.mark.parametrize("family", ISSUE_FAMILIES)
def test_graph_inputs_in_order(family):
    base = ["input_ids", "attention_mask"] + ["position_ids"] * (family in ROTARY)
    assert graph_inputs(family, gather=False) == base
    assert graph_inputs(family, gather=True) == base + ["gather_index"]
    assert FAMILIES[family].rotary == (family in ROTARY)


def test_pad_comes_from_the_tokenizer_then_the_config_then_eos_then_zero():
    assert choose_pad(1, 7, 2) == (1, "tokenizer")
    assert choose_pad(None, 7, 2) == (7, "config")
    assert choose_pad(None, None, 50256) == (50256, "eos")
    assert choose_pad(None, None, None) == (0, "zero")
    assert choose_pad(None, 0, 2) == (0, "config")  # id 0 is an id, not "absent"


def test_bos_is_read_from_what_the_post_processor_adds():
    assert bos_handling([40, 2497], [40, 2497], 50256) == (50256, False)
    assert bos_handling([1, 432, 374], [432, 374], 1) == (1, True)
    assert bos_handling([1, 432], [432], None) == (1, True)  # the tokenizer's, whatever the config says
    with pytest.raises(ValueError, match="only a leading BOS"):
        bos_handling([1, 432, 2], [432], 1)  # an appended EOS
    with pytest.raises(ValueError, match="only a leading BOS"):
        bos_handling([432, 2], [432], 1)


def ids(**over):
    return {"bos_token_id": 50256, "adds_bos": False, "pad": (50256, "eos"), "eos_token_id": 50256, **over}


SHAPE = {"num_layers": 6, "hidden_size": 32, "num_heads": 4, "vocab_size": 50257, "max_positions": 1024}
REST = {"dtype": "float32", "source": "random-init:tiny:seed=0", "exporter": {}, "verification": {}, "optimized": False}


def test_a_gpt2_manifest_keeps_every_field_older_servers_read():
    outputs = [f"hidden_state_{i}" for i in range(7)]
    meta = manifest(name="m", shape=SHAPE, family="gpt2", ids=ids(), gather=False, outputs=outputs, **REST)
    bundled = json.loads((families.REPO_ROOT / "models" / "gpt2-tiny-random" / "model.json").read_text())
    old_fields = [k for k in bundled if k != "weights_sha256"]
    assert list(meta)[: len(old_fields)] == old_fields
    for key in ["num_layers", "hidden_size", "num_heads", "vocab_size", "max_positions", "pad_token_id", "eos_token_id", "inputs", "outputs"]:
        assert meta[key] == bundled[key], key
    assert (meta["family"], meta["bos_token_id"], meta["adds_bos"], meta["pad_token_source"]) == ("gpt2", 50256, False, "eos")
    json.dumps(meta)


def test_a_llama_manifest_names_position_ids_bos_and_hidden_state_semantics():
    outputs = [f"hidden_state_{i}" for i in range(5)] + ["gathered_hidden_states"]
    meta = manifest(
        name="m", shape=SHAPE, family="llama", ids=ids(bos_token_id=1, adds_bos=True, pad=(2, "eos"), eos_token_id=2), gather=True, outputs=outputs, **REST
    )
    assert meta["inputs"] == ["input_ids", "attention_mask", "position_ids", "gather_index"]
    assert (meta["bos_token_id"], meta["adds_bos"], meta["pad_token_id"], meta["pad_token_source"]) == (1, True, 2, "eos")
    assert meta["hidden_states"] == {"first": families.EMBEDDINGS, "last": families.AFTER_FINAL_NORM}
    assert "sqrt" in manifest(name="g", shape=SHAPE, family="gemma", ids=ids(), gather=False, outputs=[], **REST)["hidden_states"]["first"]


def test_random_init_ids_match_the_tokenizer_files():
    """The presets' bos/eos and vocabulary size are the ids the committed tokenizer files hold."""
    for family, fam in FAMILIES.items():
        _, cfg = random_init_config(f"{family}-tiny")
        spec = json.loads(families.random_init_tokenizer(family).read_text())
        vocab = spec["model"]["vocab"]
        added = {t["content"]: t["id"] for t in spec["added_tokens"]}
        assert len(vocab) == cfg["vocab_size"], family
        assert set(added.values()) <= {cfg["bos_token_id"], cfg["eos_token_id"], 0}, family
        if fam.tokenizer == "metaspace":
            assert (added["<s>"], added["</s>"]) == (cfg["bos_token_id"], cfg["eos_token_id"]) == (1, 2)
            assert spec["pre_tokenizer"]["type"] == "Metaspace" and spec["pre_tokenizer"]["replacement"] == "▁"
            assert spec["post_processor"]["single"][0] == {"SpecialToken": {"id": "<s>", "type_id": 0}}
            assert vocab["<0x41>"] == 3 + 0x41  # byte fallback ids 3..258
        else:
            assert added["<|endoftext|>"] == cfg["bos_token_id"] == cfg["eos_token_id"] == 50256


def test_every_preset_the_docs_name_exists():
    """The family table of docs/src/families.md names a tiny preset per family: each must be one."""
    import re

    page = (Path(__file__).resolve().parents[2] / "docs" / "src" / "families.md").read_text(encoding="utf-8")
    named = re.findall(r"^\| [^|]+ \| `([a-z0-9_.-]+-tiny)` \|", page, flags=re.M)
    assert len(named) == len(FAMILIES), named
    assert {PRESETS[name].family for name in named} == set(FAMILIES)
    assert PRESETS["pythia-tiny"] == PRESETS["gpt_neox-tiny"]
