"""Results keep experiments apart: a run and its copy are one run (a warning names both), runs on other data,
for other epochs or under another protocol are never averaged, n counts distinct seeds, and corrupt or
foreign run folders are left out with a reason, never a traceback; a run's replaced-<time>/ is never read."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from fake_runs import make_run
from helpers import ROOT

from normexp.analysis import results, runfiles


def plot_sweep(*args: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "plot_sweep.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def mark(run_dir: Path, files: str) -> None:
    """A marker as normexp.train writes it, with data files named ``files``."""
    cfg = json.loads((run_dir / runfiles.SUMMARY).read_text())["config"]

    marker = {"format": 1, "config": runfiles.result_settings(cfg),
              "data": {"train-images-idx3-ubyte": {"bytes": 1, "sha256": files}}}
    (run_dir / runfiles.MARKER).write_text(json.dumps(marker))


def test_a_sweep_and_its_copy_are_one_run_each_and_n_counts_seeds(tmp_path):
    a, b = tmp_path / "sweep", tmp_path / "copy"
    for seed, errors in ((0, (0.2, 0.1)), (1, (0.3, 0.2))):
        mark(make_run(a, "gn", 8, seed, errors), "x")
    shutil.copytree(a, b)
    skipped: list[str] = []
    df = results.load([a, b], skipped)
    used = results.runs(df)["run_dir"].map(lambda d: Path(d).parent)
    assert len(used) == 2 and set(used) == {a}  # the first folder given
    assert sorted(skipped) == [
        f"{b / job}: the same run as {a / job} (every result-relevant setting, the seed, the data and the "
        f"epochs): left out as a duplicate; {a / job} is used"
        for job in sorted(p.name for p in a.iterdir())]
    table = results.summary_table(df)
    assert table["runs"].tolist() == [2] and table["seeds"].tolist() == [2]
    assert "(n=2)" in results.summary_markdown(table)

    proc = plot_sweep(a, b, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert sum("left out as a duplicate" in line for line in proc.stderr.splitlines()) == 2
    assert "0.1500 ± 0.0707 (n=2)" in (tmp_path / "out" / "summary.md").read_text()
    print(proc.stderr)


def test_other_data_other_epochs_and_another_protocol_are_never_averaged(tmp_path):
    s = tmp_path / "sweep"
    mark(make_run(s / "a", "gn", 8, 0, (0.2, 0.1)), "x")
    mark(make_run(s / "other_data", "gn", 8, 0, (0.3, 0.3)), "y")
    mark(make_run(s / "more_epochs", "gn", 8, 0, (0.2, 0.1, 0.05), extra=("train.epochs=3",)), "x")
    mark(make_run(s / "code", "gn", 8, 0, (0.4, 0.4), extra=("optim.scaling=none", "optim.factors=autonn")),
         "x")
    skipped: list[str] = []
    df = results.load([s], skipped)
    runs = results.runs(df)
    assert skipped == [] and len(runs) == 4 and runs["variant"].nunique() == 4, runs["variant"].tolist()
    table = results.summary_table(df)
    assert table["runs"].tolist() == [1, 1, 1, 1]
    assert any("train.epochs=3" in v for v in runs["variant"])
    assert any("data.files=" in v for v in runs["variant"])


def test_corrupt_and_foreign_runs_are_left_out_with_a_reason(tmp_path):
    s = tmp_path / "sweep"
    make_run(s, "gn", 8, 0, (0.2, 0.1))
    listed = make_run(s, "gn", 8, 1, (0.2, 0.1))
    (listed / runfiles.SUMMARY).write_text("[1]")
    shape = make_run(s, "gn", 8, 2, (0.2, 0.1))
    (shape / runfiles.METRICS).write_text("step,accuracy\n1,0.5\n")
    words = make_run(s, "gn", 8, 3, (0.2, 0.1))
    (words / runfiles.METRICS).write_text((words / runfiles.METRICS).read_text().replace("0.1,", "high,", 1))
    aside = make_run(s, "gn", 8, 4, (0.2, 0.1))
    (aside / "replaced-2026-01-01_00-00-00-000000").mkdir()
    shutil.copy(aside / runfiles.SUMMARY, aside / "replaced-2026-01-01_00-00-00-000000" / runfiles.SUMMARY)
    proc = plot_sweep(s)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert f"plot_sweep: {listed}: unreadable, left out (ValueError: summary.json: a JSON list, not " \
           "normexp's summary)" in lines
    assert f"plot_sweep: {shape}: unreadable, left out (ValueError: metrics.csv has the columns step, " \
           "accuracy: not normexp's (no epoch, train_loss, train_error, val_loss, val_error))" in lines
    assert f"plot_sweep: {words}: unreadable, left out (ValueError: metrics.csv, column train_error: " \
           "Unable to parse string 'high' at position 1)" in lines
    assert len(lines) == 3, lines  # replaced-*/ is not a run of its own
    assert "(n=2)" in (s / "summary.md").read_text()
    print(proc.stderr)
