"""The measured CPU rule: the cache ``python -m normexp.tune`` writes, how ``perf.choose`` reads it (and falls
back without it), the tuner's decision on synthetic timings, and one tiny real measurement."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, run_cli

from normexp import perf, tune

CPU = torch.device("cpu")
S = perf.CpuSettings


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder of this test's own, on a machine with 8 cores."""
    monkeypatch.setenv(perf.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(perf, "available_cores", lambda: 8)
    return tmp_path / "cache"


def write_cache(cells: dict[str, dict[int, S]], **changes) -> str:
    """A cache for this machine holding ``cells`` (family -> batch size -> settings); returns its name."""
    content = {"schema": perf.CACHE_SCHEMA, "key": perf.cache_key(), "families": {
        family: {str(bs): {**s.as_dict(), "verdict": "measured"} for bs, s in by_size.items()}
        for family, by_size in cells.items()}, **changes}
    tune.save(perf.cache_path(), content)
    return perf.cache_path().name


# ---------------------------------------------------------------- settings and the cache


def test_settings_round_trip_through_a_dict_and_their_source_is_not_part_of_equality():
    settings = S(3, True, True, source="cpu-settings-0123.json")
    assert settings.as_dict() == {"threads": 3, "mkldnn": True, "channels_last": True,
                                  "source": "cpu-settings-0123.json"}
    back = S.from_dict(json.loads(json.dumps(settings.as_dict())))
    assert back == settings and back.source == settings.source
    assert S(3, True, True) == settings and hash(S(3, True, True)) == hash(settings)
    assert S.from_dict({"threads": 1, "mkldnn": False}) == S(1, False, False)
    for bad in ({"threads": 0, "mkldnn": True}, {"threads": 2, "mkldnn": "yes"}, {"mkldnn": True}, None):
        with pytest.raises(ValueError):
            S.from_dict(bad)


def test_measured_settings_round_trip_through_the_cache(cache):
    name = write_cache({"gn": {64: S(4, False, False), 256: S(8, True, True)},
                        "bn": {64: S(8, True, False)}})
    assert perf.cache_path().parent == cache and name.startswith("cpu-settings-")
    chosen = perf.choose(64, CPU, family="gn")
    assert chosen == S(4, False, False) and chosen.source == name
    assert perf.choose(256, CPU) == S(8, True, True)  # family "gn" by default
    assert perf.choose(64, CPU, family="bn") == S(8, True, False)
    fallback = perf.choose(64, CPU, family="none")  # a family not measured: the built-in rule
    assert fallback == perf.fallback(64, 8) and fallback.source == "fallback"
    assert tune.existing(perf.cache_path())["families"]["gn"]["64"]["threads"] == 4


def test_a_cache_measured_on_another_machine_is_not_used(cache, monkeypatch, caplog):
    real = perf.cpu_fingerprint()
    monkeypatch.setattr(perf, "cpu_fingerprint", lambda: {**real, "model": "Some Other CPU"})
    write_cache({"gn": {256: S(1, False, False)}})
    monkeypatch.undo()
    monkeypatch.setenv(perf.CACHE_ENV, str(cache))
    monkeypatch.setattr(perf, "available_cores", lambda: 8)
    with caplog.at_level(logging.WARNING, logger="normexp"):
        assert perf.choose(256, CPU) == perf.fallback(256, 8)
    assert caplog.records == []  # another machine's file is another file: nothing to warn about
    assert len(list(cache.iterdir())) == 1 and not perf.cache_path().exists()


def test_the_cache_key_holds_the_fingerprint_and_normexps_version(cache):
    key = perf.cache_key()
    assert key == {"fingerprint": perf.cpu_fingerprint(), "normexp": perf.normexp_version()}
    assert key["fingerprint"]["cores"] == 8 and key["normexp"] != "unknown"  # installed in the venv


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("{not json", "Expecting property name"),
        (json.dumps({"schema": 2, "families": {}}), "schema 2"),
        (json.dumps([1, 2]), "not a normexp CPU settings cache"),
        ("FOREIGN_KEY", "another machine or normexp version"),
        ("BAD_CELL", "not CPU settings"),
    ],
    ids=["corrupt-json", "other-schema", "not-a-cache", "foreign-key", "bad-cell"],
)
def test_a_corrupt_or_foreign_cache_gets_one_warning_line_and_the_fallback(cache, caplog, content, why):
    path = perf.cache_path()
    if content == "FOREIGN_KEY":  # the right file name, someone else's content
        write_cache({"gn": {256: S(1, False, False)}}, key={"fingerprint": {}, "normexp": "0.0.1"})
    elif content == "BAD_CELL":
        write_cache({}, families={"gn": {"256": {"threads": -1, "mkldnn": True}}})
    else:
        path.parent.mkdir(parents=True)
        path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="normexp"):
        for _ in range(3):  # a run asks for its training and its evaluation settings: still one line
            chosen = perf.choose(256, CPU)
            assert chosen == perf.fallback(256, 8) and chosen.source == "fallback"
    [record] = caplog.records
    message = record.getMessage()
    assert str(path) in message and why in message and "\n" not in message


