"""One experiment and one writer per run folder.

A run records what it is in normexp.json (``marker``: the result-relevant settings, the data files' sizes and
hashes, the protocol) and resumes, or counts as already finished, only where the folder's marker matches
(``check``); ``start_over`` (train.resume=false) moves a folder's results aside into ``replaced-<time>/``
before anything new is written; ``locked`` holds an flock on the folder's lock file for the life of a run.
Start-up (normexp.config) runs these before Hydra writes into the folder, the trainer again under the run's
lock. What they did in a folder (moved results aside, read an old folder) is appended to the ``notes`` list
the caller passes, for the run's log.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from normexp import data, perf
from normexp.analysis import runfiles, sweeps
from normexp.analysis.runfiles import RunFolderError

LOCK = runfiles.LOCK
REPLACED, STAGING = "replaced-", ".replacing-"  # start_over's folder, and the same while it fills
RESULT_FILES = (runfiles.MARKER, runfiles.SUMMARY, runfiles.METRICS, runfiles.CHECKPOINT)
START_OVER = ("run with train.resume=false to move the folder's results aside into replaced-<time>/ and "
              "start over")

_held: dict[str, list[int]] = {}  # folder -> [lock file descriptor, holders in this process]
log = logging.getLogger("normexp")


class Busy(RunFolderError):
    """The folder's lock is held by another process (``holder``: its "<pid> <host>")."""

    def __init__(self, run_dir: Path, holder: str) -> None:
        pid, _, host = holder.partition(" ")
        who = f"process {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")
        super().__init__(f"{run_dir}: in use by {who} (it holds {LOCK} there); wait for it to end, or use "
                         "another folder")
        self.holder = holder


def marker(cfg: DictConfig) -> dict[str, Any]:
    """What a run of ``cfg`` (the task's config, without Hydra's node) is, as normexp.json records it."""
    config = OmegaConf.to_container(cfg, resolve=True)
    return {"format": runfiles.MARKER_FORMAT, "normexp": perf.normexp_version(),
            "config": runfiles.result_settings(config), "data": data.fingerprint(cfg.data),
            "protocol": sweeps.protocol_name(sweeps.protocol_settings(cfg))}


def has_results(run_dir: Path) -> bool:
    return any((run_dir / name).exists() for name in RESULT_FILES)


def read_json(path: Path, what: str) -> dict[str, Any] | None:
    """The JSON object in ``path`` (None where there is no such file); anything else is one line."""
    path = runfiles.inside(path.parent, path.name)
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise RunFolderError(f"{path}: unreadable ({type(err).__name__}: {err}), not {what}; {START_OVER}, "
                             "or use another folder") from err
    if not isinstance(value, dict):
        raise RunFolderError(f"{path}: a JSON {type(value).__name__}, not {what}; {START_OVER}, or use "
                             "another folder")
    return value


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The folder's summary.json, checked to be normexp's (``runfiles.check_summary``)."""
    summary = read_json(run_dir / runfiles.SUMMARY, "normexp's summary")
    try:
        return None if summary is None else runfiles.check_summary(summary)
    except ValueError as err:
        raise RunFolderError(f"{run_dir / runfiles.SUMMARY}: not normexp's summary ({err}); {START_OVER}, or "
                             "use another folder") from err


def read_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The folder's checkpoint, if any; one that cannot be read, or that is not normexp's, is one line."""
    try:
        checkpoint = runfiles.load_checkpoint(run_dir)
    except runfiles.NotACheckpoint as err:
        raise bad_checkpoint(run_dir, err, "not normexp's checkpoint") from err
    except RunFolderError:
        raise
    except Exception as err:  # torch.load and pickle raise many kinds for a torn or foreign file
        raise bad_checkpoint(run_dir, err, "unreadable") from err
    if checkpoint is not None and not isinstance(checkpoint, dict):
        raise bad_checkpoint(run_dir, TypeError(type(checkpoint).__name__), "not normexp's checkpoint")
    return checkpoint


def bad_checkpoint(run_dir: Path, err: Exception, what: str) -> RunFolderError:
    reason = (str(err).strip().splitlines() or [""])[0][:200]
    return RunFolderError(f"{run_dir / runfiles.CHECKPOINT}: {what} ({type(err).__name__}: {reason}); "
                          f"{START_OVER}")


