"""The writeup's learning-rate rule and SGD set-up."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from normexp import optim
from normexp.model import LeNet
from normexp.norm import autonn_factors, create_norm_layer, norm_parameters


def sgd_cfg(**extra):
    base = {"name": "sgd", "lr": "auto", "auto_lr": {"with_norm": 0.01, "without_norm": 0.001},
            "scaling": "linear", "ref_batch_size": 256, "momentum": 0.9, "weight_decay": 5e-4,
            "factors": "none"}
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


def lenet(name: str) -> LeNet:
    cfg = OmegaConf.create({"name": name, "eps": 1e-4, "momentum": 0.1, "alpha": 0.01, "groups": 2})
    return LeNet(lambda c: create_norm_layer(cfg, c))


def effective(opt: torch.optim.SGD) -> dict[str, tuple[float, float]]:
    """Each parameter (by id) -> (lr, weight decay) of its group."""
    return {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}


# (lr, weight decay) per kind of parameter: conv weight, conv bias, norm scale, norm shift (lr 0.01, wd 5e-4)
PROTOCOLS = {
    ("none", "bn"): [(0.01, 5e-4), (0.01, 5e-4), (0.01, 0.0), (0.01, 0.0)],
    ("none", "gn"): [(0.01, 5e-4), (0.01, 5e-4), (0.01, 0.0), (0.01, 0.0)],
    ("autonn", "bn"): [(0.01, 5e-4), (0.01, 0.0), (0.02, 0.0), (0.01, 0.0)],
    ("autonn", "brn"): [(0.01, 5e-4), (0.01, 0.0), (0.02, 0.0), (0.01, 0.0)],
    ("autonn", "gn"): [(0.01, 5e-4), (0.01, 0.0), (0.01, 5e-4), (0.01, 5e-4)],
    ("autonn", "none"): [(0.01, 5e-4), (0.01, 0.0), None, None],
}


@pytest.mark.parametrize(("factors", "name"), PROTOCOLS)
def test_each_parameter_gets_its_protocols_lr_and_weight_decay(factors, name):
    model = lenet(name)
    opt = optim.build(model, sgd_cfg(factors=factors), 0.01, autonn_factors(model, OmegaConf.create(
        {"name": name})), fused=False)
    found = effective(opt)
    conv_w, conv_b, scale, shift = PROTOCOLS[(factors, name)]
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            assert found[id(module.weight)] == pytest.approx(conv_w) and found[id(module.bias)] == conv_b
        elif name != "none" and hasattr(module, "weight") and module.weight is not None:
            assert found[id(module.weight)] == pytest.approx(scale)
            assert found[id(module.bias)] == pytest.approx(shift)
    assert len(found) == len(list(model.parameters()))


def test_one_autonn_sgd_step_is_the_hand_computation():
    """m = 0.9 m - (g + wd_factor * wd * w); w = w + lr * lr_factor * m, per parameter (autonn's update)."""
    torch.manual_seed(0)
    model = lenet("bn").double()
    opt = optim.build(model, sgd_cfg(factors="autonn"), 0.01, autonn_factors(model, OmegaConf.create(
        {"name": "bn"})), fused=False)
    factors = {id(model.features[0].weight): (1, 1), id(model.features[0].bias): (1, 0),
               id(model.features[1].weight): (2, 0), id(model.features[1].bias): (1, 0)}
    momentum = {k: 0.0 for k in factors}
    for _ in range(2):
        before = {id(p): p.detach().clone() for p in model.parameters()}
        opt.zero_grad()
        model(torch.randn(4, 1, 28, 28, dtype=torch.float64)).square().mean().backward()
        grads = {id(p): p.grad.clone() for p in model.parameters()}
        opt.step()
        for p in (model.features[0].weight, model.features[0].bias, model.features[1].weight,
                  model.features[1].bias):
            lr_f, wd_f = factors[id(p)]
            momentum[id(p)] = 0.9 * momentum[id(p)] - (grads[id(p)] + wd_f * 5e-4 * before[id(p)])
            torch.testing.assert_close(p.detach(), before[id(p)] + 0.01 * lr_f * momentum[id(p)],
                                       rtol=1e-12, atol=1e-15)


def test_momentum_in_another_layout_is_relaid_so_the_fused_step_stays_right():
    torch.manual_seed(0)
    weight = torch.randn(50, 20, 5, 5)
    grad, momentum = torch.randn_like(weight), torch.randn_like(weight)
    results = []
    for fused, layout in ((False, torch.contiguous_format), (True, torch.channels_last)):
        param = weight.clone().to(memory_format=layout).requires_grad_()
        param.grad = grad.clone().to(memory_format=layout)
        optimizer = torch.optim.SGD([param], lr=0.1, momentum=0.9, fused=fused or None)
        optimizer.state[param]["momentum_buffer"] = momentum.clone()  # NCHW, as from an NCHW checkpoint
        optim.match_state_layout(optimizer)
        assert optimizer.state[param]["momentum_buffer"].stride() == param.stride()
        optimizer.step()
        results.append(param.detach().contiguous())
    torch.testing.assert_close(results[0], results[1])
