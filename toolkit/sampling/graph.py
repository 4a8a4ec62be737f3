"""A tiny ONNX graph builder: each call adds a node and returns its output name.

Shared by the exporter (the model's step) and the sampling head, so both write graphs the same way.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


class Graph:
    """Nodes and initializers of one graph under construction; `opset` decides the form of a few operators and
    `vocab` is the width of the logits a sampling head works on."""

    def __init__(self, dtype: np.dtype = np.float32, opset: int = 17, prefix: str = "", vocab: int = 0):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.dtype, self.opset, self.prefix, self.vocab = dtype, opset, prefix, vocab
        self._names: set[str] = set()

    def const(self, name: str, value, dtype: np.dtype | None = None) -> str:
        """An initializer; a name already taken gets a numeric suffix, so a builder may use any name twice."""
        name = base = self.prefix + name
        while name in self._names:
            name = f"{base}_{len(self._names)}"
        self._names.add(name)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype or self.dtype), name))
        return name

    def op(self, op: str, *inputs: str, outputs: int = 1, name: str | None = None, **attrs) -> str | list[str]:
        base = name or f"{self.prefix}{op.lower()}_{len(self.nodes)}"
        names = [base] if outputs == 1 else [f"{base}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, list(inputs), names, name=base, **attrs))
        return names[0] if outputs == 1 else names

    def reduce(self, op: str, x: str, axis: int, keepdims: bool = True) -> str:
        """ReduceMax/ReduceSum over one axis: an attribute before opset 18 (13 for ReduceSum), an input since."""
        since = 13 if op == "ReduceSum" else 18
        if self.opset >= since:
            return self.op(op, x, self.const(f"{op.lower()}_axis_{len(self.initializers)}", [axis], np.int64),
                           keepdims=int(keepdims))
        return self.op(op, x, axes=[axis], keepdims=int(keepdims))


def make_model(graph: onnx.GraphProto, opset: int = 17, **kwargs) -> onnx.ModelProto:
    """A model of `graph` whose IR version is the oldest that reads `opset`, so older runtimes load it too."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], **kwargs)
    model.ir_version = helper.find_min_ir_version_for(model.opset_import)
    return model
