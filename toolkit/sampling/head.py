"""The sampling head: the config's processors, the draw and the bookkeeping of a sampling step, appended to an
exported step model so that one session run does step + processors + draw. The tensors it carries from step to step
are toolkit.sampling.tensors'."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from toolkit.sampling import contract, processors
from toolkit.sampling.config import SampleConfig
from toolkit.sampling.draw import draw_onnx, log_prob_onnx
from toolkit.sampling.graph import Graph
from toolkit.sampling.tensors import (
    DONE,
    FORCED,
    HISTORY,
    INVERSE,
    LOGPROB,
    STEP,
    TEMPERATURE,
    UNIFORM,
    Tensor,
    history_dtype,
    twin,
)
from toolkit.vocab import EOS


def compose(step: onnx.ModelProto, spec: contract.StepSpec, config: SampleConfig, history: int,
            carried: list[Tensor], constants: list[Tensor]) -> onnx.ModelProto:
    """The step model with the sampling head appended; `history` is how many steps the history tensor holds, and
    `carried` and `constants` are tensors.layout's table of the tensors it takes and gives back."""
    model = onnx.ModelProto()
    model.CopyFrom(step)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    g = Graph(np.float32, opset, prefix="head_", vocab=spec.vocab.size)
    state = {s.name: s.name for s in processors.states(config.processors)}
    unconditional = _add_twin(model, spec) if processors.guided(config.processors) else None
    left = g.op("Sub", g.const("max_len", config.max_len, np.int64), STEP)
    rows = processors.Rows(TEMPERATURE, state, greedy=0 in config.temperatures, inverse=INVERSE,
                           unconditional=unconditional, left=left)
    x = processors.apply_onnx(config.processors, g, contract.LOGITS, rows)
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
    for name, updated in processors.accept_onnx(config.processors, g, chosen, sampled).items():
        g.op("Identity", updated, name=contract.out(name))
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

    model.graph.input.extend(value_info(t, t.name) for t in [*carried, *constants]
                             if t.name not in (contract.TOKEN, contract.CLASS, *spec.states))  # the step's own
    del model.graph.output[:]
    model.graph.output.extend(value_info(t, contract.out(t.name)) for t in carried)
    onnx.checker.check_model(model)
    return model


def _add_twin(model: onnx.ModelProto, spec: contract.StepSpec) -> str:
    """Add a second copy of the step's nodes to `model`: it reads the same token and weights, the twin state
    (tensors.twin) and "no class", and gives the twin state's next value and the logits it returns (their name)."""
    graph = model.graph
    shared = {i.name for i in graph.initializer} | {contract.TOKEN, ""}
    names = {contract.CLASS: "class_any", **{s: twin(s) for s in spec.states},
             **{contract.out(s): contract.out(twin(s)) for s in spec.states}}

    def rename(name: str) -> str:
        return name if name in shared else names.get(name, name + "_any")

    copies = []
    for node in graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise ValueError(f"guidance cannot copy node {node.name!r}: it holds a subgraph")
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = f"{node.name}_any" if node.name else ""
        copy.input[:] = [rename(i) for i in node.input]
        copy.output[:] = [rename(o) for o in node.output]
        copies.append(copy)
    no_class = helper.make_node("ConstantOfShape", [names[contract.CLASS] + "_shape"], [names[contract.CLASS]],
                                value=onnx.numpy_helper.from_array(np.array([spec.no_class], np.int64)))
    shape = helper.make_node("Shape", [contract.TOKEN], [names[contract.CLASS] + "_shape"])
    graph.node.extend([shape, no_class, *copies])
    return rename(contract.LOGITS)
