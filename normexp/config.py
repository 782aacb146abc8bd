"""Start-up validation of the whole configuration, run by Hydra before any folder or data is touched."""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from normexp import data, norm, optim, train
from normexp.model import LeNet


def problems(cfg: DictConfig) -> list[str]:
    """Every invalid value of the configuration, one line each naming the key, the value and what is allowed."""
    found = norm.validate(cfg.norm, LeNet.CHANNELS) + optim.validate(cfg.optim) + train.validate(cfg.train)
    bs = cfg.batch_size
    if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
        found.append(f"batch_size={bs!r}: must be an integer >= 1")
    data_problems = data.validate(cfg.data)
    found += data_problems
    if not data_problems and not found:
        n_train = data.train_size(cfg.data)
        if n_train is not None and bs > n_train:
            found.append(f"batch_size={bs}: larger than the {n_train} examples of the training split")
    return found


def exit_if_invalid(cfg: DictConfig) -> None:
    found = problems(cfg)
    if found:
        for line in found:
            print(f"normexp: error: {line}", file=sys.stderr)
        sys.exit(2)


class ValidateConfig(Callback):
    """Checks a single run before Hydra makes its folder, and each job of a sweep before it starts."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        exit_if_invalid(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        exit_if_invalid(config)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            exit_if_invalid(config)
