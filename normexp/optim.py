"""SGD with the writeup's learning-rate rule (owns ``conf/optim``)."""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch import nn

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


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def validate(cfg: DictConfig) -> list[str]:
    """Problems with ``conf/optim`` values, one line each."""
    problems = []
    if cfg.lr != "auto" and not _positive(cfg.lr):
        problems.append(f"optim.lr={cfg.lr!r}: must be a number > 0 or 'auto'")
    for key in ("with_norm", "without_norm"):
        if not _positive(cfg.auto_lr[key]):
            problems.append(f"optim.auto_lr.{key}={cfg.auto_lr[key]!r}: must be a number > 0")
    m = cfg.momentum
    if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 <= m < 1:
        problems.append(f"optim.momentum={m!r}: must be a number in [0, 1)")
    wd = cfg.weight_decay
    if isinstance(wd, bool) or not isinstance(wd, (int, float)) or wd < 0:
        problems.append(f"optim.weight_decay={wd!r}: must be a number >= 0")
    if cfg.scaling not in SCALINGS:
        problems.append(f"optim.scaling={cfg.scaling!r}: allowed: {', '.join(SCALINGS)}")
    if (
        isinstance(cfg.ref_batch_size, bool)
        or not isinstance(cfg.ref_batch_size, int)
        or cfg.ref_batch_size < 1
    ):
        problems.append(f"optim.ref_batch_size={cfg.ref_batch_size!r}: must be an integer >= 1")
    return problems
