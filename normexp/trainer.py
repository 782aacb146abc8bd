"""One run of the experiment (owns ``conf/train``): the writeup's LeNet with one normalization layer, trained
by SGD at one batch size for a planned number of epochs; and a job of several seeds of one configuration
(``train.seeds``, ``train.pack_size``), each its own run, trained through the same epoch loop.

Each epoch is one pass over the training split in a seeded order, in chunks of steps between two looks at
the losses, then validation on the whole test split in eval mode. The run folder receives metrics.csv,
summary.json and checkpoint.pt, each written atomically, so that a killed run resumes where its last
checkpoint left it. A run ends completed, diverged (a result, not an error) or interrupted by a signal.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm import tqdm

from normexp import (
    data,
    logger,
    model,
    norm,
    optim,
    perf,
    runguard,
    steps,
    validation,
)
from normexp.analysis import runfiles, sweeps
from normexp.steps import EpochLog

log = logging.getLogger("normexp")

DEVICES = ("auto", "cpu", "cuda")
LOG_EVERY_SECONDS = 30  # without a progress bar: a line about the epoch this often


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def exact_float32(device: torch.device) -> None:
    """On a GPU, float32 as written and the same numbers for the same seed: no TF32 (PyTorch lets cuDNN's
    convolutions round their inputs to 10 bits by default, about 1e-3 per layer away from the CPU's and the
    writeup's float32), and cuDNN's deterministic algorithms only."""
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


@dataclass
class Setup:
    """What a run trains with."""

    device: torch.device
    cpu: perf.CpuSettings  # for the training steps
    eval_cpu: perf.CpuSettings  # for validation, which runs in batches of train.eval_batch_size
    train_set: data.Split
    test_set: data.Split
    model: model.LeNet
    optimizer: torch.optim.SGD
    lr: float

    def evaluate(self, batch_size: int) -> tuple[float, float]:
        """Loss and error on the test split under the validation settings, then back to the training ones."""
        perf.apply(self.eval_cpu)
        try:
            return steps.evaluate(self.model, self.test_set, batch_size, self.eval_cpu.memory_format)
        finally:
            perf.apply(self.cpu)


def cpu_settings(
    cfg: DictConfig, batch_size: int, device: torch.device, jobs: int, kept: dict[str, Any] | None = None
) -> perf.CpuSettings:
    """The CPU settings for steps of ``batch_size``: those a resumed run ran with (``kept``, where
    train.threads and train.mkldnn leave the choice to normexp; its threads bounded by the job's share of
    the cores), else ``perf.choose``'s for the norm's kernels."""
    tc = cfg.train
    if kept is not None and tc.threads == "auto" and tc.mkldnn == "auto":
        settings = perf.CpuSettings.from_dict(kept)
        share = max(1, perf.available_cores() // max(1, jobs))
        return perf.CpuSettings(min(settings.threads, share), settings.mkldnn,
                                settings.channels_last and tc.fast, source=settings.source)
    return perf.choose(batch_size, device, tc.threads, tc.mkldnn, jobs, fast=tc.fast,
                       family=norm.kernels(cfg.norm))


def set_up(cfg: DictConfig, jobs: int, kept: dict[str, Any] | None = None,
           splits: tuple[data.Split, data.Split] | None = None) -> Setup:
    """CPU settings (for ``jobs`` jobs sharing the box; ``kept``: a resumed run's, by "train" and "eval"),
    data (``splits``, where already loaded), the LeNet in the training layout (its initial weights drawn
    after seeding torch's RNG with train.seed) and its SGD (fused on the fast path)."""
    tc, kept = cfg.train, kept or {}
    device = resolve_device(tc.device)
    exact_float32(device)
    cpu = cpu_settings(cfg, cfg.batch_size, device, jobs, kept.get("train"))
    eval_cpu = cpu_settings(cfg, tc.eval_batch_size, device, jobs, kept.get("eval"))
    perf.apply(cpu)
    torch.manual_seed(tc.seed)
    train_set, test_set = data.load(cfg.data, device) if splits is None else splits
    model = norm.build_model(cfg.norm).to(device, memory_format=cpu.memory_format)
    lr = optim.learning_rate(cfg.optim, cfg.batch_size, norm.is_normalized(cfg.norm))
    optimizer = optim.build(model, cfg.optim, lr, norm.autonn_factors(model, cfg.norm), fused=tc.fast)
    return Setup(device, cpu, eval_cpu, train_set, test_set, model, optimizer, lr)


@dataclass
class RunState:
    """What a checkpoint holds besides the model and the optimizer."""

    epoch: int = 0  # the epoch in progress, from 0
    batch: int = 0  # its batches done
    step: int = 0  # SGD steps done in all
    rows: list[dict[str, Any]] = field(default_factory=list)  # metrics of the finished epochs
    wall_seconds: float = 0.0  # of every session, up to the last reading of the clock
    epoch_seconds: float = 0.0  # training time of this epoch in earlier sessions
    cpu_settings: dict[str, Any] = field(default_factory=dict)  # what it runs with, by "train" and "eval"
    pack: dict[str, Any] = field(default_factory=dict)  # a seed of train.seeds: how its seeds ran
    epoch_log: EpochLog = field(default_factory=EpochLog)

    def new_epoch(self) -> None:
        """The epoch in progress is done: the next one starts with an empty log."""
        self.epoch, self.batch, self.epoch_seconds, self.epoch_log = self.epoch + 1, 0, 0.0, EpochLog()

    def to_checkpoint(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": {"torch": torch.get_rng_state()},
            **{key: getattr(self, key) for key in _PLAIN_KEYS},
            "epoch_losses": self.epoch_log.all_losses().cpu(),
            "epoch_wrong": self.epoch_log.wrong,
        }

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: dict[str, Any],
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
    ) -> RunState:
        """The state in ``checkpoint``, whose model and optimizer states are loaded into those given."""
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        log = EpochLog(checkpoint["epoch_losses"].to(device), checkpoint["epoch_wrong"])
        # (a checkpoint from before a key was added lacks it: the default stands in)
        return cls(**{key: checkpoint[key] for key in _PLAIN_KEYS if key in checkpoint}, epoch_log=log)


_PLAIN_KEYS = tuple(f.name for f in fields(RunState) if f.name != "epoch_log")


@dataclass(frozen=True)
class Outcome:
    """How a call of ``Trainer.fit`` ended: the run's status and summary, and the signal that stopped it."""

    status: str  # completed | diverged | interrupted
    summary: dict[str, Any]
    signum: int | None = None

    @property
    def exit_code(self) -> int:
        """0, or 128 + the signal for a run stopped by one (as a shell reports a process killed by it)."""
        return 0 if self.signum is None else 128 + self.signum


class Progress:
    """The epoch's progress bar where there is a terminal, else a log line every LOG_EVERY_SECONDS."""

    def __init__(self, state: RunState, epochs: int, total: int, show_bar: bool) -> None:
        self.epoch, self.epochs, self.total, self.show_bar = state.epoch + 1, epochs, total, show_bar
        self.bar = tqdm(total=total, initial=state.batch, desc=f"epoch {self.epoch}/{epochs}", leave=False,
                        disable=not show_bar, dynamic_ncols=True)
        self.last_line = time.perf_counter()

    def update(self, state: RunState, taken: int) -> None:
        loss = state.epoch_log.running_loss
        self.bar.update(taken)
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if not self.show_bar and time.perf_counter() - self.last_line > LOG_EVERY_SECONDS:
            log.info("epoch %d/%d batch %d/%d loss %.4f", self.epoch, self.epochs, state.batch, self.total,
                     loss)
            self.last_line = time.perf_counter()

    def close(self) -> None:
        self.bar.close()


class Trainer:
    """One run in ``run_dir``: what the config implies is resolved once here; ``fit`` trains (or resumes)."""

    def __init__(self, cfg: DictConfig, run_dir: Path, jobs: int | None = None) -> None:
        self.cfg, self.run_dir, self.tc = cfg, run_dir, cfg.train
        self.batch_size = cfg.batch_size
        self.epochs = sweeps.planned_epochs(self.tc.epochs, self.tc.max_epochs_by_batch_size, cfg.batch_size)
        self.lr = optim.learning_rate(cfg.optim, cfg.batch_size, norm.is_normalized(cfg.norm))
        self.sync_every = steps.steps_per_sync(cfg.batch_size, cfg.train.fast)
        self.schedule = norm.schedule(cfg.norm)
        self.schedule_values: dict[str, float] = {}  # what the schedule set last, as metrics columns
        self.jobs = perf.parallel_jobs() if jobs is None else jobs
        self.show_bar = sys.stderr.isatty() if self.tc.progress == "auto" else bool(self.tc.progress)
        self.setup: Setup | None = None
        self.provenance: list[dict[str, Any]] = []  # what trained the run, one entry per machine and version
        self.logger = logger.build(cfg.get("logger"), run_dir)  # besides metrics.csv: none, or TensorBoard
        self.checkpoint: dict[str, Any] | None = None  # the folder's, as claim read it
        self._clock = time.perf_counter()

    def fit(self) -> Outcome:
        """Trains the planned epochs from where the run folder's checkpoint left off, holding the folder's
        lock (runguard.Busy where another process has it); runfiles.RunFolderError where the folder holds
        another run or files that cannot be read or written."""
        with runguard.locked(self.run_dir):
            self.claim()
            finished = self.finished()
            if finished is not None:
                return finished
            return Group([self], [self.resume()]).fit()[0]  # the planned epochs, to the run's end

    def claim(self) -> None:
        """The run folder checked to hold this run (``train.resume``), or its results moved aside (start
        over), then marked as this run's; what was done there goes to the log."""
        now, notes = runguard.marker(self.cfg), []
        if self.tc.resume:
            self.checkpoint = runguard.check(self.run_dir, now, notes)  # read once: resume starts from it
        else:
            runguard.start_over(self.run_dir, with_logs=False, notes=notes)
        runguard.record(self.run_dir, now, notes)
        for line in notes:
            log.info(line)

    def failed(self, state: RunState, err: Exception) -> None:
        """An error that ends the run, recorded: summary.json says "failed" (with the error), never "running"
        for a process that has ended; the run resumes from its last checkpoint."""
        with suppress(Exception):  # a full disk may refuse this too: the error itself is what counts
            self.end("failed", state, error=f"{type(err).__name__}: {err}"[:500])

    def finished(self) -> Outcome | None:
        """The outcome of a run the folder holds finished already (where ``train.resume`` allows)."""
        if not (self.tc.resume and runfiles.is_finished(self.run_dir, self.epochs)):
            return None
        previous = runfiles.read_summary(self.run_dir)
        log.info("%s: already %s after %d epochs, nothing to do", self.run_dir, previous["status"],
                 previous["epochs_run"])
        return Outcome(previous["status"], previous)

    def resume(self, splits: tuple[data.Split, data.Split] | None = None) -> RunState:
        """The run set up (``splits``: data already loaded) and started from its checkpoint, if any."""
        checkpoint, self.checkpoint = self.checkpoint, None  # claim read it (None: a new run, or start over)
        self.build(kept=None if checkpoint is None else checkpoint.get("cpu_settings"), splits=splits)
        state = self.start(checkpoint)
        self._log_start()
        return state

    def complete(self, state: RunState) -> Outcome:
        runfiles.write_metrics(self.run_dir, state.rows)  # again: a run killed between checkpoint and metrics
        return self.end("completed", state)

    def build(self, kept: dict[str, Any] | None = None,
              splits: tuple[data.Split, data.Split] | None = None) -> Setup:
        """The run's CPU settings (``kept``: those a resumed run ran with), data (``splits``, where another
        run has loaded them), model and optimizer (made once)."""
        if self.setup is None:
            self.setup = set_up(self.cfg, self.jobs, kept, splits)
        return self.setup

    def start(self, checkpoint: dict[str, Any] | None = None) -> RunState:
        """The state of ``checkpoint`` (the run folder's, where ``train.resume`` allows), else a new one;
        either way recorded as a running run in summary.json."""
        if checkpoint is None:
            state = RunState()
        else:
            s = self.setup
            try:
                state = RunState.from_checkpoint(checkpoint, s.model, s.optimizer, s.device)
            except Exception as err:  # a checkpoint of another model or tool: any of torch's errors
                raise runguard.bad_checkpoint(self.run_dir, err, "does not fit this run") from err
            optim.match_state_layout(s.optimizer)  # the checkpoint may come from another memory layout
            log.info("resuming %s at epoch %d, batch %d", self.run_dir, state.epoch + 1, state.batch)
        state.cpu_settings = {"train": self.setup.cpu.as_dict(), "eval": self.setup.eval_cpu.as_dict()}
        previous = runfiles.read_summary(self.run_dir) if checkpoint is not None else None
        self.provenance = perf.provenance_extended((previous or {}).get("provenance"), self.setup.device)
        self._clock = time.perf_counter()  # the wall time counts training, not the set-up
        self.logger.start(self._summary("running", state), state.rows)
        return state

    def begin_epoch(self, state: RunState) -> list[torch.Tensor]:
        """The index batches of epoch ``state.epoch`` in its seeded order, with the model in training mode
        and the norm's schedule where the epoch starts."""
        n = len(self.setup.train_set)
        batches = data.epoch_order(n, self.batch_size, self.tc.seed, state.epoch, self.setup.device)
        self.setup.model.train()
        if self.schedule is not None:
            self.schedule.begin_epoch(state.step - state.batch + 1, batches)
        self.follow_schedule(state.epoch, state.step)
        return batches

    def follow_schedule(self, epoch: int, step: int) -> None:
        """The norm's scheduled values for the step after ``step`` steps, during epoch ``epoch`` (from 0)."""
        if self.schedule is None:
            return
        values = self.schedule.values(epoch + 1, step + 1)
        if values != self.schedule_values:
            self.schedule.apply(self.setup.model, values)
            self.schedule_values = values

    def end_epoch(self, state: RunState, batches: list[torch.Tensor]) -> None:
        """Validation, the epoch's metrics row, and a checkpoint at the start of the next epoch."""
        trained, n_train = time.perf_counter(), len(self.setup.train_set)
        train_loss, train_error = state.epoch_log.means(torch.tensor([len(b) for b in batches]), n_train)
        val_loss, val_error = self.setup.evaluate(self.tc.eval_batch_size)
        seconds = state.epoch_seconds + time.perf_counter() - trained  # training and validation
        state.rows.append({
            "epoch": state.epoch + 1, "step": state.step, "lr": self.lr, **self.schedule_values,
            "train_loss": train_loss, "train_error": train_error,
            "val_loss": val_loss, "val_error": val_error,
            "seconds": round(seconds, 3), "samples_per_s": round(n_train / state.epoch_seconds, 1),
        })
        log.info("epoch %d/%d train loss %.4f error %.4f | val loss %.4f error %.4f | %.1fs", state.epoch + 1,
                 self.epochs, train_loss, train_error, val_loss, val_error, seconds)
        state.new_epoch()
        self._save(state)
        self.logger.epoch(state.rows)

    def diverged(self, state: RunState, divergence: steps.Divergence) -> Outcome:
        """The run ends as a result: steps after the bad one in its chunk ran on an already blown-up model."""
        state.step = divergence.step
        log.warning("diverged: training loss %s at epoch %d, step %d", divergence.loss, divergence.epoch,
                    divergence.step)
        runfiles.write_metrics(self.run_dir, state.rows)
        at = {"epoch": divergence.epoch, "step": divergence.step, "loss": divergence.loss}
        return self.end("diverged", state, diverged_at=at)

    def interrupted(self, state: RunState, signum: int) -> Outcome:
        self._save(state)
        outcome = self.end("interrupted", state, signum, interrupted_at={"epoch": state.epoch + 1,
                                                                           "batch": state.batch})
        log.warning("stopped by signal %d at epoch %d, batch %d: checkpoint saved; run the same command "
                    "again to resume", signum, state.epoch + 1, state.batch)
        return outcome

    def end(self, status: str, state: RunState, signum: int | None = None, **extra: Any) -> Outcome:
        summary = self._summary(status, state, **extra)
        self.logger.end(status, summary)
        return Outcome(status, summary, signum)

    def _tick(self, state: RunState) -> None:
        """Adds the time since the last reading of the clock to the run's wall time."""
        now = time.perf_counter()
        state.wall_seconds += now - self._clock
        self._clock = now

    def _save(self, state: RunState) -> None:
        self._tick(state)
        runfiles.save_checkpoint(self.run_dir, state.to_checkpoint(self.setup.model, self.setup.optimizer))
        runfiles.write_metrics(self.run_dir, state.rows)

    def _summary(self, status: str, state: RunState, **extra: Any) -> dict[str, Any]:
        """Writes summary.json for the run as it stands, and returns it."""
        self._tick(state)
        rows, s, protocol = state.rows, self.setup, sweeps.protocol_settings(self.cfg)
        best = min(range(len(rows)), key=lambda i: rows[i]["val_error"]) if rows else None
        last = rows[-1] if rows else {}
        summary = {
            "status": status, "epochs_run": len(rows), "epochs": self.epochs,
            "final_val_error": last.get("val_error"),
            "best_val_error": rows[best]["val_error"] if rows else None,
            "best_epoch": best + 1 if rows else None, "final_val_loss": last.get("val_loss"),
            "wall_seconds": round(state.wall_seconds, 3), "steps": state.step,
            "norm": self.cfg.norm.name, "batch_size": self.batch_size, "seed": self.tc.seed, "lr": self.lr,
            "data": self.cfg.data.name, "device": str(s.device), "threads": s.cpu.threads,
            "mkldnn": s.cpu.mkldnn, "fast": self.tc.fast, "channels_last": s.cpu.channels_last,
            "cpu_settings_from": s.cpu.source, "eval_cpu_settings": s.eval_cpu.as_dict(),
            "protocol": sweeps.protocol_name(protocol), "protocol_settings": protocol,
            "peak_rss_mb": round(perf.peak_rss_mb(), 1), "provenance": self.provenance,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            **({"pack": state.pack} if state.pack else {}), **extra,
        }
        runfiles.write_summary(self.run_dir, summary)
        return summary

    def _log_start(self) -> None:
        cpu = self.setup.cpu
        log.info("%s, batch size %d, lr %.3g, %d epochs on %s (%d threads, oneDNN %s) -> %s",
                 self.cfg.norm.name, self.batch_size, self.lr, self.epochs, self.setup.device, cpu.threads,
                 "on" if cpu.mkldnn else "off", self.run_dir)


def packed_net(cfg: DictConfig, seeds: int, lr: float, fused: bool, device: torch.device,
               memory_format: torch.memory_format) -> model.PackedNet:
    """An empty packed LeNet for ``seeds`` seeds of this configuration and its SGD (the solo run's parameter
    groups); ``PackedNet.load`` fills it."""
    net = norm.build_model(cfg.norm, seeds).to(device, memory_format=memory_format)
    optimizer = optim.build(net, cfg.optim, lr, norm.autonn_factors(net, cfg.norm), fused=fused)
    return model.PackedNet(net, optimizer, seeds)


@dataclass
class Group:
    """Runs that train in step, through the one epoch loop: a single run, on its own model with the
    textbook step (``steps.train_steps``), or seeds of one configuration packed side by side in one network
    (``packed``: ``model.PackedNet`` and ``steps.train_steps_packed``), each seed its own run for everything
    it writes. A run that diverges ends as diverged at its step and leaves the group; the others go on."""

    runs: list[Trainer]
    states: list[RunState]
    packed: bool = False
    timing: bool = False  # for the timing tools (normexp.tune, scripts/bench.py): a divergence only counted
    net: model.PackedNet | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    schedule_values: dict[str, list[float]] = field(default_factory=dict)  # the packed network's
    batches: list[list[torch.Tensor]] | None = None  # run_steps's epoch in progress
    divergences: int = 0  # while timing

    def fit(self) -> list[Outcome]:
        """The planned epochs of every run, from where their states are, to their ends."""
        self.build_net()
        with steps.StopSignal() as stop:
            try:
                while self.runs and self.states[0].epoch < self.runs[0].epochs:
                    self.train_epoch(stop)
            except Exception as err:
                for run, st in zip(self.runs, self.states, strict=True):  # the runs still training
                    run.failed(st, err)
                raise
        self.outcomes += [run.complete(st) for run, st in zip(self.runs, self.states, strict=True)]
        return self.outcomes

    def train_epoch(self, stop: steps.StopSignal) -> None:
        """The rest of the epoch in progress, then each run's validation and checkpoint (or its checkpoint
        where a signal came)."""
        started = time.perf_counter()
        batches = self.begin_epoch()
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
            st.epoch_seconds += time.perf_counter() - started  # the epoch's training time so far
        self.unload()
        if stop.signum is not None:
            pairs = zip(self.runs, self.states, strict=True)
            self.outcomes += [run.interrupted(st, stop.signum) for run, st in pairs]
            self.runs, self.states = [], []
            return
        for run, st, b in zip(self.runs, self.states, batches, strict=True):
            run.end_epoch(st, b)

    def begin_epoch(self) -> list[list[torch.Tensor]]:
        """Each run's index batches of the epoch, in its seeded order, with the network in training mode
        and the norm's schedule where the epoch starts."""
        batches = [run.begin_epoch(st) for run, st in zip(self.runs, self.states, strict=True)]
        if self.net is not None:
            self.net.model.train()
            self.follow_schedule(self.states[0].epoch, self.states[0].step)
        return batches

    def train_chunk(self, batches: list[list[torch.Tensor]], stop: steps.StopSignal | None = None,
                    max_steps: int | None = None) -> None:
        """The next ``sync_every`` steps of the epoch (or ``max_steps``; fewer at its end, or when a signal
        comes), then one look at each run's losses; the runs that diverged in them leave the group."""
        lead, st0 = self.runs[0], self.states[0]
        start, first, epoch, s = st0.batch, st0.step, st0.epoch, lead.setup
        count = min(lead.sync_every, max_steps or lead.sync_every, len(batches[0]) - start)
        per_step = lead.schedule is not None and lead.schedule.per_step
        before_step = partial(self.follow_schedule, epoch) if per_step else None
        if self.net is None:
            taken = steps.train_steps(s.model, s.optimizer, s.train_set, batches[0][start:start + count],
                                      st0.epoch_log, s.cpu.memory_format, first, before_step, stop)
        else:
            taken = steps.train_steps_packed(self.net, s.train_set, batches, start, count,
                                             [st.epoch_log for st in self.states], s.cpu.memory_format,
                                             first, before_step, stop)
        diverged = []
        for i, (run, st) in enumerate(zip(self.runs, self.states, strict=True)):
            st.step, st.batch = first + taken, start + taken
            divergence = st.epoch_log.flush(run.tc.max_loss, first + 1, epoch + 1)
            if divergence is None:
                run.logger.sync(st.step, st.epoch_log.running_loss)
            else:
                diverged.append((i, divergence))
        if diverged and self.timing:
            self.divergences += len(diverged)
        elif diverged:
            self.drop(diverged, batches)

    def run_steps(self, count: int) -> int:
        """``count`` more steps of every run, in the loop's own chunks and epoch orders, into the next epoch
        without validating or saving (what the timing tools time); the samples trained, of all runs."""
        samples = 0
        while count > 0:
            if self.batches is None or self.states[0].batch == len(self.batches[0]):
                if self.batches is not None:
                    for st in self.states:
                        st.new_epoch()
                self.batches = self.begin_epoch()
            first = self.states[0].batch
            self.train_chunk(self.batches, max_steps=count)
            count -= self.states[0].batch - first
            samples += len(self.runs) * sum(len(b) for b in self.batches[0][first:self.states[0].batch])
        return samples

    def drop(self, diverged: list[tuple[int, steps.Divergence]], batches: list[list[torch.Tensor]]) -> None:
        """Runs that diverged end as such; the others go on (packed again without them)."""
        self.unload()
        for i, divergence in reversed(diverged):
            self.outcomes.append(self.runs[i].diverged(self.states[i], divergence))
            del self.runs[i], self.states[i], batches[i]
        if self.runs:
            self.build_net()

    def build_net(self) -> None:
        """The packed network, from the runs' own models and optimizers (a new one when a seed left)."""
        if not self.packed:
            return
        first = self.runs[0]
        s = first.setup
        self.net = packed_net(first.cfg, len(self.runs), first.lr, first.tc.fast, s.device,
                              s.cpu.memory_format)
        self.net.load([r.setup.model for r in self.runs], [r.setup.optimizer for r in self.runs])
        self.schedule_values = {}

    def unload(self) -> None:
        """The packed network's state back into each run's own model and optimizer."""
        if self.net is not None:
            self.net.unload([r.setup.model for r in self.runs], [r.setup.optimizer for r in self.runs])

    def follow_schedule(self, epoch: int, step: int) -> None:
        """Each run's scheduled values (its own clock); packed, set in the network, one per seed."""
        lead = self.runs[0]
        if lead.schedule is None:
            return
        for run in self.runs:
            run.follow_schedule(epoch, step)
        if self.net is None:
            return
        values = {key: [run.schedule_values[key] for run in self.runs] for key in lead.schedule_values}
        if values != self.schedule_values:
            lead.schedule.apply(self.net.model, values)
            self.schedule_values = values


def validate(cfg: DictConfig) -> list[str]:
    """Problems with ``conf/train`` values, one line each."""
    caps = cfg.max_epochs_by_batch_size
    caps_ok = OmegaConf.is_dict(caps) and all(
        validation.is_integer(k, 1) and validation.is_integer(v, 1) for k, v in caps.items()
    )
    caps_line = f"train.max_epochs_by_batch_size={caps!r}: must map batch sizes to integers >= 1"
    problems = [
        *validation.integer("train.epochs", cfg.epochs, 1, data.ORDER_STRIDE - 1),
        *([] if caps_ok else [caps_line]),
        *validation.integer("train.seed", cfg.seed, 0, data.SEED_MAX),
        *validation.choice("train.device", cfg.device, DEVICES),
        *validation.boolean("train.resume", cfg.resume),
        *validation.boolean("train.fast", cfg.fast),
        *validation.number("train.max_loss", cfg.max_loss, 0, low_open=True),
        *validation.integer("train.eval_batch_size", cfg.eval_batch_size, 1),
        *validation.integer("train.threads", cfg.threads, 1, or_word="auto"),
        *validation.boolean("train.mkldnn", cfg.mkldnn, or_auto=True),
        *validation.number("train.autotune", cfg.autotune, 0),
        *validation.boolean("train.progress", cfg.progress, or_auto=True),
    ]
    if cfg.device == "cuda" and not torch.cuda.is_available():
        problems.append("train.device='cuda': no CUDA device is available here; allowed: auto, cpu")
    return problems


# ---------------------------------------------------------------- a job of train.seeds
#
# Each seed is its own run in ``<job folder>/seed=<s>/``, written exactly as if it had run alone: its own
# ``.hydra/`` (``train.seed: s``), metrics.csv, summary.json, checkpoint.pt and lock. As ``train.pack_size``
# says (``perf.pack_size``; a resumed job as its checkpoints record) the seeds train packed in one network
# (``model.PackedNet``), else one after another in this process; either way each seed's initialisation, epoch
# order and optimizer state come from its own seed. A seed that diverges ends as diverged at its step and
# leaves the pack; the others go on. The job's own Hydra files go to ``<job folder>/.pack/``, so that the
# results find the seeds' folders and nothing else.

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


def validate_seeds(cfg: DictConfig) -> list[str]:
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


def fit_seeds(cfg: DictConfig, job_dir: Path, overrides: list[str] = (), hydra_dir: Path | None = None,
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
        for group in plan_groups(cfg, seeds, pending):
            outcomes += group.fit()
            if any(o.signum is not None for o in outcomes):
                break
    return outcomes


def plan_groups(cfg: DictConfig, seeds: list[int], runs: list[Trainer]) -> list[Group]:
    """The runs set up (data loaded once) and grouped: a pack of seeds at the same point of training, as
    many as the rule allows, or as their checkpoints record."""
    states: list[RunState] = []
    for run in runs:
        first = runs[0].setup
        states.append(run.resume(None if first is None else (first.train_set, first.test_set)))
    if not runs:
        return []
    recorded = next((st.pack["pack_size"] for st in states if st.pack.get("pack_size")), None)
    size = recorded or perf.pack_size(cfg.train.pack_size, resolve_device(cfg.train.device), len(seeds),
                                      norm.kernels(cfg.norm), cfg.batch_size)
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
