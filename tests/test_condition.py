"""Class-conditional titles: a tiny model trained on a synthetic two-class corpus (class A's titles start with "a",
class B's with "b"), exported, and sampled per class through the engine; the class as a per-row input from the
data to the samples file, and every bad input refused in one line."""

import json

import numpy as np
import onnx
import pandas as pd
import pytest
from helpers import assert_usage_error, run_cli, step_model

from exporters.onnx import export, max_logit_difference
from toolkit.config import TrainConfig
from toolkit.files import UsageError
from toolkit.model import load_checkpoint
from toolkit.sampledir import CLASS, Samples, columns
from toolkit.sampling.batch import sample_batch
from toolkit.sampling.config import SampleConfig, parse_classes, sampling_config
from toolkit.sampling.engine import Engine
from toolkit.sampling.numpy_loop import generate
from toolkit.sampling.processors import Ban, Guidance, InvalidParameter, Rows, Temperature, chain
from toolkit.sampling.runtime import OnnxStep
from toolkit.train import train
from toolkit.vocab import Vocab

WORDS = ["game", "talk", "vote", "news", "city", "price", "deal", "win", "team", "market"]


def two_classes(path, rows=400, seed=0):
    """An AG News-shaped CSV (class, title, description): class A's titles start with "a", B's with "b"."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(rows):
        label = str(rng.choice(["A", "B"]))
        lines.append(f'"{label}","{label.lower()} {" ".join(rng.choice(WORDS, 3))}",""\n')
    path.write_text("".join(lines))
    return path


def tiny(data, **changes):
    settings = dict(data=str(data), units=32, embedding_dim=8, epochs=15, batch_size=16, lr=1e-2, condition="class")
    return TrainConfig(**(settings | changes))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A conditional run (class fed at every step) and its export."""
    root = tmp_path_factory.mktemp("conditional")
    out = root / "run"
    train(tiny(two_classes(root / "two.csv")), out, verbose=0, log=lambda _: None)
    export(out)
    return out


