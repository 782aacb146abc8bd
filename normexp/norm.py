"""Normalization layers and the one factory that knows their names (owns ``conf/norm``)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
from omegaconf import DictConfig
from torch import nn

from normexp import layers, validation
from normexp.model import LeNet

PER_CHANNEL = "per_channel"


def _channels_last_on_cpu(x: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
    )


class _ChannelsLastBatchNorm(torch.autograd.Function):
    """Training-mode batch norm for channels-last CPU tensors: PyTorch's forward kernel, and a backward
    that does the per-channel sums as matrix-vector products over the (N*H*W, C) view of the input.
    PyTorch's channels-last CPU backward kernel is 2.5-4.5x slower than this (measured at batch size 256 on
    the LeNet's layers, 2 threads); the formula is batch norm's usual gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):
        y, mean, invstd = torch.native_batch_norm(
            x, weight, bias, running_mean, running_var, True, momentum, eps
        )
        ctx.save_for_backward(x, weight, mean, invstd)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, mean, invstd = ctx.saved_tensors
        n, c, h, w = x.shape
        x2 = x.permute(0, 2, 3, 1).reshape(-1, c)  # views: the memory is already (N, H, W, C)
        g2 = grad_y.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(-1, c)
        ones = g2.new_ones(g2.shape[0])
        centred = x2 - mean
        grad_bias = ones @ g2  # sum of the gradient per channel
        grad_weight = (ones @ (g2 * centred)) * invstd  # sum of gradient * x_hat per channel
        scale = invstd if weight is None else weight * invstd
        # grad_x = scale * (g - mean(g) - x_hat * mean(g * x_hat))
        grad_x = torch.addcmul(-scale * grad_bias / len(g2), g2, scale)
        grad_x.addcmul_(centred, -scale * invstd * grad_weight / len(g2))
        grad_x = grad_x.view(n, h, w, c).permute(0, 3, 1, 2)
        return grad_x, None if weight is None else grad_weight, grad_bias, None, None, None, None


def batch_norm_train(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor | None = None,
    running_var: torch.Tensor | None = None,
    momentum: float = 0.0,
    eps: float = 1e-5,
) -> torch.Tensor:
    """``torch.batch_norm`` in training mode (normalised by the batch statistics, running statistics
    updated when given), with the faster backward above for channels-last CPU input."""
    if _channels_last_on_cpu(x):
        return _ChannelsLastBatchNorm.apply(x, weight, bias, running_mean, running_var, momentum, eps)
    return torch.batch_norm(x, weight, bias, running_mean, running_var, True, momentum, eps, False)


