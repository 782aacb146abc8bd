"""normexp's Optuna sweeper for Hydra: ``python -m normexp.train -m hydra/sweeper=optuna 'optim.lr=tag(log,
interval(1e-4,0.1))'``.

Optuna proposes each trial (its ask/tell interface, Optuna 3 or newer), Hydra's launcher runs it as a job of
the sweep (in its own folder, named by its overrides like every normexp job) and the job's return value, the
final validation error, goes back to the study. The study lives in SQLite inside the sweep folder
(``optuna.db``), so that the same command run again continues it: the trials already finished count towards
``n_trials`` and are never run again; a trial a stopped sweep left running is proposed again with the same
values, so its job resumes from its checkpoint. A diverged run returns 1.0, a run that failed is a failed
trial: neither stops the study. Why normexp has its own sweeper, not hydra-optuna-sweeper: docs/running.md.

Search spaces use Hydra's sweep grammar, as in hydra-optuna-sweeper: ``choice(a,b)``, ``range(1,4)``,
``interval(0.1,1)``, ``tag(log,interval(1e-4,0.1))``; a plain value is fixed for every trial.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("normexp")
STUDY_FILE = "optuna.db"


def _optuna():
    try:
        import optuna
    except ImportError:
        raise SystemExit('normexp: error: hydra/sweeper=optuna needs Optuna: pip install -e ".[optuna]"'
                         ) from None
    return optuna


def distribution(override: Override) -> Any:
    """The Optuna distribution of one sweep override (choice, range or interval, ``log`` tag for a log
    scale), or None for a plain value."""
    optuna = _optuna()
    if not override.is_sweep_override():
        return None
    value = override.value()
    if isinstance(value, ChoiceSweep):
        return optuna.distributions.CategoricalDistribution(list(override.sweep_iterator(transformer=str)))
    if isinstance(value, RangeSweep):
        return optuna.distributions.CategoricalDistribution(list(override.sweep_iterator(transformer=str)))
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return optuna.distributions.IntDistribution(value.start, value.end, log=log_scale)
        return optuna.distributions.FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ValueError(f"{override.input_line}: allowed: choice(...), range(...) or interval(...)")


class OptunaSweeper(Sweeper):
    """Hydra's sweeper interface over an Optuna study stored in the sweep folder."""

    def __init__(self, direction: str = "minimize", study_name: str = "normexp", storage: str | None = None,
                 n_trials: int = 20, n_jobs: int = 1, sampler: Any = None, params: Any = None) -> None:
        self.direction, self.study_name, self.storage = direction, study_name, storage
        self.n_trials, self.n_jobs = int(n_trials), int(n_jobs)
        self.sampler = sampler
        self.params = dict(params or {})

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def make_sampler(self, trials_so_far: int) -> Any:
        """The configured sampler; its seed offset by the trials the study already has, so that a continued
        study draws new proposals, the same ones every time it is continued from the same point."""
        if not self.sampler:
            return None
        config = OmegaConf.to_container(self.sampler, resolve=True)
        if config.get("seed") is not None:
            config["seed"] = int(config["seed"]) + trials_so_far
        return instantiate(config)

    def space(self, arguments: list[str]) -> tuple[dict[str, Any], list[str]]:
        """The distributions to search (name -> distribution) and the overrides fixed for every trial."""
        lines = [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        distributions, fixed = {}, []
        for override in OverridesParser.create().parse_overrides(lines):
            found = distribution(override)
            if found is None:
                fixed.append(override.input_line)
            else:
                distributions[override.get_key_element()] = found
        return distributions, fixed

    def sweep(self, arguments: list[str]) -> None:
        optuna = _optuna()
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        distributions, fixed = self.space(arguments)
        storage = self.storage or f"sqlite:///{(sweep_dir / STUDY_FILE).resolve()}"
        study = optuna.create_study(study_name=self.study_name, direction=self.direction, storage=storage,
                                    load_if_exists=True)
        study.sampler = self.make_sampler(len(study.trials))
        stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        for trial in stale:  # left running by a stopped sweep: proposed again, so its job resumes
            study.enqueue_trial(trial.params, skip_if_exists=False)
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        done = len(study.get_trials(deepcopy=False, states=finished))
        if done:
            log.info("Optuna study %s: %d of %d trials already finished (%s)", self.study_name, done,
                     self.n_trials, sweep_dir / STUDY_FILE)
        while done < self.n_trials:
            trials = [study.ask(distributions) for _ in range(min(self.n_jobs, self.n_trials - done))]
            jobs = [[*fixed, *(f"{k}={v}" for k, v in trial.params.items())] for trial in trials]
            returns = self.launcher.launch(jobs, initial_job_idx=trials[0].number)
            stopping = False
            for trial, job in zip(trials, returns, strict=True):
                try:
                    value = job.return_value  # a failed job's exception is raised here
                except Exception as err:  # failed: a result of the study, which goes on
                    log.warning("trial %d failed: %s: %s", trial.number, type(err).__name__, err)
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    done += 1
                    continue
                if value is None:  # interrupted or not started: the sweep is stopping
                    stopping = True  # left running in the study: the next run proposes it again
                    continue
                study.tell(trial, float(value))
                done += 1
            if stopping:
                return
        best = study.best_trial if any(t.value is not None for t in study.trials) else None
        if best is not None:
            log.info("Optuna study %s: best value %.4f, trial %d: %s", self.study_name, best.value,
                     best.number, best.params)
