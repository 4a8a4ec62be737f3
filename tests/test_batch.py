"""sample_batch: the files a user gets, chunking, formats, and refusals that leave nothing behind."""

import json
import lzma

import numpy as np
import pandas as pd
import pytest
from helpers import step_model

from toolkit.files import UsageError
from toolkit.sampledir import columns
from toolkit.sampling.batch import sample_batch
from toolkit.sampling.config import SampleConfig, sampling_config
from toolkit.sampling.processors import InvalidParameter
from toolkit.sampling.runtime import OnnxStep


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return step_model(tmp_path_factory.mktemp("m") / "model.onnx", scale=0.3)


def read(directory, fmt="csv"):
    path = directory / f"samples.{fmt}"
    return pd.read_csv(path, keep_default_na=False) if fmt == "csv" else pd.read_parquet(path)


def test_rows_columns_and_run_summary(model, tmp_path):
    config = sampling_config((0.0, 1.0, 1.8), n=20, max_len=64, seed=3, top_k=5)
    run = sample_batch(model, tmp_path, config, device="cpu")
    rows = read(tmp_path)
    assert tuple(rows.columns) == columns(classes=False) and len(rows) == 60 == run.rows
    assert rows["temperature"].tolist() == [0.0] * 20 + [1.0] * 20 + [1.8] * 20
    assert (rows["length"] == rows["text"].str.len()).all() and rows["length"].max() <= 64
    assert rows["length"].sum() == run.characters and (rows["seed"] == 3).all()
    assert rows["finished"].any() and rows["text"][:20].nunique() == 1  # greedy: every row the same
    assert (rows["logprob"] < 0).all()
    summary = json.loads((tmp_path / "run.json").read_text())
    assert summary["provider"] == "CPUExecutionProvider" and summary["sampling"] == config.to_dict()
    assert summary["sampling"]["processors"][1] == {"name": "TopK", "k": 5} and summary["tf32"] is False
    assert summary["train_config"] == {"units": 16}


def test_any_batch_size_gives_the_same_file(model, tmp_path):
    config = sampling_config((0.3, 1.0, 1.8), n=40, seed=1, prompts=("ab", "c"))
    sample_batch(model, tmp_path / "one", config, device="cpu")
    sample_batch(model, tmp_path / "chunks", config, device="cpu", batch_size=7)
    one, chunks = read(tmp_path / "one"), read(tmp_path / "chunks")
    assert one.drop(columns="logprob").equals(chunks.drop(columns="logprob"))
    assert np.allclose(one["logprob"], chunks["logprob"], rtol=1e-5)  # float32 sums: the last digits may differ


def test_parquet_holds_the_same_samples(model, tmp_path):
    config = sampling_config((1.0,), n=30, seed=2)
    sample_batch(model, tmp_path / "csv", config, device="cpu")
    sample_batch(model, tmp_path / "pq", config, device="cpu", fmt="parquet", batch_size=8)
    csv, parquet = read(tmp_path / "csv"), read(tmp_path / "pq", "parquet")
    assert csv["text"].tolist() == parquet["text"].tolist() and parquet["finished"].dtype == bool


def test_prompts_cycle_and_start_every_text(model, tmp_path):
    sample_batch(model, tmp_path, sampling_config((1.0,), n=6, prompts=("ab ", "j")), device="cpu")
    rows = read(tmp_path)
    assert rows["prompt"].tolist() == ["ab ", "j"] * 3
    assert all(text.startswith(prompt) for text, prompt in zip(rows["text"], rows["prompt"], strict=True))


def test_top_k_1_is_greedy(model, tmp_path):
    sample_batch(model, tmp_path / "k1", sampling_config((1.8,), n=10, top_k=1), device="cpu")
    sample_batch(model, tmp_path / "greedy", sampling_config((0.0,), n=10), device="cpu")
    assert read(tmp_path / "k1")["text"].tolist() == read(tmp_path / "greedy")["text"].tolist()


def test_reference_titles_travel_from_the_model_to_the_samples(tmp_path):
    import onnx

    from toolkit.sampling.contract import StepSpec
    from toolkit.sampling.runtime import Model

    path = step_model(tmp_path / "m.onnx")
    proto = onnx.load(path)
    spec = Model.load(path).spec
    blob = lzma.compress(json.dumps({"train_titles": ["a b"], "val_titles": ["c"]}).encode())
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, StepSpec(**{**spec.__dict__, "reference": blob}).metadata("best"))
    onnx.save(proto, path)
    sample_batch(path, tmp_path / "s", SampleConfig((1.0,), n=3), device="cpu")
    assert (tmp_path / "s" / "reference.json.xz").read_bytes() == blob
    from toolkit.sampling.likelihood import bits_per_character
    from toolkit.sampling.runtime import OnnxStep

    step = OnnxStep(path, "cpu")
    assert json.loads((tmp_path / "s" / "run.json").read_text())["reference_bpc"] == pytest.approx(
        bits_per_character(step, step.spec.vocab, ["c"]))


