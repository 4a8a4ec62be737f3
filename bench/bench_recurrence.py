"""The recurrent layer alone, forward and backward on one fixed-shape batch: the candidates for the CPU training loop.

Variants (each in a fresh process, since TensorFlow's thread settings are per process; rounds alternate and each
variant's best counts):

- keras: Keras' LSTM layer (its generic per-timestep loop), with TensorFlow's default threads (both cores per op);
- keras-1x2: the same with one thread per op and two ops side by side;
- keras-xla: Keras' layer compiled with XLA (`jit_compile`) at this fixed shape, default threads;
- keras-unroll: Keras' layer unrolled over the fixed length, default threads;
- lean: the lean loop (toolkit.model) as one chain, one thread per op;
- lean-chains: the lean loop, the batch split into one single-threaded chain per core (what training runs);
- lean-xla: the lean loop compiled with XLA, one chain, default threads per op.

    python bench/bench_recurrence.py --batch 64 --steps 64 --units 256
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = ("keras", "keras-1x2", "keras-xla", "keras-unroll", "lean", "lean-chains", "lean-xla")


def measure(variant: str, batch: int, steps: int, units: int, inputs: int, repeats: int) -> float:
    """Best seconds of one forward and backward pass through the layer, after tracing (and compiling)."""
    cores = str(os.cpu_count() or 1)
    threads = {"keras-1x2": ("1", cores), "lean": ("1", "1"), "lean-chains": ("1", cores), "lean-xla": ("0", "1")}
    os.environ["TF_NUM_INTRAOP_THREADS"], os.environ["TF_NUM_INTEROP_THREADS"] = threads.get(variant, ("0", "0"))
    import keras
    import tensorflow as tf

    from toolkit.model import LSTM

    kind = keras.layers.LSTM if variant.startswith("keras") else LSTM
    layer = kind(units, return_sequences=True, unroll=variant == "keras-unroll")
    x = tf.random.stateless_normal((batch, steps, inputs), seed=(0, 0))
    layer(x)

    def pass_(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(layer(x, training=True)))
        return tape.gradient(loss, [x, *layer.trainable_weights])

    run = tf.function(pass_, jit_compile=variant.endswith("xla"))
    run(x)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        [g.numpy() for g in run(x)]
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--units", type=int, default=256)
    parser.add_argument("--inputs", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: measure one variant in this process
    args = parser.parse_args()
    shape = dict(batch=args.batch, steps=args.steps, units=args.units, inputs=args.inputs)
    if args.variant:
        print(json.dumps(measure(args.variant, **shape, repeats=args.repeats)))
        return
    best: dict[str, float] = {}
    for r in range(args.rounds):
        for variant in args.variants.split(","):
            cmd = [sys.executable, __file__, "--variant", variant, "--repeats", str(args.repeats),
                   *(f"--{k}={v}" for k, v in shape.items())]
            seconds = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()[-1])
            best[variant] = min(best.get(variant, seconds), seconds)
            print(f"round {r + 1} {variant:13s} {seconds * 1e3:8.1f} ms", flush=True)
    base = best.get("keras")
    print(f"\nLSTM({args.units}), batch {args.batch}, {args.steps} steps, {args.inputs} inputs; forward and backward")
    for variant, seconds in best.items():
        ratio = f"  {base / seconds:5.2f}x keras" if base else ""
        print(f"{variant:13s} {seconds * 1e3:8.1f} ms  {args.batch * args.steps / seconds:10,.0f} chars/s{ratio}")


if __name__ == "__main__":
    main()