@pytest.fixture(scope="module")
def sampled(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("samples") / "s"
    sample_batch(run / "model.onnx", out, SampleConfig((1.0,), n=200, max_len=30, classes=("A", "B", "any")),
                 device="cpu")
    return out


def test_conditional_samples_start_with_their_class_letter_and_any_gives_both(sampled):
    rows = pd.read_csv(sampled / "samples.csv", keep_default_na=False)
    first = rows["text"].str[:1]
    for label in ("A", "B"):
        assert (first[rows[CLASS] == label] == label.lower()).mean() >= 0.95, label
    unconditional = first[rows[CLASS] == "any"].value_counts(normalize=True)
    assert unconditional.get("a", 0) >= 0.2 and unconditional.get("b", 0) >= 0.2


def test_the_run_records_its_classes_and_validation_with_and_without_a_class(run):
    facts = json.loads((run / "config.json").read_text())
    assert facts["classes"] == ["A", "B"] and facts["config"]["condition"] == "class"
    history = pd.read_csv(run / "history.csv")
    # the class says which letter comes first: the model given it is surer than the model told "no class"
    assert (history["val_bpc"] < history["val_bpc_any"]).iloc[-3:].all()


def test_the_export_takes_a_class_per_row_and_matches_keras_for_every_class(run):
    proto = onnx.load(run / "model.onnx")
    assert "class" in [i.name for i in proto.graph.input]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == ["A", "B"]
    vocab = Vocab.load(run / "vocab.json")
    assert max_logit_difference(load_checkpoint(run), run / "model.onnx", vocab.size, classes=2) <= 1e-4
    step = OnnxStep(run / "model.onnx", "cpu")
    tokens = np.full(3, 1, np.int64)  # <bos>
    logits = step(tokens, step.initial_state(3, np.array([0, 1, 2])))[0]
    a, b = vocab.encode_known("a", "t")[0], vocab.encode_known("b", "t")[0]
    assert logits[0, a] > logits[0, b] and logits[1, b] > logits[1, a]  # the class reaches the logits


def test_each_row_equals_a_one_row_reference_and_batch_size_changes_nothing(run, tmp_path):
    step = OnnxStep(run / "model.onnx", "cpu")
    config = SampleConfig((0.5, 1.5), n=5, max_len=24, seed=3, classes=("B", "any", "A"))
    ids = config.class_ids(step.spec.classes)
    assert ids.tolist() == [1, 2, 0]
    batch = Engine(step, config, sync_every=3).generate(np.arange(config.rows))
    for row in range(config.rows):
        ref = generate(step, config, np.array([row]), config.prompt_ids(step.spec.vocab), step.spec.classes)
        assert np.array_equal(batch.ids[row], ref.ids[0]), row
    one = sample_batch(run / "model.onnx", tmp_path / "one", config, device="cpu", batch_size=1)
    many = sample_batch(run / "model.onnx", tmp_path / "many", config, device="cpu", batch_size=7)
    assert one.rows == many.rows == 30
    assert (tmp_path / "one" / "samples.csv").read_bytes() == (tmp_path / "many" / "samples.csv").read_bytes()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_samples_carry_a_class_column_and_run_json_the_classes(run, tmp_path, fmt):
    out = tmp_path / "s"
    config = SampleConfig((0.3, 1.0), n=4, max_len=20, classes=("B", "any"))
    sample_batch(run / "model.onnx", out, config, device="cpu", fmt=fmt)
    rows = pd.read_csv(out / "samples.csv", keep_default_na=False) if fmt == "csv" else \
        pd.read_parquet(out / "samples.parquet")
    assert tuple(rows.columns) == columns(classes=True)
    assert rows[CLASS].tolist() == (["B"] * 4 + ["any"] * 4) * 2  # temperature-major, then class
    assert rows["temperature"].tolist() == [0.3] * 8 + [1.0] * 8
    assert json.loads((out / "run.json").read_text())["sampling"]["classes"] == ["B", "any"]
    assert sum(b.num_rows for b in Samples(out).chunks()) == 16


def test_a_conditional_model_samples_every_class_by_default(run, tmp_path):
    sample_batch(run / "model.onnx", tmp_path / "s", SampleConfig((1.0,), n=3, max_len=10), device="cpu")
    assert pd.read_csv(tmp_path / "s" / "samples.csv")[CLASS].tolist() == ["A"] * 3 + ["B"] * 3


def test_an_edited_class_column_is_refused_by_its_reader(run, tmp_path):
    out = tmp_path / "s"
    sample_batch(run / "model.onnx", out, SampleConfig((1.0,), n=3, max_len=10), device="cpu")
    text = (out / "samples.csv").read_text()
    (out / "samples.csv").write_text(text.replace(',"B",', ',"A",', 1))
    with pytest.raises(UsageError, match="row 3 has a class that run.json does not give it"):
        list(Samples(out).chunks())


def test_an_unconditional_model_samples_as_before_without_a_class_column(tmp_path):
    model = step_model(tmp_path / "m.onnx")
    sample_batch(model, tmp_path / "s", SampleConfig((1.0,), n=3, max_len=10), device="cpu")
    assert tuple(pd.read_csv(tmp_path / "s" / "samples.csv").columns) == columns(classes=False)
    assert json.loads((tmp_path / "s" / "run.json").read_text())["sampling"]["classes"] == []


def test_a_class_the_model_lacks_is_refused_naming_the_models_classes(run, tmp_path):
    result = run_cli("sample-batch", "--model", str(run / "model.onnx"), "--out", str(tmp_path / "s"),
                     "--classes", "Sports,A")
    assert_usage_error(result, "--classes", "(A, B)", "'Sports'")
    assert not (tmp_path / "s").exists()


def test_classes_on_an_unconditional_model_are_refused(tmp_path):
    model = step_model(tmp_path / "m.onnx")
    result = run_cli("sample-batch", "--model", str(model), "--out", str(tmp_path / "s"), "--classes", "A")
    assert_usage_error(result, "--classes", "no classes", "--condition class")
    assert not (tmp_path / "s").exists()


def test_class_lists_are_parsed_and_bad_ones_refused():
    assert parse_classes(None) == () and parse_classes("Sports, World") == ("Sports", "World")
    with pytest.raises(UsageError, match="comma-separated"):
        parse_classes("A,,B")
    with pytest.raises(UsageError, match="distinct"):
        SampleConfig(classes=("A", "A"))


def test_condition_class_on_data_without_labels_is_refused_before_anything_is_written(tmp_path):
    data = tmp_path / "titles.txt"
    data.write_text("".join(f"title {i}\n" for i in range(50)))
    result = run_cli("train", "--data", str(data), "--out", str(tmp_path / "run"), "--condition", "class",
                     "--epochs", "1", "--units", "8")
    assert_usage_error(result, "--condition", "no classes")
    assert not (tmp_path / "run").exists()


def test_a_label_column_with_too_many_values_is_not_a_set_of_classes(tmp_path):
    data = tmp_path / "ids.csv"
    data.write_text("".join(f'"{i}","title number {i}",""\n' for i in range(200)))
    with pytest.raises(UsageError, match="more than 64 distinct labels"):
        train(tiny(data, epochs=1), tmp_path / "run", verbose=0, log=lambda _: None)
    assert not (tmp_path / "run").exists()


def test_a_run_that_learned_its_class_through_the_state_is_refused_by_export(tmp_path):
    out = tmp_path / "run"
    train(tiny(two_classes(tmp_path / "two.csv", rows=60), epochs=1, condition_via="state"), out, verbose=0,
          log=lambda _: None)
    with pytest.raises(UsageError, match="condition_via input"):
        export(out)
    assert not (out / "model.onnx").exists()


def test_resuming_on_data_with_other_classes_is_refused(tmp_path):
    data, out = two_classes(tmp_path / "two.csv", rows=60), tmp_path / "run"
    train(tiny(data, epochs=1), out, verbose=0, log=lambda _: None)
    data.write_text(data.read_text().replace('"A"', '"X"'))
    config = TrainConfig.from_dict(json.loads((out / "config.json").read_text())["config"])
    with pytest.raises(UsageError, match="classes"):
        train(config.replace(epochs=2), out, resume=True, verbose=0, log=lambda _: None)
    assert len(pd.read_csv(out / "history.csv")) == 1


def test_pipeline_checks_its_classes_before_training(tmp_path):
    data, text = two_classes(tmp_path / "two.csv", rows=60), tmp_path / "t.txt"
    text.write_text("".join(f"title number {i}\n" for i in range(200)))
    for args, words in ((("--condition", "none", "--classes", "A"), ("--classes", "--condition none")),
                        (("--condition", "class", "--classes", "Sports"), ("--classes", "(A, B)", "'Sports'")),
                        (("--condition", "class", "--data", str(text)), ("--condition", "no classes")),
                        (("--classes", "A", "--data", str(text)), ("--classes", "no classes"))):
        result = run_cli("pipeline", "--data", str(data), "--name", "x", "--epochs", "1", *args, cwd=tmp_path)
        assert_usage_error(result, *words)
        assert not (tmp_path / "runs").exists() and not (tmp_path / "reports").exists()


def test_the_main_job_learns_the_class_where_its_data_has_labels(tmp_path):
    """docs/benchmarks.md: the conditional model's "no class" figure is within 0.02 of the unconditional one, so
    `pipeline` conditions by default on labelled data (and samples every class); unlabelled data trains as before."""
    data, text = two_classes(tmp_path / "two.csv", rows=80), tmp_path / "t.txt"
    text.write_text("".join(f"title number {i}\n" for i in range(200)))
    for name, source, condition in (("labelled", data, "class"), ("plain", text, "none")):
        result = run_cli("pipeline", "--data", str(source), "--name", name, "--epochs", "1", "--units", "8",
                         "--n", "2", "--device", "cpu", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        assert json.loads((tmp_path / "runs" / name / "config.json").read_text())["config"]["condition"] == condition
        rows = pd.read_csv(tmp_path / "reports" / name / "samples.csv", keep_default_na=False)
        assert (CLASS in rows) == (condition == "class")
        assert len(rows) == 2 * 3 * (2 if condition == "class" else 1)


def test_the_report_is_per_class_and_temperature_each_class_against_its_own_titles(run, tmp_path):
    from eval.report import write_report
    from toolkit import titles

    out = tmp_path / "s"
    config = SampleConfig((0.5, 1.0), n=40, max_len=30, classes=("B", "A", "any"))
    sample_batch(run / "model.onnx", out, config, device="cpu")
    write_report(out, name="mine")
    table = pd.read_csv(out / "metrics.csv", keep_default_na=False)
    assert table.columns[0] == "class"
    assert list(zip(table["class"], table["group"], strict=True)) == [
        (c, g) for c in ("B", "A", "any") for g in ("T=0.5", "T=1", "reference")]
    held_out = titles.parse((out / titles.FILE).read_bytes(), "", "")
    reference = table[table["group"] == "reference"].set_index("class")
    for i, label in enumerate(held_out.classes):
        assert reference.loc[label, "samples"] == held_out.val_labels.count(i)
    assert reference.loc["any", "samples"] == len(held_out.val)
    assert table["size"].nunique() == 1 and table["size"].iloc[0] <= min(held_out.val_labels.count(i) for i in (0, 1))
    by_class = json.loads((out / "run.json").read_text())["reference_bpc_by_class"]
    assert reference.loc["A", "bpc"] == pytest.approx(by_class["A"]) and by_class["A"] < reference.loc["any", "bpc"]
    samples = table[table["group"] == "T=1"].set_index("class")["samples"]
    assert samples.tolist() == [40, 40, 40]
    page = (out / "report.html").read_text()
    assert "<title>Samples: mine, by class</title>" in page and "class A: Samples" in page


@pytest.mark.parametrize("weight", [0.0, 2.0])
def test_guided_rows_equal_a_one_row_reference_whatever_the_batch_size(run, tmp_path, weight):
    step = OnnxStep(run / "model.onnx", "cpu")
    config = sampling_config((0.7, 1.3), n=4, max_len=24, seed=5, classes=("A", "B", "any"), guidance=weight,
                             top_k=6, presence_penalty=0.4)
    batch = Engine(step, config, sync_every=3, shrink=0.5).generate(np.arange(config.rows))
    for row in range(config.rows):
        ref = generate(step, config, np.array([row]), config.prompt_ids(step.spec.vocab), step.spec.classes)
        assert np.array_equal(batch.ids[row], ref.ids[0]), row
    sample_batch(run / "model.onnx", tmp_path / "one", config, device="cpu", batch_size=1)
    sample_batch(run / "model.onnx", tmp_path / "many", config, device="cpu", batch_size=5)
    assert (tmp_path / "one" / "samples.csv").read_bytes() == (tmp_path / "many" / "samples.csv").read_bytes()
    plain = sampling_config((0.7, 1.3), n=4, max_len=24, seed=5, classes=("A", "B", "any"), top_k=6,
                            presence_penalty=0.4)
    unguided = Engine(step, plain).generate(np.arange(plain.rows))
    assert not np.array_equal(batch.ids[:8], unguided.ids[:8])  # guidance changed the class rows
    assert np.array_equal(batch.ids[8:12], unguided.ids[8:12])  # "any": with and without a class are the same


def test_guidance_is_hugging_faces_rule_on_the_models_two_distributions(run):
    """Sanchez et al. / HF's ClassifierFreeGuidanceLogitsProcessor: log_softmax(u) + W (log_softmax(c) -
    log_softmax(u)), with c the model given the row's class and u the model told "no class"."""
    step = OnnxStep(run / "model.onnx", "cpu")
    tokens = np.full(3, 1, np.int64)  # <bos>
    cond = step(tokens, step.initial_state(3, np.array([0, 1, 2])))[0].astype(np.float64)
    uncond = step(tokens, step.initial_state(3, np.full(3, 2)))[0].astype(np.float64)

    def log_softmax(x):
        return x - x.max(axis=1, keepdims=True) - np.log(np.exp(x - x.max(axis=1, keepdims=True)).sum(1))[:, None]

    for weight in (0.5, 1.5, 3.0):
        expected = log_softmax(log_softmax(uncond) + weight * (log_softmax(cond) - log_softmax(uncond)))
        found = Guidance(weight).numpy(cond.astype(np.float32), Rows(np.ones(3, np.float32),
                                                                     unconditional=uncond.astype(np.float32)))
        assert np.allclose(log_softmax(found.astype(np.float64)), expected, atol=1e-5)
    assert chain((Guidance(2.0), Temperature()))[:2] == (Guidance(2.0), Ban())  # before the ban's -inf


def test_guidance_on_an_unconditional_model_is_refused(tmp_path):
    model = step_model(tmp_path / "m.onnx")
    result = run_cli("sample-batch", "--model", str(model), "--out", str(tmp_path / "s"), "--guidance", "2")
    assert_usage_error(result, "--guidance", "no classes")
    assert not (tmp_path / "s").exists()
    with pytest.raises(InvalidParameter, match=r"guidance.*\[0, 10\]"):
        sampling_config((1.0,), guidance=11)


@pytest.mark.parametrize("cell, layers, tie", [("gru", 1, False), ("lstm", 2, True)])
def test_every_cell_depth_and_tying_exports_a_conditional_step_at_parity(tmp_path, cell, layers, tie):
    out = tmp_path / "run"
    train(tiny(two_classes(tmp_path / "two.csv", rows=60), epochs=1, units=16, cell=cell, layers=layers, tie=tie),
          out, verbose=0, log=lambda _: None)
    export(out)
    assert json.loads((out / "model.verify.json").read_text())["max_abs_logit_diff"] <= 1e-4
    sample_batch(out / "model.onnx", tmp_path / "s", SampleConfig((1.0,), n=2, max_len=8, classes=("B",)),
                 device="cpu")


def test_a_class_table_too_large_to_join_exports_as_two_gathers_with_the_same_logits(run, tmp_path, monkeypatch):
    import exporters.onnx

    monkeypatch.setattr(exporters.onnx, "JOINT_TABLE_BYTES", 0)
    export(run, tmp_path / "split.onnx")
    gathers = [n for n in onnx.load(tmp_path / "split.onnx").graph.node if n.op_type == "Gather"]
    assert any("class" in n.input for n in gathers) and any("token" in n.input for n in gathers)
    joint, split = OnnxStep(run / "model.onnx", "cpu"), OnnxStep(tmp_path / "split.onnx", "cpu")
    tokens, classes = np.array([1, 5, 9, 1, 7, 3]), np.array([0, 1, 2, 2, 1, 0])
    a, b = joint(tokens, joint.initial_state(6, classes))[0], split(tokens, split.initial_state(6, classes))[0]
    assert np.abs(a - b).max() <= 1e-5
    assert not any("class" in n.input for n in onnx.load(run / "model.onnx").graph.node if n.op_type == "Gather")


def test_the_report_judges_each_class_and_recommends_by_train_on_synthetic_test_on_real(sampled, tmp_path):
    """The two-class corpus: the judge tells a title's class by its first letter, so a model that obeys its class
    scores near the judge's ceiling, and classifiers trained on its samples do as well as those trained on real
    titles; the samples asked for no class (`any`) are judged by nothing."""
    import shutil

    from eval.report import write_report
    from eval.usefulness import MIN_TEXTS

    out = shutil.copytree(sampled, tmp_path / "s")
    write_report(out)
    useful = pd.read_csv(out / "usefulness.csv", keep_default_na=False)
    fidelity = useful[(useful["section"] == "fidelity") & (useful["figure"] == "fidelity")]
    assert fidelity["class"].tolist() == ["A", "B"] and (fidelity["value"] >= 0.95).all()
    assert (fidelity["texts"] == 200).all()
    tstr = useful[(useful["section"] == "tstr") & (useful["figure"] == "accuracy")].set_index("temperature")
    assert tstr.loc["1.0", "value"] >= tstr.loc["real", "value"] - 0.05 and tstr.loc["real", "value"] > 0.9
    mauve = useful[(useful["section"] == "mauve") & (useful["figure"] == "mauve")]
    assert {"any", "all"} == set(mauve["class"])  # each class holds about 20 held-out titles: too few to halve
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "MAUVE and precision/recall of A: " in page and f"fewer than {2 * MIN_TEXTS}" in page
    assert "Recommended: T=1, the highest TSTR accuracy" in page
    confusion = page[page.index("<h4>T=1</h4>"):]
    assert confusion.index("<th class=label>asked \\ judged</th><th>A</th><th>B</th>") < confusion.index("</table>")
