"""normexp.analysis.status: every kind of job of a sweep read from fake folders (pending, running, stalled,
completed, diverged, interrupted, failed, unreadable, half-made), the ETA arithmetic, and the command on a
real sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_runs import make_run
from helpers import ROOT, compose_config, run_cli
from omegaconf import OmegaConf

from normexp.analysis import runfiles, status
from normexp.analysis.status import Job, Sweep

NOW = 2_000_000_000.0  # the clock of these tests (file times are set relative to it)
JOBLIB = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}


def make_sweep(path: Path, params: dict[str, str], task: tuple[str, ...] = (), launcher: dict | None = None):
    """A sweep folder with its multirun.yaml, as Hydra's basic sweeper writes it at the start."""
    cfg = OmegaConf.to_container(compose_config(list(task), hydra=True), resolve=False)
    cfg["hydra"]["sweeper"]["params"], cfg["hydra"]["overrides"]["task"] = params, list(task)
    if launcher is not None:
        cfg["hydra"]["launcher"] = launcher
    path.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(cfg), path / "multirun.yaml")
    return path


def age(run_dir: Path, seconds: float) -> None:
    """Makes everything in the run folder last written ``seconds`` before NOW."""
    for p in [run_dir, *run_dir.rglob("*")]:
        os.utime(p, (NOW - seconds, NOW - seconds))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """12 jobs: none, bn, brn, gn x batch size 8, 4, 2; the bs-2 jobs not started."""
    s = make_sweep(tmp_path / "sweep", {"norm": "none,bn,brn,gn", "batch_size": "8,4,2", "train.seed": "0"},
                   ("train.epochs=3",), JOBLIB)
    runs = {
        "none-8": make_run(s, "none", 8, val_errors=(0.3, 0.2, 0.1)),
        "none-4": make_run(s, "none", 4, val_errors=(), status="diverged", diverged_epoch=1, epochs=3),
        "bn-8": make_run(s, "bn", 8, val_errors=(0.3,), status="unfinished", epochs=3),
        "bn-4": make_run(s, "bn", 4, val_errors=(0.4,), status="interrupted", epochs=3),
        "brn-8": make_run(s, "brn", 8, val_errors=(0.3,), status="unfinished", epochs=3),
        "brn-4": make_run(s, "brn", 4, val_errors=(0.5,), status="unfinished", epochs=3),
        "gn-8": make_run(s, "gn", 8, val_errors=(0.2,), status="unfinished", epochs=3),
    }
    (runs["brn-4"] / "train.log").write_text(
        "[2026-01-01 10:00:00,000][normexp][INFO] - epoch 1/3 train loss 1.0\n"
        "[2026-01-01 10:00:01,000][normexp][ERROR] - failed: RuntimeError: out of memory\n"
        "Traceback (most recent call last):\n  ...\n")
    (runs["gn-8"] / runfiles.SUMMARY).write_text('{"status": "running", "epochs_ru')  # a corrupt file
    half = s / "batch_size=4,norm=gn,train.seed=0"
    (half / ".hydra").mkdir(parents=True)  # Hydra made the folder; the run has not written yet
    for run_dir in runs.values():
        age(run_dir, 10.0)
    age(runs["brn-8"], 3600.0)  # silent for an hour
    age(half, 5.0)
    return s


