"""The files of one run folder, each written atomically (a temporary file, then a rename)."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

METRICS, SUMMARY, CHECKPOINT = "metrics.csv", "summary.json", "checkpoint.pt"
MARKER = "normexp.json"  # what the run is (normexp.fingerprint), written when it starts
METRIC_COLUMNS = (
    "epoch", "step", "lr", "r_max", "d_max", "train_loss", "train_error",
    "val_loss", "val_error", "seconds", "samples_per_s",
)
FINAL_STATUSES = ("completed", "diverged")
SEED_FOLDER = "seed={}"  # a seed's run folder in a job of train.seeds (normexp.seeds), e.g. seed=2


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


class RunFolderError(Exception):
    """A run folder, or one of its files, that normexp cannot use as asked; the message is one line naming
    the folder or file, what is wrong and what to do, and the command exits with 2."""


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


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / SUMMARY
    return json.loads(path.read_text()) if path.exists() else None


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
    import torch

    path = run_dir / CHECKPOINT
    return torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None
