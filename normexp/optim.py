"""SGD with the writeup's learning-rate rule (owns ``conf/optim``)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from omegaconf import DictConfig
from torch import nn

from normexp import validation

SCALINGS = ("linear", "sqrt", "none")
FACTORS = ("none", "autonn")


def learning_rate(cfg: DictConfig, batch_size: int, normalized: bool) -> float:
    """Base rate at ``ref_batch_size`` scaled to ``batch_size``; ``lr: auto`` takes the writeup's base rate,
    which depends on whether the network has normalization layers."""
    base = cfg.lr if cfg.lr != "auto" else (cfg.auto_lr.with_norm if normalized else cfg.auto_lr.without_norm)
    ratio = batch_size / cfg.ref_batch_size
    return base * {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[cfg.scaling]


def parameter_factors(
    cfg: DictConfig, model: nn.Module, norm_factors: Mapping[nn.Parameter, tuple[float, float]]
) -> list[tuple[nn.Parameter, tuple[float, float]]]:
    """Each parameter with its (lr, weight-decay) factors. ``factors: none``: 1 and 1, but no weight decay
    on the norm layers' scale and shift (the keys of ``norm_factors``). ``factors: autonn``, as the writeup's
    code declares them: conv weights 1 and 1, conv biases 1 and 0, the norm layers' own ``norm_factors``."""
    found = []
    for p in model.parameters():
        if cfg.factors == "autonn":
            factors = norm_factors[p] if p in norm_factors else (1.0, 1.0 if p.dim() > 1 else 0.0)
        else:
            factors = (1.0, 0.0) if p in norm_factors else (1.0, 1.0)
        found.append((p, factors))
    return found


def build(
    model: nn.Module,
    cfg: DictConfig,
    lr: float,
    norm_factors: Mapping[nn.Parameter, tuple[float, float]],
    fused: bool,
) -> torch.optim.SGD:
    """SGD with momentum, a parameter group per (lr, weight-decay) factor pair (``parameter_factors``).
    ``fused`` picks the single-kernel update, the same arithmetic in fewer operations."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for p, factors in parameter_factors(cfg, model, norm_factors):
        groups.setdefault(factors, []).append(p)
    param_groups = [{"params": params, "lr": lr * lr_factor, "weight_decay": cfg.weight_decay * wd_factor}
                    for (lr_factor, wd_factor), params in groups.items()]
    return torch.optim.SGD(param_groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           fused=fused or None)


def validate(cfg: DictConfig) -> list[str]:
    """Problems with ``conf/optim`` values, one line each."""
    return [
        *validation.number("optim.lr", cfg.lr, 0, low_open=True, or_word="auto"),
        *validation.number("optim.auto_lr.with_norm", cfg.auto_lr.with_norm, 0, low_open=True),
        *validation.number("optim.auto_lr.without_norm", cfg.auto_lr.without_norm, 0, low_open=True),
        *validation.number("optim.momentum", cfg.momentum, 0, 1, high_open=True),
        *validation.number("optim.weight_decay", cfg.weight_decay, 0),
        *validation.choice("optim.scaling", cfg.scaling, SCALINGS),
        *validation.choice("optim.factors", cfg.factors, FACTORS),
        *validation.integer("optim.ref_batch_size", cfg.ref_batch_size, 1),
    ]


def match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Lays each optimizer state tensor (momentum) out like its parameter, e.g. after loading a checkpoint
    written under another layout: the fused update walks parameter, gradient and state as flat arrays."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param).copy_(value)
