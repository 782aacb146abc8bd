"""Measure this machine's fastest CPU settings (threads, oneDNN, memory layout) for ``perf.choose``.

    python -m normexp.tune                   # every kernel family at the sweep's batch sizes (~3 minutes)
    python -m normexp.tune --norms gn --batch-sizes 2,4 --seconds 30
    python -m normexp.tune --show            # what is measured for this machine
    python -m normexp.tune --force           # measure again what is already measured

Each candidate (1 to all cores' threads; native convolutions or oneDNN; NCHW, or channels-last with oneDNN)
gets its own real run set-up (the trainer's ``set_up``, on synthetic MNIST-format digits: speed does not
depend on the pixels) and trains as the trainer does; at the evaluation batch size (train.eval_batch_size) it
evaluates instead, as validation does. Blocks of each candidate alternate, the order rotating, and are
repeated; medians decide. A candidate replaces the fallback (``perf.fallback``) only where its median beats
the fallback's by more than the spread of their repeated blocks; where the blocks spread more than +-20 %
(the machine was busy), the fallback stays and the cell is marked "too busy" (measured again next time).

The winners go to a JSON file in ``perf.cache_dir()`` (``$NORMEXP_CACHE_DIR`` moves it), named for this
machine's ``perf.cache_key()``; new measurements are merged into what is there.
"""

from __future__ import annotations

import argparse
import copy
import fcntl
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm import tqdm

from normexp import config, data, norm, perf, steps, trainer, validation
from normexp.analysis import runfiles, status, sweeps

TRAIN_SIZE = 8192  # synthetic training digits: every power-of-two batch size up to 256 divides it
TOO_BUSY = 0.20  # blocks spreading more than +-20 % around their median: too busy to decide
SETUP_SHARE = 0.25  # of --seconds, kept for set-ups and warm-ups


# ---------------------------------------------------------------- the decision (pure: no timing)


def label(settings: perf.CpuSettings) -> str:
    return (f"{settings.threads} thread{'s' if settings.threads > 1 else ''}, "
            f"{'oneDNN' if settings.mkldnn else 'native'}, {'NHWC' if settings.channels_last else 'NCHW'}")


def spread(rates: list[float]) -> float:
    """How far repeated blocks stray from their median: half their range, relative to the median."""
    return (max(rates) - min(rates)) / (2 * statistics.median(rates))


@dataclass(frozen=True)
class Decision:
    settings: perf.CpuSettings  # what the cell gets
    verdict: str  # "measured" (a clear winner), "fallback" (none beats it clearly), "too busy"
    best: perf.CpuSettings  # the fastest median
    margin: float  # the best median over the fallback's, minus 1
    noise: float  # the larger spread of the two


def decide(rates: dict[perf.CpuSettings, list[float]], fallback: perf.CpuSettings,
           too_busy: float = TOO_BUSY) -> Decision:
    """The settings of one cell from samples/s of repeated blocks per candidate (the fallback among them):
    the fastest median where it beats the fallback's by more than the spread of their blocks, else the
    fallback. Where that spread exceeds ``too_busy``, the fallback stays ("too busy"), however large the
    win: blocks that spread so much measure the other work on the machine more than the kernels (threads
    that wait for a core some other process holds, mostly), and the cache is for the machine, not the hour."""
    medians = {c: statistics.median(r) for c, r in rates.items()}
    best = max(medians, key=lambda c: (medians[c], c == fallback))
    margin = medians[best] / medians[fallback] - 1
    noise = max(spread(rates[best]), spread(rates[fallback]))
    if noise > too_busy:
        return Decision(fallback, "too busy", best, margin, noise)
    if best != fallback and margin > noise:
        return Decision(best, "measured", best, margin, noise)
    return Decision(fallback, "fallback", best, margin, noise)


def candidates(cores: int) -> list[perf.CpuSettings]:
    """Thread counts 1, 2, 4, ... and all cores, each with native convolutions, oneDNN, oneDNN in NHWC."""
    threads = sorted({1, cores} | {2**k for k in range(1, cores.bit_length()) if 2**k < cores})
    layouts = ((False, False), (True, False), (True, True))
    return [perf.CpuSettings(t, mkldnn, channels_last) for t in threads for mkldnn, channels_last in layouts]


