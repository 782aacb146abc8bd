"""Seeds of one configuration packed side by side in one network (``LeNet(seeds=n)``, as in Packed-Ensembles),
each exactly its own run up to float rounding: its own weights, statistics and optimizer state in its own
channels, its own batches, its own loss (the packed loss is the sum of the seeds' mean losses, so each
seed's gradient is its solo gradient). The state moves between the seeds' own (solo) models and the packed
one by name: a packed tensor is its seeds' tensors concatenated along the one axis where its shape differs
(stacked, for a layer's scalar), so a seed's checkpoint is a solo run's."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from normexp import data, norm, optim, steps
from normexp.model import LeNet


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
