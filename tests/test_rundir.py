"""Nothing a user does deletes what charlm did not make: the run marker, --overwrite, and recovery after a kill."""

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import as_cli, assert_usage_error, run_cli

from toolkit.config import TrainConfig
from toolkit.files import UsageError
from toolkit.rundir import MARKER, check_out, clear_strays, commit
from toolkit.train import train


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fake_run(path: Path, **files: str) -> Path:
    """A directory that looks like a finished run to the checks (they read no checkpoint)."""
    path.mkdir(parents=True)
    (path / MARKER).write_text(json.dumps({"toolkit": "charlm", "format": 1}))
    for name in ("config.json", "vocab.json", "history.csv", "last.keras", "best.keras"):
        (path / name).write_text(name)
    for name, text in files.items():
        (path / name.replace("__", ".")).write_text(text)
    return path


def not_a_run(path: Path) -> Path:
    """What used to be deleted by --overwrite: a folder that merely holds a config.json."""
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"my": "settings"}')
    (path / "thesis.tex").write_text("years of work")
    return path


def data_inside_run(path: Path) -> Path:
    return fake_run(path, data__csv='"1","A title","A description"\n')


def folder_inside_run(path: Path) -> Path:
    run = fake_run(path)
    (run / "samples").mkdir()
    (run / "samples" / "samples.csv").write_text("sample_id\n")
    return run


def a_file(path: Path) -> Path:
    path.write_text("not a directory")
    return path


def dangling_link(path: Path) -> Path:
    path.symlink_to(path.parent / "gone")
    return path


def under_a_file(path: Path) -> Path:
    a_file(path.parent / "blocker")
    return path.parent / "blocker" / "run"


REFUSED = [  # (how --out is made, flags, words of the error)
    (not_a_run, ["--overwrite"], ["holds no charlm run"]),
    (not_a_run, [], ["holds no charlm run"]),
    (data_inside_run, ["--overwrite"], ["did not make", "data.csv"]),
    (folder_inside_run, ["--overwrite"], ["did not make", "samples/"]),
    (fake_run, [], ["already holds a run", "--overwrite"]),
    (not_a_run, ["--resume"], ["not a charlm run"]),
    (fake_run, ["--resume", "--overwrite"], ["exclude each other"]),
    (a_file, ["--overwrite"], ["is a file"]),
    (dangling_link, [], ["broken symbolic link"]),
    (under_a_file, [], ["blocker is a file"]),
]


@pytest.mark.parametrize("make, flags, words", REFUSED, ids=lambda x: getattr(x, "__name__", None))
def test_the_cli_and_the_library_refuse_the_same_outs_and_touch_nothing(make, flags, words, tmp_path):
    """Refused before any data is read (the data file does not even exist), word for word alike."""
    out = make(tmp_path / "run")
    before = snapshot(tmp_path)
    missing = tmp_path / "missing.csv"
    result = run_cli("train", "--data", missing, "--out", out, "--units", "8", *flags)
    assert_usage_error(result, *words)
    assert snapshot(tmp_path) == before
    with pytest.raises(UsageError) as e:
        train(TrainConfig(data=str(missing), units=8), out, resume="--resume" in flags,
              overwrite="--overwrite" in flags, verbose=0)
    assert as_cli(e.value) == result.stderr.strip().splitlines()[-1]  # word for word what the CLI says
    assert snapshot(tmp_path) == before


