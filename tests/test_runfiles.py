"""The run folder's files: atomic writes, and readers that never see a torn file while others write."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
import yaml
from helpers import ROOT, compose_config
from omegaconf import OmegaConf

from normexp.analysis import results, runfiles


def rows(n: int, writer: int) -> list[dict]:
    """``n`` epochs of metrics; each value tells which writer wrote it and how many rows it wrote."""
    return [{"epoch": e, "step": 10 * e, "lr": writer, "r_max": None, "d_max": None, "train_loss": n,
             "train_error": 0.5, "val_loss": n, "val_error": 0.25, "seconds": 1.5, "samples_per_s": 100.0}
            for e in range(1, n + 1)]


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "f.txt"
    runfiles.write_atomic(path, b"one")
    runfiles.write_atomic(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not mkstemp's private one


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    runfiles.write_atomic(path, b"old")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        runfiles.write_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_metrics_summary_and_checkpoint_round_trip(tmp_path):
    runfiles.write_metrics(tmp_path, rows(3, writer=1))
    df = pd.read_csv(tmp_path / runfiles.METRICS)
    assert tuple(df.columns) == runfiles.METRIC_COLUMNS
    assert df["epoch"].tolist() == [1, 2, 3] and df["step"].tolist() == [10, 20, 30]
    assert df["r_max"].isna().all()  # no renorm limits: empty cells

    assert runfiles.read_summary(tmp_path) is None and not runfiles.is_finished(tmp_path)
    for status, finished in (("interrupted", False), ("completed", True), ("diverged", True)):
        runfiles.write_summary(tmp_path, {"status": status, "epochs_run": 1, "best": float("nan")})
        assert runfiles.read_summary(tmp_path)["status"] == status
        assert runfiles.is_finished(tmp_path) is finished
    # a completed run asked for more epochs than it ran is not finished; a diverged one always is
    runfiles.write_summary(tmp_path, {"status": "completed", "epochs_run": 2})
    assert runfiles.is_finished(tmp_path, epochs=2) and not runfiles.is_finished(tmp_path, epochs=3)
    runfiles.write_summary(tmp_path, {"status": "diverged", "epochs_run": 0})
    assert runfiles.is_finished(tmp_path, epochs=30)

    assert runfiles.load_checkpoint(tmp_path) is None
    state = {"w": torch.arange(5.0), "epoch": 2, "rng": torch.get_rng_state()}
    runfiles.save_checkpoint(tmp_path, state)
    loaded = runfiles.load_checkpoint(tmp_path)
    assert torch.equal(loaded["w"], state["w"]) and loaded["epoch"] == 2
    assert torch.equal(loaded["rng"], state["rng"])


WRITER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from normexp.analysis import results, runfiles
from test_runfiles import rows
folder, writer, count = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
(folder / f"ready{{writer}}").touch()
while not (folder / "go").exists():
    time.sleep(0.005)
for i in range(count):
    n = 200 + 37 * ((i + writer) % 20)  # a different length every time: a torn file could not pass as whole
    runfiles.write_metrics(folder, rows(n, writer))
    runfiles.write_summary(folder, {{"status": "completed", "writer": writer, "epochs_run": n,
                                    "val_errors": [0.25] * n}})
"""


def test_concurrent_writers_never_leave_a_torn_csv_or_json(tmp_path):
    """Two processes rewrite metrics.csv and summary.json of one folder many times while this one reads them,
    as the plot script may read a sweep that is still running."""
    script = WRITER.format(tests=str(ROOT / "tests"))
    writers = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(w), "100"], cwd=ROOT)
               for w in (1, 2)]
    while not all((tmp_path / f"ready{w}").exists() for w in (1, 2)):
        assert all(p.poll() is None for p in writers), "a writer died before starting"
        time.sleep(0.01)
    (tmp_path / "go").touch()
    seen, reads = set(), 0
    while any(p.poll() is None for p in writers) or reads == 0:
        for name in (runfiles.METRICS, runfiles.SUMMARY):
            try:
                text = (tmp_path / name).read_text()
            except FileNotFoundError:
                continue
            if name == runfiles.METRICS:
                df = pd.read_csv(io.StringIO(text))
                n, writer = int(df["train_loss"].iloc[0]), int(df["lr"].iloc[0])
                assert tuple(df.columns) == runfiles.METRIC_COLUMNS
                assert df["epoch"].tolist() == list(range(1, n + 1)), "torn metrics.csv"
                assert (df["train_loss"] == n).all() and (df["lr"] == writer).all(), "mixed metrics.csv"
            else:
                summary = json.loads(text)
                n, writer = summary["epochs_run"], summary["writer"]
                assert len(summary["val_errors"]) == n, "torn summary.json"
            seen.add(writer)
            reads += 1
    assert [p.wait() for p in writers] == [0, 0]
    assert seen == {1, 2}  # both writers' files were read: the test saw them race
    assert reads > 20
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["go", "metrics.csv", "ready1", "ready2", "summary.json"]  # no temporary files


