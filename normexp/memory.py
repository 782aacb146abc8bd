"""A process's peak memory, as each run records it in summary.json."""

from __future__ import annotations

import sys


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
