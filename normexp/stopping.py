"""A sweep stopped by a signal to its main process (SIGTERM, or SIGINT: Ctrl-C), under Hydra's basic or joblib
launcher or submitit_local: every running job finishes its step, saves an interrupted checkpoint and ends;
no job starts after the signal; the sweep exits with 128 + the signal, and the same command resumes it.

The main process (``begin_sweep``, from the start-up callback) turns the signals into a request written to a
stop file, which the jobs' processes (they inherit its name in the environment) read with ``requested``, and
forwards the signal to the processes below it that hold a job's folder (a run's trainer turns it into a stop
after the step). A worker keeps a handler of its own between runs (``guard_worker``), so that a forwarded
signal or a Ctrl-C to the whole process group never kills a worker outside a run.
"""

from __future__ import annotations

import atexit
import os
import signal
import tempfile
from pathlib import Path
from typing import Any

ENV = "NORMEXP_SWEEP_STOP"  # "<main pid>:<stop file>", set by the sweep's main process
SIGNALS = (signal.SIGTERM, signal.SIGINT)

_lock_files: list[Path] = []  # main process: the jobs' lock files, naming the processes that run them
_previous: dict[int, Any] = {}


def _spec() -> tuple[int, Path] | None:
    value = os.environ.get(ENV)
    if not value or ":" not in value:
        return None
    pid, _, path = value.partition(":")
    return (int(pid), Path(path)) if pid.isdigit() else None


def begin_sweep(lock_files: list[Path]) -> None:
    """In the sweep's main process, before any job starts: the stop file named for the jobs, the handlers."""
    global _lock_files
    path = Path(tempfile.gettempdir()) / f"normexp-stop-{os.getpid()}"
    path.unlink(missing_ok=True)
    os.environ[ENV] = f"{os.getpid()}:{path}"
    _lock_files = list(lock_files)
    for sig in SIGNALS:
        _previous[sig] = signal.signal(sig, _on_signal)
    atexit.register(path.unlink, missing_ok=True)  # also where a job ends the sweep with sys.exit


def _on_signal(signum: int, frame: Any) -> None:
    spec = _spec()
    if spec is None:
        return
    if not spec[1].exists():
        spec[1].write_text(str(signum))
    for pid in _workers_running_jobs():
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _workers_running_jobs() -> set[int]:
    """The processes named in the jobs' lock files that descend from this one: a joblib worker (a child), a
    submitit_local job (a child of submitit's controller), or a worker that ran a job before."""
    pids = set()
    for path in _lock_files:
        try:
            first = path.read_text().split()[0]
        except (OSError, IndexError):
            continue
        if first.isdigit() and int(first) != os.getpid() and _descends_from_here(int(first)):
            pids.add(int(first))
    return pids


def _descends_from_here(pid: int) -> bool:
    for _ in range(8):  # the launchers' process trees are shallow
        parent = _parent_of(pid)
        if parent is None or parent <= 1:
            return False
        if parent == os.getpid():
            return True
        pid = parent
    return False


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state; the name may hold spaces


def requested() -> int | None:
    """The signal that asked this process's sweep to stop, if one did (None outside a sweep)."""
    spec = _spec()
    if spec is None or not spec[1].exists():
        return None
    text = spec[1].read_text().strip()
    return int(text) if text.isdigit() else signal.SIGTERM


def in_worker() -> bool:
    """Whether this process runs jobs for a sweep's main process elsewhere (a joblib worker)."""
    spec = _spec()
    return spec is not None and spec[0] != os.getpid()


def guard_worker() -> None:
    """In a worker: the stop signals only noted between runs (a run's own handler has them in a run)."""
    if in_worker() and signal.getsignal(signal.SIGTERM) is not _noted:
        for sig in SIGNALS:
            signal.signal(sig, _noted)


def _noted(signum: int, frame: Any) -> None:
    """A worker's handler outside a run: the main process has written the stop request already."""


def end_sweep() -> int | None:
    """In the main process after the last job: the handlers from before, the stop file gone; the signal that
    stopped the sweep, if any."""
    signum = requested()
    spec = _spec()
    if spec is not None and spec[0] == os.getpid():
        spec[1].unlink(missing_ok=True)
        os.environ.pop(ENV, None)
        for sig, handler in _previous.items():
            signal.signal(sig, handler)
        _previous.clear()
    return signum