def test_a_cache_rewritten_after_a_warning_is_read_again(cache, caplog):
    path = perf.cache_path()
    path.parent.mkdir(parents=True)
    path.write_text("{")
    assert perf.choose(256, CPU).source == "fallback"
    write_cache({"gn": {256: S(2, True, False)}})
    assert perf.choose(256, CPU) == S(2, True, False)


@pytest.mark.parametrize(
    ("batch_size", "nearest"),
    [(1, 2), (2, 2), (3, 2), (4, 2), (8, 2), (11, 2), (12, 64), (16, 64), (64, 64), (250, 64), (4096, 64)],
)
def test_a_batch_size_not_measured_takes_the_nearest_measured_one_in_log2(cache, batch_size, nearest):
    # log2: 2 -> 1, 64 -> 6; the midpoint 3.5 is batch size 11.3
    write_cache({"gn": {2: S(1, False, False), 64: S(8, True, True)}})
    expected = {2: S(1, False, False), 64: S(8, True, True)}[nearest]
    assert perf.choose(batch_size, CPU) == expected


def test_a_tie_in_log2_goes_to_the_smaller_batch_size():
    assert perf.nearest(8, [4, 16]) == 4 and perf.nearest(8, {16, 4}) == 4
    assert perf.nearest(250, [1, 2, 4, 16, 32, 64, 128, 256]) == 256
    assert perf.nearest(250, [128, 250, 256]) == 250


def test_explicit_settings_win_over_the_measurement(cache):
    write_cache({"gn": {64: S(1, False, False), 256: S(8, True, True)}})
    assert perf.choose(64, CPU, threads=3) == S(3, False, False)
    # oneDNN forced where the measurement says native: the fallback's layout for that batch size
    assert perf.choose(64, CPU, mkldnn=True) == S(1, True, True)
    assert perf.choose(16, CPU, mkldnn=True) == S(1, True, False)
    assert perf.choose(256, CPU, threads=2, mkldnn=False) == S(2, False, False)
    assert perf.choose(256, CPU, mkldnn=True) == S(8, True, True)


def test_a_jobs_share_of_the_cores_caps_the_measured_threads(cache):
    write_cache({"gn": {256: S(8, True, True), 2: S(2, False, False)}})
    assert perf.choose(256, CPU, jobs=2) == S(4, True, True)
    assert perf.choose(256, CPU, jobs=8).threads == 1
    assert perf.choose(2, CPU, jobs=2) == S(2, False, False)  # fewer than the share: as measured
    assert perf.choose(2, CPU, jobs=8).threads == 1
    assert perf.choose(256, CPU, threads=6, jobs=2).threads == 6  # explicit threads are the user's call


