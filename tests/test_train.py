"""Real runs of the CLI on tiny data: the files, determinism, divergence, and losing nothing to SIGKILL or
SIGTERM, for a single run and for a sweep."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import ROOT, run_cli, run_cli_many, start_cli, wait_for, write_mnist

from normexp.analysis import runfiles

TIMING = ["seconds", "samples_per_s"]
# one thread: parallel test runs do not fight over the cores
QUIET = ["train.threads=1", "train.progress=false"]


def metrics(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / runfiles.METRICS)


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / runfiles.SUMMARY).read_text())


def assert_same_metrics(a: Path, b: Path) -> None:
    pd.testing.assert_frame_equal(metrics(a).drop(columns=TIMING), metrics(b).drop(columns=TIMING),
                                  check_exact=True)


def finished_epochs(run_dir: Path) -> int:
    try:
        return len(metrics(run_dir))
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return 0


def test_short_run_writes_its_files_and_the_same_seed_gives_the_same_metrics(tiny_mnist, tmp_path):
    runs = {name: tmp_path / name for name in ("a", "a_again", "other_seed")}
    common = [f"data.root={tiny_mnist}", "norm=gn", "batch_size=16", "train.epochs=2", *QUIET]
    results = run_cli_many([[f"hydra.run.dir={runs['a']}", *common],
                            [f"hydra.run.dir={runs['a_again']}", *common],
                            [f"hydra.run.dir={runs['other_seed']}", *common, "train.seed=1"]])
    assert [r.returncode for r in results] == [0, 0, 0], [r.stderr for r in results]

    run = runs["a"]
    files = {p.name for p in run.iterdir()}
    assert files >= {".hydra", "metrics.csv", "summary.json", "checkpoint.pt", "train.log"}
    df = metrics(run)
    assert tuple(df.columns) == runfiles.METRIC_COLUMNS
    assert df["epoch"].tolist() == [1, 2] and df["step"].tolist() == [13, 26]  # 200 digits: 12 x 16 + 1 x 8
    assert df["lr"].tolist() == [0.01 * 16 / 256] * 2
    assert df["r_max"].isna().all() and df["d_max"].isna().all()
    assert df["train_loss"].iloc[1] < df["train_loss"].iloc[0] < 2.31
    assert ((df[["train_error", "val_error"]] >= 0) & (df[["train_error", "val_error"]] <= 1)).all().all()
    s = summary(run)
    assert (s["status"], s["epochs_run"], s["epochs"], s["steps"]) == ("completed", 2, 2, 26)
    assert s["final_val_error"] == df["val_error"].iloc[-1] and s["final_val_loss"] == df["val_loss"].iloc[-1]
    assert s["best_val_error"] == df["val_error"].min()
    assert (s["norm"], s["batch_size"], s["seed"], s["lr"]) == ("gn", 16, 0, 0.01 * 16 / 256)
    checkpoint = runfiles.load_checkpoint(run)
    assert (checkpoint["epoch"], checkpoint["batch"], checkpoint["step"]) == (2, 0, 26)

    assert_same_metrics(run, runs["a_again"])
    assert metrics(runs["other_seed"])["train_loss"].iloc[0] != df["train_loss"].iloc[0]


def test_divergence_ends_the_run_as_a_result_and_bn_trains_at_batch_size_one(tmp_path):
    data = write_mnist(tmp_path / "data", n_train=40, n_test=20)
    bound, bn1 = tmp_path / "bound", tmp_path / "bn1"
    common = [f"data.root={data}", "train.epochs=2", *QUIET]
    results = run_cli_many([
        [f"hydra.run.dir={bound}", *common, "batch_size=8", "train.max_loss=1.0"],  # first loss ~ ln 10
        [f"hydra.run.dir={bn1}", *common, "batch_size=1", "norm=bn"],
    ])
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]

    s = bound_summary = summary(bound)
    assert s["status"] == "diverged" and s["epochs_run"] == 0
    assert (s["diverged_at"]["epoch"], s["diverged_at"]["step"]) == (1, 1)
    assert s["diverged_at"]["loss"] == pytest.approx(math.log(10), abs=0.1)
    assert len(metrics(bound)) == 0  # the header only: no epoch finished

    # a diverged run is finished: the same command again does nothing
    again = run_cli(f"hydra.run.dir={bound}", *common, "batch_size=8", "train.max_loss=1.0")
    assert again.returncode == 0 and summary(bound) == bound_summary
    assert "already diverged after 0 epochs, nothing to do" in (bound / "train.log").read_text()

    s = summary(bn1)
    assert (s["status"], s["epochs_run"], s["steps"]) == ("completed", 2, 80)
    assert 100 < s["peak_rss_mb"] < 4000  # the run's own high-water mark: torch alone is a few hundred MB
    assert metrics(bn1)[["train_loss", "val_loss"]].map(math.isfinite).all().all()


# a run long enough to be killed in the middle of an epoch: 600 digits at batch size 4 (150 steps an epoch),
# BRN with its (r_max, d_max) ramp in steps across all three epochs, so that the resumed run must restore the
# moving statistics, the optimizer and the schedule position
RESUMABLE = ["norm=brn", "batch_size=4", "train.epochs=3", "norm.schedule.unit=step",
             "norm.schedule.warmup=100", "norm.schedule.ramp=250", *QUIET]


@pytest.fixture(scope="module")
def resumable(tmp_path_factory):
    """(data root, a function returning the folder of the uninterrupted run); the run starts in the
    background at once, to overlap the interrupted runs."""
    base = tmp_path_factory.mktemp("resumable")
    data, run_dir = write_mnist(base / "data", n_train=600, n_test=100), base / "uninterrupted"
    process = start_cli(f"hydra.run.dir={run_dir}", f"data.root={data}", *RESUMABLE, merge_output=True)

    def uninterrupted() -> Path:
        assert process.wait(timeout=300) == 0, process.stdout.read()
        return run_dir

    yield data, uninterrupted
    if process.poll() is None:
        process.kill()
        process.wait()


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_metrics(resumable, tmp_path):
    data, uninterrupted = resumable
    args = [f"hydra.run.dir={tmp_path / 'run'}", f"data.root={data}", *RESUMABLE]
    victim = start_cli(*args, merge_output=True)
    wait_for(lambda: finished_epochs(tmp_path / "run") >= 1, victim, "the first epoch finished")
    time.sleep(0.05)  # into the next epoch (150 steps: even a fast machine is still in it)
    victim.kill()
    victim.wait()
    assert finished_epochs(tmp_path / "run") < 3 and summary(tmp_path / "run")["status"] == "running"

    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    log = (tmp_path / "run" / "train.log").read_text()
    assert "resuming" in log and summary(tmp_path / "run")["status"] == "completed"
    assert_same_metrics(tmp_path / "run", uninterrupted())


def test_sigterm_finishes_the_step_saves_and_resumes_to_the_uninterrupted_metrics(resumable, tmp_path):
    data, uninterrupted = resumable
    run_dir = tmp_path / "run"
    args = [f"hydra.run.dir={run_dir}", f"data.root={data}", *RESUMABLE]
    victim = start_cli(*args, merge_output=True)
    wait_for(lambda: finished_epochs(run_dir) >= 1, victim, "the first epoch finished")
    time.sleep(0.05)
    victim.send_signal(signal.SIGTERM)
    assert victim.wait(timeout=60) == 128 + signal.SIGTERM

    s = summary(run_dir)
    assert s["status"] == "interrupted" and not runfiles.is_finished(run_dir)
    checkpoint = runfiles.load_checkpoint(run_dir)
    epoch, batch = s["interrupted_at"]["epoch"], s["interrupted_at"]["batch"]
    assert (checkpoint["epoch"], checkpoint["batch"]) == (epoch - 1, batch)  # checkpoint: 0-based epoch
    assert checkpoint["step"] == 150 * (epoch - 1) + batch  # every step it took is in the checkpoint
    assert len(checkpoint["epoch_losses"]) == batch
    assert finished_epochs(run_dir) == epoch - 1

    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run_dir} at epoch {epoch}, batch {batch}" in (run_dir / "train.log").read_text()
    assert summary(run_dir)["status"] == "completed"
    assert_same_metrics(run_dir, uninterrupted())


def test_sweep_killed_and_run_again_runs_nothing_twice_and_finishes(tmp_path):
    data, sweep = write_mnist(tmp_path / "data", n_train=600, n_test=50), tmp_path / "sweep"
    args = ["-m", f"hydra.sweep.dir={sweep}", f"data.root={data}", "norm=gn,bn,none", "batch_size=10",
            "train.epochs=3", *QUIET]
    first, second, third = (sweep / f"batch_size=10,norm={n}" for n in ("gn", "bn", "none"))
    process = start_cli(*args, merge_output=True)
    # kill the sweep once its second job has checkpointed its first epoch: the first job is done, the second
    # half way, the third not started
    wait_for(lambda: (second / runfiles.CHECKPOINT).exists(), process, "the second job's first epoch")
    process.kill()
    process.wait()
    assert runfiles.is_finished(first) and not runfiles.is_finished(second) and not third.exists()
    first_summary = (first / runfiles.SUMMARY).read_bytes()

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    for job in (first, second, third):
        s = summary(job)
        assert (s["status"], s["epochs_run"]) == ("completed", 3), job
        assert metrics(job)["epoch"].tolist() == [1, 2, 3]
    assert (first / runfiles.SUMMARY).read_bytes() == first_summary  # not run again
    first_log = (first / "train.log").read_text()
    assert "already completed after 3 epochs, nothing to do" in first_log
    assert [first_log.count(f"epoch {e}/3 train loss") for e in (1, 2, 3)] == [1, 1, 1]
    second_log = (second / "train.log").read_text()
    assert "resuming" in second_log and second_log.count("epoch 1/3 train loss") == 1



# ---------------------------------------------------------------- the batch-independent norms, a custom one


class ChannelRMSNorm(torch.nn.Module):
    """A layer of a user's own, defined here and named by import path on the command line: x divided by the
    root mean square over each sample's channels and positions, then a scale and shift per channel."""

    def __init__(self, num_channels: int, eps: float = 1e-3) -> None:
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        x = x * torch.rsqrt(x.square().mean(dim=(1, 2, 3), keepdim=True) + self.eps)
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


