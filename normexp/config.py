"""Start-up validation of the whole configuration, run by Hydra before any folder or data is touched."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from normexp import data, logger, norm, optim, sweeps, trainer
from normexp.model import LeNet

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def problems(cfg: DictConfig, fetch: bool = False) -> list[str]:
    """Every invalid value of the configuration, one line each naming the key, the value and what is allowed.
    With ``fetch``, missing data is downloaded (where ``data.download`` allows) once everything else is valid,
    so that the batch size can be checked against the training split."""
    found = norm.validate(cfg.norm, LeNet.CHANNELS) + optim.validate(cfg.optim) + trainer.validate(cfg.train)
    found += logger.validate(cfg.get("logger"))
    bs = cfg.batch_size
    if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
        found.append(f"batch_size={bs!r}: must be an integer >= 1")
    found += data.validate(cfg.data)
    if found:
        return found
    try:
        if fetch:
            data.fetch(cfg.data)
        n_train = data.train_size(cfg.data)
    except data.DataError as err:
        return [str(err)]
    if n_train is not None and bs > n_train:
        found.append(f"batch_size={bs}: larger than the {n_train} examples of the training split")
    return found


def unknown_choices(args: list[str]) -> list[str]:
    """Config-group choices on the command line that name no file in ``conf/`` (``norm=foo``, or
    ``-m norm=gn,foo``), one line each. Hydra rejects these too, but with a many-line message (a traceback
    under HYDRA_FULL_ERROR). Command lines that change where configs come from are left to Hydra."""
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        return []
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
    except HydraException:
        return []  # a syntax error: Hydra's own message says where
    found = []
    for override in overrides:
        group = CONF_DIR / override.key_or_group
        if override.package is not None or override.is_delete() or not group.is_dir():
            continue
        try:
            if override.is_discrete_sweep():
                values = list(override.sweep_string_iterator())
            elif override.is_sweep_override():
                continue
            else:
                values = [override.get_value_element_as_str()]
        except HydraException:
            continue
        allowed = sorted(p.stem for p in group.glob("*.yaml"))
        found += [f"{override.key_or_group}={v!r}: unknown; allowed: {', '.join(allowed)}"
                  for v in values if v not in allowed]
    return found


def exit_with(found: list[str]) -> None:
    if found:
        for line in dict.fromkeys(found):  # a sweep repeats the same problem in many jobs
            print(f"normexp: error: {line}", file=sys.stderr)
        sys.exit(2)


def exit_if_unknown_choice(args: list[str]) -> None:
    exit_with(unknown_choices(args))


def sweep_problems(config: DictConfig) -> list[str]:
    """Problems of every job of a basic sweep, found before the sweep folder is made or any job starts."""
    jobs = sweeps.sweep_jobs(config)
    if jobs is None:
        return []
    loader = GlobalHydra.instance().config_loader()
    found = []
    for job in jobs:
        try:
            job_config = loader.load_sweep_config(config, job)
        except HydraException as err:
            reason = str(err).split("Config search path")[0]  # Hydra's message, without its search path
            found.append(f"{' '.join(job)}: {' '.join(reason.split())}")
            continue
        found += problems(job_config, fetch=True)
    return found


class ValidateConfig(Callback):
    """Checks a single run before Hydra makes its folder, and every job of a sweep before the first starts
    (under a sweeper other than Hydra's basic one, whose jobs cannot be listed up front: each job as it
    starts)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        exit_with(problems(config, fetch=True))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        exit_with(sweep_problems(config))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN and not sweeps.is_basic_sweeper(config):
            exit_with(problems(config))