@pytest.mark.parametrize("summary, problem", [
    ([1], "a JSON list, not normexp's summary"),
    ({"status": "done", "epochs_run": 1},
     "status is 'done'; allowed: running, completed, diverged, interrupted, failed"),
    ({"status": "completed"}, "no epochs_run"),
    ({"status": "completed", "epochs_run": "two"}, "epochs_run is 'two'; allowed: an integer"),
    ({"status": "completed", "epochs_run": True}, "epochs_run is True; allowed: an integer"),
    ({"status": "completed", "epochs_run": 2, "final_val_error": "low"},
     "final_val_error is 'low'; allowed: a number or null"),
])
def test_a_summary_readers_cannot_rely_on_names_its_field(tmp_path, summary, problem):
    (tmp_path / runfiles.SUMMARY).write_text(json.dumps(summary))
    with pytest.raises(ValueError) as err:
        runfiles.read_summary(tmp_path)
    assert str(err.value) == problem


def test_links_out_of_the_folder_are_refused_links_within_it_are_not(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (tmp_path / "elsewhere.json").write_text("{}")
    (run_dir / "real.json").write_text("{}")
    (run_dir / runfiles.SUMMARY).symlink_to(tmp_path / "elsewhere.json")
    (run_dir / runfiles.MARKER).symlink_to(run_dir / "real.json")
    with pytest.raises(runfiles.LinkOut, match="a symbolic link to .*elsewhere.json, outside"):
        runfiles.read_summary(run_dir)
    assert runfiles.inside(run_dir, runfiles.MARKER) == run_dir / runfiles.MARKER
    assert isinstance(runfiles.LinkOut("x"), OSError)  # readers of results skip such a run with one line
    (tmp_path / "outside").mkdir()
    (run_dir / "linked").symlink_to(tmp_path / "outside")
    (run_dir / "real").mkdir()
    assert runfiles.subfolders(run_dir) == [run_dir / "real"]


def test_a_checkpoint_that_would_run_code_is_refused_unrun(tmp_path):
    proof = tmp_path / "proof"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {proof}",))

    crafted = {"epoch": 1, "model": {"w": torch.ones(2)}, "extra": [Payload()]}
    torch.save(crafted, tmp_path / runfiles.CHECKPOINT)
    with pytest.raises(runfiles.NotACheckpoint, match="never unpickles: Trying to load unsupported GLOBAL"):
        runfiles.load_checkpoint(tmp_path)
    assert not proof.exists()
    (tmp_path / runfiles.CHECKPOINT).write_bytes(b"garbage")
    with pytest.raises(pickle.UnpicklingError) as err:
        runfiles.load_checkpoint(tmp_path)
    assert "weights_only" not in str(err.value)


def test_the_yaml_folder_names_leave_out_exactly_the_keys_that_change_no_result():
    config = yaml.safe_load((ROOT / "conf" / "config.yaml").read_text())
    excluded = config["hydra"]["job"]["config"]["override_dirname"]["exclude_keys"]
    named = set(runfiles.NOT_RESULT_KEYS) - set(excluded)
    assert named == set(runfiles.NAMED_IN_FOLDERS)
    others = set(excluded) - set(runfiles.NOT_RESULT_KEYS)
    logger = {k for k in excluded if k.startswith(runfiles.NOT_RESULT_PREFIXES)}
    assert others == {"experiment", "logger"} | logger


def test_keys_that_change_no_result_make_no_variant():
    def config(*overrides: str) -> dict:
        return OmegaConf.to_container(compose_config(["norm=gn", "batch_size=4", *overrides]), resolve=True)

    base, groups = config(), config("norm.groups=5")
    packed = config("train.pack_size=3", "train.threads=2", "data.root=elsewhere")
    names = results.variants({"a": base, "b": packed, "c": groups})
    assert names["a"] == names["b"] != names["c"]
    assert runfiles.result_settings(base) == runfiles.result_settings(packed)
