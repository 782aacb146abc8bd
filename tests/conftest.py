"""Shared fixtures (helpers live in helpers.py)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
from helpers import write_mnist

# Before any fixture, session- and module-scoped ones included (their runs start before the per-test fixture
# below): an empty CPU-settings cache of the session's own, and no measuring on first use
os.environ["NORMEXP_CACHE_DIR"] = tempfile.mkdtemp(prefix="normexp-test-cache-")
os.environ["NORMEXP_AUTOTUNE"] = "0"


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> Path:
    """A data root with 200 training and 100 test digits in torchvision's MNIST layout."""
    return write_mnist(tmp_path / "data")


@pytest.fixture
def float64():
    """torch's default dtype float64 for the test, float32 again after it."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


@pytest.fixture(autouse=True)
def no_measured_cpu_settings(tmp_path_factory, monkeypatch):
    """Every test (and every CLI run it starts) sees an empty CPU-settings cache: the built-in rule, whatever
    ``python -m normexp.tune`` measured on this machine; and no measuring on first use (train.autotune's
    default is 0 under NORMEXP_AUTOTUNE=0), which the tests of it ask for."""
    monkeypatch.setenv("NORMEXP_CACHE_DIR", str(tmp_path_factory.mktemp("cpu_cache")))
    monkeypatch.setenv("NORMEXP_AUTOTUNE", "0")