def test_the_plain_path_never_runs_in_channels_last(cache):
    write_cache({"gn": {b: S(8, True, True) for b in (1, 16, 256)}})
    for batch_size in (1, 16, 256):
        assert perf.choose(batch_size, CPU) == S(8, True, True)
        assert perf.choose(batch_size, CPU, fast=False) == S(8, True, False)
    assert perf.choose(256, CPU, fast=False, mkldnn=True).channels_last is False


def test_a_gpu_run_ignores_the_cpu_measurement(cache):
    write_cache({"gn": {256: S(1, False, True)}})
    assert perf.choose(256, torch.device("cuda")) == S(8, True, False)


def test_norms_sharing_kernels_are_measured_once_for_their_family():
    sweep_norms, sweep_sizes = tune.sweep()
    assert tune.families(sweep_norms) == {"none": "none", "bn": "bn", "gn": "gn"}  # brn runs bn's kernels
    assert tune.families(["ln", "in", "brn", "gn"]) == {"gn": "ln", "bn": "brn"}
    assert sweep_sizes == [256, 128, 64, 32, 16, 4, 2, 1]


def test_a_family_nothing_was_measured_for_gets_the_fallback(cache):
    write_cache({"gn": {256: S(1, False, False)}, "elementwise": {256: S(2, False, False)}})
    assert perf.choose(256, CPU, family="elementwise") == S(2, False, False)
    assert perf.choose(256, CPU, family="custom") == perf.fallback(256, 8)


# ---------------------------------------------------------------- the decision, on synthetic timings


FALLBACK, OTHER, THIRD = S(2, False, False), S(1, False, False), S(2, True, True)


def test_a_clear_win_departs_from_the_fallback():
    rates = {FALLBACK: [1000, 1010, 990, 1005, 995], OTHER: [1200, 1190, 1210, 1205, 1195],
             THIRD: [900, 905, 895, 910, 890]}
    decision = tune.decide(rates, FALLBACK)
    assert decision.settings == OTHER and decision.verdict == "measured"
    assert decision.margin == pytest.approx(0.2) and decision.noise == pytest.approx(0.01)


def test_a_win_within_the_noise_keeps_the_fallback():
    rates = {FALLBACK: [1000, 1100, 900, 1050, 950], OTHER: [1080, 1000, 1160, 1040, 1120]}
    decision = tune.decide(rates, FALLBACK)  # +8 % at the median, blocks spreading +-10 %
    assert decision.best == OTHER and decision.margin == pytest.approx(0.08)
    assert decision.settings == FALLBACK and decision.verdict == "fallback"
    assert decision.noise == pytest.approx(0.1)


def test_a_loss_or_a_tie_keeps_the_fallback():
    assert tune.decide({FALLBACK: [1000, 1001], OTHER: [900, 901]}, FALLBACK).verdict == "fallback"
    tie = tune.decide({FALLBACK: [1000, 1000], OTHER: [1000, 1000]}, FALLBACK)
    assert tie.settings == tie.best == FALLBACK and tie.margin == 0


def test_blocks_spreading_too_much_keep_the_fallback_as_too_busy():
    rates = {FALLBACK: [1000, 1500, 700, 1200, 600], OTHER: [1300, 800, 1600, 1100, 900]}
    decision = tune.decide(rates, FALLBACK)
    assert decision.settings == FALLBACK and decision.verdict == "too busy" and decision.noise > tune.TOO_BUSY
    # even a win larger than that noise: a busy machine measures its neighbours more than the kernels
    busy = tune.decide({FALLBACK: [1000, 1500, 700], OTHER: [3000, 3100, 2900]}, FALLBACK)
    assert busy.verdict == "too busy" and busy.settings == FALLBACK and busy.best == OTHER
    assert busy.margin == pytest.approx(2.0) and busy.noise == pytest.approx(0.4)
    # the spread that counts is the best's and the fallback's: a third candidate's does not stop a decision
    rates = {FALLBACK: [1000, 1010, 990], OTHER: [1200, 1190, 1210], THIRD: [10, 900, 500]}
    assert tune.decide(rates, FALLBACK).verdict == "measured"


