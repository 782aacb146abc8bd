"""The writeup's learning-rate rule and SGD set-up."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from normexp import optim
from normexp.model import LeNet
from normexp.norm import create_norm_layer, norm_parameters


def sgd_cfg(**extra):
    base = {"name": "sgd", "lr": "auto", "auto_lr": {"with_norm": 0.01, "without_norm": 0.001},
            "scaling": "linear", "ref_batch_size": 256, "momentum": 0.9, "weight_decay": 5e-4}
    return OmegaConf.create({**base, **extra})


@pytest.mark.parametrize(
    ("batch_size", "normalized", "expected"),
    [(256, True, 0.01), (256, False, 0.001), (4, True, 0.01 * 4 / 256), (1, False, 0.001 / 256)],
)
def test_auto_learning_rate_is_the_writeups_linearly_scaled(batch_size, normalized, expected):
    assert optim.learning_rate(sgd_cfg(), batch_size, normalized) == pytest.approx(expected, rel=1e-12)


def test_other_scalings_and_an_explicit_base_rate():
    assert optim.learning_rate(sgd_cfg(scaling="sqrt", lr=0.1), 64, True) == pytest.approx(
        0.1 * math.sqrt(0.25)
    )
    assert optim.learning_rate(sgd_cfg(scaling="none", lr=0.1), 1, False) == 0.1


@pytest.mark.parametrize("fused", [False, True])
def test_norm_scale_and_shift_get_no_weight_decay(fused):
    model = LeNet(lambda c: create_norm_layer(OmegaConf.create({"name": "gn", "eps": 1e-4, "groups": 2}), c))
    opt = optim.build(model, sgd_cfg(), 0.01, norm_parameters(model), fused=fused)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 5e-4 and plain["weight_decay"] == 0.0
    assert len(plain["params"]) == 6 and len(decayed["params"]) == 8
    assert all(g["momentum"] == 0.9 and g["lr"] == 0.01 for g in opt.param_groups)
    # one step moves a norm scale by lr * grad only (no decay term)
    scale = model.features[1].weight
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    before, grad = scale.detach().clone(), scale.grad.clone()
    opt.step()
    torch.testing.assert_close(scale.detach(), before - 0.01 * grad)


@pytest.mark.parametrize(
    ("extra", "line"),
    [
        ({"lr": 0}, "optim.lr=0: must be a number > 0 or 'auto'"),
        ({"lr": -0.1}, "optim.lr=-0.1: must be a number > 0 or 'auto'"),
        ({"momentum": 1.0}, "optim.momentum=1.0: must be a number in [0, 1)"),
        ({"scaling": "cubic"}, "optim.scaling='cubic': allowed: linear, sqrt, none"),
    ],
)
def test_validate(extra, line):
    assert optim.validate(sgd_cfg(**extra)) == [line]
    assert optim.validate(sgd_cfg()) == []
