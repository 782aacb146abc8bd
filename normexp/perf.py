"""The machine a run trains on: its CPU settings (threads, oneDNN, memory layout), from its batch size, its
norm's kernels and the jobs sharing the box; and what a run records of the machine (its provenance, below).

Measured on the machine where the tool runs: ``python -m normexp.tune`` times the candidate settings as whole
training steps and writes the winners to a small JSON cache (``cache_dir()``), keyed by what decides the
kernels (``cpu_fingerprint()`` and normexp's version). ``choose`` reads it; a run never measures. Where there
is no cache for this machine, the rule below is the fallback (``fallback``).

The fallback was chosen by measurement on this project's 2-core machine (AMD EPYC, torch 2.14;
``scripts/bench.py`` and the README's Performance section). Samples/s of whole training steps of one job
alone on the box, 2 threads, medians of 5 interleaved blocks (the machine is shared: repeated measurements
move by up to 15 %):

    batch size              1      2      4      8     16     32     64    128    256
    GN, native, NCHW      1620   2518   3663   5042   2509   2919
    GN, oneDNN, NCHW                            3270   4740   6191   6942   7471
    GN, oneDNN, NHWC                                   4362   5840   7494   8791
    BN, native, NCHW      1494   2404   3606   4834   2405   2804
    BN, oneDNN, NCHW                            3130   4406   5597   5863   7053   7065
    BN, oneDNN, NHWC                            2288   4748   4748   5576   7776   8052
    one thread instead of two, native: GN 1388, 1964, 2727, 3249 and BN 1326, 1835, 2626, 3137 (1 to 8);
    at batch size 1, a repetition an hour later: GN 1310 on one thread, 1084 on two; BN 1139 and 898

Up to batch size 8 PyTorch's native convolutions are fastest: oneDNN's per-call set-up costs more than it
saves; from 16 on the native ones fall behind. Channels-last (NHWC) lets oneDNN do the arithmetic faster, but
batch norm's CPU kernels and the pooling layers lose some of it again: it pays from batch size 64 on. A second
thread pays from batch size 2 on (at 1 it wins or loses by 15-20 % from one measurement to the next, so one
thread, which cannot stall on a busy sibling core); but two jobs side by side, one core each, use the machine
better than one job on two threads, so "auto" gives each job its share of the cores
(``parallel_jobs`` counts the jobs).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

log = logging.getLogger("normexp")

# The fallback (no measurement for this machine): under "auto", the largest batch sizes that run on one
# thread, with PyTorch's native convolutions (oneDNN off), and in NCHW; larger ones run in channels-last
ONE_THREAD_MAX = 1
NATIVE_CONV_MAX = 8
NCHW_MAX = 32

# The measured settings: a JSON file per machine and normexp version, in cache_dir()
CACHE_SCHEMA = 1
CACHE_ENV = "NORMEXP_CACHE_DIR"


@dataclass(frozen=True)
class CpuSettings:
    threads: int
    mkldnn: bool
    channels_last: bool = False  # conv weights, and so activations, in NHWC: oneDNN's fast layout
    source: str = field(default="fallback", compare=False)  # the cache file's name, or "fallback"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def as_dict(self) -> dict[str, Any]:
        """For summary.json and the checkpoint (JSON types only)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CpuSettings:
        """The settings ``as_dict`` wrote (a resumed run keeps its own); ValueError for anything else."""
        try:
            threads, mkldnn, channels_last = d["threads"], d["mkldnn"], d.get("channels_last", False)
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"not CPU settings: {d!r}") from err
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"not CPU settings (threads={threads!r}): {d!r}")
        if not isinstance(mkldnn, bool) or not isinstance(channels_last, bool):
            raise ValueError(f"not CPU settings (mkldnn and channels_last must be true or false): {d!r}")
        return cls(threads, mkldnn, channels_last, source=str(d.get("source", "fallback")))


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parallel_jobs() -> int:
    """How many jobs of this sweep the launcher runs at once on this machine (1 outside a sweep)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        launcher = HydraConfig.get().launcher
    except (ImportError, ValueError):
        return 1
    target = str(launcher.get("_target_", ""))
    if "joblib" in target.lower():
        n_jobs = launcher.get("n_jobs", -1)
        return available_cores() if n_jobs is None or n_jobs < 1 else n_jobs
    if "LocalLauncher" in target:
        # submitit's local launcher starts every job of the sweep at once: the box is shared by as many jobs
        # as it has cores, or by as many as fit when each asks for cpus_per_task
        cpus = launcher.get("cpus_per_task")
        return max(1, available_cores() // cpus) if cpus else available_cores()
    return 1


# CPU features that decide which kernels torch and oneDNN run (and so how float32 sums are ordered)
KERNEL_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2")


@functools.lru_cache(maxsize=1)
def _cpu_info() -> tuple[str, frozenset[str]]:
    """The CPU's model name and feature flags, from /proc/cpuinfo where there is one."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key in ("flags", "Features"):
                    flags = set(value.split())
                if flags and key == "":
                    break
    except OSError:
        pass
    return model, frozenset(flags)