def test_candidates_cover_threads_and_both_convolutions_in_both_layouts():
    assert tune.candidates(2) == [S(t, m, c) for t in (1, 2) for m, c in ((0, 0), (1, 0), (1, 1))]
    assert sorted({c.threads for c in tune.candidates(12)}) == [1, 2, 4, 8, 12]
    assert all(c.mkldnn for c in tune.candidates(4) if c.channels_last)  # channels-last only with oneDNN


def test_too_busy_cells_say_so_keep_the_fallback_and_are_measured_next_time(cache, monkeypatch, capsys):
    """The whole command with the timing replaced by noise: nothing is decided, and it says why."""
    measured = []

    def noisy(cell, cfg, cands, block_seconds, repeats, bar):
        measured.append(cell.batch_size)
        return {c: [1000.0, 1600.0, 600.0] for c in cands}

    monkeypatch.setattr(tune, "measure", noisy)
    assert tune.main(["--norms", "gn,ln", "--batch-sizes", "4,64", "--seconds", "1"]) == 0
    out = capsys.readouterr().out
    assert "too busy to decide at 2 of 2 cells (gn bs 4, gn bs 64)" in out and "fallback kept" in out
    cells = json.loads(perf.cache_path().read_text())["families"]["gn"]
    assert {bs: cell["verdict"] for bs, cell in cells.items()} == {"4": "too busy", "64": "too busy"}
    assert perf.choose(64, CPU) == perf.fallback(64, 8)
    assert tune.main(["--norms", "gn", "--batch-sizes", "4"]) == 0  # not decided: measured again
    assert measured == [4, 64, 4]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--norms", "gn,foo"], "--norms=gn,foo: 'foo' is unknown; allowed: none, bn, brn, gn, ln, in"),
        (["--norms", ","], "--norms=,: '' is unknown"),
        (["--batch-sizes", "2,0"], "--batch-sizes=2,0: comma-separated integers >= 1"),
        (["--batch-sizes", "a"], "--batch-sizes=a: comma-separated integers >= 1"),
        (["--seconds", "0"], "--seconds=0.0: must be a number > 0"),
        (["--repeats", "1"], "--repeats=1: must be an integer >= 2"),
        (["--what"], "unrecognized arguments: --what"),
    ],
)
def test_bad_arguments_get_one_line_and_exit_status_2(capsys, args, says):
    with pytest.raises(SystemExit) as done:
        tune.main(args)
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.startswith("normexp: error: ") and says in err
    assert err.count("\n") == 1


# ---------------------------------------------------------------- one tiny real measurement


