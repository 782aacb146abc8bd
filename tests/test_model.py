"""The writeup's LeNet: shapes, layer order and initialisation."""

from __future__ import annotations

import torch
from torch import nn

from normexp.model import Conv2d, LeNet, WholeInputConv2d
from normexp.norm import BatchRenorm2d


def test_lenet_maps_digits_to_ten_scores_through_the_writeups_layers():
    model = LeNet(lambda c: BatchRenorm2d(c))
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    kinds = [type(m) for m in model.features]
    assert kinds == [Conv2d, BatchRenorm2d, nn.MaxPool2d, Conv2d, BatchRenorm2d, nn.MaxPool2d,
                     WholeInputConv2d, BatchRenorm2d, nn.ReLU, nn.Conv2d]
    assert all(m.weight_fn is None for m in model.features if isinstance(m, Conv2d))
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (1, 20, (5, 5)), (20, 50, (5, 5)), (50, 500, (4, 4)), (500, 10, (1, 1))
    ]


def test_lenet_initialisation_is_normal_0_01_with_zero_bias():
    torch.manual_seed(0)
    model = LeNet(lambda c: nn.Identity())
    big = model.features[6]  # 50x500x4x4 = 400k weights: the sample std is close to 0.01
    assert abs(big.weight.std().item() - 0.01) < 2e-4 and abs(big.weight.mean().item()) < 1e-4
    assert all(
        torch.equal(m.bias, torch.zeros_like(m.bias)) for m in model.modules() if isinstance(m, nn.Conv2d)
    )


def test_lenet_without_norm_is_a_plain_convnet():
    model = LeNet(lambda c: nn.Identity())
    assert sum(isinstance(m, nn.Identity) for m in model.features) == 3
    assert (
        sum(p.numel() for p in model.parameters())
        == 20 * 25 + 20 + 50 * 20 * 25 + 50 + 500 * 50 * 16 + 500 + 5010
    )


def test_whole_input_conv_is_the_convolution_in_output_and_gradients_in_both_layouts():
    torch.manual_seed(0)
    conv = WholeInputConv2d(6, 7, 4).double()
    for layout in (torch.contiguous_format, torch.channels_last):
        conv = conv.to(memory_format=layout)
        x = torch.randn(3, 6, 4, 4, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
        upstream = torch.randn(3, 7, 1, 1, dtype=torch.float64)
        conv.zero_grad()
        y = conv(x)
        grads = torch.autograd.grad((y * upstream).sum(), (x, conv.weight, conv.bias))
        w, b = conv.weight.detach().requires_grad_(), conv.bias.detach().requires_grad_()
        x_ref = x.detach().requires_grad_()
        y_ref = torch.nn.functional.conv2d(x_ref, w, b)
        grads_ref = torch.autograd.grad((y_ref * upstream).sum(), (x_ref, w, b))
        torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
        for ours, theirs in zip(grads, grads_ref, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    # an input larger than the kernel is an ordinary convolution
    assert conv(torch.randn(2, 6, 5, 5, dtype=torch.float64)).shape == (2, 7, 2, 2)


def test_a_norm_can_ask_for_a_weight_function_and_another_activation_without_the_lenet_knowing_it():
    calls = []

    def halve(weight):
        calls.append(weight.shape)
        return weight / 2

    model = LeNet(lambda c: nn.Identity(), conv_weight=halve, activation=lambda c: nn.Tanh())
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [getattr(c, "weight_fn", None) for c in convs] == [halve, halve, halve, None]  # not the classifier
    assert type(model.features[8]) is nn.Tanh
    x = torch.randn(2, 1, 28, 28)
    plain = LeNet(lambda c: nn.Identity(), activation=lambda c: nn.Tanh())
    plain.load_state_dict(model.state_dict())  # the same parameters: the weight function adds none
    with torch.no_grad():
        for conv in [m for m in plain.features if isinstance(m, nn.Conv2d)][:3]:
            conv.weight.div_(2)
    torch.testing.assert_close(model(x), plain(x))
    assert len(calls) == 3  # once per convolution and call
