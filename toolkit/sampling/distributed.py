"""`sample-batch --ray`: the backend of toolkit.sampling.batch.sample_batch that hands the chunks of rows to Ray
actors through Ray Data, locally ("local": a small Ray started here and shut down after) or on a cluster.

Holds `check` (the options and the installed Ray, before the model loads) and `Ray` (the backend: `chunks`, `facts`).
Every row's text is a pure function of (seed, row), so the actors' chunks are the rows the in-process backend
(batch.Local) writes, whoever samples them. Each actor builds its own onnxruntime session (sessions cannot be
pickled) from the model's bytes, shipped once through Ray's object store, since a cluster's workers may not see the
driver's disk; the workers need charlm itself installed (the same version), as the driver has it. The driver checks
that the chunks come back in order, each row exactly once; an actor whose process dies is restarted and its chunk
sampled again (the same rows, the same texts).

Ray is imported only here, inside functions: a plain `sample-batch` never imports it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import tempfile
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from toolkit.files import UsageError
from toolkit.sampling.config import SampleConfig
from toolkit.sampling.runtime import OnnxStep, cpu_cores
from toolkit.sampling.tensors import Batch

INSTALL = 'pip install -e ".[ray]"'
MAX_TASK_RETRIES = 3  # a chunk whose actor died is sampled again up to this many times (then the run fails)
INIT_DEATHS = 3  # actors that may die in a row while loading the model before the run fails
TASK_ROWS = 8192  # rows a Ray task samples (in chunks of the batch size): Ray's cost per task is ~15 ms on CPU
TASKS_PER_WORKER = 4  # at least this many tasks an actor, where the chunks allow: the last ones end together
MAX_TASKS = 10_000  # and at most this many, however many chunks
ROWS, IDS, FINISHED, LOGPROB, FACTS = "rows", "ids", "finished", "logprob", "facts"


class LostRows(RuntimeError):
    """Ray returned rows out of order, twice or not at all: a fault of Ray or of this backend, not of the input."""


def check(address: str, workers: int | None) -> None:
    """Refuse, before the model loads, an empty address, a number of workers below 1, or a missing Ray."""
    if not isinstance(address, str) or not address.strip():
        raise UsageError("{ray} must be local (a Ray started here) or a Ray cluster's address (e.g. auto or "
                         "ray://HOST:10001), not empty", "ray")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise UsageError(f"{{workers}} must be a number of Ray actors of 1 or more, not {workers!r}", "workers")
    try:
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError(f"{{ray}} needs Ray, which is not installed; install it with {INSTALL}, or leave {{ray}} "
                         "out", "ray") from None


@contextlib.contextmanager
def _quiet_ray_data() -> Iterator[None]:
    """Ray Data's console logging (execution plans, progress notes) off for the run; its log files keep it all."""
    handlers = [h for h in logging.getLogger("ray.data").handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    levels = [h.level for h in handlers]
    for h in handlers:
        h.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for h, level in zip(handlers, levels, strict=True):
            h.setLevel(level)


@contextlib.contextmanager
def _backend_log_level(level: str) -> Iterator[None]:
    """Ray's C++ logging at `level` in this process and those `ray.init` starts (unless the user set it): it warns
    about every actor that may be restarted (how this backend is meant to run). The one line saying so, which
    `ray.init` prints, is dropped from what it writes to stderr; the rest is kept."""
    key = "RAY_BACKEND_LOG_LEVEL"
    if key in os.environ:
        yield
        return
    os.environ[key] = level
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                capture.seek(0)
                text = capture.read().decode(errors="replace")
                sys.stderr.write("".join(line for line in text.splitlines(keepends=True) if key not in line))
    finally:
        os.close(saved)
        os.environ.pop(key, None)


def _connect(address: str, workers: int | None) -> bool:
    """Ray initialised for this process; True when this call started it (so the backend ends it)."""
    import ray

    if ray.is_initialized():  # the caller's Ray (a test's, a notebook's): used as it is, never shut down here
        return False
    local = address == "local"
    options = {"num_cpus": workers or cpu_cores()} if local else {}
    try:
        with _backend_log_level("fatal"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a connection that times out warns, then raises: the error says it
            ray.init(address="local" if local else address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR, **options)
    except (ConnectionError, ValueError, RuntimeError, TimeoutError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        if local:
            raise UsageError(f"could not start a local Ray ({first}); check that this machine can run Ray, or "
                             "leave {ray} out", "ray") from None
        raise UsageError(f"could not connect to the Ray cluster at {{ray}} {address} ({first}); start one with "
                         "`ray start --head`, or use {ray} local", "ray") from None
    return True


class Refused(Exception):
    """A UsageError raised in an actor, as it crosses to the driver: its template and parameters (a UsageError
    itself would arrive rendered, its parameters lost, and Ray Data appends a note to the first argument)."""

    def __init__(self, template: str, params: tuple[str, ...]):
        super().__init__(template, params)


def _usage_error_in(error: BaseException | None) -> UsageError | None:
    """The UsageError an actor raised (the model gives non-finite logits, CUDA did not start), however Ray wrapped
    it; None for any other failure."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if type(error) is UsageError:  # raised here, or the cause of Ray's RayTaskError(UsageError)
            return error
        if isinstance(error, Refused) and len(error.args) == 2:  # not Ray's RayTaskError(Refused), which wraps it
            template, params = error.args
            return UsageError(str(template).splitlines()[0], *params)
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return None


class Sampler:
    """A Ray Data actor: one engine on its own onnxruntime session, built on the first call (so that a failure
    to build it arrives as an error of that call, not as a dead actor); each call samples the chunks its batch names
    (columns `start`, `stop`: global rows [start, stop)) and returns their rows, ids, finished, logprob and the
    engine's facts (JSON, on each chunk's first row)."""

    def __init__(self, model, name: str, config: SampleConfig, device: str, tf32: bool, engine_options: dict):
        self.options = (model, name, config, device, tf32, engine_options)
        self.engine = None

    def _build(self):
        import ray

        from toolkit.sampling.engine import Engine

        model, name, config, device, tf32, engine_options = self.options
        data = ray.get(model) if isinstance(model, ray.ObjectRef) else model
        with tempfile.TemporaryDirectory(prefix="charlm-ray-") as tmp:  # OnnxStep reads a file; removed at once
            path = Path(tmp) / "model.onnx"
            path.write_bytes(data)
            step = OnnxStep(path, device, tf32)
        step.model = dataclasses.replace(step.model, path=Path(name))  # messages name the user's model
        return Engine(step, config, threads=1, **engine_options)

    def facts(self) -> str:
        e = self.engine
        return json.dumps({"provider": e.provider, "cuda_graph": e.cuda_graph, "cuda_graph_error": e.cuda_graph_error,
                           "sync_every": e.sync_every})

    def __call__(self, chunks: dict) -> dict:
        try:
            return self._sample(chunks)
        except UsageError as e:
            raise Refused(e.template, e.params) from None

    def _sample(self, chunks: dict) -> dict:
        if self.engine is None:
            self.engine = self._build()
        parts = []
        for start, stop in zip(chunks["start"].tolist(), chunks["stop"].tolist(), strict=True):
            rows = np.arange(start, stop, dtype=np.int64)
            batch = self.engine.generate(rows)
            facts = np.full(rows.size, "", object)
            facts[0] = self.facts()  # after the chunk: a fallback from CUDA graphs shows
            parts.append((rows, batch, facts))
        return {ROWS: np.concatenate([p[0] for p in parts]), IDS: np.concatenate([p[1].ids for p in parts]),
                FINISHED: np.concatenate([p[1].finished for p in parts]),
                LOGPROB: np.concatenate([p[1].logprob for p in parts]), FACTS: np.concatenate([p[2] for p in parts])}


class Ray:
    """The Ray backend: `workers` actors (one CPU each; one GPU each where the cluster has GPUs and `device` is not
    cpu), fed chunks of rows in order through Ray Data. `chunks` yields (rows, Batch) in row order; `facts` says
    what the actors' engines were. A Ray started here (`local`, or the connection to a cluster) ends with `chunks`,
    also on an error; a Ray this process had already initialised is left running."""

    name = "ray"

    def __init__(self, model: str | Path, step: OnnxStep, config: SampleConfig, address: str,
                 workers: int | None = None, *, device: str = "auto", tf32: bool = False, **engine_options):
        import ray  # `check` has passed: sample_batch calls it before the model loads

        self._facts: dict[str, None] = {}  # the engines' facts as the actors report them with each chunk, once each
        self._started = _connect(address, workers)
        self._end = weakref.finalize(self, ray.shutdown) if self._started else None
        try:
            resources = ray.cluster_resources()
            cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
            if device == "cuda" and not gpus:
                raise UsageError("{device} cuda: the Ray cluster has no GPUs; use {device} cpu or auto, or a "
                                 "cluster with GPUs", "device")
            self.gpu = device != "cpu" and gpus > 0
            slots, kind = (min(cpus, gpus), "GPUs") if self.gpu else (cpus, "CPUs")
            if slots < 1:
                raise UsageError(f"{{ray}} {address}: the Ray cluster has no {kind} for actors; add nodes with "
                                 f"{kind}, or use {{ray}} local", "ray")
            self.workers = workers or slots
            if self.workers > slots:
                raise UsageError(f"{{workers}} {self.workers}: the Ray cluster has {slots} {kind} and each actor "
                                 f"takes one; use {{workers}} {slots} or fewer", "workers")
            self.device = "cuda" if self.gpu else "cpu"
            self._model = ray.put(step.model.proto.SerializeToString())  # held until the end: restarts read it
            self._actor = {"model": self._model, "name": str(model), "config": config,
                           "device": device if self.gpu else "cpu", "tf32": tf32, "engine_options": engine_options}
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """End the Ray this backend started (nothing otherwise); safe to call twice."""
        if self._end is not None:
            self._end()

    def facts(self) -> dict:
        """What run.json records of the engines that ran (all of them, should they differ)."""
        facts = [json.loads(text) for text in self._facts]
        if not facts:  # no rows sampled
            return {"provider": "none", "cuda_graph": False, "cuda_graph_error": None, "sync_every": 0}
        errors = [f["cuda_graph_error"] for f in facts if f["cuda_graph_error"]]
        return {"provider": "+".join(sorted({f["provider"] for f in facts})),
                "cuda_graph": all(f["cuda_graph"] for f in facts), "cuda_graph_error": errors[0] if errors else None,
                "sync_every": facts[0]["sync_every"]}

    def _dataset(self, first: int, stop: int, batch_size: int):
        import pyarrow as pa
        import ray
        from ray.data import ActorPoolStrategy

        starts = np.arange(first, stop, batch_size, dtype=np.int64)
        stops = np.minimum(starts + batch_size, stop)
        per_task = max(1, min(TASK_ROWS // batch_size, starts.size // (TASKS_PER_WORKER * self.workers)))
        blocks = min(-(-starts.size // per_task), MAX_TASKS)  # a block is a task
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Ray Data's deprecation notes (its own settings, ray_remote_args)
            ds = ray.data.from_arrow([pa.table({"start": a, "stop": b}) for a, b in
                                      zip(np.array_split(starts, blocks), np.array_split(stops, blocks), strict=True)])
            context = ds.context  # this dataset's own copy of the DataContext
            context.execution_options.preserve_order = True  # chunks come back in row order
            context.enable_progress_bars = False
            context.max_consecutive_actor_init_deaths = INIT_DEATHS
            context.raise_original_map_exception = True  # an actor's Refused reaches the driver as it was raised
            # Fault tolerance: a dead actor is restarted and its task retried. Ray Data 2.60's defaults are
            # unbounded restarts and retries (actor_pool_map_operator._apply_default_remote_args); we bound the
            # retries, through the remote arguments it still takes (deprecated: from Ray 2.64 its defaults apply).
            options = dict(batch_size=1, batch_format="numpy", num_cpus=1, num_gpus=1 if self.gpu else 0,
                           compute=ActorPoolStrategy(size=self.workers), fn_constructor_kwargs=self._actor)
            try:
                return ds.map_batches(Sampler, **options, max_restarts=-1, max_task_retries=MAX_TASK_RETRIES)
            except TypeError:  # a Ray that no longer takes them
                return ds.map_batches(Sampler, **options)

    def chunks(self, first: int, stop: int, batch_size: int) -> Iterator[tuple[np.ndarray, Batch]]:
        """(rows, Batch) for rows [first, stop) in order, in pieces of at most `batch_size` rows: each row exactly
        once, or an error."""
        try:
            if stop > first:
                with _quiet_ray_data():
                    try:
                        yield from self._checked(self._dataset(first, stop, batch_size), first, stop, batch_size)
                    except LostRows:
                        raise
                    except Exception as e:
                        found = _usage_error_in(e)
                        if found is None or found is e:
                            raise
                        raise found from None  # one line, as the engine said it
        finally:
            self.close()

    def _checked(self, ds, first: int, stop: int, batch_size: int) -> Iterator[tuple[np.ndarray, Batch]]:
        due = first  # the next row owed
        for out in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
            rows = np.asarray(out[ROWS], np.int64)
            if rows.size == 0:
                continue
            if not np.array_equal(rows, np.arange(due, due + rows.size)):
                wrong = int(np.flatnonzero(rows != np.arange(due, due + rows.size))[0])
                raise LostRows(f"Ray returned row {int(rows[wrong]):,} where row {due + wrong:,} was due (rows "
                               f"lost, repeated or out of order); nothing was written: run the command again")
            if due + rows.size > stop:
                raise LostRows(f"Ray returned rows up to {due + rows.size - 1:,} of a run that ends at row "
                               f"{stop - 1:,}; nothing was written: run the command again")
            self._facts.update(dict.fromkeys(text for text in out[FACTS] if text))
            ids, finished, logprob = out[IDS], out[FINISHED], out[LOGPROB]
            # pieces that never cross a chunk's boundary, whatever blocks Ray Data made
            cuts = list(range(first + ((due - first) // batch_size + 1) * batch_size, due + rows.size, batch_size))
            for lo, hi in zip([due, *cuts], [*cuts, due + rows.size], strict=True):
                a, b = lo - due, hi - due
                yield rows[a:b], Batch(np.ascontiguousarray(ids[a:b]), np.asarray(finished[a:b], bool),
                                       np.asarray(logprob[a:b], np.float32))
            due += rows.size
        if due != stop:
            raise LostRows(f"Ray returned rows {first:,} to {due - 1:,} of {first:,} to {stop - 1:,}; nothing was "
                           "written: run the command again")
