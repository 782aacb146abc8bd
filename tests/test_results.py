"""normexp.results: run folders of every status read into one tidy table, and the summary table."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from fake_runs import make_run

from normexp.analysis import plots, results


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """gn (2 seeds, completed), bn (diverged in epoch 1, no rows), brn (1 epoch written, still running)."""
    s = tmp_path / "sweep"
    make_run(s, "gn", 8, 0, (0.2, 0.10))
    make_run(s, "gn", 8, 1, (0.3, 0.14))
    make_run(s, "bn", 8, 0, (), status="diverged", diverged_epoch=1, epochs=2)
    make_run(s, "brn", 8, 0, (0.25,), status="unfinished")
    return s


def test_every_run_is_a_row_per_epoch_with_its_settings(sweep):
    skipped = []
    df = results.load([sweep], skipped)
    assert skipped == []
    assert list(df.columns) == [*results.RUN_COLUMNS, *results.EPOCH_COLUMNS]
    assert len(df) == 2 + 2 + 1 + 1
    runs = results.runs(df).set_index(["norm", "seed"])
    assert runs.loc[("gn", 0), "status"] == "completed"
    assert runs.loc[("gn", 1), "final_val_error"] == 0.14
    assert runs.loc[("gn", 0), "groups"] == "2" and pd.isna(runs.loc[("bn", 0), "groups"])
    assert runs.loc[("bn", 0), "status"] == "diverged" and runs.loc[("bn", 0), "diverged_epoch"] == 1
    # still running: its status, learning rate and planned epochs from the summary it wrote at its start
    assert runs.loc[("brn", 0), "status"] == results.UNFINISHED
    assert runs.loc[("brn", 0), "lr"] == pytest.approx(0.01 * 8 / 256)
    assert runs.loc[("brn", 0), "epochs"] == 30
    assert set(df["batch_size"]) == {8} and set(df["variant"]) == {"gn", "bn", "brn"}

    bn_rows = df[df["norm"] == "bn"]
    assert len(bn_rows) == 1 and bn_rows["epoch"].isna().all() and bn_rows["val_error"].isna().all()
    gn0 = df[(df["norm"] == "gn") & (df["seed"] == 0)]
    assert gn0["epoch"].tolist() == [1, 2]
    assert gn0["val_error"].tolist() == [0.2, 0.1]
    assert gn0["val_loss"].tolist() == pytest.approx([0.41, 0.21])
    assert str(df["epoch"].dtype) == "Int64"


def test_hidden_and_temporary_files_are_never_read(sweep):
    run_dir = next(sweep.glob("batch_size=8,norm=gn,train.seed=0"))
    (run_dir / ".metrics.csv.abc.tmp").write_text("epoch,val_error\n1,0.9")  # a write in progress
    (sweep / ".submitit" / "123").mkdir(parents=True)
    (sweep / ".submitit" / "123" / "summary.json").write_text("{not json")
    df = results.load([sweep])
    assert len(results.runs(df)) == 4
    assert df.loc[df["run_dir"] == str(run_dir), "val_error"].tolist() == [0.2, 0.1]


def test_an_unreadable_run_is_skipped_with_the_reason(sweep):
    bad = make_run(sweep, "gn", 16, 0)
    (bad / "summary.json").write_text("{torn")
    skipped = []
    df = results.load([sweep], skipped)
    assert len(skipped) == 1 and str(bad) in skipped[0] and "unreadable" in skipped[0]
    assert len(results.runs(df)) == 4


def test_jobs_a_sweep_planned_but_has_not_started_are_reported(sweep):
    # as Hydra records it: the preset's params, then the command line, where batch_size=8 replaces 8,16
    (sweep / "multirun.yaml").write_text(
        "hydra:\n  sweeper:\n    _target_: hydra._internal.core_plugins.basic_sweeper.BasicSweeper\n"
        "    params:\n      norm: none,bn,brn,gn\n      batch_size: 8,16\n      train.seed: 0\n"
        "  overrides:\n    task:\n    - batch_size=8\n    - train.seed=0,1\n    - train.epochs=2\n"
        "  job:\n    config:\n      override_dirname:\n        exclude_keys: [train.epochs]\n"
    )
    assert len(results.planned_jobs(sweep)) == 4 * 1 * 2
    skipped = []
    results.load([sweep], skipped)
    assert skipped == [f"{sweep}: 4 of the 8 jobs in multirun.yaml have no folder yet (not started)"]
    waiting = results.not_started([sweep.parent])  # found below a folder of sweeps too
    assert sorted(zip(waiting["norm"], waiting["batch_size"], waiting["seed"], strict=True)) == [
        ("bn", 8, 1), ("brn", 8, 1), ("none", 8, 0), ("none", 8, 1)]
    assert set(waiting["protocol"]) == {"text"} and set(waiting["sweep_dir"]) == {str(sweep)}


def test_a_job_of_train_seeds_is_one_job_whose_seeds_are_runs(tmp_path):
    sweep = tmp_path / "sweep"
    job = "batch_size=4,norm=gn,train.seeds=[0,1]"
    for seed in (0, 1):
        make_run(sweep, "gn", 4, seed, (0.2, 0.1), folder=f"{job}/seed={seed}")
    (sweep / "multirun.yaml").write_text(
        "hydra:\n  sweeper:\n    _target_: hydra._internal.core_plugins.basic_sweeper.BasicSweeper\n"
        "    params:\n      norm: gn,bn\n  overrides:\n    task:\n    - batch_size=4\n"
        "    - train.seeds=[0,1]\n")
    skipped = []
    df = results.load([sweep], skipped)
    assert sorted(results.runs(df)["seed"]) == [0, 1]
    assert skipped == [f"{sweep}: 1 of the 2 jobs in multirun.yaml have no folder yet (not started)"]
    waiting = results.not_started([sweep])  # the bn job's two seeds
    bn_job = "batch_size=4,norm=bn,train.seeds=[0,1]"
    assert waiting[["job", "norm", "seed"]].values.tolist() == [[bn_job, "bn", 0], [bn_job, "bn", 1]]


def test_several_folders_single_runs_and_duplicates(tmp_path, sweep):
    other = make_run(tmp_path / "other", "gn", 4, 0, (0.3,))
    df = results.load([sweep, other, sweep / "batch_size=8,norm=gn,train.seed=0", tmp_path])
    assert len(results.runs(df)) == 5  # each run once, however it was reached
    assert sorted(df["batch_size"].unique()) == [4, 8]
    with pytest.raises(FileNotFoundError):
        results.load([tmp_path / "nope"])
    assert results.load([]).empty


def test_variants_name_the_settings_that_differ_within_a_norm(tmp_path):
    for groups in ("1", "10", "5", "per_channel"):
        make_run(tmp_path, "gn", 2, 0, (0.1,), extra=(f"norm.groups={groups}",))
    make_run(tmp_path, "bn", 2, 0, (0.1,))
    df = results.load([tmp_path])
    assert results.variant_order(df["variant"], ("bn", "gn")) == [
        "bn", "gn groups=1", "gn groups=5", "gn groups=10", "gn groups=per_channel",
    ]


def test_rate_variants_are_ordered_by_value_whatever_their_spelling():
    # 0.0001 and 0.001 once made the same natural-sort key, and their order followed the set's hash order
    names = ["none optim.lr=0.01", "none optim.lr=0.0001", "none optim.lr=3e-05", "none optim.lr=0.001",
             "gn optim.lr=0.1"]
    assert results.variant_order(names, ("none", "gn")) == [
        "none optim.lr=3e-05", "none optim.lr=0.0001", "none optim.lr=0.001", "none optim.lr=0.01",
        "gn optim.lr=0.1",
    ]


def test_summary_table_mean_std_and_status(sweep):
    make_run(sweep, "gn", 16, 0, (0.05,))
    make_run(sweep, "gn", 16, 1, (0.1,), status="diverged", diverged_epoch=2, epochs=3)
    table = results.summary_table(results.load([sweep])).set_index(["variant", "batch_size"])
    gn8 = table.loc[("gn", 8)]
    assert gn8["runs"] == 2 and gn8["completed"] == 2 and gn8["status"] == "completed"
    assert gn8["final_val_error_mean"] == pytest.approx(0.12)
    assert gn8["final_val_error_std"] == pytest.approx(math.sqrt(2 * 0.02**2))  # sample std of 0.10, 0.14
    gn16 = table.loc[("gn", 16)]
    assert gn16["final_val_error_mean"] == 0.05 and gn16["status"] == "1 completed, 1 diverged"
    assert table.loc[("bn", 8), "status"] == "diverged"
    assert math.isnan(table.loc[("bn", 8), "final_val_error_mean"])
    assert table.loc[("brn", 8), "status"] == results.UNFINISHED

    md = results.summary_markdown(results.summary_table(results.load([sweep])), ("none", "bn", "brn", "gn"))
    assert md.splitlines() == [
        "| norm | bs 16 | bs 8 |",
        "|---|---|---|",
        "| bn |  | diverged |",
        "| brn |  | unfinished |",
        "| gn | 0.0500; 1/2 diverged | 0.1200 ± 0.0283 (n=2) |",
    ]


def test_status_notes_say_what_each_unfinished_run_shows(sweep):
    notes = results.status_notes(results.load([sweep]))
    assert len(notes) == 2
    assert "bn, batch size 8, seed 0: diverged in epoch 1" in notes[0] and "nothing to draw" in notes[0]
    assert "brn, batch size 8, seed 0: no summary.json yet" in notes[1]
    assert "drawn for its 1 finished epoch;" in notes[1]


def test_latest_sweep_is_the_newest_by_name(tmp_path):
    assert results.latest_sweep(tmp_path / "none") is None
    for name in ("mcn_sweep_2026-01-02_10-00-00-000001", "mcn_sweep_2026-01-02_10-00-00-000002", "gn_groups"):
        (tmp_path / name).mkdir()
    assert results.latest_sweep(tmp_path).name == "mcn_sweep_2026-01-02_10-00-00-000002"


def test_the_writeups_table_has_every_norm_and_batch_size_once():
    table = results.writeup_final_errors()
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
    assert results.comparable(runs).tolist() == [True, False, False, False, True]


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


def test_the_writeups_curves_agree_with_its_final_errors_read_by_hand():
    curves = results.writeup_curves().set_index(["norm", "batch_size", "epoch"])
    assert len(curves) == 4 * (7 * 30 + 10)  # every line of every figure, per epoch
    hand = results.writeup_final_errors().dropna(subset=["writeup_error"])
    last = [curves.loc[(r.norm, r.batch_size, results.writeup_epochs(r.batch_size)), "val_error"]
            for r in hand.itertuples()]
    read = pd.Series(last, index=hand.index)
    assert read.notna().all()  # every final error read by hand is a vertex read off the figure
    assert (read - hand["writeup_error"]).abs().max() < 0.0008  # within 0.08 percentage points
    assert (read - hand["writeup_error"]).abs().median() < 0.0002
    # and the first epochs the issue read by eye at batch size 256: BN 3.2, 2.05, 1.62 %; GN 3.7, 2.5 %
    assert curves.loc[("bn", 256), "val_error"].iloc[:3].tolist() == pytest.approx([0.032, 0.0205, 0.0162],
                                                                                    abs=4e-4)
    assert curves.loc[("gn", 256), "val_error"].iloc[:2].tolist() == pytest.approx([0.037, 0.025], abs=4e-4)
    assert curves.loc[("bn", 2), "val_error"].isna().all()  # diverged: not drawn
    assert curves.loc[("none", 16), "val_error"].iloc[:4].notna().all()  # then it leaves the axes
    assert curves.loc[("none", 16), "val_error"].iloc[4:].isna().all()


def test_curve_distance_is_the_mean_gap_to_the_writeups_line_over_the_epochs_both_have(tmp_path):
    line = results.writeup_curves().set_index(["norm", "batch_size", "epoch"]).loc[("gn", 256)]
    on_it = tuple(line["val_error"])
    make_run(tmp_path / "s", "gn", 256, 0, on_it)
    make_run(tmp_path / "s", "gn", 256, 1, tuple(e + 0.002 for e in on_it))  # seed mean: 0.001 above
    make_run(tmp_path / "s", "none", 16, 0, (0.03,) * 10)  # the writeup's line has 4 vertices
    table = results.curve_distance(results.load([tmp_path / "s"])).set_index(["norm", "batch_size"])
    assert table.loc[("gn", 256), "val_error_distance"] == pytest.approx(0.001)
    assert table.loc[("gn", 256), "epochs"] == 30
    expected = (pd.Series(on_it) * 2 + 0.01 + 0.002 - line["val_loss"].to_numpy()).abs().mean()
    assert table.loc[("gn", 256), "val_loss_distance"] == pytest.approx(expected)
    none16 = results.writeup_curves().set_index(["norm", "batch_size"]).loc[("none", 16), "val_error"]
    assert table.loc[("none", 16), "epochs"] == 4
    gap = (0.03 - none16.iloc[:4]).abs().mean()
    assert table.loc[("none", 16), "val_error_distance"] == pytest.approx(gap)


@pytest.fixture
def rate_grid(tmp_path):
    """bn at batch size 8 over four rates (two seeds at 0.01), one diverged; gn over two rates."""
    s = tmp_path / "lr"
    for lr, errors in ((0.001, (0.05,)), (0.003, (0.021,)), (0.01, (0.02, 0.022)), (0.03, ())):
        for seed, err in enumerate(errors):
            make_run(s, "bn", 8, seed, (0.1, err), extra=(f"optim.lr={lr}",), lr=lr)
    make_run(s, "bn", 8, 0, (0.5,), status="diverged", diverged_epoch=2, extra=("optim.lr=0.03",), lr=0.03)
    for lr, err in ((0.001, 0.03), (0.01, 0.04)):
        make_run(s, "gn", 8, 0, (0.1, err), extra=(f"optim.lr={lr}",), lr=lr)
    return s


def test_the_best_rate_its_good_band_and_the_protocols_rates(rate_grid):
    rates = results.rate_table(results.load([rate_grid]))
    bn = rates[rates["norm"] == "bn"].set_index("lr")
    columns = ["runs", "error", "error_min", "error_max"]
    assert bn.loc[0.01, columns].tolist() == pytest.approx([2, 0.021, 0.02, 0.022])
    assert bn.loc[0.03, "diverged"] == 1 and math.isnan(bn.loc[0.03, "error"])
    best = results.best_rates(rates, {"default": 0.01}, 256).set_index("norm")
    assert best.loc["bn", ["best_lr", "best_error", "good_low", "good_high"]].tolist() == pytest.approx(
        [0.01, 0.021, 0.003, 0.01])  # 0.021 <= 1.2 x 0.021; 0.05 is not
    assert best.loc["bn", "good_decades"] == pytest.approx(math.log10(0.01 / 0.003))
    assert best.loc["bn", "fixed_error"] == pytest.approx(0.021)
    # 0.01 x 8 / 256 = 0.0003125 lies below the grid
    assert math.isnan(best.loc["bn", "scaled_error"])
    assert best.loc["gn", "best_lr"] == 0.001 and best.loc["gn", "good_at_edge"]
    halfway = results.error_at(rates[rates["norm"] == "gn"].sort_values("lr"), math.sqrt(0.001 * 0.01))
    assert halfway == pytest.approx(0.035)  # halfway in log rate
    markdown = results.best_rates_markdown(best.reset_index())
    assert "| bn | 8 | 0.01 | 2.10 (n=2) | 0.003–0.01 | 0.5 | 2.10 | – |" in markdown


def test_the_code_rates_are_the_configs():
    assert results.code_rates() == ({"none": 0.001, "default": 0.01}, 256)


def test_the_claims_runs_at_the_fixed_and_at_the_best_rate(rate_grid):
    df = results.load([rate_grid])
    best = results.best_rates(results.rate_table(df), {"default": 0.001}, 256)
    chosen = results.at_rates(df, best).drop_duplicates(["run_dir", "protocol"])  # a run may stand twice
    picked = sorted(zip(chosen["protocol"], chosen["norm"], chosen["lr"], chosen["seed"], strict=True))
    assert picked == [("text at its best rate", "bn", 0.01, 0), ("text at its best rate", "bn", 0.01, 1),
                      ("text at its best rate", "gn", 0.001, 0),
                      ("text at the fixed rate", "bn", 0.001, 0), ("text at the fixed rate", "gn", 0.001, 0)]


def test_a_norm_stuck_at_every_rate_has_no_good_band(tmp_path):
    for lr in (0.001, 0.01):
        make_run(tmp_path / "s", "bn", 1, 0, (0.9, 0.86), extra=(f"optim.lr={lr}",), lr=lr)
    best = results.best_rates(results.rate_table(results.load([tmp_path / "s"])), {"default": 0.01}, 256)
    row = best.iloc[0]
    assert math.isnan(row["good_low"]) and math.isnan(row["good_decades"]) and not row["good_at_edge"]
    table = results.best_rates_markdown(best)
    assert "| bn | 1 | 0.001 | 86.00 (n=1) | none: every rate stuck | – |" in table


def test_a_label_names_the_protocol_of_the_runs_in_its_folder(tmp_path):
    code = ("optim.scaling=none", "optim.factors=autonn", "norm.moments=matconvnet")
    make_run(tmp_path / "code", "bn", 4, 0, (0.1, 0.03), extra=code)
    drawn = (*code, "optim.auto_lr.with_norm=0.001")
    make_run(tmp_path / "drawn" / "seed0", "bn", 4, 0, (0.1, 0.02), extra=drawn)
    (tmp_path / "drawn" / "seed0" / "multirun.yaml").write_text("{}")  # a plan this reader cannot use
    labels = {tmp_path / "drawn": "drawn"}
    df = results.load([tmp_path / "code", tmp_path / "drawn"], labels=labels)
    by_protocol = results.runs(df).set_index("protocol")
    assert sorted(by_protocol.index) == ["code", "drawn"]
    assert by_protocol.loc["drawn", "final_val_error"] == 0.02
    assert by_protocol.loc["drawn", "variant"] == "bn optim.auto_lr.with_norm=0.001 [drawn]"
    assert results.load([tmp_path / "code", tmp_path / "drawn"])["protocol"].unique().tolist() == ["code"]
    assert results.labelled(tmp_path / "drawn" / "seed0" / "x", labels) == "drawn"
    assert results.labelled(tmp_path / "code", labels) is None
    nested = {tmp_path: "outer", tmp_path / "drawn": "inner"}  # the nearest labelled folder names it
    assert results.labelled(tmp_path / "drawn" / "seed0", nested) == "inner"


def test_epoch_caps_that_differ_only_at_other_batch_sizes_make_no_variant(tmp_path):
    CAPS = ("+train.max_epochs_by_batch_size.2=10", "+train.max_epochs_by_batch_size.1=5")  # noqa: N806
    s = tmp_path / "s"
    make_run(s, "gn", 256, 0, (0.1, 0.05), extra=("+train.max_epochs_by_batch_size.1=10",))
    make_run(s, "gn", 256, 1, (0.1, 0.06), extra=CAPS)
    make_run(s, "gn", 1, 0, (0.1, 0.07), extra=CAPS)
    assert set(results.runs(results.load([s]))["variant"]) == {"gn"}
    make_run(s, "gn", 1, 1, (0.1, 0.08), extra=("+train.max_epochs_by_batch_size.1=2",))  # 2 epochs, not 5
    at_1 = results.runs(results.load([s])).query("batch_size == 1")
    assert at_1["variant"].nunique() == 2  # runs of other lengths are never averaged