def test_a_tiny_real_measurement_writes_the_cache_that_runs_then_read(tmp_path):
    env = {**os.environ, perf.CACHE_ENV: str(tmp_path)}
    command = [sys.executable, "-m", "normexp.tune", "--batch-sizes", "2", "--norms", "gn", "--seconds", "1",
               "--repeats", "2"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "measuring 1 cells x" in done.stdout and "gn   bs   2" in done.stdout
    [path] = tmp_path.iterdir()
    content = json.loads(path.read_text())
    assert content["schema"] == perf.CACHE_SCHEMA and set(content["families"]) == {"gn"}
    cell = content["families"]["gn"]["2"]
    assert cell["verdict"] in ("measured", "fallback", "too busy") and cell["work"] == "training"
    assert len(cell["samples_per_s"]) == len(tune.candidates(perf.available_cores()))
    assert all(len(r) == 2 and min(r) > 0 for r in cell["samples_per_s"].values())
    code = ("import torch; from normexp import perf; "
            "print(perf.choose(2, torch.device('cpu'), family='gn').source)")
    ran = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert ran.stdout.strip() == path.name
    shown = subprocess.run(command[:3] + ["--show"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert shown.returncode == 0 and str(path) in shown.stdout and "fallback" in shown.stdout
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    # a cell the machine was too busy to decide is measured again; a decided one is kept
    assert again.returncode == 0
    assert ("measuring 1 cells" if cell["verdict"] == "too busy" else "nothing to measure") in again.stdout


# ---------------------------------------------------------------- on first use


def first_use_config(root, batch_size: int = 4, seconds: float = 1.5, **train):
    from normexp import config

    overrides = ["norm=gn", f"batch_size={batch_size}", f"data.root={root}", "data.download=false",
                 "train.device=cpu", f"train.autotune={seconds}", "train.eval_batch_size=50",
                 *(f"train.{k}={v}" for k, v in train.items())]
    return config.compose_config(overrides)


@pytest.fixture
def three_candidates(monkeypatch):
    """Measuring on first use with three candidates, the fallbacks among them (the mechanism, not the
    candidate list, is under test)."""
    monkeypatch.setattr(tune, "candidates", lambda n: [S(1, False), S(n, False), S(n, True, True)])


def test_a_run_measures_its_unmeasured_cells_once_and_caches_them_as_first_use(cache, tiny_mnist,
                                                                                three_candidates):
    lines = tune.first_use(first_use_config(tiny_mnist), jobs=1)
    assert len(lines) == 2 and "gn bs 4 measured on first use in" in lines[0]
    assert "gn bs 50 (eval) measured on first use in" in lines[1]
    content = json.loads(perf.cache_path().read_text())
    cells = content["families"]["gn"]
    assert set(cells) == {"4", "50"} and cells["50"]["work"] == "evaluation"
    for cell in cells.values():
        assert cell["measured_by"] == "first use" and 0 < cell["seconds"] < 30
        assert cell["cores"] == perf.available_cores()
        assert set(cell["samples_per_s"]) == {"1 thread, native, NCHW", "8 threads, native, NCHW",
                                              "8 threads, oneDNN, NHWC"}
        assert all(len(rates) == tune.FIRST_USE_REPEATS for rates in cell["samples_per_s"].values())
    chosen = perf.choose(4, torch.device("cpu"), family="gn")
    assert chosen.source.startswith(perf.cache_path().name + ", measured on first use in ")
    assert tune.first_use(first_use_config(tiny_mnist), jobs=1) == []  # cached: nothing measured again
    assert tune.first_use(first_use_config(tiny_mnist, batch_size=8), jobs=2)[0].startswith(
        "CPU settings for gn bs 8 measured")  # another cell, under a 2-job sweep's share of the cores
    eight = json.loads(perf.cache_path().read_text())["families"]["gn"]["8"]
    assert eight["cores"] == 4 and "4 threads, oneDNN, NHWC" in eight["samples_per_s"]


def test_first_use_measures_nothing_where_it_is_off_or_the_settings_are_given(cache, tiny_mnist):
    for cfg in (first_use_config(tiny_mnist, seconds=0),
                first_use_config(tiny_mnist, threads=1, mkldnn="false")):
        assert tune.first_use(cfg, jobs=1) == []
    assert not perf.cache_path().exists()


def test_a_first_run_on_an_empty_cache_trains_with_measured_settings(tmp_path, tiny_mnist):
    """(All the candidates, on this machine's cores; one cell: the batch size is the evaluation's.)"""
    run_dir = tmp_path / "run"
    result = run_cli("norm=gn", "batch_size=4", f"data.root={tiny_mnist}", "train.epochs=1",
                     "train.eval_batch_size=4", "train.autotune=1", "train.device=cpu",
                     f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert ", measured on first use in " in summary["cpu_settings_from"]
    assert ", measured on first use in " in summary["eval_cpu_settings"]["source"]
    assert "CPU settings for gn bs 4 (eval) measured on first use in" in (run_dir / "train.log").read_text()


def test_jobs_of_one_cell_measure_it_once_the_others_wait_and_read_it(cache, tiny_mnist, three_candidates):
    from concurrent.futures import ThreadPoolExecutor

    cfg = first_use_config(tiny_mnist)
    with ThreadPoolExecutor(2) as pool:  # flock keeps two open files apart, in one process as in two
        results = list(pool.map(lambda _: tune.first_use(cfg, jobs=2), range(2)))
    measured = [line.split(" measured")[0] for lines in results for line in lines]
    assert sorted(measured) == ["CPU settings for gn bs 4", "CPU settings for gn bs 50 (eval)"]  # each once
    assert set(json.loads(perf.cache_path().read_text())["families"]["gn"]) == {"4", "50"}


# ---------------------------------------------------------------- the dry run


def test_the_dry_run_estimates_a_sweep_from_the_measurements_in_launch_order(cache, tiny_mnist):
    def cell(rate: float, work: str) -> dict:
        return {**S(1, False).as_dict(), "verdict": "measured", "work": work,
                "samples_per_s": {"1 thread, native, NCHW": [rate * 0.9, rate, rate * 1.1]}}

    cells = {"2": cell(20.0, "training"), "8": cell(100.0, "training"), "250": cell(1000.0, "evaluation")}
    tune.save(perf.cache_path(), {**tune.empty_cache(), "families": {"gn": cells}})
    sweep = ["norm=gn", "batch_size=8,2", "train.epochs=3", f"data.root={tiny_mnist}"]
    lines = tune.estimate([*sweep, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])
    # 200 training digits at 20 (bs 2) and 100 (bs 8) samples/s, 100 test digits at 1000/s, 3 epochs each
    assert lines[0].split()[:4] == ["batch_size=2,norm=gn", "3", "epochs", "x"]  # the longest first
    assert "30s" in lines[0] and "6s" in lines[1]  # 3 x (10 + 0.1) s and 3 x (2 + 0.1) s
    assert lines[-1].startswith("2 jobs, 2 at a time (LongestFirstSweeper, 200 training digits): about 30s")
    one_at_a_time = tune.estimate(sweep)[-1]  # the basic launcher
    assert "1 at a time" in one_at_a_time and "about 37s on this machine" in one_at_a_time
    unmeasured = tune.estimate(["norm=bn", "batch_size=8", f"data.root={tiny_mnist}"])
    assert "not measured here (bn): python -m normexp.tune" in unmeasured[0]


# ---------------------------------------------------------------- packed seeds


def test_auto_packs_seeds_on_cpu_only_where_the_measurement_found_packing_cheaper(cache):
    def cell(wins: bool | None) -> dict:
        packed = {} if wins is None else {"packed": {"seeds": 3, "cost": 2.3 if wins else 3.4, "wins": wins}}
        return {**S(1, False).as_dict(), "verdict": "measured", **packed}

    gn = {"1": cell(True), "4": cell(True), "64": cell(False), "256": cell(None)}
    tune.save(perf.cache_path(), {**tune.empty_cache(), "families": {"gn": gn, "bn": {"4": cell(None)}}})
    auto = [perf.pack_size("auto", CPU, 3, "gn", bs) for bs in (1, 2, 4, 16, 64, 256)]
    assert auto == [3, 3, 3, 3, 1, 1]  # the nearest cell with a packing measurement (256 has none: 64's)
    assert perf.pack_size("auto", CPU, 3, "bn", 4) == 1  # nothing measured for bn's packing: one at a time
    assert perf.pack_size(2, CPU, 3, "bn", 4) == 2 and perf.pack_size("auto", torch.device("cuda"), 3) == 3


def test_a_job_of_seeds_measures_on_first_use_whether_packing_wins(cache, tiny_mnist, three_candidates):
    cfg = first_use_config(tiny_mnist, seeds="[0,1,2]")
    lines = tune.first_use(cfg, jobs=1)
    assert "seeds packed cost" in lines[0] and "(eval)" in lines[1] and "packed cost" not in lines[1]
    packed = json.loads(perf.cache_path().read_text())["families"]["gn"]["4"]["packed"]
    assert packed["seeds"] == 3 and packed["cost"] > 0 and packed["wins"] == (packed["cost"] * (
        1 + packed["noise"]) < 3)
    assert perf.pack_size("auto", CPU, 3, "gn", 4) == (3 if packed["wins"] else 1)
    assert tune.first_use(cfg, jobs=1) == []  # measured: not again
