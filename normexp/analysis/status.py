"""Where a sweep stands and when it will finish, read from its folders only (no daemon, no database, no
torch).

    python -m normexp.analysis.status                       # the newest sweep under outputs/sweeps/
    python -m normexp.analysis.status SWEEP [SWEEP ...] [--watch N] [--json] [--stall-after SECONDS]

One row per job of the sweep, in the order the launcher starts them (longest expected first under normexp's
default sweeper), including jobs not started yet: their list is the basic sweeper's expansion of the sweep's
``multirun.yaml`` (``sweeps.sweep_jobs``) and each job's folder is named as Hydra names it
(``hydra.sweep.subdir``, by default the job's override_dirname). Before a sweep starts, ``python -m
normexp.tune --estimate <its overrides>`` says how long it will take on this machine (from its measured CPU
rates, which need torch: not here).

A job is ``pending`` (no folder yet, or only Hydra's files and an empty log for NEVER_STARTED_AFTER:
dispatched after its sweep was told to stop), ``running``, ``stalled`` (its summary.json says running, or it
has none yet, but nothing in its folder was written for longer than ``--stall-after`` seconds and three of its
epochs: the process was killed, by SIGKILL, the OOM killer or a lost node, or hangs; run the sweep again to
resume it), ``completed``, ``diverged``, ``interrupted`` (stopped by a signal, checkpoint saved), ``failed``
(the last line of its train.log is an error: normexp.train logs one for any exception) or ``unreadable`` (a
file that does not parse; the note names it). An interrupted job after the last running one, under a launcher
that starts jobs in order and fewer at once than there are, resumes when the sweep reaches it: its ETA counts
it. Only files written atomically are read, so a run writing while this reads is seen before or after the
write, never half-way.

A job of ``train.seeds`` (seeds trained together, ``normexp.trainer``) is one job with a row per seed, read
from its ``seed=<s>/`` folders: it holds one slot, its seeds trained in packs (each pack's epochs take the
pack's time, as its metrics record) or one after another, and a seed that waits its turn is not stalled
while its job writes.

The ETA: each run's epoch time is measured in the sweep itself (the ``seconds`` column of metrics.csv, under
the load the sweep puts on the machine); a job not measured yet takes the median of the runs with the same
norm and batch size, else the same batch size, else the nearest measured batch size. A job's time outside its
epochs (start-up, data, checkpoints) is the median of the completed ones. The remaining jobs are then
scheduled as the launcher will: in order, each on the first of its parallel slots to come free (joblib's
``n_jobs``, one for the basic launcher, every job at once for submitit).
"""

from __future__ import annotations

import csv
import heapq
import json
import math
import os
import re
import statistics
import sys
import textwrap
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from normexp import validation
from normexp.analysis import runfiles, sweeps

STATUSES = ("pending", "running", "stalled", "completed", "diverged", "interrupted", "failed", "unreadable")
FINAL = ("completed", "diverged", "interrupted")
SWEEPS_ROOT = Path("outputs/sweeps")
STALL_AFTER = 300.0  # seconds without a write before a running job may count as stalled ...
STALL_EPOCHS = 3.0  # ... and at least this many of its epochs
# a folder holding only Hydra's files (no run file, an empty log) this long after Hydra wrote them: a job that
# was dispatched but returned at once, because its sweep had been told to stop (start-up takes seconds)
NEVER_STARTED_AFTER = 120.0
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}(-\d{6})?")
READ_ERRORS = (OSError, ValueError, TypeError, KeyError, csv.Error, yaml.YAMLError, OmegaConfBaseException)
WIDTH = 110  # the footer's lines are wrapped at this width
COLUMNS = ("norm", "bs", "seed", "status", "epochs", "val err", "samples/s", "last write", "ETA", "note")


@dataclass
class Job:
    """One job of a sweep: what the sweep planned, and what its folder says."""

    name: str  # its folder's name
    norm: str | None = None
    variant: str | None = None  # the norm, with the other settings the sweep varies (e.g. "gn groups=5")
    batch_size: int | None = None
    seed: int | None = None
    status: str = "pending"
    epochs_run: int | None = None
    epochs: int | None = None  # planned
    val_error: float | None = None  # of its last finished epoch
    samples_per_s: float | None = None  # of its last finished epoch
    age_s: float | None = None  # since anything in its folder was last written
    epoch_s: float | None = None  # its mean epoch time (training and validation)
    in_epoch_s: float = 0.0  # since its current epoch (or session) began
    overhead_s: float | None = None  # its time outside epochs (a completed run)
    eta_s: float | None = None  # until it ends
    planned: bool = True  # one of multirun.yaml's jobs
    resumes: bool = False  # interrupted, and the running sweep has yet to reach it: it will resume
    pack: str | None = None  # the folder of the job of train.seeds that it is a seed of
    pack_size: int | None = None  # seeds trained together in that job, as its summary.json records
    note: str = ""


