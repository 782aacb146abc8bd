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
