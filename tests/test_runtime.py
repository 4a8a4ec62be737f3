"""Loading exported models and starting onnxruntime on CPU: what is refused, in one line that says why, and what a
session is set up to do (the CUDA side is in test_cuda.py)."""

import re

import numpy as np
import onnx
import pytest
from helpers import step_model
from onnx import helper

from toolkit.files import UsageError
from toolkit.sampling.runtime import CPU, CUDA, Model, OnnxStep, check_device, session
from toolkit.sampling.writer import check_format


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return step_model(tmp_path_factory.mktemp("m") / "m.onnx")


@pytest.mark.parametrize("check, bad, choices", [(check_device, "gpu", "auto, cuda, cpu"),
                                                 (check_format, "json", "csv, parquet")])
def test_a_bad_choice_is_refused_listing_the_choices(check, bad, choices):
    with pytest.raises(UsageError) as error:
        check(bad)
    assert f"must be one of {choices}, not {bad!r}" in str(error.value)


def test_a_model_path_that_is_not_a_file_says_which_it_is(tmp_path):
    with pytest.raises(UsageError, match=f"^model {re.escape(str(tmp_path))} is not a file; pass an .onnx file"):
        Model.load(tmp_path)
    with pytest.raises(UsageError, match="^model .*missing.onnx does not exist; pass an .onnx file"):
        Model.load(tmp_path / "missing.onnx")


def test_a_file_that_is_not_onnx_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_bytes(b"\x08\x07 certainly not a protobuf")
    with pytest.raises(UsageError) as error:
        Model.load(path)
    reason = re.fullmatch(rf"{re.escape(str(path))} is not a readable ONNX model \((.+)\); export it again with "
                          r"`python cli.py export-onnx RUN`", str(error.value))
    assert reason and reason.group(1) != "None"


def test_an_onnx_model_from_elsewhere_is_named_in_the_refusal(tmp_path):
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "other",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(UsageError, match=f"^{re.escape(str(path))} is not a charlm model"):
        Model.load(path)


def test_a_model_onnxruntime_cannot_run_is_refused_with_its_reason():
    graph = helper.make_graph([helper.make_node("NoSuchOperator", ["x"], ["y"], domain="example.none")], "bad",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("example.none", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    with pytest.raises(UsageError) as error:
        session(model, "cpu")
    reason = re.fullmatch(r"onnxruntime cannot run this model \((.+)\); export it again with "
                          r"`python cli.py export-onnx RUN`", str(error.value))
    assert reason and reason.group(1).startswith("[ONNXRuntimeError]")


def test_a_session_on_cpu_uses_the_threads_it_is_given(model):
    proto = onnx.load(model)
    assert session(proto, "cpu", threads=1).get_session_options().intra_op_num_threads == 1
    assert session(proto, "cpu").get_providers() == [CPU]


def test_a_step_says_where_it_runs_and_leaves_no_files_behind(model, tmp_path, monkeypatch):
    """No profiling unless asked for: onnxruntime would write a JSON file per session into the working folder."""
    monkeypatch.chdir(tmp_path)
    step = OnnxStep(model, "cpu")
    step(np.array([1, 1]), step.initial_state(2))
    assert step.provider == CPU and step.model.path == model and list(tmp_path.iterdir()) == []


class FakeSession:
    """onnxruntime's InferenceSession as a GPU machine's would answer: it records what it was asked for and
    starts the providers `started` names."""

    started = [CPU]

    def __init__(self, data, options, providers):
        self.asked, self.options = providers, options
        FakeSession.last = self

    def get_providers(self):
        return self.started


@pytest.fixture
def cuda_offered(monkeypatch):
    """onnxruntime offering CUDA, with the preloading of its libraries recorded."""
    import onnxruntime as ort

    preloaded = []
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(ort, "preload_dlls", lambda: preloaded.append(True), raising=False)
    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    monkeypatch.setattr(FakeSession, "started", [CUDA, CPU])
    return preloaded


def cuda(tf32="0", cuda_graph="0"):
    return [(CUDA, {"use_tf32": tf32, "enable_cuda_graph": cuda_graph}), CPU]


@pytest.mark.parametrize("device, options, asked", [
    ("cpu", {}, [CPU]), ("cpu", {"tf32": True}, [CPU]), ("auto", {}, cuda()), ("cuda", {}, cuda()),
    ("auto", {"tf32": True}, cuda(tf32="1")), ("cuda", {"cuda_graph": True}, cuda(cuda_graph="1"))])
def test_where_cuda_is_offered_each_device_asks_for_its_providers(model, cuda_offered, device, options, asked):
    """TF32 and CUDA graphs stay off unless asked for; the CUDA libraries are preloaded only when CUDA is asked."""
    session(onnx.load(model), device, **options)
    assert FakeSession.last.asked == asked and cuda_offered == ([] if device == "cpu" else [True])


def test_by_default_a_step_takes_cuda_without_tf32(model, cuda_offered):
    step = OnnxStep(model)
    assert FakeSession.last.asked == cuda() and step.provider == CUDA and step.tf32 is False
    assert not FakeSession.last.options.enable_profiling
    OnnxStep(model, tf32=True)
    assert FakeSession.last.asked == cuda(tf32="1")
    session(onnx.load(model))
    assert FakeSession.last.asked == cuda()


def test_cuda_asked_for_but_not_started_is_refused_while_auto_falls_back(model, cuda_offered, monkeypatch):
    monkeypatch.setattr(FakeSession, "started", [CPU])
    with pytest.raises(UsageError, match="^device cuda: onnxruntime could not start its CUDA provider"):
        session(onnx.load(model), "cuda")
    assert session(onnx.load(model), "auto").get_providers() == [CPU]
