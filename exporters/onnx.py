"""`export-onnx`: one step of a trained run as a lean, self-describing ONNX graph, checked against Keras.

The graph is written node by node from the Keras weights rather than traced, so that it holds only what a step
needs: the embedding (or one-hot) and the first layer's input projection fold into one gather per gate from a
[vocab, units] table, and the state of all layers travels as one [layers, batch, units] tensor per kind (h, and c
for LSTM).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from toolkit import rundir, titles
from toolkit.config import TrainConfig, load_run_config
from toolkit.files import UsageError, atomic_path, clear_stale, write_failed, write_text
from toolkit.sampling import contract
from toolkit.sampling.graph import Graph, make_model
from toolkit.vocab import BOS, SPECIALS, Vocab

TOLERANCE = 1e-4  # float32: largest |logit difference| Keras vs onnxruntime over the check sequence
TOLERANCE_FP16 = 5e-2  # half precision: see docs/benchmarks.md ("fp16 export") for why
CHECK_STEPS, CHECK_BATCH = 256, 8
MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 13, 26, 17  # 26: the newest onnxruntime 1.31 loads
LSTM_GATES, GRU_GATES = "ifco", "zrh"  # Keras' order of the gates in its weight matrices


@dataclass(frozen=True)
class Layer:
    kernel: np.ndarray  # [inputs, gates * units]
    recurrent: np.ndarray  # [units, gates * units]
    bias: np.ndarray  # [gates * units]: the input bias
    recurrent_bias: np.ndarray | None  # GRU (reset_after): the bias inside r * (h @ U + b)


JOINT_TABLE_BYTES = 64 << 20  # a conditional step joins its class and token tables up to this size


@dataclass(frozen=True)
class Weights:
    cell: str
    embedding: np.ndarray  # [vocab, dim]; the identity for one-hot input
    layers: list[Layer]
    head: tuple[np.ndarray, np.ndarray]  # Dense kernel [units, vocab], bias [vocab]
    classes: np.ndarray | None = None  # a conditional model's class vectors [classes + 1, dim] (the last: no class);
    # the first layer's kernel then takes [the embedding, the class vector]. Exported as one input table indexed by
    # (class, token), so that a conditional step costs what an unconditional one does (JOINT_TABLE_BYTES)

    @property
    def units(self) -> int:
        return self.layers[0].recurrent.shape[0]


def read_weights(model) -> Weights:
    """The arrays of a model built by toolkit.model.build_model, in the layout the graph uses."""
    import keras

    from toolkit.model import TiedEmbedding, rnn_layers

    cell_layers = rnn_layers(model)
    if not cell_layers:
        raise UsageError("the checkpoint holds no LSTM or GRU layer; export only models made by `cli.py train`")
    cell = "lstm" if isinstance(cell_layers[0], keras.layers.LSTM) else "gru"
    layers = []
    for rnn in cell_layers:
        kernel, recurrent, bias = (np.asarray(w, np.float32) for w in rnn.cell.get_weights())
        if cell == "lstm":
            layers.append(Layer(kernel, recurrent, bias, None))
        elif bias.ndim == 2:  # reset_after=True, Keras' default: [input bias, recurrent bias]
            layers.append(Layer(kernel, recurrent, bias[0], bias[1]))
        else:
            raise UsageError("GRU with reset_after=False is not supported; train with `cli.py train --cell gru`")
    names = {layer.name for layer in model.layers}
    first = model.get_layer("embedding" if "embedding" in names else "one_hot")
    embedding = np.asarray(first.get_weights()[0], np.float32)
    head = first.head() if isinstance(first, TiedEmbedding) else model.get_layer("logits").get_weights()
    head = tuple(np.asarray(w, np.float32) for w in head)
    classes = None
    if "class_embedding" in names:
        if "with_class" not in names:
            raise UsageError("this run learned its classes through the initial state (condition_via state), which "
                             "export does not support; train with the default condition_via input")
        classes = np.asarray(model.get_layer("class_embedding").get_weights()[0], np.float32)
    return Weights(cell, embedding, layers, head, classes)


class _StepGraph:
    """What the layers of one step share while it is built: the graph, the dtype and how outputs are named."""

    def __init__(self, w: Weights, opset: int, fp16: bool):
        self.g, self.fp16, self.w = Graph(np.float16 if fp16 else np.float32, opset), fp16, w
        self.gates = LSTM_GATES if w.cell == "lstm" else GRU_GATES
        self.tensor = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT

    def boundary_in(self, name: str) -> str:
        return self.g.op("Cast", name, to=self.tensor, name=f"{name}_cast") if self.fp16 else name

    def op(self, last: bool, name: str, op: str, *inputs: str, **attrs) -> str:
        """A node; for the last layer, the node that makes graph output `name` (then Cast back in half precision)."""
        if not last:
            return self.g.op(op, *inputs, **attrs)
        return self.output(op, *inputs, name=name, **attrs)

    def output(self, op: str, *inputs: str, name: str, **attrs) -> str:
        """The node that makes a graph output: named after it, followed by a Cast in half precision."""
        if self.fp16:
            inner = self.g.op(op, *inputs, **attrs)
            self.g.op("Cast", inner, name=name, to=TensorProto.FLOAT)
            return inner
        return self.g.op(op, *inputs, name=name, **attrs)

    def by_gate(self, name: str, matrix: np.ndarray) -> dict[str, str]:
        return {gate: self.g.const(f"{name}_{gate}", part)
                for gate, part in zip(self.gates, np.split(matrix, len(self.gates), axis=-1), strict=True)}


def _lstm_layer(b: _StepGraph, i: int, layer: Layer, x: dict[str, str], prev: dict[str, str],
                last: bool) -> dict[str, str]:
    """One LSTM layer: its gates from the input projections `x` and the previous state; returns h and c."""
    g = b.g
    recurrent = b.by_gate(f"recurrent_kernel_{i}", layer.recurrent)
    z = {gate: g.op("Add", g.op("MatMul", prev["h"], recurrent[gate]), x[gate]) for gate in b.gates}
    in_gate, forget, out_gate = (g.op("Sigmoid", z[gate]) for gate in "ifo")
    c = b.op(last, contract.out("c"), "Add", g.op("Mul", forget, prev["c"]), g.op("Mul", in_gate, g.op("Tanh", z["c"])))
    h = b.op(last, contract.out("h"), "Mul", out_gate, g.op("Tanh", c))
    return {"h": h, "c": c}


def _gru_layer(b: _StepGraph, i: int, layer: Layer, x: dict[str, str], prev: dict[str, str],
               last: bool) -> dict[str, str]:
    """One GRU layer (reset_after: r multiplies (h U_h + b_h)); returns h."""
    g = b.g
    recurrent = b.by_gate(f"recurrent_kernel_{i}", layer.recurrent)
    rec_bias = b.by_gate(f"recurrent_bias_{i}", layer.recurrent_bias)
    rec = {gate: g.op("Add", g.op("MatMul", prev["h"], recurrent[gate]), rec_bias[gate]) for gate in b.gates}
    update, reset = (g.op("Sigmoid", g.op("Add", x[gate], rec[gate])) for gate in "zr")
    cand = g.op("Tanh", g.op("Add", x["h"], g.op("Mul", reset, rec["h"])))
    h = b.op(last, contract.out("h"), "Add", cand, g.op("Mul", update, g.op("Sub", prev["h"], cand)))  # z h + (1-z) c
    return {"h": h}


LAYERS = {"lstm": _lstm_layer, "gru": _gru_layer}


def build_step_graph(w: Weights, metadata: dict[str, str], opset: int = DEFAULT_OPSET,
                     fp16: bool = False) -> onnx.ModelProto:
    """The single-step model. Inputs and outputs are float32 at the boundary, whatever the weights are.

    Each gate has its own input table and recurrent matrix, so no tensor is ever split: onnxruntime copies every
    Split or Slice (it has no views), and those copies were the largest single cost of a step on a GPU. A one-layer
    model keeps its state [1, rows, units] from input to output, so h_out and c_out are written in place.
    """
    b = _StepGraph(w, opset, fp16)
    g, units, n = b.g, w.units, len(w.layers)
    kinds = contract.STATES[w.cell]
    state = {k: b.boundary_in(k) for k in kinds}
    first = w.layers[0]
    dim = w.embedding.shape[1]
    projected = w.embedding @ first.kernel[:dim] + first.bias  # embedding, projection, bias: [vocab, gates * units]
    index = contract.TOKEN
    if w.classes is not None and w.classes.shape[0] * projected.nbytes <= JOINT_TABLE_BYTES:
        # (class, token) -> the first layer's input: one Gather, as cheap as an unconditional step's
        projected = ((w.classes @ first.kernel[dim:])[:, None, :] + projected[None]).reshape(-1, projected.shape[1])
        index = g.op("Add", g.op("Mul", contract.CLASS, g.const("vocab_size", len(w.embedding), np.int64)),
                     contract.TOKEN)
    tables = b.by_gate("input_table", projected)
    x = {gate: g.op("Gather", table, index, axis=0, name=f"input_{gate}") for gate, table in tables.items()}
    if w.classes is not None and index == contract.TOKEN:  # a table too large to join: what each class adds
        by_class = b.by_gate("class_table", w.classes @ first.kernel[dim:])
        x = {gate: g.op("Add", x[gate], g.op("Gather", by_class[gate], contract.CLASS, axis=0, name=f"class_{gate}"))
             for gate in b.gates}
    news: dict[str, list[str]] = {k: [] for k in kinds}
    for i, layer in enumerate(w.layers):
        if n == 1:  # then the layer's results are the graph's outputs
            prev = state
        else:
            index = g.const(f"layer_{i}", np.int64(i), np.int64)
            prev = {k: g.op("Gather", state[k], index, axis=0, name=f"{k}_{i}") for k in kinds}
        if i:
            kernels, biases = b.by_gate(f"kernel_{i}", layer.kernel), b.by_gate(f"bias_{i}", layer.bias)
            x = {gate: g.op("Gemm", news["h"][-1], kernels[gate], biases[gate]) for gate in b.gates}
        for k, v in LAYERS[w.cell](b, i, layer, x, prev, last=n == 1).items():
            news[k].append(v)
    top = news["h"][-1]
    if n == 1:
        top = g.op("Squeeze", top, g.const("axis0", [0], np.int64))
    b.output("Gemm", top, g.const("head_kernel", w.head[0]), g.const("head_bias", w.head[1]), name=contract.LOGITS)
    if n > 1:
        axis0 = g.const("axis0", [0], np.int64)
        for k in kinds:
            b.output("Concat", *(g.op("Unsqueeze", v, axis0) for v in news[k]), axis=0, name=contract.out(k))

    vocab_size = w.embedding.shape[0]
    state_shape = [n, "batch", units]
    graph = helper.make_graph(
        g.nodes, f"charlm_{w.cell}_step", [
            helper.make_tensor_value_info(contract.TOKEN, TensorProto.INT64, ["batch"]),
            *(helper.make_tensor_value_info(k, TensorProto.FLOAT, state_shape) for k in kinds),
            *([helper.make_tensor_value_info(contract.CLASS, TensorProto.INT64, ["batch"])]
              if w.classes is not None else [])],
        [helper.make_tensor_value_info(contract.LOGITS, TensorProto.FLOAT, ["batch", vocab_size]),
         *(helper.make_tensor_value_info(contract.out(k), TensorProto.FLOAT, state_shape) for k in kinds)],
        g.initializers)
    model = make_model(graph, opset, producer_name="charlm",
                       doc_string="One step of a character-level title generator. Feed <bos> first.")
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    return model


def max_logit_difference(model, onnx_path: Path, vocab_size: int, seed: int = 0, classes: int = 0) -> float:
    """Run one token sequence through Keras (whole sequence) and onnxruntime (step by step, state carried); a
    conditional model's rows take every class in turn, "no class" included."""
    from toolkit.sampling.runtime import OnnxStep

    rng = np.random.default_rng(seed)
    tokens = rng.integers(len(SPECIALS), vocab_size, size=(CHECK_BATCH, CHECK_STEPS))
    tokens[:, 0] = BOS
    labels = np.arange(CHECK_BATCH) % (classes + 1) if classes else None
    inputs = tokens.astype(np.int32) if labels is None else [tokens.astype(np.int32), labels.astype(np.int32)]
    expected = np.asarray(model(inputs, training=False))
    if not np.isfinite(expected).all():  # else NaN compares as no difference and a diverged model would pass
        raise UsageError("the checkpoint gives non-finite logits (NaN or inf): its training diverged; retrain "
                         "with a lower {lr}", "lr")
    step = OnnxStep(onnx_path, device="cpu")
    state = step.initial_state(CHECK_BATCH, labels)
    diff = 0.0
    for t in range(CHECK_STEPS):
        logits, state = step(tokens[:, t], state)
        gap = float(np.abs(logits - expected[:, t]).max())
        diff = max(diff, gap if math.isfinite(gap) else math.inf)
    return diff