def test_a_large_n_runs_in_bounded_chunks(model, tmp_path):
    run = sample_batch(model, tmp_path, sampling_config((1.0,), n=5000, max_len=16), device="cpu", batch_size=1024)
    rows = read(tmp_path)
    assert run.rows == 5000 and len(rows) == 5000 and rows["sample_id"].tolist() == list(range(5000))


@pytest.mark.parametrize("options, message", [
    ({"batch_size": 0}, "^batch_size"), ({"batch_size": 2**30}, "^batch_size"), ({"fmt": "xlsx"}, "^fmt"),
    ({"device": "tpu"}, "^device")])
def test_bad_arguments_write_nothing(model, tmp_path, options, message):
    with pytest.raises(UsageError, match=message):
        sample_batch(model, tmp_path / "out", SampleConfig((1.0,), n=5), **options)
    assert not (tmp_path / "out").exists()


def test_a_prompt_outside_the_vocabulary_writes_nothing(model, tmp_path):
    with pytest.raises(UsageError, match="'Ω'"):
        sample_batch(model, tmp_path / "out", SampleConfig((1.0,), n=5, prompts=("Ωmega",)), device="cpu")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, message", [("", "empty"), ("a,b", "numbers"), (" , ", "empty"),
                                           ("1:0:0.1", "start <= stop"), ("0:1:0", "step > 0"), ("0:1", "start:stop"),
                                           ("0:1000:0.01", "at most")])
def test_temperature_lists_and_ranges(text, message):
    from toolkit.sampling.config import parse_temperatures

    with pytest.raises(UsageError, match=message):
        parse_temperatures(text)
    assert parse_temperatures("0.3, 1,1.8") == (0.3, 1.0, 1.8)
    assert parse_temperatures("0.2:2.0:0.1") == tuple(round(0.2 + 0.1 * i, 10) for i in range(19))
    assert parse_temperatures("0,0.5:1.5:0.5") == (0.0, 0.5, 1.0, 1.5)


@pytest.mark.parametrize("temps", [(-0.5,), (float("nan"),)])
def test_negative_or_nan_temperatures_are_refused(temps):
    with pytest.raises(InvalidParameter, match="temperatures"):
        sampling_config(temps)


def test_a_second_command_on_the_same_directory_is_refused_while_the_first_runs(model, tmp_path):
    from toolkit.files import exclusive

    with exclusive(tmp_path / "out"), pytest.raises(UsageError, match="another command is writing"):
        sample_batch(model, tmp_path / "out", SampleConfig((1.0,), n=5), device="cpu")  # as if another held it
    assert not (tmp_path / "out" / "samples.csv").exists()
    sample_batch(model, tmp_path / "out", SampleConfig((1.0,), n=5), device="cpu")  # free again afterwards
    assert len(read(tmp_path / "out")) == 5


def test_a_new_run_clears_what_described_the_old_samples(model, tmp_path):
    sample_batch(model, tmp_path, SampleConfig((1.0,), n=5), device="cpu")
    for name in ("metrics.csv", "report.html", "reference.json.xz"):
        (tmp_path / name).write_text("old")
    sample_batch(model, tmp_path, SampleConfig((1.0,), n=5), device="cpu", fmt="parquet")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["run.json",
                                                                                         "samples.parquet"]


def test_characters_beyond_ascii_are_written_as_the_model_made_them(tmp_path):
    path = step_model(tmp_path / "m.onnx", chars=("a", "é", "字", "😀", " ", ","), scale=0.3)
    config = sampling_config((1.0,), n=50, max_len=20, prompts=("é,",))
    sample_batch(path, tmp_path / "s", config, device="cpu")
    rows = read(tmp_path / "s")
    assert (rows["length"] == rows["text"].str.len()).all() and rows["text"].str.startswith("é,").all()
    assert set("".join(rows["text"])) <= set("aé字😀 ,") and rows["text"].str.contains("字|😀").any()


