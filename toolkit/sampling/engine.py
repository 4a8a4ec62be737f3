"""The sampling engine: the composed step + head graph on onnxruntime, with every tensor a row needs kept where
the model runs (CPU or CUDA) and nothing crossing the bus per step.

Each state tensor has two buffers, A and B: a step reads A and writes B, the next reads B and writes A, through
two IO bindings made once. Every `sync_every` steps the host reads the history of the last steps, `done` and
`logprob` (a few bytes per row), stores the ids of the rows still alive, and drops finished rows by gathering the
survivors into a smaller set of buffers on the device. Sizes follow a fixed ladder (each `shrink` times the one
before), so each size has fixed buffers and, on CUDA, captured CUDA graphs that later chunks replay.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from toolkit.files import UsageError
from toolkit.sampling import contract
from toolkit.sampling.config import SampleConfig
from toolkit.sampling.draw import counters, uniform_graph
from toolkit.sampling.graph import make_model
from toolkit.sampling.head import compose
from toolkit.sampling.processors import inverse_temperature, unbound
from toolkit.sampling.runtime import CUDA, OnnxStep, run_failed, runtime_errors, session
from toolkit.sampling.tensors import (
    COUNTER,
    DONE,
    FORCED,
    HISTORY,
    INVERSE,
    LOGPROB,
    SHRINK,
    TEMPERATURE,
    UNIFORM,
    Batch,
    Tensor,
    forced_ids,
    history_dtype,
    layout,
)
from toolkit.vocab import BOS, EOS, PAD

SYNC_EVERY = {"cpu": 8, "cuda": 8}  # steps between reads of the history: see docs/benchmarks.md
SHRINKS = {"cpu": SHRINK, "cuda": SHRINK}  # each buffer size of the ladder, relative to the one before
FLOOR = {"cpu": 1, "cuda": 2048}  # no smaller buffers: below this a GPU step costs the same whatever the rows


def ladder(rows: int, shrink: float, floor: int = 1) -> list[int]:
    """The buffer sizes a chunk of `rows` rows may shrink to, largest first, none below `floor` (but `rows`)."""
    sizes = [rows]
    while (smaller := min(sizes[-1] - 1, math.ceil(sizes[-1] * shrink))) >= max(floor, 1):
        sizes.append(smaller)
    return sizes


class _Chunk:
    """The host's side of a chunk: ids, finished, logprob, filled in a block at a time."""

    def __init__(self, rows: int, max_len: int, dtype: np.dtype):
        self.ids = np.zeros((rows, max_len), dtype)
        self.finished = np.zeros(rows, bool)
        self.logprob = np.zeros(rows, np.float32)

    def store(self, block: np.ndarray, rows: np.ndarray, ended: np.ndarray, start: int) -> None:
        """Ids [k, len(rows)] of `rows` for the k steps from `start`; rows that `ended` in the block lose what
        follows their <eos>."""
        k = block.shape[0]
        self.ids[rows, start:start + k] = block.T
        if ended.any():
            tail = block[:, ended].T
            after = np.arange(k)[None] >= (tail == EOS).argmax(axis=1)[:, None]
            self.ids[rows[ended], start:start + k] = np.where(after, PAD, tail)
            self.finished[rows[ended]] = True


@dataclass
class _Buffers:
    """One size of the ladder: A and B sets of the carried tensors, the constants, and the two bindings."""

    rows: int
    sides: tuple[dict, dict]
    consts: dict
    bindings: tuple
    run_options: tuple


