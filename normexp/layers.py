"""Normalization layers that use no batch statistics: PyTorch's GroupNorm, also on one value per group;
Filter Response Normalization with its thresholded linear unit (Singh & Krishnan 2020), EvoNorm-S0 (Liu et
al. 2020), weight standardisation of convolution weights (Qiao et al. 2019), and a layer of the user's own by
import path.

Each is the paper's formula written out in plain torch operations, so that it runs in float64 as in float32
(the tests check it in float64 against the formulas). ``normexp.norm``'s registry builds them from the config.
"""

from __future__ import annotations

import abc
import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from hydra.utils import get_object, instantiate
from torch import Tensor, nn

LEARNED_EPS_START = 1e-4  # where FRN's learned eps_l starts: |eps_l| has no gradient at exactly 0


def _per_channel(p: Tensor) -> Tensor:
    return p.view(1, -1, 1, 1)


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that also trains on one value per group, where PyTorch refuses (instance norm on the
    LeNet's 1x1 map at batch size 1): the math runs as written, x - mean = 0, and the output is the shift.
    Otherwise the same kernel as ``nn.GroupNorm``."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.group_norm(x, self.num_groups, self.weight, self.bias, self.eps,
                                torch.backends.cudnn.enabled)


class TLU(nn.Module):
    """Thresholded linear unit: z = max(y, tau), a learned tau per channel, starting at 0 (a ReLU)."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.tau = nn.Parameter(torch.zeros(num_channels))

    def forward(self, y: Tensor) -> Tensor:
        return torch.maximum(y, _per_channel(self.tau))

    def extra_repr(self) -> str:
        return str(self.num_channels)


class FilterResponseNorm2d(nn.Module):
    """FRN for (N, C, H, W) input: nu^2 = mean of x^2 over H, W for each sample and channel,
    y = gamma * x / sqrt(nu^2 + eps) + beta, then, with ``tlu``, z = max(y, tau).

    On a 1x1 map nu^2 = x^2, so x / sqrt(x^2 + eps) is about sign(x) and its gradient nearly vanishes; the
    paper learns eps there. With ``learn_eps`` the layer uses eps + |eps_l|, eps_l a learned scalar starting
    at ``LEARNED_EPS_START``. gamma starts at 1, beta and tau at 0. ``seeds`` > 1: the channels of that
    many packed seeds (seed-major), each seed with its own learned eps."""

    def __init__(self, num_channels: int, eps: float = 1e-6, learn_eps: bool = False, tlu: bool = True,
                 seeds: int = 1) -> None:
        super().__init__()
        self.num_channels, self.eps, self.seeds = num_channels, eps, seeds
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.tau = nn.Parameter(torch.zeros(num_channels)) if tlu else None
        eps_shape = () if seeds == 1 else (seeds,)
        self.eps_l = nn.Parameter(torch.full(eps_shape, LEARNED_EPS_START)) if learn_eps else None

    def forward(self, x: Tensor) -> Tensor:
        nu2 = x.square().mean(dim=(2, 3), keepdim=True)
        eps = self.eps if self.eps_l is None else self.eps + self.eps_l.abs()
        if self.eps_l is not None and self.seeds > 1:
            eps = _per_channel(eps.repeat_interleave(self.num_channels // self.seeds))
        y = torch.addcmul(_per_channel(self.bias), x * torch.rsqrt(nu2 + eps), _per_channel(self.weight))
        return y if self.tau is None else torch.maximum(y, _per_channel(self.tau))

    def extra_repr(self) -> str:
        return (f"{self.num_channels}, eps={self.eps}, learn_eps={self.eps_l is not None}, "
                f"tlu={self.tau is not None}")


class EvoNormS0(nn.Module):
    """EvoNorm-S0 for (N, C, H, W) input: y = x * sigmoid(v * x) / group_std(x) * gamma + beta, where
    group_std is sqrt(biased variance + eps) over each sample's group of C / groups channels and all
    positions, as in GN; v and gamma start at 1, beta at 0."""

    def __init__(self, num_channels: int, groups: int, eps: float = 1e-5) -> None:
        super().__init__()
        if num_channels % groups:
            raise ValueError(f"groups={groups} does not divide num_channels={num_channels}")
        self.num_channels, self.groups, self.eps = num_channels, groups, eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.v = nn.Parameter(torch.ones(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        grouped = x.reshape(n, self.groups, -1)
        var = grouped.var(dim=2, unbiased=False, keepdim=True)
        inv_std = torch.rsqrt(var + self.eps).expand(n, self.groups, c // self.groups * h * w)
        gated = x * torch.sigmoid(x * _per_channel(self.v)) * inv_std.reshape(n, c, h, w)
        return torch.addcmul(_per_channel(self.bias), gated, _per_channel(self.weight))

    def extra_repr(self) -> str:
        return f"{self.num_channels}, groups={self.groups}, eps={self.eps}"


class StandardizedWeight:
    """Weight standardisation (Qiao et al. 2019, eq. 5-6): each output filter of a convolution weight minus
    its mean over the filter's fan-in (input channels x kernel), divided by sqrt(its variance there + eps).
    Applied to the weight in every forward pass; the gradient flows through it."""

    def __init__(self, eps: float) -> None:
        self.eps = eps

    def __call__(self, weight: Tensor) -> Tensor:
        var, mean = torch.var_mean(weight, dim=tuple(range(1, weight.dim())), unbiased=False, keepdim=True)
        return (weight - mean) * torch.rsqrt(var + self.eps)

    def __repr__(self) -> str:
        return f"StandardizedWeight(eps={self.eps})"


# ---------------------------------------------------------------- a layer of the user's own


class CustomNorm(abc.ABC):  # noqa: B024 (no abstract methods: a virtual base class only)
    """The classes of the layers built for ``norm=custom``, registered as they are built: what
    ``isinstance(module, CustomNorm)`` finds, so that their parameters are treated as a norm layer's."""