class BatchNorm2d(nn.BatchNorm2d):
    """Batch normalization that also trains on one value per channel.

    PyTorch refuses a batch with a single value per channel (the 1x1 layer at batch size 1) because the
    unbiased variance is undefined there. The writeup ran it, so the math runs as written: the batch variance
    is 0, x_hat = 0, and the moving variance is fed the biased estimate (0) instead of NaN.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        self.num_batches_tracked.add_(1)
        if x.numel() == x.shape[1]:
            with torch.no_grad():
                self.running_mean.lerp_(x.reshape(-1), self.momentum)
                self.running_var.mul_(1.0 - self.momentum)
            return batch_norm_train(x, self.weight, self.bias, eps=self.eps)
        return batch_norm_train(
            x, self.weight, self.bias, self.running_mean, self.running_var, self.momentum, self.eps
        )


class MomentBatchNorm2d(nn.Module):
    """Batch normalization with MatConvNet's moments (``norm.moments: matconvnet``), as the writeup's code
    keeps them: a moving mean and a moving sigma, sigma_B = sqrt(biased batch variance + eps), both starting
    at 0 and averaged as m <- (1 - momentum) m + momentum * batch value; at evaluation
    y = gamma (x - mu) / sigma + beta, with no further eps. Training output is batch norm's."""

    def __init__(self, num_features: int, eps: float = 1e-4, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_std", torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return _moving_statistics_norm(x, self.weight, self.bias, self.running_mean, self.running_std)
        with torch.no_grad():
            _, mean, invstd = torch.native_batch_norm(x, None, None, None, None, True, 0.0, self.eps)
            self.running_mean.lerp_(mean, self.momentum)
            self.running_std.lerp_(invstd.reciprocal_(), self.momentum)
        return batch_norm_train(x, self.weight, self.bias, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, moments=matconvnet"


def _moving_statistics_norm(x, weight, bias, mean, std) -> torch.Tensor:
    """gamma (x - mean) / std + beta per channel, as one fused multiply-add."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    scale = weight / std
    return torch.addcmul((bias - mean * scale).view(shape), x, scale.view(shape))


class BatchRenorm2d(nn.Module):
    """Batch renormalization (Ioffe 2017) for (N, C) and (N, C, H, W) inputs.

    Training: sigma_B = sqrt(biased batch variance + eps), r = clip(sigma_B / sigma, 1/r_max, r_max),
    d = clip((mu_B - mu) / sigma, -d_max, d_max), both without gradient and from the moving statistics before
    this step's update; y = gamma * ((x - mu_B) / sigma_B * r + d) + beta. The moving mean and moving *std*
    follow mu += alpha (mu_B - mu), sigma += alpha (sigma_B - sigma). Eval: y = gamma (x - mu) / sigma + beta.
    """

    def __init__(
        self, num_features: int, eps: float = 1e-4, alpha: float = 0.01, initial_std: float = 1.0
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.alpha = alpha
        self.r_max = 1.0
        self.d_max = 0.0
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        # 1 in PyTorch's convention; the writeup's code starts it at 0 (r and d are clipped at first then)
        self.register_buffer("running_std", torch.full((num_features,), float(initial_std)))

    def set_limits(self, r_max: float | Sequence[float], d_max: float | Sequence[float]) -> None:
        """The limits, or one pair per packed seed (its channels seed-major)."""
        self.r_max, self.d_max = self._limit(r_max), self._limit(d_max)

    def _limit(self, value: float | Sequence[float]) -> float | torch.Tensor:
        if isinstance(value, (int, float)):
            return float(value)
        per_seed = torch.tensor(value, dtype=self.running_std.dtype, device=self.running_std.device)
        return per_seed.repeat_interleave(self.num_features // len(per_seed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return _moving_statistics_norm(x, self.weight, self.bias, self.running_mean, self.running_std)
        with torch.no_grad():
            # the batch statistics from batch norm's own kernel: 2-3x faster on CPU than torch.var_mean
            _, mean, invstd = torch.native_batch_norm(x, None, None, None, None, True, 0.0, self.eps)
            std = invstd.reciprocal_()  # sqrt(biased batch variance + eps)
            r = (std / self.running_std).clamp_(1.0 / self.r_max, self.r_max)
            # 0 / 0 (a moving std still at its initial 0, before the first step, in the warm-up where
            # d_max = 0) counts as 0
            d = ((mean - self.running_mean) / self.running_std).nan_to_num_(0.0)
            d.clamp_(-self.d_max, self.d_max)
            self.running_mean.lerp_(mean, self.alpha)
            self.running_std.lerp_(std, self.alpha)
        # gamma * (x_hat_B * r + d) + beta is batch norm with scale gamma * r and shift gamma * d + beta,
        # r and d being constants: PyTorch's fused kernel then carries the gradient through mu_B and sigma_B
        scale, shift = self.weight * r, torch.addcmul(self.bias, self.weight, d)
        return batch_norm_train(x, scale, shift, eps=self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, alpha={self.alpha}, r_max={self.r_max}, d_max={self.d_max}"
        )


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


def set_renorm_limits(model: nn.Module, r_max: float | Sequence[float], d_max: float | Sequence[float]
                      ) -> None:
    for module in model.modules():
        if isinstance(module, BatchRenorm2d):
            module.set_limits(r_max, d_max)


MOMENTS = ("pytorch", "matconvnet")


@dataclass
class RenormSchedule:
    """Batch renorm's (r_max, d_max) as a schedule the trainer follows without knowing what it sets.

    With ``norm.moments: matconvnet`` the epochs of the schedule are counted as the writeup's code counts
    them: the count goes up at the batch that holds training image 1 (index 0), not at the epoch's start.
    """

    cfg: DictConfig
    first_image_step: int = 0  # step number (from 1) of the batch holding image 0 in the current epoch

    @property
    def per_step(self) -> bool:
        """Whether the values may change within an epoch (else only at its start)."""
        return self.cfg.schedule.unit == "step" or self._counts_first_image

    @property
    def _counts_first_image(self) -> bool:
        return self.cfg.get("moments", "pytorch") == "matconvnet"

    def begin_epoch(self, first_step: int, batches: list[torch.Tensor]) -> None:
        """An epoch starts at step number ``first_step`` (from 1) with these index batches."""
        holds_first = next(i for i, idx in enumerate(batches) if bool((idx == 0).any()))
        self.first_image_step = first_step + holds_first

    def values(self, epoch: int, step: int) -> dict[str, float]:
        """The values during epoch number ``epoch`` and step number ``step`` (both from 1), by metric name."""
        if self._counts_first_image and step < self.first_image_step:
            epoch -= 1  # this epoch's count starts with image 0
        r_max, d_max = renorm_limits(self.cfg, epoch, step)
        return {"r_max": r_max, "d_max": d_max}

    def apply(self, model: nn.Module, values: dict[str, float] | dict[str, list[float]]) -> None:
        """Sets the values in ``model``; for a model of packed seeds, one value per seed."""
        set_renorm_limits(model, values["r_max"], values["d_max"])


# ---------------------------------------------------------------- the registry: one entry per norm


def _per_channel_pack(cfg: DictConfig, num_channels: int, seeds: int) -> nn.Module:
    return REGISTRY[cfg.name].build(cfg, num_channels * seeds)


def _grouped_pack(groups: Callable[[DictConfig, int], int]) -> Callable[[DictConfig, int, int], nn.Module]:
    """Packed group norm: each seed's own groups (seed-major channels), so that none spans two seeds."""
    return lambda cfg, c, seeds: layers.GroupNorm(groups(cfg, c) * seeds, c * seeds, eps=cfg.eps)


def _frn_pack(cfg: DictConfig, num_channels: int, seeds: int) -> nn.Module:
    return layers.FilterResponseNorm2d(num_channels * seeds, eps=cfg.eps, learn_eps=cfg.learn_eps,
                                       tlu=cfg.tlu == "every", seeds=seeds)


def _evonorm_pack(cfg: DictConfig, num_channels: int, seeds: int) -> nn.Module:
    return layers.EvoNormS0(num_channels * seeds, _gn_groups(cfg, num_channels) * seeds, eps=cfg.eps)


def _no_checks(cfg: DictConfig, channel_counts: Sequence[int]) -> list[str]:
    return []


def _eps_checks(cfg: DictConfig, channel_counts: Sequence[int]) -> list[str]:
    return validation.number("norm.eps", cfg.eps, 0, low_open=True)


def _bn_checks(cfg: DictConfig, channel_counts: Sequence[int]) -> list[str]:
    return _eps_checks(cfg, channel_counts) + validation.number("norm.momentum", cfg.momentum, 0, 1)


def _batch_norm(cfg: DictConfig, num_channels: int) -> nn.Module:
    if cfg.get("moments") == "matconvnet":
        return MomentBatchNorm2d(num_channels, eps=cfg.eps, momentum=cfg.momentum)
    return BatchNorm2d(num_channels, eps=cfg.eps, momentum=cfg.momentum)


def _batch_renorm(cfg: DictConfig, num_channels: int) -> nn.Module:
    initial_std = 0.0 if cfg.get("moments") == "matconvnet" else 1.0
    return BatchRenorm2d(num_channels, eps=cfg.eps, alpha=cfg.alpha, initial_std=initial_std)


def _brn_checks(cfg: DictConfig, channel_counts: Sequence[int]) -> list[str]:
    sched = cfg.schedule
    return [
        *_eps_checks(cfg, channel_counts),
        *validation.number("norm.r_max", cfg.r_max, 1),
        *validation.number("norm.d_max", cfg.d_max, 0),
        *validation.number("norm.alpha", cfg.alpha, 0, 1, low_open=True),
        *validation.choice("norm.schedule.unit", sched.unit, ("epoch", "step")),
        *validation.number("norm.schedule.warmup", sched.warmup, 0),
        *validation.number("norm.schedule.ramp", sched.ramp, 0),
    ]


def _gn_checks(cfg: DictConfig, channel_counts: Sequence[int]) -> list[str]:
    groups = cfg.get("groups")
    if groups == PER_CHANNEL:
        return _eps_checks(cfg, channel_counts)
    if not validation.is_integer(groups, 1):
        line = f"norm.groups={groups!r}: must be a positive integer or '{PER_CHANNEL}'"
    elif any(c % groups for c in channel_counts):
        counts = ", ".join(map(str, channel_counts))
        line = f"norm.groups={groups}: must divide every layer's channel count ({counts})"
    else:
        return _eps_checks(cfg, channel_counts)
    return [*_eps_checks(cfg, channel_counts), line]


def _group_norm(groups: Callable[[DictConfig, int], int]) -> Callable[[DictConfig, int], nn.Module]:
    return lambda cfg, c: layers.GroupNorm(groups(cfg, c), c, eps=cfg.eps)


def _gn_groups(cfg: DictConfig, num_channels: int) -> int:
    return num_channels if cfg.groups == PER_CHANNEL else int(cfg.groups)


TLU_PLACES = ("relu", "every")  # norm.tlu: where the LeNet has its ReLU (in its place), or after every FRN


def _frn_checks(cfg: DictConfig, channel_counts: Sequence[int]) -> list[str]:
    return [
        *_eps_checks(cfg, channel_counts),
        *validation.boolean("norm.learn_eps", cfg.learn_eps),
        *validation.choice("norm.tlu", cfg.tlu, TLU_PLACES),
    ]


def _frn(cfg: DictConfig, num_channels: int) -> nn.Module:
    return layers.FilterResponseNorm2d(num_channels, eps=cfg.eps, learn_eps=cfg.learn_eps,
                                       tlu=cfg.tlu == "every")


def _frn_activation(cfg: DictConfig, num_channels: int) -> nn.Module:
    """In place of the LeNet's ReLU: the TLU of FRN+TLU, or nothing where every FRN layer has its own."""
    return layers.TLU(num_channels) if cfg.tlu == "relu" else nn.Identity()


def _ws_gn_checks(cfg: DictConfig, channel_counts: Sequence[int]) -> list[str]:
    return _gn_checks(cfg, channel_counts) + validation.number("norm.ws_eps", cfg.ws_eps, 0, low_open=True)


def _custom_checks(cfg: DictConfig, channel_counts: Sequence[int]) -> list[str]:
    return layers.custom_problems(cfg.target, cfg.kwargs, channel_counts)


# autonn's vl_nnbnorm: scale learns 2x as fast, neither scale nor shift is decayed (mcnExtraLayers' BRN: same)
BN_AUTONN_FACTORS = {"weight": (2.0, 0.0), "bias": (1.0, 0.0)}
# autonn has no FRN, EvoNorm or layer of the user's own: every parameter of theirs is a plain one
PLAIN_AUTONN_FACTORS: dict[str, tuple[float, float]] = defaultdict(lambda: (1.0, 1.0))


@dataclass(frozen=True)
class NormSpec:
    """All that normexp knows about one norm: its layer, the keys of its YAML (``conf/norm/<name>.yaml``) and
    their checks, and what the rest of the tool asks of it."""

    build: Callable[[DictConfig, int], nn.Module]  # (cfg, num_channels) -> layer
    layer_types: tuple[type[nn.Module], ...] = ()  # what it builds: their scale and shift get no weight decay
    checks: Callable[[DictConfig, Sequence[int]], list[str]] = _no_checks  # (cfg, channel counts) -> problems
    schedule: Callable[[DictConfig], RenormSchedule] | None = None  # values the trainer sets as training goes
    kernels: str = "none"  # which CPU kernels it runs: norms with the same kernels share CPU settings
    # what it needs of the network: a function the convolutions apply to their weights, from the config
    conv_weight: Callable[[DictConfig], Callable[[torch.Tensor], torch.Tensor]] | None = None
    # (cfg, num_channels) -> the layer in place of the ReLU after the third norm, for a layer that brings
    # its own nonlinearity; None keeps the ReLU
    activation: Callable[[DictConfig, int], nn.Module] | None = None
    # (lr factor, weight-decay factor) of its parameters by name under ``optim.factors: autonn``; autonn's
    # defaults for a plain parameter, which GN's scale and shift are
    autonn_factors: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {"weight": (1.0, 1.0), "bias": (1.0, 1.0)}
    )
    # (cfg, channels per seed, seeds) -> the layer for that many packed seeds (channels seed-major), its
    # statistics never spanning two seeds; by default ``build`` for all the channels (a per-channel layer).
    # None: the layer cannot be packed safely, and its seeds run one after another
    pack: Callable[[DictConfig, int, int], nn.Module] | None = _per_channel_pack


REGISTRY: dict[str, NormSpec] = {
    "none": NormSpec(build=lambda cfg, c: nn.Identity()),
    "bn": NormSpec(
        build=_batch_norm,
        layer_types=(nn.modules.batchnorm._NormBase, MomentBatchNorm2d),
        checks=_bn_checks,
        kernels="bn",
        autonn_factors=BN_AUTONN_FACTORS,
    ),
    "brn": NormSpec(
        build=_batch_renorm,
        layer_types=(BatchRenorm2d,),
        checks=_brn_checks,
        schedule=RenormSchedule,
        kernels="bn",
        autonn_factors=BN_AUTONN_FACTORS,
    ),
    "gn": NormSpec(_group_norm(_gn_groups), (nn.GroupNorm,), _gn_checks, kernels="gn",
                   pack=_grouped_pack(_gn_groups)),
    "ln": NormSpec(_group_norm(lambda cfg, c: 1), (nn.GroupNorm,), _eps_checks, kernels="gn",
                   pack=_grouped_pack(lambda cfg, c: 1)),
    "in": NormSpec(_group_norm(lambda cfg, c: c), (nn.GroupNorm,), _eps_checks, kernels="gn",
                   pack=_grouped_pack(lambda cfg, c: c)),
    "frn": NormSpec(_frn, (layers.FilterResponseNorm2d, layers.TLU), _frn_checks, kernels="elementwise",
                    activation=_frn_activation, autonn_factors=PLAIN_AUTONN_FACTORS, pack=_frn_pack),
    "ws_gn": NormSpec(_group_norm(_gn_groups), (nn.GroupNorm,), _ws_gn_checks, kernels="gn",
                      conv_weight=lambda cfg: layers.StandardizedWeight(cfg.ws_eps),
                      pack=_grouped_pack(_gn_groups)),
    "evonorm_s0": NormSpec(lambda cfg, c: layers.EvoNormS0(c, _gn_groups(cfg, c), eps=cfg.eps),
                           (layers.EvoNormS0,), _gn_checks, kernels="elementwise",
                           activation=lambda cfg, c: nn.Identity(), autonn_factors=PLAIN_AUTONN_FACTORS,
                           pack=_evonorm_pack),
    "custom": NormSpec(lambda cfg, c: layers.build_custom(cfg.target, cfg.kwargs, c), (layers.CustomNorm,),
                       _custom_checks, kernels="custom", autonn_factors=PLAIN_AUTONN_FACTORS, pack=None),
}
NORM_NAMES = tuple(REGISTRY)


def create_norm_layer(cfg: DictConfig, num_channels: int) -> nn.Module:
    """The normalization layer named by ``cfg.name`` for ``num_channels`` channels."""
    return REGISTRY[cfg.name].build(cfg, num_channels)


def create_packed_layer(cfg: DictConfig, num_channels: int, seeds: int) -> nn.Module:
    """The layer for ``num_channels`` channels of ``seeds`` packed seeds (``num_channels / seeds`` each)."""
    return REGISTRY[cfg.name].pack(cfg, num_channels // seeds, seeds)


def build_model(cfg: DictConfig, seeds: int = 1) -> LeNet:
    """The writeup's LeNet with the norm of ``cfg`` (conf/norm) after its first three convolutions, and the
    weight function and activation the norm asks for; ``seeds`` > 1: that many seeds packed side by side."""
    layer = (partial(create_norm_layer, cfg) if seeds == 1 else
             partial(create_packed_layer, cfg, seeds=seeds))
    return LeNet(layer, conv_weight=conv_weight(cfg), activation=activation(cfg), seeds=seeds)


def can_pack(cfg: DictConfig) -> bool:
    """Whether seeds of this norm can train packed in one network (else they run one after another)."""
    return REGISTRY[cfg.name].pack is not None


def is_normalized(cfg: DictConfig) -> bool:
    return cfg.name != "none"


def kernels(cfg: DictConfig) -> str:
    """The CPU kernel family of the norm (none, bn or gn), by which CPU settings are chosen."""
    return REGISTRY[cfg.name].kernels


def schedule(cfg: DictConfig) -> RenormSchedule | None:
    """The norm's schedule, or None where it has none."""
    make = REGISTRY[cfg.name].schedule
    return None if make is None else make(cfg)


def conv_weight(cfg: DictConfig) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The function the LeNet's convolutions apply to their weights for this norm, or None."""
    make = REGISTRY[cfg.name].conv_weight
    return None if make is None else make(cfg)


def activation(cfg: DictConfig) -> Callable[[int], nn.Module] | None:
    """The layer in place of the LeNet's ReLU for this norm (by channel count), or None: the ReLU."""
    make = REGISTRY[cfg.name].activation
    return None if make is None else partial(make, cfg)


def norm_parameters(model: nn.Module) -> set[nn.Parameter]:
    """Scale and shift of every normalization layer (these get no weight decay)."""
    types = tuple(t for spec in REGISTRY.values() for t in spec.layer_types)
    return {p for m in model.modules() if isinstance(m, types) for p in m.parameters(recurse=False)}


def autonn_factors(model: nn.Module, cfg: DictConfig) -> dict[nn.Parameter, tuple[float, float]]:
    """Each parameter of the model's normalization layers with its (lr, weight-decay) factors as autonn
    declares them for this norm."""
    spec = REGISTRY[cfg.name]
    types = tuple(t for s in REGISTRY.values() for t in s.layer_types)
    return {p: spec.autonn_factors[name] for m in model.modules() if isinstance(m, types)
            for name, p in m.named_parameters(recurse=False)}


def validate(cfg: DictConfig, channel_counts: Sequence[int]) -> list[str]:
    """Problems with ``conf/norm`` values, one line each, empty when all is well."""
    if cfg.name not in REGISTRY:
        return validation.choice("norm.name", cfg.name, NORM_NAMES, unknown=True)
    # norm.moments is in the YAML of the norms with moving statistics; a preset may set it for every norm
    moments = validation.choice("norm.moments", cfg.moments, MOMENTS) if "moments" in cfg else []
    return REGISTRY[cfg.name].checks(cfg, channel_counts) + moments