class Engine:
    """Samples chunks of rows of one `SampleConfig` from one exported model."""

    def __init__(self, step: OnnxStep, config: SampleConfig, *, sync_every: int | None = None,
                 shrink: float | None = None, cuda_graph: bool | None = None, profile: bool = False,
                 threads: int | None = None):
        import onnxruntime as ort

        if unbound(config.processors, step.spec.vocab):  # a constraint or bias not yet over the model's characters
            config = config.bind(step.spec.vocab)
        self.ort, self.model, self.config, self.spec = ort, step.model, config, step.spec
        self.prompt_ids = config.prompt_ids(self.spec.vocab)
        self.class_ids = config.class_ids(self.spec.classes)  # classes or guidance on a model without: refused
        self.device = "cuda" if step.provider == CUDA else "cpu"  # the provider that really started
        self.sync_every = SYNC_EVERY[self.device] if sync_every is None else sync_every  # 0 is refused, not a default
        self.shrink = SHRINKS[self.device] if shrink is None else shrink
        if self.sync_every < 1 or not 0 < self.shrink < 1:
            raise UsageError(f"sync_every must be positive and shrink in (0, 1), not {self.sync_every}, {self.shrink}")
        self.cuda_graph = self.device == "cuda" if cuda_graph is None else cuda_graph and self.device == "cuda"
        self.carried, self.constants = layout(self.spec, config.temperatures, config.prompts, config.processors)
        self.cuda_graph_error: str | None = None
        self.graph, self.tf32, self.profile, self.threads = \
            compose(self.model.proto, self.spec, config, self.sync_every, self.carried, self.constants), step.tf32, \
            profile, threads
        self._buffers: dict[int, _Buffers] = {}
        try:
            self.session = session(self.graph, self.device, tf32=self.tf32, cuda_graph=self.cuda_graph,
                                   profile=profile, threads=threads)
        except UsageError as e:
            if not self.cuda_graph:
                raise
            self._without_cuda_graph(e)
        self.provider = self.session.get_providers()[0]
        helpers = dict(device=self.device, threads=threads)
        self.selector = session(_select_graph(self.spec, [t for t in [*self.carried, *self.constants]
                                                          if t.name not in (HISTORY, UNIFORM)]), **helpers)
        self.uniformer = session(uniform_graph(config.seed, self.sync_every), **helpers)
        self.starter = session(_start_graph([t for t in self.carried if t.name != HISTORY]), **helpers)

    def _without_cuda_graph(self, error: Exception) -> None:
        """Go on without CUDA graphs (same samples, more launch overhead), saying why in `cuda_graph_error`."""
        self.cuda_graph, self.cuda_graph_error = False, str(error).splitlines()[0][:300]
        self.session = session(self.graph, self.device, tf32=self.tf32, profile=self.profile, threads=self.threads)
        self._buffers.clear()

    def generate(self, rows: np.ndarray) -> Batch:
        """Sample the given global rows of the config; a row's text depends only on (seed, row).

        Should onnxruntime fail to capture or replay a CUDA graph, the engine goes on without graphs.
        """
        try:
            return self._generate(np.asarray(rows, np.int64))
        except UsageError:  # the model's fault (non-finite logits), not the graphs'
            raise
        except runtime_errors() as e:  # without graphs, the model's fault: one line
            if not self.cuda_graph:
                raise run_failed(self.model.path, e) from None
            self._without_cuda_graph(e)
            try:
                return self._generate(np.asarray(rows, np.int64))
            except runtime_errors() as again:
                raise run_failed(self.model.path, again) from None
        except Exception as e:  # a failed capture or replay may surface as any error: go on without graphs
            if not self.cuda_graph:
                raise
            self._without_cuda_graph(e)
            return self._generate(np.asarray(rows, np.int64))

    def _generate(self, rows: np.ndarray) -> Batch:
        buf = self._buffers_for(rows.size)
        self._start(buf, rows)
        sizes = ladder(rows.size, self.shrink, FLOOR[self.device])
        slot = np.arange(rows.size)  # which row of the chunk each buffer row holds
        live = np.ones(rows.size, bool)  # still generating at the start of this block
        out = _Chunk(rows.size, self.config.max_len, history_dtype(self.spec.vocab.size))
        side, t, pending = 0, 0, None
        while True:
            k = min(self.sync_every, self.config.max_len - t)
            binding = self.uniformer.io_binding()  # this block's random numbers, made on the device
            binding.bind_ortvalue_input(COUNTER, buf.consts[COUNTER])
            binding.bind_cpu_input("first_step", np.array(t, np.int64))
            binding.bind_ortvalue_output(UNIFORM, buf.consts[UNIFORM])
            self.uniformer.run_with_iobinding(binding)
            for i in range(k):  # the last step of a block waits for the device, so its outputs can be read
                if i == k - 1 and pending:
                    pending()  # store the previous block while the device runs this one
                    pending = None
                self.session.run_with_iobinding(buf.bindings[side], buf.run_options[side][i == k - 1])
                side ^= 1
            t += k
            now = buf.sides[side]
            block, done, total = now[HISTORY].numpy()[-k:], now[DONE].numpy()[live], now[LOGPROB].numpy()[live]
            if not np.isfinite(total).all():
                raise UsageError(f"{self.model.path} gives non-finite logits (NaN or infinity); the model is "
                                 "broken: retrain it (`cli.py train` with a lower --lr) and export it again")
            out.logprob[slot[live]] = total
            pending = functools.partial(out.store, block[:, live], slot[live], done, t - k)
            live[live] = ~done
            alive = int(live.sum())
            if not alive or t == self.config.max_len:
                break
            target = min(s for s in sizes if s >= alive)
            if target < buf.rows:
                keep = np.concatenate([np.flatnonzero(live), np.flatnonzero(~live)[:target - alive]])
                smaller = self._buffers_for(target)
                self._compact(buf.sides[side], buf.consts, smaller, keep)
                buf, side, slot, live = smaller, 0, slot[keep], live[keep]
        pending()
        return Batch(out.ids, out.finished, out.logprob)

    def _buffers_for(self, rows: int) -> _Buffers:
        if rows not in self._buffers:
            ort, history, prompt = self.ort, self.sync_every, max(map(len, self.prompt_ids)) + 1

            def alloc(t: Tensor):
                return ort.OrtValue.ortvalue_from_shape_and_type(list(t.shape(self.spec, rows, history, prompt)),
                                                                 t.dtype.type, self.device, 0)

            sides = tuple({t.name: alloc(t) for t in self.carried} for _ in range(2))
            consts = {t.name: alloc(t) for t in self.constants}
            bindings, options = [], []
            for source, target in ((0, 1), (1, 0)):
                binding = self.session.io_binding()
                for name, value in [*sides[source].items(), *consts.items()]:
                    binding.bind_ortvalue_input(name, value)
                for name, value in sides[target].items():
                    binding.bind_ortvalue_output(contract.out(name), value)
                bindings.append(binding)
                asynchronous, synchronous = ort.RunOptions(), ort.RunOptions()
                # return at once: the GPU works while the host queues the next step
                asynchronous.add_run_config_entry("disable_synchronize_execution_providers", "1")
                graph_id = 2 * len(self._buffers) + source if self.cuda_graph else -1  # -1: no graph. Always set:
                for run_options in (asynchronous, synchronous):  # onnxruntime's lookup of a missing key costs ~1 ms
                    run_options.add_run_config_entry("gpu_graph_id", str(graph_id))
                options.append((asynchronous, synchronous))
            self._buffers[rows] = _Buffers(rows, sides, consts, tuple(bindings), tuple(options))
        return self._buffers[rows]

    def _start(self, buf: _Buffers, rows: np.ndarray) -> None:
        """Side A for a new chunk: the state is made on the device (<bos>, zeros); only the per-row constants
        (a few bytes a row) come from the host."""
        n = rows.size
        binding = self.starter.io_binding()
        for t in self.carried:
            if t.name != HISTORY:
                binding.bind_cpu_input(t.name, np.array(t.shape(self.spec, n, 0, 0), np.int64))
                binding.bind_ortvalue_output(contract.out(t.name), buf.sides[0][t.name])
        self.starter.run_with_iobinding(binding)
        temperature = self.config.row_temperatures(rows).astype(np.float32)
        values = {INVERSE: inverse_temperature(temperature), TEMPERATURE: temperature, COUNTER: counters(rows),
                  FORCED: forced_ids(self.prompt_ids, self.config.row_prompts(rows))}
        values[contract.CLASS] = self.class_ids[self.config.row_classes(rows)]  # used by a conditional model
        for name, value in values.items():
            if name in buf.consts:
                buf.consts[name].update_inplace(np.ascontiguousarray(value))

    def _compact(self, source: dict, consts: dict, target: _Buffers, keep: np.ndarray) -> None:
        """Gather the rows `keep` of every per-row tensor into the smaller buffers' side A, on the device."""
        binding = self.selector.io_binding()
        kept = self.ort.OrtValue.ortvalue_from_numpy(keep.astype(np.int64), self.device, 0)
        binding.bind_ortvalue_input("keep", kept)
        for name, value in [*source.items(), *consts.items()]:
            if name not in (HISTORY, UNIFORM):
                binding.bind_ortvalue_input(name, value)
                binding.bind_ortvalue_output(contract.out(name), {**target.sides[0], **target.consts}[name])
        self.selector.run_with_iobinding(binding)


