"""Speed must not change results: the fast path (fused SGD, deferred host syncs, channels-last with oneDNN)
against the plain one for every norm; and the rule that picks threads, oneDNN and memory layout."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import ROOT
from hydra import compose, initialize_config_dir

from normexp import perf, runfiles, train

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


# A small learning rate: at the default one, some runs on 200 digits (BN at batch size 2 most of all) are
# chaotic enough to blow the last-bit differences of other kernels up to percents within two epochs.
QUIET = ["train.epochs=2", "train.threads=1", "train.progress=false", "optim.lr=0.001"]


def run_in_process(run_dir: Path, data_root: Path, *overrides: str) -> tuple[dict, pd.DataFrame]:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"data.root={data_root}", "data.download=false", *QUIET,
                                           *overrides])
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = train.run(cfg, run_dir)
    return summary, pd.read_csv(run_dir / runfiles.METRICS).drop(columns=TIMING)


def assert_close_metrics(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal to float tolerance: other kernels (layout, fused update) round differently, which may also flip
    the arg-max of a near-tied digit or two per epoch (a network at chance, as IN is on these digits)."""
    errors = ["train_error", "val_error"]
    pd.testing.assert_frame_equal(a.drop(columns=errors), b.drop(columns=errors), check_exact=False,
                                  rtol=1e-5, atol=1e-7)  # fmt: skip
    assert ((a["train_error"] - b["train_error"]).abs() <= 2 / 200 + 1e-12).all()
    assert ((a["val_error"] - b["val_error"]).abs() <= 1 / 100 + 1e-12).all()


CASES = [
    # batch size 40: oneDNN, channels-last (batch norm's own backward), fused SGD, one look at the losses
    *[pytest.param(name, 40, [], id=f"{name}-bs40") for name in ("none", "bn", "gn", "ln", "in")],
    # batch renorm with its limits moving during the run, per epoch and per step
    pytest.param("brn", 40, ["norm.schedule.warmup=1", "norm.schedule.ramp=1"], id="brn-bs40-epoch-schedule"),
    pytest.param("brn", 16, ["norm.schedule.unit=step", "norm.schedule.warmup=5", "norm.schedule.ramp=20"],
                 id="brn-bs16-step-schedule"),
    # batch size 16: oneDNN in NCHW
    pytest.param("bn", 16, [], id="bn-bs16"),
    # tiny batches: native convolutions, a look at the losses every 2048 steps
    pytest.param("gn", 2, [], id="gn-bs2"),
    pytest.param("bn", 4, [], id="bn-bs4"),
]


@pytest.mark.parametrize("name, batch_size, extra", CASES)
def test_fast_path_gives_the_plain_paths_metrics(tmp_path, tiny_mnist, isolated_torch, name, batch_size,
                                                 extra):
    args = [f"norm={name}", f"batch_size={batch_size}", *extra]
    fast, fast_rows = run_in_process(tmp_path / "fast", tiny_mnist, *args, "train.fast=true")
    plain, plain_rows = run_in_process(tmp_path / "plain", tiny_mnist, *args, "train.fast=false")
    assert fast["status"] == plain["status"] == "completed" and len(fast_rows) == 2
    assert_close_metrics(fast_rows, plain_rows)
    assert fast["steps"] == plain["steps"] == 2 * -(-200 // batch_size)
    rule = perf.choose(batch_size, CPU)
    assert (fast["fast"], fast["mkldnn"], fast["channels_last"]) == (True, rule.mkldnn, rule.channels_last)
    assert (plain["fast"], plain["mkldnn"], plain["channels_last"]) == (False, rule.mkldnn, False)
    assert rule.channels_last == (batch_size == 40) and rule.mkldnn == (batch_size > 8)
    if name == "brn" and "norm.schedule.unit=step" not in extra:
        assert list(fast_rows["r_max"]) == [1.0, 3.0] and list(fast_rows["d_max"]) == [0.0, 5.0]


def test_resume_from_a_checkpoint_in_another_layout_trains_on_right(tmp_path, tiny_mnist, isolated_torch):
    """Epoch 1 in NCHW (oneDNN off), epoch 2 resumed in channels-last: the momentum buffers follow the
    parameters' new layout, so the run ends where an uninterrupted NCHW run ends (to float tolerance)."""
    args = ["norm=gn", "batch_size=40"]
    run_in_process(tmp_path / "resumed", tiny_mnist, *args, "train.mkldnn=false", "train.epochs=1")
    resumed, resumed_rows = run_in_process(tmp_path / "resumed", tiny_mnist, *args)
    assert resumed["channels_last"] and resumed["epochs_run"] == 2
    _, straight_rows = run_in_process(tmp_path / "straight", tiny_mnist, *args, "train.mkldnn=false")
    assert_close_metrics(resumed_rows, straight_rows)


# ---------------------------------------------------------------- the rule


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


def test_apply_sets_threads_and_onednn(isolated_torch):
    perf.apply(perf.CpuSettings(threads=1, mkldnn=False))
    assert torch.get_num_threads() == 1 and torch.backends.mkldnn.enabled is False


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
        perf.match_state_layout(optimizer)
        assert optimizer.state[param]["momentum_buffer"].stride() == param.stride()
        optimizer.step()
        results.append(param.detach().contiguous())
    torch.testing.assert_close(results[0], results[1])


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
    assert 0.5 * perf.peak_rss_mb() < fallback < 2 * perf.peak_rss_mb() + 100  # MB either way, not KB or GB
