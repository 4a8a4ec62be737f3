"""Logits processors: small frozen dataclasses, each with a numpy reference and the ONNX nodes that do the same,
the one chain they run in, and the table from a command line's knobs to them.

As in Hugging Face `generate`, each maps a `[rows, vocab]` float32 logits array to another (`numpy`, `onnx`: its
apply), and a sampler chains them in the config's order before the draw. `numpy` is the reference; `onnx` adds the
same operations, in the same order, to the sampling head, so the two agree to the last bit wherever the runtime
rounds as numpy does. Removed ids become -inf. Each processor checks its own parameters and raises
`InvalidParameter` in its own terms; the CLI names its flag instead.

A processor that needs memory of the row (as llama.cpp's samplers keep theirs, and vLLM v1's logits processors
update theirs) declares it as `state`: a per-row tensor with its shape, dtype and starting value of 0, which the
loops carry from step to step (and through the engine's dropping of finished rows) without knowing what it is. It
reads it in `rows.state[name]` and updates it from each step's drawn ids in `accept` (numpy) and `accept_onnx`.

Per-row values: only the temperature, because a report compares groups by temperature and a sweep of them runs
as one batch. The other parameters hold for the whole run and fold into the graph as constants.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

if TYPE_CHECKING:
    from toolkit.sampling.graph import Graph

from toolkit.files import UsageError
from toolkit.vocab import BOS, PAD, UNK

NEG_INF = np.float32(-np.inf)
MIN_TEMPERATURE = 0.01  # below this float32 logits overflow; 0 (greedy) is the limit a user means


class InvalidParameter(UsageError):
    """A parameter out of its range: `parameter` names it as the library does, so a CLI can name its flag."""

    def __init__(self, parameter: str, requirement: str, value: object):
        self.parameter, self.requirement, self.value = parameter, requirement, value
        super().__init__(f"{{{parameter}}} {requirement}, not {value!r}", parameter)


@dataclass(frozen=True)
class Rows:
    """What a processor may read per row besides the logits: arrays for numpy, tensor names for ONNX."""

    temperature: Any  # [rows] float32; 0 = greedy
    state: dict[str, Any] = dataclasses.field(default_factory=dict)  # each stateful processor's state, by its name
    greedy: bool = True  # some row may have temperature 0 (False lets a graph leave out the greedy rows' nodes)
    inverse: Any = None  # ONNX only: [rows, 1] float32, inverse_temperature() of each row, computed once a chunk
    unconditional: Any = None  # with Guidance: [rows, vocab] the logits the model gives each row told "no class"


@dataclass(frozen=True)
class State:
    """A processor's memory of each row: a tensor [rows, *dims] (a dim named "vocab" is the vocabulary's size),
    all zeros when a row starts."""

    name: str
    dims: tuple[str | int, ...]
    dtype: type = np.float32

    def shape(self, rows: int | str, vocab: int) -> tuple:
        return (rows, *(vocab if d == "vocab" else d for d in self.dims))


def inverse_temperature(temperature: np.ndarray) -> np.ndarray:
    """[rows, 1]: what a row's logits are multiplied by (1 for greedy rows, whose other logits are removed)."""
    t = np.asarray(temperature, np.float32)[:, None]
    return np.float32(1) / np.where(t > 0, t, np.float32(1))


class Processor(Protocol):
    """apply (`numpy`, `onnx`); with a `state`, also accept (`accept`, `accept_onnx`): the state after a step that
    drew `ids`, where only the rows in `drew` drew (the others were given their prompt's next id)."""

    state: ClassVar[State | None]

    def numpy(self, x: np.ndarray, rows: Rows) -> np.ndarray: ...
    def onnx(self, g: Graph, x: str, rows: Rows) -> str: ...
    def accept(self, state: np.ndarray, ids: np.ndarray, drew: np.ndarray) -> np.ndarray: ...
    def accept_onnx(self, g: Graph, state: str, ids: str, drew: str | None) -> str: ...


class Stateless:
    """What a processor without memory does on accept: nothing."""

    state: ClassVar[State | None] = None

    def accept(self, state: np.ndarray, ids: np.ndarray, drew: np.ndarray) -> np.ndarray:
        return state

    def accept_onnx(self, g: Graph, state: str, ids: str, drew: str | None) -> str:
        return state


