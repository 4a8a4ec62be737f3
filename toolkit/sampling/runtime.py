"""onnxruntime sessions for exported models: provider choice as it really starts, TF32 off by default on CUDA,
and one-step execution for checks and scoring. Needs numpy and onnxruntime only.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from toolkit.files import UsageError
from toolkit.sampling import contract
from toolkit.sampling.graph import make_model
from toolkit.sampling.tensors import select_rows

DEVICES = ("auto", "cuda", "cpu")
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


def cpu_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_device(device: str, start: bool = False) -> None:
    """Refuse an unknown device; with `start`, also `cuda` where onnxruntime cannot really start its CUDA provider
    (it lists the provider as available even then), by starting a session of a one-node model: a fraction of a
    second, so a command checks it before its first expensive step."""
    if device not in DEVICES:
        raise UsageError(f"{{device}} must be one of {', '.join(DEVICES)}, not {device!r}", "device")
    if start and device == "cuda":
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        session(make_model(graph), device)


@dataclass(frozen=True)
class Model:
    """An exported step model read from disk, with what its metadata says about it."""

    path: Path
    proto: onnx.ModelProto
    spec: contract.StepSpec

    @classmethod
    def load(cls, path: str | Path) -> Model:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"model {path} {'is not a file' if path.exists() else 'does not exist'}; pass an .onnx "
                             "file made by `python cli.py export-onnx RUN`")
        try:
            proto = onnx.load(str(path))
            onnx.checker.check_model(proto)
        except Exception as e:  # protobuf and onnx raise their own untyped errors for foreign files
            raise UsageError(f"{path} is not a readable ONNX model ({str(e).splitlines()[0][:200]}); "
                             "export it again with `python cli.py export-onnx RUN`") from None
        spec = contract.StepSpec.from_metadata({p.key: p.value for p in proto.metadata_props}, path)
        _check_graph(proto, spec, path)
        return cls(path, proto, spec)


def _check_graph(proto: onnx.ModelProto, spec: contract.StepSpec, path: Path) -> None:
    """The graph's inputs and outputs are those its metadata describes (a tampered or foreign file is refused here,
    not by onnxruntime in the middle of sampling)."""
    def dims(value: onnx.ValueInfoProto) -> list[int | None]:
        return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]

    inputs = {v.name: dims(v) for v in proto.graph.input}
    outputs = {v.name: dims(v) for v in proto.graph.output}
    expected = {contract.TOKEN: [None], **{s: [spec.layers, None, spec.units] for s in spec.states},
                **({contract.CLASS: [None]} if spec.classes else {})}
    problems = [f"no input {name}" for name in expected if name not in inputs]
    problems += [f"an input {name} it does not describe" for name in inputs if name not in expected]
    problems += [f"no output {name}" for name in (contract.LOGITS, *map(contract.out, spec.states))
                 if name not in outputs]
    for name, shape in [*((n, expected[n]) for n in expected if n in inputs),
                        *((contract.out(s), expected[s]) for s in spec.states if contract.out(s) in outputs),
                        (contract.LOGITS, [None, spec.vocab.size])]:
        found = (inputs | outputs).get(name)
        if found is not None and (len(found) != len(shape) or any(
                want is not None and got not in (None, want) for want, got in zip(shape, found, strict=False))):
            problems.append(f"{name} has shape {['?' if d is None else d for d in found]}, not "
                            f"{['rows' if d is None else d for d in shape]}")
    if problems:
        raise UsageError(f"{path}: its graph does not match its metadata ({spec.cell}, {spec.layers} layer(s) of "
                         f"{spec.units} units, {spec.vocab.size} ids): {problems[0]}; export the model again")


def session(model: onnx.ModelProto, device: str = "auto", *, tf32: bool = False, cuda_graph: bool = False,
            profile: bool = False, threads: int | None = None):
    """An InferenceSession on `device`; auto takes CUDA only where onnxruntime really starts it.

    TF32 is off unless asked for: with it, CUDA logits differ from CPU by about 1e-2 (measured), which changes
    samples; without it, by about 1e-5. `profile` records onnxruntime's per-node timings (for the benchmarks).
    `threads` caps onnxruntime's CPU threads (its default: one per core).
    """
    import onnxruntime as ort

    check_device(device)
    ort.set_default_logger_severity(4)  # a CUDA library that fails to load is reported below, in one line
    providers: list = [CPU]
    if device != "cpu" and CUDA in ort.get_available_providers():
        if hasattr(ort, "preload_dlls"):  # the CUDA libraries a pip-installed PyTorch brings, where they are
            with contextlib.redirect_stdout(io.StringIO()):  # it prints each library it cannot find
                ort.preload_dlls()
        options = {"use_tf32": str(int(tf32)), "enable_cuda_graph": str(int(cuda_graph))}
        providers = [(CUDA, options), CPU]
    data = model.SerializeToString()
    options = ort.SessionOptions()
    options.enable_profiling = profile
    if threads:
        options.intra_op_num_threads = threads
    try:
        sess = ort.InferenceSession(data, options, providers=providers)
    except Exception as e:  # onnxruntime raises its own untyped errors
        raise UsageError(f"onnxruntime cannot run this model ({str(e).splitlines()[0][:200]}); export it again "
                         "with `python cli.py export-onnx RUN`") from None
    if device == "cuda" and sess.get_providers()[0] != CUDA:
        raise UsageError("{device} cuda: onnxruntime could not start its CUDA provider on this machine "
                         "(no GPU, or CUDA/cuDNN libraries missing); use {device} cpu or auto", "device")
    return sess


def runtime_errors() -> tuple[type[Exception], ...]:
    """onnxruntime's own exception types (none derives from a common one but Exception)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception))


