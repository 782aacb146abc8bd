"""Sweep and run folders read into one tidy table: a row per run and epoch, the run's settings as columns.

    df = results.load(["outputs/sweeps/mcn_sweep_2026-..."])

Only the files a run writes atomically (summary.json, metrics.csv) and Hydra's `.hydra/config.yaml` (for a
run without a summary yet) are read; temporary files and other hidden entries (names starting with '.') are
never touched. A run without metrics rows (diverged in its first epoch, or just started) still gets one row,
with ``epoch`` missing, so that it is never silently lost.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from normexp.analysis import runfiles, sweeps

# still running, or killed or failed while running (summary.json says "running" or "failed", or there is none)
UNFINISHED = "unfinished"
STATUSES = ("completed", "diverged", "interrupted", UNFINISHED)
RUN_COLUMNS = (
    "run_dir", "job", "variant", "norm", "groups", "batch_size", "seed", "lr", "data", "train_digits",
    "protocol", "status", "epochs",
    "epochs_run", "final_val_error", "best_val_error", "diverged_epoch", "diverged_step", "diverged_loss",
)
EPOCH_COLUMNS = tuple(c for c in runfiles.METRIC_COLUMNS if c != "lr")  # lr is a run setting here
# Settings that do not change what a run computes (where it reads data, how fast) or that the table has as
# columns of their own; the remaining settings that differ between runs of one norm name the run's variant
# (e.g. "gn groups=5" in the group-count sweep; "gn train.epochs=3" beside 30 epochs: never averaged).
# what does not make a variant of a norm: the keys that change no result (the planned epochs aside: runs of
# other lengths stay apart), the axes of the study, the evaluation batch, the protocol and the logger
NOT_VARIANT_KEYS = (
    *(k for k in runfiles.NOT_RESULT_KEYS if k not in runfiles.LENGTH_KEYS),
    "batch_size", "train.seed", "train.eval_batch_size", *sweeps.PROTOCOLS["text"],
)
NOT_STARTED_COLUMNS = ["sweep_dir", "job", "norm", "batch_size", "seed", "protocol"]
PLAN_ERRORS = (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException, HydraException)
METRICS_NEEDED = ("epoch", "train_loss", "train_error", "val_loss", "val_error")  # in every normexp version
REPLACED = "replaced-"  # a run folder's previous results, moved aside by train.resume=false: never read


def find_run_dirs(path: Path) -> list[Path]:
    """``path`` itself if it is a run folder, else every run folder below it (hidden folders left out)."""
    if runfiles.is_run_dir(path):
        return [path]
    found = []
    for child in _subfolders(path):
        found += find_run_dirs(child)
    return found


def find_sweep_dirs(path: Path) -> list[Path]:
    """``path`` and every folder below it that records a sweep (``multirun.yaml``); run folders, and hidden
    ones, are not entered."""
    if runfiles.is_run_dir(path):
        return []
    found = [path] if (path / "multirun.yaml").is_file() else []
    for child in _subfolders(path):
        found += find_sweep_dirs(child)
    return found


def planned_jobs(sweep_dir: Path) -> list[sweeps.PlannedJob] | None:
    """The jobs the sweep recorded in ``sweep_dir/multirun.yaml`` plans; None when there is no such record
    or another sweeper ran it."""
    path = sweep_dir / "multirun.yaml"
    return sweeps.planned_jobs(OmegaConf.load(path)) if path.is_file() else None


def labelled(path: str | Path, labels: Mapping[Path, str] | None) -> str | None:
    """The protocol name ``labels`` (folder -> name) gives the runs at ``path``: its nearest labelled folder's
    name, or None (the protocol the run's settings make). A label names a protocol that the settings do not
    tell apart, such as the code's protocol at another fixed rate ("drawn")."""
    at = Path(path).resolve()
    inside = [(len(folder.resolve().parts), name) for folder, name in (labels or {}).items()
              if at.is_relative_to(folder.resolve())]
    return max(inside)[1] if inside else None


def not_started(paths: Iterable[str | Path], labels: Mapping[Path, str] | None = None) -> pd.DataFrame:
    """The runs that the sweeps in ``paths`` (and below them) planned and that have no run folder yet, one
    row per seed: ``NOT_STARTED_COLUMNS``. A sweep whose plan cannot be read adds none (``load`` says so);
    ``labels`` as in ``load``."""
    rows = []
    for path in map(Path, paths):
        for sweep_dir in find_sweep_dirs(path) if path.is_dir() else []:
            try:
                plan = planned_jobs(sweep_dir) or []
            except PLAN_ERRORS:
                continue
            rows += [{"sweep_dir": str(sweep_dir), "job": job.name, "norm": job.norm,
                      "batch_size": job.batch_size, "seed": seed,
                      "protocol": labelled(sweep_dir, labels) or job.protocol}
                     for job in plan for seed, folder in _seed_folders(job)
                     if not runfiles.is_run_dir(sweep_dir / folder)]
    return pd.DataFrame(rows, columns=NOT_STARTED_COLUMNS)


def _seed_folders(job: sweeps.PlannedJob) -> list[tuple[Any, str]]:
    """Each seed of a planned job with its run folder's path in the sweep folder."""
    if not job.packed:
        return [(job.seeds[0], job.name)]
    return [(seed, f"{job.name}/{runfiles.SEED_FOLDER.format(seed)}") for seed in job.seeds]


def load(paths: Iterable[str | Path], skipped: list[str] | None = None,
         labels: Mapping[Path, str] | None = None) -> pd.DataFrame:
    """Every run in ``paths`` (sweep folders, folders of sweeps, single run folders) as one DataFrame.

    Columns: ``RUN_COLUMNS`` (one value per run), then ``EPOCH_COLUMNS`` (from metrics.csv). Runs that
    could not be read, and jobs a sweep planned that have no folder yet, are described in ``skipped``, one
    line each. ``labels`` (folder -> name) names the protocol of the runs in a folder (``labelled``).
    """
    skipped = [] if skipped is None else skipped
    runs: dict[Path, dict[str, Any]] = {}
    for path in map(Path, paths):
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such folder")
        for sweep_dir in find_sweep_dirs(path):
            _note_jobs_not_started(sweep_dir, skipped)
        for run_dir in find_run_dirs(path):
            if run_dir.resolve() in runs:
                continue  # the same run reached through two of ``paths``
            try:
                runs[run_dir.resolve()] = run = read_run(run_dir)
                run["settings"]["protocol"] = labelled(run_dir, labels) or run["settings"]["protocol"]
            except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError, OmegaConfBaseException) as err:
                skipped.append(f"{run_dir}: unreadable, left out ({type(err).__name__}: {err})")
    runs = _drop_duplicates(runs, skipped)
    if not runs:
        return pd.DataFrame(columns=[*RUN_COLUMNS, *EPOCH_COLUMNS])
    df = pd.concat([run["metrics"].assign(**run["settings"]) for run in runs.values()], ignore_index=True)
    configs = {run["settings"]["run_dir"]: run["config"] for run in runs.values()}
    df["variant"] = df["run_dir"].map(variants(configs))
    if df["protocol"].nunique() > 1:  # runs of both protocols: each variant names its own
        df["variant"] = df["variant"] + " [" + df["protocol"] + "]"
    for column in ("epoch", "step", "epochs", "epochs_run", "diverged_epoch", "diverged_step"):
        df[column] = pd.to_numeric(df[column]).astype("Int64")
    for column in ("final_val_error", "best_val_error", "diverged_loss"):
        df[column] = pd.to_numeric(df[column]).astype(float)
    df = df[[*RUN_COLUMNS, *EPOCH_COLUMNS]]
    order = ["norm", "variant", "batch_size", "seed", "run_dir", "epoch"]
    return df.sort_values(order, ascending=[True, True, False, True, True, True], ignore_index=True)


