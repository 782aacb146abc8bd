"""What a sweep's Hydra launcher says about the machine a job runs on: how many jobs share it."""

from __future__ import annotations

from normexp import perf


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
        return perf.available_cores() if n_jobs is None or n_jobs < 1 else n_jobs
    if "LocalLauncher" in target:
        # submitit's local launcher starts every job of the sweep at once: the box is shared by as many jobs
        # as it has cores, or by as many as fit when each asks for cpus_per_task
        cpus = launcher.get("cpus_per_task")
        return max(1, perf.available_cores() // cpus) if cpus else perf.available_cores()
    return 1