def test_every_kind_of_job_is_shown_as_what_it_is(sweep):
    result = status.read_sweep(sweep, now=NOW)
    by = {(j.norm, j.batch_size): j for j in result.jobs}
    longest_first = [("none", 2), ("bn", 2), ("brn", 2)]
    assert [(j.norm, j.batch_size) for j in result.jobs][:3] == longest_first
    assert len(result.jobs) == 12 and all(j.planned for j in result.jobs)
    assert {k: j.status for k, j in by.items()} == {
        ("none", 8): "completed", ("none", 4): "diverged", ("none", 2): "pending",
        ("bn", 8): "running", ("bn", 4): "interrupted", ("bn", 2): "pending",
        ("brn", 8): "stalled", ("brn", 4): "failed", ("brn", 2): "pending",
        ("gn", 8): "unreadable", ("gn", 4): "running", ("gn", 2): "pending",
    }
    assert result.counts() == {"pending": 4, "running": 2, "stalled": 1, "completed": 1, "diverged": 1,
                               "interrupted": 1, "failed": 1, "unreadable": 1}
    running = by[("bn", 8)]
    assert (running.epochs_run, running.epochs, running.val_error) == (1, 3, 0.3)
    assert running.samples_per_s == 100.0
    assert running.age_s == pytest.approx(10.0) and running.seed == 0
    assert by[("none", 8)].epochs_run == 3 and by[("none", 2)].epochs == 3
    assert "JSONDecodeError" in by[("gn", 8)].note and by[("gn", 8)].note.startswith("summary.json")
    assert by[("brn", 4)].note == "failed: RuntimeError: out of memory"
    assert "killed or hung" in by[("brn", 8)].note
    assert by[("gn", 4)].note == "setting up: no summary.json yet" and by[("gn", 4)].epochs_run == 0
    counts = "4 pending, 2 running, 1 stalled, 1 completed, 1 diverged, 1 interrupted, 1 failed, 1 unreadable"
    assert counts in status.render(result)
    assert json.loads(json.dumps(status.as_json(result)))["counts"]["pending"] == 4


def test_a_job_dispatched_after_a_stop_signal_is_pending_not_running(sweep):
    never = sweep / "batch_size=2,norm=gn,train.seed=0"  # only Hydra's files and an empty log
    (never / ".hydra").mkdir(parents=True)
    (never / ".hydra" / "config.yaml").write_text("{}\n")
    (never / "train.log").write_text("")
    age(never, 3600.0)
    (never / ".normexp.lock").write_text("123 host\n")  # the resumed sweep's start-up check just looked at it
    os.utime(never / ".normexp.lock", (NOW - 1, NOW - 1))
    by = {(j.norm, j.batch_size): j for j in status.read_sweep(sweep, now=NOW).jobs}
    never_job = by[("gn", 2)]
    assert (never_job.status, never_job.note) == ("pending", "dispatched after a stop signal, never started")
    assert by[("gn", 4)].status == "running"  # Hydra's folder of 5 s ago: a job setting up
    (never / "train.log").write_text("[2026-01-01 10:00:00,000][normexp][INFO] - gn, batch size 2\n")
    age(never, 3600.0)
    by = {(j.norm, j.batch_size): j for j in status.read_sweep(sweep, now=NOW).jobs}
    assert by[("gn", 2)].status != "pending"  # its log says it started


def test_the_eta_of_each_job_and_of_the_sweep(sweep):
    result = status.read_sweep(sweep, now=NOW)
    by = {(j.norm, j.batch_size): j for j in result.jobs}
    # every fake epoch took 1 s. Running: bn-8 has 2 epochs left and began its current one 10 s ago (past
    # its time): 0 s left; gn-4 has measured nothing: 3 epochs of the bs-4 runs' 1 s. The start-up is not
    # measured (the fake folders' times are not a real run's), so the pending bs-2 jobs (their nearest
    # measured batch size is 4) take 3 x 1 s each, on 2 slots, after the running ones
    assert result.slots == 2 and result.slots_how == "joblib n_jobs=2"
    assert by[("bn", 8)].eta_s == 0.0 and by[("gn", 4)].eta_s == 3.0
    assert [by[(n, 2)].eta_s for n in ("none", "bn", "brn", "gn")] == [3.0, 6.0, 6.0, 9.0]
    assert result.eta_s == 9.0
    for job in result.jobs:
        if job.status not in ("running", "pending"):
            assert job.eta_s is None


