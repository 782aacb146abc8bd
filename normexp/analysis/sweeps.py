"""The sweeps (owns ``conf/experiment``: each preset is a Hydra multirun of the basic sweeper): the jobs of a
sweep, listed exactly as Hydra's basic sweeper will launch them, and what each will train (its folder, norm,
batch size, seeds, epochs and protocol), without importing torch.

The one place where normexp uses Hydra's internals (``hydra._internal``): the basic sweeper's expansion of a
sweep into jobs and Hydra's name of a job's folder, which have no public form; tests/test_sweeps.py runs real
sweeps and checks that the jobs and folders listed here are the ones Hydra made, so a change in Hydra fails
there loudly."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

PACK_JOB_FILES = ".pack"  # a job of train.seeds keeps Hydra's files here: its seeds' folders hold .hydra/


def job_files(seeds: object) -> str:
    """hydra.output_subdir (conf/config.yaml): .hydra, or PACK_JOB_FILES for a job of ``train.seeds``."""
    return ".hydra" if seeds is None else PACK_JOB_FILES


OmegaConf.register_new_resolver("normexp_job_files", job_files, replace=True)


LONGEST_FIRST = "hydra_plugins.normexp_sweeper.LongestFirstSweeper"  # conf/hydra/sweeper/longest_first.yaml
LISTABLE = ("BasicSweeper", LONGEST_FIRST)  # sweepers whose jobs are known before the first starts


def is_basic_sweeper(config: DictConfig) -> bool:
    """Whether the sweep runs under Hydra's basic sweeper, or normexp's longest-first one: the sweepers whose
    jobs can be listed up front."""
    return str(config.hydra.sweeper.get("_target_", "")).endswith(LISTABLE)


def sweep_jobs(config: DictConfig) -> list[list[str]] | None:
    """The overrides of every job of a sweep in launch order: as Hydra's basic sweeper expands them, longest
    expected first under normexp's sweeper (``by_expected_time``); None for other sweepers (their jobs are
    checked one by one as they start)."""
    if not is_basic_sweeper(config):
        return None
    # Hydra's own expansion (a public static method of a class in its _internal package), so that the jobs
    # listed here are exactly the jobs it will launch
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    arguments = params + list(config.hydra.overrides.task)
    overrides = OverridesParser.create().parse_overrides(arguments)
    jobs = [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]
    longest_first = str(config.hydra.sweeper.get("_target_", "")) == LONGEST_FIRST
    return by_expected_time(config, jobs) if longest_first else jobs


# What an SGD step costs beyond its samples' arithmetic, in samples: at batch size 1 a step is mostly
# framework overhead (docs/performance.md: about 1,400 samples/s at batch size 1, 3,250 at 8 and 8,000 at 256
# on one core), so a job's time goes as its steps times (STEP_OVERHEAD + batch size)
STEP_OVERHEAD = 3.0


def expected_time(job: PlannedJob) -> float:
    """A job's expected training time relative to the sweep's other jobs (the same data): its epochs, times
    its seeds, times the cost of an epoch at its batch size in sample-equivalents per training example."""
    if not isinstance(job.batch_size, int) or job.batch_size < 1:
        return 0.0
    return (job.epochs or 0) * len(job.seeds) * (1 + STEP_OVERHEAD / job.batch_size)


def by_expected_time(config: DictConfig, jobs: list[list[str]]) -> list[list[str]]:
    """``jobs`` longest expected first (``expected_time``), ties in the sweep's own order: under a parallel
    launcher the longest jobs never start last and run alone at the end."""
    planned = _planned(config, jobs)
    order = sorted(range(len(jobs)), key=lambda i: -expected_time(planned[i]))
    return [jobs[i] for i in order]


# The two protocols of the writeup: its text (the learning rate scaled with the batch size, PyTorch's
# conventions) and its code (mcn_code_sweep); the settings that tell them apart, as "key: value"
PROTOCOLS = {
    "text": {"optim.scaling": "linear", "optim.factors": "none", "norm.moments": "pytorch"},
    "code": {"optim.scaling": "none", "optim.factors": "autonn", "norm.moments": "matconvnet"},
}


def protocol_settings(config: DictConfig | dict) -> dict[str, str]:
    """The values of the protocol keys in a run's configuration (a norm without moving statistics counts
    as following whichever protocol its other settings follow)."""
    optim, norm = config["optim"], config["norm"]
    return {"optim.scaling": optim["scaling"], "optim.factors": optim.get("factors", "none"),
            "norm.moments": norm.get("moments")}


def protocol_name(settings: dict[str, str | None]) -> str:
    """"text" or "code" where the settings are one protocol's, else the settings themselves."""
    for name, protocol in PROTOCOLS.items():
        if all(settings[k] in (v, None) for k, v in protocol.items()):
            return name
    return " ".join(f"{k.split('.')[-1]}={v}" for k, v in settings.items() if v is not None)


