"""A sweep stopped by SIGTERM or SIGINT to its main process, under the joblib, submitit_local and basic
launchers: the running jobs save an interrupted checkpoint, no job starts after the signal, no worker is
left, the exit code is 128 + the signal with one line and no traceback, and the same command resumes every
job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, run_cli, wait_for, write_mnist

from normexp import runfiles

QUIET = ["train.threads=1", "train.progress=false"]


def start(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "NORMEXP_DATA_ROOT"}
    return subprocess.Popen([sys.executable, "-m", "normexp.train", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def status(job: Path) -> str | None:
    try:
        return json.loads((job / runfiles.SUMMARY).read_text())["status"]
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and f"PPid:\t{pid}\n" in (entry / "status").read_text():
                found.add(int(entry.name))
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def describe(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "?"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_mnist(tmp_path_factory.mktemp("signals") / "data", n_train=2000, n_test=50)


# 2000 digits at batch size 2: 1000 steps an epoch, so that the jobs are mid-epoch when the signal comes
JOBS = ["norm=gn,bn,none", "batch_size=2", "train.epochs=2", *QUIET]


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs /proc to list the workers")
@pytest.mark.parametrize("signum, group", [(signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["SIGTERM to the main process", "Ctrl-C to the process group"])
def test_joblib_sweep_stops_cleanly_and_resumes(data, tmp_path, signum, group):
    sweep = tmp_path / "sweep"
    command = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}",
               f"data.root={data}", *JOBS]
    main = start(*command)
    running = [sweep / f"batch_size=2,norm={n}" for n in ("gn", "bn")]
    wait_for(lambda: all(status(j) == "running" for j in running), main, "both workers' jobs started",
             timeout=180)
    workers = children(main.pid)
    os.killpg(main.pid, signum) if group else main.send_signal(signum)
    out, err = main.communicate(timeout=120)
    assert main.returncode == 128 + signum, err
    assert err.strip().splitlines() == [
        f"normexp: stopped by signal {signum}: the running jobs saved a checkpoint and no other job started; "
        "run the same command again to resume"]
    assert "Traceback" not in out + err
    for job in running:
        assert status(job) == "interrupted", job
        # a position inside epoch 1 (batch 0 where a loaded machine signals before the first step)
        assert 0 <= runfiles.load_checkpoint(job)["batch"] < 1000
    assert status(sweep / "batch_size=2,norm=none") is None  # never started
    deadline = time.monotonic() + 30  # the workers end with the sweep (a zombie is not alive)
    while [pid for pid in workers if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [(pid, describe(pid)) for pid in workers if alive(pid)] == []  # no worker left

    if signum == signal.SIGTERM:  # the same command again: every job resumed or started, to the end
        again = run_cli(*command)
        assert again.returncode == 0, again.stderr
        for job in [*running, sweep / "batch_size=2,norm=none"]:
            assert status(job) == "completed", job
        assert all("resuming" in (job / "train.log").read_text() for job in running)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs /proc to list the jobs")
def test_submitit_local_sweep_passes_sigterm_to_its_jobs_and_leaves_none_running(data, tmp_path):
    sweep = tmp_path / "sweep"
    main = start("-m", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}", f"data.root={data}",
                 "norm=gn,bn", "batch_size=2", "train.epochs=2", *QUIET)
    running = [sweep / f"batch_size=2,norm={n}" for n in ("gn", "bn")]
    wait_for(lambda: all(status(j) == "running" for j in running), main, "both jobs started", timeout=180)
    below = children(main.pid)
    below |= {pid for child in below for pid in children(child)}  # submitit's controller, and its job
    main.send_signal(signal.SIGTERM)
    out, err = main.communicate(timeout=120)
    assert main.returncode == 143, err
    assert err.strip().splitlines()[-1] == (
        "normexp: stopped by signal 15: the running jobs saved a checkpoint and no other job started; run "
        "the same command again to resume")
    assert "Traceback" not in out + err
    for job in running:
        assert status(job) == "interrupted", job
        assert 0 <= runfiles.load_checkpoint(job)["batch"] < 1000
    deadline = time.monotonic() + 30
    while [pid for pid in below if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [(pid, describe(pid)) for pid in below if alive(pid)] == []  # nothing left running


def test_basic_sweep_stops_at_sigint_without_a_traceback(data, tmp_path):
    sweep = tmp_path / "sweep"
    main = start("-m", f"hydra.sweep.dir={sweep}", f"data.root={data}", *JOBS)
    first = sweep / "batch_size=2,norm=gn"
    wait_for(lambda: (first / runfiles.CHECKPOINT).exists() or status(first) == "running", main,
               "the first job started", timeout=180)
    time.sleep(1)
    main.send_signal(signal.SIGINT)
    out, err = main.communicate(timeout=120)
    assert main.returncode == 130, err
    assert "Traceback" not in out + err
    assert status(first) == "interrupted" and not (sweep / "batch_size=2,norm=bn").exists()


def test_a_signal_between_two_jobs_stops_the_sweep_before_the_next(tmp_path):
    """In the sweep's process: the request made by the signal reaches the next run's StopSignal (and the
    next job's start), and the handlers from before come back at the end."""
    code = """
import os, signal
from normexp import steps, stopping
before = signal.getsignal(signal.SIGTERM)
stopping.begin_sweep([])
os.kill(os.getpid(), signal.SIGTERM)  # between two jobs: no run's handler is installed
assert stopping.requested() == signal.SIGTERM and not stopping.in_worker()
with steps.StopSignal() as stop:
    assert stop.signum == signal.SIGTERM  # the next run stops before its first step
assert stopping.end_sweep() == signal.SIGTERM and signal.getsignal(signal.SIGTERM) is before
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "NORMEXP_SWEEP_STOP"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.stdout.strip() == "ok", proc.stderr