@dataclass(frozen=True)
class Export:
    path: Path
    max_abs_diff: float
    tolerance: float
    opset: int
    fp16: bool


def check_arguments(run_dir: Path, checkpoint: str, opset: int, out: Path | None = None,
                    fp16: bool = False) -> tuple[TrainConfig, dict, Path, Path]:
    """Refuse what cannot be exported before any TensorFlow loads; returns the run's config, facts, checkpoint and
    the model file to write."""
    run_dir = Path(run_dir)
    if checkpoint not in rundir.CHECKPOINTS:
        raise UsageError(f"{{checkpoint}} must be best or last, not {checkpoint!r}", "checkpoint")
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(f"{{opset}} must lie in {MIN_OPSET}..{MAX_OPSET}, not {opset}", "opset")
    if not run_dir.is_dir():
        raise UsageError(f"run directory {run_dir} {'is not a directory' if run_dir.exists() else 'does not exist'}; "
                         "pass a directory made by `cli.py train`")
    config, facts = load_run_config(run_dir)
    ckpt = run_dir / rundir.CHECKPOINTS[checkpoint]
    if not ckpt.is_file():
        raise UsageError(f"{run_dir} has no {ckpt.name} (training has not completed an epoch); train first")
    return config, facts, ckpt, rundir.export_target(run_dir, out, fp16)


