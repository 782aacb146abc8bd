"""Real tiny multiruns (tiny data, 1 epoch) with each local launcher, and the experiment presets."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
from helpers import compose_config, run_cli, write_mnist
from omegaconf import OmegaConf

from normexp import config
from normexp.analysis import plots, results, sweeps

GRID = ["batch_size=16,norm=bn", "batch_size=16,norm=gn", "batch_size=8,norm=bn", "batch_size=8,norm=gn"]


def job_folders(sweep: Path) -> list[str]:
    return sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_tiny_multirun_names_its_jobs_and_draws_them(tmp_path, tiny_mnist, launcher):
    sweep = tmp_path / "sweep"
    extra = ["hydra/launcher=joblib"] if launcher == "joblib" else []
    proc = run_cli("-m", "norm=gn,bn", "batch_size=8,16", "train.epochs=1", f"data.root={tiny_mnist}",
                   f"hydra.sweep.dir={sweep}", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert job_folders(sweep) == GRID  # named by what varies; data.root and train.epochs left out

    skipped = []
    df = results.load([sweep], skipped)
    assert skipped == [] and len(results.planned_jobs(sweep)) == 4
    assert len(df) == 4 and df["epoch"].tolist() == [1, 1, 1, 1]
    assert sorted(zip(df["norm"], df["batch_size"], strict=True)) == [("bn", 8), ("bn", 16), ("gn", 8),
                                                                       ("gn", 16)]
    assert set(df["status"]) == {"completed"} and set(df["seed"]) == {0} and set(df["epochs"]) == {1}
    assert df["lr"].tolist() == pytest.approx([0.01 * bs / 256 for bs in df["batch_size"]])
    assert df["step"].tolist() == [math.ceil(200 / bs) for bs in df["batch_size"]]
    assert df["val_error"].between(0, 1).all() and (df["val_loss"] > 0).all()
    assert (df["final_val_error"] == df["val_error"]).all()

    written = plots.write_report(df, sweep)
    assert [p.name for p in written] == ["bs-16.png", "bs-8.png", "summary.png", "summary.csv", "summary.md",
                                            "claims.md"]
    assert all(p.stat().st_size > 1000 for p in written[:3])
    launched = {name: OmegaConf.load(sweep / name / ".hydra" / "hydra.yaml").hydra.job.num
                for name in job_folders(sweep)}
    assert sorted(sorted(launched, key=launched.get)[:2]) == GRID[2:]  # the longest (batch size 8) first
    assert [j.name for j in results.planned_jobs(sweep)] == sorted(launched, key=launched.get)


def test_jobs_launch_longest_expected_first_or_in_grid_order_under_the_basic_sweeper():
    cfg = compose_config(["experiment=mcn_sweep"], hydra=True)
    planned = sweeps.planned_jobs(cfg)
    times = [sweeps.expected_time(j) for j in planned]
    assert times == sorted(times, reverse=True) and len(planned) == 32
    assert [(j.batch_size, j.epochs) for j in planned[::4]] == [
        (2, 30), (4, 30), (1, 10), (16, 30), (32, 30), (64, 30), (128, 30), (256, 30)]
    assert [j.norm for j in planned[:4]] == ["none", "bn", "brn", "gn"]  # ties keep the grid's order
    grid = sweeps.planned_jobs(compose_config(["experiment=mcn_sweep", "hydra/sweeper=basic"], hydra=True))
    assert [(j.norm, j.batch_size) for j in grid[:3]] == [("none", 256), ("none", 128), ("none", 64)]
    assert sorted(j.name for j in grid) == sorted(j.name for j in planned)  # the same jobs and folders


def test_submitit_local_runs_every_job_and_a_diverged_one_stops_no_other(tmp_path, tiny_mnist):
    sweep = tmp_path / "sweep"
    # a loss bound of 0.01 ends the first job as diverged at its first step; the second runs as usual
    proc = run_cli("-m", "norm=gn", "batch_size=8", "train.max_loss=0.01,1000", "train.epochs=1",
                   f"data.root={tiny_mnist}", f"hydra.sweep.dir={sweep}", "hydra/launcher=submitit_local")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert job_folders(sweep) == [
        "batch_size=8,norm=gn,train.max_loss=0.01", "batch_size=8,norm=gn,train.max_loss=1000",
    ]
    assert (sweep / ".submitit").is_dir()  # submitit's own logs, hidden from the results

    runs = results.runs(results.load([sweep])).set_index("job")
    diverged = runs.loc["batch_size=8,norm=gn,train.max_loss=0.01"]
    assert diverged["status"] == "diverged"
    assert (diverged["diverged_epoch"], diverged["diverged_step"]) == (1, 1)
    assert diverged["epochs_run"] == 0 and diverged["variant"] == "gn train.max_loss=0.01"
    assert runs.loc["batch_size=8,norm=gn,train.max_loss=1000", "status"] == "completed"


def test_a_command_line_seed_list_replaces_the_presets(tmp_path, tiny_mnist):
    """gn_groups sweeps train.seed: 0 and batch_size: 256,2; the command line's lists replace them, so
    2 jobs run (seeds 0 and 1), not 3 (0 plus 0,1) nor 10."""
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "experiment=gn_groups", "norm.groups=1", "batch_size=8", "train.seed=0,1",
                   "train.epochs=1", f"data.root={tiny_mnist}", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert job_folders(sweep) == [
        "batch_size=8,norm.groups=1,train.seed=0", "batch_size=8,norm.groups=1,train.seed=1",
    ]
    assert len(results.planned_jobs(sweep)) == 2
    df = results.load([sweep])
    assert sorted(df["seed"]) == [0, 1] and set(df["groups"]) == {"1"} and set(df["variant"]) == {"gn"}
    # different seeds, different runs
    assert df["val_loss"].iloc[0] != df["val_loss"].iloc[1]


def compose_job(overrides: list[str]):
    return compose_config(overrides, hydra=True)


@pytest.mark.parametrize("preset, params, prefix", [
    ("mcn_sweep", {"norm": "none,bn,brn,gn", "batch_size": "256,128,64,32,16,4,2,1", "train.seed": "0"},
     "outputs/sweeps/mcn_sweep_"),
    ("gn_groups", {"norm.groups": "1,2,5,10,per_channel", "batch_size": "256,2", "train.seed": "0"},
     "outputs/sweeps/gn_groups_"),
    ("mcn_code_sweep", {"norm": "none,bn,brn,gn", "batch_size": "256,128,64,32,16,4,2,1", "train.seed": "0"},
     "outputs/sweeps/mcn_code_sweep_"),
    ("batch_independent", {"norm": "gn,ln,in,frn,ws_gn,evonorm_s0,bn", "batch_size": "256,32,4,2,1",
                           "train.seed": "0"}, "outputs/sweeps/batch_independent_"),
    ("mcn_drawn_sweep", {"norm": "bn,brn,gn", "batch_size": "256,16,4,2,1", "train.seed": "0"},
     "outputs/sweeps/mcn_drawn_sweep_"),
])
def test_presets_compose_and_every_job_is_valid(tmp_path, preset, params, prefix):
    data_root = write_mnist(tmp_path / "data", n_train=256, n_test=10)
    cfg = compose_job([f"experiment={preset}"])
    assert OmegaConf.to_container(cfg.hydra.sweeper.params) == params
    sweep_dir = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["dir"]
    assert sweep_dir == prefix + "${now:%Y-%m-%d_%H-%M-%S-%f}"  # microseconds: no collision in one second
    assert cfg.train.epochs == 30

    grid = [[f"{k}={v}" for v in str(values).split(",")] for k, values in params.items()]
    jobs = list(itertools.product(*grid))
    runs = {"mcn_sweep": 32, "gn_groups": 10, "mcn_code_sweep": 32, "batch_independent": 35,
            "mcn_drawn_sweep": 15}
    assert len(jobs) == runs[preset]
    for job in jobs:
        job_cfg = compose_job([f"experiment={preset}", *job, f"data.root={data_root}"])
        assert config.problems(job_cfg) == [], job
        expected_epochs = 10 if preset != "gn_groups" and job_cfg.batch_size == 1 else 30  # mcn_sweep's
        tc = job_cfg.train
        planned = sweeps.planned_epochs(tc.epochs, tc.max_epochs_by_batch_size, job_cfg.batch_size)
        assert planned == expected_epochs
        if preset == "gn_groups":
            assert job_cfg.norm.name == "gn"
        if preset == "batch_independent":
            assert job_cfg.optim.scaling == "linear"
        if preset == "mcn_drawn_sweep":  # the code protocol at the rate the figures imply
            assert job_cfg.optim.auto_lr.with_norm == 0.001
        protocol = "code" if preset in ("mcn_code_sweep", "mcn_drawn_sweep") else "text"
        assert sweeps.protocol_name(sweeps.protocol_settings(job_cfg)) == protocol


def test_the_learning_rate_grid_and_its_epoch_caps():
    cfg = compose_job(["experiment=lr_sweep"])
    assert OmegaConf.to_container(cfg.hydra.sweeper.params) == {
        "batch_size": "256,32,8,2,1", "norm": "none,bn,brn,gn",
        "optim.lr": "1e-5,3e-5,1e-4,3e-4,1e-3,3e-3,1e-2,3e-2,1e-1", "train.seed": "0"}
    planned = {bs: sweeps.planned_epochs(cfg.train.epochs, cfg.train.max_epochs_by_batch_size, bs)
               for bs in (256, 32, 8, 2, 1)}
    assert planned == {256: 20, 32: 20, 8: 20, 2: 10, 1: 5}  # 25,000 steps at 2 and at 1 on 5,000 digits
    job = compose_job(["experiment=lr_sweep", "norm=gn", "batch_size=2", "optim.lr=0.03"])
    assert sweeps.protocol_name(sweeps.protocol_settings(job)) == "code" and job.optim.lr == 0.03
