"""FRN+TLU, EvoNorm-S0 and weight standardisation against the papers' formulas written out in float64
(outputs, and input and parameter gradients by gradcheck), on ordinary and 1x1 maps and at batch size 1;
and the start-up checks of a layer of the user's own."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from normexp.layers import (
    LEARNED_EPS_START,
    TLU,
    CustomNorm,
    EvoNormS0,
    FilterResponseNorm2d,
    GroupNorm,
    StandardizedWeight,
    build_custom,
    custom_problems,
)
from normexp.model import Conv2d, WholeInputConv2d

SHAPES = {"map": (3, 4, 5, 4), "1x1": (3, 4, 1, 1), "bs1": (1, 4, 3, 3), "bs1-1x1": (1, 4, 1, 1)}


def randomise(layer: nn.Module, seed: int = 0) -> nn.Module:
    """float64, with every parameter away from its initial value (FRN's eps_l negative: |eps_l| counts)."""
    torch.manual_seed(seed)
    layer = layer.double()
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.copy_(-torch.rand_like(p) * 0.2 - 0.05 if name == "eps_l" else torch.randn_like(p) * 0.5 + 1.0)
    return layer


def frn_formula(x, gamma, beta, tau, eps):
    """Singh & Krishnan 2020, eq. 1-3: nu^2 = sum_i x_i^2 / N over the N = H*W positions of each sample and
    channel; y = gamma * x / sqrt(nu^2 + eps) + beta; z = max(y, tau)."""
    n_positions = x.shape[2] * x.shape[3]
    nu2 = (x * x).sum(dim=(2, 3), keepdim=True) / n_positions
    y = gamma.view(1, -1, 1, 1) * x / torch.sqrt(nu2 + eps) + beta.view(1, -1, 1, 1)
    return y if tau is None else torch.where(y > tau.view(1, -1, 1, 1), y, tau.view(1, -1, 1, 1))


def evonorm_s0_formula(x, v, gamma, beta, groups, eps):
    """Liu et al. 2020, EvoNorm-S0: x * sigmoid(v x) / sqrt(s^2_{w,h,c/g}(x) + eps) * gamma + beta, the
    variance taken per sample over each group's channels and all positions."""
    n, c, h, w = x.shape
    out = []
    for g in range(groups):
        part = x[:, g * c // groups:(g + 1) * c // groups]
        count = part[0].numel()
        mean = part.sum(dim=(1, 2, 3), keepdim=True) / count
        var = ((part - mean) ** 2).sum(dim=(1, 2, 3), keepdim=True) / count
        v_part = v.view(1, -1, 1, 1)[:, g * c // groups:(g + 1) * c // groups]
        out.append(part / (1 + torch.exp(-v_part * part)) / torch.sqrt(var + eps))
    return torch.cat(out, dim=1) * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)


def ws_formula(weight, eps):
    """Qiao et al. 2019, eq. 5-6: W_hat[i, j] = (W[i, j] - mu_i) / sigma_i over the fan-in j of filter i,
    sigma_i = sqrt(mean_j (W[i, j] - mu_i)^2 + eps)."""
    rows = []
    for filt in weight:
        flat = filt.reshape(-1)
        mu = flat.sum() / flat.numel()
        sigma = torch.sqrt(((flat - mu) ** 2).sum() / flat.numel() + eps)
        rows.append((filt - mu) / sigma)
    return torch.stack(rows)


def gradcheck_layer(layer: nn.Module, x: torch.Tensor) -> None:
    """gradcheck of the layer's output with respect to its input and every parameter."""
    names = [name for name, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in layer.named_parameters()]

    def f(x, *ps):
        return functional_call(layer, dict(zip(names, ps, strict=True)), (x,))

    assert torch.autograd.gradcheck(f, (x.clone().requires_grad_(), *params))


def assert_same_gradients(layer: nn.Module, x: torch.Tensor, formula) -> None:
    """Output, input gradient and every parameter gradient of the layer equal the formula's."""
    params = dict(layer.named_parameters())
    x1 = x.clone().requires_grad_()
    y = layer(x1)
    upstream = torch.randn_like(y)
    (y * upstream).sum().backward()
    x2 = x.clone().requires_grad_()
    leaves = {name: p.detach().clone().requires_grad_() for name, p in params.items()}
    y_ref = formula(x2, leaves)
    (y_ref * upstream).sum().backward()
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-9, atol=1e-12)
    for name, p in params.items():
        torch.testing.assert_close(p.grad, leaves[name].grad, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES)
@pytest.mark.parametrize("learn_eps", [False, True], ids=["eps", "learned-eps"])
@pytest.mark.parametrize("tlu", [True, False], ids=["tlu", "no-tlu"])
def test_frn_is_the_papers_formula_in_output_and_gradients(shape, learn_eps, tlu):
    layer = randomise(FilterResponseNorm2d(shape[1], eps=1e-6, learn_eps=learn_eps, tlu=tlu))
    x = torch.randn(shape, dtype=torch.float64) * 2

    def formula(x, p):
        eps = 1e-6 + (p["eps_l"].abs() if learn_eps else 0.0)
        return frn_formula(x, p["weight"], p["bias"], p.get("tau"), eps)

    assert_same_gradients(layer, x, formula)
    gradcheck_layer(layer, x)


def test_frn_on_a_1x1_map_at_batch_size_1_is_finite_and_learns_its_eps():
    layer = FilterResponseNorm2d(500, eps=1e-6, learn_eps=True).double()
    assert layer.eps_l.item() == pytest.approx(LEARNED_EPS_START, rel=1e-6)
    x = torch.randn(1, 500, 1, 1, dtype=torch.float64) * 3
    x[0, :5] = 0.0  # nu^2 = 0 exactly: only eps keeps it finite
    x.requires_grad_()
    y = layer(x)
    (y * torch.randn_like(y)).sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    assert layer.eps_l.grad.abs() > 0  # the learned eps gets a gradient
    # on a 1x1 map x / sqrt(x^2 + eps) is about sign(x): the values the paper's learned eps is there for
    frozen = FilterResponseNorm2d(500, eps=1e-6, tlu=False).double()
    big = x.detach()[0, :, 0, 0].abs() > 0.1
    torch.testing.assert_close(frozen(x.detach())[:, big], x.detach()[:, big].sign(), rtol=0, atol=1e-4)


def test_tlu_is_max_with_a_learned_threshold_from_zero():
    tlu = TLU(3).double()
    assert tlu.tau.tolist() == [0.0, 0.0, 0.0]
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(tlu(x), F.relu(x), rtol=0, atol=0)  # tau = 0: a ReLU
    randomise(tlu)
    assert_same_gradients(tlu, x, lambda x, p: torch.where(x > p["tau"].view(1, -1, 1, 1), x,
                                                           p["tau"].view(1, -1, 1, 1)))
    gradcheck_layer(tlu, x)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES)
