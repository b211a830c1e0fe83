"""The decoder-only families the export supports, their random-init presets, and the model.json fields
that describe a family to the runtime (family, inputs, BOS, padding, hidden-state semantics).

Plain Python (no torch), so tools/tests test it in the client's venv (make tools-test).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# GPT-2's byte-level BPE (the bundled model's copy of /work/shared/gpt2-tokenizer) for the byte-level families.
BYTE_LEVEL_TOKENIZER = REPO_ROOT / "models" / "gpt2-tiny-random" / "tokenizer.json"
# Trained here by tools/train_tokenizer.py: SentencePiece-style (▁ word markers, byte fallback, BOS <s> = 1).
METASPACE_TOKENIZER = REPO_ROOT / "tools" / "tokenizers" / "metaspace-bpe.json"
GPT2_EOS_ID = 50256
GPT2_VOCAB_SIZE = 50257
METASPACE_VOCAB_SIZE = 8000
METASPACE_BOS_ID, METASPACE_EOS_ID = 1, 2

BASE_INPUTS = ["input_ids", "attention_mask"]
POSITION_INPUT = "position_ids"
GATHER_INPUT = "gather_index"

EMBEDDINGS = "the input of the first block: token embeddings"
AFTER_FINAL_NORM = "after the final norm"


@dataclass(frozen=True)
class Family:
    """How one Hugging Face model_type is exported.

    blocks / final_norm: module paths in the base model (AutoModel, no LM head) the export uses to check
    what hidden_states holds (the input of the first block, each block's output, the final norm's output).
    rotary: positions enter only through rotary embeddings; the graph then takes position_ids
    (0..len-1 per row under right padding), so positions are what the runtime says, not inferred.
    tokenizer: the random-init presets' tokenizer (byte-level: GPT-2's; metaspace: the trained one).
    bos_prepended: the random-init tokenizer prepends BOS, as the family's real tokenizers do.
    """

    model_type: str
    blocks: str
    final_norm: str
    rotary: bool
    tokenizer: str  # "byte-level" | "metaspace"
    bos_prepended: bool
    first: str = EMBEDDINGS
    last: str = AFTER_FINAL_NORM
    tiny: dict = field(default_factory=dict)


# Tiny shapes: a few layers, hidden 32, 4 heads (grouped-query attention with 2 key/value heads where the
# family has it), so every family exports and verifies in seconds. Attention windows (GPT-Neo's local
# layers, Mistral's sliding window) are 8 tokens, shorter than the verification's longest sentence.
LEARNED_POSITIONS = "the input of the first block: token + learned position embeddings"
# Llama-like: pre-norm blocks in .layers, RMSNorm .norm last, rotary positions, grouped-query attention.
LLAMA_LIKE_TINY = {"num_hidden_layers": 4, "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64}


def _llama_like(model_type: str, tokenizer: str, **tiny) -> Family:
    metaspace = tokenizer == "metaspace"  # SentencePiece families prepend BOS; Qwen's byte-level BPE does not
    first = EMBEDDINGS + (" scaled by sqrt(hidden_size)" if model_type == "gemma" else "")
    return Family(model_type, "layers", "norm", True, tokenizer, metaspace, first=first, tiny={**LLAMA_LIKE_TINY, **tiny})


FAMILIES = {
    f.model_type: f
    for f in [
        Family("gpt2", "h", "ln_f", False, "byte-level", False, first=LEARNED_POSITIONS, tiny={"n_layer": 6, "n_embd": 32, "n_head": 4}),
        Family(
            "gpt_neo",
            "h",
            "ln_f",
            False,
            "byte-level",
            False,
            first=LEARNED_POSITIONS,
            tiny={"num_layers": 4, "hidden_size": 32, "num_heads": 4, "attention_types": [[["global", "local"], 2]], "window_size": 8},
        ),
        Family(
            "gpt_neox",
            "layers",
            "final_layer_norm",
            True,
            "byte-level",
            False,
            tiny={"num_hidden_layers": 4, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64, "rotary_pct": 0.25},
        ),
        Family(
            "opt",
            "decoder.layers",
            "decoder.final_layer_norm",
            False,
            "byte-level",
            True,  # OPT's tokenizer prepends </s> as BOS
            first=LEARNED_POSITIONS + " (positions from the attention mask)",
            tiny={"num_hidden_layers": 4, "hidden_size": 32, "num_attention_heads": 4, "ffn_dim": 64, "word_embed_proj_dim": 32},
        ),
        _llama_like("llama", "metaspace"),
        _llama_like("mistral", "metaspace", sliding_window=8),
        _llama_like("qwen2", "byte-level"),
        _llama_like("qwen3", "byte-level", head_dim=8),
        _llama_like("gemma", "metaspace", head_dim=8),
    ]
}


#: Names a user would guess from the families' usual names (GPT-Neo, GPT-NeoX/Pythia, Qwen2.5), for `--preset NAME-tiny`.
FAMILY_ALIASES = {"gpt-neo": "gpt_neo", "gpt-neox": "gpt_neox", "pythia": "gpt_neox", "qwen2.5": "qwen2"}


@dataclass(frozen=True)
class Preset:
    family: str
    config: dict  # Hugging Face config fields beyond the family's defaults and the tokenizer's ids


def _presets() -> dict[str, Preset]:
    presets = {f"{name}-tiny": Preset(name, fam.tiny) for name, fam in FAMILIES.items()}
    presets["tiny"] = presets["gpt2-tiny"]  # the bundled model's name for it, kept for existing commands
    # The names the docs give the families (docs/src/families.md), beside Hugging Face's model_type.
    for alias, model_type in FAMILY_ALIASES.items():
        presets[f"{alias}-tiny"] = presets[f"{model_type}-tiny"]
    presets["gpt2"] = Preset("gpt2", {"n_layer": 12, "n_embd": 768, "n_head": 12})
    presets["gpt2-xl"] = Preset("gpt2", {"n_layer": 48, "n_embd": 1600, "n_head": 25})
    # The sizes people use, for the export's cost (tools/README.md); shapes from each model's config.json.
    presets["pythia-1.4b"] = Preset(
        "gpt_neox",
        {
            "num_hidden_layers": 24,
            "hidden_size": 2048,
            "num_attention_heads": 16,
            "intermediate_size": 8192,
            "rotary_pct": 0.25,
            "max_position_embeddings": 2048,
            "vocab_size": 50304,
        },
    )
    presets["llama-3.2-1b"] = Preset(
        "llama",
        {
            "num_hidden_layers": 16,
            "hidden_size": 2048,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "intermediate_size": 8192,
            "head_dim": 64,
            "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            "vocab_size": 128256,
        },
    )
    presets["qwen2.5-1.5b"] = Preset(
        "qwen2",
        {
            "num_hidden_layers": 28,
            "hidden_size": 1536,
            "num_attention_heads": 12,
            "num_key_value_heads": 2,
            "intermediate_size": 8960,
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "vocab_size": 151936,
        },
    )
    return presets


PRESETS = _presets()


def random_init_config(preset_name: str) -> tuple[str, dict]:
    """(model_type, config fields) of a random-init preset: the shape, and the token ids of its tokenizer."""
    preset = PRESETS[preset_name]
    fam = FAMILIES[preset.family]
    if fam.tokenizer == "metaspace":
        ids = {"vocab_size": METASPACE_VOCAB_SIZE, "bos_token_id": METASPACE_BOS_ID, "eos_token_id": METASPACE_EOS_ID}
    else:
        ids = {"vocab_size": GPT2_VOCAB_SIZE, "bos_token_id": GPT2_EOS_ID, "eos_token_id": GPT2_EOS_ID}
    # No pad id in the config: the export picks one (choose_pad), as for a real model without one.
    return preset.family, {**ids, "pad_token_id": None, **preset.config}


def random_init_tokenizer(family: str) -> Path:
    return METASPACE_TOKENIZER if FAMILIES[family].tokenizer == "metaspace" else BYTE_LEVEL_TOKENIZER


def graph_inputs(family: str, gather: bool) -> list[str]:
    """The ONNX inputs, in order: input_ids, attention_mask, then position_ids (rotary families), then gather_index."""
    return BASE_INPUTS + [POSITION_INPUT] * FAMILIES[family].rotary + [GATHER_INPUT] * gather


def choose_pad(tokenizer_pad: int | None, config_pad: int | None, eos: int | None) -> tuple[int, str]:
    """The id right padding uses, and where it came from. Under right padding with the attention mask the
    pad id never reaches a real token's vector, so a model without one pads with EOS (the notebook's
    choice for GPT-2), else 0; it only has to be inside the vocabulary."""
    for value, source in ((tokenizer_pad, "tokenizer"), (config_pad, "config"), (eos, "eos")):
        if value is not None:
            return int(value), source
    return 0, "zero"


def bos_handling(with_specials: list[int], without_specials: list[int], config_bos: int | None) -> tuple[int | None, bool]:
    """(bos_token_id, adds_bos) from one text encoded with and without the tokenizer's post-processor.

    Raises ValueError for a post-processor that adds anything but one leading token (an appended EOS
    would become a token the analysis sees)."""
    if with_specials == without_specials:
        return config_bos, False
    if len(with_specials) == len(without_specials) + 1 and with_specials[1:] == without_specials:
        return with_specials[0], True
    raise ValueError(
        f"the tokenizer's post-processor turns {without_specials} into {with_specials}: only a leading BOS "
        "is supported; remove the other special tokens from tokenizer.json's post_processor"
    )


def manifest(*, name: str, shape: dict, family: str, ids: dict, gather: bool, outputs: list[str], **rest) -> dict:
    """model.json: the fields every export has had (GPT-2's meaning where the family ones are absent), then
    the family's. shape: num_layers, hidden_size, num_heads, vocab_size, max_positions. ids: bos_token_id,
    adds_bos, pad (id, source), eos_token_id. rest: dtype, source, exporter, verification, optimized."""
    fam = FAMILIES[family]
    return {
        "format_version": 1,
        "name": name,
        **shape,
        "pad_token_id": ids["pad"][0],
        "eos_token_id": ids["eos_token_id"],
        "inputs": graph_inputs(family, gather),
        "outputs": outputs,
        **rest,
        "family": family,
        "bos_token_id": ids["bos_token_id"],
        "adds_bos": ids["adds_bos"],
        "pad_token_source": ids["pad"][1],
        "hidden_states": {"first": fam.first, "last": fam.last},
    }
