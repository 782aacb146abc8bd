"""Several seeds of one configuration in one job (owns ``train.seeds`` and ``train.pack_size``).

Each seed is its own run in ``<job folder>/seed=<s>/``, written exactly as if it had run alone: its own
``.hydra/`` (``train.seed: s``), metrics.csv, summary.json, checkpoint.pt and lock. As ``train.pack_size``
says (``perf.pack_size``; a resumed job as its checkpoints record) the seeds train packed in one network
(``PackedNet``, below), else one after another in this process; either way each seed's initialisation, epoch
order and optimizer state come from its own seed. A seed that diverges ends as diverged at its step and
leaves the pack; the others go on. The job's own Hydra files go to ``<job folder>/.pack/``, so that the
results find the seeds' folders and nothing else.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf, open_dict

from normexp import data, norm, optim, perf, runguard, steps, validation
from normexp.analysis import runfiles
from normexp.model import LeNet
from normexp.trainer import Outcome, Progress, RunState, Trainer, resolve_device

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
            outcomes += group.fit() if len(group.runs) > 1 else [group.runs[0].train(group.states[0])]
            if any(o.signum is not None for o in outcomes):
                break
    return outcomes


def plan(cfg: DictConfig, seeds: list[int], runs: list[Trainer]) -> list[Pack]:
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
            groups.append(Pack([runs[i] for i in chosen], [states[i] for i in chosen]))
    for group in groups:
        together = [r.tc.seed for r in group.runs] if len(group.runs) > 1 else []
        for st in group.states:
            st.pack = {"seeds": seeds, "pack_size": size, "packed_with": together,
                       **({"note": TIMING_NOTE} if together else {})}
    return groups


@dataclass
class Pack:
    """Seeds trained together: their own runs (for everything a run writes) and one packed network."""

    runs: list[Trainer]
    states: list[RunState]
    net: PackedNet | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    schedule_values: dict[str, list[float]] = field(default_factory=dict)

    def fit(self) -> list[Outcome]:
        self.build_net()
        with steps.StopSignal() as stop:
            try:
                while self.runs and self.states[0].epoch < self.runs[0].epochs:
                    self._train_epoch(stop)
            except Exception as err:
                for run, st in zip(self.runs, self.states, strict=True):  # the seeds still in the pack
                    run.failed(st, err)
                raise
        self.outcomes += [run.complete(st) for run, st in zip(self.runs, self.states, strict=True)]
        return self.outcomes

    def build_net(self) -> None:
        """The packed network, from the runs' own models and optimizers (a new one when a seed left)."""
        first = self.runs[0]
        s = first.setup
        self.net = build(first.cfg, len(self.runs), first.lr, first.tc.fast, s.device,
                              s.cpu.memory_format)
        self.net.load([r.setup.model for r in self.runs], [r.setup.optimizer for r in self.runs])
        self.schedule_values = {}

    def _unpack(self) -> None:
        self.net.unload([r.setup.model for r in self.runs], [r.setup.optimizer for r in self.runs])

    def _train_epoch(self, stop: steps.StopSignal) -> None:
        started = time.perf_counter()
        batches = [run.begin_epoch(st) for run, st in zip(self.runs, self.states, strict=True)]
        self.net.model.train()
        self._follow_schedule(self.states[0].epoch, self.states[0].step)
        first = self.runs[0]
        progress = Progress(self.states[0], first.epochs, len(batches[0]), first.show_bar)
        try:
            while self.runs and self.states[0].batch < len(batches[0]) and stop.signum is None:
                before = self.states[0].batch
                self.train_chunk(batches, stop)
                if self.runs:
                    progress.update(self.states[0], self.states[0].batch - before)
        finally:
            progress.close()
        if not self.runs:
            return
        for st in self.states:
            st.epoch_seconds += time.perf_counter() - started
        self._unpack()
        if stop.signum is not None:
            pairs = zip(self.runs, self.states, strict=True)
            self.outcomes += [r.interrupted(st, stop.signum) for r, st in pairs]
            self.runs, self.states = [], []
            return
        for run, st, b in zip(self.runs, self.states, batches, strict=True):
            run.end_epoch(st, b)

    def train_chunk(self, batches: list[list[Any]], stop: steps.StopSignal | None = None,
                    max_steps: int | None = None) -> None:
        """The next chunk of steps of every seed (``Trainer.train_chunk``'s), one look at their losses, and
        the seeds that diverged in it out of the pack."""
        lead = self.runs[0]
        st0 = self.states[0]
        start, first, epoch = st0.batch, st0.step, st0.epoch
        count = min(lead.sync_every, max_steps or lead.sync_every, len(batches[0]) - start)
        per_step = lead.schedule is not None and lead.schedule.per_step
        before_step = (lambda step: self._follow_schedule(epoch, step)) if per_step else None
        taken = train_steps(self.net, lead.setup.train_set, batches, start, count,
                                 [st.epoch_log for st in self.states], lead.setup.cpu.memory_format, first,
                                 before_step, stop)
        diverged = []
        for i, (run, st) in enumerate(zip(self.runs, self.states, strict=True)):
            st.step, st.batch = first + taken, start + taken
            divergence = st.epoch_log.flush(run.tc.max_loss, first + 1, epoch + 1)
            if divergence is None:
                run.logger.sync(st.step, st.epoch_log.running_loss)
            else:
                diverged.append((i, divergence))
        if diverged:
            self._drop(diverged, batches)

    def _drop(self, diverged: list[tuple[int, steps.Divergence]], batches: list[list[Any]]) -> None:
        """Seeds that diverged end as such; the others are packed again without them."""
        self._unpack()
        for i, divergence in reversed(diverged):
            self.outcomes.append(self.runs[i].diverged(self.states[i], divergence))
            del self.runs[i], self.states[i], batches[i]
        if len(self.runs) > 0:
            self.build_net()

    def _follow_schedule(self, epoch: int, step: int) -> None:
        """Each seed's scheduled values (its own clock), set in the packed network, one per seed."""
        lead = self.runs[0]
        if lead.schedule is None:
            return
        for run in self.runs:
            run.follow_schedule(epoch, step)
        values = {key: [run.schedule_values[key] for run in self.runs] for key in lead.schedule_values}
        if values != self.schedule_values:
            lead.schedule.apply(self.net.model, values)
            self.schedule_values = values