def _load(run_dir: Path, name: str, load):
    """What `load` reads of the run; a missing, truncated or foreign file is one line naming that file."""
    try:
        return load()
    except Exception as e:  # Keras and json raise many types
        raise UsageError(f"cannot load {name} from {run_dir} ({str(e).splitlines()[0][:160]}); the run is "
                         "incomplete or corrupt") from None


def export(run_dir: Path, out: Path | None = None, checkpoint: str = "best", opset: int = DEFAULT_OPSET,
           fp16: bool = False) -> Export:
    """Export a run's checkpoint; the file appears only once onnxruntime reproduces Keras within tolerance."""
    run_dir = Path(run_dir)
    config, facts, ckpt, out = check_arguments(run_dir, checkpoint, opset, out, fp16)
    clear_stale(out.parent)  # what killed exports left there
    import keras

    import toolkit.model  # noqa: F401  registers the custom metric the checkpoint refers to

    vocab = _load(run_dir, rundir.VOCAB, lambda: Vocab.load(run_dir / rundir.VOCAB))
    model = _load(run_dir, ckpt.name, lambda: keras.saving.load_model(ckpt, compile=False))
    weights = read_weights(model)
    if weights.embedding.shape[0] != vocab.size:
        raise UsageError(f"{ckpt} has {weights.embedding.shape[0]} ids but {rundir.VOCAB} has {vocab.size}; "
                         "the run is inconsistent")
    reference = run_dir / titles.FILE
    spec = contract.StepSpec(weights.cell, len(weights.layers), weights.units, vocab, config.to_dict(),
                             facts.get("data_fingerprint", ""), "float16" if fp16 else "float32",
                             reference.read_bytes() if reference.is_file() else None,
                             tuple(facts.get("classes", ())) if weights.classes is not None else ())
    graph = build_step_graph(weights, spec.metadata(checkpoint), opset, fp16)
    tolerance = TOLERANCE_FP16 if fp16 else TOLERANCE
    with atomic_path(out) as tmp:  # the model appears last, once checked and its record written
        try:
            onnx.save(graph, tmp)
        except (OSError, ValueError) as e:  # onnx turns some failed writes into ValueError
            raise write_failed(out, e if isinstance(e, OSError) else OSError(str(e))) from None
        diff = max_logit_difference(model, tmp, vocab.size, classes=len(spec.classes))
        if not diff <= tolerance:
            raise UsageError(f"verification failed: onnxruntime's logits differ from Keras' by {diff:.3g} "
                             f"(tolerance {tolerance:g}); no model written")
        write_text(rundir.verify_path(out), json.dumps({
            "model": out.name, "run": str(run_dir), "checkpoint": checkpoint, "max_abs_logit_diff": diff,
            "tolerance": tolerance, "steps": CHECK_STEPS, "batch": CHECK_BATCH, "opset": opset,
            "precision": spec.precision}, indent=2))
    return Export(out, diff, tolerance, opset, fp16)