def run_failed(path: Path, error: Exception) -> UsageError:
    """One line for a model onnxruntime loaded but cannot run (a graph that its metadata or the toolkit misreads)."""
    first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    return UsageError(f"onnxruntime cannot run {path} ({first}); export the model again with "
                      "`python cli.py export-onnx RUN`")


class OnnxStep:
    """The exported step as a `Step` (tokens, state) -> (logits, state) on numpy arrays: for the export check,
    scoring texts and parity tests. Sampling runs the composed graph in `toolkit.sampling.engine` instead."""

    def __init__(self, model: str | Path, device: str = "auto", tf32: bool = False):
        self.model = Model.load(model)
        self.spec = self.model.spec
        self.session, self.tf32 = session(self.model.proto, device, tf32=tf32), tf32
        self.provider = self.session.get_providers()[0]
        self.outputs = [contract.LOGITS, *map(contract.out, self.spec.states)]

    def initial_state(self, rows: int, classes: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """Zeros; a conditional model's state ends with the rows' classes ([1, rows], "no class" by default)."""
        state = tuple(np.zeros((self.spec.layers, rows, self.spec.units), np.float32) for _ in self.spec.states)
        if not self.spec.classes:
            return state
        label = np.full(rows, self.spec.no_class, np.int64) if classes is None else np.asarray(classes, np.int64)
        return (*state, label[None, :])

    def __call__(self, tokens: np.ndarray, state: tuple[np.ndarray, ...]) -> tuple[np.ndarray, tuple]:
        feeds = {contract.TOKEN: np.ascontiguousarray(tokens, np.int64)}
        if self.spec.classes:
            *state, label = state
            feeds[contract.CLASS] = np.ascontiguousarray(label[0])
        try:
            logits, *new = self.session.run(self.outputs, feeds | dict(zip(self.spec.states, state, strict=True)))
        except runtime_errors() as e:
            raise run_failed(self.model.path, e) from None
        return logits, (*new, label) if self.spec.classes else tuple(new)

    select = staticmethod(select_rows)
