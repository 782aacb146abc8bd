"""Test helpers: tiny MNIST-format data written by the tests themselves, a CLI runner, a composed config."""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]


def write_idx_images(path: Path, images: np.ndarray) -> None:
    n, h, w = images.shape
    header = (2051).to_bytes(4, "big") + n.to_bytes(4, "big") + h.to_bytes(4, "big") + w.to_bytes(4, "big")
    path.write_bytes(header + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    n = labels.shape[0]
    path.write_bytes((2049).to_bytes(4, "big") + n.to_bytes(4, "big") + labels.astype(np.uint8).tobytes())


def make_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 28x28 'digits': class k lights up a bar at a class-specific place, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(n, 28, 28))
    for i, k in enumerate(labels):
        row = 2 + 2 * k
        images[i, row : row + 3, 4:24] = 200 + rng.integers(0, 55)
    return images, labels


def write_mnist(root: Path, n_train: int = 200, n_test: int = 100, name: str = "MNIST") -> Path:
    raw = root / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = make_digits(n, seed)
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None):
    """Runs ``python -m normexp.train`` with ``args``, as its own process; returns the CompletedProcess."""
    return run_cli_many([list(args)], env=env, cwd=cwd, timeout=timeout)[0]


def run_cli_many(arg_lists: list[list[str]], env: dict | None = None, workers: int = 4,
                 cwd: Path | None = None, timeout: float = 300) -> list:
    """``run_cli`` for each argument list, a few at a time, each in a child forked from one process that has
    imported torch, Hydra and normexp once (tests/cli_forks.py, kept running for the test session: most of
    a short run is those imports); with a PYTHONPATH of their own, real processes. Without NORMEXP_DATA_ROOT,
    as a user's fresh shell."""
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "1", **(env or {})}
    full_env.pop("NORMEXP_DATA_ROOT", None)
    command = [sys.executable, "-m", "normexp.train"]
    if "PYTHONPATH" in (env or {}):  # what runs at the interpreter's start (a sitecustomize) needs a real one
        from concurrent.futures import ThreadPoolExecutor

        def start(args: list[str]) -> subprocess.CompletedProcess:
            return subprocess.run([*command, *args], cwd=cwd or ROOT, env=full_env, capture_output=True,
                                  text=True, timeout=timeout)

        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(start, arg_lists))
    cases = [{"args": list(args), "env": full_env, "cwd": str(cwd or ROOT), "timeout": timeout}
             for args in arg_lists]
    results = _forks({"workers": workers, "cases": cases})
    return [subprocess.CompletedProcess([*command, *args], r["returncode"], r["stdout"], r["stderr"])
            for args, r in zip(arg_lists, results, strict=True)]


_server: list[subprocess.Popen] = []  # this test process's tests/cli_forks.py --serve, once started
_server_lock = threading.Lock()


def _forks(request: dict) -> list[dict]:
    with _server_lock:
        if not _server or _server[0].poll() is not None:
            env = {k: v for k, v in os.environ.items() if k != "NORMEXP_DATA_ROOT"}
            _server[:] = [subprocess.Popen([sys.executable, str(ROOT / "tests" / "cli_forks.py"), "--serve"],
                                           cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           text=True)]
            atexit.register(_server[0].stdin.close)
        server = _server[0]
        server.stdin.write(json.dumps(request) + "\n")
        server.stdin.flush()
        line = server.stdout.readline()
    assert line, "tests/cli_forks.py ended"
    return json.loads(line)


def compose_config(overrides: list[str] | tuple[str, ...] = (), hydra: bool = False) -> DictConfig:
    """The run configuration Hydra composes from ``conf/`` for these command-line overrides (with Hydra's own
    ``hydra`` node where asked)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def start_cli(*args: str, merge_output: bool = False) -> subprocess.Popen:
    """``python -m normexp.train ARGS`` started in the background from the project's root, without the
    NORMEXP_DATA_ROOT of CI's environment; its stderr into its stdout where ``merge_output``."""
    env = {k: v for k, v in os.environ.items() if k != "NORMEXP_DATA_ROOT"}
    stderr = subprocess.STDOUT if merge_output else subprocess.PIPE
    return subprocess.Popen([sys.executable, "-m", "normexp.train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=stderr, text=True)


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 120) -> None:
    """Polls ``condition`` until it holds; fails, with the process's output, if ``process`` ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the process ended before {what}:\n{(process.stderr or process.stdout).read()}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
