"""Plain results: dataclasses and numpy arrays instead of protobuf messages."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence, Tuple

import numpy as np

from ._pb import pb

#: The third axis of every angle tensor.
CONDITIONS: Tuple[str, str, str] = ("target", "non_target", "shuffled")
#: The last axis of ``shuffle_draws``: the shuffled angle of (layer, sentence) is the angle between
#: hidden_state[layer_v][position_v] and hidden_state[layer_u][position_u] of that sentence.
DRAW_FIELDS: Tuple[str, str, str, str] = ("layer_v", "position_v", "layer_u", "position_u")

_UNITS = {pb.ANGLE_UNIT_DEGREES: "degrees", pb.ANGLE_UNIT_RADIANS: "radians", pb.ANGLE_UNIT_UNSPECIFIED: "degrees"}
_CORRECTIONS = {
    pb.CORRECTION_UNSPECIFIED: "bonferroni",
    pb.CORRECTION_BONFERRONI: "bonferroni",
    pb.CORRECTION_HOLM: "holm",
    pb.CORRECTION_BENJAMINI_HOCHBERG: "benjamini-hochberg",
    pb.CORRECTION_NONE: "none",
}
_DIRECTIONS = {
    pb.DIRECTION_NOT_SIGNIFICANT: "not_significant",
    pb.DIRECTION_A_GREATER: "a_greater",
    pb.DIRECTION_B_GREATER: "b_greater",
}
_LAYER_FLAGS = {
    pb.LAYER_FLAG_NONE: "",
    pb.LAYER_FLAG_ZERO_VARIANCE: "zero_variance",
}
_GROUP_FLAGS = {
    pb.GROUP_FLAG_NONE: "",
    pb.GROUP_FLAG_ZERO_VARIANCE: "zero_variance",
    pb.GROUP_FLAG_TOO_FEW_SENTENCES: "too_few_sentences",
}


def tensor(message: "pb.Tensor", ndim: int) -> np.ndarray:
    """A row-major ``Tensor`` as a float32 array of its shape (values exactly as the server sent them)."""
    shape = tuple(int(d) for d in message.shape)
    if len(shape) != ndim:
        raise ValueError(f"expected a {ndim}-dimensional tensor, got shape {list(shape)}")
    values = np.asarray(message.values, dtype=np.float32)
    if values.size != int(np.prod(shape)):
        raise ValueError(f"tensor shape {list(shape)} does not match its {values.size} values")
    return values.reshape(shape)


def draws(messages: Sequence["pb.ShuffleDraw"], layers: int, sentences: int) -> np.ndarray:
    """``[layer][sentence]`` row-major draws as an int64 array ``[layers, sentences, 4]`` (see DRAW_FIELDS)."""
    out = np.array([(d.layer_v, d.position_v, d.layer_u, d.position_u) for d in messages], dtype=np.int64)
    if out.size == 0:
        out = out.reshape(0, 4)
    if out.shape[0] != layers * sentences:
        raise ValueError(f"{out.shape[0]} shuffle draws for {layers} layers x {sentences} sentences")
    return out.reshape(layers, sentences, 4)


@dataclass(frozen=True)
class ModelInfo:
    """The served model's shape (``GetModelInfo``)."""

    model_name: str
    num_layers: int
    num_hidden_states: int
    hidden_size: int
    vocab_size: int
    max_positions: int
    execution_provider: str
    dtype: str
    source: str
    #: SHA-256 of the weight files: replicas serving the same weights report the same value.
    weights_sha256: str = ""
    #: Hugging Face's ``model_type`` ("gpt2", "llama", ...).
    family: str = ""
    #: The tokenizer's BOS token, if any; ``adds_bos``: every sentence starts with it (positions count it).
    bos_token_id: Optional[int] = None
    adds_bos: bool = False
    pad_token_id: int = 0
    #: Which hidden states are before or after the final norm, as the export recorded it (JSON text).
    hidden_states: str = ""
    #: The graph also returns sub-layer states (``steps="sublayers"`` is served); what they are (JSON text).
    sublayers: bool = False
    sublayer_states: str = ""

    @classmethod
    def from_pb(cls, m: "pb.ModelInfo") -> ModelInfo:
        return cls(
            model_name=m.model_name,
            num_layers=m.num_layers,
            num_hidden_states=m.num_hidden_states,
            hidden_size=m.hidden_size,
            vocab_size=m.vocab_size,
            max_positions=m.max_positions,
            execution_provider=m.execution_provider,
            dtype=m.dtype,
            source=m.source,
            weights_sha256=m.weights_sha256,
            family=m.family,
            bos_token_id=m.bos_token_id if m.HasField("bos_token_id") else None,
            adds_bos=m.adds_bos,
            pad_token_id=m.pad_token_id,
            hidden_states=m.hidden_states,
            sublayers=m.sublayers,
            sublayer_states=m.sublayer_states,
        )


