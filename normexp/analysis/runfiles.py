"""A run folder's format, which every reader and writer of runs shares: its files, each written atomically
(a temporary file, then a rename), the statuses a run can end in, and what its marker, normexp.json, records.

The marker holds what makes two runs the same experiment: every config key but those that only change
speed, where files go or how long the run trains, plus the data files' sizes and hashes, so that a run
resumes only the experiment it started, and results tell duplicates from different experiments. No torch
here (two functions import it when called): reading results needs none."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

METRICS, SUMMARY, CHECKPOINT = "metrics.csv", "summary.json", "checkpoint.pt"
MARKER = "normexp.json"  # what the run is (``result_settings``, the data files), written when it starts
METRIC_COLUMNS = (
    "epoch", "step", "lr", "r_max", "d_max", "train_loss", "train_error",
    "val_loss", "val_error", "seconds", "samples_per_s",
)
STATUSES = ("running", "completed", "diverged", "interrupted", "failed")  # a run's status in summary.json
FINAL_STATUSES = ("completed", "diverged")
_INT, _NUMBER = ("an integer", int), ("a number", (int, float))
SUMMARY_FIELDS = {  # the summary fields readers rely on: what each must hold where present (null: None)
    "epochs_run": _INT, "epochs": _INT, "batch_size": _INT, "seed": _INT, "lr": _NUMBER,
    "final_val_error": _NUMBER, "best_val_error": _NUMBER, "norm": ("a string", str),
}
LOCK = ".normexp.lock"  # holds "<pid> <host>" of the process that has the folder
WRITTEN = (LOCK, MARKER, SUMMARY, METRICS, CHECKPOINT)  # what normexp itself writes in a run folder
SEED_FOLDER = "seed={}"  # a seed's run folder in a job of train.seeds (normexp.trainer), e.g. seed=2


def is_seed_folder(path: Path) -> bool:
    name, _, seed = path.name.partition("=")
    return name == "seed" and seed.isdigit()


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` so that readers see the old file or the new one, never a torn one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes files private; these are ordinary results
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class NotACheckpoint(ValueError):
    """A checkpoint.pt that would build objects or call functions when unpickled: refused, never run."""


class RunFolderError(Exception):
    """A run folder, or one of its files, that normexp cannot use as asked; the message is one line naming
    the folder or file, what is wrong and what to do, and the command exits with 2."""


class LinkOut(RunFolderError, OSError):
    """A file of a run or sweep folder that is a symbolic link out of it: never followed. An OSError too, so
    that the readers of results skip that run with one line."""


def inside(run_dir: Path, name: str) -> Path:
    """``run_dir / name``, refused (RunFolderError) where it is a symbolic link that leads out of the folder:
    normexp never reads or writes a file of a run or sweep folder through such a link, so that a folder
    from elsewhere cannot make it read, overwrite or ship a file of this machine."""
    path = run_dir / name
    if path.is_symlink() and not path.resolve().is_relative_to(run_dir.resolve()):
        raise LinkOut(f"{path}: a symbolic link to {os.readlink(path)}, outside {run_dir}; normexp neither "
                      "reads nor writes through it: replace it with the file itself, or use another folder")
    return path


def check_links(run_dir: Path) -> None:
    """Every file normexp or Hydra reads or writes in ``run_dir`` that is a link out of it, refused before
    anything is written there (Hydra's .hydra/ files and the log are opened through links otherwise)."""
    names = [*WRITTEN, ".hydra", *(f".hydra/{p.name}" for p in _entries(run_dir / ".hydra")),
             *(p.name for p in _entries(run_dir) if p.name.endswith(".log"))]
    for name in names:
        inside(run_dir, name)


def subfolders(path: Path) -> list[Path]:
    """The folders in ``path`` that readers of runs enter: real ones (a link may lead anywhere, the sweep
    itself included), not hidden. ``path`` itself may be a link: the user named it."""
    return [p for p in _entries(path) if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")]


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir()) if folder.is_dir() else []
    except OSError:
        return []


def write_run_file(path: Path, data: bytes) -> None:
    """``write_atomic`` for a file of a run folder: an OSError (disk full, a read-only folder) becomes one
    line; the file as it was before is intact."""
    try:
        write_atomic(path, data)
    except OSError as err:
        raise RunFolderError(f"{path.parent}: cannot write {path.name} ({err.strerror or err}); the files "
                             "written before are intact: free space or fix the permissions, then run the "
                             "same command again to resume") from err


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_run_file(run_dir / METRICS, buffer.getvalue().encode())


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    write_run_file(run_dir / SUMMARY, (json.dumps(summary, indent=2, allow_nan=True) + "\n").encode())


RUN_FILES = (SUMMARY, METRICS, ".hydra/config.yaml")  # a folder holding any of these is a run's


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a run's folder: it holds a run's summary or metrics, or Hydra's record of one."""
    return any((path / name).is_file() for name in RUN_FILES)


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The folder's summary.json (None where there is none); one that is not normexp's is a ValueError
    naming the first field that is not what readers rely on."""
    path = inside(run_dir, SUMMARY)
    return check_summary(json.loads(path.read_text())) if path.exists() else None


def check_summary(summary: Any) -> dict[str, Any]:
    if not isinstance(summary, dict):
        raise ValueError(f"a JSON {type(summary).__name__}, not normexp's summary")
    if summary.get("status") not in STATUSES:
        raise ValueError(f"status is {summary.get('status')!r}; allowed: {', '.join(STATUSES)}")
    if "epochs_run" not in summary:
        raise ValueError("no epochs_run")
    for key, (allowed, kind) in SUMMARY_FIELDS.items():
        value, required = summary.get(key), key == "epochs_run"
        if (value is not None or required) and (not isinstance(value, kind) or isinstance(value, bool)):
            raise ValueError(f"{key} is {value!r}; allowed: {allowed}" + ("" if required else " or null"))
    return summary


def is_finished(run_dir: Path, epochs: int | None = None) -> bool:
    """Whether the run needs no more training: it diverged, or it completed (at least ``epochs`` epochs where
    given: a completed run asked for more epochs goes on from its checkpoint)."""
    summary = read_summary(run_dir)
    if summary is None or summary.get("status") not in FINAL_STATUSES:
        return False
    return summary["status"] == "diverged" or epochs is None or summary["epochs_run"] >= epochs


# torch is imported by the two functions that need it: reading results needs no torch

def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_run_file(run_dir / CHECKPOINT, buffer.getvalue())


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint's tensors and plain values; a file holding anything else (a pickle that would build
    objects or call functions) is refused by torch's weights-only unpickler before any of it runs."""
    import pickle

    import torch

    path = inside(run_dir, CHECKPOINT)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not str(err).startswith("Weights only load failed"):
            raise
        # torch's message: its advice (weights_only=False, which would run the file) around the reason
        reason = [line.strip() for line in str(err).splitlines()[1:] if line.strip()
                  and not line.startswith(("Please file", "Check the documentation", "Re-running"))]
        found = reason[0] if reason else "not a weights-only file"
        if "GLOBAL" in found:
            raise NotACheckpoint(f"it holds more than tensors and plain values, which normexp never "
                                 f"unpickles: {found}") from None
        raise pickle.UnpicklingError(found.removeprefix("WeightsUnpickler error: ")) from None


# ---------------------------------------------------------------- the marker: what the run is

MARKER_FORMAT = 1  # of normexp.json
# Keys that do not change what a run computes (speed, where files go), or only for how long it trains (raised,
# a run continues): conf/config.yaml's hydra.job.config.override_dirname.exclude_keys, plus the epoch cap
NOT_RESULT_KEYS = (
    "data.root", "data.download", "train.epochs", "train.max_epochs_by_batch_size", "train.device",
    "train.resume", "train.fast", "train.threads", "train.mkldnn", "train.autotune", "train.progress",
    "train.pack_size",  # how a job trains its seeds: packed or not, each is its own run to rounding
    "train.seeds",  # a job's seeds: each seed's own folder records its train.seed
)
NOT_RESULT_PREFIXES = ("logger.", "hydra.")  # the logger only writes more files
LENGTH_KEYS = ("train.epochs", "train.max_epochs_by_batch_size")  # change a result table, not a run
# Of those, the keys a sweep job's folder name still shows (conf/config.yaml's exclude_keys are the others,
# with experiment and the logger's; a test pins them): a job of train.seeds and an epoch cap are other folders
NAMED_IN_FOLDERS = ("train.max_epochs_by_batch_size", "train.seeds")


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted leaf keys of a plain config dict (train.max_epochs_by_batch_size, a mapping, is a leaf)."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and name != "train.max_epochs_by_batch_size":
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def result_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings of a run's resolved config (a plain dict) that change its result, dotted, as JSON stores
    them (so that a recorded copy compares equal)."""
    flat = flatten(config)
    kept = {k: v for k, v in flat.items()
            if k not in NOT_RESULT_KEYS and not k.startswith(NOT_RESULT_PREFIXES) and k != "logger"}
    return json.loads(json.dumps(dict(sorted(kept.items())), allow_nan=True))


def _short(value: Any) -> str:
    text = json.dumps(value, allow_nan=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def differences(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Where the recorded marker and the one for this start differ: "key: A (in the folder) vs B (now)" for
    each setting and data file that differs."""
    found = []
    for part in ("config", "data"):
        old, new = recorded.get(part) or {}, now.get(part) or {}
        for key in sorted(set(old) | set(new)):
            if old.get(key, "<absent>") != new.get(key, "<absent>"):
                what = key if part == "config" else f"data file {key}"
                found.append(f"{what}: {_describe(old, key)} (in the folder) vs {_describe(new, key)} (now)")
    return found


def _describe(values: dict[str, Any], key: str) -> str:
    if key not in values:
        return "absent"
    value = values[key]
    if isinstance(value, dict) and "sha256" in value:
        return f"{value.get('bytes')} bytes, sha256 {str(value['sha256'])[:12]}"
    return _short(value)


def train_digits(marker: dict[str, Any] | None) -> int | None:
    """How many training images a marker's data files hold (IDX: a 16-byte header, then 28x28 bytes each)."""
    images = ((marker or {}).get("data") or {}).get("train-images-idx3-ubyte") or {}
    size = images.get("bytes")
    return (size - 16) // (28 * 28) if isinstance(size, int) and size >= 16 else None


def data_id(marker: dict[str, Any] | None) -> str | None:
    """A short name for the data files a marker records (None without a marker)."""
    files = (marker or {}).get("data")
    if not files:
        return None
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:8]
