"""Speed must not change results: the fast path (fused SGD, deferred host syncs, channels-last with oneDNN)
against the plain one for every norm; and the rule that picks threads, oneDNN and memory layout."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import compose_config
from steptrace import EPS32, TOL, differences, trace

from normexp import perf, trainer
from normexp.analysis import runfiles
from normexp.trainer import Trainer

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


def compose_run(data_root: Path, *overrides: str):
    return compose_config([f"data.root={data_root}", "data.download=false", "train.threads=1",
                           "train.progress=false", *overrides])


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


def test_outside_a_sweep_one_job_runs():
    assert perf.parallel_jobs() == 1


@pytest.mark.parametrize(
    ("launcher", "jobs"),
    [
        ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": -1}, 8),
        ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 3}, 3),
        ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"}, 8),
        ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
          "cpus_per_task": 2}, 4),
        ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"}, 1),
        ({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, 1),
    ],
)
def test_jobs_sharing_the_box_follow_the_launcher(monkeypatch, launcher, jobs):
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    monkeypatch.setattr(perf, "available_cores", lambda: 8)
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: OmegaConf.create({"launcher": launcher})))
    assert perf.parallel_jobs() == jobs


# ---------------------------------------------------------------- provenance: what a run records of it


def test_this_process_entry_names_the_code_torch_onednn_and_cpu():
    entry = perf.provenance()
    assert set(entry) == {"normexp", "commit", "torch", "onednn", "cpu", "cores"}
    assert entry["torch"] == torch.__version__ and entry["onednn"] == perf.onednn_version()
    assert entry["cpu"] == perf.cpu_fingerprint()["model"] and entry["cores"] == perf.available_cores()
    commit = entry["commit"]
    assert commit is None or len(commit.removesuffix("-dirty")) == 40  # tests run from a clone: a commit
    assert perf.provenance(torch.device("cpu")) == entry


def test_a_run_on_a_gpu_records_its_name(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    entry = perf.provenance(torch.device("cuda", 0))
    assert entry == {**perf.provenance(), "gpu": "NVIDIA H200"}


def test_an_entry_is_added_only_where_something_changed():
    now = perf.provenance()
    assert perf.provenance_extended(None) == [now]
    assert perf.provenance_extended([now]) == [now]
    elsewhere = {**now, "cpu": "another CPU"}
    assert perf.provenance_extended([elsewhere]) == [elsewhere, now]


def test_a_run_records_its_provenance_and_a_resume_on_other_machine_adds_to_it(tmp_path, tiny_mnist,
                                                                              monkeypatch):
    def cfg(epochs: int):
        return compose_config([f"data.root={tiny_mnist}", "data.download=false", "norm=gn", "batch_size=40",
                               f"train.epochs={epochs}", "train.threads=1", "train.progress=false"])

    first = Trainer(cfg(1), tmp_path, jobs=1).fit().summary
    assert first["provenance"] == [perf.provenance()]
    again = Trainer(cfg(2), tmp_path, jobs=1).fit().summary  # resumed here: the same entry
    assert again["epochs_run"] == 2 and again["provenance"] == first["provenance"]
    moved = {**perf.provenance(), "cpu": "another CPU"}
    monkeypatch.setattr(perf, "provenance", lambda device=None: moved)
    resumed = Trainer(cfg(3), tmp_path, jobs=1).fit().summary
    assert resumed["epochs_run"] == 3 and resumed["provenance"] == [*first["provenance"], moved]


def test_peak_rss_is_this_processs_high_water_mark():
    code = ("import torch; from normexp import perf; before = perf.peak_rss_mb(); "
            "block = torch.ones(2**26); print(before, perf.peak_rss_mb())")  # 256 MB touched
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = map(float, done.stdout.split())
    assert 0 < before < after and after - before >= 240


def test_peak_rss_without_proc_falls_back_to_getrusage(monkeypatch):
    real_open = open

    def no_proc(path, *args, **kwargs):
        if str(path).startswith("/proc/"):
            raise OSError("no /proc here")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_proc)
    fallback = perf.peak_rss_mb()
    monkeypatch.undo()
    assert 0.5 * perf.peak_rss_mb() < fallback < 2 * perf.peak_rss_mb() + 100  # MB, not KB or GB