def _subfolders(path: Path) -> list[Path]:
    return [p for p in runfiles.subfolders(path) if not p.name.startswith(REPLACED)]


def _drop_duplicates(runs: dict[Path, dict[str, Any]], skipped: list[str]) -> dict[Path, dict[str, Any]]:
    """One run of each experiment (every result-relevant setting, the seed, the data files and the planned
    epochs the same: a sweep and its copy), the one furthest along (the first found among equals); the
    others are named in ``skipped``."""
    groups: dict[str, list[Path]] = {}
    for path, run in runs.items():
        groups.setdefault(run["identity"], []).append(path)
    found = {path: i for i, path in enumerate(runs)}
    kept = set()
    for paths in groups.values():
        def progress(p: Path) -> tuple:
            settings = runs[p]["settings"]
            return (settings["status"] != "completed", -(settings["epochs_run"] or 0), found[p])

        first, *others = sorted(paths, key=progress)
        kept.add(first)
        skipped += [f"{p}: the same run as {first} (every result-relevant setting, the seed, the data and "
                    f"the epochs): left out as a duplicate; {first} is used" for p in others]
    return {p: run for p, run in runs.items() if p in kept}


def _note_jobs_not_started(sweep_dir: Path, skipped: list[str]) -> None:
    try:
        plan = planned_jobs(sweep_dir)
    except PLAN_ERRORS as err:
        skipped.append(f"{sweep_dir / 'multirun.yaml'}: unreadable ({type(err).__name__}: {err}); cannot "
                       "tell which jobs the sweep planned")
        return
    waiting = [job for job in plan or []
               if not any(runfiles.is_run_dir(sweep_dir / folder) for _, folder in _seed_folders(job))]
    if waiting:
        skipped.append(f"{sweep_dir}: {len(waiting)} of the {len(plan)} jobs in multirun.yaml have no "
                       "folder yet (not started)")