@dataclass(frozen=True)
class Tokenized:
    """One text's tokens: ids, token strings, and byte offsets ``[start, end)`` in its UTF-8 encoding."""

    text: str
    ids: Tuple[int, ...]
    tokens: Tuple[str, ...]
    offsets: Tuple[Tuple[int, int], ...]

    @classmethod
    def from_pb(cls, text: str, m: "pb.TokenizedText") -> Tokenized:
        return cls(
            text=text,
            ids=tuple(m.ids),
            tokens=tuple(m.tokens),
            offsets=tuple(zip(m.offset_starts, m.offset_ends)),
        )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def char_offsets(self) -> Tuple[Tuple[int, int], ...]:
        """The offsets in characters (Python ``str`` indices), as ``target_spans`` count them; a
        byte offset inside a character (GPT-2 splits some characters' bytes) rounds down to it."""
        encoded = self.text.encode("utf-8")

        def chars(byte: int) -> int:
            return len(encoded[:byte].decode("utf-8", errors="ignore"))

        return tuple((chars(a), chars(b)) for a, b in self.offsets)


@dataclass(frozen=True)
class SentenceReport:
    """Where the target and non-target were found in one row: a sentence (``index``, its corpus
    index), or one occurrence in it. Positions are 0-based tokens: the sub-token standing for each
    word (the last one for a mean); ``target_tokens`` and ``non_target_tokens`` are the whole words'
    ``(start, end)`` token ranges."""

    index: int
    num_tokens: int
    target_position: int
    non_target_position: int
    #: Which occurrence of the target in the sentence, from 1 (1 for a span).
    occurrence: int = 1
    target_tokens: Tuple[int, int] = (0, 0)
    non_target_tokens: Tuple[int, int] = (0, 0)

    @classmethod
    def from_pb(cls, m: "pb.SentenceReport") -> SentenceReport:
        return cls(
            m.index,
            m.num_tokens,
            m.target_position,
            m.non_target_position,
            m.occurrence,
            (m.target_start, m.target_end),
            (m.non_target_start, m.non_target_end),
        )


@dataclass(frozen=True)
class AngleMatrixSums:
    """Exact sums over rows of ``round(M * 2**64)`` of pairwise angle matrices: they add up exactly
    (:meth:`merge`) across pieces of a corpus, and :meth:`mean` is the server's mean, bit for bit."""

    n: int
    size: int
    #: ``size * size`` Python ints, row-major.
    sums_exact: Tuple[int, ...] = ()

    @classmethod
    def from_pb(cls, m: "pb.AngleMatrixSums") -> AngleMatrixSums:
        raw = bytes(m.sums_exact)
        if len(raw) != m.size * m.size * 16:
            raise ValueError(f"{len(raw)} bytes of matrix sums for side {m.size}")
        sums = tuple(int.from_bytes(raw[k : k + 16], "big", signed=True) for k in range(0, len(raw), 16))
        return cls(m.n, m.size, sums)

    def merge(self, other: AngleMatrixSums) -> AngleMatrixSums:
        """The sums of both sets of rows (exact integer addition)."""
        if self.n == 0:
            return other
        if other.n and other.size != self.size:
            raise ValueError(f"cannot merge matrices of side {other.size} into side {self.size}")
        summed = tuple(a + b for a, b in zip(self.sums_exact, other.sums_exact)) if other.n else self.sums_exact
        return AngleMatrixSums(self.n + other.n, self.size, summed)

    def mean(self) -> np.ndarray:
        """``[size, size]`` float64: sum / 2**64 / n, rounded as src/analysis/trajectory.rs does."""
        scale = 2.0**-64 / float(self.n)
        return np.array([float(x) * scale for x in self.sums_exact], dtype=np.float64).reshape(self.size, self.size)


def cumulative_angles(matrix: np.ndarray) -> np.ndarray:
    """The cumulative angle from the embedding, ``C[l] = sum over k <= l of M[k-1, k]`` (``C[0] = 0``)."""
    steps = np.diagonal(np.asarray(matrix, dtype=np.float64), offset=1)
    return np.concatenate([[0.0], np.cumsum(steps)])


@dataclass(frozen=True)
class AllLayers:
    """The target across all layers (``all_layers=True``): angles between its hidden states i and j
    (0 = embeddings), in the result's unit. float32 as sent; ``sums`` are the exact sums behind the
    mean (merge pieces of a corpus with them)."""

    #: ``[L+1, L+1]``: the mean over rows, symmetric, zero diagonal.
    mean_matrix: np.ndarray
    #: ``[L+1]``: the cumulative angle of the mean matrix (the mean of the rows' cumulative angles).
    mean_cumulative: np.ndarray
    sums: AngleMatrixSums
    #: ``[rows, L+1, L+1]`` with ``row_matrices=True``, else None.
    row_matrices: Optional[np.ndarray] = None

    @classmethod
    def from_pb(cls, m: "pb.AllLayers") -> AllLayers:
        return cls(
            mean_matrix=tensor(m.mean_matrix, 2) if m.HasField("mean_matrix") else np.zeros((0, 0), np.float32),
            mean_cumulative=tensor(m.mean_cumulative, 1) if m.HasField("mean_cumulative") else np.zeros(0, np.float32),
            sums=AngleMatrixSums.from_pb(m.sums) if m.HasField("sums") else AngleMatrixSums(0, 0),
            row_matrices=tensor(m.row_matrices, 3) if m.HasField("row_matrices") else None,
        )

    @classmethod
    def from_sums(cls, sums: AngleMatrixSums, row_matrices: Optional[np.ndarray] = None) -> AllLayers:
        """The mean and cumulative of merged sums, as the server computes them."""
        mean = sums.mean()
        return cls(mean.astype(np.float32), cumulative_angles(mean).astype(np.float32), sums, row_matrices)

    def to_frame(self) -> "Any":
        """The mean matrix as a tidy long pandas DataFrame: from_layer, to_layer, condition, angle
        (hidden states 0..L, 0 = embeddings; the condition is the target's)."""
        states = self.mean_matrix.shape[0]
        return long_frame(
            self.mean_matrix[..., None],
            [{"from_layer": np.arange(states)}, {"to_layer": np.arange(states)}, {"condition": ["target"]}],
            "angle",
        )


