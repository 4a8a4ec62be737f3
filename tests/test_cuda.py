"""The CUDA path (IO binding, state kept on the GPU). Skipped, with the reason shown, where CUDA does not start."""

import numpy as np
import pytest
from helpers import assert_usage_error, run_cli

from toolkit.files import UsageError
from toolkit.runtime import OnnxStep
from toolkit.sampling import generate

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def cuda_step(tiny_onnx):
    try:
        return OnnxStep(tiny_onnx, device="cuda")
    except UsageError as e:
        pytest.skip(f"no working onnxruntime CUDA provider here: {e}")


def test_cuda_step_matches_cpu_and_keeps_state_on_the_gpu(cuda_step, tiny_onnx):
    cpu = OnnxStep(tiny_onnx, device="cpu")
    tokens = np.random.default_rng(0).integers(4, cpu.vocab.size, size=(20, 64))
    gpu_state, cpu_state = cuda_step.initial_state(64), cpu.initial_state(64)
    for t in range(20):
        gpu_logits, gpu_state = cuda_step(tokens[t], gpu_state)
        cpu_logits, cpu_state = cpu(tokens[t], cpu_state)
        assert np.abs(gpu_logits - cpu_logits).max() < 1e-3
    assert all(s.device_name() == "cuda" for s in gpu_state)


def test_cuda_sampling_runs_and_drops_finished_rows(cuda_step):
    batch = generate(cuda_step, np.full(500, 1.0), [[]] * 500, max_len=64, seed=0)
    assert batch.finished.mean() > 0.5 and (batch.ids[:, 0] != 0).all()


def test_device_cuda_without_cuda_is_refused_not_a_silent_fallback(tiny_onnx, tmp_path):
    try:
        OnnxStep(tiny_onnx, device="cuda")
    except UsageError:
        result = run_cli("sample-batch", "--model", tiny_onnx, "--device", "cuda", "--out", tmp_path / "s")
        assert_usage_error(result, "--device cuda", "--device cpu")
        assert not (tmp_path / "s").exists()
    else:
        pytest.skip("CUDA works here: nothing to refuse")