def test_an_interrupted_job_the_running_sweep_has_yet_to_reach_will_resume(tmp_path):
    s = make_sweep(tmp_path / "sweep", {"norm": "none,bn,gn", "batch_size": "8", "train.seed": "0"},
                   ("train.epochs=3",), JOBLIB | {"n_jobs": 1})
    runs = [make_run(s, "none", 8, val_errors=(0.4,), status="interrupted", epochs=3),  # passed: stays
            make_run(s, "bn", 8, val_errors=(0.3,), status="unfinished", epochs=3),  # running
            make_run(s, "gn", 8, val_errors=(0.4,), status="interrupted", epochs=3)]  # next: resumes
    for run_dir in runs:
        age(run_dir, 10.0)
    result = status.read_sweep(s, now=NOW)
    by = {j.norm: j for j in result.jobs}
    assert [j.status for j in result.jobs] == ["interrupted", "running", "interrupted"]
    assert by["gn"].resumes and by["gn"].note == "resumes from epoch 2 when the sweep reaches it"
    assert not by["none"].resumes and by["none"].eta_s is None
    # 1 s epochs: bn's current one began 10 s ago (0 s left), then gn's 2 epochs left
    assert by["gn"].eta_s == pytest.approx(2.0) and result.eta_s == pytest.approx(2.0)


def pack_sweep(path: Path, pack_size: int, ages: tuple[float, float, float]) -> Path:
    """A sweep of two jobs of train.seeds=[0,1,2] (gn and bn at batch size 4, 3 epochs, one at a time): gn's
    seeds running (seed 0 one epoch in, the others as ``pack_size`` has them), bn's pending."""
    s = make_sweep(path, {"norm": "gn,bn", "batch_size": "4"}, ("train.epochs=3", "train.seeds=[0,1,2]"))
    job = "batch_size=4,norm=gn,train.seeds=[0,1,2]"
    for seed, seed_age in zip((0, 1, 2), ages, strict=True):
        errors = (0.3,) if seed == 0 or pack_size == 3 else ()
        run = make_run(s, "gn", 4, seed, errors, status="unfinished", epochs=3, folder=f"{job}/seed={seed}",
                       pack_size=pack_size)
        age(run, seed_age)
    return s


def test_a_job_of_train_seeds_is_one_job_with_a_row_per_seed(tmp_path):
    result = status.read_sweep(pack_sweep(tmp_path / "packed", 3, (0.5, 0.5, 0.5)), now=NOW)
    job = "batch_size=4,norm=gn,train.seeds=[0,1,2]"
    assert [(j.name, j.seed, j.status) for j in result.jobs] == [
        *((f"{job}/seed={s}", s, "running") for s in (0, 1, 2)),
        *((f"batch_size=4,norm=bn,train.seeds=[0,1,2]/seed={s}", s, "pending") for s in (0, 1, 2))]
    assert [len(unit) for unit in result.units()] == [3, 3] and result.jobs[0].pack == job
    # packed: gn's seeds end together, 2 epochs of the pack's 1 s less the 0.5 s of this one; bn's job
    # (packed as gn's, the same batch size) takes the one slot after, 3 epochs of 1 s
    assert [j.eta_s for j in result.jobs] == [1.5, 1.5, 1.5, 4.5, 4.5, 4.5] and result.eta_s == 4.5
    text = status.render(result)
    assert "2 jobs (6 runs: jobs of train.seeds have a row per seed)" in text
    assert "3 pending, 3 running" in text
    alone = status.read_sweep(tmp_path / "packed" / job, now=NOW)
    assert [(j.seed, j.status, j.eta_s) for j in alone.jobs] == [(0, "running", 1.5), (1, "running", 1.5),
                                                                  (2, "running", 1.5)]


