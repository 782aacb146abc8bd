"""The writeup's LeNet with a normalization layer after each of the first three convolutions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NormLayer = Callable[[int], nn.Module]  # channel count -> layer
WeightFunction = Callable[[Tensor], Tensor]  # a convolution's weight -> the weight it convolves with


def relu(num_channels: int) -> nn.Module:
    return nn.ReLU(inplace=True)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that convolves with ``weight_fn(weight)`` where a weight function is given, computed on
    every call with the gradient through it (e.g. weight standardisation); without one, ``nn.Conv2d``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 weight_fn: WeightFunction | None = None, groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, groups=groups)
        self.weight_fn = weight_fn

    def conv_weight(self) -> Tensor:
        return self.weight if self.weight_fn is None else self.weight_fn(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.conv_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.weight_fn is None else f", weight_fn={self.weight_fn!r}")


class WholeInputConv2d(Conv2d):
    """A convolution whose kernel covers its whole input (here 4x4 on 4x4): a single output position, so a
    single matrix product. PyTorch's native CPU convolution (used up to batch size 8) handles it example by
    example, re-writing the whole 1.6 MB weight gradient for each: 1.2-1.7x slower at batch sizes 1-4
    (measured). Packed seeds (groups > 1) take one product per seed in one ``baddbmm``, the weight on the
    left: the grouped convolution computes each seed's weight gradient apart and then copies them into one
    tensor (``cat``), 1.3-2.1x slower at batch sizes 1-4 (measured, forward and backward). Other layouts
    (channels-last for oneDNN) take the ordinary convolution."""

    def forward(self, x: Tensor) -> Tensor:
        weight = self.conv_weight()
        if not (x.shape[-2:] == self.kernel_size and x.is_contiguous() and weight.is_contiguous()):
            return self._conv_forward(x, weight, self.bias)
        if self.groups == 1:
            return F.linear(x.flatten(1), weight.flatten(1), self.bias)[:, :, None, None]
        g, n = self.groups, x.shape[0]
        per_seed = weight.view(g, weight.shape[0] // g, -1)  # (seeds, out, in * 4 * 4): seed-major channels
        inputs = x.view(n, g, -1).permute(1, 2, 0)  # (seeds, in * 4 * 4, batch)
        out = (torch.bmm(per_seed, inputs) if self.bias is None
               else torch.baddbmm(self.bias.view(g, -1, 1), per_seed, inputs))  # (seeds, out, batch)
        return out.permute(2, 0, 1).reshape(n, -1, 1, 1)


class LeNet(nn.Module):
    """conv5x5(20)-norm-pool-conv5x5(50)-norm-pool-conv4x4(500)-norm-relu-conv1x1(10) on 28x28 digits.

    As in mcnGroupNorm's ``mnist_feat_norm.m``: no ReLU after the first two convolutions, conv weights drawn
    from N(0, 0.01^2) and biases set to zero. What a norm may ask of the network: ``conv_weight``, a function
    the three convolutions before the norm layers apply to their weights on every call (not the 1x1
    classifier), and ``activation``, the layer in place of the ReLU, by channel count (for a norm layer that
    brings its own nonlinearity).

    ``seeds`` > 1 packs that many LeNets side by side (as in Packed-Ensembles): seed s's digits are input
    channel s, every convolution has ``groups=seeds``, and each layer's channels are seed-major (seed s
    owns channels s*C to (s+1)*C - 1), so ``norm_layer`` and ``activation`` get seeds * C channels and must
    never mix two seeds. The output is (batch, seeds * classes).
    """

    CHANNELS = (20, 50, 500)

    def __init__(self, norm_layer: NormLayer, num_classes: int = 10, init_std: float = 0.01, *,
                 conv_weight: WeightFunction | None = None, activation: NormLayer | None = None,
                 seeds: int = 1) -> None:
        super().__init__()
        c1, c2, c3 = (c * seeds for c in self.CHANNELS)
        activation, g = activation or relu, seeds
        self.seeds = seeds
        self.features = nn.Sequential(
            Conv2d(g, c1, 5, conv_weight, g), norm_layer(c1), nn.MaxPool2d(2),
            Conv2d(c1, c2, 5, conv_weight, g), norm_layer(c2), nn.MaxPool2d(2),
            WholeInputConv2d(c2, c3, 4, conv_weight, g), norm_layer(c3), activation(c3),
            nn.Conv2d(c3, num_classes * g, 1, groups=g),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=init_std)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).flatten(1)


# ---------------------------------------------------------------- seeds packed in one network
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