@pytest.mark.parametrize("groups", [1, 2, 4], ids=["1-group", "2-groups", "per-channel"])
def test_evonorm_s0_is_the_papers_formula_in_output_and_gradients(shape, groups):
    layer = randomise(EvoNormS0(shape[1], groups=groups, eps=1e-5))
    x = torch.randn(shape, dtype=torch.float64) * 2 + 0.5  # per channel on a 1x1 map: var 0, eps alone
    assert_same_gradients(layer, x, lambda x, p: evonorm_s0_formula(x, p["v"], p["weight"], p["bias"],
                                                                      groups, 1e-5))
    gradcheck_layer(layer, x)


def test_evonorm_s0_starts_at_v_1_gamma_1_beta_0_and_refuses_groups_that_do_not_divide():
    layer = EvoNormS0(6, groups=3)
    assert layer.v.tolist() == [1.0] * 6 and layer.weight.tolist() == [1.0] * 6
    assert layer.bias.tolist() == [0.0] * 6
    with pytest.raises(ValueError, match="groups=4 does not divide num_channels=6"):
        EvoNormS0(6, groups=4)


@pytest.mark.parametrize("shape", [(5, 3, 4, 4), (7, 1, 5, 5), (4, 6, 1, 1)], ids=["conv", "1-in", "1x1"])
def test_weight_standardisation_is_the_papers_formula_and_passes_gradcheck(shape):
    torch.manual_seed(0)
    weight = torch.randn(shape, dtype=torch.float64) * 0.01 + 0.003
    ws = StandardizedWeight(1e-6)
    torch.testing.assert_close(ws(weight), ws_formula(weight, 1e-6), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(ws, (weight.clone().requires_grad_(),))
    standardised = ws(weight).flatten(1)
    torch.testing.assert_close(standardised.mean(dim=1), torch.zeros(shape[0], dtype=torch.float64),
                               rtol=0, atol=1e-12)
    var = weight.flatten(1).var(dim=1, unbiased=False)
    torch.testing.assert_close(standardised.var(dim=1, unbiased=False), var / (var + 1e-6))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["NCHW", "NHWC"])
def test_convolutions_standardise_their_weight_on_every_call_with_the_gradient_through_it(layout):
    torch.manual_seed(1)
    ws = StandardizedWeight(1e-6)
    for conv, size in ((Conv2d(3, 4, 3, weight_fn=ws), 6), (WholeInputConv2d(3, 4, 3, weight_fn=ws), 3)):
        conv = conv.double().to(memory_format=layout)
        x = torch.randn(2, 3, size, size, dtype=torch.float64).contiguous(memory_format=layout)
        for _ in range(2):  # the weight changes between calls: each call standardises the current one
            w = conv.weight.detach().clone().requires_grad_()
            b = conv.bias.detach().clone().requires_grad_()
            x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
            y = conv(x1)
            y_ref = F.conv2d(x2, ws_formula(w, 1e-6), b)
            upstream = torch.randn_like(y)
            conv.zero_grad()
            (y * upstream).sum().backward()
            (y_ref * upstream).sum().backward()
            torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(conv.weight.grad, w.grad, rtol=1e-9, atol=1e-10)
            torch.testing.assert_close(conv.bias.grad, b.grad, rtol=1e-10, atol=1e-12)
            with torch.no_grad():
                conv.weight.mul_(torch.rand_like(conv.weight) + 0.5)
    plain = Conv2d(3, 4, 3).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(plain(x), F.conv2d(x, plain.weight, plain.bias), rtol=0, atol=0)


