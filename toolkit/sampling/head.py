"""The sampling head: the config's processors, the draw and the bookkeeping of a sampling step, appended to an
exported step model so that one session run does step + processors + draw.

The composed graph carries everything a row needs from one step to the next as tensors that go in and come out
again (`NAME` in, `NAME_out` back), so a loop can keep them on the device and swap two sets of buffers:

| tensor | shape | what |
| --- | --- | --- |
| token | [rows] int64 | the id fed this step (<bos> first) |
| h, c | [layers, rows, units] | the model's state (c for LSTM only) |
| counts | [rows, vocab] float32 | how often each id was drawn (only when a processor needs it) |
| done | [rows] bool | the row has emitted <eos> |
| logprob | [rows] float32 | the model's log-probability of the row's text so far |
| history | [K, rows] uint8 or int32 | the ids of the last K steps, oldest first: the host reads it every K steps |
| step | [] int64 | steps taken |

and inputs that only go in: per row for a whole chunk, `inverse_temperature` [rows, 1] float32, `temperature`
[rows] float32 (only when a temperature is 0, for the greedy rows), `counter` [rows] uint64 (the uniforms' counter
base) and, with prompts, `forced` [P + 1, rows] int64 (the prompt's id at each step, -1 where the row draws; the
last row is all -1); and for a block of K steps, `uniform` [K, rows] float32, made by `uniform_graph` at the
block's start, so that the random numbers cost a few kernels a block rather than some thirty a step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from toolkit.sampling import contract
from toolkit.sampling.config import SampleConfig
from toolkit.sampling.draw import draw_onnx, log_prob_onnx, squares_key, uniforms_onnx
from toolkit.sampling.graph import Graph, make_model
from toolkit.sampling.processors import Ban, Rows
from toolkit.vocab import EOS

COUNTS, DONE, LOGPROB, HISTORY, STEP = "counts", "done", "logprob", "history", "step"
TEMPERATURE, INVERSE, COUNTER, FORCED, UNIFORM = "temperature", "inverse_temperature", "counter", "forced", "uniform"


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: np.dtype
    row_axis: int | None  # None: not per row (the step counter)

    def shape(self, spec: contract.StepSpec, rows: int | str, history: int, prompt: int | str) -> tuple:
        """Its shape for `rows` rows (a name gives the symbolic shape of a graph input)."""
        return {contract.TOKEN: (rows,), COUNTS: (rows, spec.vocab.size), DONE: (rows,), LOGPROB: (rows,),
                HISTORY: (history, rows), STEP: (), TEMPERATURE: (rows,), INVERSE: (rows, 1), COUNTER: (rows,),
                FORCED: (prompt, rows), UNIFORM: (history, rows)}.get(self.name, (spec.layers, rows, spec.units))


def history_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint8 if vocab_size <= 256 else np.int32)


def carried(spec: contract.StepSpec, config: SampleConfig) -> list[Tensor]:
    """The tensors that go in and come out again, in the graph's order."""
    return [Tensor(contract.TOKEN, np.dtype(np.int64), 0),
            *(Tensor(s, np.dtype(np.float32), contract.STATE_ROW_AXIS) for s in spec.states),
            *([Tensor(COUNTS, np.dtype(np.float32), 0)] if config.uses_counts else []),
            Tensor(DONE, np.dtype(bool), 0), Tensor(LOGPROB, np.dtype(np.float32), 0),
            Tensor(HISTORY, history_dtype(spec.vocab.size), 1), Tensor(STEP, np.dtype(np.int64), None)]


def constants(config: SampleConfig) -> list[Tensor]:
    """The inputs that only go in: per row for a whole chunk, then the block's uniforms."""
    greedy = [Tensor(TEMPERATURE, np.dtype(np.float32), 0)] if 0 in config.temperatures else []
    forced = [Tensor(FORCED, np.dtype(np.int64), 1)] if max(map(len, config.prompts)) else []
    return [Tensor(INVERSE, np.dtype(np.float32), 0), *greedy, Tensor(COUNTER, np.dtype(np.uint64), 0), *forced,
            Tensor(UNIFORM, np.dtype(np.float32), 1)]


