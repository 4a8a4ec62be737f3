"""Step latency on onnxruntime CPU: the lean exported graph against a straightforward export of the Keras layers.

The straightforward export is what a user would write first: a `tf.function` that calls the trained layers
(embedding, LSTM/GRU cells, Dense) for one step, converted with `tf2onnx.convert.from_function`. Latencies are
medians over alternating repeats at batch 1 and batch 4096.

    python bench/bench_export.py --run runs/default
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402

from toolkit.model import KerasStep  # noqa: E402


def straightforward_export(model: keras.Model, path: Path) -> None:
    step = KerasStep(model)
    shape = [step.layers, None, step.units]
    names = ("h", "c") if step.lstm else ("h",)
    signature = [tf.TensorSpec([None], tf.int32, "token"), *(tf.TensorSpec(shape, tf.float32, n) for n in names)]

    @tf.function(input_signature=signature)
    def one_step(token, *state):
        logits, new = step._call(token, tuple(state))
        return {"logits": logits, **{f"{n}_out": s for n, s in zip(names, new, strict=True)}}

    tf2onnx.convert.from_function(one_step, input_signature=signature, opset=17, output_path=str(path))


def latency(session: ort.InferenceSession, batch: int, state_shape: tuple[int, int]) -> float:
    layers, units = state_shape
    feeds = {}
    for arg in session.get_inputs():
        if arg.name.startswith("token"):
            feeds[arg.name] = np.ones(batch, np.int64 if arg.type == "tensor(int64)" else np.int32)
        else:
            feeds[arg.name] = np.zeros((layers, batch, units), np.float32)
    session.run(None, feeds)
    reps = max(5, 20_000 // batch)
    started = time.perf_counter()
    for _ in range(reps):
        session.run(None, feeds)
    return (time.perf_counter() - started) / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="run directory with best.keras and model.onnx")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    model = keras.saving.load_model(args.run / "best.keras", compile=False)
    step = KerasStep(model)
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "plain.onnx"
        straightforward_export(model, plain)
        paths = {"lean (toolkit)": args.run / "model.onnx", "straightforward (tf2onnx of the Keras layers)": plain}
        sessions = {name: ort.InferenceSession(str(path)) for name, path in paths.items()}
        for name, path in paths.items():
            print(f"{name}: {len(onnx.load(str(path)).graph.node)} nodes")
        for batch in (1, 4096):
            times = {name: [] for name in sessions}
            for _ in range(args.rounds):
                for name, session in sessions.items():
                    times[name].append(latency(session, batch, (step.layers, step.units)))
            med = {name: statistics.median(t) for name, t in times.items()}
            lean, plain_t = med["lean (toolkit)"], med["straightforward (tf2onnx of the Keras layers)"]
            print(f"batch {batch:5d}: lean {lean * 1e6:9.1f} us, straightforward {plain_t * 1e6:9.1f} us, "
                  f"speed-up {plain_t / lean:.2f}x", flush=True)


if __name__ == "__main__":
    main()
