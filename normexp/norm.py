"""Normalization layers and the one factory that knows their names (owns ``conf/norm``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from omegaconf import DictConfig
from torch import nn

PER_CHANNEL = "per_channel"


class BatchNorm2d(nn.BatchNorm2d):
    """Batch normalization that also trains on one value per channel.

    PyTorch refuses a batch with a single value per channel (the 1x1 layer at batch size 1) because the
    unbiased variance is undefined there. The writeup ran it, so the math runs as written: the batch variance
    is 0, x_hat = 0, and the moving variance is fed the biased estimate (0) instead of NaN.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.numel() == x.shape[1]:
            with torch.no_grad():
                self.running_mean.lerp_(x.reshape(-1), self.momentum)
                self.running_var.mul_(1.0 - self.momentum)
                self.num_batches_tracked.add_(1)
            return torch.batch_norm(x, self.weight, self.bias, None, None, True, 0.0, self.eps, False)
        return super().forward(x)


class BatchRenorm2d(nn.Module):
    """Batch renormalization (Ioffe 2017) for (N, C) and (N, C, H, W) inputs.

    Training: sigma_B = sqrt(biased batch variance + eps), r = clip(sigma_B / sigma, 1/r_max, r_max),
    d = clip((mu_B - mu) / sigma, -d_max, d_max), both without gradient and from the moving statistics before
    this step's update; y = gamma * ((x - mu_B) / sigma_B * r + d) + beta. The moving mean and moving *std*
    follow mu += alpha (mu_B - mu), sigma += alpha (sigma_B - sigma). Eval: y = gamma (x - mu) / sigma + beta.
    """

    def __init__(self, num_features: int, eps: float = 1e-4, alpha: float = 0.01) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.alpha = alpha
        self.r_max = 1.0
        self.d_max = 0.0
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_std", torch.ones(num_features))

    def set_limits(self, r_max: float, d_max: float) -> None:
        self.r_max, self.d_max = float(r_max), float(d_max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        if not self.training:
            scale = self.weight / self.running_std
            return torch.addcmul((self.bias - self.running_mean * scale).view(shape), x, scale.view(shape))
        with torch.no_grad():
            var, mean = torch.var_mean(x, dim=[0, *range(2, x.dim())], correction=0)
            std = (var + self.eps).sqrt_()
            r = (std / self.running_std).clamp_(1.0 / self.r_max, self.r_max)
            d = ((mean - self.running_mean) / self.running_std).clamp_(-self.d_max, self.d_max)
            self.running_mean.lerp_(mean, self.alpha)
            self.running_std.lerp_(std, self.alpha)
        # gamma * (x_hat_B * r + d) + beta is batch norm with scale gamma * r and shift gamma * d + beta,
        # r and d being constants: PyTorch's fused kernel then carries the gradient through mu_B and sigma_B
        scale, shift = self.weight * r, torch.addcmul(self.bias, self.weight, d)
        return torch.batch_norm(x, scale, shift, None, None, True, 0.0, self.eps, False)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, alpha={self.alpha}, r_max={self.r_max}, d_max={self.d_max}"
        )


def _group_count(cfg: DictConfig, num_channels: int) -> int:
    groups = {"ln": 1, "in": PER_CHANNEL}.get(cfg.name, cfg.get("groups"))
    return num_channels if groups == PER_CHANNEL else int(groups)


_BUILDERS: dict[str, Callable[[DictConfig, int], nn.Module]] = {
    "none": lambda cfg, c: nn.Identity(),
    "bn": lambda cfg, c: BatchNorm2d(c, eps=cfg.eps, momentum=cfg.momentum),
    "brn": lambda cfg, c: BatchRenorm2d(c, eps=cfg.eps, alpha=cfg.alpha),
    "gn": lambda cfg, c: nn.GroupNorm(_group_count(cfg, c), c, eps=cfg.eps),
    "ln": lambda cfg, c: nn.GroupNorm(_group_count(cfg, c), c, eps=cfg.eps),
    "in": lambda cfg, c: nn.GroupNorm(_group_count(cfg, c), c, eps=cfg.eps),
}
NORM_NAMES = tuple(_BUILDERS)


