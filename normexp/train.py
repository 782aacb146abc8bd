"""Train the writeup's LeNet on MNIST with one normalization layer at one batch size: the command line.

    python -m normexp.train norm=gn batch_size=4
    python -m normexp.train -m experiment=mcn_sweep

The run itself is ``normexp.trainer``'s; this is Hydra's entry, and the one place that turns how a run ended
into an exit status and into the value it returns to a Hydra sweeper (``hydra/sweeper=optuna``): the final
validation error (the mean over the seeds of a job of ``train.seeds``), ``DIVERGED`` for a run that diverged.
"""

from __future__ import annotations

import signal
import sys


def stopped_while_starting(signum: int, frame: object) -> None:
    """SIGTERM or Ctrl-C before a run or a sweep has its own handler (while torch and the config load)."""
    print(f"normexp: stopped by signal {signum} while starting, before any training: run the same command "
          "again to start", file=sys.stderr)
    sys.exit(128 + signum)


if __name__ == "__main__":  # before the imports below, which take a while
    for _signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signum, stopped_while_starting)

import logging  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from normexp import data, perf, runguard, trainer, tune  # noqa: E402
from normexp.analysis.runfiles import RunFolderError  # noqa: E402
from normexp.config import check_command_line  # noqa: E402
from normexp.trainer import Outcome  # noqa: E402

log = logging.getLogger("normexp")
DIVERGED = 1.0  # what a diverged run returns to a sweeper: every digit wrong, worse than chance (0.9)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if runguard.requested() is not None:
        return not_started(runguard.requested())
    try:
        outcomes = fit(cfg, run_dir)
    except data.DataError as err:
        log.error("failed: %s", err)  # the last line of the run's train.log, for normexp.analysis.status
        print(f"normexp: error: {err}", file=sys.stderr)
        sys.exit(1)
    except runguard.Busy as err:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            print(f"normexp: error: {err}", file=sys.stderr)
            sys.exit(2)
        # another copy of the sweep has this job: leave it to that one (no log line: the log is that run's)
        print(f"normexp: note: skipped: {err}", file=sys.stderr)
        return
    except RunFolderError as err:
        log.error("failed: %s", err)
        print(f"normexp: error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        log.error("failed: %s: %s", type(err).__name__, err)
        raise
    for outcome in outcomes:
        result = outcome.summary
        if outcome.status == "completed" and result["final_val_error"] is not None:
            log.info("completed%s: final val error %.4f (best %.4f at epoch %d)",
                     f" (seed {result['seed']})" if len(outcomes) > 1 else "", result["final_val_error"],
                     result["best_val_error"], result["best_epoch"])
    exit_code = max((o.exit_code for o in outcomes), default=0)
    if exit_code and not runguard.in_worker():  # a worker's sweep exits with it in its main process
        sys.exit(exit_code)
    return objective(outcomes)


def objective(outcomes: list[Outcome]) -> float | None:
    """The value a sweeper minimizes: the mean final validation error over the runs, DIVERGED for a run
    that diverged; None where a run did not end (interrupted: the sweep is stopping)."""
    values = []
    for outcome in outcomes:
        if outcome.status == "diverged" or outcome.summary.get("final_val_error") is None:
            values.append(DIVERGED if outcome.status == "diverged" else None)
        else:
            values.append(float(outcome.summary["final_val_error"]))
    return None if not values or None in values else sum(values) / len(values)


def fit(cfg: DictConfig, run_dir: Path) -> list[Outcome]:
    """The run, or each seed of a job of ``train.seeds`` (in its folder below the job's), with CPU settings
    measured first where this machine has none for them (``tune.first_use``)."""
    for line in tune.first_use(cfg, perf.parallel_jobs()):
        log.info(line)
    if cfg.train.get("seeds") is None:
        return [trainer.Trainer(cfg, run_dir).fit()]
    hydra = HydraConfig.get()
    return trainer.fit_seeds(cfg, run_dir, list(hydra.overrides.task), run_dir / str(hydra.output_subdir))


def not_started(signum: int) -> None:
    """A job of a sweep asked to stop before it started: nothing done; a sweep run in this process ends."""
    if not runguard.in_worker():
        print(f"normexp: stopped by signal {signum} between two jobs: the others did not start; run the same "
              "command again to resume", file=sys.stderr)
        sys.exit(128 + signum)


if __name__ == "__main__":
    check_command_line(sys.argv[1:])  # one line for norm=foo or a missing key, before Hydra's message
    main()