class NotAModule(TypeError):
    """A custom norm's target that built something other than a torch.nn.Module."""


def build_custom(target: str, kwargs: Mapping[str, Any], num_channels: int) -> nn.Module:
    """``target(num_channels=num_channels, **kwargs)`` through Hydra's instantiate (``target`` an import path
    to a torch.nn.Module class or to a function returning a module)."""
    layer = instantiate({"_target_": target, **kwargs}, num_channels=num_channels, _convert_="all")
    if not isinstance(layer, nn.Module):
        raise NotAModule(f"built a {type(layer).__name__}, not a torch.nn.Module")
    CustomNorm.register(type(layer))
    return layer


def _reason(err: BaseException, root: bool = True) -> str:
    """``err`` on one line; with ``root``, its root cause (what Hydra's instantiate wraps)."""
    while root and err.__cause__ is not None:
        err = err.__cause__
    text = " ".join(str(err).split()) or "no message"
    return f"{type(err).__name__}: {text[:300]}"


def _quietly_located(target: str) -> Any:
    """``hydra.utils.get_object(target)``, without the error it logs: the caller says it in one line."""
    hydra_log = logging.getLogger("hydra.utils")
    was = hydra_log.disabled
    hydra_log.disabled = True
    try:
        return get_object(target)
    finally:
        hydra_log.disabled = was


def custom_problems(target: Any, kwargs: Any, channel_counts: Sequence[int]) -> list[str]:
    """What is wrong with ``norm.target`` and ``norm.kwargs``, in one line: the import fails, the layer does
    not build for one of ``channel_counts``, or its forward pass on a tiny input does not keep the shape."""
    key = f"norm.target={target!r}"
    if not isinstance(target, str) or "." not in target:
        return [f"{key}: must be the import path of a torch.nn.Module class, e.g. mypkg.layers.MyNorm"]
    if not isinstance(kwargs, Mapping):
        return [f"norm.kwargs={kwargs!r}: must be a mapping of keyword arguments, e.g. +norm.kwargs.eps=1e-5"]
    if "num_channels" in kwargs:
        return ["norm.kwargs.num_channels: normexp passes each layer's channel count itself; leave it out"]
    try:
        found = _quietly_located(target)
    except Exception as err:  # noqa: BLE001 (whatever importing the user's module raises)
        return [f"{key}: does not import ({_reason(err, root=False)})"]
    generator = torch.Generator().manual_seed(0)
    for c in channel_counts:
        call = f"{target}(num_channels={c}, **norm.kwargs)"
        try:
            inspect.signature(found).bind(num_channels=c, **kwargs)
        except TypeError as err:
            return [f"{key}: cannot be called as {call}: it must accept num_channels ({_reason(err)})"]
        except ValueError:
            pass  # no signature to read (a builtin): building it tells
        try:
            layer = build_custom(target, kwargs, c)
        except NotAModule as err:
            return [f"{key}: {call} {err}"]
        except Exception as err:  # noqa: BLE001 (whatever the user's layer raises)
            where = f"{target}.__init__" if isinstance(found, type) else target
            return [f"{key}: {call} fails: {where} raised {_reason(err)}"]
        x = torch.randn(2, c, 3, 3, generator=generator)
        try:
            with torch.no_grad():
                y = layer.train()(x)
        except Exception as err:  # noqa: BLE001
            return [f"{key}: its forward pass on a {tuple(x.shape)} input fails ({_reason(err)})"]
        if not isinstance(y, Tensor) or y.shape != x.shape:
            got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            return [f"{key}: its forward pass on a {tuple(x.shape)} input gives {got}, not the same shape"]
    return []
