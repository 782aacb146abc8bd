"""scripts/ship_sweep.py, and the results the project ships under outputs/writeup/: they hold no machine
paths, and they load and plot from a fresh clone with no data and no training."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fake_runs import make_run
from helpers import ROOT, run_cli

from normexp.analysis import plots, results, runfiles

SHIP = ROOT / "scripts" / "ship_sweep.py"
SHIPPED = ROOT / "outputs" / "writeup"


def ship(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SHIP), *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def strings(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
    elif isinstance(value, str):
        yield value


def machine_paths(folder: Path) -> list[str]:
    """Every string in the JSON and YAML files under ``folder`` that is an absolute path, a file URL or a
    path that leads up and out of the folder it ran from."""
    found = []
    for path in folder.rglob("*"):
        if path.suffix in (".json", ".yaml"):
            text = path.read_text()
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
            found += [f"{path}: {s}" for s in strings(data) if s.startswith(("/", "../")) or "file:///" in s
                      or "=/" in s or "=../" in s]
    return found


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Runs that read their data from an absolute path and ran from ``tmp_path``/repo into a sweep folder
    named by its absolute path outside it: one completed, one diverged, one still running; each with a
    checkpoint and a log that must not ship."""
    s, data, cwd = tmp_path / "sweep", tmp_path / "machine" / "mnist-complete", tmp_path / "repo"
    for norm, status in (("gn", "completed"), ("bn", "diverged"), ("brn", "unfinished")):
        run = make_run(s, norm, 4, val_errors=(0.1, 0.05), status=status, diverged_epoch=2, epochs=2,
                       extra=(f"data.root={data}",), train_digits=60000,
                       folder=f"batch_size=4,norm={norm},train.seed=0")
        hydra = {"hydra": {"sweep": {"dir": str(s)},
                           "runtime": {"cwd": str(cwd), "output_dir": str(run),
                                       "config_sources": [{"path": f"file://{cwd}/conf"}]},
                           "overrides": {"task": [f"data.root={data}"]}}}
        (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"norm={norm}", f"data.root={data}"]))
        (run / runfiles.CHECKPOINT).write_bytes(b"weights")
        (run / "train.log").write_text(f"training -> {run}\n")
    # the sweep's command names the data folder another way than its runs did (they trained elsewhere)
    given = "../machine/mnist-complete"
    (s / "multirun.yaml").write_text(yaml.safe_dump({
        "hydra": {"sweep": {"dir": str(s)}, "runtime": {"cwd": str(cwd)},
                  "overrides": {"task": [f"data.root={given}"]}},
        "data": {"root": given}}))
    return s


def test_ended_runs_ship_without_checkpoints_logs_or_machine_paths(sweep, tmp_path):
    dest = tmp_path / "shipped"
    proc = ship(sweep, dest)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"shipped": 2, "left_out": 1, "to": str(dest)}
    assert proc.stderr.count("\n") == 1 and "norm=brn" in proc.stderr
    assert "running, not shipped" in proc.stderr
    runs = sorted(p.name for p in dest.iterdir() if p.is_dir())
    assert runs == [f"batch_size=4,norm={n},train.seed=0" for n in ("bn", "gn")]
    assert not list(dest.rglob(runfiles.CHECKPOINT)) and not list(dest.rglob("train.log"))
    shipped_files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert sum(f.endswith(runfiles.MARKER) for f in shipped_files) == 2 and "multirun.yaml" in shipped_files
    assert not any(str(tmp_path) in p.read_text() for p in dest.rglob("*") if p.is_file())
    assert machine_paths(dest) == []
    summary = json.loads(next(dest.glob("*norm=gn*")).joinpath(runfiles.SUMMARY).read_text())
    assert summary["config"]["data"]["root"] == "mnist-complete"
    hydra = yaml.safe_load(next(dest.glob("*norm=gn*")).joinpath(".hydra", "hydra.yaml").read_text())
    assert hydra["hydra"]["runtime"]["cwd"] == "." and hydra["hydra"]["overrides"]["task"] == [
        "data.root=mnist-complete"]
    assert hydra["hydra"]["sweep"]["dir"] == "sweep"
    assert hydra["hydra"]["runtime"]["output_dir"] == "sweep/batch_size=4,norm=gn,train.seed=0"
    record = yaml.safe_load((dest / "multirun.yaml").read_text())
    assert record["data"]["root"] == "mnist-complete"
    assert record["hydra"]["overrides"]["task"] == ["data.root=mnist-complete"]
    before = results.runs(results.load([sweep])).set_index("norm")
    after = results.runs(results.load([dest])).set_index("norm")
    assert after.loc["gn", "final_val_error"] == before.loc["gn", "final_val_error"] == 0.05
    assert after.loc["bn", "status"] == "diverged" and after.loc["gn", "train_digits"] == 60000