def create_norm_layer(cfg: DictConfig, num_channels: int) -> nn.Module:
    """The normalization layer named by ``cfg.name`` for ``num_channels`` channels."""
    return _BUILDERS[cfg.name](cfg, num_channels)


def is_normalized(cfg: DictConfig) -> bool:
    return cfg.name != "none"


def renorm_limits(cfg: DictConfig, epoch: int, step: int) -> tuple[float, float]:
    """(r_max, d_max) for batch renorm during epoch number ``epoch`` and step number ``step`` (both from 1).

    (1, 0) for the first ``warmup`` units, then a linear ramp that reaches (r_max, d_max) after ``ramp`` more
    units, held after; the unit is ``epoch`` (constant within an epoch) or ``step``. With the writeup's
    warmup=5, ramp=5 in epochs: epochs 1-5 are plain batch norm, epochs 6-10 ramp, epoch 10 on uses (3, 5).
    """
    sched = cfg.schedule
    t = epoch if sched.unit == "epoch" else step
    frac = (t - sched.warmup) / sched.ramp if sched.ramp > 0 else float(t > sched.warmup)
    frac = min(max(frac, 0.0), 1.0)
    return 1.0 + frac * (cfg.r_max - 1.0), frac * cfg.d_max


def set_renorm_limits(model: nn.Module, r_max: float, d_max: float) -> None:
    for module in model.modules():
        if isinstance(module, BatchRenorm2d):
            module.set_limits(r_max, d_max)


def norm_parameters(model: nn.Module) -> set[nn.Parameter]:
    """Scale and shift of every normalization layer (these get no weight decay)."""
    norm_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm, BatchRenorm2d)
    return {p for m in model.modules() if isinstance(m, norm_types) for p in m.parameters(recurse=False)}


def validate(cfg: DictConfig, channel_counts: Sequence[int]) -> list[str]:
    """Problems with ``conf/norm`` values, one line each, empty when all is well."""
    problems = []
    if cfg.name not in _BUILDERS:
        problems.append(f"norm.name={cfg.name!r}: unknown; allowed: {', '.join(NORM_NAMES)}")
        return problems
    if cfg.name != "none" and not (isinstance(cfg.eps, (int, float)) and cfg.eps > 0):
        problems.append(f"norm.eps={cfg.eps!r}: must be a number > 0")
    if cfg.name == "gn":
        groups = cfg.get("groups")
        if groups != PER_CHANNEL:
            if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
                problems.append(f"norm.groups={groups!r}: must be a positive integer or '{PER_CHANNEL}'")
            elif any(c % groups for c in channel_counts):
                counts = ", ".join(map(str, channel_counts))
                problems.append(f"norm.groups={groups}: must divide every layer's channel count ({counts})")
    if cfg.name == "bn" and not (isinstance(cfg.momentum, (int, float)) and 0 <= cfg.momentum <= 1):
        problems.append(f"norm.momentum={cfg.momentum!r}: must be a number in [0, 1]")
    if cfg.name == "brn":
        if not (isinstance(cfg.r_max, (int, float)) and cfg.r_max >= 1):
            problems.append(f"norm.r_max={cfg.r_max!r}: must be a number >= 1")
        if not (isinstance(cfg.d_max, (int, float)) and cfg.d_max >= 0):
            problems.append(f"norm.d_max={cfg.d_max!r}: must be a number >= 0")
        if not (isinstance(cfg.alpha, (int, float)) and 0 < cfg.alpha <= 1):
            problems.append(f"norm.alpha={cfg.alpha!r}: must be a number in (0, 1]")
        sched = cfg.schedule
        if sched.unit not in ("epoch", "step"):
            problems.append(f"norm.schedule.unit={sched.unit!r}: allowed: epoch, step")
        for key in ("warmup", "ramp"):
            value = sched[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                problems.append(f"norm.schedule.{key}={value!r}: must be a number >= 0")
    return problems
