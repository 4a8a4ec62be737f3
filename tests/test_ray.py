"""`sample-batch --ray` (toolkit.sampling.distributed, issue 23): Ray actors write the file the in-process engines
write, byte for byte, with every sampling control on; a worker process killed mid-chunk still leaves every row
exactly once; the driver refuses chunks that come back lost, repeated or out of order; a Ray started for the run is
shut down after it, also on an error; a plain sample-batch never imports Ray; bad options are one line.

One Ray of 2 CPUs serves the module; its workers run `crash_once` as they start, which makes the worker sampling
the chunk at CRASH_ROW exit once while the marker file exists (a test creates it). Tiny random step models only."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import CHARS, ROOT, assert_usage_error, cli_in_process, step_model

from toolkit.files import UsageError
from toolkit.sampling import distributed
from toolkit.sampling.batch import sample_batch
from toolkit.sampling.config import sampling_config
from toolkit.sampling.tensors import Batch
from toolkit.vocab import EOS

CRASH_ENV = "CHARLM_TEST_CRASH"  # in the Ray workers: "ROW MARKER"
CRASH_ROW = 96  # the start of the fault test's fourth chunk (chunks of 32 rows)


def crash_once() -> None:
    """Ray's worker_process_setup_hook: in each Ray worker as it starts, make the engine's process exit right
    after sampling the chunk that starts at CRASH_ROW, its result not yet returned, if the marker file exists
    (removed first, so the retry, in a new process, lives)."""
    import os

    from toolkit.sampling.engine import Engine

    row, _, marker = os.environ.get(CRASH_ENV, "").partition(" ")
    if not marker:
        return
    generate = Engine.generate

    def generate_or_die(self, rows):
        batch = generate(self, rows)
        if int(rows[0]) == int(row):
            try:
                os.unlink(marker)
            except FileNotFoundError:
                return batch
            os._exit(1)  # the process dies mid-task, as a killed or crashed one does
        return batch

    Engine.generate = generate_or_die


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A Ray of 2 CPUs for the module (CI's 2 cores); yields the fault marker's path (absent: no fault)."""
    cloudpickle = pytest.importorskip("ray.cloudpickle", reason='Ray is not installed (pip install -e ".[dev]")')
    import ray

    marker = tmp_path_factory.mktemp("fault") / "crash"
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this module
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             runtime_env={"worker_process_setup_hook": crash_once,
                          "env_vars": {CRASH_ENV: f"{CRASH_ROW} {marker}"}})
    try:
        yield marker
    finally:
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def conditional_model(path, classes=("A", "B"), units=16, seed=0):
    """A random class-conditional step model (class vectors joined to the first layer's input), as step_model
    makes unconditional ones: no TensorFlow."""
    import onnx

    from exporters.onnx import Layer, Weights, build_step_graph
    from toolkit.sampling.contract import StepSpec
    from toolkit.vocab import Vocab

    rng = np.random.default_rng(seed)
    vocab, dim = Vocab(CHARS), 4

    def w(*shape):
        return rng.normal(0, 0.3, shape).astype(np.float32)

    head_bias = w(vocab.size)
    head_bias[EOS] += 0.5
    layer = Layer(w(vocab.size + dim, 4 * units), w(units, 4 * units), w(4 * units), None)
    weights = Weights("lstm", np.eye(vocab.size, dtype=np.float32), [layer], (w(units, vocab.size) * 4, head_bias),
                      w(len(classes) + 1, dim))
    spec = StepSpec("lstm", 1, units, vocab, {"units": units}, "fingerprint", "float32", None, tuple(classes))
    onnx.save(build_step_graph(weights, spec.metadata("best")), path)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return conditional_model(tmp_path_factory.mktemp("m") / "conditional.onnx")


EVERYTHING = dict(prompts=("", "ab", "c"), max_len=30, seed=7, classes=("A", "B", "any"), guidance=1.5, top_k=6,
                  top_p=0.9, min_p=0.02, presence_penalty=0.3, frequency_penalty=0.2, regex=r"[a-e][a-j ]*[f-j]",
                  ban=("b c", "dd"), min_length=4, stop=("hj",), logit_bias={"e": 1.5, "a": -2.0})


def samples(directory) -> bytes:
    return (directory / "samples.csv").read_bytes()


def test_ray_writes_the_in_process_file_with_every_control_on(cluster, model, tmp_path):
    import json

    import ray

    config = sampling_config((0.0, 0.7, 1.3), n=20, **EVERYTHING)  # 180 rows: 23 chunks of 8, 2 a Ray task
    local = sample_batch(model, tmp_path / "local", config, device="cpu", batch_size=8)
    seen = []
    run = sample_batch(model, tmp_path / "ray", config, device="cpu", batch_size=8, ray="local", workers=2,
                       progress=lambda done, total, chars: seen.append(done))
    assert samples(tmp_path / "ray") == samples(tmp_path / "local") and local.rows == run.rows == 180
    assert seen == [*range(8, 180, 8), 180]  # every chunk, in order
    info = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert (info["backend"], info["workers"], info["provider"]) == ("ray", 2, "CPUExecutionProvider")
    assert run.characters == local.characters and info["sync_every"] == 8
    assert ray.is_initialized()  # the module's Ray, not this run's to end


def test_a_worker_killed_mid_chunk_still_leaves_every_row_exactly_once(cluster, model, tmp_path):
    config = sampling_config((0.5, 1.5), n=96, seed=3, max_len=24, classes=("A", "B"), top_k=5)  # 384 rows
    sample_batch(model, tmp_path / "local", config, device="cpu", batch_size=32)
    cluster.write_text("")
    sample_batch(model, tmp_path / "ray", config, device="cpu", batch_size=32, ray="local", workers=2)
    assert not cluster.exists(), "no worker died: the fault was not injected"
    assert samples(tmp_path / "ray") == samples(tmp_path / "local")