@dataclass(frozen=True)
class PlannedJob:
    """One job of a sweep as its multirun.yaml plans it."""

    name: str  # its folder's name (hydra.sweep.subdir)
    norm: str
    variant: str  # the norm, with the other settings the sweep varies (e.g. "gn groups=5")
    batch_size: Any
    seeds: tuple  # train.seeds (a folder per seed inside the job's), else (train.seed,)
    packed: bool  # a job of train.seeds
    epochs: int | None  # planned
    protocol: str  # protocol_name of its settings


def parse(overrides: list[str]) -> dict[str, Any]:
    """Each override's key (or group) and value, as Hydra parses them."""
    return {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(overrides)}


def job_dir_name(config: DictConfig, overrides: list[str], num: int) -> str:
    """The folder Hydra gives the job ``num`` of the sweep with these overrides (``hydra.sweep.subdir``)."""
    from hydra._internal.config_loader_impl import get_overrides_dirname

    od = OmegaConf.select(config, "hydra.job.config.override_dirname", default=None) or {}
    parsed = OverridesParser.create().parse_overrides(overrides)
    name = get_overrides_dirname(parsed, list(od.get("exclude_keys", [])), od.get("item_sep", ","),
                                 od.get("kv_sep", "="))  # Hydra's defaults where the record has none
    sweep = OmegaConf.select(config, "hydra.sweep", default=None) or {}
    subdir = OmegaConf.to_container(sweep, resolve=False).get("subdir") if sweep else None
    if subdir in (None, "${hydra.job.override_dirname}"):
        return name
    try:  # another subdir pattern, such as Hydra's default ${hydra.job.num}
        job = OmegaConf.merge(config, {"hydra": {"job": {"override_dirname": name, "num": num}}})
        return str(OmegaConf.select(job, "hydra.sweep.subdir", throw_on_resolution_failure=True))
    except OmegaConfBaseException:
        return name


def planned_epochs(epochs: Any, caps: Any, batch_size: Any) -> int | None:
    """``train.epochs`` capped by ``train.max_epochs_by_batch_size``, as the trainer plans them (the caps'
    batch sizes may be strings, as JSON keeps them)."""
    if not isinstance(epochs, int):
        return None
    caps = OmegaConf.to_container(caps) if OmegaConf.is_config(caps) else caps
    cap = ({int(k): v for k, v in caps.items() if str(k).isdigit()}.get(batch_size)
           if isinstance(caps, dict) else None)
    return epochs if cap is None else min(epochs, cap)


def planned_jobs(config: DictConfig) -> list[PlannedJob] | None:
    """Every job of the sweep in ``config`` (a multirun.yaml) in launch order; None for a sweeper whose jobs
    cannot be listed up front. A job's settings are its overrides, else the sweep's (so a norm's own
    defaults that the sweep's config does not show are not seen)."""
    jobs = sweep_jobs(config)
    return None if jobs is None else _planned(config, jobs)


def _planned(config: DictConfig, jobs: list[list[str]]) -> list[PlannedJob]:
    values = [parse(job) for job in jobs]
    keys = {k for v in values for k in v}
    varying = sorted(k for k in keys - {"norm", "batch_size", "train.seed"}
                     if len({json.dumps(v.get(k), default=str) for v in values}) > 1)
    planned = []
    for num, (job, v) in enumerate(zip(jobs, values, strict=True)):
        def get(key: str, v=v) -> Any:
            return v[key] if key in v else OmegaConf.select(config, key, default=None)

        norm, bs, seeds = str(v.get("norm", get("norm.name"))), get("batch_size"), get("train.seeds")
        variant = " ".join([norm, *(f"{k.removeprefix('norm.')}={v[k]}" for k in varying if k in v)])
        settings = {"optim": {"scaling": get("optim.scaling"), "factors": get("optim.factors") or "none"},
                    "norm": {"moments": get("norm.moments")}}
        planned.append(PlannedJob(
            job_dir_name(config, job, num), norm, variant, bs,
            (get("train.seed"),) if seeds is None else tuple(seeds), seeds is not None,
            planned_epochs(get("train.epochs"), get("train.max_epochs_by_batch_size"), bs),
            protocol_name(protocol_settings(settings))))
    return planned