def read_run(run_dir: Path) -> dict[str, Any]:
    """One run folder: its settings (one value each), its metrics rows and its configuration."""
    try:
        summary = runfiles.read_summary(run_dir)  # before the metrics: a finished run's are final
    except ValueError as err:
        raise ValueError(f"{runfiles.SUMMARY}: {err}") from err
    marker = _read_object(runfiles.inside(run_dir, runfiles.MARKER))
    if summary is not None and "config" in summary:
        cfg = OmegaConf.create(summary["config"])
    else:
        cfg = OmegaConf.load(runfiles.inside(run_dir, ".hydra/config.yaml"))
    metrics = _read_metrics(runfiles.inside(run_dir, runfiles.METRICS)).reindex(columns=list(EPOCH_COLUMNS))
    if metrics.empty:
        metrics = pd.DataFrame({c: [math.nan] for c in EPOCH_COLUMNS})
    config = OmegaConf.to_container(cfg, resolve=False)
    if runfiles.data_id(marker) is not None:  # runs on other data files are other variants
        config["data"]["files"] = runfiles.data_id(marker)
    settings = run_settings(run_dir, cfg, summary) | {"train_digits": runfiles.train_digits(marker)}
    return {"settings": settings, "metrics": metrics, "config": config,
            "identity": identity(cfg, marker)}


def _read_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path`` (None where there is none); anything else is a ValueError."""
    if not path.is_file():
        return None
    value = json.loads(path.read_text())
    if not isinstance(value, dict):
        raise ValueError(f"{path.name} holds a JSON {type(value).__name__}, not normexp's object")
    return value


def _read_metrics(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame()
    metrics = pd.read_csv(path)
    missing = [c for c in METRICS_NEEDED if c not in metrics.columns]
    if missing:
        raise ValueError(f"{path.name} has the columns {', '.join(map(str, metrics.columns))}: not normexp's "
                         f"(no {', '.join(missing)})")
    for column in METRICS_NEEDED:
        try:
            pd.to_numeric(metrics[column])
        except ValueError as err:
            raise ValueError(f"{path.name}, column {column}: {err}") from err
    return metrics


def identity(cfg: DictConfig, marker: dict[str, Any] | None) -> str:
    """What makes a run the experiment it is, as a string: its marker's settings and data files (or, for a
    run from before markers, its config's result-relevant settings), and how many epochs it plans."""
    if marker is not None and isinstance(marker.get("config"), dict):
        settings = marker["config"]
    else:
        try:
            settings = runfiles.result_settings(OmegaConf.to_container(cfg, resolve=True))
        except OmegaConfBaseException:
            settings = runfiles.result_settings(OmegaConf.to_container(cfg, resolve=False))
    length = sweeps.planned_epochs(cfg.train.get("epochs"), cfg.train.get("max_epochs_by_batch_size"),
                                   cfg.get("batch_size"))
    return json.dumps([settings, runfiles.data_id(marker), length], sort_keys=True, default=str)