@dataclass(frozen=True)
class SublayerRotations:
    """``steps="sublayers"``: ``angles[l, step, row, c]`` across layer ``l + 1``'s attention step
    (step 0: hidden state l -> resid_mid) and MLP step (step 1: -> the block's output, the last
    layer's before the final norm), conditions target and non_target; ``layer_means[l, step, c]``."""

    angles: Optional[np.ndarray]
    layer_means: Optional[np.ndarray]
    steps: Tuple[str, ...] = ("attention", "mlp")
    conditions: Tuple[str, ...] = ("target", "non_target")
    #: Per condition, the exact sums of the step angles per step (``layers[2 l + step]``): merged
    #: across chunks and replicas by integer addition, ``layer_means`` are their means.
    condition_statistics: Tuple["ConditionStatistics", ...] = ()

    @classmethod
    def from_pb(cls, m: "pb.SublayerRotations") -> SublayerRotations:
        return cls(
            angles=tensor(m.angles, 4) if m.HasField("angles") else None,
            layer_means=tensor(m.layer_means, 3) if m.HasField("layer_means") else None,
            steps=tuple(m.steps),
            conditions=tuple(m.conditions),
            condition_statistics=tuple(ConditionStatistics.from_pb(c) for c in m.condition_statistics),
        )

    def to_frame(self, sentences: Sequence[SentenceReport] = ()) -> "Any":
        """The step angles as a tidy long pandas DataFrame: sentence, occurrence, layer, step,
        condition, angle (``sentences``: the result's reports, e.g. ``result.sentences``)."""
        if self.angles is None:
            raise ValueError("no per-row step angles in this result")
        layers, steps, rows, conds = self.angles.shape
        return long_frame(
            np.transpose(self.angles, (2, 0, 1, 3)),
            [
                row_labels(sentences, rows),
                {"layer": np.arange(1, layers + 1)},
                {"step": list(self.steps)[:steps]},
                {"condition": list(self.conditions)[:conds]},
            ],
            "angle",
        )


@dataclass(frozen=True)
class Norms:
    """``norms=True``: ``norms[state, row, c]`` (hidden states 0..L, then resid_mid_1..L and
    final_block_output with sub-layer states), ``growth[l, row, c]`` = norm at hidden state l+1 / at l,
    conditions target and non_target; means over rows from exact sums (``*_statistics``)."""

    norms: Optional[np.ndarray]
    growth: Optional[np.ndarray]
    mean_norms: Optional[np.ndarray]
    mean_growth: Optional[np.ndarray]
    norm_statistics: Tuple["ConditionStatistics", ...] = ()
    growth_statistics: Tuple["ConditionStatistics", ...] = ()

    @classmethod
    def from_pb(cls, m: "pb.Norms") -> Norms:
        def t(field: str, ndim: int) -> Optional[np.ndarray]:
            return tensor(getattr(m, field), ndim) if m.HasField(field) else None

        return cls(
            norms=t("norms", 3),
            growth=t("growth", 3),
            mean_norms=t("mean_norms", 2),
            mean_growth=t("mean_growth", 2),
            norm_statistics=tuple(ConditionStatistics.from_pb(c) for c in m.norm_statistics),
            growth_statistics=tuple(ConditionStatistics.from_pb(c) for c in m.growth_statistics),
        )

    def to_frame(self, sentences: Sequence[SentenceReport] = ()) -> "Any":
        """The norms as a tidy long pandas DataFrame: sentence, occurrence, state, condition, norm
        (states named hidden_0..hidden_L, then resid_mid_1..L and final_block_output)."""
        if self.norms is None:
            raise ValueError("no per-row norms in this result")
        states, rows, conds = self.norms.shape
        layers = self.growth.shape[0] if self.growth is not None else states - 1
        return long_frame(
            np.transpose(self.norms, (1, 0, 2)),
            [row_labels(sentences, rows), {"state": state_names(states, layers)}, {"condition": ["target", "non_target"][:conds]}],
            "norm",
        )


@dataclass(frozen=True)
class Vectors:
    """``vectors_out``: one chunk's vectors on the wire. ``data[i]`` holds condition ``conditions[i]``'s
    (0 target, 1 non_target) ``[rows, states, hidden]`` vectors (float32, or float16 rounded by the
    server), the states axis being state indices ``states`` (hidden states 0..L, then a model's
    sub-layer states, as ``Norms``)."""

    states: Tuple[int, ...]
    conditions: Tuple[int, ...]
    data: Tuple[np.ndarray, ...]

    @classmethod
    def from_pb(cls, m: "pb.Vectors") -> Vectors:
        dtype = "<f2" if m.dtype == pb.VECTOR_DTYPE_FLOAT16 else "<f4"
        shape = tuple(m.shape)
        return cls(
            states=tuple(m.states),
            conditions=tuple(m.conditions),
            data=tuple(np.frombuffer(d, dtype=dtype).reshape(shape) for d in m.data),
        )


