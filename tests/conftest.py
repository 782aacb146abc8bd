"""Shared fixtures (helpers live in helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import write_mnist


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> Path:
    """A data root with 200 training and 100 test digits in torchvision's MNIST layout."""
    return write_mnist(tmp_path / "data")