def _select_graph(spec: contract.StepSpec, tensors: list[Tensor]) -> onnx.ModelProto:
    """keep [m] int64 and each tensor -> the tensor's rows `keep` (Identity for the step counter)."""
    nodes, inputs, outputs = [], [helper.make_tensor_value_info("keep", onnx.TensorProto.INT64, ["kept"])], []
    for t in tensors:
        kind = helper.np_dtype_to_tensor_dtype(t.dtype)
        inputs.append(helper.make_tensor_value_info(t.name, kind, t.shape(spec, "batch", 0, "prompt")))
        outputs.append(helper.make_tensor_value_info(contract.out(t.name), kind, t.shape(spec, "kept", 0, "prompt")))
        nodes.append(helper.make_node("Identity", [t.name], [contract.out(t.name)]) if t.row_axis is None else
                     helper.make_node("Gather", [t.name, "keep"], [contract.out(t.name)], axis=t.row_axis))
    return make_model(helper.make_graph(nodes, "select_rows", inputs, outputs))


def _start_graph(tensors: list[Tensor]) -> onnx.ModelProto:
    """Each tensor's shape [k] int64 -> the tensor at the start of a chunk: <bos> tokens, everything else 0."""
    nodes, inputs, outputs = [], [], []
    for t in tensors:
        kind = helper.np_dtype_to_tensor_dtype(t.dtype)
        start = np.array([BOS if t.name == contract.TOKEN else 0], t.dtype)
        inputs.append(helper.make_tensor_value_info(t.name, onnx.TensorProto.INT64, [None]))
        outputs.append(helper.make_tensor_value_info(contract.out(t.name), kind, None))
        nodes.append(helper.make_node("ConstantOfShape", [t.name], [contract.out(t.name)],
                                      value=onnx.numpy_helper.from_array(start)))
    return make_model(helper.make_graph(nodes, "start_rows", inputs, outputs))
