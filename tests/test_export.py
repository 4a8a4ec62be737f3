import json
import shutil
from collections import Counter

import numpy as np
import onnx
import pytest

import exporters.onnx as onnx_export
from exporters.onnx import build_step_graph, export, max_logit_difference, read_weights
from toolkit.config import TrainConfig
from toolkit.files import UsageError
from toolkit.model import build_model
from toolkit.sampling.runtime import OnnxStep
from toolkit.vocab import Vocab


def scrambled_model(rng, **config):
    """A model with large random weights: saturating gates exercise every nonlinearity of the step."""
    model = build_model(TrainConfig(dropout=0, **config), vocab_size=30)
    model.set_weights([rng.normal(0, 0.6, w.shape).astype(np.float32) if w.ndim and "one_hot" not in w.path
                       else w.numpy() for w in model.weights])
    return model


@pytest.mark.parametrize("cell, layers, embedding_dim, tie", [
    ("lstm", 1, 8, False), ("lstm", 3, 8, False), ("gru", 1, 8, False), ("gru", 2, 8, False), ("lstm", 1, 0, False),
    ("gru", 1, 0, False), ("lstm", 2, 8, True), ("gru", 1, 12, True)])
def test_onnx_step_reproduces_keras(cell, layers, embedding_dim, tie, tmp_path):
    model = scrambled_model(np.random.default_rng(0), cell=cell, layers=layers, units=12,
                            embedding_dim=embedding_dim, tie=tie, weight_drop=0.5)
    path = tmp_path / "m.onnx"
    onnx.save(build_step_graph(read_weights(model), {"vocab": Vocab(tuple("abcdefghijklmnopqrstuvwxyz")).to_json(),
                                                     "cell": cell, "layers": str(layers), "units": "12",
                                                     "config": "{}"}), path)
    assert max_logit_difference(model, path, 30) < 1e-4


def test_the_graph_gathers_each_gate_and_never_splits(tmp_path):
    model = scrambled_model(np.random.default_rng(1), cell="lstm", layers=2, units=8, embedding_dim=4)
    graph = build_step_graph(read_weights(model), {}).graph
    ops = Counter(node.op_type for node in graph.node)
    assert ops["Split"] == ops["Slice"] == 0  # onnxruntime copies what it splits
    assert ops["MatMul"] == 4 * 2 and ops["Gemm"] == 4 + 1  # recurrent per gate and layer; layer 2's inputs, head
    assert ops["Gather"] == 4 + 2 * 2  # an input table per gate (embedding folded in), then h and c of each layer
    tables = [t for t in graph.initializer if t.name.startswith("input_table")]
    assert len(tables) == 4 and all(list(t.dims) == [30, 8] for t in tables)
    assert [i.name for i in graph.input] == ["token", "h", "c"]
    assert [o.name for o in graph.output] == ["logits", "h_out", "c_out"]
    dims = [d.dim_param or d.dim_value for d in graph.input[1].type.tensor_type.shape.dim]
    assert dims == [2, "batch", 8]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_one_layer_step_writes_its_state_outputs_directly(cell):
    model = scrambled_model(np.random.default_rng(2), cell=cell, layers=1, units=8, embedding_dim=4)
    graph = build_step_graph(read_weights(model), {}).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    assert all(producers[o.name] in ("Add", "Mul") for o in graph.output[1:])  # no copy through (Un)squeeze
    assert not any(n.op_type == "Gather" and n.input[0] in ("h", "c") for n in graph.node)
    used = {name for n in graph.node for name in n.input}
    assert all(t.name in used for t in graph.initializer)  # nothing onnxruntime would warn about and drop