def test_only_real_files_of_real_folders_ship_and_no_machine_path_is_left(sweep, tmp_path):
    gn, bn = (next(sweep.glob(f"*norm={n},*")) for n in ("gn", "bn"))
    hydra_file = gn / ".hydra" / "hydra.yaml"
    hydra = yaml.safe_load(hydra_file.read_text())
    checkout = tmp_path / "elsewhere" / "normexp"  # the sweep ran outside the checkout
    hydra["hydra"]["runtime"]["config_sources"] = [{"path": "hydra.conf", "schema": "pkg"},
                                                   {"path": str(checkout / "conf"), "schema": "file"}]
    hydra_file.write_text(yaml.safe_dump(hydra))
    (bn / runfiles.METRICS).unlink()
    (bn / runfiles.METRICS).symlink_to("/etc/passwd")
    outside = tmp_path / "outside"
    shutil.copytree(gn, outside / "batch_size=4,norm=none,train.seed=0")
    (sweep / "linked").symlink_to(outside)
    (sweep / "itself").symlink_to(sweep)
    odd = make_run(sweep, "none", 4, val_errors=(0.1,), extra=("data.root=/home/someone/mnist",),
                   folder="odd")  # a path no record of the run names: it cannot be scrubbed
    (odd / runfiles.MARKER).write_text(json.dumps({"note": "/home/someone/notes"}))
    dest = tmp_path / "shipped"
    proc = ship(sweep, dest)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"shipped": 1, "left_out": 5, "to": str(dest)}
    lines = proc.stderr.splitlines()
    for name, target in (("itself", sweep), ("linked", outside)):
        assert f"ship_sweep: {sweep / name}: a symbolic link to a folder (to {target}), not followed" in lines
    assert f"ship_sweep: {bn}: not shipped ({bn / runfiles.METRICS} is a symbolic link (to /etc/passwd): " \
           "only real files ship)" in lines
    assert f"ship_sweep: {odd}: not shipped ({odd / runfiles.MARKER} holds the machine path " \
           "'/home/someone/notes', which ship_sweep cannot name)" in lines
    assert sorted(p.name for p in dest.iterdir()) == [gn.name, "multirun.yaml"]
    shipped = yaml.safe_load((dest / gn.name / ".hydra" / "hydra.yaml").read_text())
    assert shipped["hydra"]["runtime"]["config_sources"][1]["path"] == "conf"
    assert "passwd" not in "".join(p.read_text() for p in dest.rglob("*") if p.is_file())
    assert machine_paths(dest) == []


@pytest.mark.parametrize("args, message", [
    (("{tmp}/nowhere", "{tmp}/out"), "sweep={tmp}/nowhere: no such folder"),
    (("{sweep}", "{sweep}/shipped"), "dest={sweep}/shipped: inside the sweep folder"),
])
def test_bad_input_is_one_line(sweep, tmp_path, args, message):
    proc = ship(*(a.format(tmp=tmp_path, sweep=sweep) for a in args))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("normexp: error: " + message.format(tmp=tmp_path, sweep=sweep))
    assert proc.stderr.count("\n") == 1


@pytest.mark.skipif(not SHIPPED.is_dir(), reason="no results shipped under outputs/writeup yet")
def test_the_shipped_results_hold_no_machine_paths_and_load_and_plot(tmp_path):
    assert machine_paths(SHIPPED) == []
    assert not list(SHIPPED.rglob(runfiles.CHECKPOINT)) and not list(SHIPPED.rglob("train.log"))
    df = results.load([SHIPPED])
    ran = results.runs(df)
    assert len(ran) and (ran["train_digits"] == 60000).all()
    assert ran["status"].isin(["completed", "diverged"]).all()
    written = plots.write_report(df, tmp_path, writeup_limits=True)
    assert {p.name for p in written} >= {"summary.png", "summary.md", "claims.md"}
    for summary in SHIPPED.rglob(runfiles.SUMMARY):
        entries = json.loads(summary.read_text())["provenance"]
        assert entries and all(e["commit"] and e["torch"] and e["cpu"] for e in entries), summary


def test_shipped_runs_copied_into_a_new_sweep_folder_are_not_run_again(tmp_path, tiny_mnist):
    """A study continued on a fresh machine: its shipped runs, copied into the sweep folder, count as done."""
    command = ["-m", "norm=gn", "batch_size=50", "train.epochs=1", f"data.root={tiny_mnist}",
               "data.download=false", "train.progress=false"]
    first = run_cli(*command, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert first.returncode == 0, first.stderr
    assert ship(tmp_path / "sweep", tmp_path / "shipped").returncode == 0
    shutil.copytree(tmp_path / "shipped", tmp_path / "fresh")
    again = run_cli(*command, f"hydra.sweep.dir={tmp_path / 'fresh'}")
    assert again.returncode == 0, again.stderr
    assert "already completed after 1 epochs, nothing to do" in again.stdout + again.stderr
    job = "batch_size=50,norm=gn"
    assert (tmp_path / "fresh" / job / runfiles.METRICS).read_text() == (
        tmp_path / "sweep" / job / runfiles.METRICS).read_text()
    assert not (tmp_path / "fresh" / job / runfiles.CHECKPOINT).exists()
