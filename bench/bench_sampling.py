"""Sampling speed, in one run, for each trained run given: characters per second of

1. the notebook's `generate_soft` (Keras, the whole prefix re-run for each character, batch 1), on a few samples;
2. the same batched algorithm as ours on TensorFlow (a `tf.function` step with the state carried);
3. this toolkit's sampler on onnxruntime CPU (`sample-batch`, CSV included);
4. the ceiling: a step's floating-point work divided by numpy's float32 matmul throughput at that shape.

A breakdown of the onnxruntime run (model step, sampling, the rest) says where the time goes.

    python bench/bench_sampling.py --run runs/notebook --run runs/default
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras  # noqa: E402
import notebook  # noqa: E402
import numpy as np  # noqa: E402

import toolkit.model  # noqa: E402
import toolkit.sampling as sampling  # noqa: E402
from toolkit.batch import parse_temperatures, sample_batch  # noqa: E402
from toolkit.runtime import OnnxStep  # noqa: E402
from toolkit.vocab import BOS, EOS  # noqa: E402


def step_flops(step: OnnxStep) -> int:
    """Multiply-adds x 2 of one step for one row: recurrent and input matmuls and the output head."""
    gates = 4 if step.metadata["cell"] == "lstm" else 3
    u, v = step.units, step.vocab.size
    return 2 * (u * gates * u * step.layers + u * gates * u * (step.layers - 1) + u * v)


def matmul_ceiling(rows: int, step: OnnxStep, seconds: float = 2.0) -> float:
    """Characters per second if a step cost only its matmuls at numpy's measured float32 throughput."""
    gates = 4 if step.metadata["cell"] == "lstm" else 3
    rng = np.random.default_rng(0)
    a = rng.standard_normal((rows, step.units), np.float32)
    b = rng.standard_normal((step.units, gates * step.units), np.float32)
    a @ b
    reps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        reps += 1
    flops_per_second = 2 * rows * step.units * gates * step.units * reps / (time.perf_counter() - started)
    return flops_per_second / step_flops(step)


class Timed:
    """Wraps a step to add up the time spent in it."""

    def __init__(self, step):
        self.step, self.seconds = step, 0.0

    def initial_state(self, rows):
        return self.step.initial_state(rows)

    def __call__(self, tokens, state):
        started = time.perf_counter()
        out = self.step(tokens, state)
        self.seconds += time.perf_counter() - started
        return out

    def select(self, state, rows):
        return self.step.select(state, rows)

    def __getattr__(self, name):
        return getattr(self.step, name)


def bench_run(run: Path, n: int, temps: list[float], notebook_samples: int, repeats: int) -> dict[str, float]:
    onnx_step = OnnxStep(run / "model.onnx", device="cpu")
    model = keras.saving.load_model(run / "best.keras", compile=False)
    rows = n * len(temps)
    row_temps = np.repeat(np.float32(temps), n)
    print(f"\n== {run}: {onnx_step.metadata['cell']} {onnx_step.layers}x{onnx_step.units}, "
          f"vocabulary {onnx_step.vocab.size}, {rows:,} rows", flush=True)

    rng, chars, started = np.random.default_rng(0), 0, time.perf_counter()
    for i in range(notebook_samples):
        chars += len(notebook.generate_soft(model, [BOS], EOS, size=100, temperature=temps[i % len(temps)],
                                            rng=rng)) - 1
    nb = chars / (time.perf_counter() - started)
    print(f"notebook generate_soft:   {nb:12,.1f} chars/s ({notebook_samples} samples)", flush=True)

    keras_step = toolkit.model.KerasStep(model)
    sampling.generate(keras_step, row_temps[:64], [[]] * 64, max_len=8, seed=0)  # trace
    tf_rate = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        batch = sampling.generate(keras_step, row_temps, [[]] * rows, max_len=128, seed=0)
        tf_rate = max(tf_rate, int((batch.ids != 0).sum()) / (time.perf_counter() - started))
    print(f"TensorFlow batched:       {tf_rate:12,.0f} chars/s (best of {repeats})", flush=True)

    timed, draw = Timed(onnx_step), sampling.sample
    sample_seconds = [0.0]

    def timed_sample(*args, **kwargs):
        started = time.perf_counter()
        out = draw(*args, **kwargs)
        sample_seconds[0] += time.perf_counter() - started
        return out

    with tempfile.TemporaryDirectory() as tmp:
        sample_batch(run / "model.onnx", Path(tmp), n=16, temps=temps, step=onnx_step)  # warm up
        ort = max(sample_batch(run / "model.onnx", Path(tmp), n=n, temps=temps, step=onnx_step).chars_per_second
                  for _ in range(repeats))
        sampling.sample = timed_sample
        try:
            profiled = sample_batch(run / "model.onnx", Path(tmp), n=n, temps=temps, step=timed)
        finally:
            sampling.sample = draw
    print(f"onnxruntime CPU sampler:  {ort:12,.0f} chars/s (best of {repeats}; a profiled run spent "
          f"{timed.seconds / profiled.seconds:.0%} in the step, {sample_seconds[0] / profiled.seconds:.0%} sampling, "
          f"{1 - (timed.seconds + sample_seconds[0]) / profiled.seconds:.0%} in the rest)", flush=True)
    ceiling = matmul_ceiling(rows, onnx_step)
    print(f"matmul ceiling:           {ceiling:12,.0f} chars/s ({step_flops(onnx_step) / 1e3:.0f} kFLOP/char)")
    print(f"ratios: {ort / nb:,.0f}x the notebook loop, {ort / tf_rate:.1f}x TensorFlow batched, "
          f"{ort / ceiling:.0%} of the matmul ceiling", flush=True)
    return {"notebook": nb, "tensorflow": tf_rate, "onnxruntime": ort, "ceiling": ceiling}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, action="append", required=True,
                        help="run directory with best.keras and model.onnx (repeatable)")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--temps", default="0.3,1.0,1.8")
    parser.add_argument("--notebook-samples", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs (shared, noisy machines)")
    args = parser.parse_args()
    for run in args.run:
        bench_run(run, args.n, parse_temperatures(args.temps), args.notebook_samples, args.repeats)


if __name__ == "__main__":
    main()
