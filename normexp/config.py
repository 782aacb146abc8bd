"""Start-up validation of the whole configuration, run by Hydra before any folder or data is touched, and of
the run folders (normexp.runguard) before Hydra writes into them."""

from __future__ import annotations

import copy
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from normexp import data, logger, norm, optim, runguard, trainer
from normexp.analysis import runfiles, sweeps
from normexp.analysis.runfiles import RunFolderError
from normexp.model import LeNet

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
log = logging.getLogger("normexp")


def problems(cfg: DictConfig, fetch: bool = False) -> list[str]:
    """Every invalid value of the configuration, one line each naming the key, the value and what is allowed.
    With ``fetch``, missing data is downloaded (where ``data.download`` allows) once everything else is valid,
    so that the batch size can be checked against the training split."""
    found = norm.validate(cfg.norm, LeNet.CHANNELS) + optim.validate(cfg.optim) + trainer.validate(cfg.train)
    found += logger.validate(cfg.get("logger")) + trainer.validate_seeds(cfg)
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


def check_command_line(args: list[str]) -> None:
    """One line, exit 2, for a command line Hydra would refuse with a many-line message: an unknown choice
    (``norm=foo``) or a key the config lacks or cannot take (``norm.groups=2`` with ``norm=bn``)."""
    exit_with(unknown_choices(args) or missing_keys(args))