def _recorded(run_dir: Path, now: dict[str, Any]) -> dict[str, Any]:
    """The folder's marker; for a folder from before markers existed, one made from its summary.json's config
    when that is normexp's (its data files then count as the same: they were never recorded)."""
    found = read_json(run_dir / runfiles.MARKER, "normexp's marker")
    summary = read_summary(run_dir)
    if found is not None:
        return found
    config = (summary or {}).get("config")
    if not isinstance(config, dict) or not {"norm", "optim", "train", "data"} <= set(config):
        raise RunFolderError(f"{run_dir}: holds run files but no {runfiles.MARKER}, and no normexp "
                             f"summary.json with its config: not a normexp run folder; use another folder, "
                             f"or {START_OVER}")
    return {"config": runfiles.result_settings(config), "data": now["data"]}


def check(run_dir: Path, now: dict[str, Any], notes: list[str], where: str = "hydra.run.dir"
          ) -> dict[str, Any] | None:
    """Raises RunFolderError unless ``run_dir`` is new or holds the experiment ``now`` (a marker) describes:
    then it may be resumed, or found finished. ``where``: the setting that names another folder. Returns the
    folder's checkpoint, read (weights only) to check it, for the run to resume from; None where none."""
    runfiles.check_links(run_dir)
    if any(run_dir.glob(f"{STAGING}*")):
        raise RunFolderError(f"{run_dir}: a start over (train.resume=false) was cut short; run with "
                             "train.resume=false again to finish it")
    if not has_results(run_dir):
        return None
    checkpoint = read_checkpoint(run_dir)  # read here, so that a sweep finds a bad one before any job starts
    try:
        read_summary(run_dir)
    except RunFolderError:
        if checkpoint is None or read_json(run_dir / runfiles.MARKER, "normexp's marker") is None:
            raise
        _set_summary_aside(run_dir, notes)
    differ = runfiles.differences(_recorded(run_dir, now), now)
    if differ:
        raise RunFolderError(f"{run_dir}: holds another run ({'; '.join(differ)}); use another {where} for "
                             f"this one, or {START_OVER}")
    return checkpoint


def _set_summary_aside(run_dir: Path, notes: list[str]) -> None:
    """A summary.json that is not normexp's, beside a checkpoint that is: kept as summary.json.unreadable,
    while the run resumes from its checkpoint and writes the summary anew."""
    path = run_dir / runfiles.SUMMARY
    aside = path.with_name(runfiles.SUMMARY + ".unreadable")
    try:
        path.replace(aside)
    except OSError as err:
        raise RunFolderError(f"{path}: unreadable, and cannot be moved aside ({err.strerror or err}); fix "
                             "the permissions, then run again") from err
    notes.append(f"{path}: unreadable; kept as {aside.name}: the run resumes from its {runfiles.CHECKPOINT}, "
                 "which writes the summary anew")


def record(run_dir: Path, now: dict[str, Any], notes: list[str]) -> None:
    """Writes the marker where there is none. One already there (``check`` found it the same experiment)
    stays as the run's start wrote it: a later normexp that resumes the run, or finds it finished, does not
    rewrite where the run came from."""
    path = run_dir / runfiles.MARKER
    if path.is_file():
        return
    if (run_dir / runfiles.SUMMARY).is_file():
        notes.append(f"{run_dir}: no {runfiles.MARKER} (a run from before it existed): compared with the "
                     "config in its summary.json; its data files are taken to be the same")
    runfiles.write_run_file(path, (json.dumps(now, indent=2, allow_nan=True) + "\n").encode())


def start_over(run_dir: Path, with_logs: bool, notes: list[str]) -> Path | None:
    """Moves the folder's results (and, where ``with_logs``, Hydra's .hydra/ and the log) aside into
    ``replaced-<time>/``: gathered in a hidden folder first, which is then renamed, so that the results
    appear there all at once; one cut short is finished by the next call. The new folder, if any."""
    pending = sorted(run_dir.glob(f"{STAGING}*"))
    if not pending and not has_results(run_dir):
        return None
    keep = {LOCK} if with_logs else {LOCK, ".hydra"}
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    staging = pending[0] if pending else run_dir / f"{STAGING}{stamp}"
    try:
        staging.mkdir(exist_ok=True)
        for entry in sorted(run_dir.iterdir()):
            name = entry.name
            log_file = not with_logs and name.endswith(".log")  # Hydra's job log, open by now
            if name in keep or log_file or not is_run_entry(name):
                continue  # a user's own files in the folder stay where they are
            entry.rename(staging / name)
        target = run_dir / (REPLACED + staging.name[len(STAGING):])
        staging.rename(target)
    except OSError as err:
        raise RunFolderError(f"{run_dir}: cannot move the previous results aside ({err.strerror or err}); "
                             "nothing new was written") from err
    notes.append(f"train.resume=false: moved the previous results of {run_dir} aside into {target.name}/")
    return target


