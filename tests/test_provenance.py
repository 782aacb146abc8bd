"""normexp.provenance: what a run records of the code and machine that trained it, one entry per change."""

from __future__ import annotations

import subprocess
import sys

import torch
from helpers import compose_config

from normexp import perf, provenance
from normexp.trainer import Trainer


def test_this_process_entry_names_the_code_torch_onednn_and_cpu():
    entry = provenance.current()
    assert set(entry) == {"normexp", "commit", "torch", "onednn", "cpu", "cores"}
    assert entry["torch"] == torch.__version__ and entry["onednn"] == perf.onednn_version()
    assert entry["cpu"] == perf.cpu_fingerprint()["model"] and entry["cores"] == perf.available_cores()
    commit = entry["commit"]
    assert commit is None or len(commit.removesuffix("-dirty")) == 40  # tests run from a clone: a commit
    assert provenance.current(torch.device("cpu")) == entry


def test_a_run_on_a_gpu_records_its_name(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    entry = provenance.current(torch.device("cuda", 0))
    assert entry == {**provenance.current(), "gpu": "NVIDIA H200"}


def test_an_entry_is_added_only_where_something_changed():
    now = provenance.current()
    assert provenance.extended(None) == [now]
    assert provenance.extended([now]) == [now]
    elsewhere = {**now, "cpu": "another CPU"}
    assert provenance.extended([elsewhere]) == [elsewhere, now]


def test_a_run_records_its_provenance_and_a_resume_on_other_machine_adds_to_it(tmp_path, tiny_mnist,
                                                                              monkeypatch):
    def cfg(epochs: int):
        return compose_config([f"data.root={tiny_mnist}", "data.download=false", "norm=gn", "batch_size=40",
                               f"train.epochs={epochs}", "train.threads=1", "train.progress=false"])

    first = Trainer(cfg(1), tmp_path, jobs=1).fit().summary
    assert first["provenance"] == [provenance.current()]
    again = Trainer(cfg(2), tmp_path, jobs=1).fit().summary  # resumed here: the same entry
    assert again["epochs_run"] == 2 and again["provenance"] == first["provenance"]
    moved = {**provenance.current(), "cpu": "another CPU"}
    monkeypatch.setattr(provenance, "current", lambda device=None: moved)
    resumed = Trainer(cfg(3), tmp_path, jobs=1).fit().summary
    assert resumed["epochs_run"] == 3 and resumed["provenance"] == [*first["provenance"], moved]


def test_peak_rss_is_this_processs_high_water_mark():
    code = ("import torch; from normexp import provenance; before = provenance.peak_rss_mb(); "
            "block = torch.ones(2**26); print(before, provenance.peak_rss_mb())")  # 256 MB touched
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
    fallback = provenance.peak_rss_mb()
    monkeypatch.undo()
    assert 0.5 * provenance.peak_rss_mb() < fallback < 2 * provenance.peak_rss_mb() + 100  # MB, not KB or GB