def compose_config(overrides: list[str], hydra: bool = False) -> DictConfig:
    """The configuration Hydra composes from ``conf/`` for these overrides (with Hydra's own node where
    asked): for the commands that run without Hydra's entry (normexp.tune, scripts/bench.py)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def missing_keys(args: list[str]) -> list[str]:
    """The override Hydra cannot apply because the composed config lacks its key, as one line (see
    ``missing_key_line``): the config composed as Hydra will (in a sweep without the swept values, whose
    jobs are composed one by one at start-up), only where some override sets a dotted key."""
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        return []
    multirun = any(a in ("-m", "--multirun") for a in args)
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
    except HydraException:
        return []  # a syntax error: Hydra's own message says where
    kept = [o for o in overrides if not (multirun and o.is_sweep_override())]
    if not any(o.type == OverrideType.CHANGE and "." in o.key_or_group and o.package is None
               and not o.key_or_group.startswith("hydra") for o in kept):
        return []
    lines = [o.input_line for o in kept]
    try:
        compose_config(lines)
    except HydraException as err:
        line = missing_key_line(err, lines, lambda bad: compose_config([x for x in lines if x != bad]))
        return [line] if line else []
    return []


def missing_key_line(err: HydraException, lines: list[str], compose_without: Callable[[str], DictConfig]
                     ) -> str | None:
    """One line for Hydra's refusal of an override whose key the config lacks: a key of another choice of
    its group (``norm.groups=2`` with ``norm=bn``), or a new key inside a mapping
    (``train.max_epochs_by_batch_size={4:0}``); None for other errors. ``compose_without(line)``: the config
    without that override, to name what the group has."""
    full_key = getattr(err.__cause__, "full_key", None)
    parsed = OverridesParser.create().parse_overrides(lines)
    matching = [o for o in parsed if full_key and (full_key + ".").startswith(o.key_or_group + ".")]
    if not matching:
        return None
    bad = max(matching, key=lambda o: len(o.key_or_group))  # norm.groups=2 rather than norm=bn
    line, key = bad.input_line, bad.key_or_group
    if full_key != key:
        return (f"{line}: {key} is a mapping whose keys Hydra keeps fixed under key=value; write ++{line} "
                "to add to it")
    parent, _, leaf = key.rpartition(".")
    try:
        node = OmegaConf.select(compose_without(line), parent) if parent else None
    except HydraException:
        node = None
    if (CONF_DIR / parent).is_dir() and OmegaConf.is_dict(node):
        having = [p.stem for p in sorted((CONF_DIR / parent).glob("*.yaml"))
                  if leaf in (yaml.safe_load(p.read_text()) or {})]
        name = f"{parent}={node.name}" if "name" in node else parent
        with_it = f"; the {parent} choices with it: {', '.join(having)}" if having else ""
        return f"{line}: {name} has no key {leaf} (its keys: {', '.join(node)}){with_it}"
    return f"{line}: no such key{f' in {parent}' if parent else ''}; to add one, write +{line}"


def sweep_problems(config: DictConfig, job_configs: list[DictConfig] | None = None,
                   notes: dict[str, list[str]] | None = None) -> list[str]:
    """Problems of every job of a basic sweep, found before the sweep folder is made or any job starts;
    then, where the values are fine, of the jobs' folders (``sweep_folder_problems``). The jobs' configs
    are appended to ``job_configs``."""
    jobs = sweeps.sweep_jobs(config)
    if jobs is None:
        return []
    OmegaConf.select(config, "hydra.sweep.dir")  # resolved now: the jobs' configs get the same ${now:...}
    loader = GlobalHydra.instance().config_loader()
    found, job_configs = [], [] if job_configs is None else job_configs
    for job in jobs:
        try:
            job_config = loader.load_sweep_config(config, job)
        except HydraException as err:
            line = missing_key_line(err, job, lambda bad, job=job: loader.load_sweep_config(
                config, [x for x in job if x != bad]))
            reason = str(err).split("Config search path")[0]  # Hydra's message, without its search path
            found.append(line or f"{' '.join(job)}: {' '.join(reason.split())}")
            continue
        found += problems(job_config, fetch=True)
        job_configs.append(job_config)
    found += seeds_swept_twice(job_configs)
    return found or sweep_folder_problems(job_configs, {} if notes is None else notes)


def seeds_swept_twice(job_configs: list[DictConfig]) -> list[str]:
    """train.seeds beside a sweep of several train.seed values would train each seed once per value."""
    packed = [c for c in job_configs if c.train.get("seeds") is not None]
    swept = sorted({c.train.seed for c in packed})
    if len(swept) < 2:
        return []
    chosen = OmegaConf.to_container(packed[0].train.seeds)
    listed = ", ".join(map(str, swept))
    return [f"train.seeds={chosen}: the sweep also sweeps train.seed ({listed}), and each job trains "
            "every seed of train.seeds; sweep train.seed or set train.seeds, not both"]


def task_config(config: DictConfig) -> DictConfig:
    """The run's config as the task will get it (Hydra's node removed), resolved."""
    previous = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(config)  # for ${hydra:...} in the run's keys
    try:
        cfg = copy.deepcopy(config)
        with read_write(cfg), open_dict(cfg):
            del cfg["hydra"]
        return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    finally:
        HydraConfig.instance().cfg = previous


def prepare_folder(run_dir: Path, cfg: DictConfig, where: str, notes: dict[str, list[str]]) -> None:
    """Before Hydra writes into ``run_dir``: it holds nothing or this run (``train.resume``), or its results
    are moved aside, .hydra/ and the log with them (``train.resume=false``); raises RunFolderError. For a
    job of ``train.seeds``, each seed's folder below it. What was done in each folder: ``notes[folder]``."""
    for folder, one in run_folders(run_dir, cfg):
        done = notes.setdefault(str(folder), [])
        if one.train.resume:
            runguard.check(folder, runguard.marker(one), done, where)  # refuses links out of the folder
        else:
            runfiles.check_links(folder)
            runguard.start_over(folder, with_logs=True, notes=done)


def run_folders(job_dir: Path, cfg: DictConfig) -> list[tuple[Path, DictConfig]]:
    """The run folders of a job and their configs: the job's own, or one per seed of ``train.seeds``."""
    if cfg.train.get("seeds") is None:
        return [(job_dir, cfg)]
    chosen = [int(s) for s in cfg.train.seeds]
    dirs = trainer.run_dirs(job_dir, chosen)
    return [(d, trainer.seed_config(cfg, s)) for d, s in zip(dirs, chosen, strict=True)]


def run_folder_problems(config: DictConfig, notes: dict[str, list[str]]) -> list[str]:
    """A single run's folder, locked for this process (which holds it until it ends: the trainer takes it
    again), then prepared; its problem as one line."""
    run_dir = Path(os.path.abspath(str(OmegaConf.select(config, "hydra.run.dir"))))
    made = runguard.first_missing(run_dir)
    try:
        runguard.acquire(run_dir)
        prepare_folder(run_dir, task_config(config), "hydra.run.dir", notes)
        runguard.probe(run_dir, "hydra.run.dir")
    except RunFolderError as err:
        runguard.release(run_dir)
        runguard.remove_made(made)
        return [str(err)]
    return []


