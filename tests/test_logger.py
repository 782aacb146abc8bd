"""normexp.logger: TensorBoard event files read back with tensorboard's own reader equal metrics.csv, the
hparams plugin's records, and a resumed run that writes no step twice."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import compose_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from normexp import config, logger
from normexp.analysis import runfiles
from normexp.trainer import Group, Trainer

QUIET = ["train.threads=1", "train.progress=false", "data.download=false"]


def make_cfg(data_root: Path, *overrides: str):
    # batch size 16 on 200 digits: 13 steps an epoch; the plain loop looks at the losses after every step
    return compose_config([f"data.root={data_root}", "norm=gn", "batch_size=16", "logger=tensorboard",
                           "train.fast=false", *QUIET, *overrides])


def fit(data_root: Path, run_dir: Path, *overrides: str):
    run_dir.mkdir(parents=True, exist_ok=True)
    return Trainer(make_cfg(data_root, *overrides), run_dir, jobs=1).fit()


def events(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def scalars(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / runfiles.METRICS, newline="") as f:
        return list(csv.DictReader(f))


def assert_events_equal_metrics(run_dir: Path, timing: bool = True) -> None:
    """Every numeric metrics.csv column but epoch and step is a scalar per epoch, equal as float32 (the
    timing columns too, unless an epoch was trained twice: its events keep the first time's)."""
    acc, rows = events(run_dir), metrics_rows(run_dir)
    columns = [c for c in runfiles.METRIC_COLUMNS if c not in ("epoch", "step") and rows[0][c] != ""]
    assert {"lr", "train_loss", "val_loss", "train_error", "val_error", "samples_per_s"} <= set(columns)
    for column in columns:
        if not timing and column in ("seconds", "samples_per_s"):
            assert [s for s, _ in scalars(acc, f"epoch/{column}")] == [int(r["epoch"]) for r in rows]
            continue
        tag = logger.TAGS.get(column, f"epoch/{column}")
        expected = [(int(r["epoch"]), float(np.float32(float(r[column])))) for r in rows]
        assert scalars(acc, tag) == expected, column
    val = [float(r["val_error"]) for r in rows]
    assert [v for _, v in scalars(acc, logger.FINAL)] == [float(np.float32(v)) for v in val]
    best = [min(val[: i + 1]) for i in range(len(val))]
    assert [v for _, v in scalars(acc, logger.BEST)] == [float(np.float32(v)) for v in best]


def test_events_equal_metrics_csv_and_carry_the_hparams(tiny_mnist, tmp_path):
    run = tmp_path / "run"
    outcome = fit(tiny_mnist, run, "train.epochs=2")
    assert outcome.status == "completed"
    assert_events_equal_metrics(run)
    acc = events(run)
    # the running loss at every sync: here every step (the plain loop), 13 steps an epoch
    assert [s for s, _ in scalars(acc, logger.RUNNING_LOSS)] == list(range(1, 27))
    content = acc.PluginTagToContent("hparams")
    assert set(content) == {logger.HPARAMS_TAG, logger.END_TAG}  # TensorBoard makes the experiment
    start = plugin_data_pb2.HParamsPluginData.FromString(content[logger.HPARAMS_TAG])
    hp = start.session_start_info.hparams
    assert hp["norm"].string_value == "gn" and hp["batch_size"].number_value == 16
    assert hp["seed"].number_value == 0 and hp["lr"].number_value == pytest.approx(0.01 * 16 / 256)
    assert hp["optim.scaling"].string_value == "linear" and hp["norm.groups"].number_value == 2


def unique_steps(acc: EventAccumulator) -> dict[str, list[int]]:
    steps = {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    for tag, found in steps.items():
        assert found == sorted(set(found)), f"{tag}: steps {found}"
    return steps


def test_a_resumed_run_writes_no_step_twice(tiny_mnist, tmp_path):
    run = tmp_path / "run"
    fit(tiny_mnist, run, "train.epochs=1")
    after_one = {name: (run / name).read_bytes() for name in (runfiles.CHECKPOINT, runfiles.METRICS,
                                                              runfiles.SUMMARY)}
    fit(tiny_mnist, run, "train.epochs=2")  # raised: continues from the checkpoint
    # killed after epoch 2 was logged but before its checkpoint: the folder as epoch 1 left it
    for name, content in after_one.items():
        runfiles.write_atomic(run / name, content)
    assert fit(tiny_mnist, run, "train.epochs=3").status == "completed"  # epochs 2 (again) and 3
    assert len(logger.event_files(run)) == 3
    steps = unique_steps(events(run))
    assert steps[logger.TAGS["val_error"]] == [1, 2, 3]
    assert steps[logger.RUNNING_LOSS] == list(range(1, 40))
    assert_events_equal_metrics(run, timing=False)  # epoch 2 ran twice: the same numbers, but not the time
    content = events(run).PluginTagToContent("hparams")
    assert len(content) == 2  # session start and end: once each


def test_epochs_run_without_the_logger_are_logged_when_it_comes(tiny_mnist, tmp_path):
    run = tmp_path / "run"
    fit(tiny_mnist, run, "train.epochs=1", "logger=none")
    assert logger.event_files(run) == []
    fit(tiny_mnist, run, "train.epochs=2")
    assert unique_steps(events(run))[logger.TAGS["val_loss"]] == [1, 2]
    assert_events_equal_metrics(run)


def test_an_interrupted_run_resumes_its_running_loss_where_it_stopped(tiny_mnist, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(make_cfg(tiny_mnist, "train.epochs=2"), run, jobs=1)
    run.mkdir()
    trainer.build()
    state = trainer.start()
    group = Group([trainer], [state])
    batches = group.begin_epoch()
    for _ in range(5):
        group.train_chunk(batches)
    outcome = trainer.interrupted(state, 15)  # as a SIGTERM after step 5 ends it
    assert outcome.status == "interrupted"
    assert fit(tiny_mnist, run, "train.epochs=2").status == "completed"
    steps = unique_steps(events(run))
    assert steps[logger.RUNNING_LOSS] == list(range(1, 27))
    assert_events_equal_metrics(run)


def test_a_run_started_over_shows_only_its_own_steps(tiny_mnist, tmp_path):
    run = tmp_path / "run"
    fit(tiny_mnist, run, "train.epochs=2")
    fit(tiny_mnist, run, "train.epochs=1", "train.resume=false")
    steps = unique_steps(events(run))
    assert steps[logger.TAGS["val_error"]] == [1] and steps[logger.RUNNING_LOSS] == list(range(1, 14))
    assert_events_equal_metrics(run)


def test_the_logger_keys_are_checked_at_start_up(tiny_mnist):
    cfg = make_cfg(tiny_mnist, "logger.flush_secs=0", "logger.hparams=[optim.scaling,3]")
    assert config.problems(cfg) == [
        "logger.flush_secs=0: must be a number > 0",
        "logger.hparams=['optim.scaling', 3]: must be a list of dotted config keys, e.g. [norm.groups]",
    ]
    assert config.problems(make_cfg(tiny_mnist)) == []
    assert logger.validate(compose_config(["logger=none"]).logger) == []


def test_no_logger_writes_nothing(tiny_mnist, tmp_path):
    run = tmp_path / "run"
    fit(tiny_mnist, run, "train.epochs=1", "logger=none")
    assert not any("tfevents" in p.name for p in run.iterdir())
    shutil.rmtree(run)
