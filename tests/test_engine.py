"""The engine (composed step + head graph, IO binding, rows dropped on the device) against the numpy reference
loop, on CPU: the same code path as CUDA, device "cpu"."""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import decode, step_model

from toolkit.files import UsageError
from toolkit.sampling.config import SampleConfig, sampling_config
from toolkit.sampling.engine import Engine, ladder
from toolkit.sampling.numpy_loop import generate
from toolkit.sampling.processors import InvalidParameter, Temperature
from toolkit.sampling.runtime import OnnxStep
from toolkit.vocab import BOS, EOS, PAD, UNK


@pytest.fixture(scope="module")
def lstm(tmp_path_factory):
    return OnnxStep(step_model(tmp_path_factory.mktemp("m") / "lstm.onnx", scale=0.3), "cpu")


def one_row_reference(step, config, row):
    return generate(step, config, np.array([row]), config.prompt_ids(step.spec.vocab))


CONFIGS = {
    "plain": {},
    "top-k": {"top_k": 3},
    "top-p": {"top_p": 0.8},
    "min-p": {"min_p": 0.2},
    "penalties": {"presence_penalty": 0.8, "frequency_penalty": 0.5},
    "prompts": {"prompts": ("ab ", "j", "")},
    "everything": {"top_k": 6, "top_p": 0.9, "min_p": 0.05, "presence_penalty": -0.5, "prompts": ("cab", "")},
}


@pytest.mark.parametrize("name", CONFIGS)
def test_each_row_equals_a_one_row_reference(lstm, name):
    options = dict(CONFIGS[name])
    config = sampling_config((0.0, 0.5, 1.0, 1.8), n=12, prompts=options.pop("prompts", ()), max_len=40, seed=5,
                             **options)
    batch = Engine(lstm, config, sync_every=3).generate(np.arange(config.rows))
    lengths = (batch.ids != PAD).sum(axis=1)
    for row in range(config.rows):
        ref = one_row_reference(lstm, config, row)
        assert np.array_equal(batch.ids[row], ref.ids[0]) and batch.finished[row] == ref.finished[0], row
        assert abs(batch.logprob[row] - ref.logprob[0]) < 1e-3
    assert len(set(lengths)) > 5 and batch.finished.any()  # rows really diverged


@pytest.mark.parametrize("cell, layers", [("gru", 1), ("lstm", 2), ("gru", 3)])
def test_every_cell_and_depth_runs_in_the_engine(cell, layers, tmp_path):
    step = OnnxStep(step_model(tmp_path / "m.onnx", cell, layers, units=8, seed=layers, bias={EOS: 1.0}), "cpu")
    config = sampling_config((0.7, 1.3), n=20, max_len=30, seed=1, top_k=5)
    rows = np.arange(config.rows)
    batch, ref = Engine(step, config).generate(rows), generate(step, config, rows, [[]])
    assert np.array_equal(batch.ids, ref.ids) and np.array_equal(batch.finished, ref.finished)


@pytest.mark.parametrize("sync_every, shrink", [(1, 0.5), (4, 7 / 8), (16, 0.99), (64, 0.3)])
def test_sync_interval_and_row_dropping_do_not_change_any_row(lstm, sync_every, shrink):
    config = sampling_config((0.3, 1.0, 1.8), n=100, max_len=50, seed=2)
    rows = np.arange(config.rows)
    expected = generate(lstm, config, rows, [[]])
    batch = Engine(lstm, config, sync_every=sync_every, shrink=shrink).generate(rows)
    assert np.array_equal(batch.ids, expected.ids) and np.array_equal(batch.finished, expected.finished)
    assert np.allclose(batch.logprob, expected.logprob, atol=1e-3)


def test_chunks_give_the_same_rows_as_one_batch_and_buffers_are_reused(lstm):
    config = sampling_config((0.5, 1.5), n=60, max_len=40, seed=9)
    engine = Engine(lstm, config)
    whole = engine.generate(np.arange(120))
    parts = [engine.generate(np.arange(first, min(first + 25, 120))) for first in range(0, 120, 25)]
    assert np.array_equal(np.concatenate([p.ids for p in parts]), whole.ids)
    again = engine.generate(np.arange(120))  # buffers of every size are reused from the first chunk
    assert np.array_equal(again.ids, whole.ids)


def test_same_seed_same_samples_other_seed_other_samples(lstm):
    def ids(seed):
        config = sampling_config((1.0,), n=50, max_len=30, seed=seed)
        return Engine(lstm, config).generate(np.arange(50)).ids

    assert np.array_equal(ids(4), ids(4)) and not np.array_equal(ids(4), ids(5))


def test_reserved_ids_are_never_drawn_even_by_a_model_that_loves_them(tmp_path):
    step = OnnxStep(step_model(tmp_path / "m.onnx", bias={PAD: 40, BOS: 40, UNK: 40, EOS: -40}), "cpu")
    config = sampling_config((0.0, 1.0, 5.0), n=30, prompts=("ab",), max_len=25, seed=0)
    batch = Engine(step, config).generate(np.arange(config.rows))
    assert (batch.ids[:, :2] == [4, 5]).all()  # the prompt ("a" is id 4), then drawn characters only
    assert (batch.ids[:, 2:] >= 4).all() and not batch.finished.any()


