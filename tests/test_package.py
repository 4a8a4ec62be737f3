"""The package as a user gets it: sdist -> wheel -> a fresh virtual environment -> the `charlm` console script.

Nothing is downloaded: the wheel is built with the setuptools installed here (no build isolation; the dev extra
brings it), installed with --no-deps, and the fresh environment sees the dependencies installed here through a .pth
file that lists this process's import path without the repository (the editable install's finder stays out too:
a folder named in a .pth file does not have its own .pth files run). Its own site-packages comes first, so every
module of ours is the wheel's, which the first test checks.
"""

from __future__ import annotations

import csv
import fnmatch
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import venv
from pathlib import Path

import pytest
from helpers import ROOT

from toolkit.data import read_rows

pytestmark = pytest.mark.slow


def run(*cmd: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    result = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, cwd=cwd, timeout=timeout,
                            env={**env, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONNOUSERSITE": "1"})
    assert result.returncode == 0, (cmd, result.stdout[-3000:], result.stderr[-3000:])
    return result


def build_leftovers(folder: str, names: list[str]) -> set[str]:
    """What a fresh clone lacks: a stale *.egg-info/SOURCES.txt, say, would put undeclared files in the sdist."""
    skip = {".*", "*.egg-info", "build", "dist", "runs", "reports", "__pycache__"}
    return {n for n in names if any(fnmatch.fnmatch(n, p) for p in skip) or (Path(folder, n, "pyvenv.cfg")).exists()}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel, built from the sdist, installed in it; returns its bin/."""
    tmp = tmp_path_factory.mktemp("package")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=build_leftovers)
    run(sys.executable, "-c", f"import setuptools.build_meta as b; b.build_sdist({str(tmp)!r})", cwd=source)
    (sdist,) = tmp.glob("charlm-*.tar.gz")
    with tarfile.open(sdist) as tar:
        assert any(name.endswith("toolkit/corpora/ag_news_test.csv.xz") for name in tar.getnames())
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
        "--wheel-dir", tmp / "dist", sdist, cwd=tmp)  # a wheel built from the sdist: the sdist must be whole
    (wheel,) = (tmp / "dist").glob("charlm-*.whl")
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    run(bin_dir / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp)
    site = Path(run(bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                    cwd=tmp).stdout.strip())
    source_dirs = {ROOT, ROOT / "tests"}  # where the source tree is importable from; a .venv inside ROOT is fine
    deps = [p for p in sys.path if p and Path(p).is_dir() and Path(p).resolve() not in source_dirs]
    (site / "_charlm_test_dependencies.pth").write_text("".join(f"{p}\n" for p in deps), encoding="utf-8")
    return bin_dir


def test_installed_modules_and_bundled_data_come_from_the_wheel(installed, tmp_path):
    code = ("import cli, eval.report, exporters.onnx, toolkit.data; from toolkit.data import read_rows; "
            "print(cli.__file__, eval.report.__file__, exporters.onnx.__file__, toolkit.data.__file__); "
            "print(len(read_rows('ag_news:test')[0]))")
    files, rows = run(installed / "python", "-c", code, cwd=tmp_path).stdout.split("\n")[:2]
    env_dir = installed.parent.resolve()
    for file in files.split():
        assert Path(file).resolve().is_relative_to(env_dir) and not Path(file).resolve().is_relative_to(ROOT), file
    assert int(rows) == len(read_rows("ag_news:test")[0])


def test_installed_console_script_runs_the_pipeline(installed, tmp_path):
    """Tiny: 300 bundled titles, as a .txt.xz, so the installed reader decompresses too; one epoch, 16 units."""
    titles = [r.title for r in read_rows("ag_news:test")[0][:300]]
    (tmp_path / "titles.txt.xz").write_bytes(lzma.compress("\n".join(titles).encode("utf-8")))
    result = run(installed / "charlm", "pipeline", "--data", "titles.txt.xz", "--name", "tiny", "--epochs", "1",
                 "--units", "16", "--embedding-dim", "8", "--n", "20", "--temps", "0.5,1.0", "--device", "cpu",
                 cwd=tmp_path)
    assert [line[:5] for line in result.stdout.splitlines() if line.startswith("[")] == [
        "[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    for path in ("runs/tiny/model.onnx", "reports/tiny/samples.csv", "reports/tiny/metrics.csv",
                 "reports/tiny/report.html"):
        assert (tmp_path / path).is_file(), path
    with open(tmp_path / "reports/tiny/samples.csv", newline="", encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == 2 * 20
