"""Speed must not change results: the fast path (fused SGD, deferred host syncs, channels-last with oneDNN)
against the plain one for every norm; and the rule that picks threads, oneDNN and memory layout."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
from helpers import compose_config

from normexp import data, norm, perf, runfiles, steps, trainer

TIMING = ["seconds", "samples_per_s"]
CPU = torch.device("cpu")


@pytest.fixture
def isolated_torch():
    """run() sets torch's threads and oneDNN and installs signal handlers: give them back afterwards."""
    threads, mkldnn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = mkldnn
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


# Both paths compute the same float32 formulas in other orders (oneDNN's channels-last kernels, batch
# norm's matrix-vector backward, the fused SGD update), so they may differ by rounding only. A sum of n terms
# rounded in another order moves by about sqrt(n) eps relative; the longest sums here (the first layer's
# N*24*24 positions, 23,040 at batch size 40) give about 150 eps, and a chain of ten layers over three steps a
# few of those: hence 1024 eps (1.2e-4) normwise per tensor, where the planted differences below (another
# momentum or eps) are 1e-3 or more. Whole runs are not compared across paths: training amplifies last-bit
# differences chaotically.
EPS32 = torch.finfo(torch.float32).eps
TOL = 1024 * EPS32
STEPS = 3


def compose_run(data_root: Path, *overrides: str):
    return compose_config([f"data.root={data_root}", "data.download=false", "train.threads=1",
                           "train.progress=false", *overrides])


def layer_values(model: torch.nn.Module, of) -> dict[str, torch.Tensor]:
    """``of(parameter)`` for each layer's parameters as one float64 vector: a value that is zero up to
    rounding (the gradient of a conv bias that a batch norm cancels) is compared at its layer's scale."""
    layers = {}
    for name, module in model.named_modules():
        params = list(module.parameters(recurse=False))
        if params:
            layers[name] = torch.cat([of(p).detach().double().flatten() for p in params])
    return layers


def statistics(model: torch.nn.Module) -> dict[str, tuple[torch.Tensor, float]]:
    """Each running statistic with the scale it is rounded at: a mean at its layer's spread (the mean of a
    centred input is zero up to rounding), a variance or std at its own size."""
    found = {}
    for name, module in model.named_modules():
        buffers = dict(module.named_buffers(recurse=False))
        spread = buffers.get("running_std")
        if "running_var" in buffers:
            spread = buffers["running_var"].sqrt()
        for key, value in buffers.items():
            if value.is_floating_point():
                scale = spread.double().norm() if key == "running_mean" else value.double().norm()
                found[f"{name}.{key}"] = (value.detach().double(), float(scale))
    return found


def trace(cfg, plant=None) -> dict:
    """The fast or plain path (per ``cfg``) through STEPS training steps on the first batches of epoch 1:
    the logits and loss of each step, every gradient, the update, the running statistics, eval logits."""
    setup = trainer.set_up(cfg, jobs=1)
    if plant is not None:
        plant(setup)
    if cfg.norm.name == "brn":
        norm.set_renorm_limits(setup.model, 1.5, 0.5)  # r and d clipped, not the identity
    model, fmt = setup.model, setup.cpu.memory_format
    before = layer_values(model, lambda p: p)
    found = {"logits": [], "loss": [], "grad": []}
    model.train()
    batches = data.epoch_order(len(setup.train_set), cfg.batch_size, cfg.train.seed, 0, setup.device)
    for idx in batches[:STEPS]:
        log = steps.EpochLog()
        steps.train_steps(model, setup.optimizer, setup.train_set, [idx], log, fmt)
        (loss, logits, _), = log.pending
        found["loss"].append(loss.double())
        found["logits"].append(logits.double())
        found["grad"].append(layer_values(model, lambda p: p.grad))
    after = layer_values(model, lambda p: p)
    found["update"] = {k: (after[k] - before[k], float(before[k].norm())) for k in after}
    found["stats"] = statistics(model)
    model.eval()
    with torch.no_grad():
        found["eval"] = model(setup.test_set.batch(torch.arange(len(setup.test_set)), fmt)[0]).double()
    return found