def run_settings(run_dir: Path, cfg: DictConfig, summary: dict[str, Any] | None) -> dict[str, Any]:
    bs = cfg.batch_size
    summary = summary or {}
    diverged = summary.get("diverged_at") or {}
    groups = cfg.norm.get("groups")
    lr, epochs = summary.get("lr"), summary.get("epochs")  # None for a run that left no summary.json
    protocol = summary.get("protocol") or sweeps.protocol_name(sweeps.protocol_settings(cfg))
    status = summary.get("status", UNFINISHED)
    return {
        "run_dir": str(run_dir), "job": run_dir.name, "norm": cfg.norm.name,
        "groups": None if groups is None else str(groups), "batch_size": int(bs), "seed": int(cfg.train.seed),
        "lr": None if lr is None else float(lr), "data": cfg.data.name, "protocol": protocol,
        "status": UNFINISHED if status in ("running", "failed") else status, "epochs": epochs,
        "epochs_run": summary.get("epochs_run"), "final_val_error": summary.get("final_val_error"),
        "best_val_error": summary.get("best_val_error"), "diverged_epoch": diverged.get("epoch"),
        "diverged_step": diverged.get("step"), "diverged_loss": diverged.get("loss"),
    }


def variants(configs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Per run folder: the norm name, plus the settings in which the runs of that norm differ, as in
    "gn groups=5" (settings in ``NOT_VARIANT_KEYS`` and settings some runs lack are not counted). The length
    keys count only where two runs of the norm at one batch size plan different epochs (epoch caps that
    differ at other batch sizes make no variant)."""
    flat = {run_dir: runfiles.flatten(config) for run_dir, config in configs.items()}
    by_norm: dict[str, list[str]] = {}
    for run_dir, settings in flat.items():
        by_norm.setdefault(settings["norm.name"], []).append(run_dir)
    names = {}
    for name, run_dirs in by_norm.items():
        keys = {k for k in set.intersection(*(set(flat[d]) for d in run_dirs)) - set(NOT_VARIANT_KEYS)
                if not k.startswith(runfiles.NOT_RESULT_PREFIXES)}
        planned: dict[Any, set] = {}
        for d in run_dirs:
            bs, caps = flat[d]["batch_size"], flat[d].get("train.max_epochs_by_batch_size")
            planned.setdefault(bs, set()).add(sweeps.planned_epochs(flat[d].get("train.epochs"), caps, bs))
        if all(len(epochs) == 1 for epochs in planned.values()):
            keys -= set(runfiles.LENGTH_KEYS)
        varying = sorted(k for k in keys if len({json.dumps(flat[d][k]) for d in run_dirs}) > 1)
        for d in run_dirs:
            names[d] = " ".join([name, *(f"{k.removeprefix('norm.')}={flat[d][k]}" for k in varying)])
    return names


def runs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: the run columns of ``df``."""
    return df.drop_duplicates("run_dir")[list(RUN_COLUMNS)].reset_index(drop=True)


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per variant and batch size: final validation error over the completed runs (mean, std, min, max) and
    how many runs ended in each status; ``status`` is that status where all runs share it, else the counts."""
    rows = []
    for (variant, bs), group in runs(df).groupby(["variant", "batch_size"]):
        errors = group.loc[group["status"] == "completed", "final_val_error"].astype(float)
        counts = group["status"].value_counts()
        row = {"variant": variant, "norm": group["norm"].iloc[0], "protocol": group["protocol"].iloc[0],
               "batch_size": bs, "runs": len(group), "seeds": group["seed"].nunique(),
               "completed_seeds": group.loc[group["status"] == "completed", "seed"].nunique()}
        row |= {status: int(counts.get(status, 0)) for status in STATUSES}
        row |= {"final_val_error_mean": errors.mean(), "final_val_error_std": errors.std(),
                "final_val_error_min": errors.min(), "final_val_error_max": errors.max()}
        row["status"] = (counts.index[0] if len(counts) == 1
                         else ", ".join(f"{row[s]} {s}" for s in STATUSES if row[s]))
        row["comparable"] = bool(comparable(group).all())
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table = _beside_the_writeup(table)
    order = ["norm", "variant", "batch_size"]
    return table.sort_values(order, ascending=[True, True, False], ignore_index=True)


def _beside_the_writeup(table: pd.DataFrame) -> pd.DataFrame:
    """The writeup's value (``writeup``: as read off; ``writeup_error``) and ours minus it (``writeup_diff``,
    mean final error) in the rows whose runs are comparable with the writeup's (``comparable``)."""
    table = table.merge(writeup_final_errors(), on=["norm", "batch_size"], how="left")
    table.loc[~table["comparable"], ["writeup", "writeup_error"]] = [None, float("nan")]
    table["writeup_diff"] = table["final_val_error_mean"] - table["writeup_error"]
    return table


