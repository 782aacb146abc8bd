"""The writeup's LeNet with a normalization layer after each of the first three convolutions."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

NormLayer = Callable[[int], nn.Module]


class WholeInputConv2d(nn.Conv2d):
    """A convolution whose kernel covers its whole input (here 4x4 on 4x4): a single output position, so a
    single matrix product. PyTorch's native CPU convolution (used up to batch size 8) handles it example by
    example, re-writing the whole 1.6 MB weight gradient for each: 1.2-1.7x slower at batch sizes 1-4
    (measured). Other layouts (channels-last for oneDNN) take the ordinary convolution."""

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] == self.kernel_size and x.is_contiguous() and self.weight.is_contiguous():
            return F.linear(x.flatten(1), self.weight.flatten(1), self.bias)[:, :, None, None]
        return super().forward(x)


class LeNet(nn.Module):
    """conv5x5(20)-norm-pool-conv5x5(50)-norm-pool-conv4x4(500)-norm-relu-conv1x1(10) on 28x28 digits.

    As in mcnGroupNorm's ``mnist_feat_norm.m``: no ReLU after the first two convolutions, conv weights drawn
    from N(0, 0.01^2) and biases set to zero.
    """

    CHANNELS = (20, 50, 500)

    def __init__(self, norm_layer: NormLayer, num_classes: int = 10, init_std: float = 0.01) -> None:
        super().__init__()
        c1, c2, c3 = self.CHANNELS
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 5), norm_layer(c1), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5), norm_layer(c2), nn.MaxPool2d(2),
            WholeInputConv2d(c2, c3, 4), norm_layer(c3), nn.ReLU(inplace=True),
            nn.Conv2d(c3, num_classes, 1),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=init_std)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).flatten(1)