def test_a_bad_flag_with_overwrite_leaves_the_old_run_intact(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = snapshot(run)
    for flags in (["--units", "0"], ["--dropout", "1"], ["--data", tmp_path / "missing.csv"], ["--cell", "rnn"]):
        assert_usage_error(run_cli("train", "--out", run, "--overwrite", *flags))
        assert snapshot(run) == before
    with pytest.raises(UsageError, match="does not exist"):
        train(TrainConfig(data=str(tmp_path / "missing.csv")), run, overwrite=True)
    assert snapshot(run) == before and sorted(os.listdir(tmp_path)) == ["run"]


def test_a_data_file_inside_out_survives_and_the_new_run_goes_elsewhere(tmp_path, small_csv):
    out = tmp_path / "mine"
    out.mkdir()
    shutil.copyfile(small_csv, out / "data.csv")
    result = run_cli("train", "--data", out / "data.csv", "--out", out, "--overwrite", "--units", "8")
    assert_usage_error(result, "holds no charlm run")
    assert (out / "data.csv").read_bytes() == small_csv.read_bytes() and os.listdir(out) == ["data.csv"]


def test_an_empty_out_that_fills_up_during_the_first_epoch_is_not_replaced(tmp_path, small_csv, monkeypatch):
    import toolkit.train

    out = tmp_path / "run"
    out.mkdir()

    class UserWrites(toolkit.train.EpochSamples):
        def on_train_batch_begin(self, batch, logs=None):
            (out / "notes.txt").write_text("written while the run trained")

    monkeypatch.setattr(toolkit.train, "EpochSamples", UserWrites)
    with pytest.raises(UsageError, match="no longer empty"):
        train(TrainConfig(data=str(small_csv), units=8, embedding_dim=4, epochs=1, seq_len=32), out, verbose=0)
    assert os.listdir(out) == ["notes.txt"] and os.listdir(tmp_path) == ["run"]


def test_a_read_only_out_is_one_line(tmp_path, small_csv, monkeypatch):
    """As a user (not root, whom permissions do not stop) meets it: the library's check says which directory."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    for out in (locked / "run", locked):
        with pytest.raises(UsageError, match=f"not writable.*{locked}|{locked}.*not writable"):
            check_out(out, resume=False, overwrite=False)
    with pytest.raises(UsageError, match="not writable"):
        train(TrainConfig(data=str(small_csv)), locked / "run")
    assert os.listdir(locked) == []


# --- recovery after a kill -----------------------------------------------------------------------------------------

DEAD = 4_194_304 + 1  # above Linux's largest pid: no process has it


def test_a_swap_killed_between_its_renames_is_undone_on_the_next_start(tmp_path):
    old = fake_run(tmp_path / f".run.old-{DEAD}")
    before = snapshot(old)
    fake_run(tmp_path / f".run.new-{DEAD}-abc")  # the new run, never swapped in
    half = tmp_path / f".run.new-{DEAD}-def"  # killed before even its marker
    half.mkdir()
    (half / ".charlm-run.x1.tmp.json").write_text("{")
    assert check_out(tmp_path / "run", resume=False, overwrite=True) == tmp_path / "run"
    assert sorted(os.listdir(tmp_path)) == ["run"] and snapshot(tmp_path / "run") == before


def test_siblings_of_live_processes_and_of_users_are_left_alone(tmp_path):
    live = fake_run(tmp_path / f".run.new-{os.getpid()}-abc")
    users = tmp_path / f".run.new-{DEAD}-mine"
    users.mkdir()
    (users / "data.csv").write_text("precious")
    check_out(tmp_path / "run", resume=False, overwrite=False)
    assert live.is_dir() and (users / "data.csv").read_text() == "precious"


def test_an_epoch_journal_is_completed_and_half_written_files_are_cleared(tmp_path):
    run = fake_run(tmp_path / "run")
    (run / ".pending.last.keras").write_text("epoch 2")
    (run / ".pending.history.csv").write_text("rows 1-2")
    (run / ".commit.json").write_text(json.dumps({"last.keras": ".pending.last.keras",
                                                  "history.csv": ".pending.history.csv"}))
    (run / ".config.abc.tmp.json").write_text("half")
    clear_strays(run)
    assert (run / "last.keras").read_text() == "epoch 2" and (run / "history.csv").read_text() == "rows 1-2"
    assert (run / "best.keras").read_text() == "best.keras"  # not in this epoch's commit: unchanged
    assert not [p for p in os.listdir(run) if p.startswith(".")]


def test_pending_files_without_a_journal_are_dropped_and_the_epoch_before_stays(tmp_path):
    run = fake_run(tmp_path / "run")
    (run / ".pending.last.keras").write_text("half of epoch 2")
    clear_strays(run)
    assert (run / "last.keras").read_text() == "last.keras" and not (run / ".pending.last.keras").exists()
    commit(run, {"last.keras": ".pending.x"})  # a journal naming a file already renamed: nothing to do
    assert (run / "last.keras").read_text() == "last.keras" and not (run / ".commit.json").exists()


def test_a_second_train_on_a_run_being_written_is_refused(tmp_path):
    from toolkit.files import unlock
    from toolkit.rundir import lock_run

    run = fake_run(tmp_path / "run")
    held = lock_run(run)
    try:
        with pytest.raises(UsageError, match="another `train` is writing"):
            check_out(run, resume=True, overwrite=False)
        with pytest.raises(UsageError, match="another `train` is writing"):
            check_out(run, resume=False, overwrite=True)
    finally:
        unlock(held)
    check_out(run, resume=True, overwrite=False)


def test_the_library_refuses_a_resume_that_contradicts_the_run_as_the_cli_does(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = snapshot(run)
    result = run_cli("train", "--out", run, "--resume", "--units", "64")
    assert_usage_error(result, "--units 64", "contradicts")
    config = TrainConfig.from_dict(json.loads((run / "config.json").read_text())["config"])
    with pytest.raises(UsageError) as e:
        train(config.replace(units=64), run, resume=True, verbose=0)
    assert as_cli(e.value) == result.stderr.strip().splitlines()[-1]
    assert snapshot(run) == before