def summary_markdown(table: pd.DataFrame, order: Iterable[str] = ()) -> str:
    """``summary_table`` as a Markdown table: a row per variant, a column per batch size (largest first);
    each cell the final validation error, mean ± std over completed seeds, and any runs not completed."""
    if table.empty:
        return "(no runs)\n"
    variants_ = variant_order(table["variant"].unique(), order)
    sizes = sorted(table["batch_size"].unique(), reverse=True)
    cells = {(r.variant, r.batch_size): _cell(r) for r in table.itertuples()}
    lines = ["| norm | " + " | ".join(f"bs {bs}" for bs in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
    for v in variants_:
        lines.append(f"| {v} | " + " | ".join(cells.get((v, bs), "") for bs in sizes) + " |")
    return "\n".join(lines) + "\n"


NUMBER = re.compile(r"(\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")  # 5, 0.0001, 3e-05: compared as numbers


def variant_order(names: Iterable[str], norm_order: Iterable[str] = ()) -> list[str]:
    """Variants sorted by norm (in ``norm_order`` first), then naturally, numbers by value ("groups=5" before
    "groups=10", "lr=3e-05" before "lr=0.0001" before "lr=0.001"), then by name: the same order every time."""
    rank = {name: i for i, name in enumerate(norm_order)}

    def key(variant: str) -> tuple:
        parts = [float(t) if NUMBER.fullmatch(t) else t for t in NUMBER.split(variant)]
        return rank.get(variant.split()[0], len(rank)), [(isinstance(p, str), p) for p in parts], variant

    return sorted(set(names), key=key)


def _cell(row: Any) -> str:
    parts = []
    if row.completed:
        text = f"{row.final_val_error_mean:.4f}"
        if row.completed > 1:
            text += f" ± {row.final_val_error_std:.4f}"
        parts.append(text + (f" (n={row.completed_seeds})" if row.completed > 1 else ""))
    for status in STATUSES[1:]:
        if getattr(row, status):
            parts.append(f"{getattr(row, status)}/{row.runs} {status}" if row.runs > 1 else status)
    return "; ".join(parts) + _writeup_note(row)


def _writeup_note(row: Any) -> str:
    """The writeup's value beside ours, as a fraction like ours, and the difference where both are numbers."""
    if not isinstance(row.writeup, str):
        return ""
    if math.isnan(row.writeup_error):
        return " · writeup: " + {"div": "diverged", "": "no run"}.get(row.writeup, row.writeup)
    diff = "" if math.isnan(row.writeup_diff) else f", ours {row.writeup_diff:+.4f}"
    return f" · writeup {row.writeup_error:.4f}{diff}"


def status_notes(df: pd.DataFrame) -> list[str]:
    """One line for each run that did not complete: what happened and how the figures and table show it."""
    notes = []
    for run in runs(df).itertuples():
        where = f"{run.run_dir}: {run.variant}, batch size {run.batch_size}, seed {run.seed}"
        rows = int(df.loc[df["run_dir"] == run.run_dir, "epoch"].notna().sum())
        drawn = f"drawn for its {rows} finished epoch{'s' * (rows > 1)}" if rows else "nothing to draw"
        if run.status == "diverged":
            notes.append(f"{where}: diverged in epoch {run.diverged_epoch}, step {run.diverged_step} "
                         f"(training loss {run.diverged_loss:.4g}): {drawn}, a red x at epoch "
                         f"{run.diverged_epoch}; not in the summary error")
        elif run.status == "interrupted":
            notes.append(f"{where}: interrupted: {drawn}; not in the summary error until resumed (run the "
                         "sweep again into the same hydra.sweep.dir)")
        elif run.status == UNFINISHED:
            notes.append(f"{where}: no summary.json yet (still running, killed or failed): {drawn}; not in "
                         "the summary error")
    return notes


def latest_sweep(root: str | Path = "outputs/sweeps", prefix: str = "mcn_sweep_") -> Path | None:
    """The newest sweep folder under ``root`` whose name starts with ``prefix`` (names sort by start time)."""
    root = Path(root)
    found = sorted(p for p in root.glob(f"{prefix}*") if p.is_dir()) if root.is_dir() else []
    return found[-1] if found else None


# ---------------------------------------------------------------- the writeup's own results

WRITEUP_CSV = Path(__file__).with_name("writeup.csv")  # its final errors, read off its figures
WRITEUP_TRAIN_DIGITS = 60_000  # the complete MNIST training set
WRITEUP_PRESET = Path(__file__).resolve().parents[2] / "conf" / "experiment" / "mcn_sweep.yaml"  # its epochs


@functools.cache
def _writeup_epochs() -> tuple[Any, Any]:
    train = (yaml.safe_load(WRITEUP_PRESET.read_text()) or {}).get("train") or {}
    return train.get("epochs"), train.get("max_epochs_by_batch_size")


def writeup_epochs(batch_size: int) -> int | None:
    """How many epochs the writeup trained at ``batch_size``: what its preset, ``mcn_sweep``, plans."""
    return sweeps.planned_epochs(*_writeup_epochs(), int(batch_size))


def writeup_final_errors() -> pd.DataFrame:
    """norm, batch_size, writeup (the text as read off: a number in %, "div", or "" for no run) and
    writeup_error (as a fraction, like normexp's errors; NaN unless a number)."""
    table = pd.read_csv(WRITEUP_CSV, comment="#", dtype={"writeup": str}, keep_default_na=False)
    table["writeup_error"] = pd.to_numeric(table["writeup"], errors="coerce") / 100
    return table


def comparable(runs: pd.DataFrame) -> pd.Series:
    """Per run (``runs`` rows): trained on the writeup's data for the writeup's number of epochs."""
    planned = runs["batch_size"].map(writeup_epochs)
    data = (runs["data"] == "mnist") & (runs["train_digits"] == WRITEUP_TRAIN_DIGITS)
    return data & (runs["epochs"] == planned)


WRITEUP_CURVES_CSV = Path(__file__).with_name("writeup_curves.csv")  # its lines, read off its figures
CURVES = ("val_error", "val_loss")  # the figures' right panel (error) and left panel (objective)


def writeup_curves() -> pd.DataFrame:
    """The writeup's lines: norm, batch_size, epoch, val_error and val_loss (its objective), NaN where its
    figure shows no vertex (``scripts/digitize_writeup.py`` read them, and says how)."""
    long = pd.read_csv(WRITEUP_CURVES_CSV, comment="#")
    wide = long.pivot(index=["norm", "batch_size", "epoch"], columns="panel", values="value")
    return wide.rename(columns={"error": "val_error", "objective": "val_loss"}).reset_index()[
        ["norm", "batch_size", "epoch", *CURVES]]


def curve_distance(df: pd.DataFrame) -> pd.DataFrame:
    """Per protocol, variant and batch size: how far the runs' curve (mean over seeds per epoch) lies from
    the writeup's line of its norm: the mean absolute difference of validation error and of validation loss
    over the epochs both have (``epochs``); no row where they share none."""
    epochs = df.dropna(subset=["epoch"])
    keys = ["protocol", "variant", "norm", "batch_size"]
    ours = epochs.groupby([*keys, "epoch"])[list(CURVES)].mean().reset_index()
    both = ours.merge(writeup_curves(), on=["norm", "batch_size", "epoch"], suffixes=("", "_writeup"))
    rows = []
    for key, group in both.groupby(keys):
        row = dict(zip(keys, key, strict=True))
        for column in CURVES:
            shared = group.dropna(subset=[column, f"{column}_writeup"])
            row[f"{column}_distance"] = (shared[column] - shared[f"{column}_writeup"]).abs().mean()
        row["epochs"] = int(group.dropna(subset=["val_error", "val_error_writeup"])["epoch"].nunique())
        rows.append(row)
    table = pd.DataFrame(rows, columns=[*keys, *(f"{c}_distance" for c in CURVES), "epochs"])
    return table[table["epochs"] > 0].reset_index(drop=True)


# ---------------------------------------------------------------- the learning rate as an axis

GOOD_MARGIN = 0.2  # a rate is in a norm's good band where its error is within 20 % of the norm's best
STUCK = 0.5  # a best error this high is no good rate at all (chance is 0.9): no good band


def rate_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per protocol, norm, batch size and learning rate: the final validation error of the completed runs
    (mean, min, max over seeds), how many runs and how many diverged (a diverged run has no final error: it
    is a point of its own on the curve, never averaged in)."""
    rows = []
    for (protocol, norm, bs, lr), group in runs(df).groupby(["protocol", "norm", "batch_size", "lr"]):
        errors = group.loc[group["status"] == "completed", "final_val_error"].astype(float)
        rows.append({"protocol": protocol, "norm": norm, "batch_size": bs, "lr": lr, "runs": len(group),
                     "diverged": int((group["status"] == "diverged").sum()),
                     "unfinished": int((~group["status"].isin(("completed", "diverged"))).sum()),
                     "error": errors.mean(), "error_min": errors.min(), "error_max": errors.max()})
    return pd.DataFrame(rows, columns=["protocol", "norm", "batch_size", "lr", "runs", "diverged",
                                       "unfinished", "error", "error_min", "error_max"])


def rate_axes(rates: pd.DataFrame) -> set[str]:
    """The protocols whose runs (``rate_table``) have the rate as an axis: several rates for one norm and
    batch size within the protocol (the two protocols' own rates, side by side, are not)."""
    several = rates.groupby(["protocol", "norm", "batch_size"])["lr"].nunique() > 1
    return set(several[several].index.get_level_values("protocol"))


def axis_rates(df: pd.DataFrame) -> pd.DataFrame:
    """``rate_table``'s rows of the protocols with a rate axis (``rate_axes``); none where no protocol has
    one."""
    rates = rate_table(df)
    return rates[rates["protocol"].isin(rate_axes(rates))]


SGD_CONFIG = Path(__file__).resolve().parents[2] / "conf" / "optim" / "sgd.yaml"  # the writeup's rates


def code_rates() -> tuple[dict[str, float], int]:
    """The writeup's code's one rate per norm (``optim.auto_lr``: "none" for the unnormalized net,
    "default" for every norm) and the batch size its text scales them from (``optim.ref_batch_size``)."""
    optim = yaml.safe_load(SGD_CONFIG.read_text())
    return ({"none": optim["auto_lr"]["without_norm"], "default": optim["auto_lr"]["with_norm"]},
            int(optim["ref_batch_size"]))


def best_rates(rates: pd.DataFrame, fixed: dict[str, float], reference_batch: int) -> pd.DataFrame:
    """Per protocol, norm and batch size (``rate_table`` rows): the best rate and its error; the good band
    (the rates whose mean error is within ``GOOD_MARGIN`` of the best and below ``STUCK``: lowest, highest,
    width in decades, and whether it touches the grid's edge; NaN where every rate is stuck); and the error
    at the fixed protocol's rate (``fixed``: norm -> rate, the same at every batch size) and at that rate
    scaled linearly with the batch size from ``reference_batch``, both read off the curve by interpolation
    in log rate (NaN outside the grid or next to a diverged or missing point)."""
    rows = []
    for (protocol, norm, bs), group in rates.groupby(["protocol", "norm", "batch_size"]):
        group = group.sort_values("lr")
        done = group.dropna(subset=["error"])
        if done.empty:
            continue
        best = done.loc[done["error"].idxmin()]
        good = done[(done["error"] <= best["error"] * (1 + GOOD_MARGIN)) & (done["error"] < STUCK)]["lr"]
        low, high = (good.min(), good.max()) if len(good) else (math.nan, math.nan)  # none: all stuck
        rate = fixed.get(norm, fixed.get("default"))
        rows.append({"protocol": protocol, "norm": norm, "batch_size": bs, "best_lr": best["lr"],
                     "best_error": best["error"], "best_runs": best["runs"],
                     "good_low": low, "good_high": high,
                     "good_decades": math.log10(high / low) if len(good) else math.nan,
                     "good_at_edge": bool(len(good)) and (low == group["lr"].min()
                                                          or high == group["lr"].max()),
                     "fixed_lr": rate, "fixed_error": error_at(group, rate),
                     "scaled_lr": rate * bs / reference_batch,
                     "scaled_error": error_at(group, rate * bs / reference_batch)})
    return pd.DataFrame(rows)


def at_rates(df: pd.DataFrame, best: pd.DataFrame, axes: Iterable[str] | None = None) -> pd.DataFrame:
    """The rows of ``df`` (``load``) of the runs at their norm's best rate and at the code's fixed rate
    (``best_rates``'s best_lr and fixed_lr) for their protocol and batch size, the protocol named "<protocol>
    at its best rate" and "<protocol> at the fixed rate": the claims decided with every norm at its own
    best rate, beside the one rate of the writeup's code. Where ``axes`` names the protocols with a rate
    axis (``rate_axes``), only theirs are so split; the other protocols' rows stay as they are."""
    keys, parts = ["protocol", "norm", "batch_size"], []
    if axes is not None:
        parts.append(df[~df["protocol"].isin(set(axes))])
        df = df[df["protocol"].isin(set(axes))]
    for column, label in (("fixed_lr", "at the fixed rate"), ("best_lr", "at its best rate")):
        rows = df.merge(best[[*keys, column]].rename(columns={column: "lr"}), on=[*keys, "lr"])
        parts.append(rows.assign(protocol=rows["protocol"] + " " + label))
    return pd.concat(parts, ignore_index=True)


def best_rates_markdown(best: pd.DataFrame) -> str:
    """``best_rates`` as a Markdown table, errors in %."""
    def pct(x: float) -> str:
        return "–" if pd.isna(x) else f"{100 * x:.2f}"

    lines = [f"| norm | batch size | best rate | its error | good band (within {GOOD_MARGIN:.0%}) | decades "
             "| at the fixed rate | at the scaled rate |", "|---" * 8 + "|"]
    for r in best.sort_values(["norm", "batch_size"], ascending=[True, False]).itertuples():
        edge = " (grid edge)" if r.good_at_edge else ""
        band = "none: every rate stuck" if pd.isna(r.good_low) else f"{r.good_low:g}–{r.good_high:g}{edge}"
        decades = "–" if pd.isna(r.good_decades) else f"{r.good_decades:.1f}"
        lines.append(f"| {r.norm} | {r.batch_size} | {r.best_lr:g} | {pct(r.best_error)} (n={r.best_runs}) | "
                     f"{band} | {decades} | {pct(r.fixed_error)} | {pct(r.scaled_error)} |")
    return "\n".join(lines) + "\n"


def error_at(group: pd.DataFrame, lr: float) -> float:
    """The mean error at ``lr``, interpolated in log rate between the two grid rates around it."""
    rates = group["lr"].to_numpy(float)
    if not rates.min() <= lr <= rates.max():
        return float("nan")
    upper = int((rates >= lr).argmax())
    lower = upper if rates[upper] == lr else upper - 1
    e0, e1 = group["error"].iloc[lower], group["error"].iloc[upper]
    if lower == upper:
        return float(e0)
    t = (math.log(lr) - math.log(rates[lower])) / (math.log(rates[upper]) - math.log(rates[lower]))
    return float(e0 + t * (e1 - e0))  # NaN where either side diverged
