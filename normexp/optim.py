"""SGD with the writeup's learning-rate rule (owns ``conf/optim``)."""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch import nn

from normexp import validation

SCALINGS = ("linear", "sqrt", "none")


def learning_rate(cfg: DictConfig, batch_size: int, normalized: bool) -> float:
    """Base rate at ``ref_batch_size`` scaled to ``batch_size``; ``lr: auto`` takes the writeup's base rate,
    which depends on whether the network has normalization layers."""
    base = cfg.lr if cfg.lr != "auto" else (cfg.auto_lr.with_norm if normalized else cfg.auto_lr.without_norm)
    ratio = batch_size / cfg.ref_batch_size
    return base * {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[cfg.scaling]


def build(
    model: nn.Module, cfg: DictConfig, lr: float, no_decay: set[nn.Parameter], fused: bool
) -> torch.optim.SGD:
    """SGD with momentum; ``no_decay`` parameters (norm scale and shift) get no weight decay.
    ``fused`` picks the single-kernel update, the same arithmetic in fewer operations."""
    decay = [p for p in model.parameters() if p not in no_decay]
    groups = [
        {"params": decay},
        {"params": [p for p in model.parameters() if p in no_decay], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    return torch.optim.SGD(
        groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused or None
    )


def validate(cfg: DictConfig) -> list[str]:
    """Problems with ``conf/optim`` values, one line each."""
    return [
        *validation.number("optim.lr", cfg.lr, 0, low_open=True, or_word="auto"),
        *validation.number("optim.auto_lr.with_norm", cfg.auto_lr.with_norm, 0, low_open=True),
        *validation.number("optim.auto_lr.without_norm", cfg.auto_lr.without_norm, 0, low_open=True),
        *validation.number("optim.momentum", cfg.momentum, 0, 1, high_open=True),
        *validation.number("optim.weight_decay", cfg.weight_decay, 0),
        *validation.choice("optim.scaling", cfg.scaling, SCALINGS),
        *validation.integer("optim.ref_batch_size", cfg.ref_batch_size, 1),
    ]