def test_the_seeds_of_a_job_that_trains_them_one_after_another(tmp_path):
    """Seeds 1 and 2 wait their turn, silent for 10 minutes while seed 0 writes: not stalled, and they end
    one after another."""
    result = status.read_sweep(pack_sweep(tmp_path / "seq", 1, (0.5, 600.0, 600.0)), now=NOW)
    assert [j.status for j in result.jobs[:3]] == ["running"] * 3
    assert [j.eta_s for j in result.jobs] == [1.5, 4.5, 7.5, 10.5, 13.5, 16.5]
    killed = status.read_sweep(pack_sweep(tmp_path / "killed", 1, (3600.0, 3600.0, 3600.0)), now=NOW)
    assert [j.status for j in killed.jobs[:3]] == ["stalled"] * 3


def test_a_seed_that_waited_for_its_turn_counts_its_epoch_from_the_seed_before(tmp_path):
    """Seed 0 completed half a second ago; seeds 1 and 2 wrote their summaries when the job began, ten
    minutes ago: seed 1 has trained for half a second, not ten minutes."""
    sweep = pack_sweep(tmp_path / "turn", 1, (0.5, 600.0, 600.0))
    seed0 = sweep / "batch_size=4,norm=gn,train.seeds=[0,1,2]" / "seed=0"
    summary = json.loads((seed0 / runfiles.SUMMARY).read_text())
    runfiles.write_summary(seed0, {**summary, "status": "completed"})
    age(seed0, 0.5)
    result = status.read_sweep(sweep, now=NOW)
    assert [j.status for j in result.jobs[:3]] == ["completed", "running", "running"]
    assert [j.eta_s for j in result.jobs[1:3]] == [2.5, 5.5]


def test_list_scheduling_on_the_launchers_slots():
    assert status.schedule([5.0], [10.0, 10.0, 10.0], slots=2) == [10.0, 15.0, 20.0]
    assert status.schedule([], [1.0, 2.0, 3.0], slots=3) == [1.0, 2.0, 3.0]
    assert status.schedule([4.0, 1.0, 2.0], [1.0], slots=2) == [2.0]  # more running than slots: all hold one
    sweep = Sweep("s", [
        Job("a", "gn", "gn", 8, 0, "completed", 3, 3, epoch_s=2.0, overhead_s=1.0),
        Job("b", "gn", "gn", 8, 1, "running", 1, 3, epoch_s=2.0, in_epoch_s=0.5),
        Job("c", "gn", "gn", 8, 2, "pending", epochs=3),
        Job("d", "bn", "bn", 4, 0, "pending", epochs=3),
        Job("e", "bn", "bn", 2, 0, "completed", 3, 3, epoch_s=4.0, overhead_s=3.0),
    ], NOW, slots=2, slots_how="joblib n_jobs=2")
    status.estimate(sweep, status.STALL_AFTER)
    # b: 2 epochs of 2 s minus the 0.5 s done; c: start-up (median 2 s) + 3 x 2 s on the free slot; d: no bs 4
    # measured, the nearest are 2 and 8 (as far on a log scale): the larger, 2 s an epoch; after b
    assert [j.eta_s for j in sweep.jobs] == [None, 3.5, 8.0, 3.5 + 2.0 + 6.0, None]
    assert sweep.eta_s == 11.5
    assert "2 at once (joblib n_jobs=2)" in sweep.eta_how
    assert "start-up 2.0 s a job (median of 2)" in sweep.eta_how


def test_epoch_estimates_prefer_the_same_norm_and_batch_size():
    measured = [Job("a", "gn", "gn", 8, epoch_s=2.0), Job("b", "bn", "bn", 8, epoch_s=3.0),
                Job("c", "bn", "bn", 8, epoch_s=5.0), Job("d", "gn", "gn", 64, epoch_s=1.0)]
    assert status.epoch_estimate(measured, "gn", 8) == 2.0
    assert status.epoch_estimate(measured, "none", 8) == 3.0  # median of the three at batch size 8
    assert status.epoch_estimate(measured, "bn", 4) == 4.0  # nearest: 8; bn's there
    assert status.epoch_estimate(measured, "gn", 128) == 1.0
    assert status.epoch_estimate([], "gn", 8) is None