def test_greedy_rows_take_the_likeliest_id(lstm):
    config = SampleConfig((0.0,), n=5, max_len=20)
    batch = Engine(lstm, config).generate(np.arange(5))
    state, token = lstm.initial_state(1), BOS
    for t in range(20):
        logits, state = lstm(np.array([token]), state)
        logits[0, [PAD, BOS, UNK]] = -np.inf
        token = int(logits[0].argmax())
        if token == EOS:
            break
        assert (batch.ids[:, t] == token).all()


def test_logprob_is_the_models_own_probability_of_the_text(lstm):
    config = SampleConfig((1.0,), n=8, max_len=30, seed=3)
    batch = Engine(lstm, config).generate(np.arange(8))
    for row in range(8):
        text = [i for i in batch.ids[row] if i != PAD] + ([EOS] if batch.finished[row] else [])
        state, token, total = lstm.initial_state(1), BOS, 0.0
        for target in text:
            logits, state = lstm(np.array([token]), state)
            total += logits[0, target] - np.log(np.exp(logits[0].astype(np.float64)).sum())
            token = target
        assert abs(batch.logprob[row] - total) < 1e-3


def test_a_model_with_non_finite_logits_is_refused(tmp_path):
    step = OnnxStep(step_model(tmp_path / "m.onnx", bias={7: np.nan}), "cpu")
    with pytest.raises(UsageError, match="non-finite"):
        Engine(step, SampleConfig((1.0,), n=4, max_len=10)).generate(np.arange(4))


def test_prompts_with_unknown_characters_are_refused(lstm):
    with pytest.raises(UsageError, match="'Z'"):
        Engine(lstm, SampleConfig((1.0,), prompts=("Zed",)))
    with pytest.raises(UsageError, match="^prompt 'Zed' has"):  # which input holds them: the prompt
        Engine(lstm, SampleConfig((1.0,), prompts=("ab", "Zed")))


@pytest.mark.parametrize("changes, parameter", [
    ({"temperatures": ()}, "temperatures"), ({"temperatures": (0.001,)}, "temperatures"),
    ({"temperatures": (float("inf"),)}, "temperatures"), ({"n": 0}, "n"), ({"n": 2**40}, "n"),
    ({"max_len": 0}, "max_len"), ({"max_len": 2**24}, "max_len"), ({"seed": -1}, "seed"), ({"seed": 2**64}, "seed"),
    ({"prompts": ("x" * 10,), "max_len": 10}, "prompts"), ({"processors": ()}, "processors"),
    ({"processors": (Temperature(), Temperature())}, "processors")])
def test_config_refuses_bad_values_by_name(changes, parameter):
    with pytest.raises(InvalidParameter) as error:
        SampleConfig(**changes)
    assert error.value.parameter == parameter


def test_a_chunk_moves_down_its_ladder_as_rows_finish(lstm):
    """Finished rows are dropped by moving to smaller buffers, each a size of the chunk's ladder."""
    engine = Engine(lstm, SampleConfig((1.0,), n=64, max_len=60, seed=0), shrink=0.5)
    batch = engine.generate(np.arange(64))
    sizes = sorted(engine._buffers, reverse=True)
    assert batch.finished.mean() > 0.5 and len(sizes) > 1 and set(sizes) <= set(ladder(64, 0.5))


def test_ladder_shrinks_to_its_floor():
    assert ladder(10, 0.5) == [10, 5, 3, 2, 1] and ladder(1, 0.5) == [1]
    assert ladder(100, 0.5, floor=20) == [100, 50, 25] and ladder(10, 0.5, floor=20) == [10]
    assert all(a > b for a, b in zip(ladder(1000, 0.99), ladder(1000, 0.99)[1:], strict=False))


def test_the_sampling_package_imports_nothing_from_the_training_side():
    """toolkit/sampling runs where TensorFlow is not installed: its imports stay within itself, the shared
    vocabulary and file helpers, numpy, onnx, onnxruntime and pyarrow."""
    import ast
    from pathlib import Path

    import toolkit.sampling

    allowed = {"toolkit.sampling", "toolkit.vocab", "toolkit.files", "toolkit.titles", "toolkit.sampledir", "numpy",
               "onnx", "onnxruntime", "pyarrow"}
    for path in Path(toolkit.sampling.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                f"{node.module}.{a.name}" if node.module == "toolkit" else node.module for a in node.names] \
                if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                top = name.split(".")[0]
                assert top != "toolkit" or any(name == a or name.startswith(a + ".") for a in allowed), (path, name)
                assert top not in ("tensorflow", "keras", "tensorflow_datasets", "tf2onnx", "exporters", "eval"), \
                    (path, name)


