"""Run folders written directly, as normexp.train leaves them, for tests of reading and drawing results."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import compose_config
from omegaconf import OmegaConf

from normexp.analysis import runfiles


def make_run(
    sweep: Path, norm: str, batch_size: int, seed: int = 0, val_errors: tuple[float, ...] = (0.1, 0.05),
    status: str = "completed", diverged_epoch: int | None = None, epochs: int | None = None,
    extra: tuple[str, ...] = (), folder: str | None = None, pack_size: int | None = None,
    train_digits: int | None = None, lr: float | None = None,
) -> Path:
    """A run folder named as a sweep job (or ``folder``, such as a seed's of a job of train.seeds, whose
    ``pack_size`` its summary records); ``val_errors`` per finished epoch (val_loss = 2 x error + 0.01);
    ``status`` "unfinished" leaves summary.json as a run still going (or killed) leaves it: "running";
    ``train_digits``: a marker, normexp.json, recording data files with that many training images; ``lr``: the
    rate its summary records (else the text's rule at this batch size)."""
    overrides = [f"norm={norm}", f"batch_size={batch_size}", f"train.seed={seed}", *extra]
    cfg = compose_config(overrides)
    run_dir = sweep / (folder or ",".join(sorted(overrides)))
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    lr = 0.01 * batch_size / 256 if lr is None else lr
    rows = [{"epoch": e, "step": e * 10, "lr": lr, "r_max": None, "d_max": None, "train_loss": 2 * err,
             "train_error": err, "val_loss": 2 * err + 0.01, "val_error": err, "seconds": 1.0,
             "samples_per_s": 100.0} for e, err in enumerate(val_errors, start=1)]
    runfiles.write_metrics(run_dir, rows)
    summary = {
        "status": "running" if status == "unfinished" else status, "epochs_run": len(rows),
        "epochs": epochs or (cfg.train.epochs if status == "unfinished" else len(rows)),
        "final_val_error": val_errors[-1] if rows else None,
        "best_val_error": min(val_errors, default=None),
        "norm": norm, "batch_size": batch_size, "seed": seed, "lr": lr,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if pack_size is not None:
        summary["pack"] = {"pack_size": pack_size}
    if status == "diverged":
        summary["diverged_at"] = {"epoch": diverged_epoch, "step": 7, "loss": float("nan")}
    runfiles.write_summary(run_dir, summary)
    if train_digits is not None:
        files = {"train-images-idx3-ubyte": {"bytes": 16 + 784 * train_digits, "sha256": "0" * 64}}
        marker = {"format": 1, "config": runfiles.result_settings(summary["config"]), "data": files}
        (run_dir / runfiles.MARKER).write_text(json.dumps(marker))
    return run_dir
