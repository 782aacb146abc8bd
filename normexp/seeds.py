"""Several seeds of one configuration in one job (owns ``train.seeds`` and ``train.pack_size``).

Each seed is its own run in ``<job folder>/seed=<s>/``, written exactly as if it had run alone: its own
``.hydra/`` (``train.seed: s``), metrics.csv, summary.json, checkpoint.pt and lock. As ``train.pack_size``
says (``perf.pack_size``; a resumed job as its checkpoints record) the seeds train packed in one network
(``model.PackedNet``), else one after another in this process; either way each seed's initialisation, epoch
order and optimizer state come from its own seed. A seed that diverges ends as diverged at its step and
leaves the pack; the others go on. The job's own Hydra files go to ``<job folder>/.pack/``, so that the
results find the seeds' folders and nothing else.
"""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from normexp import data, norm, perf, runguard, validation
from normexp.analysis import runfiles
from normexp.trainer import Group, Outcome, RunState, Trainer, resolve_device

log = logging.getLogger("normexp")

TIMING_NOTE = "wall_seconds, samples_per_s and peak_rss_mb are the pack's (its seeds trained together)"
MB_PER_SEED = 8.0  # weights, gradients, momentum and the solo copy of one LeNet (431,080 floats, 4 of each)
MB_PER_EXAMPLE = 0.45  # activations kept for the backward pass, and their gradients, per training example
MB_BASE = 600.0  # torch, the data and evaluation


def memory_needed_mb(seeds: int, batch_size: int) -> float:
    """About what a job of ``seeds`` packed seeds needs at ``batch_size`` (an upper bound when they run one
    after another)."""
    return MB_BASE + seeds * (MB_PER_SEED + MB_PER_EXAMPLE * batch_size)


def available_memory_mb() -> float | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (ValueError, OSError, AttributeError):
        return None


def validate(cfg: DictConfig) -> list[str]:
    """Problems with ``train.pack_size`` and ``train.seeds`` (null, or a list of distinct seeds, each as
    ``train.seed`` allows)."""
    pack_size = validation.integer("train.pack_size", cfg.train.get("pack_size", "auto"), 1, or_word="auto")
    return pack_size + _seeds_problems(cfg)


def _seeds_problems(cfg: DictConfig) -> list[str]:
    seeds = cfg.train.get("seeds")
    if seeds is None:
        return []
    shown = OmegaConf.to_container(seeds) if OmegaConf.is_config(seeds) else seeds
    if not OmegaConf.is_list(seeds) or len(seeds) == 0:
        return [f"train.seeds={shown!r}: must be a non-empty list of seeds, e.g. [0,1,2], or null"]
    bad = [s for s in shown if validation.integer("train.seed", s, 0, data.SEED_MAX)]
    if bad:
        return [f"train.seeds={shown!r}: {bad[0]!r} is not a seed; each must be an integer in [0, "
                f"{data.SEED_MAX}], as train.seed"]
    repeated = sorted({s for s in shown if shown.count(s) > 1})
    if repeated:
        return [f"train.seeds={shown!r}: seed {repeated[0]} appears twice; each seed must appear once"]
    need, have = memory_needed_mb(len(shown), cfg.batch_size), available_memory_mb()
    if isinstance(cfg.batch_size, int) and have is not None and need > have:
        return [f"train.seeds={shown!r}: {len(shown)} seeds at batch size {cfg.batch_size} need about "
                f"{need / 1024:.1f} GiB, more than the {have / 1024:.1f} GiB of memory available; pass fewer"]
    return []


def seed_config(cfg: DictConfig, seed: int) -> DictConfig:
    """The configuration of one seed, as a solo run of it has it."""
    one = cfg.copy()
    with open_dict(one):
        one.train.seed, one.train.seeds = int(seed), None
    return one


def run_dirs(job_dir: Path, seeds: list[int]) -> list[Path]:
    return [job_dir / runfiles.SEED_FOLDER.format(s) for s in seeds]


def write_hydra_folder(run_dir: Path, cfg: DictConfig, overrides: list[str], hydra_dir: Path | None) -> None:
    """The seed's ``.hydra/``: its config, the job's overrides with its own train.seed, and the job's
    hydra.yaml."""
    folder = run_dir / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    seed_overrides = [o for o in overrides if not o.split("=")[0].lstrip("+~").startswith("train.seed")]
    runfiles.write_atomic(folder / "config.yaml", OmegaConf.to_yaml(cfg).encode())
    runfiles.write_atomic(folder / "overrides.yaml", OmegaConf.to_yaml(
        OmegaConf.create([*seed_overrides, f"train.seed={cfg.train.seed}"])).encode())
    if hydra_dir is not None and (hydra_dir / "hydra.yaml").is_file():
        runfiles.write_atomic(folder / "hydra.yaml", (hydra_dir / "hydra.yaml").read_bytes())


def fit(cfg: DictConfig, job_dir: Path, overrides: list[str] = (), hydra_dir: Path | None = None,
        jobs: int | None = None) -> list[Outcome]:
    """Trains (or resumes) every seed of ``train.seeds`` into its folder below ``job_dir``, holding every
    seed's lock; packs of seeds, or seeds one after another, as ``perf.pack_size`` says where they start
    and as their checkpoints recorded where they resume. A signal ends the job after the running seeds
    saved; seeds not started then stay so."""
    seeds = [int(s) for s in cfg.train.seeds]
    dirs = run_dirs(job_dir, seeds)
    runs = [Trainer(seed_config(cfg, s), d, jobs) for s, d in zip(seeds, dirs, strict=True)]
    outcomes: list[Outcome] = []
    with ExitStack() as stack:
        for run in runs:
            write_hydra_folder(run.run_dir, run.cfg, list(overrides), hydra_dir)
            stack.enter_context(runguard.locked(run.run_dir))
            run.claim()
        pending = []
        for run in runs:
            done = run.finished()
            outcomes.append(done) if done is not None else pending.append(run)
        for group in plan(cfg, seeds, pending):
            outcomes += group.fit()
            if any(o.signum is not None for o in outcomes):
                break
    return outcomes


def plan(cfg: DictConfig, seeds: list[int], runs: list[Trainer]) -> list[Group]:
    """The runs set up (data loaded once) and grouped: a pack of seeds at the same point of training, as
    many as the rule allows, or as their checkpoints record."""
    states: list[RunState] = []
    for run in runs:
        first = runs[0].setup
        states.append(run.resume(None if first is None else (first.train_set, first.test_set)))
    if not runs:
        return []
    recorded = next((st.pack["pack_size"] for st in states if st.pack.get("pack_size")), None)
    size = recorded or perf.pack_size(cfg.train.pack_size, resolve_device(cfg.train.device), len(seeds))
    if not norm.can_pack(cfg.norm):
        size = 1
    by_point: dict[tuple[int, int], list[int]] = {}
    for i, st in enumerate(states):
        by_point.setdefault((st.epoch, st.batch), []).append(i)
    groups = []
    for members in by_point.values():
        for k in range(0, len(members), size):
            chosen = members[k:k + size]
            group = Group([runs[i] for i in chosen], [states[i] for i in chosen], packed=len(chosen) > 1)
            groups.append(group)
    for group in groups:
        together = [r.tc.seed for r in group.runs] if len(group.runs) > 1 else []
        for st in group.states:
            st.pack = {"seeds": seeds, "pack_size": size, "packed_with": together,
                       **({"note": TIMING_NOTE} if together else {})}
    return groups