def differences(fast: dict, plain: dict) -> list[str]:
    """Every tensor of the two traces that differs by more than TOL relative to its scale, one line each."""
    pairs = [(f"step {i + 1} {what}", fast[what][i], plain[what][i], None)
             for what in ("loss", "logits") for i in range(STEPS)]
    pairs += [(f"step {i + 1} grad {k}", g, plain["grad"][i][k], None)
              for i, grads in enumerate(fast["grad"]) for k, g in grads.items()]
    # an update is a difference of two rounded parameters: at least one ulp of the parameter is noise
    pairs += [(f"update {k}", u, plain["update"][k][0], TOL * plain["update"][k][0].norm() + 4 * EPS32 * p)
              for k, (u, p) in fast["update"].items()]
    pairs += [(f"statistic {k}", v, plain["stats"][k][0], TOL * scale)
              for k, (v, scale) in fast["stats"].items()]
    pairs += [("eval logits", fast["eval"], plain["eval"], None)]
    found = []
    for what, a, b, bound in pairs:
        bound = TOL * float(b.norm()) if bound is None else float(bound)
        error = float((a - b).norm())
        if not error <= bound:
            found.append(f"{what}: differs by {error:.3g}, allowed {bound:.3g}")
    return found


# Not "in": instance norm sets the 1x1 map's single value per channel to 0, so all the network computes below
# that layer is rounding noise (0 up to rounding, in every kernel), which two paths cannot agree on. Its
# kernel is GN's with one group per channel, which the gn and ln cases check.
NORMS = ("none", "bn", "brn", "gn", "ln")
# batch size 2: native convolutions; 16: oneDNN in NCHW; 40: oneDNN in channels-last (batch norm's backward)
PATHS = [pytest.param(name, bs, id=f"{name}-bs{bs}") for bs in (2, 16, 40) for name in NORMS]


@pytest.mark.parametrize("name, batch_size", PATHS)
def test_fast_and_plain_path_agree_step_by_step(tiny_mnist, isolated_torch, name, batch_size):
    args = [f"norm={name}", f"batch_size={batch_size}"]
    fast_cfg = compose_run(tiny_mnist, *args, "train.fast=true")
    fast, plain = trace(fast_cfg), trace(compose_run(tiny_mnist, *args, "train.fast=false"))
    assert differences(fast, plain) == []
    rule = perf.choose(batch_size, CPU, threads=1)
    assert rule.channels_last == (batch_size == 40) and rule.mkldnn == (batch_size > 8)


def fit(cfg, run_dir: Path) -> dict:
    return trainer.Trainer(cfg, run_dir, jobs=1).fit().summary


def _bn_momentum(setup, value=0.2):
    for module in setup.model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = value


def _sgd_momentum(setup, value=0.8):
    for group in setup.optimizer.param_groups:
        group["momentum"] = value


def _gn_eps(setup, value=1e-3):
    for module in setup.model.modules():
        if isinstance(module, torch.nn.GroupNorm):
            module.eps = value


@pytest.mark.parametrize(
    ("name", "plant", "shows_in"),
    [("bn", _bn_momentum, "statistic"), ("bn", _sgd_momentum, "update"), ("gn", _gn_eps, "logits")],
    ids=["bn-momentum-0.2", "sgd-momentum-0.8", "gn-eps-1e-3"],
)
def test_a_real_difference_in_the_fast_path_is_caught(tiny_mnist, isolated_torch, name, plant, shows_in):
    args = [f"norm={name}", "batch_size=40"]
    fast = trace(compose_run(tiny_mnist, *args, "train.fast=true"), plant=plant)
    plain = trace(compose_run(tiny_mnist, *args, "train.fast=false"))
    found = differences(fast, plain)
    assert any(shows_in in line for line in found), found