@dataclass(frozen=True)
class SkippedSentence:
    """A sentence left out of the analysis (``skip_invalid=True``): its corpus index, a reason code
    (``TARGET_NOT_FOUND``, ``TOO_LONG``, …) and the reason in words."""

    index: int
    reason: str
    message: str

    @classmethod
    def from_pb(cls, m: "pb.SkippedSentence") -> SkippedSentence:
        return cls(m.index, m.reason, m.message)


def skipped_frame(skipped: Sequence[SkippedSentence]) -> "Any":
    """The skipped sentences as a pandas DataFrame (sentence, reason, message)."""
    pd = _pandas()
    return pd.DataFrame(
        {"sentence": [s.index for s in skipped], "reason": [s.reason for s in skipped], "message": [s.message for s in skipped]}
    )


def _pandas() -> "Any":
    try:
        import pandas
    except ImportError:  # pragma: no cover - pandas is the optional extra "frames"
        raise ImportError("to_frame() needs pandas: pip install 'rotations-client[frames]'") from None
    return pandas


def long_frame(values: np.ndarray, axes: Sequence[Any], value: str) -> "Any":
    """The one builder of tidy long tables: ``values`` of any shape, one line per element in
    row-major order. ``axes`` has one mapping per dimension, column name -> that dimension's labels
    (several columns may label one dimension, e.g. a row's sentence and occurrence)."""
    pd = _pandas()
    values = np.asarray(values)
    if len(axes) != values.ndim:
        raise ValueError(f"{len(axes)} label sets for {values.ndim} dimensions")
    columns = {}
    for k, labels in enumerate(axes):
        inner, outer = int(np.prod(values.shape[k + 1 :])), int(np.prod(values.shape[:k]))
        for name, column in labels.items():
            column = np.asarray(column)
            if len(column) != values.shape[k]:
                raise ValueError(f"{len(column)} labels for {name!r} but that dimension has {values.shape[k]}")
            columns[name] = np.tile(np.repeat(column, inner), outer)
    columns[value] = values.reshape(-1)
    return pd.DataFrame(columns)


def row_labels(sentences: Sequence[SentenceReport], rows: int) -> dict:
    """The sentence (corpus index) and occurrence of each row; rows 0.. and occurrence 1 without reports."""
    if not sentences:
        return {"sentence": np.arange(rows, dtype=np.int64), "occurrence": np.ones(rows, dtype=np.int64)}
    return {
        "sentence": np.array([r.index for r in sentences], dtype=np.int64),
        "occurrence": np.array([r.occurrence for r in sentences], dtype=np.int64),
    }


def angles_frame(angles: np.ndarray, sentences: Sequence[SentenceReport], conditions: Sequence[str]) -> "Any":
    """A tidy long table of ``angles[layer, row, condition]``: one line per (sentence, occurrence,
    layer, condition) with its angle, in that order (so a stream's chunks' frames, concatenated, are
    the whole corpus's); layers count from 1 (hidden state l-1 -> l)."""
    layers, rows, conds = angles.shape
    return long_frame(
        np.transpose(angles, (1, 0, 2)),
        [row_labels(sentences, rows), {"layer": np.arange(1, layers + 1)}, {"condition": list(conditions)[:conds]}],
        "angle",
    )


def stream_frame(chunks: Iterable["RotationChunk"]) -> "Any":
    """One tidy long table of a whole stream (:meth:`Client.stream_rotations`, a ``Cluster``'s), chunk
    by chunk: equal to the one-shot ``analyze(...).to_frame()`` of the same corpus."""
    pd = _pandas()
    frames = [c.to_frame() for c in chunks if not c.last and c.angles.size]
    if not frames:
        return angles_frame(np.zeros((0, 0, 3), np.float32), (), CONDITIONS)
    return pd.concat(frames, ignore_index=True)


def read_angles_csv(path: Any) -> "Any":
    """The CLI's ``angles.csv`` (or ``group_angles.csv``) as the DataFrame ``to_frame()`` gives: the
    same columns, integer labels, angles float32 exactly as written (shortest round-trip digits)."""
    pd = _pandas()
    frame = pd.read_csv(path, dtype={"group": str, "condition": str})
    frame["angle"] = frame["angle"].astype(np.float32)
    return frame


def state_names(states: int, layers: int) -> list:
    """Names of ``Norms``' states: hidden states 0..L, then (with sub-layer states) resid_mid_1..L and
    final_block_output."""
    names = [f"hidden_{k}" for k in range(min(states, layers + 1))]
    if states > layers + 1:
        names += [f"resid_mid_{k}" for k in range(1, layers + 1)] + ["final_block_output"]
    return names[:states] + [str(k) for k in range(len(names), states)]