@pytest.mark.parametrize("cores", [1, 3])
def test_any_number_of_cpu_engines_writes_the_same_file_in_order(model, tmp_path, monkeypatch, cores):
    import toolkit.sampling.batch as batch

    config = sampling_config((0.5, 1.5), n=300, seed=4)
    sample_batch(model, tmp_path / "one", config, device="cpu", batch_size=50)
    monkeypatch.setattr(batch, "cpu_cores", lambda: cores)
    sample_batch(model, tmp_path / "many", config, device="cpu", batch_size=50)
    one, many = read(tmp_path / "one"), read(tmp_path / "many")
    assert many["sample_id"].tolist() == list(range(600))
    assert one.drop(columns="logprob").equals(many.drop(columns="logprob"))


def test_run_json_names_each_sampling_setting_as_the_library_does(model, tmp_path):
    """run.json's `sampling` (shown in the report's Runs table) holds every SampleConfig field under its name."""
    import dataclasses

    config = sampling_config((0.5, 1.0), n=3, prompts=("ab",), max_len=20, seed=9, top_p=0.9)
    sample_batch(model, tmp_path, config, device="cpu")
    recorded = json.loads((tmp_path / "run.json").read_text())["sampling"]
    assert set(recorded) == {f.name for f in dataclasses.fields(SampleConfig)}
    assert [recorded[k] for k in ("temperatures", "n", "prompts", "max_len", "seed")] == [[0.5, 1.0], 3, ["ab"], 20, 9]


def test_whole_number_temperatures_are_written_as_temperatures(model, tmp_path):
    """A library caller's (0, 1) gives the same float column as the CLI's 0.0,1.0: runs compare and concatenate."""
    sample_batch(model, tmp_path / "ints", SampleConfig((0, 1), n=3), device="cpu", fmt="parquet")
    sample_batch(model, tmp_path / "floats", SampleConfig((0.0, 1.0), n=3), device="cpu", fmt="parquet")
    ints, floats = read(tmp_path / "ints", "parquet"), read(tmp_path / "floats", "parquet")
    assert ints["temperature"].dtype == np.float64 and ints.equals(floats)


def test_the_samples_schema_is_the_same_whatever_the_seed(model, tmp_path):
    """Seeds span 0 to 2^64 - 1: the seed column is unsigned 64-bit for every run, so runs concatenate."""
    import pyarrow.parquet as pq

    schemas = []
    for seed in (0, 2**64 - 1):
        sample_batch(model, tmp_path / str(seed), SampleConfig((1.0,), n=3, seed=seed), device="cpu", fmt="parquet")
        schemas.append(pq.read_schema(tmp_path / str(seed) / "samples.parquet").remove_metadata())
    assert schemas[0] == schemas[1] and str(schemas[0].field("seed").type) == "uint64"
    assert read(tmp_path / str(2**64 - 1), "parquet")["seed"].tolist() == [2**64 - 1] * 3


def test_run_json_records_what_the_run_was(model, tmp_path):
    import time

    config = SampleConfig((1.0,), n=20, max_len=30, seed=4)
    started = time.perf_counter()
    run = sample_batch(model, tmp_path, config, batch_size=7)  # the default device: auto
    elapsed = time.perf_counter() - started
    recorded = json.loads((tmp_path / "run.json").read_text())
    if recorded["provider"] != "CPUExecutionProvider":
        assert recorded["provider"] == OnnxStep(model).provider == "CUDAExecutionProvider"
        pytest.skip("auto chose CUDA here: the rest holds for CPU")
    assert {k: recorded[k] for k in ("model", "provider", "tf32", "cuda_graph", "cuda_graph_error", "batch_size",
                                     "sync_every", "format", "rows")} == {
        "model": str(model), "provider": "CPUExecutionProvider", "tf32": False, "cuda_graph": False,
        "cuda_graph_error": None, "batch_size": 7, "sync_every": 8, "format": "csv", "rows": 20}
    assert recorded["characters"] == run.characters == read(tmp_path)["length"].sum()
    assert 0 < recorded["seconds"] <= elapsed
    assert recorded["chars_per_second"] == pytest.approx(run.characters / run.seconds)
    assert (recorded["data_fingerprint"], recorded["precision"], recorded["reference_bpc"]) == (
        "fingerprint", "float32", None)  # step_model's spec; no titles, no reference figure


def test_progress_is_reported_after_each_chunk_in_order(model, tmp_path):
    calls = []
    run = sample_batch(model, tmp_path, SampleConfig((1.0,), n=20, max_len=30), device="cpu", batch_size=7,
                       progress=lambda rows, total, characters: calls.append((rows, characters, total)))
    assert [rows for rows, _, _ in calls] == [7, 14, 20] and {total for *_, total in calls} == {20}
    calls = [(rows, characters) for rows, characters, _ in calls]
    assert [c for _, c in calls] == sorted(c for _, c in calls) and calls[-1][1] == run.characters > calls[0][1]