@dataclass
class Sweep:
    path: str
    jobs: list[Job]
    now: float
    slots: int | None = None
    slots_how: str = ""
    eta_s: float | None = None
    eta_how: str = ""
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {s: n for s in STATUSES if (n := sum(j.status == s for j in self.jobs))}

    def units(self) -> list[list[Job]]:
        """The jobs as the launcher runs them, in order: a run alone, or the seeds of one job of
        train.seeds."""
        found: list[list[Job]] = []
        packs: dict[str, list[Job]] = {}
        for job in self.jobs:
            if job.pack is None:
                found.append([job])
            elif job.pack in packs:
                packs[job.pack].append(job)
            else:
                packs[job.pack] = [job]
                found.append(packs[job.pack])
        return found


# --- the sweep's plan: multirun.yaml ---

def planned_jobs(config: DictConfig) -> list[Job] | None:
    """Every job of the sweep in ``config`` (a multirun.yaml) in launch order, a Job per seed of a job of
    train.seeds; None for a sweeper whose jobs cannot be listed up front."""
    plan = sweeps.planned_jobs(config)
    if plan is None:
        return None
    jobs = []
    for p in plan:
        if not p.packed:
            jobs.append(Job(p.name, p.norm, p.variant, p.batch_size, p.seeds[0], epochs=p.epochs))
        else:
            jobs += [Job(f"{p.name}/{runfiles.SEED_FOLDER.format(s)}", p.norm, p.variant, p.batch_size, s,
                         epochs=p.epochs, pack=p.name) for s in p.seeds]
    return jobs


# --- one job's folder ---

def last_write(run_dir: Path) -> float:
    """The newest modification time in the folder (its files, temporary ones included, and .hydra/)."""
    newest = run_dir.stat().st_mtime
    for folder in (run_dir, run_dir / ".hydra"):
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                newest = max(newest, entry.stat().st_mtime)
            except OSError:  # a temporary file renamed or removed since the listing
                pass
    return newest


def read_metrics(run_dir: Path) -> list[dict[str, float | None]]:
    path = runfiles.inside(run_dir, runfiles.METRICS)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"epoch", "val_error", "seconds"} <= set(reader.fieldnames or ()):
            raise ValueError(f"header {reader.fieldnames} lacks epoch, val_error or seconds")
        return [{k: float(v) if v not in ("", None) else None for k, v in row.items()} for row in reader]