@dataclass(frozen=True)
class RotationResult:
    """``ComputeRotations``: the notebook's ``angles`` and everything needed to reproduce them.

    ``angles[l, s, c]`` is the angle of sentence ``s``'s vector between hidden states ``l`` and
    ``l + 1`` (so row ``l`` is transformer layer ``l + 1``), for condition ``c`` in
    :data:`CONDITIONS`, in ``unit``. float32, exactly as the server sent it.
    """

    angles: np.ndarray
    layer_means: np.ndarray
    conditions: Tuple[str, ...]
    unit: str
    sentences: Tuple[SentenceReport, ...]
    shuffle_draws: np.ndarray
    shuffle_seed: int
    model_name: str
    target_token_id: int
    #: With ``all_layers=True``.
    all_layers: Optional[AllLayers] = None
    #: The target word's token ids (several for a word GPT-2 splits; ``target_token_id`` is 0 then).
    target_token_ids: Tuple[int, ...] = ()
    #: With ``steps="sublayers"``.
    sublayers: Optional[SublayerRotations] = None
    #: With ``norms=True``.
    norms: Optional[Norms] = None
    #: With ``skip_invalid=True``: the sentences left out, in corpus order.
    skipped: Tuple[SkippedSentence, ...] = ()

    def to_frame(self) -> "Any":
        """The angles as a tidy long pandas DataFrame: sentence, occurrence, layer, condition, angle."""
        return angles_frame(self.angles, self.sentences, self.conditions)

    @property
    def num_layers(self) -> int:
        return int(self.angles.shape[0])

    @property
    def num_sentences(self) -> int:
        return int(self.angles.shape[1])

    @classmethod
    def from_pb(cls, m: "pb.RotationResult") -> RotationResult:
        angles = tensor(m.angles, 3)
        layers, sentences, _ = angles.shape
        return cls(
            angles=angles,
            layer_means=tensor(m.layer_means, 2),
            conditions=tuple(m.conditions),
            unit=_UNITS.get(m.unit, "degrees"),
            sentences=tuple(SentenceReport.from_pb(s) for s in m.sentences),
            shuffle_draws=draws(m.shuffle_draws, layers, sentences),
            shuffle_seed=m.shuffle_seed,
            model_name=m.model_name,
            target_token_id=m.target_token_id,
            all_layers=AllLayers.from_pb(m.all_layers) if m.HasField("all_layers") else None,
            target_token_ids=tuple(m.target_token_ids),
            sublayers=SublayerRotations.from_pb(m.sublayers) if m.HasField("sublayers") else None,
            norms=Norms.from_pb(m.norms) if m.HasField("norms") else None,
            skipped=tuple(SkippedSentence.from_pb(s) for s in m.skipped),
        )


@dataclass(frozen=True)
class LayerTest:
    """One layer's paired t-test of condition a against condition b."""

    layer: int
    t: float
    p: float
    p_adjusted: float
    df: float
    mean_difference: float
    sd_difference: float
    cohens_dz: float
    ci_low: float
    ci_high: float
    significant: bool
    #: "a_greater", "b_greater" or "not_significant".
    direction: str
    #: "" for an ordinary test; "zero_variance" when the paired differences are constant (t and p as
    #: scipy gives them: +-inf and 0, or NaN for all-zero differences; never significant).
    flag: str = ""

    @classmethod
    def from_pb(cls, m: "pb.LayerTest") -> LayerTest:
        return cls(
            layer=m.layer,
            t=m.t,
            p=m.p,
            p_adjusted=m.p_adjusted,
            df=m.df,
            mean_difference=m.mean_difference,
            sd_difference=m.sd_difference,
            cohens_dz=m.cohens_dz,
            ci_low=m.ci_low,
            ci_high=m.ci_high,
            significant=m.significant,
            direction=_DIRECTIONS.get(m.direction, "not_significant"),
            flag=_LAYER_FLAGS.get(m.flag, ""),
        )


@dataclass(frozen=True)
class SignificanceResult:
    """``TestSignificance``: per-layer tests, plus numpy views of their columns (``t``, ``p``, ``significant``, …)."""

    layers: Tuple[LayerTest, ...]
    alpha: float
    #: "bonferroni", "holm", "benjamini-hochberg" or "none".
    correction: str
    #: Uncorrected p below which a layer is significant (Bonferroni: alpha / num_tests).
    threshold: float
    num_tests: int
    condition_a: int
    condition_b: int

    def _column(self, name: str, dtype: type) -> np.ndarray:
        return np.array([getattr(t, name) for t in self.layers], dtype=dtype)

    @property
    def layer(self) -> np.ndarray:
        """1-based layer numbers (the notebook's ``xticks``)."""
        return self._column("layer", np.int64)

    @property
    def t(self) -> np.ndarray:
        return self._column("t", np.float64)

    @property
    def p(self) -> np.ndarray:
        return self._column("p", np.float64)

    @property
    def p_adjusted(self) -> np.ndarray:
        return self._column("p_adjusted", np.float64)

    @property
    def significant(self) -> np.ndarray:
        """Boolean per layer (the notebook's ``issig``)."""
        return self._column("significant", np.bool_)

    @property
    def direction(self) -> np.ndarray:
        return self._column("direction", np.str_)

    @classmethod
    def from_pb(cls, m: "pb.SignificanceResult") -> SignificanceResult:
        return cls(
            layers=tuple(LayerTest.from_pb(t) for t in m.layers),
            alpha=m.alpha,
            correction=_CORRECTIONS.get(m.correction, "bonferroni"),
            threshold=m.threshold,
            num_tests=m.num_tests,
            condition_a=m.condition_a,
            condition_b=m.condition_b,
        )


