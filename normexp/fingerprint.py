"""What makes two runs the same experiment: every config key but those that only change speed, where files go
or how long the run trains, plus the data files' sizes and hashes. A run folder records it in its marker,
normexp.json, so that a run resumes only the experiment it started, and results tell duplicates from
different experiments. No torch here: reading results needs none."""

from __future__ import annotations

import hashlib
import json
from typing import Any

FORMAT = 1  # of normexp.json
# Keys that do not change what a run computes (speed, where files go), or only for how long it trains (raised,
# a run continues): conf/config.yaml's hydra.job.config.override_dirname.exclude_keys, plus the epoch cap
NOT_RESULT_KEYS = (
    "data.root", "data.download", "train.epochs", "train.max_epochs_by_batch_size", "train.device",
    "train.resume", "train.fast", "train.threads", "train.mkldnn", "train.progress",
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
