"""The sampling loops' contract: what a loop runs (`Step`) and returns (`Batch`), and the tensors a composed step
carries from one step to the next, with their names, shapes and dtypes, in one table.

A composed step (toolkit.sampling.head) takes each carried tensor `NAME` in and gives it back as `NAME_out`, so a
loop can keep them on the device and swap two sets of buffers:

| tensor | dims | what |
| --- | --- | --- |
| token | [rows] int64 | the id fed this step (<bos> first) |
| h, c | [layers, rows, units] | the model's state (c for LSTM only) |
| h_any, c_any | [layers, rows, units] | with guidance: the state of the row told "no class" (`twin`) |
| a processor's state | [rows, ...] | e.g. the repetition penalty's `counts` [rows, vocab] (processors.State) |
| done | [rows] bool | the row has emitted <eos> |
| logprob | [rows] float32 | the model's log-probability of the row's text so far |
| history | [K, rows] uint8 or int32 | the ids of the last K steps, oldest first: the host reads it every K steps |
| step | [] int64 | steps taken |

and inputs that only go in: per row for a whole chunk, `inverse_temperature` [rows, 1] float32, `temperature`
[rows] float32 (only when a temperature is 0, for the greedy rows), `counter` [rows] uint64 (the uniforms' counter
base), for a class-conditional model `class` [rows] int64 (the step's own input: contract.CLASS) and, with
prompts, `forced` [P + 1, rows] int64 (the prompt's id at each step, -1 where the row draws; the
last row is all -1); and for a block of K steps, `uniform` [K, rows] float32, made by draw.uniform_graph at the
block's start, so that the random numbers cost a few kernels a block rather than some thirty a step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from toolkit.sampling import contract
from toolkit.sampling.processors import guided, states
from toolkit.vocab import EOS, PAD

DONE, LOGPROB, HISTORY, STEP = "done", "logprob", "history", "step"
TEMPERATURE, INVERSE, COUNTER, FORCED, UNIFORM = "temperature", "inverse_temperature", "counter", "forced", "uniform"
SHRINK = 7 / 8  # a loop drops its ended rows once an eighth of them has ended: see docs/benchmarks.md

State = tuple[np.ndarray, ...]


class Step(Protocol):
    """One step of a recurrent model: (tokens [rows], state) -> (logits [rows, vocab], state); a class-conditional
    one is given its rows' classes with the initial state, and carries them at the end of it."""

    def initial_state(self, rows: int, classes: np.ndarray | None = None) -> State: ...
    def __call__(self, tokens: np.ndarray, state: State) -> tuple[np.ndarray, State]: ...
    def select(self, state: State, rows: np.ndarray) -> State: ...


def twin(state: str) -> str:
    """The name of a state's twin: the same model's state for the row told "no class" (for guidance)."""
    return state + "_any"


def select_rows(state: State, rows: np.ndarray) -> State:
    """A model state [layers, rows, units] per kind, keeping `rows`: every Step's `select`."""
    return tuple(s[:, rows] for s in state)


@dataclass
class Batch:
    ids: np.ndarray  # [rows, max_len] character ids, prompt included; padding from the end on
    finished: np.ndarray  # [rows] ended with <eos> within max_len
    logprob: np.ndarray  # [rows] float32: the model's log-probability of the text (and of its <eos>, if finished)


def forced_ids(prompt_ids: list[list[int]], prompt_of_row: np.ndarray) -> np.ndarray:
    """[P + 1, rows]: each row's prompt id at each step, -1 where it draws (the last row is all -1);
    `prompt_of_row` is SampleConfig.row_prompts of the rows."""
    width = max(map(len, prompt_ids))
    table = np.full((len(prompt_ids), width + 1), -1, np.int64)
    for i, ids in enumerate(prompt_ids):
        table[i, :len(ids)] = ids
    return np.ascontiguousarray(table[prompt_of_row].T)


def finish(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cut each row at its first <eos> (padding from there on) and say which rows had one."""
    ended = np.cumsum(ids == EOS, axis=1) > 0
    return np.where(ended, PAD, ids), ended[:, -1]


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: np.dtype
    dims: tuple[str | int, ...]  # "rows", "layers", "units", "vocab", "history", "prompt", or a size

    @property
    def row_axis(self) -> int | None:
        """Where the rows are (None: not per row, the step counter)."""
        return self.dims.index("rows") if "rows" in self.dims else None

    def shape(self, spec: contract.StepSpec, rows: int | str, history: int, prompt: int | str) -> tuple:
        """Its shape for `rows` rows (a name gives the symbolic shape of a graph input)."""
        sizes = {"rows": rows, "layers": spec.layers, "units": spec.units, "vocab": spec.vocab.size,
                 "history": history, "prompt": prompt}
        return tuple(sizes.get(d, d) for d in self.dims)


def history_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint8 if vocab_size <= 256 else np.int32)


def carried(spec: contract.StepSpec, processors: tuple) -> list[Tensor]:
    """The tensors that go in and come out again, in the graph's order: the token, the model's state, each
    processor's state, then the bookkeeping."""
    return [Tensor(contract.TOKEN, np.dtype(np.int64), ("rows",)),
            *(Tensor(s, np.dtype(np.float32), ("layers", "rows", "units")) for s in spec.states),
            *(Tensor(twin(s), np.dtype(np.float32), ("layers", "rows", "units")) for s in spec.states
              if guided(processors)),
            *(Tensor(s.name, np.dtype(s.dtype), ("rows", *s.dims)) for s in states(processors)),
            Tensor(DONE, np.dtype(bool), ("rows",)), Tensor(LOGPROB, np.dtype(np.float32), ("rows",)),
            Tensor(HISTORY, history_dtype(spec.vocab.size), ("history", "rows")), Tensor(STEP, np.dtype(np.int64), ())]


def constants(temperatures: tuple[float, ...], prompts: tuple[str, ...], classes: bool = False) -> list[Tensor]:
    """The inputs that only go in: per row for a whole chunk, then the block's uniforms."""
    greedy = [Tensor(TEMPERATURE, np.dtype(np.float32), ("rows",))] if 0 in temperatures else []
    forced = [Tensor(FORCED, np.dtype(np.int64), ("prompt", "rows"))] if max(map(len, prompts)) else []
    label = [Tensor(contract.CLASS, np.dtype(np.int64), ("rows",))] if classes else []
    return [Tensor(INVERSE, np.dtype(np.float32), ("rows", 1)), *greedy,
            Tensor(COUNTER, np.dtype(np.uint64), ("rows",)), *label, *forced,
            Tensor(UNIFORM, np.dtype(np.float32), ("history", "rows"))]


def layout(spec: contract.StepSpec, temperatures: tuple[float, ...], prompts: tuple[str, ...],
           processors: tuple) -> tuple[list[Tensor], list[Tensor]]:
    """(carried, constants) of a composed step: the whole table, for the head and the loop that runs it."""
    ins = constants(temperatures, prompts, bool(spec.classes))
    return carried(spec, processors), ins
