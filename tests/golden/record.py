"""The golden record: short fixed-seed runs on tiny written data, as metrics rows, with the CPU they ran on.

    python tests/golden/record.py     # writes tests/golden/short_runs.json

Record it only on purpose (it is what a change that must keep the numbers is checked against).
"""

from __future__ import annotations

import csv
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECORD = HERE / "short_runs.json"
sys.path.insert(0, str(HERE.parent))

NORMS = ("none", "bn", "brn", "gn", "ln", "in")
# a record of the CPU's kernels, also where a GPU is there: a GPU's kernels reduce in other orders (on an
# H200, with normexp's exact float32, batch norm at batch size 40 ended 1.0e-3 relative away, just above the
# CPU-to-CPU bound of tests/test_trainer.py; every other case within it)
COMMON = ["train.device=cpu", "train.threads=1", "train.progress=false", "train.seed=3"]
# 200 training digits: batch size 8 (native convolutions) for 25 steps, batch size 40 (oneDNN, channels-last)
# for 15, and batch renorm with a per-step schedule that moves during the run
CASES = {
    **{f"{name}-bs8": [f"norm={name}", "batch_size=8", "train.epochs=1"] for name in NORMS},
    **{f"{name}-bs40": [f"norm={name}", "batch_size=40", "train.epochs=3"] for name in NORMS},
    "brn-bs40-epoch-schedule": ["norm=brn", "batch_size=40", "train.epochs=3", "norm.schedule.warmup=1",
                                "norm.schedule.ramp=1"],
    "brn-bs16-step-schedule": ["norm=brn", "batch_size=16", "train.epochs=2", "norm.schedule.unit=step",
                               "norm.schedule.warmup=4", "norm.schedule.ramp=12"],
}
COLUMNS = ("epoch", "step", "lr", "r_max", "d_max", "train_loss", "train_error", "val_loss", "val_error")


def run_case(overrides: list[str], data_root: Path, run_dir: Path) -> list[dict]:
    """One golden run in this process; its metrics rows without the timing columns."""
    from helpers import compose_config

    from normexp.analysis import runfiles
    from normexp.trainer import Trainer

    cfg = compose_config([f"data.root={data_root}", "data.download=false", *COMMON, *overrides])
    run_dir.mkdir(parents=True, exist_ok=True)
    Trainer(cfg, run_dir, jobs=1).fit()
    with open(run_dir / runfiles.METRICS, newline="") as f:
        return [{key: _number(row[key]) for key in COLUMNS} for row in csv.DictReader(f)]


def _number(text: str) -> int | float | None:
    """A metrics.csv cell as written (Python's shortest round-trip repr), exactly."""
    if text == "":
        return None
    return int(text) if text.lstrip("-").isdigit() else float(text)


def main() -> None:
    from helpers import write_mnist

    from normexp import perf

    with tempfile.TemporaryDirectory() as tmp:
        root = write_mnist(Path(tmp) / "data")
        runs = {case: run_case(args, root, Path(tmp) / case) for case, args in CASES.items()}
    RECORD.write_text(json.dumps({"cpu": perf.cpu_fingerprint(), "runs": runs}, indent=1) + "\n")
    print(f"wrote {RECORD}: {len(runs)} runs")


if __name__ == "__main__":
    main()
