"""Plain results: dataclasses and numpy arrays instead of protobuf messages."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

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


@dataclass(frozen=True)
class SentenceReport:
    """Where the target and non-target were found in one sentence (0-based token positions)."""

    index: int
    num_tokens: int
    target_position: int
    non_target_position: int

    @classmethod
    def from_pb(cls, m: "pb.SentenceReport") -> SentenceReport:
        return cls(m.index, m.num_tokens, m.target_position, m.non_target_position)


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

    @property
    def angles(self) -> np.ndarray:
        return self.rotations.angles

    @classmethod
    def from_pb(cls, m: "pb.Analysis") -> Analysis:
        significance = SignificanceResult.from_pb(m.significance) if m.HasField("significance") else None
        return cls(RotationResult.from_pb(m.rotations), significance, m.significance_error)


@dataclass(frozen=True)
class Progress:
    done: int
    total: int


#: Binary digits after the point of the exact sums: each difference d counts as round(d * 2**64).
EXACT_SCALE_BITS = 64


@dataclass(frozen=True)
class LayerStatistics:
    """Sufficient statistics of the paired differences d = a - b of one layer.

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
        )