# ---------------------------------------------------------------- the timed work


@dataclass
class Work:
    """One candidate's own run (its model, optimizer and data, under the candidate's settings) in the one
    epoch loop (``trainer.Group``, timing: its folder is never written)."""

    settings: perf.CpuSettings
    cfg: DictConfig
    evaluation: bool  # time evaluation passes over the test split instead of training steps
    seeds: int = 1  # more: that many seeds packed in one network, as a job of train.seeds trains them
    group: Any = None
    diverged: bool = False

    def __post_init__(self) -> None:
        runs, splits = [], None
        for seed in range(self.seeds):
            run = trainer.Trainer(trainer.seed_config(self.cfg, seed), Path(tempfile.gettempdir()), jobs=1)
            setup = run.build(splits=splits)
            splits = setup.train_set, setup.test_set
            # the candidate's layout, which the rule may not give this batch size (no optimizer state yet)
            setup.model.to(memory_format=self.settings.memory_format)
            setup.cpu = setup.eval_cpu = self.settings
            runs.append(run)
        self.group = trainer.Group(runs, [trainer.RunState() for _ in runs], packed=self.seeds > 1,
                                   timing=True)
        self.group.build_net()

    @property
    def setup(self) -> Any:
        return self.group.runs[0].setup

    @property
    def samples_per_unit(self) -> int:
        return len(self.setup.test_set) if self.evaluation else self.cfg.batch_size


def timed(work: Work, units: int) -> float:
    """Samples/s of ``units`` training steps, taken as a run takes them (the one epoch loop's chunks, each
    followed by its one host sync), or of ``units`` evaluations of the test split as validation runs them."""
    s = work.setup
    perf.apply(work.settings)
    start = time.perf_counter()
    if work.evaluation:
        for _ in range(units):
            steps.evaluate(s.model, s.test_set, work.cfg.batch_size, work.settings.memory_format)
        return units * len(s.test_set) / (time.perf_counter() - start)
    samples = work.group.run_steps(units)
    seconds = time.perf_counter() - start
    work.diverged |= work.group.divergences > 0
    return samples / seconds


# ---------------------------------------------------------------- measuring


def sweep() -> tuple[list[str], list[int]]:
    """The norms and batch sizes of ``experiment=mcn_sweep``."""
    params = config.compose_config(["experiment=mcn_sweep"], hydra=True).hydra.sweeper.params
    return str(params["norm"]).split(","), [int(b) for b in str(params["batch_size"]).split(",")]


def families(norms: list[str]) -> dict[str, str]:
    """Kernel family (``norm.kernels``) -> the first of ``norms`` that runs its kernels (measured for all)."""
    found: dict[str, str] = {}
    for name in norms:
        found.setdefault(norm.REGISTRY[name].kernels, name)
    return found


@dataclass(frozen=True)
class Cell:
    family: str
    norm: str  # the norm built to measure the family
    batch_size: int
    evaluation: bool

    @property
    def name(self) -> str:
        return f"{self.family} bs {self.batch_size}{' (eval)' if self.evaluation else ''}"


def measure(cell: Cell, cfg: DictConfig, cands: list[perf.CpuSettings], block_seconds: float, repeats: int,
            bar: tqdm) -> dict[perf.CpuSettings, list[float]]:
    """Samples/s of ``repeats`` blocks of about ``block_seconds`` per candidate, interleaved."""
    works = {c: Work(c, copy.deepcopy(cfg), cell.evaluation) for c in cands}
    units = {}
    for c, work in works.items():
        timed(work, 1 if cell.evaluation else 3)  # warm-up: oneDNN's primitives, the allocator's pools
        rate = timed(work, 1 if cell.evaluation else 3)
        units[c] = max(1 if cell.evaluation else 2, round(block_seconds * rate / work.samples_per_unit))
        bar.update(1)
    rates: dict[perf.CpuSettings, list[float]] = {c: [] for c in cands}
    for repeat in range(repeats):
        k = repeat % len(cands)
        for c in cands[k:] + cands[:k]:  # each candidate in each place of the order in turn
            rates[c].append(timed(works[c], units[c]))
            if works[c].diverged:  # fresh weights: NaNs may run at another speed
                works[c] = Work(c, copy.deepcopy(cfg), cell.evaluation)
                timed(works[c], 1 if cell.evaluation else 3)
            bar.update(1)
    return rates


