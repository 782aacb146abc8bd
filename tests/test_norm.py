"""Every norm layer against a reference computation in float64."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from normexp.layers import TLU, EvoNormS0, FilterResponseNorm2d, GroupNorm, StandardizedWeight
from normexp.model import LeNet, part_of
from normexp.norm import (
    NORM_NAMES,
    BatchNorm2d,
    BatchRenorm2d,
    MomentBatchNorm2d,
    RenormSchedule,
    activation,
    batch_norm_train,
    conv_weight,
    create_norm_layer,
    create_packed_layer,
    norm_parameters,
    renorm_limits,
    set_renorm_limits,
    validate,
)

EPS = 1e-4
CHANNELS = (20, 50, 500)


def norm_cfg(name: str, **extra):
    base = {
        "none": {},
        "bn": {"eps": EPS, "momentum": 0.1},
        "brn": {"eps": EPS, "alpha": 0.01, "r_max": 3.0, "d_max": 5.0,
                "schedule": {"unit": "epoch", "warmup": 5, "ramp": 5}},
        "gn": {"eps": EPS, "groups": 2},
        "ln": {"eps": EPS},
        "in": {"eps": EPS},
        "frn": {"eps": 1e-6, "learn_eps": True, "tlu": "relu"},
        "ws_gn": {"eps": EPS, "groups": 2, "ws_eps": 1e-6},
        "evonorm_s0": {"eps": 1e-5, "groups": 2},
        "custom": {"target": "torch.nn.GroupNorm", "kwargs": {"num_groups": 2}},
    }[name]
    return OmegaConf.create({"name": name, **base, **extra})


def brn64(channels: int, seed: int = 0) -> BatchRenorm2d:
    torch.manual_seed(seed)
    layer = BatchRenorm2d(channels, eps=EPS, alpha=0.01).double()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-0.5, 0.5)
    return layer


def reference_renorm(x, weight, bias, mu, sigma, r_max, d_max):
    """Ioffe 2017, Algorithm 1, written out directly."""
    dims = [0, *range(2, x.dim())]
    shape = (1, -1) + (1,) * (x.dim() - 2)
    mu_b = x.mean(dim=dims)
    sigma_b = (((x - mu_b.view(shape)) ** 2).mean(dim=dims) + EPS).sqrt()
    r = torch.clamp(sigma_b.detach() / sigma, 1 / r_max, r_max)
    d = torch.clamp((mu_b.detach() - mu) / sigma, -d_max, d_max)
    x_hat = (x - mu_b.view(shape)) / sigma_b.view(shape) * r.view(shape) + d.view(shape)
    return weight.view(shape) * x_hat + bias.view(shape), mu_b, sigma_b, r, d


@pytest.mark.parametrize("shape", [(8, 5), (6, 5, 4, 3)])
def test_brn_without_slack_is_batch_norm_in_output_and_gradients(shape):
    layer = brn64(shape[1])
    x = torch.randn(*shape, dtype=torch.float64) * 3 + 1
    x1 = x.clone().requires_grad_()
    y = layer(x1)
    upstream = torch.randn_like(y)
    (y * upstream).sum().backward()

    x2 = x.clone().requires_grad_()
    w2 = layer.weight.detach().clone().requires_grad_()
    b2 = layer.bias.detach().clone().requires_grad_()
    y_ref = F.batch_norm(x2, None, None, w2, b2, training=True, eps=EPS)
    (y_ref * upstream).sum().backward()

    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.weight.grad, w2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.bias.grad, b2.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "shape, layout",
    [((16, 4), None), ((4, 4, 3, 3), torch.contiguous_format), ((4, 4, 3, 3), torch.channels_last)],
    ids=["NC", "NCHW", "NHWC"],
)
def test_brn_clips_r_and_d_exactly_and_stops_their_gradient(shape, layout):
    layer = brn64(shape[1], seed=1)
    layer.set_limits(1.5, 0.25)
    mu = torch.tensor([0.0, 3.0, -3.0, 0.1], dtype=torch.float64)
    sigma = torch.tensor([1.0, 10.0, 0.1, 1.0], dtype=torch.float64)
    layer.running_mean.copy_(mu)
    layer.running_std.copy_(sigma)
    x = torch.randn(*shape, dtype=torch.float64) * 2
    x = (x if layout is None else x.contiguous(memory_format=layout)).requires_grad_()
    y = layer(x)
    upstream = torch.randn_like(y)
    (y * upstream).sum().backward()

    x_ref = x.detach().clone().requires_grad_()
    w_ref = layer.weight.detach().clone().requires_grad_()
    b_ref = layer.bias.detach().clone().requires_grad_()
    y_ref, _, _, r, d = reference_renorm(x_ref, w_ref, b_ref, mu, sigma, 1.5, 0.25)
    (y_ref * upstream).sum().backward()

    # the chosen statistics push both r and d onto their limits in some channels
    assert (r == 1.5).any() and (r == 1 / 1.5).any() and (d.abs() == 0.25).any()
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.weight.grad, w_ref.grad, rtol=1e-10, atol=1e-12)


def test_brn_moving_statistics_follow_the_mean_and_std_update():
    layer = brn64(3)
    layer.set_limits(3.0, 5.0)
    mu0 = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    sigma0 = torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64)
    layer.running_mean.copy_(mu0)
    layer.running_std.copy_(sigma0)
    x = torch.randn(10, 3, 2, 2, dtype=torch.float64) * 4 + 3
    y = layer(x)
    y_ref, mu_b, sigma_b, _, _ = reference_renorm(x, layer.weight, layer.bias, mu0, sigma0, 3.0, 5.0)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)  # r, d from the statistics before the update
    torch.testing.assert_close(layer.running_mean, mu0 + 0.01 * (mu_b - mu0), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(layer.running_std, sigma0 + 0.01 * (sigma_b - sigma0), rtol=1e-14, atol=1e-14)


def test_brn_starts_at_zero_mean_unit_std_and_evaluates_with_moving_stats():
    layer = brn64(4)
    assert torch.equal(layer.running_mean, torch.zeros(4, dtype=torch.float64))
    assert torch.equal(layer.running_std, torch.ones(4, dtype=torch.float64))
    layer.running_mean.copy_(torch.tensor([1.0, -2.0, 0.0, 0.5]))
    layer.running_std.copy_(torch.tensor([2.0, 0.5, 1.0, 3.0]))
    layer.eval()
    x = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    shape = (1, -1, 1, 1)
    expected = layer.weight.view(shape) * (x - layer.running_mean.view(shape)) / layer.running_std.view(
        shape
    ) + layer.bias.view(shape)
    before = layer.running_mean.clone()
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(layer.running_mean, before)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["NCHW", "NHWC"])
def test_batch_norm_train_matches_pytorch_in_output_gradients_and_running_stats(layout):
    torch.manual_seed(0)
    x = (torch.randn(6, 5, 4, 3, dtype=torch.float64) * 3 + 2).contiguous(memory_format=layout)
    weight, bias = torch.rand(5, dtype=torch.float64) + 0.5, torch.randn(5, dtype=torch.float64)
    upstream = torch.randn(6, 5, 4, 3, dtype=torch.float64).contiguous(memory_format=layout)
    results = []
    for fn in (batch_norm_train, lambda x, w, b, rm, rv, m, eps: F.batch_norm(x, rm, rv, w, b, True, m, eps)):
        leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
        running = [torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64)]
        y = fn(*leaves, *running, 0.1, EPS)
        (y * upstream).sum().backward()
        results.append([y, *(t.grad for t in leaves), *running])
    for ours, theirs in zip(*results, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    y, grad_x = results[0][:2]
    assert y.is_contiguous(memory_format=layout) and grad_x.is_contiguous(memory_format=layout)


def test_channels_last_batch_norm_backward_passes_gradcheck():
    torch.manual_seed(1)
    x = (torch.randn(3, 4, 5, 2, dtype=torch.float64) * 2 - 1).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.rand(4, dtype=torch.float64) + 0.5, torch.randn(4, dtype=torch.float64)
    inputs = tuple(t.requires_grad_() for t in (x, weight, bias))
    assert torch.autograd.gradcheck(lambda x, w, b: batch_norm_train(x, w, b, eps=EPS), inputs)
    # an upstream gradient in the other layout gives the same input gradient
    y = batch_norm_train(*inputs, eps=EPS)
    upstream = torch.randn(y.shape, dtype=torch.float64)
    (grad_nchw,) = torch.autograd.grad(y, x, upstream, retain_graph=True)
    (grad_nhwc,) = torch.autograd.grad(y, x, upstream.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(grad_nchw, grad_nhwc, rtol=0, atol=0)


def test_bn_layer_in_channels_last_matches_pytorch_batch_norm():
    torch.manual_seed(2)
    ours, theirs = BatchNorm2d(6, eps=EPS).double(), nn.BatchNorm2d(6, eps=EPS).double()
    for layer in (ours, theirs):
        with torch.no_grad():
            layer.weight.copy_(torch.linspace(0.5, 1.5, 6))
    for _ in range(2):
        x = torch.randn(4, 6, 3, 3, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
        upstream = torch.randn_like(x)
        for layer in (ours, theirs):
            layer.zero_grad()
            (layer(x) * upstream).sum().backward()
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ours.bias.grad, theirs.bias.grad, rtol=1e-10, atol=1e-12)
    for name, buffer in ours.named_buffers():
        torch.testing.assert_close(buffer, dict(theirs.named_buffers())[name], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layer", [BatchRenorm2d(7, eps=EPS), BatchNorm2d(7, eps=EPS)], ids=["brn", "bn"])
def test_batch_size_one_on_a_one_by_one_map_gives_no_nan(layer):
    if isinstance(layer, BatchRenorm2d):
        layer.set_limits(3.0, 5.0)
    x = torch.randn(1, 7, 1, 1, requires_grad=True)
    for _ in range(3):
        y = layer(x)
        y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(b).all() for b in layer.buffers())
    layer.eval()
    assert torch.isfinite(layer(torch.randn(2, 7, 1, 1))).all()


def test_bn_matches_pytorch_batch_norm_and_runs_the_math_at_one_value_per_channel():
    torch.manual_seed(0)
    ours, theirs = BatchNorm2d(6, eps=EPS).double(), nn.BatchNorm2d(6, eps=EPS).double()
    x = torch.randn(4, 6, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=1e-12, atol=1e-12)

    single = torch.randn(1, 6, 1, 1, dtype=torch.float64)
    mean_before, var_before = ours.running_mean.clone(), ours.running_var.clone()
    y = ours(single)
    # one value per channel: x - mu_B = 0, so the output is the shift; the moving variance gets 0
    torch.testing.assert_close(y, ours.bias.detach().view(1, -1, 1, 1).expand_as(y), rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.running_mean, 0.9 * mean_before + 0.1 * single.flatten())
    torch.testing.assert_close(ours.running_var, 0.9 * var_before)


def test_brn_state_dict_round_trip():
    layer = brn64(5)
    layer.set_limits(2.0, 1.0)
    for _ in range(3):
        layer(torch.randn(4, 5, 2, 2, dtype=torch.float64))
    state = layer.state_dict()
    assert set(state) == {"weight", "bias", "running_mean", "running_std"}
    copy = BatchRenorm2d(5, eps=EPS).double()
    copy.load_state_dict(state)
    x = torch.randn(3, 5, 2, 2, dtype=torch.float64)
    layer.eval(), copy.eval()
    torch.testing.assert_close(copy(x), layer(x), rtol=0, atol=0)


def test_gn_equals_a_hand_computation():
    torch.manual_seed(0)
    layer = create_norm_layer(norm_cfg("gn"), 20).double()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-1, 1)
    x = torch.randn(3, 20, 4, 4, dtype=torch.float64) * 2 + 1
    groups = x.view(3, 2, 10, 4, 4)
    mean = groups.mean(dim=(2, 3, 4), keepdim=True)
    var = ((groups - mean) ** 2).mean(dim=(2, 3, 4), keepdim=True)
    x_hat = ((groups - mean) / (var + EPS).sqrt()).view_as(x)
    expected = x_hat * layer.weight.view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_ln_and_in_are_layer_and_instance_norm():
    x = torch.randn(3, 50, 5, 5, dtype=torch.float64)
    ln = create_norm_layer(norm_cfg("ln"), 50).double()
    inorm = create_norm_layer(norm_cfg("in"), 50).double()
    torch.testing.assert_close(ln(x), F.layer_norm(x, x.shape[1:], eps=EPS), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(inorm(x), F.instance_norm(x, eps=EPS), rtol=1e-12, atol=1e-12)
    assert ln.num_groups == 1 and inorm.num_groups == 50


def test_factory_builds_each_name_and_only_norm_parameters_are_collected():
    kinds = {"none": nn.Identity, "bn": BatchNorm2d, "brn": BatchRenorm2d, "gn": GroupNorm, "ln": GroupNorm,
             "in": GroupNorm, "frn": FilterResponseNorm2d, "ws_gn": GroupNorm, "evonorm_s0": EvoNormS0,
             "custom": nn.GroupNorm}
    assert set(NORM_NAMES) == set(kinds)
    for name, kind in kinds.items():
        layer = create_norm_layer(norm_cfg(name), 20)
        assert type(layer) is kind
    assert create_norm_layer(norm_cfg("gn", groups="per_channel"), 50).num_groups == 50
    model = nn.Sequential(nn.Conv2d(1, 4, 3), create_norm_layer(norm_cfg("brn"), 4))
    assert norm_parameters(model) == {model[1].weight, model[1].bias}


def test_renorm_schedule_is_the_writeups():
    cfg = norm_cfg("brn")
    limits = [renorm_limits(cfg, epoch, step=0) for epoch in range(1, 13)]
    assert limits[:5] == [(1.0, 0.0)] * 5
    assert [round(r, 10) for r, _ in limits[5:10]] == [1.4, 1.8, 2.2, 2.6, 3.0]
    assert [round(d, 10) for _, d in limits[5:10]] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert limits[10:] == [(3.0, 5.0)] * 2

    in_steps = norm_cfg("brn", schedule={"unit": "step", "warmup": 100, "ramp": 50})
    assert renorm_limits(in_steps, epoch=99, step=100) == (1.0, 0.0)
    assert renorm_limits(in_steps, epoch=1, step=125) == (2.0, 2.5)
    assert renorm_limits(in_steps, epoch=1, step=10_000) == (3.0, 5.0)


def test_set_renorm_limits_reaches_every_layer():
    model = nn.Sequential(BatchRenorm2d(3), nn.ReLU(), BatchRenorm2d(4))
    set_renorm_limits(model, 2.5, 1.5)
    assert [(m.r_max, m.d_max) for m in (model[0], model[2])] == [(2.5, 1.5), (2.5, 1.5)]


@pytest.mark.parametrize(
    ("cfg", "fragment"),
    [
        (norm_cfg("gn", groups=3), "norm.groups=3: must divide every layer's channel count (20, 50, 500)"),
        (norm_cfg("gn", groups=0), "norm.groups=0: must be a positive integer or 'per_channel'"),
        (norm_cfg("brn", r_max=0.5), "norm.r_max=0.5: must be a number >= 1"),
        (norm_cfg("brn", d_max=-1), "norm.d_max=-1: must be a number >= 0"),
        (norm_cfg("bn", momentum=2), "norm.momentum=2: must be a number in [0, 1]"),
        (OmegaConf.create({"name": "xn"}),
         "norm.name='xn': unknown; allowed: none, bn, brn, gn, ln, in, frn, ws_gn, evonorm_s0, custom"),
    ],
)
def test_validate_names_key_value_and_what_is_allowed(cfg, fragment):
    assert validate(cfg, CHANNELS) == [fragment]


def test_valid_configs_have_no_problems():
    for name in NORM_NAMES:
        assert validate(norm_cfg(name), CHANNELS) == []
    for groups in (1, 2, 5, 10, "per_channel"):
        assert validate(norm_cfg("gn", groups=groups), CHANNELS) == []


# ---------------------------------------------------------------- the writeup's code: MatConvNet's moments


@pytest.mark.parametrize("shape", [(8, 3, 5, 5), (2, 500, 1, 1), (1, 500, 1, 1)],
                         ids=["conv", "1x1-bs2", "1x1-bs1"])
def test_matconvnet_moments_follow_the_written_out_average_and_evaluate_with_sigma(shape):
    """Several steps against MatConvNet's vl_nnbnorm written out: output from the batch's mean and
    sigma = sqrt(biased var + eps); moments m <- 0.9 m + 0.1 batch value from 0; eval g (x - mu) / sigma
    + b."""
    torch.manual_seed(0)
    layer = create_norm_layer(norm_cfg("bn", moments="matconvnet"), shape[1]).double()
    assert isinstance(layer, MomentBatchNorm2d)
    assert layer.running_mean.abs().sum() == 0 and layer.running_std.abs().sum() == 0
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-0.5, 0.5)
    g, b = layer.weight.detach().view(1, -1, 1, 1), layer.bias.detach().view(1, -1, 1, 1)
    mu, sigma = torch.zeros(shape[1], dtype=torch.float64), torch.zeros(shape[1], dtype=torch.float64)
    for _ in range(4):
        x = torch.randn(shape, dtype=torch.float64) * 3 + 1
        mu_b = x.mean(dim=(0, 2, 3))
        sigma_b = (((x - mu_b.view(1, -1, 1, 1)) ** 2).mean(dim=(0, 2, 3)) + EPS).sqrt()
        expected = g * (x - mu_b.view(1, -1, 1, 1)) / sigma_b.view(1, -1, 1, 1) + b
        torch.testing.assert_close(layer.train()(x), expected, rtol=1e-10, atol=1e-12)
        mu, sigma = 0.9 * mu + 0.1 * mu_b, 0.9 * sigma + 0.1 * sigma_b
        torch.testing.assert_close(layer.running_mean, mu, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(layer.running_std, sigma, rtol=1e-12, atol=1e-14)
    x = torch.randn(shape, dtype=torch.float64)
    expected = g * (x - mu.view(1, -1, 1, 1)) / sigma.view(1, -1, 1, 1) + b
    torch.testing.assert_close(layer.eval()(x), expected, rtol=1e-10, atol=1e-12)


def test_matconvnet_brn_starts_its_moments_at_zero_and_clips_its_first_step():
    layer = create_norm_layer(norm_cfg("brn", moments="matconvnet"), 4).double()
    assert layer.running_mean.abs().sum() == 0 and layer.running_std.abs().sum() == 0
    assert create_norm_layer(norm_cfg("brn"), 4).running_std.tolist() == [1.0] * 4
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        x[:, 0] -= x[:, 0].mean()  # a batch mean of exactly 0 over a moving std of 0: d = 0/0
    y = layer.train()(x)  # (r_max, d_max) = (1, 0): batch norm
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, F.batch_norm(x, None, None, training=True, eps=EPS), rtol=1e-10, atol=1e-12)


def test_matconvnet_schedule_counts_epochs_from_the_batch_holding_image_one():
    """The epoch count goes up at the batch that holds training image index 0, so limits change mid-epoch."""
    cfg = norm_cfg("brn", moments="matconvnet", schedule={"unit": "epoch", "warmup": 1, "ramp": 1})
    schedule = RenormSchedule(cfg)
    assert schedule.per_step and not RenormSchedule(norm_cfg("brn")).per_step
    order = [torch.tensor([5, 3]), torch.tensor([2, 0]), torch.tensor([1, 4])]  # image 0 in batch 2 of 3
    schedule.begin_epoch(first_step=4, batches=order)  # epoch 2 starts at step 4
    assert schedule.first_image_step == 5
    assert schedule.values(2, 4) == {"r_max": 1.0, "d_max": 0.0}  # still epoch 1 of the count
    assert schedule.values(2, 5) == {"r_max": 3.0, "d_max": 5.0}  # from image 0's batch on: epoch 2
    assert schedule.values(2, 6) == {"r_max": 3.0, "d_max": 5.0}
    text = RenormSchedule(norm_cfg("brn", schedule={"unit": "epoch", "warmup": 1, "ramp": 1}))
    text.begin_epoch(first_step=4, batches=order)
    assert text.values(2, 4) == {"r_max": 3.0, "d_max": 5.0}  # the text's count: from the epoch's start


def test_bad_moments_are_one_line():
    assert validate(norm_cfg("bn", moments="caffe"), CHANNELS) == [
        "norm.moments='caffe': allowed: pytorch, matconvnet"]
    assert validate(norm_cfg("gn", moments="matconvnet"), CHANNELS) == []  # set by a preset: changes nothing


# ---------------------------------------------------------------- the batch-independent norms in the LeNet

NEW = {"frn": {}, "frn tlu=every": {"tlu": "every"}, "frn learn_eps=false": {"learn_eps": False},
       "ws_gn": {}, "evonorm_s0": {}, "custom": {}}


def new_cfg(variant: str):
    return norm_cfg(variant.split()[0], **NEW.get(variant, {}))


def lenet64(cfg, seed: int = 0) -> LeNet:
    torch.manual_seed(seed)
    model = LeNet(partial(create_norm_layer, cfg), conv_weight=conv_weight(cfg), activation=activation(cfg))
    return model.double()


@pytest.mark.parametrize("variant", ["gn", "ln", "in", "frn", "frn tlu=every", "ws_gn", "evonorm_s0", "bn"])
def test_a_samples_output_in_training_does_not_depend_on_the_other_samples_except_under_bn(variant):
    model = lenet64(norm_cfg(variant) if variant in ("gn", "ln", "in", "bn") else new_cfg(variant)).train()
    torch.manual_seed(1)
    batch = torch.randn(4, 1, 28, 28, dtype=torch.float64) * 60
    others = torch.randn(5, 1, 28, 28, dtype=torch.float64) * 30 + 10
    alone = model(batch[:1])
    in_batch = model(batch)[:1]
    with_others = model(torch.cat([batch[:1], others]))[:1]
    if variant == "bn":
        assert (in_batch - alone).abs().max() > 1e-3 and (with_others - in_batch).abs().max() > 1e-3
    else:
        torch.testing.assert_close(in_batch, alone, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(with_others, alone, rtol=1e-10, atol=1e-12)


def test_each_new_norm_builds_what_it_says_in_the_lenet():
    frn, every = lenet64(new_cfg("frn")).features, lenet64(new_cfg("frn tlu=every")).features
    assert [type(frn[i]) for i in (1, 4, 7, 8)] == [FilterResponseNorm2d] * 3 + [TLU]  # TLU for the ReLU
    assert all(frn[i].tau is None and frn[i].eps_l is not None for i in (1, 4, 7))
    assert all(every[i].tau is not None for i in (1, 4, 7)) and type(every[8]) is nn.Identity
    assert lenet64(new_cfg("frn learn_eps=false")).features[7].eps_l is None
    ws = lenet64(new_cfg("ws_gn")).features
    assert [type(ws[i].weight_fn) for i in (0, 3, 6)] == [StandardizedWeight] * 3
    assert ws[6].weight_fn.eps == 1e-6 and not hasattr(ws[9], "weight_fn")  # the classifier: plain
    assert type(ws[8]) is nn.ReLU and type(ws[7]) is GroupNorm
    evo = lenet64(new_cfg("evonorm_s0")).features
    assert [evo[i].groups for i in (1, 4, 7)] == [2, 2, 2] and type(evo[8]) is nn.Identity
    assert create_norm_layer(norm_cfg("evonorm_s0", groups="per_channel"), 50).groups == 50


@pytest.mark.parametrize("variant", NEW)
def test_new_norms_round_trip_through_the_state_dict_and_only_their_parameters_skip_weight_decay(variant):
    cfg = new_cfg(variant)
    model = lenet64(cfg, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # away from the initial values
    for module in model.modules():
        if isinstance(module, nn.GroupNorm):
            assert module.weight.requires_grad  # not frozen: the round trip carries trained values
    copy = lenet64(cfg, seed=1)
    copy.load_state_dict(model.state_dict())
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64) * 50
    for mode in (True, False):
        torch.testing.assert_close(copy.train(mode)(x), model.train(mode)(x), rtol=0, atol=0)
    convs = {p for m in model.modules() if isinstance(m, nn.Conv2d) for p in m.parameters()}
    assert norm_parameters(model) == set(model.parameters()) - convs
    names = set(model.state_dict())
    expected = {"frn": {"features.7.eps_l", "features.8.tau"}, "frn tlu=every": {"features.7.tau"},
                "evonorm_s0": {"features.7.v"}}.get(variant, {"features.7.weight"})
    assert expected <= names


@pytest.mark.parametrize(("cfg", "line"), [
    (norm_cfg("frn", eps=0), "norm.eps=0: must be a number > 0"),
    (norm_cfg("frn", eps=-1e-6), "norm.eps=-1e-06: must be a number > 0"),
    (norm_cfg("frn", learn_eps="yes"), "norm.learn_eps='yes': must be true or false"),
    (norm_cfg("frn", tlu="first"), "norm.tlu='first': allowed: relu, every"),
    (norm_cfg("ws_gn", ws_eps=0), "norm.ws_eps=0: must be a number > 0"),
    (norm_cfg("ws_gn", eps=0), "norm.eps=0: must be a number > 0"),
    (norm_cfg("ws_gn", groups=3), "norm.groups=3: must divide every layer's channel count (20, 50, 500)"),
    (norm_cfg("evonorm_s0", groups=4), "norm.groups=4: must divide every layer's channel count (20, 50, "
     "500)"),
    (norm_cfg("evonorm_s0", groups=0), "norm.groups=0: must be a positive integer or 'per_channel'"),
    (norm_cfg("evonorm_s0", eps=0), "norm.eps=0: must be a number > 0"),
    (norm_cfg("custom", target=None), "norm.target=None: must be the import path of a torch.nn.Module "
     "class, e.g. mypkg.layers.MyNorm"),
])
def test_new_keys_reject_bad_values_in_one_line(cfg, line):
    assert validate(cfg, CHANNELS) == [line]


def test_new_norms_with_their_defaults_are_valid():
    for variant in NEW:
        assert validate(new_cfg(variant), CHANNELS) == [], variant
    for groups in (1, 2, 5, 10, "per_channel"):
        assert validate(norm_cfg("evonorm_s0", groups=groups), CHANNELS) == []
        assert validate(norm_cfg("ws_gn", groups=groups), CHANNELS) == []


# ---------------------------------------------------------------- packed seeds

PACKED = ["bn", "bn moments=matconvnet", "brn", "brn moments=matconvnet", "gn", "ln", "in", "frn",
          "frn tlu=every", "ws_gn", "evonorm_s0"]
SEEDS, PER_SEED = 3, 20


def packed_and_solo_layers(variant: str) -> tuple[nn.Module, list[nn.Module]]:
    """A packed layer for three seeds with random parameters and statistics, and each seed's solo layer
    holding its part of them."""
    name, *options = variant.split()
    cfg = norm_cfg(name, **dict(option.split("=") for option in options))
    torch.manual_seed(0)
    packed = create_packed_layer(cfg, PER_SEED * SEEDS, SEEDS).double()
    with torch.no_grad():
        for value in [*packed.parameters(), *packed.buffers()]:
            if value.is_floating_point():
                value.uniform_(0.5, 1.5)
    solos = [create_norm_layer(cfg, PER_SEED).double() for _ in range(SEEDS)]
    whole = packed.state_dict()
    for i, solo in enumerate(solos):
        solo.load_state_dict({k: part_of(whole[k], v, i).clone() for k, v in solo.state_dict().items()})
    if name == "brn":  # each seed its own limits, as each follows its own schedule
        r_max, d_max = [1.1, 1.5, 3.0], [0.1, 0.5, 5.0]
        packed.set_limits(r_max, d_max)
        for solo, r, d in zip(solos, r_max, d_max, strict=True):
            solo.set_limits(r, d)
    return packed, solos


@pytest.mark.parametrize("size", [1, 5], ids=["1x1", "5x5"])
@pytest.mark.parametrize("variant", PACKED)
def test_a_packed_layer_is_its_seeds_layers_side_by_side(variant, size):
    """In float64: training output, input and parameter gradients, the statistics after the step, and the
    evaluation output of the packed layer are its seeds' solo layers' (no group, statistic or limit of one
    seed reaches another), on the 1x1 map too."""
    packed, solos = packed_and_solo_layers(variant)
    torch.manual_seed(1)
    x = (torch.randn(4, PER_SEED * SEEDS, size, size, dtype=torch.float64) * 2 + 0.5).requires_grad_()
    upstream = torch.randn_like(x)
    parts = [part.detach().clone().requires_grad_() for part in x.split(PER_SEED, 1)]
    y = packed(x)
    (y * upstream).sum().backward()
    ys = [solo(part) for solo, part in zip(solos, parts, strict=True)]
    (torch.cat(ys, 1) * upstream).sum().backward()
    close = partial(torch.testing.assert_close, rtol=1e-12, atol=1e-12)
    close(y, torch.cat(ys, 1))
    close(x.grad, torch.cat([part.grad for part in parts], 1))
    for i, solo in enumerate(solos):
        packed_params = dict(packed.named_parameters())
        for key, value in solo.named_parameters():
            close(part_of(packed_params[key].grad, value, i), value.grad, msg=f"seed {i} {key}.grad")
        whole = packed.state_dict()
        for key, value in solo.state_dict().items():
            close(part_of(whole[key], value, i), value, msg=f"seed {i} {key}")
    packed.eval()
    with torch.no_grad():
        close(packed(x), torch.cat([solo.eval()(part) for solo, part in zip(solos, parts, strict=True)], 1))