def test_group_norm_is_pytorchs_and_also_trains_on_one_value_per_group():
    torch.manual_seed(2)
    ours, theirs = GroupNorm(5, 10, eps=1e-4).double(), nn.GroupNorm(5, 10, eps=1e-4).double()
    randomise(ours)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 10, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)
    single = torch.randn(1, 4, 1, 1, dtype=torch.float64, requires_grad=True)
    inorm = randomise(GroupNorm(4, 4, eps=1e-4))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.GroupNorm(4, 4)(single)  # what PyTorch does
    y = inorm(single)
    y.sum().backward()
    torch.testing.assert_close(y, inorm.bias.detach().view(1, -1, 1, 1), rtol=0, atol=1e-12)  # x - mean = 0
    assert torch.isfinite(single.grad).all()


# ---------------------------------------------------------------- a layer of the user's own


class RMSNorm(nn.Module):
    """x / sqrt(mean of x^2 over channels and positions + eps), then a scale and shift per channel."""

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        x = x * torch.rsqrt(x.square().mean(dim=(1, 2, 3), keepdim=True) + self.eps)
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class Squeezes(nn.Module):
    def __init__(self, num_channels: int) -> None:
        super().__init__()

    def forward(self, x):
        return x.mean(dim=1)


class Breaks(nn.Module):
    def __init__(self, num_channels: int) -> None:
        super().__init__()
        if num_channels > 100:
            raise ValueError("too many channels")

    def forward(self, x):
        return x


class FailsForward(nn.Module):
    def __init__(self, num_channels: int) -> None:
        super().__init__()

    def forward(self, x):
        raise RuntimeError("no\nforward")


def not_a_module(num_channels: int) -> int:
    return num_channels


def make_rms(num_channels: int, **kwargs) -> nn.Module:
    """A function returning a module: how a class with another signature is adapted."""
    return RMSNorm(num_channels, **kwargs)


CHANNELS = (20, 50, 500)
HERE = __name__


def test_a_custom_class_builds_with_its_kwargs_and_counts_as_a_norm_layer():
    layer = build_custom(f"{HERE}.RMSNorm", {"eps": 1e-3}, 50)
    assert isinstance(layer, RMSNorm) and isinstance(layer, CustomNorm) and layer.eps == 1e-3
    assert not isinstance(nn.Conv2d(1, 1, 1), CustomNorm)
    assert custom_problems(f"{HERE}.RMSNorm", {"eps": 1e-3}, CHANNELS) == []
    assert custom_problems(f"{HERE}.make_rms", {}, CHANNELS) == []
    assert custom_problems("torch.nn.GroupNorm", {"num_groups": 2}, CHANNELS) == []


@pytest.mark.parametrize(("target", "kwargs", "start", "fragment"), [
    (None, {}, "norm.target=None: must be the import path of a torch.nn.Module class", ""),
    ("RMSNorm", {}, "norm.target='RMSNorm': must be the import path", ""),
    ("nopkg.layers.MyNorm", {}, "norm.target='nopkg.layers.MyNorm': does not import (", "nopkg"),
    (f"{HERE}.Nope", {}, f"norm.target='{HERE}.Nope': does not import (", "Nope"),
    ("torch.nn.BatchNorm2d", {}, "norm.target='torch.nn.BatchNorm2d': cannot be called as "
     "torch.nn.BatchNorm2d(num_channels=20, **norm.kwargs): it must accept num_channels (", "num_channels"),
    (f"{HERE}.RMSNorm", {"epsilon": 1}, f"norm.target='{HERE}.RMSNorm': cannot be called as", "epsilon"),
    (f"{HERE}.Breaks", {}, f"norm.target='{HERE}.Breaks': {HERE}.Breaks(num_channels=500, **norm.kwargs) "
     f"fails: {HERE}.Breaks.__init__ raised ", "too many channels"),
    (f"{HERE}.not_a_module", {}, f"norm.target='{HERE}.not_a_module': {HERE}.not_a_module(num_channels=20, "
     "**norm.kwargs) built a", "not a torch.nn"),
    (f"{HERE}.Squeezes", {}, f"norm.target='{HERE}.Squeezes': its forward pass on a (2, 20, 3, 3) input "
     "gives (2, 3, 3), not the same shape", ""),
    (f"{HERE}.FailsForward", {}, f"norm.target='{HERE}.FailsForward': its forward pass on a (2, 20, 3, 3) "
     "input fails (RuntimeError: no forward)", ""),
    (f"{HERE}.RMSNorm", 5, "norm.kwargs=5: must be a mapping of keyword arguments", ""),
    (f"{HERE}.RMSNorm", {"num_channels": 3}, "norm.kwargs.num_channels: normexp passes each layer's", ""),
])
def test_a_bad_custom_layer_is_one_line_naming_the_key_value_and_reason(target, kwargs, start, fragment):
    [line] = custom_problems(target, kwargs, CHANNELS)
    assert line.startswith(start) and fragment in line and "\n" not in line, line
