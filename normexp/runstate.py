"""Where a run stands (epoch, batch, step, finished rows, time), converted to and from a checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch

from normexp.steps import EpochLog


@dataclass
class RunState:
    """What a checkpoint holds besides the model and the optimizer."""

    epoch: int = 0  # the epoch in progress, from 0
    batch: int = 0  # its batches done
    step: int = 0  # SGD steps done in all
    rows: list[dict[str, Any]] = field(default_factory=list)  # metrics of the finished epochs
    wall_seconds: float = 0.0  # of every session, up to the last reading of the clock
    epoch_seconds: float = 0.0  # training time of this epoch in earlier sessions
    cpu_settings: dict[str, Any] = field(default_factory=dict)  # what it runs with, by "train" and "eval"
    pack: dict[str, Any] = field(default_factory=dict)  # a seed of train.seeds: how its seeds ran
    epoch_log: EpochLog = field(default_factory=EpochLog)

    def new_epoch(self) -> None:
        """The epoch in progress is done: the next one starts with an empty log."""
        self.epoch, self.batch, self.epoch_seconds, self.epoch_log = self.epoch + 1, 0, 0.0, EpochLog()

    def to_checkpoint(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": {"torch": torch.get_rng_state()},
            **{key: getattr(self, key) for key in _PLAIN_KEYS},
            "epoch_losses": self.epoch_log.all_losses().cpu(),
            "epoch_wrong": self.epoch_log.wrong,
        }

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: dict[str, Any],
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
    ) -> RunState:
        """The state in ``checkpoint``, whose model and optimizer states are loaded into those given."""
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        log = EpochLog(checkpoint["epoch_losses"].to(device), checkpoint["epoch_wrong"])
        # (a checkpoint from before a key was added lacks it: the default stands in)
        return cls(**{key: checkpoint[key] for key in _PLAIN_KEYS if key in checkpoint}, epoch_log=log)


_PLAIN_KEYS = tuple(f.name for f in fields(RunState) if f.name != "epoch_log")
