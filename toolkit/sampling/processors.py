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

Processors that name characters (the title constraint, the logit bias) are built over the model's vocabulary: a
command line makes them without it (`chars` empty: checked, not yet usable), and `bind` builds them once the model
is loaded, before anything is sampled or written (SampleConfig.bind, which also runs their `check`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

if TYPE_CHECKING:
    from toolkit.sampling.graph import Graph

from toolkit.files import InvalidParameter, UsageError
from toolkit.vocab import BOS, PAD, SPECIALS, UNK, Vocab

NEG_INF = np.float32(-np.inf)
MIN_TEMPERATURE = 0.01  # below this float32 logits overflow; 0 (greedy) is the limit a user means
MAX_LOGIT_BIAS = 100  # OpenAI's range: -100 all but bans a character, +100 all but forces it
UNRECORDED = {"recorded": False}  # a field's metadata: not in run.json (what a run derives, e.g. the vocabulary)


@dataclass(frozen=True)
class Rows:
    """What a processor may read per row besides the logits: arrays for numpy, tensor names for ONNX."""

    temperature: Any  # [rows] float32; 0 = greedy
    state: dict[str, Any] = dataclasses.field(default_factory=dict)  # each stateful processor's state, by its name
    greedy: bool = True  # some row may have temperature 0 (False lets a graph leave out the greedy rows' nodes)
    inverse: Any = None  # ONNX only: [rows, 1] float32, inverse_temperature() of each row, computed once a chunk
    unconditional: Any = None  # with Guidance: [rows, vocab] the logits the model gives each row told "no class"
    left: Any = None  # [] int64: the ids each row may still write, this step's included (max_len - step)


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
    """A processor as run.json records it: its name and parameters (tuples as lists, as JSON gives them back), not
    what it derives from the model (fields marked UNRECORDED)."""
    def plain(value):
        return [plain(v) for v in value] if isinstance(value, tuple | list) else value

    return {"name": type(processor).__name__, **{f.name: plain(getattr(processor, f.name))
                                                 for f in dataclasses.fields(processor)
                                                 if f.metadata.get("recorded", True)}}


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


def _strings(name: str, value: object) -> tuple[str, ...]:
    """A list of non-empty strings (`ban`, `stop`), as a tuple."""
    if isinstance(value, str) or not isinstance(value, tuple | list) or not all(
            isinstance(s, str) and s for s in value):
        raise InvalidParameter(name, "must be a list of non-empty strings", value)
    return tuple(value)


class _OverVocabulary:
    """What a processor built over the model's characters (`chars`, in id order) shares: made without them (a command
    line knows no model yet) it checks its parameters and waits for `bind`."""

    chars: tuple[str, ...]

    @property
    def vocab(self) -> Vocab:
        return Vocab(self.chars)

    def bind(self, vocab: Vocab):
        """The processor over `vocab`'s characters (itself, if it is already)."""
        return self if self.chars == vocab.chars else dataclasses.replace(self, chars=vocab.chars)

    def _bound(self) -> None:
        if not self.chars:
            raise ValueError(f"{type(self).__name__} is not built over the model's vocabulary yet: bind(vocab) it "
                             "(SampleConfig.bind does, and sample_batch, Engine and generate call that)")

    def _width(self, vocab: int) -> None:
        self._bound()
        if vocab != len(SPECIALS) + len(self.chars):
            raise ValueError(f"{type(self).__name__} was built over {len(SPECIALS) + len(self.chars)} ids, the logits "
                             f"have {vocab}")


@dataclass(frozen=True)
class Constraint(_OverVocabulary):
    """Sample only titles that fullmatch `regex`, contain none of `ban`, have at least `min_length` characters and
    end right after a `stop` string if one occurs: logits of ids the row's automaton state disallows become -inf
    (toolkit.sampling.automata builds the automaton: all the parts intersected into one). What is left is
    renormalised by the draw: the constraint shapes each step's distribution, not the model's distribution over
    whole titles conditioned on the constraint.

    Its state is each row's automaton state, an int64 [rows] starting at 0. Unlike RepetitionPenalty's counts it
    advances on every row's id, prompt ids included (`drew` is ignored), since the constraint is on the whole title;
    after <eos> a row stays in its accepting state. `chars` is the vocabulary's characters, in id order, that the
    automaton is built over (empty: not yet; see `bind`). A prompt must leave the automaton somewhere it can go on
    from: see `check`. It must run before the temperature and the filters (`before_filters`), which would otherwise
    leave a greedy row only disallowed ids.

    A row may run out of room: `max_len` ids, <eos> included, before it reaches a title the constraint allows (it is
    then left unfinished). With `must_finish` it never does: an id is also removed where the shortest allowed ending
    after it would not fit in the ids the row has left (`Rows.left`; the automaton's `need`), so every row ends with
    an allowed title, the last characters of a long one forced onto the shortest way to acceptance."""

    regex: str | None = None
    ban: tuple[str, ...] = ()
    min_length: int = 0
    stop: tuple[str, ...] = ()
    must_finish: bool = False
    chars: tuple[str, ...] = field(default=(), repr=False, metadata=UNRECORDED)
    state: ClassVar[State] = State("automaton", (), np.int64)
    knobs: ClassVar[dict[str, tuple[str, object]]] = {"regex": ("regex", None), "ban": ("ban", ()),
                                                      "min_length": ("min_length", 0), "stop": ("stop", ()),
                                                      "must_finish": ("must_finish", False)}
    before_filters: ClassVar[bool] = True

    def __post_init__(self) -> None:
        from toolkit.sampling import automata

        object.__setattr__(self, "ban", _strings("ban", self.ban))
        object.__setattr__(self, "stop", _strings("stop", self.stop))
        object.__setattr__(self, "chars", tuple(self.chars))
        if self.regex is not None:
            if not isinstance(self.regex, str):
                raise InvalidParameter("regex", "must be a regular expression", self.regex)
            automata.regex_fsm(self.regex)  # what cannot be compiled is refused now, before any model loads
        if not isinstance(self.must_finish, bool):
            raise InvalidParameter("must_finish", "must be True or False", self.must_finish)
        high = automata.MAX_STATES - 2
        if isinstance(self.min_length, bool) or not isinstance(self.min_length, int) or not \
                0 <= self.min_length <= high:
            raise InvalidParameter("min_length", f"must be an integer from 0 to {high:,}", self.min_length)
        if not self.chars:
            return
        parts = self._compile()
        automaton = automata.intersect(*(a for _, _, a in parts)) if parts else \
            automata.Automaton.anything(self.vocab)
        object.__setattr__(self, "_parts", parts)
        object.__setattr__(self, "automaton", automaton)
        object.__setattr__(self, "_next", np.ascontiguousarray(automaton.next))

    @classmethod
    def build(cls, vocab: Vocab, regex: str | None = None, ban=(), min_length: int = 0, stop=(),
              must_finish: bool = False) -> Constraint:
        """The constraint over `vocab`'s characters (lists of strings are taken as tuples)."""
        return cls(regex, ban, min_length, stop, must_finish, vocab.chars)

    def parts(self) -> list[tuple[str, str, Any]]:
        """(what, its parameter, automaton) of each part that is set."""
        self._bound()
        return list(self._parts)

    def _compile(self) -> list[tuple[str, str, Any]]:
        from toolkit.sampling.automata import Automaton

        vocab, parts = self.vocab, []
        if self.regex is not None:
            parts.append((f"{{regex}} {self.regex!r}", "regex", Automaton.from_regex(self.regex, vocab)))
        if self.ban:
            parts.append(("{ban}", "ban", Automaton.from_banned(self.ban, vocab)))
        if self.min_length:
            parts.append((f"{{min_length}} {self.min_length}", "min_length",
                          Automaton.min_length(self.min_length, vocab)))
        if self.stop:
            parts.append(("{stop}", "stop", Automaton.stop(self.stop, vocab)))
        return parts

    def check(self, max_len: int, prompts: tuple[str, ...] = ("",)) -> None:
        """Refuse a constraint that allows no title (naming the part to blame), none within `max_len` characters,
        or a prompt it cannot extend."""
        from toolkit.sampling.automata import prompt_state

        parts = self.parts()
        names = tuple(param for _, param, _ in parts)
        for what, param, automaton in parts:
            automaton.check(max_len, what, (param,))
        together = " and ".join(f"{{{p}}}" for p in names)
        self.automaton.check(max_len, f"{together} together" if len(parts) > 1 else "the title constraint", names)
        for prompt in prompts:
            prompt_state(self.automaton, self.vocab.encode_known(prompt, "prompt"), max_len, prompt)

    def numpy(self, x: np.ndarray, rows: Rows) -> np.ndarray:
        self._width(x.shape[1])
        if self.must_finish:
            return x + np.where(self.automaton.need[rows.state[self.state.name]] <= rows.left, np.float32(0), NEG_INF)
        return x + self.automaton.mask[rows.state[self.state.name]]

    def onnx(self, g: Graph, x: str, rows: Rows) -> str:
        self._width(g.vocab)
        if self.must_finish:
            table = g.const("constraint_need", self.automaton.need, np.int32)
            need = g.op("Gather", table, rows.state[self.state.name], axis=0)
            fits = g.op("LessOrEqual", need, g.op("Cast", rows.left, to=6))
            # an additive mask, as without must_finish: Where(fits, x, -inf) would keep a -0.0 that Add makes 0.0
            return g.op("Add", x, g.op("Where", fits, g.const("constraint_kept", 0.0), g.const("constraint_removed",
                                                                                               NEG_INF)))
        mask = g.const("constraint_mask", self.automaton.mask, np.float32)
        return g.op("Add", x, g.op("Gather", mask, rows.state[self.state.name], axis=0))

    def accept(self, state: np.ndarray, ids: np.ndarray, drew: np.ndarray) -> np.ndarray:
        self._bound()
        return self._next[state, ids].astype(np.int64)

    def accept_onnx(self, g: Graph, state: str, ids: str, drew: str | None) -> str:
        self._bound()
        table = g.const("constraint_next", self._next.ravel(), np.int32)
        index = g.op("Add", g.op("Mul", state, g.const("constraint_width", self._next.shape[1], np.int64)), ids)
        return g.op("Cast", g.op("Gather", table, index, axis=0), to=7)


@dataclass(frozen=True)
class LogitBias(_OverVocabulary, Stateless):
    """Add a fixed amount to the logits of chosen characters: OpenAI's `logit_bias`, by character. `bias` holds
    (character, amount) pairs, each amount in [-100, 100] (a mapping is taken as its pairs); -100 all but bans the
    character, +100 all but forces it wherever it is allowed. It runs right after the constraint, so it never
    brings back an id the constraint removed (-inf plus any amount stays -inf)."""

    bias: tuple[tuple[str, float], ...] = ()
    chars: tuple[str, ...] = field(default=(), repr=False, metadata=UNRECORDED)
    knobs: ClassVar[dict[str, tuple[str, object]]] = {"logit_bias": ("bias", ())}

    def __post_init__(self) -> None:
        pairs = tuple(self.bias.items()) if isinstance(self.bias, dict) else self.bias
        if isinstance(pairs, str) or not isinstance(pairs, tuple | list) or not all(
                isinstance(p, tuple | list) and len(p) == 2 for p in pairs):
            raise InvalidParameter("logit_bias", "must be (character, amount) pairs", self.bias)
        seen: set[str] = set()
        for ch, amount in pairs:
            if not isinstance(ch, str) or len(ch) != 1:
                raise InvalidParameter("logit_bias", "must name single characters", ch)
            if ch in seen:
                raise InvalidParameter("logit_bias", "must name each character once", ch)
            seen.add(ch)
            _number("logit_bias", amount, -MAX_LOGIT_BIAS, MAX_LOGIT_BIAS,
                    f"for {ch!r} must lie in [-{MAX_LOGIT_BIAS}, {MAX_LOGIT_BIAS}]")
        object.__setattr__(self, "bias", tuple((ch, float(amount)) for ch, amount in pairs))
        object.__setattr__(self, "chars", tuple(self.chars))
        if not self.chars:
            return
        index = self.vocab.index
        unknown = [ch for ch, _ in self.bias if ch not in index]
        if unknown:
            shown = "".join(self.chars)
            shown = shown if len(shown) <= 80 else shown[:80] + "..."
            raise UsageError(f"{{logit_bias}} names {unknown[0]!r}, which is not in the model's vocabulary "
                             f"({len(self.chars)} characters: {shown!r}); bias only characters the model can draw",
                             "logit_bias")
        vector = np.zeros(len(SPECIALS) + len(self.chars), np.float32)
        for ch, amount in self.bias:
            vector[index[ch]] = np.float32(amount)
        object.__setattr__(self, "_vector", vector)

    def numpy(self, x: np.ndarray, rows: Rows) -> np.ndarray:
        self._width(x.shape[1])
        return x + self._vector

    def onnx(self, g: Graph, x: str, rows: Rows) -> str:
        self._width(g.vocab)
        return g.op("Add", x, g.const("logit_bias", self._vector))


# --- the chain ----------------------------------------------------------------------------------------------------

# The controls a command line sets, in the order they apply (Hugging Face's: guidance, the penalties, the
# temperature, then the filters; the title constraint and the logit bias right after the reserved ids, so that the
# temperature's greedy pick and the filters choose among allowed ids only). Each names its knobs: {knob: (its
# field, the value that turns it off)}; the temperature is always on.
CHAIN: tuple[type, ...] = (Guidance, Constraint, LogitBias, RepetitionPenalty, Temperature, TopK, TopP, MinP)
KNOBS = {knob: cls for cls in CHAIN for knob in getattr(cls, "knobs", {})}


def _knob(value: object) -> object:
    """A knob's value as a processor's field holds it: a list as a tuple, a mapping as its (key, value) pairs."""
    if isinstance(value, dict):
        return tuple(value.items())
    return tuple(value) if isinstance(value, list) else value


def from_knobs(**values: object) -> tuple[Processor, ...]:
    """The processors that knobs describe, in CHAIN's order; a processor whose knobs are all off is left out."""
    unknown = set(values) - set(KNOBS)
    if unknown:
        raise TypeError(f"unknown sampling knobs: {', '.join(sorted(unknown))}")
    values = {knob: _knob(value) for knob, value in values.items()}
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


def bind(processors: tuple[Processor, ...], vocab: Vocab) -> tuple[Processor, ...]:
    """The processors over the model's vocabulary: those that name characters built on its characters."""
    return tuple(p.bind(vocab) if isinstance(p, _OverVocabulary) else p for p in processors)


def over_vocabulary(processors: tuple[Processor, ...]) -> bool:
    """Whether a processor names characters: it must be built over (and checked against) the model's vocabulary."""
    return any(isinstance(p, _OverVocabulary) for p in processors)


def unbound(processors: tuple[Processor, ...], vocab: Vocab) -> bool:
    """Whether a processor that names characters is not yet built over `vocab`."""
    return any(isinstance(p, _OverVocabulary) and p.chars != vocab.chars for p in processors)


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
