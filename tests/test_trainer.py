"""The trainer against its golden record: the same numbers across any change that must keep them."""

from __future__ import annotations

import json

import pytest
from golden.record import CASES, RECORD, run_case

from normexp import perf

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