@dataclass(frozen=True)
class Analysis:
    """``Analyze``: the notebook in one call. ``significance`` is None when no t-test is possible
    (fewer than two sentences); ``significance_error`` then says why."""

    rotations: RotationResult
    significance: Optional[SignificanceResult]
    significance_error: str = ""
    #: Per condition (target, non_target, shuffled), the exact per-layer statistics of the angles
    #: themselves: what a two-group test needs of this corpus (see :class:`ConditionStatistics`).
    condition_statistics: Tuple["ConditionStatistics", ...] = ()
    #: With ``steps="sublayers"``: one paired test (target - non_target) per step, ``layers[2 l + step]``
    #: for layer ``l + 1``, corrected over all steps; and the exact statistics behind it.
    step_significance: Optional[SignificanceResult] = None
    step_statistics: Tuple["LayerStatistics", ...] = ()

    @property
    def angles(self) -> np.ndarray:
        return self.rotations.angles

    @property
    def skipped(self) -> Tuple[SkippedSentence, ...]:
        """With ``skip_invalid=True``: the sentences left out."""
        return self.rotations.skipped

    def to_frame(self) -> "Any":
        """The angles as a tidy long pandas DataFrame: sentence, occurrence, layer, condition, angle."""
        return self.rotations.to_frame()

    def tests_frame(self) -> "Any":
        """The paired t-test of each layer as a pandas DataFrame (one line per layer)."""
        pd = _pandas()
        if self.significance is None:
            raise ValueError(f"no t-test: {self.significance_error}")
        return pd.DataFrame([dataclasses.asdict(t) for t in self.significance.layers])

    @classmethod
    def from_pb(cls, m: "pb.Analysis") -> Analysis:
        significance = SignificanceResult.from_pb(m.significance) if m.HasField("significance") else None
        return cls(
            RotationResult.from_pb(m.rotations),
            significance,
            m.significance_error,
            tuple(ConditionStatistics.from_pb(c) for c in m.condition_statistics),
            SignificanceResult.from_pb(m.step_significance) if m.HasField("step_significance") else None,
            tuple(LayerStatistics.from_pb(s) for s in m.step_statistics),
        )


@dataclass(frozen=True)
class Progress:
    done: int
    total: int


#: Binary digits after the point of the exact sums: each difference d counts as round(d * 2**64).
EXACT_SCALE_BITS = 64


@dataclass(frozen=True)
class LayerStatistics:
    """Sufficient statistics of values d of one layer: the paired differences d = a - b
    (``RotationChunk.statistics``), or one condition's angles themselves (:class:`ConditionStatistics`).

    ``sum_exact`` and ``sum_sq_exact`` are the exact integers sum(D) and sum(D**2) of
    ``D = round(d * 2**64)``: they add up exactly (:meth:`merge`) across chunks and replicas in any
    order, and :attr:`mean` and :attr:`variance` are computed from them exactly as the server does
    (the same roundings, so the same floats). ``sum`` and ``sum_sq`` are their float roundings.
    """

    layer: int
    n: int
    sum: float
    sum_sq: float
    sum_exact: int = 0
    sum_sq_exact: int = 0

    @classmethod
    def from_pb(cls, m: "pb.LayerStatistics") -> LayerStatistics:
        return cls(
            layer=m.layer,
            n=m.n,
            sum=m.sum,
            sum_sq=m.sum_sq,
            sum_exact=int.from_bytes(m.sum_exact, "big", signed=True),
            sum_sq_exact=int.from_bytes(m.sum_sq_exact, "big", signed=True),
        )

    def to_pb(self) -> "pb.LayerStatistics":
        return pb.LayerStatistics(
            layer=self.layer,
            n=self.n,
            sum=self.sum,
            sum_sq=self.sum_sq,
            sum_exact=self.sum_exact.to_bytes(16, "big", signed=True),
            sum_sq_exact=self.sum_sq_exact.to_bytes(32, "big", signed=True),
        )

    def merge(self, other: LayerStatistics) -> LayerStatistics:
        """The statistics of both sets of sentences (exact integer addition)."""
        if other.layer != self.layer:
            raise ValueError(f"cannot merge layer {other.layer} into layer {self.layer}")
        s, q = self.sum_exact + other.sum_exact, self.sum_sq_exact + other.sum_sq_exact
        return LayerStatistics(self.layer, self.n + other.n, s * 2.0**-64, float(q) * 2.0**-128, s, q)

    @property
    def mean(self) -> float:
        """sum(D) / n / 2**64, as src/analysis/stats.rs computes it."""
        return float(self.sum_exact) / float(self.n) * 2.0**-EXACT_SCALE_BITS

    @property
    def variance(self) -> float:
        """Sample variance (n - 1): with sum(D) = q*n + r, (M - r*r/n) / (n - 1) where
        M = sum((D - q)**2) = sum(D**2) - q*(sum(D) + r) is exact; as src/analysis/stats.rs."""
        if self.n < 2:
            return float("nan")
        q, r = divmod(self.sum_exact, self.n)
        m = self.sum_sq_exact - q * (self.sum_exact + r)
        scaled = (float(m) - float(r * r) / float(self.n)) / float(self.n - 1)
        return max(scaled, 0.0) * 2.0 ** (-2 * EXACT_SCALE_BITS)

    @property
    def t(self) -> float:
        """The paired t statistic mean / (sd / sqrt(n)), as the server computes it."""
        return self.mean / (math.sqrt(self.variance) / math.sqrt(float(self.n)))


