"""The trainer against its golden record: the same numbers across any change that must keep them.

And a job of train.seeds: seeds of one configuration in one job, each exactly its own run (below).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from golden.record import CASES, RECORD, run_case
from helpers import ROOT, compose_config, run_cli, run_cli_many, write_mnist
from steptrace import STEPS, differences, layer_values, statistics, trace

from normexp import data, norm, perf, steps, trainer
from normexp.model import part_of
from normexp.trainer import Trainer

GOLDEN = json.loads(RECORD.read_text())
# On the CPU the record was made on, runs must repeat it exactly. On another CPU other kernels round
# differently: per step the paths differ by up to 1024 float32 eps (see test_perf), and these runs of at most
# 30 steps at learning rates of at most 0.0016 grow that less than 8-fold; an arg-max may flip where two
# logits are within rounding of each other, at most 2 examples here. Instance norm's logits are rounding
# noise (its 1x1 layer outputs 0 up to rounding), so its errors are only compared on the recording CPU.
SAME_CPU = {k: v for k, v in GOLDEN["cpu"].items() if k != "cores"} == {
    k: v for k, v in perf.cpu_fingerprint().items() if k != "cores"
}
LOSS_RTOL = 8 * 1024 * 2.0**-23
EXACT = ("epoch", "step", "lr", "r_max", "d_max")


@pytest.mark.parametrize("case", list(CASES))
def test_short_runs_repeat_the_golden_record(tmp_path, tiny_mnist, case):
    rows = run_case(CASES[case], tiny_mnist, tmp_path / "run")
    expected = GOLDEN["runs"][case]
    if SAME_CPU:
        assert rows == expected
        return
    assert [{k: r[k] for k in EXACT} for r in rows] == [{k: r[k] for k in EXACT} for r in expected]
    for row, want in zip(rows, expected, strict=True):
        for key in ("train_loss", "val_loss"):
            assert row[key] == pytest.approx(want[key], rel=LOSS_RTOL), (row["epoch"], key)
        if not case.startswith("in-"):
            assert abs(row["train_error"] - want["train_error"]) <= 2 / 200 + 1e-12
            assert abs(row["val_error"] - want["val_error"]) <= 2 / 100 + 1e-12


def test_each_protocol_is_recorded_in_the_summary_and_the_results_table(tmp_path, tiny_mnist):
    from helpers import compose_config

    from normexp.analysis import results
    from normexp.trainer import Trainer

    code = ["optim.scaling=none", "optim.factors=autonn", "norm.moments=matconvnet"]
    for name, extra in (("text", []), ("code", code)):
        cfg = compose_config([f"data.root={tiny_mnist}", "data.download=false", "norm=bn", "batch_size=40",
                              "train.epochs=1", "train.threads=1", "train.progress=false", *extra])
        (tmp_path / name).mkdir()
        summary = Trainer(cfg, tmp_path / name, jobs=1).fit().summary
        assert summary["status"] == "completed" and summary["protocol"] == name
        assert summary["protocol_settings"]["norm.moments"] == ("matconvnet" if extra else "pytorch")
        assert summary["lr"] == (0.01 if extra else 0.01 * 40 / 256)
    df = results.runs(results.load([tmp_path]))
    assert sorted(df["protocol"]) == ["code", "text"] and sorted(df["variant"]) == ["bn [code]", "bn [text]"]


def test_a_resumed_run_keeps_its_cpu_settings_and_records_where_they_came_from(tmp_path, tiny_mnist,
                                                                               monkeypatch):
    from helpers import compose_config

    from normexp import perf
    from normexp.trainer import Trainer

    def cfg(epochs: int):
        return compose_config([f"data.root={tiny_mnist}", "data.download=false", "norm=gn", "batch_size=40",
                               f"train.epochs={epochs}", "train.progress=false"])

    first = Trainer(cfg(1), tmp_path, jobs=1).fit().summary
    assert first["cpu_settings_from"] == "fallback"  # the tests' cache folder is empty
    assert first["eval_cpu_settings"]["source"] == "fallback"
    other = perf.CpuSettings(threads=1, mkldnn=not first["mkldnn"], source="normexp-cpu-elsewhere.json")
    monkeypatch.setattr(perf, "choose", lambda *args, **kwargs: other)
    resumed = Trainer(cfg(2), tmp_path, jobs=1).fit().summary  # the rule has changed since: not for this run
    assert resumed["epochs_run"] == 2 and resumed["mkldnn"] == first["mkldnn"]
    assert (resumed["threads"], resumed["channels_last"]) == (first["threads"], first["channels_last"])
    (tmp_path / "fresh").mkdir()
    fresh = Trainer(cfg(1), tmp_path / "fresh", jobs=1).fit().summary
    assert fresh["mkldnn"] == other.mkldnn and fresh["cpu_settings_from"] == "normexp-cpu-elsewhere.json"


# ---------------------------------------------------------------- a job of train.seeds
#
# A packed seed computes what its solo run computes in other kernels (grouped convolutions, a mean over the
# batch per seed), so the two may differ by rounding only. The comparisons run in float64, where that rounding
# is 2**29 times smaller than in float32: in float32 it is the same size as the jumps of the network's
# discontinuities (max pooling's gradient moves to another position when two values of a window swap order;
# batch norm over two values per channel has a slope of 1 / sqrt(eps), 100 or more, where they nearly tie),
# which a few steps may already cross, so that no float32 bound holds on every CPU. In float64 the bound is
# tests/steptrace.py's with 2**16 float64 eps in place of float32's (1024 x 2**-36, 1.5e-8 normwise per
# tensor): three steps through those slopes amplify 1e-16 to at most 5e-10 here (batch renorm at batch size 2,
# the worst case measured), while a wrong formula shows at 1e-3 or more (the differences tests/test_perf.py
# plants). Whole runs of a few hundred steps are allowed 1e-10 relative in their losses and no difference in
# their errors, where no norm reaches a near tie of two values: batch norm and renorm at batch size 8.

SEEDS = [0, 1, 2]
PACKED = "train.pack_size=3"  # on CPU the rule trains seeds one after another: packing is asked for
WHOLE_RUN_RTOL = 1e-10
STEP_EPS = 2.0**-36  # steptrace's bound is 1024 of these
NORMS = {  # every built-in norm that packs, with the settings that make packing hardest
    "none": [], "bn": [], "bn-matconvnet": ["norm=bn", "norm.moments=matconvnet"],
    "brn": ["norm.moments=matconvnet"],
    "gn": [], "ln": [], "in": [], "frn": ["norm.learn_eps=true"], "ws_gn": [], "evonorm_s0": [],
}
# per-seed schedules: the first-image clock differs between seeds, the ramp moves every step
BRN_PER_STEP = ["norm.schedule.unit=step", "norm.schedule.warmup=20", "norm.schedule.ramp=100"]


def config(data_root, name, *extra, batch_size=2, epochs=2):
    base = [] if name.startswith("bn-") else [f"norm={name}"]
    return compose_config([*base, *NORMS.get(name, []), *extra, f"data.root={data_root}",
                           "data.download=false", f"batch_size={batch_size}", f"train.epochs={epochs}",
                           "train.threads=1", "train.progress=false"])


def metrics(run_dir):
    return pd.read_csv(run_dir / "metrics.csv")


def solo_metrics(cfg, tmp_path, seed):
    return metrics(solo_run(cfg, tmp_path, seed))


def solo_run(cfg, tmp_path, seed):
    run_dir = tmp_path / f"solo{seed}"
    Trainer(trainer.seed_config(cfg, seed), run_dir, jobs=1).fit()
    return run_dir


def packed_traces(cfg) -> list[dict]:
    """steptrace.trace for each seed of train.seeds, trained packed: each seed's solo model and optimizer
    are loaded into the pack, and after each step its part of the pack (gradients too) back into them."""
    setups = [trainer.set_up(trainer.seed_config(cfg, s), jobs=1) for s in cfg.train.seeds]
    models, optimizers = [s.model for s in setups], [s.optimizer for s in setups]
    lead, fmt = setups[0], setups[0].cpu.memory_format
    net = trainer.packed_net(cfg, len(setups), lead.lr, cfg.train.fast, lead.device, fmt)
    net.load(models, optimizers)
    if cfg.norm.name == "brn":
        norm.set_renorm_limits(net.model, 1.5, 0.5)  # as steptrace.trace: r and d clipped
    packed = dict(net.model.named_parameters())
    before = [layer_values(m, lambda p: p) for m in models]
    batches = [data.epoch_order(len(lead.train_set), cfg.batch_size, s, 0, lead.device)
               for s in cfg.train.seeds]
    found = [{"logits": [], "loss": [], "grad": []} for _ in setups]
    net.model.train()
    for k in range(STEPS):
        logs = [steps.EpochLog() for _ in setups]
        steps.train_steps_packed(net, lead.train_set, batches, k, 1, logs, fmt)
        net.unload(models, optimizers)
        for i, (model, log) in enumerate(zip(models, logs, strict=True)):
            (loss, logits, _), = log.pending
            found[i]["loss"].append(loss.double())
            found[i]["logits"].append(logits.double())
            for name, p in model.named_parameters():
                p.grad = part_of(packed[name].grad, p, i)
            found[i]["grad"].append(layer_values(model, lambda p: p.grad))
    for i, model in enumerate(models):
        after = layer_values(model, lambda p: p)
        found[i]["update"] = {k: (after[k] - before[i][k], float(before[i][k].norm())) for k in after}
        found[i]["stats"] = statistics(model)
        model.eval()
        with torch.no_grad():
            everything = torch.arange(len(lead.test_set), device=lead.device)
            found[i]["eval"] = model(lead.test_set.batch(everything, fmt)[0]).double()
    return found


# Not "in": its 1x1 map holds one value per channel, which it sets to 0 up to rounding, so all below it is
# rounding noise that two kernels cannot agree on (as in tests/test_perf.py). Its packed layer is checked
# against its seeds' layers in tests/test_norm.py, on the 1x1 map too.
@pytest.mark.parametrize("batch_size", [2, 16])
@pytest.mark.parametrize("name", [name for name in NORMS if name != "in"])
def test_a_packed_seed_computes_its_solo_runs_steps(tiny_mnist, float64, name, batch_size):
    cfg = config(tiny_mnist, name, f"train.seeds={SEEDS}", batch_size=batch_size)
    for s, packed in zip(SEEDS, packed_traces(cfg), strict=True):
        solo = trace(trainer.seed_config(cfg, s))
        assert differences(packed, solo, eps=STEP_EPS) == [], f"seed {s}"


def assert_same_run(packed, solo, what, rtol):
    assert list(packed["epoch"]) == list(solo["epoch"]), what
    assert (packed[["train_error", "val_error"]] == solo[["train_error", "val_error"]]).all().all(), what
    for column in ("train_loss", "val_loss"):
        rel = ((packed[column] - solo[column]).abs() / solo[column].abs()).max()
        assert rel <= rtol, f"{what}: {column} differs by {rel:.3g} relative, allowed {rtol:.3g}"


@pytest.mark.parametrize("name, batch_size, extra", [
    ("gn", 2, []), ("bn", 8, []), ("brn", 8, BRN_PER_STEP)])
def test_a_pack_of_three_seeds_is_three_solo_runs(tmp_path, tiny_mnist, float64, name, batch_size, extra):
    """200 digits for 2 epochs, in float64: each seed's metrics.csv is its solo run's."""
    cfg = config(tiny_mnist, name, f"train.seeds={SEEDS}", PACKED, *extra, batch_size=batch_size)
    outcomes = trainer.fit_seeds(cfg, tmp_path / "pack", jobs=1)
    assert [o.status for o in outcomes] == ["completed"] * 3
    for s in SEEDS:
        folder = tmp_path / "pack" / f"seed={s}"
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["seed"] == s and summary["pack"]["packed_with"] == SEEDS
        assert summary["config"]["train"]["seed"] == s and summary["config"]["train"]["seeds"] is None
        assert_same_run(metrics(folder), solo_metrics(cfg, tmp_path, s), f"{name} seed {s}", WHOLE_RUN_RTOL)
    if name == "brn":  # each seed's own schedule: the columns it writes are its solo run's, exactly
        packed, solo = metrics(tmp_path / "pack" / "seed=1"), metrics(tmp_path / "solo1")
        assert (packed[["r_max", "d_max"]] == solo[["r_max", "d_max"]]).all().all()


def test_a_seed_that_diverges_leaves_the_others_as_their_solo_runs(tmp_path, tiny_mnist, float64,
                                                                  monkeypatch):
    """Seed 1's weights are poisoned as the pack is built: it diverges at its first step, is recorded so,
    and seeds 0 and 2 train on as if alone (no NaN reaches their weights, statistics or losses)."""
    built = trainer.packed_net

    def poisoned(*args, **kwargs):
        net = built(*args, **kwargs)
        real_load = net.load

        def load(models, optimizers):
            real_load(models, optimizers)
            if net.seeds == 3:
                with torch.no_grad():
                    net.model.features[0].weight[20:40] = float("nan")  # seed 1's first convolution
        net.load = load
        return net

    monkeypatch.setattr(trainer, "packed_net", poisoned)
    cfg = config(tiny_mnist, "gn", f"train.seeds={SEEDS}", PACKED)
    trainer.fit_seeds(cfg, tmp_path / "pack", jobs=1)
    monkeypatch.undo()
    diverged = json.loads((tmp_path / "pack" / "seed=1" / "summary.json").read_text())
    assert diverged["status"] == "diverged" and diverged["diverged_at"]["step"] == 1
    for s in (0, 2):
        summary = json.loads((tmp_path / "pack" / f"seed={s}" / "summary.json").read_text())
        assert summary["status"] == "completed"
        assert_same_run(metrics(tmp_path / "pack" / f"seed={s}"), solo_metrics(cfg, tmp_path, s), f"seed {s}",
                        WHOLE_RUN_RTOL)


def timing_free(run_dir):
    return metrics(run_dir).drop(columns=["seconds", "samples_per_s"])


def test_on_cpu_the_seeds_run_one_after_another_each_exactly_its_solo_run(tmp_path, tiny_mnist):
    cfg = config(tiny_mnist, "gn", "train.seeds=[3,4]", "train.device=cpu", batch_size=4, epochs=1)
    assert perf.pack_size(cfg.train.pack_size, torch.device("cpu"), 2) == 1
    trainer.fit_seeds(cfg, tmp_path / "pack", jobs=1)
    for s in (3, 4):
        summary = json.loads((tmp_path / "pack" / f"seed={s}" / "summary.json").read_text())
        assert summary["pack"]["packed_with"] == [] and summary["pack"]["pack_size"] == 1
        solo_run(cfg, tmp_path, s)
        pd.testing.assert_frame_equal(timing_free(tmp_path / "pack" / f"seed={s}"),
                                      timing_free(tmp_path / f"solo{s}"))


def test_a_pack_size_below_the_seeds_packs_them_in_turn(tmp_path, tiny_mnist):
    cfg = config(tiny_mnist, "gn", f"train.seeds={SEEDS}", "train.pack_size=2", epochs=1)
    trainer.fit_seeds(cfg, tmp_path / "pack", jobs=1)
    packed_with = [json.loads((tmp_path / "pack" / f"seed={s}" / "summary.json").read_text())["pack"]
                   ["packed_with"] for s in SEEDS]
    assert packed_with == [[0, 1], [0, 1], []]
    solo_run(cfg, tmp_path, 2)
    pd.testing.assert_frame_equal(timing_free(tmp_path / "pack" / "seed=2"), timing_free(tmp_path / "solo2"))


def test_a_custom_norm_runs_its_seeds_one_after_another(tmp_path, tiny_mnist):
    cfg = config(tiny_mnist, "custom", "norm.target=torch.nn.GroupNorm", "+norm.kwargs.num_groups=2",
                 "train.seeds=[0,1]", epochs=1)
    outcomes = trainer.fit_seeds(cfg, tmp_path / "pack", jobs=1)
    assert [o.status for o in outcomes] == ["completed", "completed"]
    summary = json.loads((tmp_path / "pack" / "seed=0" / "summary.json").read_text())
    assert summary["pack"]["packed_with"] == []


def test_a_pack_killed_and_resumed_gives_the_metrics_of_an_uninterrupted_pack(tmp_path):
    data = write_mnist(tmp_path / "data", n_train=400, n_test=50)
    args = ["norm=gn", "batch_size=4", "train.epochs=2", "train.seeds=[0,1,2]", f"data.root={data}",
            "train.threads=1", "train.progress=false"]
    whole = run_cli(*args, PACKED, f"hydra.run.dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr
    env = {k: v for k, v in os.environ.items() if k != "NORMEXP_DATA_ROOT"}
    command = [sys.executable, "-m", "normexp.train", *args, PACKED, f"hydra.run.dir={tmp_path / 'k'}"]
    killed = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    first_epoch = tmp_path / "k" / "seed=2" / "metrics.csv"
    deadline = time.monotonic() + 120
    while not (first_epoch.exists() and len(first_epoch.read_text().splitlines()) >= 2):
        assert killed.poll() is None and time.monotonic() < deadline, "the pack ended before epoch 1"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    # resumed under the rule (pack_size auto: one after another on CPU), it packs as its checkpoints record
    resumed = run_cli(*args, f"hydra.run.dir={tmp_path / 'k'}")
    assert resumed.returncode == 0, resumed.stderr
    for s in SEEDS:
        summary = json.loads((tmp_path / "k" / f"seed={s}" / "summary.json").read_text())
        assert summary["pack"]["pack_size"] == 3 and summary["pack"]["packed_with"] == SEEDS
        pd.testing.assert_frame_equal(timing_free(tmp_path / "k" / f"seed={s}"),
                                      timing_free(tmp_path / "whole" / f"seed={s}"))


def test_a_pack_stopped_by_sigterm_saves_every_seed(tmp_path):
    data = write_mnist(tmp_path / "data", n_train=4000, n_test=50)
    env = {k: v for k, v in os.environ.items() if k != "NORMEXP_DATA_ROOT"}
    proc = subprocess.Popen([sys.executable, "-m", "normexp.train", "norm=bn", "batch_size=2",
                             "train.epochs=1", "train.seeds=[5,6]", PACKED, f"data.root={data}",
                             f"hydra.run.dir={tmp_path / 'p'}",
                             "train.threads=1", "train.progress=false"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    summary = tmp_path / "p" / "seed=6" / "summary.json"
    deadline = time.monotonic() + 120
    while not summary.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143, proc.stderr.read()
    for s in (5, 6):
        saved = json.loads((tmp_path / "p" / f"seed={s}" / "summary.json").read_text())
        # inside the epoch (batch 0 where a loaded machine signals before the first step)
        assert saved["status"] == "interrupted" and 0 <= saved["interrupted_at"]["batch"] < 2000
        assert (tmp_path / "p" / f"seed={s}" / "checkpoint.pt").is_file()


BAD = {
    "train.seeds=[]": "train.seeds=[]: must be a non-empty list of seeds, e.g. [0,1,2], or null",
    "train.seeds=[0,0]": "train.seeds=[0, 0]: seed 0 appears twice; each seed must appear once",
    "train.seeds=[0,-1]": "train.seeds=[0, -1]: -1 is not a seed; each must be an integer in [0, "
                          "18446688733642], as train.seed",
    "train.seeds=[true]": "train.seeds=[True]: True is not a seed; each must be an integer in [0, "
                          "18446688733642], as train.seed",
    "train.seeds=[0,18446688733643]": "train.seeds=[0, 18446688733643]: 18446688733643 is not a seed; each "
                                      "must be an integer in [0, 18446688733642], as train.seed",
    "train.seeds=[123456789012345678901234567890]": "train.seeds=[123456789012345678901234567890]: "
    "123456789012345678901234567890 is not a seed; each must be an integer in [0, 18446688733642], as "
    "train.seed",
    "train.seeds=3": "train.seeds=3: must be a non-empty list of seeds, e.g. [0,1,2], or null",
    "train.pack_size=0": "train.pack_size=0: must be 'auto' or an integer >= 1",
}


def test_bad_seeds_get_one_line(tiny_mnist):
    for bad, expected in BAD.items():
        extra = ["train.seeds=[0,1]"] if "pack_size" in bad else []
        assert trainer.validate_seeds(config(tiny_mnist, "gn", bad, *extra)) == [expected], bad


def test_bad_seeds_stop_the_cli_before_any_folder(tmp_path, tiny_mnist):
    cases = {"train.seeds=[0,0]": BAD["train.seeds=[0,0]"], "train.pack_size=0": BAD["train.pack_size=0"]}
    commands = [[bad, "train.seeds=[0,1]" if "pack_size" in bad else "train.epochs=1",
                 f"data.root={tiny_mnist}", f"hydra.run.dir={tmp_path / str(i)}"]
                for i, bad in enumerate(cases)]
    for i, (result, expected) in enumerate(zip(run_cli_many(commands), cases.values(), strict=True)):
        assert result.returncode != 0
        assert result.stderr.strip().splitlines() == [f"normexp: error: {expected}"]
        assert not (tmp_path / str(i)).exists()


def test_more_seeds_than_the_memory_allows_get_one_line(tiny_mnist, monkeypatch):
    monkeypatch.setattr(trainer, "available_memory_mb", lambda: 2048.0)
    cfg = config(tiny_mnist, "gn", f"train.seeds={list(range(100))}", batch_size=256)
    (line,) = trainer.validate_seeds(cfg)
    assert line.startswith("train.seeds=[0, 1, 2,") and "need about 12.6 GiB, more than the 2.0 GiB" in line


def test_train_seeds_beside_a_sweep_of_train_seed_is_one_line(tmp_path, tiny_mnist):
    result = run_cli("-m", "train.seed=0,1", "train.seeds=[0,1]", f"data.root={tiny_mnist}",
                     f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "normexp: error: train.seeds=[0, 1]: the sweep also sweeps train.seed (0, 1), and each job trains "
        "every seed of train.seeds; sweep train.seed or set train.seeds, not both")
    assert not (tmp_path / "sweep").exists()