def cpu_fingerprint() -> dict[str, object]:
    """What decides this machine's CPU kernels: model, kernel-relevant flags, cores, torch and oneDNN."""
    model, flags = _cpu_info()
    return {
        "model": model,
        "machine": platform.machine(),
        "flags": sorted(flags.intersection(KERNEL_FLAGS)),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "cores": available_cores(),
        "torch": torch.__version__,
        "onednn": onednn_version(),
    }


@functools.lru_cache(maxsize=1)
def onednn_version() -> str | None:
    """oneDNN's version as torch's build information states it (torch has no other public accessor)."""
    found = re.search(r"MKL-DNN v([0-9][0-9.]*)", torch.__config__.show())
    return found.group(1) if found else None


# ---------------------------------------------------------------- the cache of measured settings


def normexp_version() -> str:
    try:
        return importlib.metadata.version("normexp")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def cache_dir() -> Path:
    """``$NORMEXP_CACHE_DIR``, else ``$XDG_CACHE_HOME/normexp``, else ``~/.cache/normexp``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "normexp"


def cache_key() -> dict[str, Any]:
    """What the measured settings hold for: this machine's kernels and normexp's version."""
    return {"fingerprint": cpu_fingerprint(), "normexp": normexp_version()}


def cache_path() -> Path:
    """This machine's cache file: its name carries a hash of ``cache_key()``."""
    digest = hashlib.sha256(json.dumps(cache_key(), sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"cpu-settings-{digest}.json"


class Cache(NamedTuple):
    """A cache file as read: per family and batch size, the settings measured and, where measured, whether
    packed seeds won (``normexp.tune``'s measure_packing)."""

    settings: dict[str, dict[int, CpuSettings]]
    packing_wins: dict[str, dict[int, bool]]


# path -> (modification time and size when read, the cache or None): read once, warned about once
_read: dict[Path, tuple[tuple[int, int], Cache | None]] = {}


def _parse_cache(content: Any, name: str) -> Cache:
    """The cache's tables (family -> batch size -> settings, and packing's verdict); ValueError saying what
    is wrong."""
    if not isinstance(content, dict) or "schema" not in content:
        raise ValueError("not a normexp CPU settings cache")
    if content["schema"] != CACHE_SCHEMA:
        raise ValueError(f"schema {content['schema']!r}, this normexp reads schema {CACHE_SCHEMA}")
    if content.get("key") != cache_key():
        raise ValueError("measured on another machine or normexp version")
    families = content.get("families")
    if not isinstance(families, dict):
        raise ValueError("no 'families' table")
    table: dict[str, dict[int, CpuSettings]] = {}
    packing: dict[str, dict[int, bool]] = {}
    for family, cells in families.items():
        if not (isinstance(family, str) and family and isinstance(cells, dict)):
            raise ValueError(f"family {family!r}: not a table of batch sizes")
        table[family], packing[family] = {}, {}
        for batch_size, cell in cells.items():
            if not (isinstance(batch_size, str) and batch_size.isdigit() and int(batch_size) >= 1):
                raise ValueError(f"{family}: batch size {batch_size!r}")
            settings = CpuSettings.from_dict(cell)
            first_use = cell.get("measured_by") == "first use"  # by a run (normexp.tune's first_use)
            source = f"{name}, measured on first use in {cell.get('seconds')} s" if first_use else name
            table[family][int(batch_size)] = CpuSettings(
                settings.threads, settings.mkldnn, settings.channels_last, source=source
            )
            if isinstance(cell.get("packed"), dict):
                packing[family][int(batch_size)] = bool(cell["packed"].get("wins"))
    return Cache(table, packing)


def _load(path: Path | None = None) -> Cache | None:
    """The cache file at ``path`` (this machine's by default) as read, or None where there is none. A
    corrupt or foreign file gets one warning naming it, and None (the fallback is used)."""
    path = cache_path() if path is None else path
    try:
        stat = path.stat()
    except OSError:
        return None
    signature = (stat.st_mtime_ns, stat.st_size)
    if path in _read and _read[path][0] == signature:
        return _read[path][1]
    try:
        cache = _parse_cache(json.loads(path.read_text()), path.name)
    except (OSError, UnicodeDecodeError, ValueError) as err:  # JSONDecodeError is a ValueError
        log.warning("ignoring the CPU settings cache %s (%s); using the built-in rule", path,
                    str(err).splitlines()[0])
        cache = None
    _read[path] = (signature, cache)
    return cache


def load_cache(path: Path | None = None) -> dict[str, dict[int, CpuSettings]] | None:
    """This machine's measured settings (family -> batch size -> settings), or None where there are none
    (or the file is corrupt or foreign: ``_load``)."""
    cache = _load(path)
    return None if cache is None else cache.settings


def nearest(batch_size: int, measured: list[int] | set[int] | dict[int, Any]) -> int:
    """The measured batch size nearest to ``batch_size`` in log2 (a tie goes to the smaller one)."""
    return min(measured, key=lambda b: (abs(math.log2(b) - math.log2(batch_size)), b))


def fallback(batch_size: int, cores: int) -> CpuSettings:
    """The built-in rule on CPU, for a job with ``cores`` cores to itself (used without a measurement)."""
    return CpuSettings(
        threads=1 if batch_size <= ONE_THREAD_MAX else cores,
        mkldnn=batch_size > NATIVE_CONV_MAX,
        channels_last=batch_size > NCHW_MAX,
    )


def measured(batch_size: int, family: str) -> CpuSettings | None:
    """This machine's measured settings for ``family`` at the nearest measured batch size, if any."""
    cells = (load_cache() or {}).get(family)
    return cells[nearest(batch_size, cells)] if cells else None


def choose(
    batch_size: int,
    device: torch.device,
    threads="auto",
    mkldnn="auto",
    jobs: int = 1,
    fast: bool = True,
    family: str = "gn",
) -> CpuSettings:
    """The settings for a run of a norm whose layers run ``family``'s CPU kernels (``norm.kernels``: none,
    bn, gn, ...): on CPU this machine's measurement where ``python -m normexp.tune`` made one for that
    family, else the fallback. Explicit ``threads``/``mkldnn`` values win;
    "auto" threads never exceed the job's share of the cores (``jobs`` jobs sharing the box). ``fast`` allows
    the channels-last layout (used with oneDNN on CPU only; the plain path keeps PyTorch's default layout)."""
    cpu = device.type == "cpu"
    share = max(1, available_cores() // max(1, jobs))
    rule = (measured(batch_size, family) if cpu else None) or fallback(batch_size, share)
    if not cpu:
        rule = CpuSettings(threads=share, mkldnn=True, channels_last=False)
    use_mkldnn = bool(mkldnn) if mkldnn != "auto" else rule.mkldnn
    # the measured layout goes with the measured oneDNN choice; an explicit other one takes the fallback's
    layout = rule.channels_last if use_mkldnn == rule.mkldnn else batch_size > NCHW_MAX
    return CpuSettings(
        threads=int(threads) if threads != "auto" else min(rule.threads, share),
        mkldnn=use_mkldnn,
        channels_last=fast and cpu and use_mkldnn and layout,
        source=rule.source,
    )


def pack_size(requested: int | str, device: torch.device, seeds: int, family: str = "gn",
              batch_size: int = 1) -> int:
    """How many seeds of a ``train.seeds`` job train packed together (1: one after another): as
    ``train.pack_size`` asks, else on a GPU all of them (one kernel launch serves them all), on CPU all of
    them where this machine's measurement of the family at the nearest measured batch size found three
    seeds packed cheaper than three one after another beyond the noise (``normexp.tune``; a run measures
    it on first use), else one at a time: on some CPUs a packed step costs more than the seeds' steps in
    turn (docs/performance.md, "Packed seeds")."""
    if requested != "auto":
        return max(1, min(int(requested), seeds))
    if device.type != "cpu":
        return seeds
    return seeds if packing_wins(family, batch_size) else 1


def packing_wins(family: str, batch_size: int) -> bool:
    """Whether the measured cell nearest ``batch_size`` found packed seeds cheaper beyond the noise."""
    cache = _load()  # None: none, or not this machine's (warned about there)
    cells = {} if cache is None else cache.packing_wins.get(family, {})
    return bool(cells) and cells[nearest(batch_size, cells)]


def apply(settings: CpuSettings) -> None:
    """Sets the process-wide parts (threads, oneDNN); the layout is applied to the model by its owner."""
    torch.set_num_threads(settings.threads)
    torch.backends.mkldnn.enabled = settings.mkldnn


# ---------------------------------------------------------------- provenance
# Where a run's numbers came from: normexp's version and commit, torch, oneDNN, the CPU and the GPU that
# trained it, if any, and the memory it took. A run records one entry per process that trained it (a resume on
# another machine adds one), so that shipped results say what made them.


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


def provenance(device: torch.device | None = None) -> dict[str, Any]:
    """This process's entry, for a run on ``device`` (a GPU's name is recorded too)."""
    cpu = cpu_fingerprint()
    entry = {"normexp": normexp_version(), "commit": source_commit(), "torch": cpu["torch"],
             "onednn": cpu["onednn"], "cpu": cpu["model"], "cores": cpu["cores"]}
    if device is not None and device.type == "cuda":
        entry["gpu"] = torch.cuda.get_device_name(device)
    return entry


def provenance_extended(previous: list[dict[str, Any]] | None,
             device: torch.device | None = None) -> list[dict[str, Any]]:
    """The entries of a run on ``device`` resumed from ``previous`` (None: a new run), this process's added
    where it differs from the last."""
    entries = list(previous or [])
    now = provenance(device)
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