@dataclass(frozen=True)
class ConditionStatistics:
    """One condition's angles summarised per layer, exactly (:class:`LayerStatistics` of the angles):
    merged across chunks and replicas by integer addition, so two groups' merged statistics give
    the Welch tests of the whole groups, bit for bit."""

    #: 0 target, 1 non_target, 2 shuffled.
    condition: int
    layers: Tuple[LayerStatistics, ...]

    @classmethod
    def from_pb(cls, m: "pb.ConditionStatistics") -> ConditionStatistics:
        return cls(m.condition, tuple(LayerStatistics.from_pb(s) for s in m.layers))

    def merge(self, other: ConditionStatistics) -> ConditionStatistics:
        if other.condition != self.condition or len(other.layers) != len(self.layers):
            raise ValueError(f"cannot merge condition {other.condition} into condition {self.condition}")
        return ConditionStatistics(self.condition, tuple(a.merge(b) for a, b in zip(self.layers, other.layers)))


def merge_conditions(
    totals: Tuple[ConditionStatistics, ...], shard: Sequence[ConditionStatistics]
) -> Tuple[ConditionStatistics, ...]:
    """Per-condition statistics of both sets of sentences (``totals`` empty at first)."""
    if not totals:
        return tuple(shard)
    return tuple(t.merge(s) for t, s in zip(totals, shard))


@dataclass(frozen=True)
class GroupLayerTest:
    """One layer's Welch's t-test between group A and group B (``scipy.stats.ttest_ind(a, b,
    equal_var=False)``), with Hedges' g and its CI (statsmodels' ``effectsize_smd``)."""

    layer: int
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    sd_a: float
    sd_b: float
    mean_difference: float
    ci_low: float
    ci_high: float
    t: float
    df: float
    p: float
    p_adjusted: float
    hedges_g: float
    g_ci_low: float
    g_ci_high: float
    significant: bool
    #: "a_greater", "b_greater" or "not_significant".
    direction: str
    #: "" for an ordinary test; "zero_variance" (both groups constant) or "too_few_sentences" (a
    #: group has fewer than 2): never significant, t and p as scipy gives them.
    flag: str = ""

    @classmethod
    def from_pb(cls, m: "pb.GroupLayerTest") -> GroupLayerTest:
        names = [f for f in cls.__dataclass_fields__ if f not in ("direction", "flag")]
        values = {name: getattr(m, name) for name in names}
        return cls(
            **values,
            direction=_DIRECTIONS.get(m.direction, "not_significant"),
            flag=_GROUP_FLAGS.get(m.flag, ""),
        )


@dataclass(frozen=True)
class GroupTests:
    """Per-layer Welch tests between two groups, plus numpy columns (``t``, ``p``, ``hedges_g``, …)."""

    layers: Tuple[GroupLayerTest, ...]
    alpha: float
    #: "bonferroni", "holm", "benjamini-hochberg" or "none".
    correction: str
    #: Uncorrected p below which a layer is significant (Bonferroni: alpha / num_tests).
    threshold: float
    num_tests: int
    #: The condition compared (0 target, 1 non_target, 2 shuffled).
    condition: int

    def column(self, name: str) -> np.ndarray:
        """One field of every layer as an array (``tests.column("g_ci_low")``)."""
        values = [getattr(t, name) for t in self.layers]
        return np.array(values, dtype=np.bool_ if name == "significant" else None)

    def __getattr__(self, name: str) -> np.ndarray:
        if name in GroupLayerTest.__dataclass_fields__:
            return self.column(name)
        raise AttributeError(name)

    @classmethod
    def from_pb(cls, m: "pb.GroupTests") -> GroupTests:
        return cls(
            layers=tuple(GroupLayerTest.from_pb(t) for t in m.layers),
            alpha=m.alpha,
            correction=_CORRECTIONS.get(m.correction, "bonferroni"),
            threshold=m.threshold,
            num_tests=m.num_tests,
            condition=m.condition,
        )