def sweep_dir_problems(config: DictConfig) -> list[str]:
    """The sweep folder made and written to, before the launcher makes it: one line where it cannot be."""
    sweep_dir = Path(os.path.abspath(str(OmegaConf.select(config, "hydra.sweep.dir"))))
    made = runguard.first_missing(sweep_dir)
    try:
        runguard.probe(sweep_dir, "hydra.sweep.dir")
    except RunFolderError as err:
        runguard.remove_made(made)
        return [str(err)]
    return []


def job_folder(job_config: DictConfig, num: int) -> Path:
    """Where Hydra's launcher runs job ``num`` of a basic sweep."""
    with read_write(job_config.hydra.job), open_dict(job_config.hydra.job):
        job_config.hydra.job.id, job_config.hydra.job.num = num, num  # as the launchers set them
    sweep = job_config.hydra.sweep
    return Path(os.path.abspath(os.path.join(str(sweep.dir), str(sweep.subdir))))


def sweep_folder_problems(job_configs: list[DictConfig], notes: dict[str, list[str]]) -> list[str]:
    """Each job folder that exists already, prepared as a single run's (under its lock, released at once); a
    folder another process holds is left to the job, which skips it if it is still held then."""
    found = []
    for num, job_config in enumerate(job_configs):
        run_dir = job_folder(job_config, num)
        if not run_dir.is_dir():
            continue
        try:
            with runguard.locked(run_dir):
                prepare_folder(run_dir, task_config(job_config), "hydra.sweep.dir", notes)
        except runguard.Busy:
            continue
        except RunFolderError as err:
            found.append(str(err))
    return found


class ValidateConfig(Callback):
    """Checks a single run before Hydra makes its folder, and every job of a sweep before the first starts
    (under a sweeper other than Hydra's basic one, whose jobs cannot be listed up front: each job as it
    starts); then the run folders, before Hydra writes .hydra/ and the log into them (Hydra writes those
    before ``on_job_start``: a job of another sweeper has its folder checked by the trainer)."""

    def __init__(self) -> None:
        self.notes: dict[str, list[str]] = {}  # run folder -> what start-up did there, for the run's log

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        exit_with(problems(config, fetch=True))
        exit_with(run_folder_problems(config, self.notes))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        job_configs: list[DictConfig] = []
        exit_with(sweep_problems(config, job_configs, self.notes))
        exit_with(sweep_dir_problems(config))
        launcher = str(config.hydra.launcher.get("_target_", ""))
        if job_configs and launcher.endswith(STOPPABLE_LAUNCHERS):
            runguard.begin_sweep([folder / runguard.LOCK for i, c in enumerate(job_configs)
                                  for folder, _ in run_folders(job_folder(c, i), c)])

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """In the job's process (a sweep's launcher carries this callback there), once Hydra has opened the
        job's log: what start-up did in the job's folders goes into it."""
        runguard.guard_worker()
        job_dir = Path(os.path.abspath(str(config.hydra.runtime.output_dir)))
        for folder in [f for f in self.notes if Path(f) == job_dir or job_dir in Path(f).parents]:
            for line in dict.fromkeys(self.notes.pop(folder)):
                log.info(line)
        if config.hydra.mode == RunMode.MULTIRUN and not sweeps.is_basic_sweeper(config):
            exit_with(problems(config))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        signum = runguard.end_sweep()
        if signum is not None:
            stop_workers()
            print(f"normexp: stopped by signal {signum}: the running jobs saved a checkpoint and no other "
                  "job started; run the same command again to resume", file=sys.stderr)
            sys.exit(128 + signum)


STOPPABLE_LAUNCHERS = ("BasicLauncher", "JoblibLauncher", "LocalLauncher")  # jobs: here, or child processes


def stop_workers() -> None:
    """joblib's idle workers ended now (they would wait for more work until the interpreter exits)."""
    if "joblib.externals.loky.reusable_executor" in sys.modules:  # a joblib sweep ran here
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor(reuse=True).shutdown(wait=True)
