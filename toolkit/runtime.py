"""The exported step on onnxruntime: provider choice, metadata, and state kept on the device under CUDA.

Needs numpy and onnxruntime only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from toolkit.files import UsageError
from toolkit.sampling import State
from toolkit.vocab import Vocab

DEVICES = ("auto", "cuda", "cpu")
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


def check_device(device: str) -> None:
    if device not in DEVICES:
        raise UsageError(f"--device must be one of {', '.join(DEVICES)}, not {device!r}")


class OnnxStep:
    """A self-describing `.onnx` step model: (token, h[, c]) -> (logits, h_out[, c_out]).

    On CPU the state travels as numpy arrays. On CUDA it stays on the GPU as OrtValues bound with IO binding;
    only the tokens go up and the logits come down.
    """

    def __init__(self, path: str | Path, device: str = "auto"):
        import onnxruntime as ort

        check_device(device)
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"model {path} does not exist; export one with `python cli.py export-onnx RUN`")
        ort.set_default_logger_severity(4)  # a CUDA library that fails to load is reported below, in one line
        wanted = [CPU] if device == "cpu" else [CUDA, CPU]
        try:
            self.session = ort.InferenceSession(str(path), providers=[
                p for p in wanted if p in ort.get_available_providers()])
        except Exception as e:  # onnxruntime raises its own untyped errors for unreadable files
            raise UsageError(f"{path} is not a readable ONNX model ({str(e).splitlines()[0][:200]}); "
                             "export it again with `python cli.py export-onnx RUN`") from None
        self.provider = self.session.get_providers()[0]
        if device == "cuda" and self.provider != CUDA:
            raise UsageError("--device cuda: onnxruntime could not start its CUDA provider on this machine "
                             "(no GPU, or CUDA/cuDNN libraries missing); use --device cpu or auto")
        self.metadata = self.session.get_modelmeta().custom_metadata_map
        if "vocab" not in self.metadata:
            raise UsageError(f"{path} is not a charlm model (no vocabulary in its metadata); export one with "
                             "`python cli.py export-onnx RUN`")
        self.vocab = Vocab.from_json(self.metadata["vocab"])
        self.config = json.loads(self.metadata["config"])
        self.layers, self.units = int(self.metadata["layers"]), int(self.metadata["units"])
        self.state_names = ("h", "c") if self.metadata["cell"] == "lstm" else ("h",)
        self.output_names = ["logits", *(f"{name}_out" for name in self.state_names)]
        self.on_gpu = self.provider == CUDA

    def initial_state(self, rows: int) -> State:
        return tuple(self._to_device(np.zeros((self.layers, rows, self.units), np.float32))
                     for _ in self.state_names)

    def __call__(self, tokens: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        tokens = np.ascontiguousarray(tokens, np.int64)
        if not self.on_gpu:
            logits, *new = self.session.run(self.output_names, {"token": tokens, **dict(
                zip(self.state_names, state, strict=True))})
            return logits, tuple(new)
        binding = self.session.io_binding()
        binding.bind_cpu_input("token", tokens)
        for name, value in zip(self.state_names, state, strict=True):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")  # get_outputs() follows the order of binding: logits first
        for name in self.output_names[1:]:
            binding.bind_output(name, "cuda")
        self.session.run_with_iobinding(binding)
        logits, *new = binding.get_outputs()
        return logits.numpy(), tuple(new)

    def select(self, state: State, rows: np.ndarray) -> State:
        """Keep only `rows` of the state (dropping finished rows); on CUDA a rare round trip through the host."""
        if not self.on_gpu:
            return tuple(s[:, rows] for s in state)
        return tuple(self._to_device(s.numpy()[:, rows]) for s in state)

    def _to_device(self, array: np.ndarray):
        if not self.on_gpu:
            return array
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cuda", 0)
