"""Train the writeup's LeNet on MNIST with one normalization layer at one batch size: the command line.

    python -m normexp.train norm=gn batch_size=4
    python -m normexp.train -m experiment=mcn_sweep

The run itself is ``normexp.trainer``'s; this is Hydra's entry, and the one place that turns how a run ended
into an exit status.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from normexp import data
from normexp.config import exit_if_unknown_choice
from normexp.trainer import Trainer

log = logging.getLogger("normexp")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        outcome = Trainer(cfg, run_dir).fit()
    except data.DataError as err:
        log.error("failed: %s", err)  # the last line of the run's train.log, for normexp.status
        print(f"normexp: error: {err}", file=sys.stderr)
        sys.exit(1)
    except Exception as err:
        log.error("failed: %s: %s", type(err).__name__, err)
        raise
    result = outcome.summary
    if outcome.status == "completed" and result["final_val_error"] is not None:
        log.info("completed: final val error %.4f (best %.4f at epoch %d)", result["final_val_error"],
                 result["best_val_error"], result["best_epoch"])
    if outcome.exit_code:
        sys.exit(outcome.exit_code)


if __name__ == "__main__":
    exit_if_unknown_choice(sys.argv[1:])  # one line for norm=foo, before Hydra's many-line message
    main()