def log_error(run_dir: Path) -> str | None:
    """The last line of train.log where it is an error record (the job died of it), else None."""
    logs = sorted(run_dir.glob("*.log"))
    summary = run_dir / runfiles.SUMMARY
    if not logs or (summary.is_file() and summary.stat().st_mtime > logs[0].stat().st_mtime):
        return None  # a summary written after the log's last line: the run went on
    with open(runfiles.inside(run_dir, logs[0].name), "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
        lines = f.read().decode(errors="replace").splitlines()
    records = [line for line in lines if line.startswith("[")]
    return records[-1] if records and "][ERROR] - " in records[-1] else None


def read_job(job: Job, run_dir: Path, now: float) -> Job:
    """``job`` as its folder shows it (a provisional "running" for a job not finished)."""
    if not run_dir.is_dir():
        return job
    job.age_s = max(0.0, now - last_write(run_dir))
    job.status = "running"
    try:
        summary = runfiles.read_summary(run_dir)
    except READ_ERRORS as err:
        job.status, job.note = "unreadable", f"{runfiles.SUMMARY}: {type(err).__name__}: {err}"
        return job
    try:
        rows = read_metrics(run_dir)
    except READ_ERRORS as err:
        job.status, job.note = "unreadable", f"{runfiles.METRICS}: {type(err).__name__}: {err}"
        return job
    try:
        _fill(job, run_dir, summary or {}, rows, now)
    except READ_ERRORS as err:
        job.status, job.note = "unreadable", f"{runfiles.SUMMARY}: unexpected content ({err!r})"
    return job


def _fill(job: Job, run_dir: Path, summary: dict[str, Any], rows: list[dict], now: float) -> None:
    status = summary.get("status")
    job.epochs_run, job.epochs = len(rows), _typed(summary, "epochs", int, job.epochs)
    if status == "diverged":
        job.epochs_run = _typed(summary, "epochs_run", int, len(rows))
    if rows:
        job.val_error, job.samples_per_s = rows[-1]["val_error"], rows[-1].get("samples_per_s")
        seconds = [r["seconds"] for r in rows if r["seconds"] is not None]
        job.epoch_s = sum(seconds) / len(seconds) if seconds else None
    for key, kind in (("norm", str), ("batch_size", int), ("seed", int)):
        if getattr(job, key) is None:
            setattr(job, key, _typed(summary, key, kind, None))
    job.pack_size = _typed(summary.get("pack") or {}, "pack_size", int, None)
    job.variant = job.variant or job.norm
    if status == "failed":
        job.status, job.note = "failed", f"failed: {summary.get('error')}"[:120]
    elif (error := log_error(run_dir)) is not None:  # the job's last start ended in an error, whatever before
        job.status, job.note = "failed", error.split("] - ", 1)[-1][:120]
    elif status in FINAL:
        job.status = status
        if status == "completed":
            job.overhead_s = _overhead(run_dir, rows)
    elif status not in (None, "running"):
        raise ValueError(f"unknown status {status!r}")
    elif not summary and not rows and never_started(run_dir, now):
        job.status, job.note = "pending", "dispatched after a stop signal, never started"
    else:
        started = [p.stat().st_mtime for p in (run_dir / runfiles.SUMMARY, run_dir / runfiles.METRICS)
                   if p.is_file()]
        job.in_epoch_s = max(0.0, now - max(started)) if started else 0.0
        job.note = "" if status else "setting up: no summary.json yet"


def never_started(run_dir: Path, now: float) -> bool:
    """For a folder without summary.json and metrics.csv: no marker either, and only Hydra's files and an
    empty log, written more than NEVER_STARTED_AFTER ago."""
    if (run_dir / runfiles.MARKER).exists():
        return False
    logs = list(run_dir.glob("*.log"))
    if any(log.stat().st_size for log in logs):
        return False
    hydra = [p for p in (run_dir / ".hydra", *logs) if p.exists()]
    return bool(hydra) and now - max(p.stat().st_mtime for p in hydra) > NEVER_STARTED_AFTER


def _typed(summary: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = summary.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{key}={value!r}: not a {kind.__name__}")
    return value


def _overhead(run_dir: Path, rows: list[dict]) -> float | None:
    """A completed job's time outside its epochs, from the job's start (Hydra writes .hydra/config.yaml) to
    its end (summary.json); None where the run took more than one session."""
    try:
        start = (run_dir / ".hydra" / "config.yaml").stat().st_mtime
        end = (run_dir / runfiles.SUMMARY).stat().st_mtime
    except OSError:
        return None
    overhead = end - start - sum(r["seconds"] or 0.0 for r in rows)
    return overhead if overhead >= 0 else None


def read_extra(run_dir: Path, now: float, pack: str | None = None) -> Job:
    """A job folder that multirun.yaml does not list (an earlier run of the sweep with other settings), or a
    seed's folder of such a job of train.seeds (``pack``: the job's folder name)."""
    name = run_dir.name if pack is None else f"{pack}/{run_dir.name}"
    job = Job(name, planned=False, pack=pack)
    try:
        cfg = OmegaConf.load(runfiles.inside(run_dir, ".hydra/config.yaml"))
        job.norm, job.batch_size = OmegaConf.select(cfg, "norm.name"), OmegaConf.select(cfg, "batch_size")
        job.seed = OmegaConf.select(cfg, "train.seed")
    except READ_ERRORS:
        pass  # summary.json may say
    job = read_job(job, run_dir, now)
    job.note = job.note or "not one of multirun.yaml's jobs"
    return job


# --- the estimate ---

def epoch_estimate(measured: list[Job], norm: str | None, batch_size: int | None) -> float | None:
    """A job's epoch time from the jobs measured: same norm and batch size, else same batch size, else the
    nearest measured batch size (log scale); None before any epoch of the sweep has ended."""
    if not measured:
        return None
    for same_norm in (True, False):
        found = [j.epoch_s for j in measured
                 if j.batch_size == batch_size and (j.norm == norm or not same_norm)]
        if found:
            return statistics.median(found)
    if not isinstance(batch_size, int) or batch_size < 1:
        return statistics.median(j.epoch_s for j in measured)
    sizes = {j.batch_size for j in measured if isinstance(j.batch_size, int) and j.batch_size >= 1}
    if not sizes:
        return statistics.median(j.epoch_s for j in measured)
    nearest = min(sizes, key=lambda b: (abs(math.log2(b) - math.log2(batch_size)), -b))
    same_norm = [j.epoch_s for j in measured if j.batch_size == nearest and j.norm == norm]
    return statistics.median(same_norm or [j.epoch_s for j in measured if j.batch_size == nearest])


def schedule(running: list[float], pending: list[float], slots: int) -> list[float]:
    """When each pending job ends (seconds from now) if each, in order, takes the first slot to come free;
    ``running`` are the times left of the jobs running now (each holds a slot)."""
    free = sorted(running) + [0.0] * max(0, slots - len(running))
    heapq.heapify(free)
    ends = []
    for duration in pending:
        end = heapq.heappop(free) + duration
        heapq.heappush(free, end)
        ends.append(end)
    return ends


def mark_stalled(units: list[list[Job]], measured: list[Job], stall_after: float) -> None:
    """Running runs whose job (all of its seeds, for a job of train.seeds) wrote nothing for too long."""
    for unit in units:
        if not any(j.status == "running" for j in unit):
            continue
        silent = min((j.age_s for j in unit if j.age_s is not None), default=0.0)
        for job in unit:
            if job.status != "running" or job.age_s is None:
                continue
            epoch = job.epoch_s or epoch_estimate(measured, job.norm, job.batch_size) or 0.0
            if silent > max(stall_after, STALL_EPOCHS * epoch):
                job.status = "stalled"
                job.note = f"nothing written for {duration(silent)}: killed or hung (run the sweep again)"


def time_left(job: Job, epoch: float, training: bool = True) -> float:
    """Until a running or pending run has trained all its epochs (its start-up not counted); ``training``:
    whether it is training now (not a seed waiting for its turn in its job)."""
    if job.status != "running" or not training:
        return (job.epochs - (job.epochs_run or 0)) * epoch
    return max((job.epochs - (job.epochs_run or 0)) * epoch - job.in_epoch_s, 0.0)


def pack_ends(lefts: list[float], size: int) -> list[float]:
    """When each seed of a job of train.seeds ends, from the job's start or now: packs of ``size`` seeds in
    order, one after another, each as long as its longest seed."""
    ends, start = [], 0.0
    for k in range(0, len(lefts), size):
        group = lefts[k:k + size]
        ends += [start + max(group)] * len(group)
        start += max(group)
    return ends


def _started_after_the_ended(unit: list[Job]) -> None:
    """A seed of a job of train.seeds wrote its summary when the job began, and trains only after the seeds
    before it ended: it has been in its first epoch at most since the last of them ended."""
    ended = [j.age_s for j in unit if j.status in FINAL and j.age_s is not None]
    for job in unit:
        if ended and job.status == "running" and not job.epochs_run:
            job.in_epoch_s = min(job.in_epoch_s, min(ended))


def pack_size(unit: list[Job], jobs: list[Job]) -> int:
    """Seeds trained together in this job: as its summaries record, else as the jobs of the same batch size
    recorded, else all of them."""
    recorded = [j.pack_size for j in unit if j.pack_size] or [
        j.pack_size for j in jobs if j.pack_size and j.batch_size == unit[0].batch_size]
    return max(1, min(recorded[0] if recorded else len(unit), len(unit)))


def mark_resuming(sweep: Sweep, units: list[list[Job]]) -> None:
    """Interrupted runs after the last running job: a launcher that starts jobs in order, fewer at once than
    there are, has not reached them yet, and will resume them from their checkpoints."""
    running = [i for i, unit in enumerate(units) if any(j.status == "running" for j in unit)]
    if not running or sweep.slots is None or sweep.slots >= len(units):
        return
    for job in (j for unit in units[running[-1] + 1:] for j in unit if j.status == "interrupted"):
        job.resumes = True
        job.note = f"resumes from epoch {(job.epochs_run or 0) + 1} when the sweep reaches it"


def estimate(sweep: Sweep, stall_after: float) -> None:
    """Marks stalled jobs and the interrupted ones that will resume, then each job's ETA and the sweep's
    (``schedule`` on the launcher's slots)."""
    measured = [j for j in sweep.jobs if j.epoch_s]
    units = sweep.units()
    mark_stalled(units, measured, stall_after)
    mark_resuming(sweep, units)
    overheads = [j.overhead_s for j in sweep.jobs if j.overhead_s is not None]
    overhead = statistics.median(overheads) if overheads else 0.0
    running, pending = [], []
    if not any(j.status in ("running", "pending") for j in sweep.jobs):
        sweep.eta_how = "no job is running or pending"
        return
    for unit in units:
        waiting = [j for j in unit if j.status in ("running", "pending") or j.resumes]
        epochs = [j.epoch_s or epoch_estimate(measured, j.norm, j.batch_size) for j in waiting]
        if any(e is None for e in epochs) or any(j.epochs is None for j in waiting):
            sweep.eta_how = "no epoch of this sweep has ended yet: no ETA"
            return
        if not waiting:
            continue
        size = pack_size(unit, sweep.jobs) if unit[0].pack else len(waiting)
        _started_after_the_ended(unit)
        lefts = [time_left(j, e, training=k < size) for k, (j, e) in enumerate(zip(waiting, epochs,
                                                                                   strict=True))]
        ends = pack_ends(lefts, size)
        if any(j.status == "running" for j in waiting):
            for job, end in zip(waiting, ends, strict=True):
                job.eta_s = end
            running.append(max(ends))
        else:
            pending.append((waiting, ends))
    slots = max(sweep.slots or len(running) or 1, len(running))
    durations = [overhead + max(ends) for _, ends in pending]
    for (waiting, ends), duration_, end in zip(pending, durations, schedule(running, durations, slots),
                                               strict=True):
        for job, own in zip(waiting, ends, strict=True):
            job.eta_s = end - duration_ + overhead + own
    sweep.eta_s = max([j.eta_s for j in sweep.jobs if j.eta_s is not None], default=0.0)
    sweep.eta_how = _eta_how(sweep, measured, overheads, slots, len(running))


def _eta_how(sweep: Sweep, measured: list[Job], overheads: list[float], slots: int, running: int) -> str:
    epochs = sum(j.epochs_run or 0 for j in measured)
    how = (f"{slots} at once ({sweep.slots_how}); epoch times of {len(measured)} runs of this sweep "
           f"({epochs} epochs; others: same norm and batch size, else same or nearest size); ")
    how += (f"start-up {statistics.median(overheads):.1f} s a job (median of {len(overheads)})" if overheads
            else "start-up not measured yet")
    if not running and any(j.status == "pending" for j in sweep.jobs):
        newest = min((j.age_s for j in sweep.jobs if j.age_s is not None), default=None)
        idle = "no job has started yet" if newest is None else f"nothing written for {duration(newest)}"
        how = f"no job is running ({idle}): if the sweep is still going, " + how
    return how


# --- a sweep ---

def launcher_slots(launcher: DictConfig | None, n_jobs: int) -> tuple[int | None, str]:
    """How many jobs the sweep's launcher (multirun.yaml's hydra.launcher) runs at once, and why."""
    target = str((launcher or {}).get("_target_", ""))
    if target.endswith("BasicLauncher"):
        return 1, "the basic launcher runs one job at a time"
    if "joblib" in target.lower():
        n, cores = launcher.get("n_jobs", -1), available_cores()
        if isinstance(n, int) and n > 0:
            return n, f"joblib n_jobs={n}"
        n = -1 if not isinstance(n, int) or n == 0 else n
        return max(1, cores + 1 + n), f"joblib n_jobs={n}: {cores} cores here"
    if target.endswith("LocalLauncher"):
        return max(n_jobs, 1), "submitit_local starts every job at once"
    if target.endswith("SlurmLauncher"):
        p = launcher.get("array_parallelism", 256)
        p = p if isinstance(p, int) and p > 0 else 256
        return min(p, max(n_jobs, 1)), f"submitit_slurm array_parallelism={p}: at most, as the cluster allows"
    return None, f"launcher {target or 'unknown'}: parallelism unknown, taken as the jobs running now"


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def seed_dirs(path: Path) -> list[Path]:
    """The seeds' folders of a job of train.seeds (none for any other folder)."""
    found = [p for p in runfiles.subfolders(path) if runfiles.is_seed_folder(p)]
    return sorted(found, key=lambda p: int(p.name.split("=")[1]))


def read_extras(run_dir: Path, now: float, pack: str | None = None) -> list[Job]:
    """A folder multirun.yaml does not list: one run, or each seed of a job of train.seeds."""
    seeds = seed_dirs(run_dir)
    if not seeds or runfiles.is_run_dir(run_dir):
        return [read_extra(run_dir, now)]
    return [read_extra(d, now, pack=pack or run_dir.name) for d in seeds]


def load_plan(path: Path, sweep: Sweep) -> list[Job] | None:
    """The jobs multirun.yaml plans (with the launcher's slots set on ``sweep``), or None with a note."""
    record = path / "multirun.yaml"
    if not record.is_file():
        sweep.notes.append("no multirun.yaml: only the jobs that have a folder are shown")
        return None
    try:
        config = OmegaConf.load(record)
        plan = planned_jobs(config)
    except (*READ_ERRORS, HydraException) as err:
        sweep.notes.append(f"multirun.yaml unreadable ({type(err).__name__}: {err}): only the jobs that have "
                           "a folder are shown")
        return None
    if plan is None:
        sweep.notes.append("not Hydra's basic sweeper: its jobs cannot be listed up front; only the jobs "
                           "that have a folder are shown")
        return None
    sweep.slots, sweep.slots_how = launcher_slots(config.hydra.get("launcher"), len(plan))
    return plan


def read_sweep(path: Path, stall_after: float = STALL_AFTER, now: float | None = None) -> Sweep:
    """The status of every job of the sweep in ``path`` (or of the one run, for a run folder)."""
    now = time.time() if now is None else now
    sweep = Sweep(str(path), [], now)
    seeds = seed_dirs(path)
    if runfiles.is_run_dir(path) or seeds:
        sweep.jobs = read_extras(path, now, pack=str(path) if seeds else None)
        for job in sweep.jobs:
            job.note = job.note.replace("not one of multirun.yaml's jobs", "")
    else:
        plan = load_plan(path, sweep)
        names = set()
        for job in plan or []:
            sweep.jobs.append(read_job(job, path / job.name, now))
            names.add(job.pack or job.name)
        for run_dir in runfiles.subfolders(path):
            known = run_dir.name in names
            if not known and (plan is None or runfiles.is_run_dir(run_dir) or seed_dirs(run_dir)):
                sweep.jobs += read_extras(run_dir, now)
    if sweep.slots is None:
        sweep.slots_how = sweep.slots_how or "parallelism unknown, taken as the jobs running now"
    estimate(sweep, stall_after)
    return sweep


def newest_sweep(root: Path = SWEEPS_ROOT) -> Path | None:
    """The sweep folder under ``root`` started last (by the time in its name, else its multirun.yaml's)."""
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")] if root.is_dir() else []

    def started(p: Path) -> tuple:
        stamp = TIMESTAMP.search(p.name)
        record = p / "multirun.yaml"
        return (stamp.group(0) if stamp else "", record.stat().st_mtime if record.is_file() else 0.0)

    return max(found, key=started, default=None)


# --- output ---

def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _cells(job: Job, same_job: bool = False) -> list[str]:
    """A row of the table; ``same_job``: a seed of the job of train.seeds in the row above, whose norm and
    batch size it does not repeat."""
    done = "-" if job.epochs_run is None else str(job.epochs_run)
    epochs = f"{done}/{job.epochs if job.epochs is not None else '?'}"
    waiting = job.status in ("running", "pending") or job.resumes
    norm, bs = job.variant or job.norm or "?", "?" if job.batch_size is None else str(job.batch_size)
    return [
        "  \"" if same_job else norm, "" if same_job else bs,
        "?" if job.seed is None else str(job.seed), job.status, epochs,
        "" if job.val_error is None else f"{job.val_error:.4f}",
        "" if job.samples_per_s is None else f"{job.samples_per_s:.0f}",
        "" if job.age_s is None else f"{duration(job.age_s)} ago",
        (duration(job.eta_s) if job.eta_s is not None else "?") if waiting else "", job.note,
    ]


def render(sweep: Sweep) -> str:
    """The table, then the counts and the ETA."""
    units = sweep.units()
    rows = [list(COLUMNS), *(_cells(j, same_job=k > 0) for unit in units for k, j in enumerate(unit))]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS) - 1)]
    when = datetime.fromtimestamp(sweep.now)
    runs = f" ({len(sweep.jobs)} runs: jobs of train.seeds have a row per seed)" if len(units) < len(
        sweep.jobs) else ""
    lines = [f"sweep {sweep.path}: {len(units)} jobs{runs}, {when:%Y-%m-%d %H:%M:%S}"]
    for r in rows:
        cells = [c.ljust(w) if i in (0, 3) else c.rjust(w) for i, (c, w) in enumerate(zip(r[:-1], widths,
                                                                                         strict=True))]
        lines.append("  ".join([*cells, r[-1]]).rstrip())
    lines.append(", ".join(f"{n} {s}" for s, n in sweep.counts().items()) or "no jobs")
    footer = [sweep.eta_how] if sweep.eta_how else []
    if sweep.eta_s is not None:
        at = datetime.fromtimestamp(sweep.now + sweep.eta_s)
        footer = [f"ETA {duration(sweep.eta_s)} (at {at:%H:%M:%S}): {sweep.eta_how}"]
    wrapped = [textwrap.fill(line, WIDTH, subsequent_indent="  ") for line in [*footer, *sweep.notes]]
    return "\n".join([*lines, *wrapped]) + "\n"


