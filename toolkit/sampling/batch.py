"""`sample-batch`: every row of a `SampleConfig` (or of one shard of it) from an exported model, in bounded chunks,
into a sample directory (samples.csv or .parquet, run.json, reference.json.xz; see toolkit.sampledir) that
replaces `out` whole. The chunks come from a backend: `Local`, this process's engines, or Ray actors
(toolkit.sampling.distributed, imported only when asked). Needs numpy, onnxruntime and pyarrow only: no
TensorFlow."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import queue
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit import sampledir, titles
from toolkit.files import UsageError, write_bytes, write_text
from toolkit.sampling.config import SampleConfig
from toolkit.sampling.contract import read_reference
from toolkit.sampling.engine import Engine
from toolkit.sampling.likelihood import bits_per_character
from toolkit.sampling.runtime import CUDA, OnnxStep, cpu_cores
from toolkit.sampling.tensors import Batch
from toolkit.sampling.writer import check_format, sample_writer

CHUNK_ROWS = {"cpu": 1024, "cuda": 65_536}  # the default --batch-size: see docs/benchmarks.md
MAX_CHUNK_ROWS = 2**24


@dataclass(frozen=True)
class SampleRun:
    model: str
    provider: str
    tf32: bool
    cuda_graph: bool
    cuda_graph_error: str | None
    batch_size: int
    sync_every: int
    format: str
    rows: int
    characters: int
    seconds: float
    backend: str = "local"  # local: engines in this process; ray: Ray actors (toolkit.sampling.distributed)
    workers: int = 1

    @property
    def chars_per_second(self) -> float:
        return self.characters / self.seconds if self.seconds else 0.0


class Local:
    """The in-process backend: on CPU an engine per core, each on one thread (see docs/benchmarks.md); on CUDA one.
    `chunks` yields (rows, Batch) in row order, at most `workers` chunks in flight."""

    name = "local"

    def __init__(self, step: OnnxStep, config: SampleConfig, **engine_options):
        self.workers = 1 if step.provider == CUDA else cpu_cores()
        self.engines: queue.SimpleQueue[Engine] = queue.SimpleQueue()
        for _ in range(self.workers):
            self.engine = Engine(step, config, threads=1 if self.workers > 1 else None, **engine_options)
            self.engines.put(self.engine)
        self.device = self.engine.device

    def facts(self) -> dict:
        """What run.json records of the engines that ran."""
        e = self.engine
        return {"provider": e.provider, "cuda_graph": e.cuda_graph, "cuda_graph_error": e.cuda_graph_error,
                "sync_every": e.sync_every}

    def _generate(self, rows: np.ndarray):
        engine = self.engines.get()
        try:
            return engine.generate(rows)
        finally:
            self.engines.put(engine)

    def chunks(self, first: int, stop: int, batch_size: int) -> Iterator[tuple[np.ndarray, Batch]]:
        with ThreadPoolExecutor(self.workers, thread_name_prefix="engine") as pool:
            pending: collections.deque = collections.deque()
            for start in itertools.chain(range(first, stop, batch_size), [None]):  # None: take what is pending
                if start is not None:
                    rows = np.arange(start, min(start + batch_size, stop))
                    pending.append((rows, pool.submit(self._generate, rows)))
                while pending and (start is None or len(pending) > self.workers):  # chunks in order
                    rows, future = pending.popleft()
                    yield rows, future.result()


def class_bpc(step: OnnxStep, reference) -> dict:
    """A conditional model's bits per character of each class's held-out titles given their class (run.json's
    `reference_bpc_by_class`, each class's reference row in the report); nothing for other models."""
    if not step.spec.classes or reference.val_labels is None or tuple(reference.classes) != step.spec.classes:
        return {}
    labels = np.asarray(reference.val_labels, np.int64)
    return {"reference_bpc_by_class": {
        name: bits_per_character(step, step.spec.vocab, [t for t, k in zip(reference.val, labels, strict=True)
                                                          if k == i], labels[labels == i])
        for i, name in enumerate(step.spec.classes)}}


def with_classes(config: SampleConfig, names: tuple[str, ...]) -> SampleConfig:
    """The config for a model with these classes: a conditional model samples every class unless told which, and
    classes it lacks (or any class for an unconditional model) are refused."""
    config.class_ids(names)
    return dataclasses.replace(config, classes=names) if names and not config.classes else config


def sample_batch(model: str | Path, out: str | Path, config: SampleConfig, *, device: str = "auto",
                 batch_size: int | None = None, tf32: bool = False, fmt: str = "csv",
                 progress: Callable[[int, int], None] | None = None, step: OnnxStep | None = None,
                 finish: Callable[[Path], object] | None = None, shard: sampledir.Shard | None = None,
                 ray: str | None = None, workers: int | None = None, **engine_options) -> SampleRun:
    """Make the sample directory `out`: samples.{fmt}, run.json and (when the model carries its run's titles)
    reference.json.xz, built beside `out` and swapped in whole once complete; `finish(directory)` runs on the new
    directory before the swap (the CLI writes the report there). A failure anywhere leaves `out` as it was.

    Every row's draws depend only on (seed, sample_id), so any `batch_size` gives the same samples, and so does any
    split of the rows: `shard` samples only its range of the run `config` describes (run.json records both), and
    `ray` (an address, or "local") hands the chunks to Ray actors (toolkit.sampling.distributed; `workers` of them)
    instead of this process's engines. `progress(rows_done, rows, characters_done)` is called after each chunk.
    """
    check_format(fmt)
    if batch_size is not None and not 1 <= batch_size <= MAX_CHUNK_ROWS:
        raise UsageError(f"{{batch_size}} must be an integer from 1 to {MAX_CHUNK_ROWS:,}, not {batch_size}",
                         "batch_size")
    if ray is None and workers is not None:
        raise UsageError("{workers} sets the number of Ray actors; add {ray} local (or a cluster's address), or "
                         "leave {workers} out", "workers", "ray")
    if ray is not None:
        from toolkit.sampling import distributed

        distributed.check(ray, workers)  # Ray installed, the options sound: before the model loads
    sampledir.check_out(out)  # before the model loads
    # with Ray the actors sample on the cluster's devices; this process reads the model (and scores its titles) on CPU
    step = step or OnnxStep(model, device if ray is None else "cpu", tf32)
    config = with_classes(config, step.spec.classes)
    config = config.bind(step.spec.vocab)  # the constraint over the model's characters, checked before any write
    if shard is not None:
        shard.check(config.rows)
    first, stop = (0, config.rows) if shard is None else shard.rows(config.rows)
    reference = read_reference(step.spec) if step.spec.reference is not None else None  # damaged: refused now
    backend = Local(step, config, **engine_options) if ray is None else distributed.Ray(
        model, step, config, ray, workers, device=device, tf32=tf32, **engine_options)
    batch_size = batch_size or CHUNK_ROWS[backend.device]

    with sampledir.replace_whole(out) as new:
        characters, started = 0, time.perf_counter()
        with sample_writer(new / sampledir.SAMPLES[fmt], fmt, config, step.spec.vocab,
                           Path(out) / sampledir.SAMPLES[fmt]) as write:
            for rows, batch in backend.chunks(first, stop, batch_size):
                write(rows, batch)
                characters += int(np.count_nonzero(batch.ids))
                if progress:
                    progress(int(rows[-1]) + 1 - first, stop - first, characters)
        seconds = time.perf_counter() - started
        facts = backend.facts()
        run = SampleRun(str(model), facts["provider"], tf32 and facts["provider"] == CUDA, facts["cuda_graph"],
                        facts["cuda_graph_error"], batch_size, facts["sync_every"], fmt, stop - first, characters,
                        seconds, backend.name, backend.workers)
        titles_facts = {"titles": None, "reference_bpc": None}
        if reference is not None:
            write_bytes(new / titles.FILE, step.spec.reference)
            titles_facts = {"titles": {"digest": titles.digest(step.spec.reference), "train": len(reference.train),
                                       "val": len(reference.val)},
                            "reference_bpc": bits_per_character(step, step.spec.vocab, reference.val),
                            **class_bpc(step, reference)}
        write_text(new / sampledir.RUN_INFO, json.dumps({
            "toolkit": sampledir.TOOLKIT, "layout": sampledir.LAYOUT, **dataclasses.asdict(run),
            "chars_per_second": run.chars_per_second, "sampling": config.to_dict(),
            **({"shard": shard.to_dict(config.rows)} if shard is not None else {}), "train_config": step.spec.config,
            "data_fingerprint": step.spec.fingerprint, "precision": step.spec.precision, **titles_facts}, indent=2))
        if finish:
            finish(new)
    return run