# ---------------------------------------------------------------- the packed network
# Seeds of one configuration packed side by side in one network (``LeNet(seeds=n)``, as in Packed-Ensembles),
# each exactly its own run up to float rounding: its own weights, statistics and optimizer state in its own
# channels, its own batches, its own loss (the packed loss is the sum of the seeds' mean losses, so each
# seed's gradient is its solo gradient). The state moves between the seeds' own (solo) models and the packed
# one by name: a packed tensor is its seeds' tensors concatenated along the one axis where its shape differs
# (stacked, for a layer's scalar), so a seed's checkpoint is a solo run's.


def _combined(parts: Sequence[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    first = parts[0]
    if like.shape == first.shape:  # a count that every seed shares (BN's num_batches_tracked)
        return first
    if like.dim() == first.dim() + 1:
        return torch.stack(list(parts))
    axis = next(d for d in range(first.dim()) if like.shape[d] != first.shape[d])
    return torch.cat(list(parts), axis)


def part_of(packed: torch.Tensor, like: torch.Tensor, seed_index: int) -> torch.Tensor:
    """Seed ``seed_index``'s part of a packed tensor, shaped as ``like`` (its solo tensor): a view."""
    if packed.shape == like.shape:
        return packed
    if packed.dim() == like.dim() + 1:
        return packed[seed_index]
    axis = next(d for d in range(like.dim()) if packed.shape[d] != like.shape[d])
    return packed.narrow(axis, seed_index * like.shape[axis], like.shape[axis])


@dataclass
class PackedNet:
    """The packed LeNet and its SGD, for ``seeds`` seeds."""

    model: LeNet
    optimizer: torch.optim.SGD
    seeds: int

    def load(self, models: Sequence[torch.nn.Module], optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """The seeds' weights, statistics and momentum, seed i's in its channels."""
        solo = [m.state_dict() for m in models]
        with torch.no_grad():
            for key, target in self.model.state_dict().items():
                target.copy_(_combined([sd[key] for sd in solo], target))
            for name, p in self.model.named_parameters():
                buffers = [o.state.get(dict(m.named_parameters())[name], {}).get("momentum_buffer")
                           for m, o in zip(models, optimizers, strict=True)]
                if all(b is not None for b in buffers):
                    combined = _combined(buffers, p)
                    self.optimizer.state[p]["momentum_buffer"] = torch.empty_like(p).copy_(combined)

    def unload(self, models: Sequence[torch.nn.Module], optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """Each seed's part back into its own model and optimizer (which then hold what a solo run would)."""
        solo = [m.state_dict() for m in models]
        with torch.no_grad():
            for key, source in self.model.state_dict().items():
                for i, sd in enumerate(solo):
                    sd[key].copy_(part_of(source, sd[key], i))
            for name, p in self.model.named_parameters():
                buffer = self.optimizer.state.get(p, {}).get("momentum_buffer")
                for i, (m, o) in enumerate(zip(models, optimizers, strict=True)):
                    mine = dict(m.named_parameters())[name]
                    if buffer is not None:
                        part = part_of(buffer, mine, i)
                        o.state[mine]["momentum_buffer"] = torch.empty_like(mine).copy_(part)


def build(cfg: DictConfig, seeds: int, lr: float, fused: bool, device: torch.device,
          memory_format: torch.memory_format) -> PackedNet:
    """An empty packed LeNet for ``seeds`` seeds and its SGD (the solo run's parameter groups); ``load``
    fills it."""
    layer = partial(norm.create_packed_layer, cfg.norm, seeds=seeds)
    model = LeNet(layer, conv_weight=norm.conv_weight(cfg.norm),
                  activation=norm.activation(cfg.norm), seeds=seeds).to(device, memory_format=memory_format)
    optimizer = optim.build(model, cfg.optim, lr, norm.autonn_factors(model, cfg.norm), fused=fused)
    return PackedNet(model, optimizer, seeds)


def train_steps(
    net: PackedNet,
    train_set: data.Split,
    batches: Sequence[Sequence[torch.Tensor]],
    start: int,
    count: int,
    logs: Sequence[steps.EpochLog],
    memory_format: torch.memory_format = torch.contiguous_format,
    first_step: int = 0,
    before_step: Callable[[int], None] | None = None,
    stop: steps.StopSignal | None = None,
) -> int:
    """``steps.train_steps`` for a pack: step ``start + k`` trains seed i on its index batch
    ``batches[i][start + k]``, recording its loss and logits in ``logs[i]``. Returns the steps taken."""
    taken = 0
    for k in range(start, start + count):
        if before_step is not None:
            before_step(first_step + taken)
        parts = [train_set.batch(seed_batches[k]) for seed_batches in batches]
        x = torch.cat([p[0] for p in parts], 1).contiguous(memory_format=memory_format)
        y = torch.stack([p[1] for p in parts], 1)  # (batch, seeds)
        logits = net.model(x).view(len(y), net.seeds, -1)
        losses = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(0)  # each seed's mean
        net.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        net.optimizer.step()
        for i, log in enumerate(logs):
            log.record(losses[i], logits[:, i], y[:, i])
        taken += 1
        if stop is not None and stop.signum is not None:
            break
    return taken
