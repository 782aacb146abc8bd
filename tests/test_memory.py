"""A process's peak resident memory."""

from __future__ import annotations

import subprocess
import sys

from normexp import memory


def test_peak_rss_is_this_processs_high_water_mark():
    code = ("import torch; from normexp import memory; before = memory.peak_rss_mb(); "
            "block = torch.ones(2**26); print(before, memory.peak_rss_mb())")  # 256 MB touched
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
    fallback = memory.peak_rss_mb()
    monkeypatch.undo()
    assert 0.5 * memory.peak_rss_mb() < fallback < 2 * memory.peak_rss_mb() + 100  # MB, not KB or GB
