"""bench/bench_gpu.py runs where there is no GPU too: a smoke test at tiny size, so the script that measures the
engine on a GPU machine is known to work before it gets there."""

import json
import subprocess
import sys

from helpers import ROOT, step_model


def test_the_gpu_benchmark_runs_on_cpu_and_writes_every_figure(tmp_path):
    model = step_model(tmp_path / "m.onnx", scale=0.3)
    out = tmp_path / "figures.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--model", str(model), "--rows",
                             "32,64", "--device", "cpu", "--repeats", "1", "--chunks", "1", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (figures,) = json.loads(out.read_text())["models"].values()
    assert figures["engine_64"]["chars_per_s"] > 0 and figures["command_64"]["chars_per_s"] > 0
    assert figures["ceiling_64"] > 0 and sum(figures["profile"]["ort_node_us_share"].values()) > 0.5
    assert not [k for k, v in figures.items() if isinstance(v, dict) and "error" in v]