def is_run_entry(name: str) -> bool:
    """Whether an entry of a run folder is one that a run writes: normexp's files (and their temporary
    files), Hydra's .hydra/ and job log, TensorBoard's events."""
    own = (*RESULT_FILES, ".hydra")
    temporary = name.startswith(".") and name.endswith(".tmp") and name[1:].startswith(RESULT_FILES)
    aside = name == runfiles.SUMMARY + ".unreadable"
    logs = name.endswith(".log") or name.startswith("events.out.tfevents.")
    return name in own or temporary or aside or logs


def acquire(run_dir: Path) -> None:
    """Takes the folder's lock (made with the folder where needed) for this process, or raises Busy; held
    again by the same process, it counts. flock releases it when the process ends, however it ends. Where
    the filesystem refuses flock (some NFS set-ups), the run goes on unlocked, with a note."""
    key = str(run_dir.absolute())
    if key in _held:
        _held[key][1] += 1
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a lock that is a symbolic link is refused, never opened (and truncated) through it
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as err:
        if (run_dir / LOCK).is_symlink():
            raise RunFolderError(f"{run_dir / LOCK}: a symbolic link (to {os.readlink(run_dir / LOCK)}); "
                                 "normexp never writes through it: remove it, then run again") from err
        raise RunFolderError(f"{run_dir}: cannot make its lock file {LOCK} ({err.strerror or err}); free "
                             "space or fix the permissions") from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise Busy(run_dir, holder) from None
    except OSError as err:
        log.warning("%s: not locked: flock failed (%s); two processes in this folder would not be kept apart",
                    run_dir, err.strerror or err)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    except OSError as err:
        os.close(fd)
        raise RunFolderError(f"{run_dir}: cannot write its lock file {LOCK} ({err.strerror or err}); free "
                             "space or fix the permissions") from err
    _held[key] = [fd, 1]


PROBE = ".normexp.probe"
PROBE_BYTES = 1 << 16  # more than Hydra's .hydra/ files and a log's first lines


def first_missing(folder: Path) -> Path | None:
    """The outermost of ``folder`` and its parents that does not exist yet: what making it would make."""
    missing = None
    for path in (folder.absolute(), *folder.absolute().parents):
        if path.exists() or path.is_symlink():
            return missing
        missing = path
    return missing


def probe(folder: Path, key: str) -> None:
    """``folder`` made, and a file written there and removed: one line (naming the setting ``key``) where a
    full disk or a read-only file system refuses it, before Hydra writes its own files there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        runfiles.write_atomic(folder / PROBE, bytes(PROBE_BYTES))
        (folder / PROBE).unlink()
    except OSError as err:
        raise RunFolderError(f"{key}={folder}: cannot write there ({err.strerror or err}); free space or fix "
                             "the permissions, then run again") from err


def remove_made(made: Path | None) -> None:
    """What ``first_missing`` said a failed start would make, removed again: no half-made folder stays."""
    if made is not None and made.is_dir() and not made.is_symlink():
        shutil.rmtree(made, ignore_errors=True)


def release(run_dir: Path) -> None:
    key = str(run_dir.absolute())
    held = _held.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] == 0:
        del _held[key]
        os.close(held[0])  # releases the flock; the file stays (removing it would race with a new holder)


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    acquire(run_dir)
    try:
        yield
    finally:
        release(run_dir)


# ---------------------------------------------------------------- a sweep stopped by a signal
# A sweep stopped by a signal to its main process (SIGTERM, or SIGINT: Ctrl-C), under Hydra's basic or joblib
# launcher or submitit_local: every running job finishes its step, saves an interrupted checkpoint and ends;
# no job starts after the signal; the sweep exits with 128 + the signal, and the same command resumes it.
#
# The main process (``begin_sweep``, from the start-up callback) turns the signals into a request written to a
# stop file, which the jobs' processes (they inherit its name in the environment) read with ``requested``, and
# forwards the signal to the processes below it that hold a job's folder (a run's trainer turns it into a stop
# after the step). A worker keeps a handler of its own between runs (``guard_worker``), so that a forwarded
# signal or a Ctrl-C to the whole process group never kills a worker outside a run.

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