def test_resume_from_a_checkpoint_in_another_layout_trains_on_right(tmp_path, tiny_mnist, isolated_torch):
    """Epoch 1 in NCHW (oneDNN off), epoch 2 resumed in channels-last (asked for: a resumed run otherwise
    keeps its own settings): the momentum buffers follow the
    parameters' new layout, so the run ends with the weights of an uninterrupted NCHW run (to rounding)."""
    args = ["norm=gn", "batch_size=40", "train.epochs=2"]
    (tmp_path / "resumed").mkdir()
    (tmp_path / "straight").mkdir()
    fit(compose_run(tiny_mnist, *args, "train.mkldnn=false", "train.epochs=1"), tmp_path / "resumed")
    resumed = fit(compose_run(tiny_mnist, *args, "train.mkldnn=true"), tmp_path / "resumed")
    assert resumed["channels_last"] and resumed["epochs_run"] == 2
    fit(compose_run(tiny_mnist, *args, "train.mkldnn=false"), tmp_path / "straight")
    weights = [runfiles.load_checkpoint(tmp_path / run)["model"] for run in ("resumed", "straight")]
    for key, value in weights[1].items():
        error = float((weights[0][key].double() - value.double()).norm())
        assert error <= TOL * float(value.double().norm()) + EPS32, key


# ---------------------------------------------------------------- the rule


@pytest.fixture(autouse=True)
def no_measured_settings(tmp_path, monkeypatch):
    """Every test of this module sees the built-in rule, whatever ``python -m normexp.tune`` measured on this
    machine (the cache and its reading are tests/test_tune.py's)."""
    monkeypatch.setenv(perf.CACHE_ENV, str(tmp_path / "no-cache"))


def test_without_a_measurement_the_rule_is_the_fallback_and_says_so(monkeypatch):
    monkeypatch.setattr(perf, "available_cores", lambda: 8)
    for batch_size in (1, 2, 8, 9, 32, 33, 250, 256):
        chosen = perf.choose(batch_size, CPU)
        assert chosen == perf.fallback(batch_size, 8) and chosen.source == "fallback"
    assert not perf.cache_path().exists()


def test_tiny_batches_get_native_convolutions_and_from_two_on_the_jobs_share_of_the_cores(monkeypatch):
    monkeypatch.setattr(perf, "available_cores", lambda: 8)
    for batch_size in range(1, perf.NATIVE_CONV_MAX + 1):
        threads = 1 if batch_size <= perf.ONE_THREAD_MAX else 8
        assert perf.choose(batch_size, CPU) == perf.CpuSettings(threads, mkldnn=False, channels_last=False)
    assert perf.choose(1, CPU).threads == 1 and perf.choose(2, CPU).threads == 8
    assert perf.choose(2, CPU, jobs=8) == perf.CpuSettings(threads=1, mkldnn=False, channels_last=False)


def test_larger_batches_get_onednn_the_jobs_share_of_the_cores_then_channels_last(monkeypatch):
    monkeypatch.setattr(perf, "available_cores", lambda: 8)
    for batch_size in range(perf.NATIVE_CONV_MAX + 1, perf.NCHW_MAX + 1):
        assert perf.choose(batch_size, CPU) == perf.CpuSettings(threads=8, mkldnn=True, channels_last=False)
    bs = perf.NCHW_MAX + 1
    assert perf.choose(bs, CPU) == perf.CpuSettings(threads=8, mkldnn=True, channels_last=True)
    assert perf.choose(256, CPU, jobs=2) == perf.CpuSettings(threads=4, mkldnn=True, channels_last=True)
    assert perf.choose(256, CPU, jobs=16).threads == 1
    assert perf.choose(256, CPU, fast=False) == perf.CpuSettings(threads=8, mkldnn=True, channels_last=False)
    assert perf.choose(256, CPU).memory_format == torch.channels_last


def test_explicit_settings_win_and_channels_last_follows_onednn():
    assert perf.choose(1, CPU, threads=3, mkldnn=True) == perf.CpuSettings(3, True, False)
    assert perf.choose(64, CPU, threads=3, mkldnn=True) == perf.CpuSettings(3, True, True)
    assert perf.choose(256, CPU, threads=2, mkldnn=False) == perf.CpuSettings(2, False, False)
    assert perf.choose(256, torch.device("cuda")).channels_last is False  # the layout rule is CPU-only


def test_apply_sets_threads_and_onednn(isolated_torch):
    perf.apply(perf.CpuSettings(threads=1, mkldnn=False))
    assert torch.get_num_threads() == 1 and torch.backends.mkldnn.enabled is False
