"""The draw: counter-based uniforms, an inverse-CDF draw and the model's log-probability of the chosen id, each as
numpy (the reference) and as ONNX nodes (the sampling head).

Uniforms come from Widynski's Squares RNG ("Squares: a fast counter-based RNG", 2020): four rounds of 64-bit
multiply, add and a 32-bit rotation. Those are plain ONNX arithmetic on uint64 (a shift is a division or a
multiplication by 2^32), which onnxruntime runs on CPU and CUDA alike; its CUDA provider has no bitwise kernels,
so the usual xor-shift mixers cannot run there. The counter is `(row << 24) + step + 1` and the key comes from the
seed, so a row's draws depend on (seed, row, step) alone: not on the batch, the chunk or the dropping of rows.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from toolkit.sampling.graph import Graph, make_model
from toolkit.sampling.tensors import COUNTER, UNIFORM

STEP_BITS = 24  # a row's counter space: at most 2^24 - 1 steps
MAX_STEPS = 2**STEP_BITS - 1
MAX_ROWS = 2**40  # rows of one run, so that (row << 24) + step fits in 64 bits
_MASK64 = 2**64 - 1
_HALF = np.uint64(2**32)


def squares_key(seed: int) -> np.uint64:
    """A well-mixed odd 64-bit key from any seed in [0, 2^64) (SplitMix64's finaliser)."""
    x = (seed + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return np.uint64((x ^ (x >> 31)) | 1)


def counters(rows: np.ndarray) -> np.ndarray:
    """Each row's counter base: its global index shifted past the step bits."""
    return np.asarray(rows, np.uint64) << np.uint64(STEP_BITS)


def uniforms(key: np.uint64, counter: np.ndarray, step: int) -> np.ndarray:
    """One float32 uniform in (0, 1) per row: 23 random bits (exact in float32) plus a half."""
    x = (counter + np.uint64(step + 1)) * key  # uint64 arrays wrap, as the graph's arithmetic does
    y, z = x, x + key
    for w in (y, z, y):
        x = x * x + w
        x = x // _HALF + x * _HALF  # rotate by 32: the two halves do not overlap, so + is |
    bits = (x * x + z) // _HALF // np.uint64(2**9)
    return (bits.astype(np.float32) + np.float32(0.5)) * np.float32(2.0**-23)


def uniforms_onnx(g: Graph, key: np.uint64, counter: str, step: str) -> str:
    half, k = g.const("squares_half", _HALF, np.uint64), g.const("squares_key", key, np.uint64)
    ctr = g.op("Add", counter, g.op("Cast", g.op("Add", step, g.const("one_step", 1, np.int64)), to=13))
    x = g.op("Mul", ctr, k)
    y, z = x, g.op("Add", x, k)
    for w in (y, z, y):
        x = g.op("Add", g.op("Mul", x, x), w)
        x = g.op("Add", g.op("Div", x, half), g.op("Mul", x, half))
    bits = g.op("Div", g.op("Div", g.op("Add", g.op("Mul", x, x), z), half), g.const("squares_drop", 2**9, np.uint64))
    return g.op("Mul", g.op("Add", g.op("Cast", bits, to=1), g.const("half_bit", 0.5)), g.const("bit", 2.0**-23))


def uniform_graph(seed: int, history: int, opset: int = 17) -> onnx.ModelProto:
    """counter [rows] uint64 and the block's first step [] int64 -> uniform [history, rows]: each row's uniforms
    for the block's steps, a function of (seed, row, step) as `uniforms` makes them."""
    key, g = squares_key(seed), Graph(np.float32, opset)
    steps = g.op("Unsqueeze", g.op("Add", "first_step", g.const("offsets", np.arange(history), np.int64)),
                 g.const("axis1", [1], np.int64))
    g.op("Identity", uniforms_onnx(g, key, COUNTER, steps), name=UNIFORM)
    graph = helper.make_graph(g.nodes, "uniforms", [
        helper.make_tensor_value_info(COUNTER, TensorProto.UINT64, ["batch"]),
        helper.make_tensor_value_info("first_step", TensorProto.INT64, [])],
        [helper.make_tensor_value_info(UNIFORM, TensorProto.FLOAT, [history, "batch"])], g.initializers)
    return make_model(graph, opset)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def draw(x: np.ndarray, u: np.ndarray) -> np.ndarray:
    """One id per row by inverse CDF: the first id whose running probability reaches u * total."""
    cdf = np.cumsum(softmax(x), axis=1)
    return np.count_nonzero(cdf < u[:, None] * cdf[:, -1:], axis=1)


def draw_onnx(g: Graph, x: str, u: str) -> str:
    cdf = g.op("CumSum", g.op("Softmax", x, axis=1), g.const("cdf_axis", 1, np.int64))  # Softmax: one kernel
    total = g.op("Slice", cdf, *(g.const(f"total_{n}", [v], np.int64) for n, v in
                                 (("start", -1), ("end", g.vocab), ("axis", 1))))
    below = g.op("Less", cdf, g.op("Mul", g.op("Unsqueeze", u, g.const("u_axis", [1], np.int64)), total))
    return g.op("Cast", g.reduce("ReduceSum", g.op("Cast", below, to=1), 1, keepdims=False), to=7)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Natural-log probabilities of each row, in the logits' own dtype."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def log_prob(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The model's own log-probability of each row's id (raw logits: no temperature, no processor)."""
    return np.take_along_axis(log_softmax(logits), ids[:, None], axis=1)[:, 0]


def log_prob_onnx(g: Graph, logits: str, ids: str) -> str:
    chosen = g.op("GatherElements", g.op("LogSoftmax", logits, axis=1),
                  g.op("Unsqueeze", ids, g.const("id_axis", [1], np.int64)), axis=1)
    return g.op("Squeeze", chosen, g.const("lp_axis", [1], np.int64))