@pytest.mark.parametrize("batch_size", [1, 2**24])
def test_batch_size_holds_its_range_to_the_last_value(model, tmp_path, batch_size):
    from toolkit.sampling.batch import MAX_CHUNK_ROWS

    assert batch_size in (1, MAX_CHUNK_ROWS)
    sample_batch(model, tmp_path, SampleConfig((1.0,), n=3, max_len=10), device="cpu", batch_size=batch_size)
    with pytest.raises(UsageError, match=f"batch_size must be an integer from 1 to {MAX_CHUNK_ROWS:,}"):
        sample_batch(model, tmp_path / "x", SampleConfig((1.0,)), device="cpu",
                     batch_size=batch_size - 1 if batch_size == 1 else batch_size + 1)


def test_cpu_cores_are_those_this_process_may_run_on():
    """sample-batch runs an engine per core it may use (`taskset` limits them), not per core of the machine."""
    import os

    from toolkit.sampling.batch import cpu_cores

    allowed = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(allowed)})
        assert cpu_cores() == 1
    finally:
        os.sched_setaffinity(0, allowed)
    assert cpu_cores() == len(allowed)


@pytest.mark.parametrize("cores, threads", [(1, [None]), (2, [1, 1]), (3, [1, 1, 1])])
def test_several_cpu_engines_run_on_one_thread_each(model, tmp_path, monkeypatch, cores, threads):
    """One engine per core, each on one onnxruntime thread (more would oversubscribe the cores); a single engine
    keeps onnxruntime's own threading."""
    import toolkit.sampling.batch as batch

    made = []

    class Recorded(batch.Engine):
        def __init__(self, *args, threads=None, **kwargs):
            made.append(threads)
            super().__init__(*args, threads=threads, **kwargs)

    monkeypatch.setattr(batch, "cpu_cores", lambda: cores)
    monkeypatch.setattr(batch, "Engine", Recorded)
    sample_batch(model, tmp_path, SampleConfig((1.0,), n=6, max_len=10), device="cpu", sync_every=4)
    assert made == threads
    assert json.loads((tmp_path / "run.json").read_text())["sync_every"] == 4


def test_cpu_engines_generate_their_chunks_side_by_side(model, tmp_path, monkeypatch):
    """With two cores, two chunks are generated at once (each waits here until the other has started), and they
    are still written in order."""
    import threading

    import toolkit.sampling.batch as batch

    both_started = threading.Barrier(2, timeout=10)

    class Meeting(batch.Engine):
        def generate(self, rows):
            if rows[0] < 8:  # the first two chunks
                both_started.wait()  # BrokenBarrierError if the chunks ran one after the other
            return super().generate(rows)

    config = SampleConfig((1.0,), n=12, max_len=10, seed=2)
    sample_batch(model, tmp_path / "alone", config, device="cpu", batch_size=12)
    monkeypatch.setattr(batch, "cpu_cores", lambda: 2)
    monkeypatch.setattr(batch, "Engine", Meeting)
    sample_batch(model, tmp_path / "pair", config, device="cpu", batch_size=4)
    assert read(tmp_path / "pair").equals(read(tmp_path / "alone"))


def test_memory_is_bounded_by_the_chunk_whatever_n(model, tmp_path):
    """A run of 3 * 10^9 rows: after its first chunks, Python has allocated megabytes, not gigabytes."""
    import tracemalloc

    class Enough(Exception):
        pass

    def stop_after_two_chunks(rows, total, characters):
        if rows > 2 * 256:
            raise Enough

    tracemalloc.start()
    try:
        with pytest.raises(Enough):
            sample_batch(model, tmp_path, sampling_config((0.5, 1.0, 1.5), n=10**9, max_len=16), device="cpu",
                         batch_size=256, progress=stop_after_two_chunks)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, peak
    assert not (tmp_path / "samples.csv").exists()  # nothing half-written


# --- a sample directory changes as a whole or not at all, and only when charlm made it (trust, round two) ----------

def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("names", [("metrics.csv",), ("report.html",), ("samples.parquet",), ("notes.txt",),
                                   ("run.json",)])