def uniform_graph(config: SampleConfig, history: int, opset: int = 17) -> onnx.ModelProto:
    """counter [rows] uint64 and the block's first step [] int64 -> uniform [history, rows]: each row's uniforms
    for the block's steps, a function of (seed, row, step) as `draw.uniforms` makes them."""
    g = Graph(np.float32, opset)
    steps = g.op("Unsqueeze", g.op("Add", "first_step", g.const("offsets", np.arange(history), np.int64)),
                 g.const("axis1", [1], np.int64))
    g.op("Identity", uniforms_onnx(g, squares_key(config.seed), COUNTER, steps), name=UNIFORM)
    graph = helper.make_graph(g.nodes, "uniforms", [
        helper.make_tensor_value_info(COUNTER, TensorProto.UINT64, ["batch"]),
        helper.make_tensor_value_info("first_step", TensorProto.INT64, [])],
        [helper.make_tensor_value_info(UNIFORM, TensorProto.FLOAT, [history, "batch"])], g.initializers)
    return make_model(graph, opset)


def compose(step: onnx.ModelProto, spec: contract.StepSpec, config: SampleConfig, history: int) -> onnx.ModelProto:
    """The step model with the sampling head appended; `history` is how many steps the history tensor holds."""
    model = onnx.ModelProto()
    model.CopyFrom(step)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    g = Graph(np.float32, opset, prefix="head_", vocab=spec.vocab.size)
    rows = Rows(TEMPERATURE, COUNTS if config.uses_counts else None, greedy=0 in config.temperatures, inverse=INVERSE)
    x = Ban().onnx(g, contract.LOGITS, rows)
    for processor in config.processors:
        x = processor.onnx(g, x, rows)
    u = g.op("Gather", UNIFORM, g.op("Mod", STEP, g.const("block", history, np.int64)), axis=0)
    drawn = draw_onnx(g, x, u)
    if max(map(len, config.prompts)):
        last = g.const("last_forced", max(map(len, config.prompts)), np.int64)
        forced = g.op("Gather", FORCED, g.op("Min", STEP, last), axis=0)
        chosen = g.op("Where", g.op("GreaterOrEqual", forced, g.const("zero_id", 0, np.int64)), forced, drawn)
        sampled = g.op("Less", forced, g.const("zero_id_", 0, np.int64))
    else:
        chosen, sampled = drawn, None
    g.op("Identity", chosen, name=contract.out(contract.TOKEN))
    g.op("Or", DONE, g.op("Equal", chosen, g.const("eos", EOS, np.int64)), name=contract.out(DONE))
    lp = log_prob_onnx(g, contract.LOGITS, chosen)
    g.op("Add", LOGPROB, g.op("Where", DONE, g.const("zero_lp", 0.0), lp), name=contract.out(LOGPROB))
    if config.uses_counts:
        one_hot = g.op("Cast", g.op("Equal", g.op("Unsqueeze", chosen, g.const("count_axis", [1], np.int64)),
                                    g.const("ids", np.arange(spec.vocab.size), np.int64)), to=TensorProto.FLOAT)
        if sampled is not None:
            one_hot = g.op("Mul", one_hot, g.op("Unsqueeze", g.op("Cast", sampled, to=TensorProto.FLOAT),
                                                 g.const("count_axis_", [1], np.int64)))
        g.op("Add", COUNTS, one_hot, name=contract.out(COUNTS))
    kind = helper.np_dtype_to_tensor_dtype(history_dtype(spec.vocab.size))
    older = g.op("Slice", HISTORY, *(g.const(f"history_{n}", [v], np.int64) for n, v in
                                     (("start", 1), ("end", history), ("axis", 0))))
    newest = g.op("Unsqueeze", g.op("Cast", chosen, to=kind), g.const("history_axis", [0], np.int64))
    g.op("Concat", older, newest, axis=0, name=contract.out(HISTORY))
    g.op("Add", STEP, g.const("one", 1, np.int64), name=contract.out(STEP))

    model.graph.node.extend(g.nodes)
    model.graph.initializer.extend(g.initializers)
    def value_info(t: Tensor, name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(t.dtype),
                                             t.shape(spec, "batch", history, "prompt"))

    model.graph.input.extend(value_info(t, t.name) for t in [*carried(spec, config), *constants(config)]
                             if t.name not in (contract.TOKEN, *spec.states))
    del model.graph.output[:]
    model.graph.output.extend(value_info(t, contract.out(t.name)) for t in carried(spec, config))
    onnx.checker.check_model(model)
    return model
