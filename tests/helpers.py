"""Helpers shared by the tests: where things are, and the CLI run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from toolkit.data import BUNDLED

ROOT = Path(__file__).resolve().parent.parent
BUNDLED_AG_NEWS = ROOT / "toolkit" / "corpora" / BUNDLED["ag_news:test"]  # what `--data ag_news:test` reads
AG_NEWS = Path(os.environ.get("CHARLM_AG_NEWS") or BUNDLED_AG_NEWS)  # optional override: another copy, e.g. test.csv


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The CLI as a user runs it: a fresh process, so exit codes and stderr are the real ones."""
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=timeout, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def assert_usage_error(result: subprocess.CompletedProcess, *words: str) -> None:
    """Exit status 2, one line on stderr that names the problem, no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip() and not _is_library_noise(line)]
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])


def decode(vocab, ids) -> str:
    """Ids to text the simple way (stop at the first <eos>, drop the other reserved ids): the tests' reference for
    the toolkit's array decoders."""
    from toolkit.vocab import EOS, SPECIALS

    text = []
    for i in map(int, ids):
        if i == EOS:
            break
        if i >= len(SPECIALS):
            text.append(vocab.chars[i - len(SPECIALS)])
    return "".join(text)


def as_cli(error: Exception, command: str | None = None) -> str:
    """A library error as the CLI prints it: its parameters named by the flags of `command`."""
    import cli

    return f"error: {error.render(lambda name: cli.flag(name, command))}"


def _is_library_noise(line: str) -> bool:
    """TensorFlow's C++ start-up logging, which goes to stderr before Python runs (not ours to silence)."""
    return line.startswith(("WARNING: All log messages", "I0000", "W0000", "E0000")) or "cuda_" in line


CHARS = tuple("abcdefghij ")


def step_model(path: Path, cell: str = "lstm", layers: int = 1, units: int = 16, seed: int = 0,
               bias: dict[int, float] | None = None, scale: float = 0.5, chars: tuple[str, ...] = CHARS,
               **export_options) -> Path:
    """A random step model written with the exporter's graph builder: sampling tests need no TensorFlow.

    `bias` adds to the logits of the given ids (e.g. {EOS: 1.5} ends rows sooner; {PAD: 50} loves padding).
    """
    import numpy as np

    from exporters.onnx import Layer, Weights, build_step_graph
    from toolkit.sampling.contract import StepSpec
    from toolkit.vocab import Vocab

    rng = np.random.default_rng(seed)
    vocab = Vocab(chars)
    gates = 4 if cell == "lstm" else 3

    def w(*shape):
        return rng.normal(0, scale, shape).astype(np.float32)

    stack = [Layer(w(vocab.size if i == 0 else units, gates * units), w(units, gates * units), w(gates * units),
                   None if cell == "lstm" else w(gates * units)) for i in range(layers)]
    head_bias = w(vocab.size)
    for i, b in (bias or {}).items():
        head_bias[i] += b
    weights = Weights(cell, np.eye(vocab.size, dtype=np.float32), stack, (w(units, vocab.size) * 4, head_bias))
    spec = StepSpec(cell, layers, units, vocab, {"units": units}, "fingerprint",
                    "float16" if export_options.get("fp16") else "float32", None)
    import onnx

    onnx.save(build_step_graph(weights, spec.metadata("best"), **export_options), path)
    return path


def cli_in_process(*args: str) -> tuple[int, str]:
    """`cli.py ARGS` in this process, for tests that call it hundreds of times: exit status and stderr."""
    import contextlib
    import io

    import cli

    stderr = io.StringIO()
    argv, sys.argv = sys.argv, ["cli.py", *args]
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            cli.main()
    except SystemExit as e:
        return int(e.code or 0), stderr.getvalue()
    finally:
        sys.argv = argv
    return 0, stderr.getvalue()


def processor_graph(build, inputs, vocab, opset):
    """Run the nodes `build(g)` adds to a Graph over `vocab` ids, fed `inputs`: a processor's ONNX twin alone."""
    import numpy as np
    import onnxruntime as ort
    from onnx import helper

    from toolkit.sampling.graph import Graph, make_model

    g = Graph(np.float32, opset, vocab=vocab)
    result = build(g)
    model = make_model(helper.make_graph(
        [*g.nodes, helper.make_node("Identity", [result], ["out"])], "t",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
         for k, v in inputs.items()], [helper.make_empty_tensor_value_info("out")], g.initializers), opset)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)[0]
