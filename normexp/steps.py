"""The pieces below the epoch loop (``trainer.Group``): SGD steps over index batches, one run's
(``train_steps``: the textbook lines) or seeds packed in one network's (``train_steps_packed``), the epoch's
log of their losses (read with one host sync per chunk of steps), evaluation, and the request to stop on a
signal."""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from normexp import data, model, runguard

SAMPLES_PER_SYNC = 4096  # fast path: look at the losses (one host sync) about this often
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass(frozen=True)
class Divergence:
    """The first step whose training loss was not finite or above ``train.max_loss``."""

    epoch: int  # from 1
    step: int  # global, from 1
    loss: float


class StopSignal:
    """Turns SIGTERM (sent by SLURM before pre-emption) and SIGINT into a request to stop after this step,
    while in a ``with`` block; the handlers from before are back after it."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __call__(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __enter__(self) -> StopSignal:
        self._previous = {sig: signal.signal(sig, self) for sig in STOP_SIGNALS}
        self.signum = runguard.requested()  # a sweep asked to stop while this run was setting up
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class EpochLog:
    """Per-step training losses and the error count of the epoch so far, kept on the device between syncs."""

    def __init__(self, losses: torch.Tensor | None = None, wrong: int = 0) -> None:
        self.losses = [] if losses is None else [losses]
        self.wrong = wrong
        self.running_loss = float("nan")  # mean loss of the last flushed chunk
        self.pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def record(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.pending.append((loss.detach(), logits.detach(), labels))

    def flush(self, max_loss: float, first_step: int, epoch: int) -> Divergence | None:
        """Moves pending steps into the log (one host sync); the first bad one among them, if any."""
        losses = torch.stack([p[0] for p in self.pending])
        wrong = torch.cat([p[1] for p in self.pending]).argmax(1) != torch.cat([p[2] for p in self.pending])
        bad = (~torch.isfinite(losses)) | (losses > max_loss)
        self.pending.clear()
        if bad.any():
            i = int(bad.nonzero()[0])
            return Divergence(epoch, first_step + i, losses[i].item())
        self.losses.append(losses)
        self.wrong += int(wrong.sum())
        self.running_loss = losses.mean().item()
        return None

    def all_losses(self) -> torch.Tensor:
        return torch.cat(self.losses) if self.losses else torch.zeros(0)

    def means(self, batch_sizes: torch.Tensor, num_examples: int) -> tuple[float, float]:
        """Epoch mean loss (each step weighted by its batch size, summed in one fixed order) and error."""
        weighted = self.all_losses().double().cpu() * batch_sizes.double()
        return weighted.sum().item() / num_examples, self.wrong / num_examples


def train_steps(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train_set: data.Split,
    batches: list[torch.Tensor],
    epoch_log: EpochLog,
    memory_format: torch.memory_format = torch.contiguous_format,
    first_step: int = 0,
    before_step: Callable[[int], None] | None = None,
    stop: StopSignal | None = None,
) -> int:
    """One SGD step on each index batch in turn, recording loss and logits in ``epoch_log`` without a host
    sync. ``before_step(s)`` runs before the step that follows global step ``s``; a signal caught by ``stop``
    ends the loop after the current step. Returns the number of steps taken."""
    taken = 0
    for idx in batches:
        if before_step is not None:
            before_step(first_step + taken)
        x, y = train_set.batch(idx, memory_format)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        epoch_log.record(loss, logits, y)
        taken += 1
        if stop is not None and stop.signum is not None:
            break
    return taken


def train_steps_packed(
    net: model.PackedNet,
    train_set: data.Split,
    batches: Sequence[Sequence[torch.Tensor]],
    start: int,
    count: int,
    logs: Sequence[EpochLog],
    memory_format: torch.memory_format = torch.contiguous_format,
    first_step: int = 0,
    before_step: Callable[[int], None] | None = None,
    stop: StopSignal | None = None,
) -> int:
    """``train_steps`` for seeds packed in one network: step ``start + k`` trains seed i on its index batch
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


def steps_per_sync(batch_size: int, fast: bool) -> int:
    """Steps between two looks at the losses: about SAMPLES_PER_SYNC samples on the fast path, else 1."""
    return max(1, SAMPLES_PER_SYNC // batch_size) if fast else 1


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    split: data.Split,
    batch_size: int,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> tuple[float, float]:
    """Mean cross-entropy and top-1 error over the whole split, in eval mode."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=split.labels.device)
    wrong = torch.zeros((), dtype=torch.int64, device=split.labels.device)
    for x, y in split.in_order(batch_size, memory_format):
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        wrong += (logits.argmax(1) != y).sum()
    return loss_sum.item() / len(split), wrong.item() / len(split)