def test_a_directory_charlm_did_not_make_is_never_replaced(model, tmp_path, names, monkeypatch):
    """A user's metrics.csv, report.html, samples.parquet (or any file) in --out: refused before the model even
    loads, and every file stays as it was. run.json alone is not enough: it must be sample-batch's."""
    import toolkit.sampling.batch as batch

    out = tmp_path / "mine"
    out.mkdir()
    for name in names:
        (out / name).write_text(f"the user's {name}")
    before = snapshot(tmp_path)
    monkeypatch.setattr(batch, "OnnxStep", lambda *a, **k: pytest.fail("the model loaded before --out was checked"))
    with pytest.raises(UsageError, match="holds no charlm samples"):
        sample_batch(model, out, SampleConfig((1.0,), n=3), device="cpu")
    assert snapshot(tmp_path) == before


def test_a_file_of_the_users_inside_a_sample_directory_keeps_it_whole(model, tmp_path):
    sample_batch(model, tmp_path / "s", SampleConfig((1.0,), n=3), device="cpu")
    (tmp_path / "s" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    with pytest.raises(UsageError, match=r"files charlm did not write \(notes.txt\)"):
        sample_batch(model, tmp_path / "s", SampleConfig((1.0,), n=3), device="cpu")
    assert snapshot(tmp_path) == before


def test_a_failure_after_sampling_leaves_the_earlier_directory_whole(model, tmp_path):
    """The new directory is built beside the old one: whatever fails before the swap, the old samples, run.json
    and report stay together, and nothing is left beside them."""
    sample_batch(model, tmp_path / "s", SampleConfig((1.0,), n=3), device="cpu")
    (tmp_path / "s" / "metrics.csv").write_text("group,temperature,samples\nT=1,1.0,3\n")  # its report
    before = snapshot(tmp_path)

    def report_fails(directory):
        assert (directory / "samples.csv").is_file() and (directory / "run.json").is_file()
        raise UsageError("the report failed")

    with pytest.raises(UsageError, match="the report failed"):
        sample_batch(model, tmp_path / "s", SampleConfig((1.0, 2.0), n=7), device="cpu", finish=report_fails)
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_damaged_reference_titles_are_refused_before_sampling(tmp_path):
    import onnx

    from toolkit.sampling.contract import StepSpec
    from toolkit.sampling.runtime import Model

    path = step_model(tmp_path / "m.onnx")
    proto, spec = onnx.load(path), Model.load(path).spec
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, StepSpec(**{**spec.__dict__, "reference": b"not xz"}).metadata("best"))
    onnx.save(proto, path)
    with pytest.raises(UsageError, match="reference titles are damaged"):
        sample_batch(path, tmp_path / "s", SampleConfig((1.0,), n=3), device="cpu",
                     progress=lambda *_: pytest.fail("sampled before the titles were checked"))
    assert not (tmp_path / "s").exists()


def test_what_a_killed_sample_batch_left_is_cleared_on_the_next_start(model, tmp_path):
    import os

    dead = 4_194_304 + 1  # above Linux's largest pid
    half = tmp_path / f".s.new-{dead}-abc"
    half.mkdir()
    (half / f".samples.{dead}-x.tmp.csv").write_text("half")
    live = tmp_path / f".s.new-{os.getpid()}-def"  # another command's, still running: left alone
    live.mkdir()
    sample_batch(model, tmp_path / "s", SampleConfig((1.0,), n=3), device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["s", live.name])


def test_run_json_says_charlm_made_the_directory_and_what_really_ran(model, tmp_path):
    sample_batch(model, tmp_path / "s", SampleConfig((1.0,), n=3), device="cpu", tf32=True)
    info = json.loads((tmp_path / "s" / "run.json").read_text())
    assert info["toolkit"] == "charlm" and info["layout"] == 1
    assert info["tf32"] is False  # asked for, but TF32 exists only on CUDA
    assert info["titles"] is None  # the model carries no titles


@pytest.mark.slow
def test_a_sample_batch_killed_mid_run_leaves_nothing_that_lasts(model, tmp_path):
    """SIGKILL while samples are written: the earlier directory is whole, and the next run clears what the killed
    one left beside it (its staging directory and temporary samples file)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from helpers import ROOT

    sample_batch(model, tmp_path / "s", SampleConfig((1.0,), n=3), device="cpu")
    before = snapshot(tmp_path / "s")
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "sample-batch", "--model", str(model), "--n",
                             "2000000", "--out", str(tmp_path / "s"), "--no-report", "--device", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".s.new-*/.samples.*.tmp.csv")) and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(".s.new-*")), "the kill came too late to leave anything"
    assert snapshot(tmp_path / "s") == before
    sample_batch(model, tmp_path / "s", SampleConfig((1.0,), n=3), device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