def test_a_blocks_uniforms_are_those_of_each_of_its_steps():
    import onnxruntime as ort

    from toolkit.sampling.draw import counters, squares_key, uniform_graph, uniforms

    config = SampleConfig((1.0,), seed=123)
    model = ort.InferenceSession(uniform_graph(config.seed, 8).SerializeToString(), providers=["CPUExecutionProvider"])
    counter = counters(np.array([0, 5, 10**9]))
    block = model.run(None, {"counter": counter, "first_step": np.array(16, np.int64)})[0]
    assert np.array_equal(block, np.stack([uniforms(squares_key(123), counter, 16 + j) for j in range(8)]))


def test_the_reference_loop_gives_ids_the_vocabulary_decodes(lstm):
    """Training prints its per-epoch samples from the reference loop through `decode_rows`."""
    config = SampleConfig((1.0,), n=6, max_len=20, seed=1)
    batch = generate(lstm, config, np.arange(6), [[]])
    texts = lstm.spec.vocab.decode_rows(batch.ids).tolist()
    assert texts == [decode(lstm.spec.vocab, row) for row in Engine(lstm, config).generate(np.arange(6)).ids]


def test_a_model_with_non_finite_logits_is_named_with_what_to_do(tmp_path):
    path = step_model(tmp_path / "nan.onnx", bias={7: np.nan})
    with pytest.raises(UsageError, match=rf"^{path} gives non-finite logits .* retrain it \(`cli.py train` with a "
                                         r"lower --lr\) and export it again$"):
        Engine(OnnxStep(path, "cpu"), SampleConfig((1.0,), n=4, max_len=10)).generate(np.arange(4))


@pytest.mark.parametrize("opset", [13, 18, 26])
def test_models_of_every_opset_the_exporter_writes_sample_as_the_reference(opset, tmp_path):
    """The head is written in the model's own opset (ReduceMax and ReduceSum change form at 13 and 18)."""
    step = OnnxStep(step_model(tmp_path / "m.onnx", opset=opset, bias={EOS: 1.0}), "cpu")
    config = sampling_config((0.0, 1.0), n=10, max_len=20, seed=4, min_p=0.1, presence_penalty=0.5)
    rows = np.arange(config.rows)
    assert np.array_equal(Engine(step, config).generate(rows).ids, generate(step, config, rows, [[]]).ids)


def test_a_vocabulary_beyond_256_ids_keeps_every_id(tmp_path):
    """The history tensor holds ids in one byte only while they fit: 257 ids need more."""
    chars = tuple(chr(c) for c in range(0x100, 0x100 + 253))  # 4 reserved ids + 253 characters = 257
    step = OnnxStep(step_model(tmp_path / "m.onnx", chars=chars, bias={256: 3.0, 255: 2.0}), "cpu")
    config = sampling_config((1.0,), n=20, max_len=15, seed=2)
    batch = Engine(step, config).generate(np.arange(20))
    assert (batch.ids == 256).any() and np.array_equal(batch.ids, generate(step, config, np.arange(20), [[]]).ids)


@pytest.mark.parametrize("options", [{"sync_every": -1}, {"sync_every": 0}, {"shrink": 0.0}, {"shrink": 1.0},
                                     {"shrink": 1.5}, {"shrink": -0.5}])
def test_engine_settings_out_of_range_are_refused(lstm, options):
    with pytest.raises(UsageError, match=r"^sync_every must be positive and shrink in \(0, 1\), not "):
        Engine(lstm, SampleConfig((1.0,), n=4, max_len=10), **options)


def test_an_engine_on_cpu_uses_its_threads_and_no_cuda_graphs_and_writes_no_files(lstm, tmp_path, monkeypatch):
    """What run.json reports (provider, cuda_graph, its error) and what a CPU worker of sample-batch relies on:
    one thread per engine, whatever asked for CUDA graphs."""
    monkeypatch.chdir(tmp_path)
    config = SampleConfig((1.0,), n=4, max_len=10)
    for options in ({}, {"cuda_graph": True}):
        engine = Engine(lstm, config, threads=1, **options)
        engine.generate(np.arange(4))
        assert (engine.device, engine.provider, engine.cuda_graph, engine.cuda_graph_error) == \
            ("cpu", "CPUExecutionProvider", False, None)
        sessions = (engine.session, engine.selector, engine.uniformer, engine.starter)
        assert [s.get_session_options().intra_op_num_threads for s in sessions] == [1] * 4
    assert list(tmp_path.iterdir()) == []


def test_profiling_records_the_step_node_by_node(lstm, tmp_path, monkeypatch):
    """What bench_gpu.py's per-node profile reads; off by default (it costs time and writes a file)."""
    monkeypatch.chdir(tmp_path)  # onnxruntime writes its trace into the working directory
    config = SampleConfig((1.0,), n=4, max_len=10)
    engine = Engine(lstm, config, profile=True)
    engine.generate(np.arange(4))
    events = json.loads(Path(engine.session.end_profiling()).read_text())
    assert {"MatMul", "Sigmoid", "Gather"} <= {e["args"].get("op_name") for e in events if e.get("cat") == "Node"}
    plain = Engine(lstm, config)
    plain.generate(np.arange(4))
    assert plain.session.end_profiling() == ""