class Returned:
    """A stand-in for Ray Data's output: the batches it would yield."""

    def __init__(self, *pieces):
        self.pieces = pieces

    def iter_batches(self, **_):
        for rows in self.pieces:
            rows = np.asarray(rows, np.int64)
            yield {"rows": rows, "ids": np.zeros((rows.size, 4), np.uint8), "finished": np.zeros(rows.size, bool),
                   "logprob": np.zeros(rows.size, np.float32), "facts": np.full(rows.size, "", object)}


@pytest.mark.parametrize("pieces, message", [
    ([range(10, 14), range(15, 20)], "row 15 where row 14 was due"),  # a gap
    ([range(10, 14), range(12, 20)], "row 12 where row 14 was due"),  # a repeat
    ([range(14, 18), range(10, 14), range(18, 20)], "row 14 where row 10 was due"),  # out of order
    ([range(10, 14)], "rows 10 to 13 of 10 to 19"),  # the end missing
    ([range(10, 22)], "up to 21 of a run that ends at row 19"),  # rows past the end
])
def test_chunks_lost_repeated_or_out_of_order_are_refused(pieces, message):
    backend = object.__new__(distributed.Ray)
    backend._facts = {}
    with pytest.raises(distributed.LostRows, match=message):
        list(backend._checked(Returned(*pieces), 10, 20, 4))


def test_whole_blocks_are_cut_at_the_chunks_boundaries():
    backend = object.__new__(distributed.Ray)
    backend._facts = {}
    got = list(backend._checked(Returned(range(10, 13), range(13, 20)), 10, 20, 4))
    assert [r.tolist() for r, _ in got] == [[10, 11, 12], [13], [14, 15, 16, 17], [18, 19]]
    assert all(isinstance(b, Batch) and b.ids.shape == (r.size, 4) for r, b in got)


LOCAL_RAY_ENDS = """
import sys
import ray
from toolkit.files import UsageError
from toolkit.sampling.batch import sample_batch
from toolkit.sampling.config import sampling_config
try:
    sample_batch(sys.argv[1], sys.argv[2], sampling_config((1.0,), n=8), device="cpu", ray="local", workers=1)
except UsageError as e:
    print("refused:", e)
print("initialized:", ray.is_initialized())
"""


def test_a_ray_started_for_the_run_ends_with_it_even_on_an_error(tmp_path):
    """`local` starts a Ray and shuts it down after the run; an actor's UsageError (non-finite logits) arrives as
    the same one line."""
    pytest.importorskip("ray", reason='Ray is not installed (pip install -e ".[dev]")')
    broken = step_model(tmp_path / "nan.onnx", bias={5: float("nan")})
    result = subprocess.run([sys.executable, "-c", LOCAL_RAY_ENDS, str(broken), str(tmp_path / "out")],
                            capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"refused: {broken} gives non-finite logits" in result.stdout, result.stdout
    assert "initialized: False" in result.stdout and not (tmp_path / "out").exists()


PLAIN_RUN_IMPORTS = """
import sys
import cli
sys.argv = ["cli.py", "sample-batch", "--model", sys.argv[1], "--out", sys.argv[2], "--n", "3", "--device", "cpu",
            "--no-report"]
try:
    cli.main()
except SystemExit as e:
    assert not e.code, e.code
print("ray imported:", sorted(m for m in sys.modules if m == "ray" or m.startswith("ray.")))
"""


def test_a_plain_sample_batch_never_imports_ray(tmp_path):
    model = step_model(tmp_path / "m.onnx", scale=0.3, bias={EOS: 0.5})
    result = subprocess.run([sys.executable, "-c", PLAIN_RUN_IMPORTS, str(model), str(tmp_path / "s")],
                            capture_output=True, text=True, cwd=ROOT, timeout=240,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ray imported: []" in result.stdout and (tmp_path / "s" / "samples.csv").is_file()


def test_ray_options_are_refused_in_one_line(monkeypatch, tmp_path):
    for address, workers, params, words in [("", None, ("ray",), "empty"), ("  ", 2, ("ray",), "empty"),
                                            ("local", 0, ("workers",), "1 or more"),
                                            ("local", True, ("workers",), "1 or more")]:
        with pytest.raises(UsageError) as refused:
            distributed.check(address, workers)
        assert refused.value.params == params and words in str(refused.value) and "\n" not in str(refused.value)
    model = step_model(tmp_path / "m.onnx")
    code, stderr = cli_in_process("sample-batch", "--model", str(model), "--out", str(tmp_path / "s"), "--ray",
                                  "local", "--workers", "0")
    assert_usage_error(subprocess.CompletedProcess([], code, "", stderr), "--workers", "1 or more")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(UsageError, match=r'^ray needs Ray, which is not installed; install it with pip install -e '
                                         r'"\.\[ray\]", or leave ray out$'):
        distributed.check("local", None)
    assert not (tmp_path / "s").exists()


def test_more_workers_than_the_cluster_has_is_refused_before_any_write(cluster, model, tmp_path):
    with pytest.raises(UsageError, match=r"^workers 3: the Ray cluster has 2 CPUs and each actor takes one; use "
                                         r"workers 2 or fewer$"):
        sample_batch(model, tmp_path / "s", sampling_config((1.0,), n=4, classes=("A",)), device="cpu",
                     ray="local", workers=3)
    assert not (tmp_path / "s").exists()