def describe(processor: Processor) -> dict:
    """A processor as run.json records it: its name and parameters."""
    return {"name": type(processor).__name__, **dataclasses.asdict(processor)}


def _number(name: str, value: object, low: float, high: float, requirement: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidParameter(name, requirement, value)


def _share(name: str, p: float) -> None:
    """A share of the probability mass, in (0, 1]: 0 would keep nothing."""
    _number(name, p, 0, 1, "must lie in (0, 1]")
    if p == 0:
        raise InvalidParameter(name, "must lie in (0, 1]", p)


@dataclass(frozen=True)
class Guidance(Stateless):
    """Classifier-free guidance (Sanchez et al. 2023, "Stay on topic with Classifier-Free Guidance"): the logits
    `unconditional + weight * (conditional - unconditional)`, where `unconditional` is what the same model gives the
    row told "no class" (a second model state per row, which the loops carry: `Rows.unconditional`). Weight 1 is the
    conditional model itself (off); above 1 pushes away from what any class would give. Equal after the softmax to
    Hugging Face's ClassifierFreeGuidanceLogitsProcessor, which mixes log-softmaxes (a constant per row apart). It
    mixes the model's raw logits, so it runs first, before the ban (whose -inf would give inf - inf)."""

    weight: float
    knobs: ClassVar[dict[str, tuple[str, float]]] = {"guidance": ("weight", 1.0)}
    before_ban: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _number("guidance", self.weight, 0, 10, "must lie in [0, 10] (1 is off)")

    def numpy(self, x: np.ndarray, rows: Rows) -> np.ndarray:
        u = rows.unconditional
        return u + np.float32(self.weight) * (x - u)

    def onnx(self, g: Graph, x: str, rows: Rows) -> str:
        u = rows.unconditional
        return g.op("Add", u, g.op("Mul", g.const("guidance", self.weight), g.op("Sub", x, u)))


def guided(processors: tuple[Processor, ...]) -> bool:
    """Whether the loops must run the model a second time per row, told "no class" (for Guidance)."""
    return any(isinstance(p, Guidance) for p in processors)


@dataclass(frozen=True)
class Ban(Stateless):
    """Ids that must never be drawn (padding, <bos>, <unk>: they have no character). Always first in a chain."""

    ids: tuple[int, ...] = (PAD, BOS, UNK)

    def mask(self, vocab: int) -> np.ndarray:
        mask = np.zeros(vocab, np.float32)
        mask[list(self.ids)] = NEG_INF
        return mask

    def numpy(self, x: np.ndarray, rows: Rows) -> np.ndarray:
        return x + self.mask(x.shape[1])

    def onnx(self, g: Graph, x: str, rows: Rows) -> str:
        return g.op("Add", x, g.const("ban_mask", self.mask(g.vocab)))


@dataclass(frozen=True)
class RepetitionPenalty:
    """OpenAI's presence and frequency penalties over the characters the row has drawn so far (its prompt is
    not counted): subtract `presence` once from each id drawn before, and `frequency` per time it was drawn.
    Negative values encourage repetition. Its state: how often the row has drawn each id."""

    presence: float = 0.0
    frequency: float = 0.0
    state: ClassVar[State] = State("counts", ("vocab",))
    knobs: ClassVar[dict[str, tuple[str, float]]] = {"presence_penalty": ("presence", 0.0),
                                                     "frequency_penalty": ("frequency", 0.0)}

    def __post_init__(self) -> None:
        for name in ("presence", "frequency"):
            _number(f"{name}_penalty", getattr(self, name), -2, 2, "must lie in [-2, 2]")

    def numpy(self, x: np.ndarray, rows: Rows) -> np.ndarray:
        counts = rows.state[self.state.name]
        seen = (counts > 0).astype(np.float32)
        return x - (seen * np.float32(self.presence) + counts * np.float32(self.frequency))

    def onnx(self, g: Graph, x: str, rows: Rows) -> str:
        counts = rows.state[self.state.name]
        seen = g.op("Cast", g.op("Greater", counts, g.const("zero_count", 0.0)), to=1)
        penalty = g.op("Add", g.op("Mul", seen, g.const("presence", self.presence)),
                       g.op("Mul", counts, g.const("frequency", self.frequency)))
        return g.op("Sub", x, penalty)

    def accept(self, state: np.ndarray, ids: np.ndarray, drew: np.ndarray) -> np.ndarray:
        state = state.copy()
        state[np.flatnonzero(drew), ids[drew]] += 1
        return state

    def accept_onnx(self, g: Graph, state: str, ids: str, drew: str | None) -> str:
        one_hot = g.op("Cast", g.op("Equal", g.op("Unsqueeze", ids, g.const("count_axis", [1], np.int64)),
                                    g.const("ids", np.arange(g.vocab), np.int64)), to=1)
        if drew is not None:
            one_hot = g.op("Mul", one_hot, g.op("Unsqueeze", g.op("Cast", drew, to=1),
                                                 g.const("count_axis_", [1], np.int64)))
        return g.op("Add", state, one_hot)


@dataclass(frozen=True)
class Temperature(Stateless):
    """Divide each row by its own temperature; a row at temperature 0 keeps only its largest logits (greedy)."""


    def numpy(self, x: np.ndarray, rows: Rows) -> np.ndarray:
        scaled = x * inverse_temperature(rows.temperature)
        keep = (np.asarray(rows.temperature)[:, None] > 0) | (x >= x.max(axis=1, keepdims=True))
        return np.where(keep, scaled, NEG_INF)

    def onnx(self, g: Graph, x: str, rows: Rows) -> str:
        scaled = g.op("Mul", x, rows.inverse)
        if not rows.greedy:
            return scaled
        positive = g.op("Greater", g.op("Unsqueeze", rows.temperature, g.const("axis1", [1], np.int64)),
                        g.const("zero_t", 0.0))
        keep = g.op("Or", positive, g.op("GreaterOrEqual", x, g.reduce("ReduceMax", x, 1)))
        return g.op("Where", keep, scaled, g.const("neg_inf_t", NEG_INF))


@dataclass(frozen=True)
class TopK(Stateless):
    """Keep the k largest logits of each row (ties with the k-th included)."""

    k: int
    knobs: ClassVar[dict[str, tuple[str, float]]] = {"top_k": ("k", 0)}

    def __post_init__(self) -> None:
        _number("top_k", self.k, 1, 2**31 - 1, "must be a positive integer")
        if not isinstance(self.k, int):
            raise InvalidParameter("top_k", "must be a positive integer", self.k)

    def numpy(self, x: np.ndarray, rows: Rows) -> np.ndarray:
        if self.k >= x.shape[1]:
            return x
        kth = np.partition(x, -self.k, axis=1)[:, -self.k, None]
        return np.where(x >= kth, x, NEG_INF)

    def onnx(self, g: Graph, x: str, rows: Rows) -> str:
        if self.k >= g.vocab:
            return x
        values, _ = g.op("TopK", x, g.const("top_k", [self.k], np.int64), axis=1, outputs=2)
        kth = g.op("Slice", values, *(g.const(f"top_k_{n}", [v], np.int64) for n, v in
                                      (("start", self.k - 1), ("end", self.k), ("axis", 1))))
        return g.op("Where", g.op("GreaterOrEqual", x, kth), x, g.const("neg_inf_k", NEG_INF))


@dataclass(frozen=True)
class TopP(Stateless):
    """Nucleus filter: keep the likeliest ids until their probability reaches p (ties with the last one kept)."""

    p: float
    knobs: ClassVar[dict[str, tuple[str, float]]] = {"top_p": ("p", 1.0)}

    def __post_init__(self) -> None:
        _share("top_p", self.p)

    def numpy(self, x: np.ndarray, rows: Rows) -> np.ndarray:
        s = -np.sort(-x, axis=1)
        e = np.exp(s - s[:, :1])
        probs = e / e.sum(axis=1, keepdims=True)
        kept = ((np.cumsum(probs, axis=1) - probs) < np.float32(self.p)).sum(axis=1)  # the mass before an id < p
        threshold = np.take_along_axis(s, kept[:, None] - 1, axis=1)
        return np.where(x >= threshold, x, NEG_INF)

    def onnx(self, g: Graph, x: str, rows: Rows) -> str:
        s, _ = g.op("TopK", x, g.const("vocab_k", [g.vocab], np.int64), axis=1, outputs=2)
        first = g.op("Slice", s, *(g.const(f"top_p_{n}", [v], np.int64) for n, v in
                                   (("start", 0), ("end", 1), ("axis", 1))))
        e = g.op("Exp", g.op("Sub", s, first))
        probs = g.op("Div", e, g.reduce("ReduceSum", e, 1))
        before = g.op("Sub", g.op("CumSum", probs, g.const("axis1_scalar", 1, np.int64)), probs)
        kept = g.reduce("ReduceSum", g.op("Cast", g.op("Less", before, g.const("top_p", self.p)), to=1), 1)
        index = g.op("Sub", g.op("Cast", kept, to=7), g.const("one_index", [1], np.int64))
        threshold = g.op("GatherElements", s, index, axis=1)
        return g.op("Where", g.op("GreaterOrEqual", x, threshold), x, g.const("neg_inf_p", NEG_INF))


@dataclass(frozen=True)
class MinP(Stateless):
    """Keep the ids whose probability is at least `p` times the row's largest (Nguyen et al. 2024)."""

    p: float
    knobs: ClassVar[dict[str, tuple[str, float]]] = {"min_p": ("p", 0.0)}

    def __post_init__(self) -> None:
        _share("min_p", self.p)

    def numpy(self, x: np.ndarray, rows: Rows) -> np.ndarray:
        return np.where(x >= x.max(axis=1, keepdims=True) + np.float32(math.log(self.p)), x, NEG_INF)

    def onnx(self, g: Graph, x: str, rows: Rows) -> str:
        floor = g.op("Add", g.reduce("ReduceMax", x, 1), g.const("log_min_p", math.log(self.p)))
        return g.op("Where", g.op("GreaterOrEqual", x, floor), x, g.const("neg_inf_min_p", NEG_INF))


# --- the chain ----------------------------------------------------------------------------------------------------

# The controls a command line sets, in the order they apply (Hugging Face's: guidance, the penalties, the
# temperature, then the filters). Each names its knobs: {knob: (its field, the value that turns it off)}; the
# temperature is always on.
CHAIN: tuple[type, ...] = (Guidance, RepetitionPenalty, Temperature, TopK, TopP, MinP)
KNOBS = {knob: cls for cls in CHAIN for knob in getattr(cls, "knobs", {})}


def from_knobs(**values: float) -> tuple[Processor, ...]:
    """The processors that knobs describe, in CHAIN's order; a processor whose knobs are all off is left out."""
    unknown = set(values) - set(KNOBS)
    if unknown:
        raise TypeError(f"unknown sampling knobs: {', '.join(sorted(unknown))}")
    chain: list[Processor] = []
    for cls in CHAIN:
        knobs = getattr(cls, "knobs", {})
        fields = {field: values.get(knob, off) for knob, (field, off) in knobs.items()}
        if not knobs or any(values.get(knob, off) != off for knob, (_, off) in knobs.items()):
            chain.append(cls(**fields))
    return tuple(chain)


def chain(processors: tuple[Processor, ...]) -> tuple[Processor, ...]:
    """What runs on a step's logits: the reserved-id ban first (after guidance, which mixes raw logits), then the
    config's processors."""
    first = tuple(p for p in processors if getattr(p, "before_ban", False))
    return (*first, Ban(), *(p for p in processors if not getattr(p, "before_ban", False)))


def states(processors: tuple[Processor, ...]) -> tuple[State, ...]:
    return tuple(p.state for p in chain(processors) if p.state is not None)


def apply(processors: tuple[Processor, ...], x: np.ndarray, rows: Rows) -> np.ndarray:
    for p in chain(processors):
        x = p.numpy(x, rows)
    return x


def apply_onnx(processors: tuple[Processor, ...], g: Graph, x: str, rows: Rows) -> str:
    for p in chain(processors):
        x = p.onnx(g, x, rows)
    return x


def accept(processors: tuple[Processor, ...], state: dict[str, np.ndarray], ids: np.ndarray,
           drew: np.ndarray) -> dict[str, np.ndarray]:
    """Each stateful processor's state after a step that drew `ids` (`drew`: the rows that drew)."""
    return state | {p.state.name: p.accept(state[p.state.name], ids, drew) for p in chain(processors)
                    if p.state is not None}


def accept_onnx(processors: tuple[Processor, ...], g: Graph, ids: str, drew: str | None) -> dict[str, str]:
    """{state name: the tensor holding it after the step}, each read from the tensor of its name."""
    return {p.state.name: p.accept_onnx(g, p.state.name, ids, drew) for p in chain(processors)
            if p.state is not None}
