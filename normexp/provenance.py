"""Where a run's numbers came from: normexp's version and commit, torch, oneDNN, the CPU and the GPU that
trained it, if any, and the memory it took. A run records one entry per process that trained it (a resume on
another machine adds one), so that shipped results say what made them."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from normexp import perf


def _git(*args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=1)
def source_commit() -> str | None:
    """The git commit of normexp's source tree, ``-dirty`` where its code or configs (not its results) have
    uncommitted changes; None outside git."""
    head = _git("rev-parse", "HEAD")
    if head is None or head.returncode != 0:
        return None
    changed = _git("diff", "--quiet", "HEAD", "--", ":/normexp", ":/conf", ":/pyproject.toml")
    return head.stdout.strip() + ("-dirty" if changed is None or changed.returncode != 0 else "")


def current(device: torch.device | None = None) -> dict[str, Any]:
    """This process's entry, for a run on ``device`` (a GPU's name is recorded too)."""
    cpu = perf.cpu_fingerprint()
    entry = {"normexp": perf.normexp_version(), "commit": source_commit(), "torch": cpu["torch"],
             "onednn": cpu["onednn"], "cpu": cpu["model"], "cores": cpu["cores"]}
    if device is not None and device.type == "cuda":
        entry["gpu"] = torch.cuda.get_device_name(device)
    return entry


def extended(previous: list[dict[str, Any]] | None,
             device: torch.device | None = None) -> list[dict[str, Any]]:
    """The entries of a run on ``device`` resumed from ``previous`` (None: a new run), this process's added
    where it differs from the last."""
    entries = list(previous or [])
    now = current(device)
    return entries if entries and entries[-1] == now else [*entries, now]


def peak_rss_mb() -> float:
    """This process's largest resident set so far, in MB: Linux's VmHWM, or getrusage's maxrss elsewhere
    (on Linux a child's maxrss also counts the resident set its parent had when it forked)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        import resource

        per_mb = 2**20 if sys.platform == "darwin" else 2**10  # macOS reports bytes, others kilobytes
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / per_mb
