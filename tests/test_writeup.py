"""normexp.writeup: the writeup's numbers as data, and which runs are held beside them."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from fake_runs import make_run

from normexp import plots, results, writeup


def test_the_writeups_table_has_every_norm_and_batch_size_once():
    table = writeup.final_errors()
    assert len(table) == 32 and not table.duplicated(["norm", "batch_size"]).any()
    assert sorted(table["norm"].unique()) == ["bn", "brn", "gn", "none"]
    value = table.set_index(["norm", "batch_size"])
    assert value.loc[("gn", 2), "writeup_error"] == pytest.approx(0.0116)
    assert value.loc[("bn", 4), "writeup_error"] == pytest.approx(0.061)
    assert value.loc[("bn", 2), "writeup"] == "div" and math.isnan(value.loc[("bn", 2), "writeup_error"])
    assert value.loc[("none", 4), "writeup"] == "" and math.isnan(value.loc[("none", 4), "writeup_error"])


def test_only_runs_on_all_60000_digits_for_the_writeups_epochs_are_comparable():
    runs = pd.DataFrame({"data": ["mnist", "mnist", "mnist", "fashion_mnist", "mnist"],
                         "train_digits": [60000, 5000, 60000, 60000, 60000],
                         "epochs": [30, 30, 10, 30, 10], "batch_size": [256, 256, 256, 256, 1]})
    assert writeup.comparable(runs).tolist() == [True, False, False, False, True]


@pytest.fixture
def complete_mnist(tmp_path):
    s = tmp_path / "sweep"
    make_run(s, "gn", 256, 0, (0.02,) * 29 + (0.0090,), train_digits=60000)
    make_run(s, "gn", 256, 1, (0.02,) * 29 + (0.0094,), train_digits=60000)
    make_run(s, "bn", 2, 0, (0.5,), status="diverged", diverged_epoch=2, epochs=30, train_digits=60000)
    make_run(s, "gn", 4, 0, (0.03,) * 30, train_digits=5000)  # the 5,000-digit subset: not the writeup's data
    return s


def test_the_summary_table_puts_the_writeups_value_beside_ours(complete_mnist):
    table = results.summary_table(results.load([complete_mnist])).set_index(["norm", "batch_size"])
    assert table.loc[("gn", 256), "writeup_error"] == pytest.approx(0.0097)
    assert table.loc[("gn", 256), "writeup_diff"] == pytest.approx(0.0092 - 0.0097)
    assert table.loc[("bn", 2), "writeup"] == "div"
    subset = table.loc[("gn", 4)]  # the 5,000-digit run: no writeup value beside it
    assert not isinstance(subset["writeup"], str) and math.isnan(subset["writeup_error"])
    markdown = results.summary_markdown(results.summary_table(results.load([complete_mnist])))
    assert "0.0092 ± 0.0003 (n=2) · writeup 0.0097, ours -0.0005" in markdown
    assert "diverged · writeup: diverged" in markdown


def test_the_summary_figure_marks_the_writeups_values_hollow(complete_mnist):
    fig = plots.summary_figure(results.load([complete_mnist]))
    hollow = [ln for ln in fig.axes[0].get_lines() if ln.get_fillstyle() == "none" and len(ln.get_xdata())]
    assert [(ln.get_xdata().tolist(), ln.get_ydata().tolist()) for ln in hollow] == [([256.0], [0.0097])]
    assert [ln.get_marker() for ln in hollow] == ["o"]  # gn's own marker is a +, which cannot be hollow
    assert any(t.get_text().startswith("hollow: the writeup's") for t in fig.legends[0].get_texts())
