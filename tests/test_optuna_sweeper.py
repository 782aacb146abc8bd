"""normexp's Optuna sweeper (hydra_plugins/normexp_optuna): a study of a few trials on tiny data, stopped by
a signal mid-trial and continued by the same command, and the values a sweeper gets back."""

from __future__ import annotations

import signal
import sqlite3

import pytest
from helpers import run_cli, start_cli, wait_for, write_mnist

from normexp import train
from normexp.analysis import runfiles
from normexp.trainer import Outcome

optuna = pytest.importorskip("optuna")
QUIET = ["train.progress=false", "train.threads=1"]


def trials(sweep) -> list[tuple[int, str, float | None, str]]:
    """(number, state, value, lr) of every trial in the study's SQLite file, read without Optuna."""
    with sqlite3.connect(sweep / "optuna.db") as db:
        rows = db.execute("SELECT t.number, t.state, v.value, p.param_value FROM trials t "
                          "LEFT JOIN trial_values v ON v.trial_id = t.trial_id "
                          "LEFT JOIN trial_params p ON p.trial_id = t.trial_id ORDER BY t.number").fetchall()
    return rows


def test_a_study_stopped_mid_trial_continues_with_the_same_command_and_runs_nothing_twice(tmp_path):
    data = write_mnist(tmp_path / "data", n_train=2000, n_test=50)
    sweep = tmp_path / "study"
    command = ["-m", "hydra/sweeper=optuna", "optim.lr=tag(log,interval(1e-3,0.1))", "norm=gn",
               "batch_size=2", "train.epochs=1", f"data.root={data}", f"hydra.sweep.dir={sweep}",
               "hydra.sweeper.n_trials=2", *QUIET]
    first = start_cli(*command)
    wait_for(lambda: any("running" in (p / runfiles.SUMMARY).read_text()
                         for p in sweep.glob("batch_size=*") if (p / runfiles.SUMMARY).exists()),
             first, "the first trial is training", timeout=180)
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 143, err
    assert [state for _, state, _, _ in trials(sweep)] == ["RUNNING"]  # left for the next run
    interrupted = next(sweep.glob("batch_size=*"))

    again = run_cli(*command)  # the same command
    assert again.returncode == 0, again.stderr
    rows = trials(sweep)
    assert [state for _, state, _, _ in rows] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert rows[1][3] == rows[0][3]  # the stopped trial proposed again with its values: its job resumed
    assert "resum" in (interrupted / "train.log").read_text()
    folders = sorted(sweep.glob("batch_size=*"))
    epochs = [(f / runfiles.METRICS).read_text().splitlines()[1:] for f in folders]
    assert len(folders) == 2 and [len(e) for e in epochs] == [1, 1]  # each trained its one epoch, once
    values = {round(v, 6) for _, state, v, _ in rows if state == "COMPLETE"}
    finals = {round(runfiles.read_summary(f)["final_val_error"], 6) for f in folders}
    assert values == finals  # each trial's value is its run's final validation error

    done = run_cli(*command)  # a finished study: nothing more to run
    assert done.returncode == 0 and len(trials(sweep)) == 3


def test_what_a_run_returns_to_a_sweeper():
    ok = Outcome("completed", {"final_val_error": 0.02})
    assert train.objective([ok]) == 0.02
    assert train.objective([ok, Outcome("completed", {"final_val_error": 0.04})]) == pytest.approx(0.03)
    assert train.objective([Outcome("diverged", {"final_val_error": None})]) == train.DIVERGED == 1.0
    assert train.objective([ok, Outcome("interrupted", {"final_val_error": None}, signum=15)]) is None


def test_a_space_in_hydras_sweep_grammar():
    from hydra_plugins.normexp_optuna import OptunaSweeper

    sweeper = OptunaSweeper(params={"optim.lr": "tag(log,interval(1e-4,0.1))"})
    space, fixed = sweeper.space(["norm=choice(bn,gn)", "norm.groups=range(1,3)", "batch_size=2"])
    assert space["optim.lr"] == optuna.distributions.FloatDistribution(1e-4, 0.1, log=True)
    assert space["norm"] == optuna.distributions.CategoricalDistribution(["bn", "gn"])
    assert space["norm.groups"] == optuna.distributions.CategoricalDistribution(["1", "2"])
    assert fixed == ["batch_size=2"]


def test_without_optuna_the_sweeper_says_what_to_install(monkeypatch):
    import sys

    from hydra_plugins import normexp_optuna

    monkeypatch.setitem(sys.modules, "optuna", None)  # as where the extra is not installed
    with pytest.raises(SystemExit) as stop:
        normexp_optuna.distribution(None)
    assert str(stop.value) == 'normexp: error: hydra/sweeper=optuna needs Optuna: pip install -e ".[optuna]"'