def test_the_launchers_parallelism():
    cores = status.available_cores()
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert status.launcher_slots(OmegaConf.create({"_target_": joblib, "n_jobs": 3}), 32)[0] == 3
    assert status.launcher_slots(OmegaConf.create({"_target_": joblib, "n_jobs": -1}), 32)[0] == cores
    assert status.launcher_slots(OmegaConf.create({"_target_": joblib, "n_jobs": -2}), 32)[0] == max(1,
                                                                                                   cores - 1)
    slurm = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert status.launcher_slots(OmegaConf.create({"_target_": slurm, "array_parallelism": 4}), 32)[0] == 4
    local = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
    assert status.launcher_slots(OmegaConf.create({"_target_": local}), 32)[0] == 32
    assert status.launcher_slots(OmegaConf.create({"_target_": "x.Other"}), 32)[0] is None


def test_a_sweep_under_joblib_counts_its_slots(tmp_path):
    s = make_sweep(tmp_path / "s", {"norm": "gn", "batch_size": "8,4,2,1", "train.seed": "0"},
                   launcher=JOBLIB)
    make_run(s, "gn", 8, val_errors=(0.2,) * 30)
    result = status.read_sweep(s, now=time.time())
    # 30 epochs of 1 s each; the other three (launched first: longest expected) run 2 at a time: 30, 30, 60 s
    assert result.slots == 2 and [j.batch_size for j in result.jobs] == [1, 2, 4, 8]
    assert [j.eta_s for j in result.jobs[:3]] == pytest.approx([30.0, 30.0, 60.0], abs=1)
    assert "no job is running (nothing written for" in result.eta_how


def test_folders_multirun_yaml_does_not_list_and_sweeps_without_one(tmp_path):
    s = make_sweep(tmp_path / "s", {"norm": "gn", "batch_size": "8", "train.seed": "0"})
    make_run(s, "gn", 8)
    make_run(s, "bn", 16, seed=3)  # an earlier invocation's job
    (s / ".submitit").mkdir()  # hidden: never a job
    result = status.read_sweep(s)
    assert [(j.norm, j.batch_size, j.seed, j.planned) for j in result.jobs] == [("gn", 8, 0, True),
                                                                              ("bn", 16, 3, False)]
    assert result.jobs[1].note == "not one of multirun.yaml's jobs"
    (s / "multirun.yaml").write_text("hydra: [unclosed")
    result = status.read_sweep(s)
    assert len(result.jobs) == 2 and "multirun.yaml unreadable" in result.notes[0]
    (s / "multirun.yaml").unlink()
    assert "no multirun.yaml" in status.read_sweep(s).notes[0]
    run = status.read_sweep(s / "batch_size=8,norm=gn,train.seed=0")  # a run folder on its own
    assert [(j.status, j.note) for j in run.jobs] == [("completed", "")]


def test_corrupt_metrics_are_shown_not_raised(tmp_path):
    s = make_sweep(tmp_path / "s", {"norm": "gn,bn", "batch_size": "8", "train.seed": "0"})
    (make_run(s, "gn", 8) / runfiles.METRICS).write_text("epoch,val_error,seconds\n1,abc,1.0\n")
    (make_run(s, "bn", 8) / runfiles.METRICS).write_bytes(b"\xff\xfe\x00garbage")
    result = status.read_sweep(s)
    assert [j.status for j in result.jobs] == ["unreadable", "unreadable"]
    assert result.jobs[0].note.startswith("metrics.csv: ValueError")
    assert "unreadable" in status.render(result)


def test_the_newest_sweep_by_the_time_in_its_name(tmp_path):
    for name in ("mcn_sweep_2026-01-02_10-00-00-000000", "2026-01-03_09-00-00-000000",
                 "gn_groups_2026-01-01_23-00-00-000000"):
        (tmp_path / name).mkdir()
    assert status.newest_sweep(tmp_path).name == "2026-01-03_09-00-00-000000"
    assert status.newest_sweep(tmp_path / "none") is None


