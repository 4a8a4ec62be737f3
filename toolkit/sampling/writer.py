"""samples.csv or samples.parquet through pyarrow, written by a background thread so that decoding and writing one
chunk overlap the generation of the next (onnxruntime releases the GIL while it runs)."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from toolkit.files import UsageError, atomic_path, write_failed
from toolkit.sampledir import CLASS, FORMATS, columns
from toolkit.sampling.config import SampleConfig
from toolkit.sampling.tensors import Batch
from toolkit.vocab import Vocab


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UsageError(f"{{fmt}} must be one of {', '.join(FORMATS)}, not {fmt!r}", "fmt")


def table(rows: np.ndarray, batch: Batch, config: SampleConfig, vocab: Vocab):
    """One chunk as an Arrow table with sampledir's columns, built from arrays alone (no Python objects)."""
    import pyarrow as pa

    offsets, data = vocab.utf8_rows(batch.ids)
    values = {
        "sample_id": rows, "temperature": config.row_temperatures(rows),
        CLASS: pa.array(config.classes or [""]).take(config.row_classes(rows)),
        "prompt": pa.array(config.prompts).take(config.row_prompts(rows)),
        "text": pa.StringArray.from_buffers(rows.size, pa.py_buffer(offsets), pa.py_buffer(data)),
        "length": np.count_nonzero(batch.ids, axis=1).astype(np.int32), "finished": batch.finished,
        "logprob": batch.logprob.astype(np.float64), "seed": np.full(rows.size, config.seed, np.uint64)}
    return pa.table({name: values[name] for name in columns(bool(config.classes))})


def _open(path: Path, fmt: str, schema):
    if fmt == "csv":
        import pyarrow.csv

        return pyarrow.csv.CSVWriter(path, schema)
    import pyarrow.parquet

    return pyarrow.parquet.ParquetWriter(path, schema, compression="zstd")


@contextlib.contextmanager
def sample_writer(path: Path, fmt: str, config: SampleConfig, vocab: Vocab,
                  shown: Path | None = None) -> Iterator[Callable[[np.ndarray, Batch], None]]:
    """Yield `write(rows, batch)`; the file appears whole at `path` when the block ends, or not at all. Errors name
    `shown` (default `path`): where the user will find the file.

    At most two chunks wait for the writer, so memory stays bounded by the chunk size whatever the number of rows.
    """
    check_format(fmt)
    shown = shown or path
    with atomic_path(path) as tmp:
        pending: queue.Queue = queue.Queue(maxsize=2)
        failed: list[BaseException] = []

        def work() -> None:
            writer = None
            try:
                while (item := pending.get()) is not None:
                    chunk = table(*item, config, vocab)
                    writer = writer or _open(tmp, fmt, chunk.schema)
                    writer.write_table(chunk)
            except BaseException as e:  # handed to the main thread below
                failed.append(e)
                while pending.get() is not None:  # keep draining, so the producer never blocks
                    pass
            finally:
                if writer is not None:
                    writer.close()

        thread = threading.Thread(target=work, name="sample-writer", daemon=True)
        thread.start()

        def write(rows: np.ndarray, batch: Batch) -> None:
            if failed:
                raise _writing_error(shown, failed[0])
            pending.put((rows, batch))

        try:
            yield write
        finally:
            pending.put(None)
            thread.join()
        if failed:
            raise _writing_error(shown, failed[0])


def _writing_error(path: Path, error: BaseException) -> BaseException:
    if isinstance(error, OSError):
        return write_failed(path, error, "choose another {out}", "out")
    return error
