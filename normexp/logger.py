"""Loggers of a run besides its CSV (owns ``conf/logger``): ``none``, or ``tensorboard`` event files in the
run folder, for ``tensorboard --logdir <sweep>`` to show every run of a sweep live.

The trainer calls its logger at four points: ``start`` (once the run is recorded as running: its summary and
the metrics rows it resumes with), ``sync`` (the running training loss at each look at the losses),
``epoch`` (the metrics rows after each finished epoch) and ``end`` (how the run ended).

TensorBoard's scalars: every numeric column of a metrics row but epoch and step, per epoch (x = the epoch),
``train/running_loss`` per sync (x = the SGD step), and ``hparam/final_val_error`` and
``hparam/best_val_error`` per epoch, the metrics of the hparams plugin, whose hyperparameters (norm, batch
size, seed, lr, the protocol and ``logger.hparams``) are written once per run. A resumed run reads its event
files first and writes only steps beyond those they hold, so that no step appears twice, however the run was
stopped; epochs finished but not yet logged when it was killed are logged then. A run started over
(``train.resume=false``) purges what older event files in its folder hold.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from normexp import validation

NAMES = ("none", "tensorboard")
RUNNING_LOSS = "train/running_loss"
# metrics.csv columns shown together (train and val of one quantity side by side); the others: epoch/<column>
TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "train_error": "error/train",
        "val_error": "error/val"}
NOT_SCALARS = ("epoch", "step")
FINAL, BEST = "hparam/final_val_error", "hparam/best_val_error"
SUMMARY_HPARAMS = ("norm", "batch_size", "seed", "lr", "data", "protocol")  # read from summary.json
HPARAMS_TAG, END_TAG = "_hparams_/session_start_info", "_hparams_/session_end_info"


class RunLogger:
    """The no-op logger (``logger=none``); the base of the others."""

    def start(self, summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        """The run is recorded as running with ``summary``; ``rows`` are the epochs it has finished."""

    def sync(self, step: int, loss: float) -> None:
        """The mean training loss of the steps up to ``step`` since the last sync."""

    def epoch(self, rows: list[dict[str, Any]]) -> None:
        """An epoch ended: ``rows`` are the metrics rows so far, the new one last."""

    def end(self, status: str, summary: dict[str, Any]) -> None:
        """The run ended with ``status`` (completed, diverged, interrupted)."""


def build(cfg: DictConfig | None, run_dir: Path) -> RunLogger:
    """The logger ``cfg`` (the ``logger`` group; None or ``none``: no logger) chooses for ``run_dir``."""
    if cfg is None or cfg.name == "none":
        return RunLogger()
    return TensorBoardLogger(run_dir, cfg.flush_secs, list(cfg.hparams))


def validate(cfg: DictConfig | None) -> list[str]:
    """Problems with ``conf/logger`` values, one line each."""
    if cfg is None:
        return []
    found = validation.choice("logger.name", cfg.name, NAMES)
    if cfg.name == "tensorboard":
        found += validation.number("logger.flush_secs", cfg.flush_secs, 0, low_open=True)
        keys = cfg.hparams
        if not OmegaConf.is_list(keys) or not all(isinstance(k, str) and k for k in keys):
            found.append(f"logger.hparams={keys!r}: must be a list of dotted config keys, e.g. [norm.groups]")
    return found


class TensorBoardLogger(RunLogger):
    """Event files in the run folder, through torch.utils.tensorboard's SummaryWriter."""

    def __init__(self, run_dir: Path, flush_secs: float, hparam_keys: list[str]) -> None:
        self.run_dir, self.flush_secs, self.hparam_keys = run_dir, flush_secs, hparam_keys
        self.writer = None
        self.recorded: dict[str, int] = {}  # per tag, the last step the run's event files hold

    def start(self, summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # train.resume=false starts over: readers drop what earlier event files in the folder hold (purge)
        over = OmegaConf.select(OmegaConf.create(summary.get("config") or {}), "train.resume") is False
        self.recorded = {} if over else recorded_steps(self.run_dir)
        self.writer = SummaryWriter(log_dir=str(self.run_dir), flush_secs=self.flush_secs,
                                    purge_step=0 if over else None)
        if HPARAMS_TAG not in self.recorded:
            self._write_hparams(hparams_of(summary, self.hparam_keys))
        for i in range(len(rows)):  # epochs finished before a kill, not logged yet
            self._epoch_scalars(rows[: i + 1])
        self.writer.flush()

    def sync(self, step: int, loss: float) -> None:
        if self.writer is not None:
            self._scalar(RUNNING_LOSS, loss, step)

    def epoch(self, rows: list[dict[str, Any]]) -> None:
        if self.writer is not None:
            self._epoch_scalars(rows)
            self.writer.flush()

    def end(self, status: str, summary: dict[str, Any]) -> None:
        if self.writer is None:
            return
        if status == "completed" and END_TAG not in self.recorded:
            from torch.utils.tensorboard.summary import hparams

            self.writer.file_writer.add_summary(hparams({}, {})[2])  # session end: success
        self.writer.close()
        self.writer = None

    def _write_hparams(self, values: dict[str, Any]) -> None:
        """The session's hyperparameters only: TensorBoard makes the experiment (every hyperparameter and
        its values, the metrics: the runs' scalars) from all the runs under its logdir, where one run's own
        experiment record would stand for all of them."""
        from torch.utils.tensorboard.summary import hparams

        self.writer.file_writer.add_summary(hparams(values, {})[1])

    def _epoch_scalars(self, rows: list[dict[str, Any]]) -> None:
        row, epoch = rows[-1], rows[-1]["epoch"]
        for column, value in row.items():
            if column not in NOT_SCALARS:
                self._scalar(TAGS.get(column, f"epoch/{column}"), value, epoch)
        self._scalar(FINAL, row["val_error"], epoch)
        self._scalar(BEST, min(r["val_error"] for r in rows), epoch)

    def _scalar(self, tag: str, value: Any, step: int) -> None:
        """``value`` at ``step`` unless the event files hold that step already (or it is not a number)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return
        if step <= self.recorded.get(tag, -1):
            return
        self.writer.add_scalar(tag, value, step)
        self.recorded[tag] = step


def hparams_of(summary: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """The run's hyperparameters: ``SUMMARY_HPARAMS`` and its protocol settings from summary.json, then
    ``keys`` from its config (dotted; those the config lacks left out); numbers and strings only."""
    values = {k: summary.get(k) for k in SUMMARY_HPARAMS}
    values |= dict(summary.get("protocol_settings") or {})
    config = OmegaConf.create(summary.get("config") or {})
    values |= {k: OmegaConf.select(config, k, default=None) for k in keys}
    kept = {}
    for key, value in values.items():
        if value is None or isinstance(value, (dict, list)) or OmegaConf.is_config(value):
            continue
        plain = isinstance(value, (int, float, str)) and not isinstance(value, bool)
        kept[key] = value if plain else str(value)
    return kept


def event_files(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.glob("events.out.tfevents.*") if p.is_file())


def recorded_steps(run_dir: Path) -> dict[str, int]:
    """Per tag, the last step in the run folder's event files (a record cut short by a kill ends a file)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    found: dict[str, int] = {}
    for path in event_files(run_dir):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                found[value.tag] = max(found.get(value.tag, -1), event.step)
    return found