def test_the_command_on_a_real_sweep_reads_no_torch(tiny_mnist, tmp_path):
    sweep = tmp_path / "sweep"
    ran = run_cli("-m", "norm=gn,bn", "batch_size=64", "train.epochs=1", f"data.root={tiny_mnist}",
                  "train.threads=1", "train.progress=false", "logger=tensorboard", f"hydra.sweep.dir={sweep}")
    assert ran.returncode == 0, ran.stderr
    names = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert names == ["batch_size=64,norm=bn", "batch_size=64,norm=gn"]  # logger= is not in the names
    code = ("import json, sys\nfrom normexp.analysis import status\nstatus.main([sys.argv[1], '--json'])\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(sweep)], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    data = json.loads(out[0])
    assert out[1] == "False"
    assert [(j["name"], j["status"], j["planned"]) for j in data["jobs"]] == [
        ("batch_size=64,norm=gn", "completed", True), ("batch_size=64,norm=bn", "completed", True)]
    assert data["counts"] == {"completed": 2} and data["eta_how"] == "no job is running or pending"
    command = [sys.executable, "-m", "normexp.analysis.status"]
    text = subprocess.run([*command, str(sweep)], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "2 completed" in text and "gn" in text
    missing = subprocess.run([*command, str(tmp_path / "nope")], cwd=ROOT, capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.startswith("normexp: error:")


def test_a_real_sweep_of_train_seeds(tiny_mnist, tmp_path):
    sweep = tmp_path / "sweep"
    ran = run_cli("-m", "norm=gn", "batch_size=64", "train.epochs=1", "train.seeds=[3,4]", "train.threads=1",
                  f"data.root={tiny_mnist}", "train.progress=false", f"hydra.sweep.dir={sweep}")
    assert ran.returncode == 0, ran.stderr
    result = status.read_sweep(sweep)
    job = "batch_size=64,norm=gn,train.seeds=[3,4]"
    assert [(j.name, j.pack, j.seed, j.status, j.planned) for j in result.jobs] == [
        (f"{job}/seed=3", job, 3, "completed", True), (f"{job}/seed=4", job, 4, "completed", True)]


def test_a_finished_job_whose_last_start_failed_is_failed(tmp_path):
    s = tmp_path / "sweep"
    failed, went_on = make_run(s, "gn", 4), make_run(s, "bn", 4)
    for run_dir in (failed, went_on):
        (run_dir / "train.log").write_text(
            "[2026-01-01 10:00:01,000][normexp][ERROR] - failed: checkpoint.pt: unreadable (EOFError: )\n")
    age(failed, 10.0)
    age(went_on, 10.0)
    os.utime(went_on / runfiles.SUMMARY, (NOW - 5, NOW - 5))  # the run wrote its summary after the error
    by = {j.norm: j for j in status.read_sweep(s, now=NOW).jobs}
    assert by["gn"].status == "failed" and by["gn"].note == "failed: checkpoint.pt: unreadable (EOFError: )"
    assert by["bn"].status == "completed"


@pytest.mark.parametrize("args, line", [
    (["--watch", "inf"], "--watch inf: allowed: seconds in (0, 86400]"),
    (["--watch", "nan"], "--watch nan: allowed: seconds in (0, 86400]"),
    (["--watch", "0"], "--watch 0: allowed: seconds in (0, 86400]"),
    (["--stall-after", "-1"], "--stall-after -1: allowed: a finite number of seconds > 0"),
    (["--watch", "soon"], "argument --watch: invalid float value: 'soon'"),
])
def test_bad_arguments_are_one_line_before_any_work(tmp_path, capsys, args, line):
    with pytest.raises(SystemExit) as exit_:
        status.main([str(tmp_path), *args])
    assert exit_.value.code == 2 and capsys.readouterr().err == f"normexp: error: {line}\n"