def test_metadata_describes_the_model_and_its_run(tiny_run, tiny_onnx):
    spec = OnnxStep(tiny_onnx, device="cpu").spec
    saved = json.loads((tiny_run / "config.json").read_text())
    metadata = {p.key: p.value for p in onnx.load(tiny_onnx).metadata_props}
    assert spec.vocab == Vocab.load(tiny_run / "vocab.json")
    assert (spec.cell, spec.layers, spec.units, spec.precision) == ("lstm", 1, 32, "float32")
    assert spec.fingerprint == saved["data_fingerprint"] and spec.config == saved["config"]
    assert json.loads(metadata["specials"]) == {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
    report = json.loads(tiny_onnx.with_suffix(".verify.json").read_text())
    assert report["max_abs_logit_diff"] < 1e-4 and report["steps"] >= 200 and report["batch"] >= 4
    onnx.checker.check_model(onnx.load(tiny_onnx), full_check=True)


@pytest.mark.parametrize("rows", [1, 7, 300])
def test_batch_is_dynamic(tiny_onnx, rows):
    step = OnnxStep(tiny_onnx, device="cpu")
    logits, (h, c) = step(np.ones(rows, np.int64), step.initial_state(rows))
    assert logits.shape == (rows, step.spec.vocab.size) and h.shape == c.shape == (1, rows, 32)


def test_half_precision_export_stays_close(tiny_run, tmp_path):
    result = export(tiny_run, tmp_path / "m16.onnx", fp16=True)
    assert result.max_abs_diff <= onnx_export.TOLERANCE_FP16
    weights = onnx.load(result.path).graph.initializer
    tables = [t for t in weights if t.name.startswith("input_table")]
    assert tables and all(t.data_type == onnx.TensorProto.FLOAT16 for t in tables)
    step = OnnxStep(result.path, device="cpu")
    logits, state = step(np.ones(3, np.int64), step.initial_state(3))
    assert logits.dtype == np.float32 and state[0].dtype == np.float32


def test_failed_verification_writes_no_model(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "TOLERANCE", 0.0)
    with pytest.raises(UsageError, match="verification failed"):
        export(tiny_run, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_corrupt_checkpoint_is_refused(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("model*"))
    (run / "best.keras").write_bytes((run / "best.keras").read_bytes()[:1000])
    with pytest.raises(UsageError, match="corrupt"):
        export(run)
    assert not (run / "model.onnx").exists()


# --- where an export may write: one rule (trust, round two) ---------------------------------------------------------

def fake_run(path):
    """What check_arguments reads of a run: config.json and a checkpoint (never loaded by the checks)."""
    from toolkit.config import save_run_config

    path.mkdir(parents=True)
    save_run_config(path / "config.json", TrainConfig(units=8))
    for name in ("best.keras", "last.keras", "vocab.json", "history.csv"):
        (path / name).write_text(name)
    return path


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("target, words", [
    ("best.keras", "not an .onnx file"), ("config.json", "not an .onnx file"), ("vocab.json", "not an .onnx file"),
    ("model", "not an .onnx file"), (".onnx", "not an .onnx file"), ("subdir", "is a directory"),
    ("theirs.onnx", "not a model charlm exported"), ("model.onnx/x.onnx", "is a file, not a directory")])
def test_an_export_never_overwrites_what_it_did_not_make(tmp_path, target, words):
    """The run's checkpoint, config and vocabulary, a directory, a user's file: refused before anything loads,
    and nothing changes. (`model.onnx` here is an earlier export's: replacing it is what export does.)"""
    run = fake_run(tmp_path / "run")
    (run / "subdir").mkdir()
    (run / "theirs.onnx").write_bytes(b"a model of someone else's")
    (run / "model.onnx").write_text("")
    before = snapshot(tmp_path)
    with pytest.raises(UsageError) as e:
        onnx_export.check_arguments(run, "best", 17, run / target)
    assert words in str(e.value) and "\n" not in str(e.value)
    assert snapshot(tmp_path) == before


def test_a_foreign_record_beside_the_model_is_never_overwritten(tmp_path, tiny_onnx):
    run = fake_run(tmp_path / "run")
    shutil.copy(tiny_onnx, run / "mine.onnx")
    onnx_export.check_arguments(run, "best", 17, run / "mine.onnx")  # a charlm export: replaced
    (run / "mine.verify.json").write_text('{"my": "notes"}')
    with pytest.raises(UsageError, match="mine.verify.json exists and is not an export's record"):
        onnx_export.check_arguments(run, "best", 17, run / "mine.onnx")


def test_the_default_target_follows_the_precision(tmp_path):
    run = fake_run(tmp_path / "run")
    assert onnx_export.check_arguments(run, "best", 17)[3] == run / "model.onnx"
    assert onnx_export.check_arguments(run, "best", 17, None, fp16=True)[3] == run / "model.fp16.onnx"


def test_export_clears_what_killed_exports_left_and_only_that(tiny_run, tmp_path):
    import os

    dead = 4_194_304 + 1  # above Linux's largest pid
    out = tmp_path / "m.onnx"
    stale, live = tmp_path / f".m.{dead}-abc.tmp.onnx", tmp_path / f".m.{os.getpid()}-abc.tmp.onnx"
    for path in (stale, live):
        path.write_bytes(b"half a model")
    export(tiny_run, out)
    assert not stale.exists() and live.exists() and out.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "m.onnx", "m.verify.json"])


def test_a_run_model_opens_with_one_call(tiny_run):
    """What the README tells a user: `load_checkpoint` opens a run (Keras alone cannot: the layers are ours)."""
    from toolkit.model import load_checkpoint

    best, last = load_checkpoint(tiny_run), load_checkpoint(tiny_run, "last")
    assert best.count_params() == last.count_params() > 0
    with pytest.raises(UsageError, match="does not exist"):
        load_checkpoint(tiny_run / "nothing.keras")
