"""scripts/bench.py in a tiny form: it runs, prints its table and the sweep estimate, and writes its JSON.
No timing is asserted: only that the numbers are there and consistent with each other."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch
from helpers import ROOT

from normexp import perf

BENCH = ROOT / "scripts" / "bench.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_tiny_benchmark_prints_its_table_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    done = run_bench("--norms", "none,bn,brn,gn", "--batch-sizes", "2", "--steps", "2", "--repeats", "2",
                     "--jobs", "2", "--synthetic-size", "256,128", "--json", str(out))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| norm | batch size |"))
    rows = lines[header + 2 : header + 6]
    assert [tuple(cell.strip() for cell in row.split("|")[1:3]) for row in rows] == [
        (n, "2") for n in ("none", "bn", "brn", "gn")
    ]
    assert any(line.startswith("mcn_sweep estimate (32 runs, 2 side by side") for line in lines)

    result = json.loads(out.read_text())
    assert len(result["rows"]) == 4 and len(result["probes"]) == 4
    for row in result["rows"]:
        assert row["normexp_samples_per_s"] > 0 and row["reference_samples_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["normexp_samples_per_s"] / row["reference_samples_per_s"])
        assert len(row["samples_per_s"]["normexp"]) == len(row["samples_per_s"]["reference"]) == 2
        assert row["steps_per_block"] == 2 and row["peak_rss_mb"] > 0
        # an epoch: the 256 training digits' 128 steps at the median step time, then the median evaluation
        for loop in ("normexp", "reference"):
            assert len(row["eval_seconds"][loop]) == 3 and min(row["eval_seconds"][loop]) > 0
            assert row[f"{loop}_epoch_s"] == pytest.approx(
                128 * row[f"{loop}_ms_per_step"] / 1e3 + statistics.median(row["eval_seconds"][loop]))
        assert row["epoch_ratio"] == pytest.approx(row["reference_epoch_s"] / row["normexp_epoch_s"])
        # the table's normexp side runs alone on the box, with the trainer's settings for its batch size
        expected = perf.choose(row["batch_size"], torch.device("cpu"))
        assert row["normexp_settings"] == {**asdict(expected), "fused_sgd": True}
    sweep = result["sweep"]
    assert len(sweep["runs"]) == 32 and sweep["jobs"] == 2
    assert sum(r["measured"] for r in sweep["runs"]) == 4  # batch size 2 of each norm
    assert sweep["job_hours"] / 2 <= sweep["wall_hours"] <= sweep["job_hours"]
    epochs = {(r["norm"], r["batch_size"]): r["epochs"] for r in sweep["runs"]}
    assert epochs[("gn", 1)] == 10 and epochs[("bn", 256)] == 30


def test_the_packed_mode_prints_its_table_and_writes_json(tmp_path):
    out = tmp_path / "packed.json"
    done = run_bench("--packed", "--norms", "gn", "--batch-sizes", "2", "--steps", "2", "--repeats", "3",
                     "--synthetic-size", "256,128", "--json", str(out))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| norm | batch size | 1 seed"))
    assert lines[header + 2].startswith("| gn | 2 |")
    assert any(line.startswith("mcn_sweep, 3 seeds, complete MNIST") for line in lines)
    (row,) = json.loads(out.read_text())["rows"]
    assert all(len(row["ms_per_step"][k]) == 3 for k in ("one", "sequential", "packed"))
    assert row["packed_price"] == pytest.approx(row["packed_ms_per_step"] / row["one_ms_per_step"])
    assert row["seeds"] == 3 and not row["rule_packs"]  # on CPU the rule runs seeds one after another


def test_bad_arguments_are_one_line_errors():
    done = run_bench("--batch-sizes", "0,4")
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "normexp: error: --batch-sizes=0,4: comma-separated integers >= 1"
    ]
    done = run_bench("--norms", "gn,xx")
    assert done.returncode == 2 and done.stderr.startswith("normexp: error: --norms=gn,xx: 'xx' is unknown")


def test_sweep_estimate_schedules_runs_in_order_on_the_free_worker():
    bench = load_bench()
    assert bench.list_schedule([4, 1, 1, 1, 1], 2) == 4
    assert bench.list_schedule([1, 1, 1, 1, 4], 2) == 6
    assert bench.list_schedule([3, 2, 1], 1) == 6


def test_sweep_estimate_adds_training_evaluation_checkpoint_and_start_up():
    bench = load_bench()
    probe = {"samples_per_s": 1000.0, "eval_seconds": 1.0, "test_size": 1000, "checkpoint_seconds": 0.5,
             "startup_seconds": 4.0, "train_size": 60000}
    probes = {("gn", 1): probe, ("gn", 4): {**probe, "samples_per_s": 4000.0}}
    estimate = bench.sweep_estimate(probes, [("gn", 1, 10), ("gn", 2, 30), ("gn", 4, 30)], jobs=1)
    # per epoch: 60,000 samples at the rate + 10 s evaluating 10,000 test digits + 0.5 s checkpoint
    seconds = [4 + 10 * (60 + 10.5), 4 + 30 * (30 + 10.5), 4 + 30 * (15 + 10.5)]  # bs 2: log-interpolated
    assert [r["hours"] * 3600 for r in estimate["runs"]] == pytest.approx(seconds)
    assert estimate["wall_hours"] == pytest.approx(sum(seconds) / 3600)
    assert [r["measured"] for r in estimate["runs"]] == [True, False, True]
    assert bench.sweep_estimate(probes, [("bn", 1, 10)], jobs=2) == {"jobs": 2, "missing_norms": ["bn"]}
    assert math.isclose(bench.seconds_per_sample(probes, "gn", 2), 1 / 2000)
