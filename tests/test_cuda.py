"""The CUDA path: TF32 off, state and tokens held in CUDA OrtValues, the same draws as on CPU. Skipped, with the
reason shown, where onnxruntime cannot start CUDA."""

import numpy as np
import pytest
from helpers import assert_usage_error, run_cli, step_model

from toolkit.files import UsageError
from toolkit.sampling.config import sampling_config
from toolkit.sampling.engine import Engine
from toolkit.sampling.runtime import OnnxStep

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The default model's size (1x256 LSTM, vocabulary of about 85), random weights."""
    return step_model(tmp_path_factory.mktemp("m") / "m.onnx", units=256, scale=0.1,
                      chars=tuple(chr(c) for c in range(32, 113)))


@pytest.fixture(scope="module")
def cuda_step(model):
    try:
        return OnnxStep(model, device="cuda")
    except UsageError as e:
        pytest.skip(f"no working onnxruntime CUDA provider here: {e}")


def test_cuda_logits_match_cpu_within_1e_4_with_tf32_off(cuda_step, model):
    cpu = OnnxStep(model, device="cpu")
    tokens = np.random.default_rng(0).integers(4, cpu.spec.vocab.size, size=(64, 512))
    gpu_state, cpu_state = cuda_step.initial_state(512), cpu.initial_state(512)
    worst = 0.0
    for t in range(64):
        gpu_logits, gpu_state = cuda_step(tokens[t], gpu_state)
        cpu_logits, cpu_state = cpu(tokens[t], cpu_state)
        worst = max(worst, float(np.abs(gpu_logits - cpu_logits).max()))
    assert worst <= 1e-4


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_cuda_engine_keeps_its_tensors_on_the_gpu_and_draws_as_the_cpu_does(cuda_step, model, cuda_graph):
    config = sampling_config((0.5, 1.0, 1.5), n=700, max_len=64, seed=3, top_p=0.95)
    rows = np.arange(config.rows)
    engine = Engine(cuda_step, config, cuda_graph=cuda_graph)
    gpu = engine.generate(rows)
    assert all(v.device_name().lower() == "cuda" for buf in engine._buffers.values()
               for side in buf.sides for v in side.values())
    cpu = Engine(OnnxStep(model, device="cpu"), config).generate(rows)
    assert np.mean((gpu.ids == cpu.ids).all(axis=1)) >= 0.99
    assert gpu.finished.any() and engine.cuda_graph == cuda_graph, engine.cuda_graph_error


def test_device_cuda_without_cuda_is_refused_not_a_silent_fallback(model, tmp_path):
    try:
        OnnxStep(model, device="cuda")
    except UsageError:
        result = run_cli("sample-batch", "--model", model, "--device", "cuda", "--out", tmp_path / "s")
        assert_usage_error(result, "--device cuda", "--device cpu")
        assert not (tmp_path / "s").exists()
    else:
        pytest.skip("CUDA works here: nothing to refuse")