def _finite(value: Any) -> Any:
    """JSON's own types: a NaN or infinite float (a diverged loss) as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def as_json(sweep: Sweep) -> dict[str, Any]:
    data = _finite(asdict(sweep))
    data["counts"] = sweep.counts()
    eta_at = None if sweep.eta_s is None else datetime.fromtimestamp(sweep.now + sweep.eta_s)
    data["eta_at"] = None if eta_at is None else eta_at.isoformat()
    data["time"] = datetime.fromtimestamp(sweep.now).isoformat()
    return data


def show(paths: list[Path], as_data: bool, stall_after: float) -> str:
    sweeps_ = [read_sweep(p, stall_after) for p in paths]
    if as_data:
        return json.dumps([as_json(s) for s in sweeps_] if len(paths) > 1 else as_json(sweeps_[0]),
                          allow_nan=False, default=str) + "\n"
    return "\n".join(render(s) for s in sweeps_)


WATCH_MAX = 86400.0  # a redraw at least once a day (time.sleep takes no more than the platform's time_t)


def main(argv: list[str] | None = None) -> int:
    parser = validation.Parser(prog="python -m normexp.analysis.status", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="*", type=Path, metavar="SWEEP",
                        help=f"sweep folders (default: the newest under {SWEEPS_ROOT}/)")
    parser.add_argument("--watch", type=float, metavar="N", help="redraw every N seconds (Ctrl-C stops)")
    parser.add_argument("--json", action="store_true",
                        help="machine-readable (one object per line with --watch)")
    parser.add_argument("--stall-after", type=float, default=STALL_AFTER, metavar="SECONDS",
                        help=f"a running job silent this long (and for {STALL_EPOCHS:g} epochs) is stalled "
                             f"(default {STALL_AFTER:g})")
    args = parser.parse_args(argv)
    if args.watch is not None and not validation.is_number(args.watch, 0, WATCH_MAX, low_open=True):
        parser.error(f"--watch {args.watch:g}: allowed: seconds in (0, {WATCH_MAX:g}]")
    if not validation.is_number(args.stall_after, 0, low_open=True):
        parser.error(f"--stall-after {args.stall_after:g}: allowed: a finite number of seconds > 0")
    paths = args.sweeps or [newest_sweep()]
    if paths == [None]:
        print(f"normexp: error: no sweep under {SWEEPS_ROOT}/; give a sweep folder", file=sys.stderr)
        return 2
    missing = [p for p in paths if not p.is_dir()]
    if missing:
        print(f"normexp: error: {missing[0]}: no such folder", file=sys.stderr)
        return 2
    try:
        while True:
            text = show(paths, args.json, args.stall_after)
            if args.watch is not None and not args.json and sys.stdout.isatty():
                text = "\x1b[H\x1b[2J" + text  # clear the screen, then redraw
            sys.stdout.write(text)
            sys.stdout.flush()
            if args.watch is None:
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
