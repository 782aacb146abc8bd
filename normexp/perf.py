"""Thread count and CPU convolution backend for a run, from its batch size and how many jobs share the box.

Measured with ``scripts/bench.py`` on a 2-core machine: tiny batches are dominated by per-operation overhead,
where one thread and PyTorch's native convolutions (oneDNN off) are fastest; large batches are dominated by
arithmetic, where oneDNN on all the job's cores is fastest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

# Largest batch size still run with one thread and oneDNN off when "auto" (chosen with scripts/bench.py).
SMALL_BATCH_MAX = 16


@dataclass(frozen=True)
class CpuSettings:
    threads: int
    mkldnn: bool


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parallel_jobs() -> int:
    """How many jobs of this sweep the launcher runs at once on this machine (1 outside a sweep)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        launcher = HydraConfig.get().launcher
    except (ImportError, ValueError):
        return 1
    target = str(launcher.get("_target_", ""))
    if "joblib" in target.lower():
        n_jobs = launcher.get("n_jobs", -1)
        return available_cores() if n_jobs is None or n_jobs < 1 else n_jobs
    if "LocalLauncher" in target:
        return int(launcher.get("tasks_per_node", 1) or 1) * int(launcher.get("array_parallelism", 1) or 1)
    return 1


def choose(batch_size: int, device: torch.device, threads="auto", mkldnn="auto", jobs: int = 1) -> CpuSettings:
    """The settings for a run; explicit values win over the rule."""
    small = device.type == "cpu" and batch_size <= SMALL_BATCH_MAX
    cores = max(1, available_cores() // max(1, jobs))
    return CpuSettings(
        threads=int(threads) if threads != "auto" else (1 if small else cores),
        mkldnn=bool(mkldnn) if mkldnn != "auto" else not small,
    )


def apply(settings: CpuSettings) -> None:
    torch.set_num_threads(settings.threads)
    torch.backends.mkldnn.enabled = settings.mkldnn