TESTS_ON_PATH = {"PYTHONPATH": str(ROOT / "tests")}  # so that a run can import this file as test_train
CUSTOM = ["norm=custom", "norm.target=test_train.ChannelRMSNorm", "+norm.kwargs.eps=1e-5"]
NEW_NORMS = {"frn": ["norm=frn"], "ws_gn": ["norm=ws_gn"], "evonorm_s0": ["norm=evonorm_s0"],
             "custom": CUSTOM}
# 400 digits at batch size 4: 100 steps an epoch, 3 epochs
SHORT = ["batch_size=4", "train.epochs=3", *QUIET]


def start_with_tests_on_path(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "NORMEXP_DATA_ROOT"} | TESTS_ON_PATH
    return subprocess.Popen([sys.executable, "-m", "normexp.train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def new_norm_runs(tmp_path_factory):
    """(data root, norm -> a function returning the folder of its uninterrupted run); all four start in the
    background at once."""
    base = tmp_path_factory.mktemp("new_norms")
    data = write_mnist(base / "data", n_train=400, n_test=50)
    processes = {name: (base / name, start_with_tests_on_path(f"hydra.run.dir={base / name}",
                                                              f"data.root={data}", *SHORT, *args))
                 for name, args in NEW_NORMS.items()}

    def uninterrupted(name: str) -> Path:
        run_dir, process = processes[name]
        assert process.wait(timeout=300) == 0, process.stdout.read()
        return run_dir

    yield data, uninterrupted
    for _, process in processes.values():
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("name", NEW_NORMS)
def test_each_new_norm_resumes_after_sigkill_to_the_uninterrupted_metrics(new_norm_runs, tmp_path, name):
    data, uninterrupted = new_norm_runs
    run_dir = tmp_path / "run"
    args = [f"hydra.run.dir={run_dir}", f"data.root={data}", *SHORT, *NEW_NORMS[name]]
    victim = start_with_tests_on_path(*args)
    wait_for(lambda: finished_epochs(run_dir) >= 1, victim, "the first epoch finished")
    time.sleep(0.05)
    victim.kill()
    victim.wait()
    assert finished_epochs(run_dir) < 3 and summary(run_dir)["status"] == "running"

    resumed = run_cli(*args, env=TESTS_ON_PATH)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in (run_dir / "train.log").read_text() and summary(run_dir)["status"] == "completed"
    assert metrics(run_dir)[["train_loss", "val_loss"]].map(math.isfinite).all().all()
    assert_same_metrics(run_dir, uninterrupted(name))


def test_a_custom_layer_defined_in_a_test_file_trains_for_an_epoch_through_the_cli(tiny_mnist, tmp_path):
    proc = run_cli(f"hydra.run.dir={tmp_path / 'run'}", f"data.root={tiny_mnist}", "batch_size=16",
                   "train.epochs=1", *QUIET, *CUSTOM, env=TESTS_ON_PATH)
    assert proc.returncode == 0, proc.stderr
    s = summary(tmp_path / "run")
    assert (s["status"], s["epochs_run"], s["norm"]) == ("completed", 1, "custom")
    assert s["config"]["norm"] == {"name": "custom", "target": "test_train.ChannelRMSNorm",
                                   "kwargs": {"eps": 1e-5}}
    assert metrics(tmp_path / "run")["train_loss"].iloc[0] < math.log(10)  # it learned something
    state = runfiles.load_checkpoint(tmp_path / "run")["model"]
    assert {f"features.{i}.{p}" for i in (1, 4, 7) for p in ("weight", "bias")} <= set(state)
    assert state["features.7.weight"].shape == (500,)


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (its SigCgt mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask, 16) >> (signum - 1) & 1)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs /proc to see the handler")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_starting_is_one_line(tmp_path, signum):
    data = write_mnist(tmp_path / "data")
    process = start_cli(f"hydra.run.dir={tmp_path / 'run'}", f"data.root={data}", "train.threads=1")
    deadline = time.monotonic() + 30
    while not catches(process.pid, signal.SIGTERM):  # normexp's handlers in place (SIGINT's first), torch
        # not loaded yet: the earliest moment it can answer
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.001)
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum
    assert err == (f"normexp: stopped by signal {signum} while starting, before any training: run the same "
                   "command again to start\n")
    assert "Traceback" not in out