def load_average() -> float | None:
    """The 1-minute load average (this process's own threads count in it while it measures)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def cell_config(cell: Cell, root: Path, run: DictConfig | None = None) -> DictConfig:
    """The configuration that measures ``cell`` on the synthetic digits in ``root``: ``run``'s (a run that
    measures on first use, inside Hydra's entry) or ``conf/``'s defaults, with the cell's norm and batch
    size."""
    overrides = {"batch_size": cell.batch_size, "data.root": str(root), "data.download": False,
                 "train.device": "cpu", "train.progress": False, "train.autotune": 0}
    if run is None:
        return config.compose_config([f"norm={cell.norm}", *(f"{k}={v}" for k, v in overrides.items())])
    cfg = copy.deepcopy(run)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def measure_cell(cell: Cell, cfg: DictConfig, cands: list[perf.CpuSettings], block_seconds: float,
                 repeats: int, bar: tqdm) -> dict[str, Any]:
    """The cache entry of one cell (measured with ``cell_config``'s ``cfg``): its winner among ``cands``,
    and the measurements that chose it."""
    rates = measure(cell, cfg, cands, block_seconds, repeats, bar)
    fallback = perf.fallback(cell.batch_size, max(c.threads for c in cands))
    decision = decide(rates, fallback)
    return {"threads": decision.settings.threads, "mkldnn": decision.settings.mkldnn,
            "channels_last": decision.settings.channels_last, "verdict": decision.verdict,
            "work": "evaluation" if cell.evaluation else "training", "norm": cell.norm,
            "margin": round(decision.margin, 4), "noise": round(decision.noise, 4),
            "fallback": label(fallback), "best": label(decision.best), "load_average": load_average(),
            "samples_per_s": {label(c): [round(r, 1) for r in rs] for c, rs in rates.items()}}


def measure_all(cells: list[Cell], seconds: float, repeats: int, path: Path, cache: dict) -> dict:
    """Measures ``cells`` within about ``seconds``, writing ``cache`` (updated) to ``path`` after each."""
    cores = perf.available_cores()
    cands = candidates(cores)
    block_seconds = seconds * (1 - SETUP_SHARE) / (len(cells) * len(cands) * repeats)
    load_before = load_average()
    print(f"measuring {len(cells)} cells x {len(cands)} candidates x {repeats} blocks of "
          f"~{block_seconds:.2f} s on {cores} cores (1-minute load average before: {load_before}) -> {path}",
          flush=True)
    loads = []
    with (tempfile.TemporaryDirectory() as tmp, kept_torch_settings(),
          tqdm(total=len(cells) * len(cands) * (repeats + 1), unit="block", dynamic_ncols=True) as bar):
        root = synthetic_digits(Path(tmp), cells)
        for cell in cells:
            bar.set_description(cell.name)
            cfg = cell_config(cell, root)
            entry = measure_cell(cell, cfg, cands, block_seconds, repeats, bar)
            if not cell.evaluation and norm.can_pack(cfg.norm):
                entry["packed"] = measure_packing(cell, cfg, perf.CpuSettings.from_dict(entry), block_seconds,
                                                  repeats)
            loads.append(entry["load_average"])
            cache["families"].setdefault(cell.family, {})[str(cell.batch_size)] = entry
            cache["written"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            cache["measurement"] = {"seconds": seconds, "repeats": repeats,
                                    "block_seconds": round(block_seconds, 4), "cores": cores,
                                    "load_average_before": load_before, "load_average_during": loads}
            save(path, cache)
            bar.write(f"  {cell.name:18s} {label(perf.CpuSettings.from_dict(entry)):28s} {describe(entry)}")
    return cache


def synthetic_digits(folder: Path, cells: list[Cell]) -> Path:
    """Synthetic MNIST-format digits to measure ``cells`` on: speed does not depend on the pixels."""
    eval_size = max([c.batch_size for c in cells if c.evaluation], default=1)
    return data.write_synthetic_mnist(folder, TRAIN_SIZE, 4 * eval_size)  # evaluation: 4 full batches


@contextmanager
def kept_torch_settings() -> Iterator[None]:
    """torch's threads and oneDNN switch as they were before the candidates changed them."""
    threads, mkldnn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.mkldnn.enabled = mkldnn


PACK_SEEDS = 3  # the seeds packed to decide whether packing wins (train.pack_size=auto)


def measure_packing(cell: Cell, cfg: DictConfig, settings: perf.CpuSettings, block_seconds: float,
                    repeats: int) -> dict[str, Any]:
    """PACK_SEEDS seeds packed in one network against one seed alone, under the cell's ``settings``, in
    interleaved blocks of the same steps: the pack's cost in one seed's (PACK_SEEDS: no gain), and whether
    it is cheaper than the seeds one after another by more than the blocks' spread."""
    solo = Work(settings, copy.deepcopy(cfg), False)
    packed = Work(settings, copy.deepcopy(cfg), False, PACK_SEEDS)
    for work in (solo, packed):
        timed(work, 3)  # warm-up
    units = max(2, round(block_seconds * timed(solo, 3) / cell.batch_size))
    costs = []
    for repeat in range(repeats):
        pair = (solo, packed) if repeat % 2 == 0 else (packed, solo)
        rates = {id(w): timed(w, units) for w in pair}
        costs.append(PACK_SEEDS * rates[id(solo)] / rates[id(packed)])  # the pack's time over one seed's
    cost, noise = statistics.median(costs), spread(costs)
    return {"seeds": PACK_SEEDS, "cost": round(cost, 3), "noise": round(noise, 4),
            "wins": cost * (1 + noise) < PACK_SEEDS, "settings": label(settings)}


# ---------------------------------------------------------------- on first use
# As cuDNN's benchmark mode does for convolution algorithms: a run whose kernel family and batch size this
# machine has no measurement for measures them in its first seconds (train.autotune: about that many
# seconds), on throwaway models and synthetic digits, and caches the winner, which it then trains with. The
# candidates get the job's share of the cores, measured while the sweep's other jobs run: the settings for
# the sweep as it runs. One job measures a cell; the sweep's other jobs of that cell wait for it.

FIRST_USE_REPEATS = 3


def first_use(cfg: DictConfig, jobs: int) -> list[str]:
    """Measures this run's cells (its batch size, and its evaluation batch size) where the cache has no
    measurement of them, and, for a job of ``train.seeds`` that leaves packing to normexp, whether packed
    seeds win at its batch size; a line for each measured, for the run's log."""
    tc = cfg.train
    if not tc.autotune or trainer.resolve_device(tc.device).type != "cpu" or "auto" not in (tc.threads,
                                                                                            tc.mkldnn):
        return []
    family, path = norm.kernels(cfg.norm), perf.cache_path()
    sizes = {cfg.batch_size: cfg.batch_size == tc.eval_batch_size, tc.eval_batch_size: True}
    cells = [Cell(family, cfg.norm.name, bs, evaluation) for bs, evaluation in sizes.items()]
    share = max(1, perf.available_cores() // max(1, jobs))
    cands = candidates(share)
    block_seconds = tc.autotune * (1 - SETUP_SHARE) / (len(cells) * (len(cands) + 2) * FIRST_USE_REPEATS)
    packing = tc.get("seeds") is not None and tc.pack_size == "auto" and norm.can_pack(cfg.norm)
    lines = []
    for cell in cells:
        with locked(path.with_name(f".{path.stem}.{cell.family}-{cell.batch_size}.lock")):
            entry = _entry(existing(path), cell)
            pack = packing and cell.batch_size == cfg.batch_size and "packed" not in (entry or {})
            if entry is not None and not pack:
                continue  # measured already, or by another job of the sweep while this one waited
            start = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp, kept_torch_settings():
                cell_cfg = cell_config(cell, synthetic_digits(Path(tmp), [cell]), cfg)
                if entry is None:
                    entry = measure_cell(cell, cell_cfg, cands, block_seconds, FIRST_USE_REPEATS,
                                         tqdm(disable=True))
                    entry.update(measured_by="first use", cores=share)
                if pack:
                    entry["packed"] = measure_packing(cell, cell_cfg, perf.CpuSettings.from_dict(entry),
                                                      block_seconds, FIRST_USE_REPEATS)
            entry["seconds"] = round(entry.get("seconds", 0) + time.perf_counter() - start, 1)
            with locked(path.with_name(f".{path.stem}.lock")):  # another cell may be written meanwhile
                cache = existing(path) or empty_cache()
                cache["families"].setdefault(cell.family, {})[str(cell.batch_size)] = entry
                cache["written"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
                save(path, cache)
        lines.append(first_use_line(cell, entry, path))
    return lines


def first_use_line(cell: Cell, entry: dict[str, Any], path: Path) -> str:
    packed, pack = entry.get("packed"), ""
    if packed:
        pack = (f"; {packed['seeds']} seeds packed cost {packed['cost']:.2f}x one seed (noise "
                f"+-{packed['noise']:.0%}): {'packed' if packed['wins'] else 'one after another'}")
    return (f"CPU settings for {cell.name} measured on first use in {entry['seconds']} s: "
            f"{label(perf.CpuSettings.from_dict(entry))}; {describe(entry)}{pack}; cached in {path}")


def _entry(cache: dict | None, cell: Cell) -> dict | None:
    return ((cache or {}).get("families") or {}).get(cell.family, {}).get(str(cell.batch_size))


@contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """An exclusive flock on ``lock_path`` (made where needed), waited for."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------- the cache file


def save(path: Path, cache: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    runfiles.write_atomic(path, (json.dumps(cache, indent=1) + "\n").encode())


def empty_cache() -> dict:
    return {"schema": perf.CACHE_SCHEMA, "key": perf.cache_key(), "families": {}}


def existing(path: Path) -> dict | None:
    """The cache file's content where ``perf`` accepts it for this machine (it warns about others)."""
    if perf.load_cache(path) is None:
        return None
    return json.loads(path.read_text())


def describe(cell: dict) -> str:
    """A cache cell's verdict in words."""
    noise = f"noise +-{cell['noise']:.0%}"
    if cell["verdict"] == "measured":
        return f"measured: {cell['margin']:+.0%} over the fallback ({cell['fallback']}), {noise}"
    if cell["verdict"] == "too busy":
        return f"too busy to decide ({noise}, more than +-{TOO_BUSY:.0%}): fallback kept"
    if cell["best"] == cell["fallback"]:
        return f"fallback is fastest ({noise})"
    return f"fallback kept: {cell['best']} {cell['margin']:+.0%}, within the {noise}"


def short(settings: perf.CpuSettings) -> str:
    kind = "NHWC" if settings.channels_last else "oneDNN" if settings.mkldnn else "native"
    return f"{settings.threads} {kind}"


def table(cache: dict) -> list[str]:
    """One line per measured cell, then the rule in short: a row per family, and the fallback's."""
    lines, sizes = [], sorted({int(bs) for cells in cache["families"].values() for bs in cells})
    for family, cells in cache["families"].items():
        for bs in sorted(cells, key=int):
            cell = cells[bs]
            settings = perf.CpuSettings(cell["threads"], cell["mkldnn"], cell["channels_last"])
            kind = " (eval)" if cell.get("work") == "evaluation" else ""
            lines.append(f"  {family:4s} bs {bs:>3s}{kind:7s} {label(settings):28s} {describe(cell)}")
    cores = cache["key"]["fingerprint"]["cores"]
    lines += ["", "  threads and kernels by batch size (native convolutions; oneDNN in NCHW; NHWC: oneDNN in "
              "channels-last):", "  " + f"{'batch size':10s}" + "".join(f"{bs:>10d}" for bs in sizes)]
    for family, cells in cache["families"].items():
        row = [short(perf.CpuSettings.from_dict(cells[str(bs)])) if str(bs) in cells else "" for bs in sizes]
        lines.append("  " + f"{family:10s}" + "".join(f"{cell:>10s}" for cell in row))
    fallback = [short(perf.fallback(bs, cores)) for bs in sizes]
    lines.append("  " + f"{'fallback':10s}" + "".join(f"{cell:>10s}" for cell in fallback))
    return lines


def show(path: Path, cache: dict | None) -> None:
    if cache is None:
        print(f"no measured CPU settings for this machine ({path} does not hold them): runs use the "
              f"built-in rule (one thread up to batch size {perf.ONE_THREAD_MAX}, native convolutions up to "
              f"{perf.NATIVE_CONV_MAX}, NCHW up to {perf.NCHW_MAX}); python -m normexp.tune measures them")
        return
    fp = cache["key"]["fingerprint"]
    m = cache.get("measurement", {})
    print(f"{path}: {fp['model']}, {fp['cores']} cores ({fp['capability']}), torch {fp['torch']}, "
          f"oneDNN {fp['onednn']}, normexp {cache['key']['normexp']}; written {cache.get('written')}, "
          f"load average {m.get('load_average_before')} before, "
          f"{_range(m.get('load_average_during') or [])} during")
    for line in table(cache):
        print(line)


def _range(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    return f"{min(values):.2f}..{max(values):.2f}" if values else "?"


# ---------------------------------------------------------------- a sweep's time, before it starts
# A dry run: the sweep's jobs as its sweeper will launch them (analysis.sweeps), each job's epochs at the
# samples/s this machine's measurements give the settings it will train with (its kernel family, batch size
# and share of the cores under the sweep's launcher), and the launcher's slots filled in launch order
# (analysis.status.schedule). Nothing is trained.

MNIST_SIZES = (60_000, 10_000)  # where the data is not there to count


def job_rate(cache: dict | None, family: str, batch_size: int, slots: int, evaluation: bool) -> float | None:
    """Samples/s of ``family`` at ``batch_size`` with the settings a run would choose in a sweep of ``slots``
    jobs at once: the median of that candidate's measured blocks, at the nearest measured batch size."""
    cells = {int(bs): cell for bs, cell in ((cache or {}).get("families") or {}).get(family, {}).items()
             if (cell.get("work") == "evaluation") == evaluation}
    if not cells:
        return None
    cell = cells[perf.nearest(batch_size, cells)]
    settings = perf.choose(batch_size, torch.device("cpu"), jobs=slots, family=family)
    rates = cell.get("samples_per_s", {}).get(label(perf.CpuSettings(settings.threads, settings.mkldnn,
                                                                     settings.channels_last)))
    if not rates:  # that candidate was not measured (more cores then): the cell's winner
        rates = cell.get("samples_per_s", {}).get(label(perf.CpuSettings.from_dict(cell))) or []
    return statistics.median(rates) if rates else None


def sweep_config(overrides: list[str]) -> DictConfig:
    """The sweep's configuration as ``-m`` composes it: the swept values left to the sweeper, which finds
    them, with the rest, in hydra.overrides.task."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    cfg = config.compose_config([o.input_line for o in parsed if not o.is_sweep_override()], hydra=True)
    with open_dict(cfg.hydra):  # Hydra's own keys (hydra/launcher=joblib) are not the jobs'
        cfg.hydra.overrides.task = [o.input_line for o in parsed if not o.is_hydra_override()]
    return cfg


def estimate(overrides: list[str]) -> list[str]:
    """The dry run of ``python -m normexp.train -m <overrides>``: a line per job and the total."""
    cfg = sweep_config(overrides)
    planned = sweeps.planned_jobs(cfg)
    if planned is None:
        return [f"{cfg.hydra.sweeper._target_}: a sweeper whose jobs are not known before they start"]
    slots = status.launcher_slots(cfg.hydra.launcher, len(planned))[0] or 1
    n_train, n_test = data.split_sizes(cfg.data) or MNIST_SIZES
    cache, durations, lines = existing(perf.cache_path()), [], []
    for job in planned:
        family = norm.REGISTRY[job.norm].kernels
        train_rate = job_rate(cache, family, job.batch_size, slots, False)
        eval_rate = job_rate(cache, family, cfg.train.eval_batch_size, slots, True)
        if train_rate is None or eval_rate is None or job.epochs is None:
            durations.append(0.0)
            lines.append(f"  {job.name:40s} not measured here ({family}): python -m normexp.tune")
            continue
        seconds = job.epochs * len(job.seeds) * (n_train / train_rate + n_test / eval_rate)
        durations.append(seconds)
        lines.append(f"  {job.name:40s} {job.epochs:3d} epochs x {len(job.seeds)} seed(s) "
                     f"{status.duration(seconds):>10s}  ({train_rate:.0f} samples/s)")
    ends = status.schedule([], durations, slots)
    total = max(ends, default=0.0)
    lines.append(f"{len(planned)} jobs, {slots} at a time ({cfg.hydra.sweeper._target_.rsplit('.', 1)[-1]}, "
                 f"{n_train:,} training digits): about {status.duration(total)} on this machine, "
                 f"{status.duration(sum(durations))} of job time")
    return lines


# ---------------------------------------------------------------- command line


def checked_arguments(parser: validation.Parser, args: argparse.Namespace
                      ) -> tuple[list[int] | None, list[str] | None]:
    """The batch sizes and norms asked for (None: the sweep's); one line and exit 2 for a bad argument."""
    try:
        sizes = validation.int_list(args.batch_sizes) if args.batch_sizes is not None else None
    except ValueError:
        parser.error(f"--batch-sizes={args.batch_sizes}: comma-separated integers >= 1")
    norms = [n.strip() for n in args.norms.split(",") if n.strip()] if args.norms is not None else None
    for name in [""] if norms == [] else norms or []:
        if name not in norm.NORM_NAMES:
            parser.error(f"--norms={args.norms}: {name!r} is unknown; allowed: {', '.join(norm.NORM_NAMES)}")
    if not (args.seconds > 0 and math.isfinite(args.seconds)):
        parser.error(f"--seconds={args.seconds}: must be a number > 0")
    if args.repeats < 2:
        parser.error(f"--repeats={args.repeats}: must be an integer >= 2 (the noise is their spread)")
    return sizes, norms


def main(argv: list[str] | None = None) -> int:
    parser = validation.Parser(prog="python -m normexp.tune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--norms", help="comma-separated; one norm per kernel family is measured, for all "
                        "the norms of that family (bn for brn too, gn for ln and in; default: the sweep's)")
    parser.add_argument("--batch-sizes", help="comma-separated (default: the sweep's, and "
                        "train.eval_batch_size, which is measured as evaluation)")
    parser.add_argument("--seconds", type=float, default=180.0,
                        help="about how long the whole measurement takes (default 180)")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per candidate (default 5)")
    parser.add_argument("--force", action="store_true", help="measure again what is already measured")
    parser.add_argument("--show", action="store_true", help="print what is measured for this machine; stop")
    parser.add_argument("--estimate", nargs=argparse.REMAINDER, metavar="OVERRIDE",
                        help="how long python -m normexp.train -m OVERRIDE... would take here, from the "
                        "measurements (a dry run: nothing trains); stop")
    args = parser.parse_args(argv)
    if args.estimate is not None:
        print("\n".join(estimate(args.estimate)))
        return 0
    sizes, norms = checked_arguments(parser, args)
    path = perf.cache_path()
    cache = existing(path)
    if args.show:
        show(path, cache)
        return 0
    eval_size = config.compose_config([]).train.eval_batch_size
    sweep_norms, sweep_sizes = sweep()
    sizes = sizes if sizes is not None else [*sweep_sizes, eval_size]
    cells = [Cell(family, name, bs, bs == eval_size)
             for family, name in families(norms or sweep_norms).items() for bs in sizes]
    if cache is None:
        cache = empty_cache()
    done = cache["families"]
    todo = [c for c in cells if args.force or done.get(c.family, {}).get(str(c.batch_size), {}).get("verdict")
            in (None, "too busy")]
    if not todo:
        print(f"nothing to measure: {path} holds all {len(cells)} cells (--force measures again)")
    else:  # blocks as long as in a measurement of all the cells asked for
        measure_all(todo, args.seconds * len(todo) / len(cells), args.repeats, path, cache)
    print()
    show(path, existing(path))
    busy = [c.name for c in todo if done[c.family][str(c.batch_size)]["verdict"] == "too busy"]
    if busy:
        print(f"the machine was too busy to decide at {len(busy)} of {len(todo)} cells ({', '.join(busy)}): "
              "they keep the fallback; run python -m normexp.tune again when it is quieter")
    return 0


if __name__ == "__main__":
    sys.exit(main())