@dataclass(frozen=True)
class GroupComparison:
    """``CompareGroups``: each group's :class:`Analysis` (by label, in request order: the first is A)
    and the per-layer Welch tests of A against B."""

    labels: Tuple[str, str]
    groups: Tuple[Analysis, Analysis]
    tests: GroupTests

    def __getitem__(self, label: str) -> Analysis:
        """The analysis of the group labelled ``label``."""
        try:
            return self.groups[self.labels.index(label)]
        except ValueError:
            raise KeyError(f"no group {label!r}; the groups are {list(self.labels)}") from None

    @classmethod
    def from_pb(cls, m: "pb.GroupComparison") -> GroupComparison:
        labels = tuple(g.label for g in m.groups)
        groups = tuple(Analysis.from_pb(g.analysis) for g in m.groups)
        return cls(labels, groups, GroupTests.from_pb(m.tests))  # type: ignore[arg-type]

    def to_frame(self) -> "Any":
        """Both groups' angles as one tidy long pandas DataFrame: group, sentence, occurrence, layer,
        condition, angle (sentence: the index in its group's corpus)."""
        pd = _pandas()
        frames = []
        for label, analysis in zip(self.labels, self.groups):
            frame = analysis.to_frame()
            frame.insert(0, "group", label)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    def tests_frame(self) -> "Any":
        """The Welch test of each layer as a pandas DataFrame (one line per layer, GroupLayerTest's fields)."""
        pd = _pandas()
        return pd.DataFrame([dataclasses.asdict(t) for t in self.tests.layers], columns=list(GroupLayerTest.__dataclass_fields__))


@dataclass(frozen=True)
class RotationChunk:
    """One ``StreamRotations`` message: a run of sentences in input order, or (``last``) the merged statistics."""

    first_sentence: int
    #: ``[layers, chunk_sentences, 3]``; empty (``[0, 0, 3]``) in the final chunk.
    angles: np.ndarray
    sentences: Tuple[SentenceReport, ...]
    shuffle_draws: np.ndarray
    progress: Progress
    unit: str
    shuffle_seed: int
    last: bool
    statistics: Tuple[LayerStatistics, ...] = ()
    significance: Optional[SignificanceResult] = None
    significance_error: str = ""
    model_name: str = ""
    target_token_id: int = 0
    #: In the final chunk: per condition, the merged per-layer statistics of the angles themselves.
    condition_statistics: Tuple[ConditionStatistics, ...] = ()
    #: With ``all_layers=True``: this chunk's row matrices (``row_matrices=True``), and in the final
    #: chunk the merged sums and mean.
    all_layers: Optional[AllLayers] = None
    target_token_ids: Tuple[int, ...] = ()
    #: In the final chunk: the weights fingerprint of the replica that computed it (as ModelInfo's).
    weights_sha256: str = ""
    #: With ``steps="sublayers"``: this chunk's step angles; in the final chunk the merged step
    #: statistics and tests. With ``norms=True``: this chunk's norms; in the final chunk means and sums.
    sublayers: Optional[SublayerRotations] = None
    step_statistics: Tuple["LayerStatistics", ...] = ()
    step_significance: Optional[SignificanceResult] = None
    norms: Optional[Norms] = None
    #: With ``skip_invalid=True``: this chunk's sentences left out. With the rows' indices they
    #: cover the corpus indices ``[first_sentence, end_sentence)``.
    skipped: Tuple[SkippedSentence, ...] = ()
    end_sentence: int = 0
    #: With ``vectors_out``: this chunk's rows' vectors (written to the files as they arrive).
    vectors: Optional[Vectors] = None

    def to_frame(self) -> "Any":
        """This chunk's angles as a tidy long pandas DataFrame (as :meth:`RotationResult.to_frame`)."""
        return angles_frame(self.angles, self.sentences, CONDITIONS)

    @classmethod
    def from_pb(cls, m: "pb.RotationChunk") -> RotationChunk:
        if m.HasField("angles"):
            angles = tensor(m.angles, 3)
        else:
            angles = np.zeros((0, 0, 3), dtype=np.float32)
        layers, sentences, _ = angles.shape
        return cls(
            first_sentence=m.first_sentence,
            angles=angles,
            sentences=tuple(SentenceReport.from_pb(s) for s in m.sentences),
            shuffle_draws=draws(m.shuffle_draws, layers, sentences),
            progress=Progress(m.progress.done, m.progress.total),
            unit=_UNITS.get(m.unit, "degrees"),
            shuffle_seed=m.shuffle_seed,
            last=m.last,
            statistics=tuple(LayerStatistics.from_pb(s) for s in m.statistics),
            significance=SignificanceResult.from_pb(m.significance) if m.HasField("significance") else None,
            significance_error=m.significance_error,
            model_name=m.model_name,
            target_token_id=m.target_token_id,
            condition_statistics=tuple(ConditionStatistics.from_pb(c) for c in m.condition_statistics),
            all_layers=AllLayers.from_pb(m.all_layers) if m.HasField("all_layers") else None,
            target_token_ids=tuple(m.target_token_ids),
            weights_sha256=m.weights_sha256,
            sublayers=SublayerRotations.from_pb(m.sublayers) if m.HasField("sublayers") else None,
            step_statistics=tuple(LayerStatistics.from_pb(s) for s in m.step_statistics),
            step_significance=SignificanceResult.from_pb(m.step_significance) if m.HasField("step_significance") else None,
            norms=Norms.from_pb(m.norms) if m.HasField("norms") else None,
            skipped=tuple(SkippedSentence.from_pb(s) for s in m.skipped),
            end_sentence=m.end_sentence,
            vectors=Vectors.from_pb(m.vectors) if m.HasField("vectors") else None,
        )
