"""normexp.plots and scripts/plot_sweep.py: what the figures draw, and the files the script writes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from fake_runs import make_run
from helpers import ROOT
from matplotlib.collections import PolyCollection

from normexp.analysis import plots, results


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Batch size 8: gn with 2 seeds, bn diverged in epoch 3, none diverged in epoch 1 (no rows), brn
    unfinished. Batch size 16: gn and bn, one seed each."""
    s = tmp_path / "sweep"
    make_run(s, "gn", 8, 0, (0.2, 0.1, 0.05))
    make_run(s, "gn", 8, 1, (0.4, 0.3, 0.15))
    make_run(s, "bn", 8, 0, (0.3, 0.2), status="diverged", diverged_epoch=3, epochs=3)
    make_run(s, "none", 8, 0, (), status="diverged", diverged_epoch=1, epochs=3)
    make_run(s, "brn", 8, 0, (0.3,), status="unfinished", extra=("train.epochs=3",))
    make_run(s, "gn", 16, 0, (0.1, 0.04, 0.03))
    make_run(s, "bn", 16, 0, (0.1, 0.05, 0.02))
    return s


def line_of(ax, color: str):
    """The data line drawn in ``color`` (not an error-bar cap, nor an empty legend proxy)."""
    [line] = [ln for ln in ax.get_lines()
              if ln.get_color() == color and len(ln.get_xdata()) and ln.get_linestyle() != "None"]
    return line


def red_crosses(ax) -> list[float]:
    return sorted(ln.get_xdata()[0] for ln in ax.get_lines() if ln.get_color() == plots.DIVERGED_COLOR)


def legend_texts(fig) -> list[str]:
    return [t.get_text() for t in fig.legends[0].get_texts()]


def test_convergence_figure_draws_means_bands_and_divergence(sweep):
    fig = plots.convergence_figure(results.load([sweep]), 8)
    ax_obj, ax_err = fig.axes
    assert ax_obj.get_yscale() == "log" and ax_err.get_yscale() == "linear"
    assert ax_obj.get_title() == "objective (bs 8)" and ax_err.get_title() == "error (bs 8)"
    gn = line_of(ax_err, plots.STYLES["gn"].color)
    assert gn.get_xdata().tolist() == [1, 2, 3]
    assert gn.get_ydata() == pytest.approx([0.3, 0.2, 0.1])  # mean of the two seeds
    assert line_of(ax_obj, plots.STYLES["gn"].color).get_ydata() == pytest.approx([0.61, 0.41, 0.21])
    band = [c for c in ax_err.collections if isinstance(c, PolyCollection)]
    assert len(band) == 1  # only gn has several seeds
    low, high = band[0].get_paths()[0].vertices[:, 1].min(), band[0].get_paths()[0].vertices[:, 1].max()
    assert (low, high) == pytest.approx((0.05, 0.4))
    bn = line_of(ax_err, plots.STYLES["bn"].color)
    assert bn.get_xdata().tolist() == [1, 2] and bn.get_linestyle() == "--"
    # a red x where bn (epoch 3) and none (epoch 1, nothing else to draw) diverged, in both panels
    assert red_crosses(ax_obj) == red_crosses(ax_err) == [1, 3]
    assert legend_texts(fig) == [
        "none (BSLN) [diverged in epoch 1]",
        "bn (BNORM) [diverged in epoch 3]",
        "brn (RENORM) [unfinished]",
        "gn (GNORM) [2 seeds]",
        "diverged: training loss not finite or above train.max_loss",
        "line: mean over seeds; band: lowest to highest",
    ]
    assert ax_err.get_xlim() == (0.5, 3.5)
    assert ax_err.get_ylim()[1] > 0.4  # room above the data for the markers


def test_writeup_limits(sweep):
    df = results.load([sweep])
    fig = plots.convergence_figure(df, 16, writeup_limits=True)
    assert fig.axes[0].get_ylim() == (0, 0.1) and fig.axes[1].get_ylim() == (0, 0.05)
    assert fig.axes[0].get_yscale() == fig.axes[1].get_yscale() == "linear"  # the writeup's layout
    assert plots.convergence_figure(df, 16).axes[0].get_yscale() == "log"
    assert plots.writeup_ylim(4) == (0.3, 0.1)


def test_summary_figure_is_final_error_against_batch_size_on_a_log2_axis(sweep):
    fig = plots.summary_figure(results.load([sweep]))
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.xaxis_inverted()  # 256 on the left, 1 on the right
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(2**k) for k in range(9)]
    gn = line_of(ax, plots.STYLES["gn"].color)
    assert gn.get_xdata().tolist() == [8, 16] and gn.get_ydata() == pytest.approx([0.1, 0.03])
    assert line_of(ax, plots.STYLES["bn"].color).get_xdata().tolist() == [16]
    assert red_crosses(ax) == [8, 8]  # every run of bn and of none diverged at batch size 8
    assert "bn (BNORM) [diverged at bs 8]" in legend_texts(fig)
    assert "brn (RENORM) [unfinished at bs 8]" in legend_texts(fig)
    assert ax.get_yscale() == "log" and ax.get_ylim()[1] >= 1.0  # 2 % apart from 3 %; chance (0.9) shown


def test_summary_figure_is_linear_from_zero_where_an_error_is_zero(sweep):
    make_run(sweep, "gn", 32, 0, (0.1, 0.0))  # a perfect run: no log axis for it
    ax = plots.summary_figure(results.load([sweep])).axes[0]
    assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0


def test_write_report_writes_every_file(sweep, tmp_path):
    written = plots.write_report(results.load([sweep]), tmp_path / "out")
    assert [p.name for p in written] == ["bs-16.png", "bs-8.png", "summary.png", "summary.csv", "summary.md",
                                            "claims.md"]
    image = matplotlib.image.imread(written[0])
    assert image.shape[:2] == (round(4.6 * 120), 11 * 120) and np.ptp(image) > 0
    pdfs = plots.write_report(results.load([sweep]), tmp_path / "pdf", fmt="pdf")
    assert pdfs[0].read_bytes().startswith(b"%PDF") and pdfs[2].name == "summary.pdf"


def plot_sweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "plot_sweep.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_script_on_a_partial_sweep_says_what_it_left_out(sweep):
    proc = plot_sweep(sweep)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in sweep.iterdir() if p.is_file()) == [
        "bs-16.png", "bs-8.png", "claims.md", "summary.csv", "summary.md", "summary.png",
    ]
    lines = proc.stderr.splitlines()
    assert len(lines) == 3 and all(line.startswith("plot_sweep: ") for line in lines)
    assert sum("diverged in epoch" in line for line in lines) == 2 and "no summary.json yet" in lines[1]
    assert "| gn | 0.0300 | 0.1000 ± 0.0707 (n=2) |" in (sweep / "summary.md").read_text()


def test_script_skips_a_malformed_run_and_never_writes_through_a_link(sweep, tmp_path):
    bad = next(sweep.glob("*norm=gn,train.seed=1"))
    summary = json.loads((bad / "summary.json").read_text())
    (bad / "summary.json").write_text(json.dumps({**summary, "epochs_run": "two"}))
    elsewhere = next(sweep.glob("*batch_size=16,norm=gn*"))
    (elsewhere / "metrics.csv").unlink()
    (elsewhere / "metrics.csv").symlink_to(tmp_path / "secret.csv")
    precious = tmp_path / "precious.png"
    precious.write_bytes(b"keep me")
    (sweep / "bs-8.png").symlink_to(precious)
    proc = plot_sweep(sweep)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert (f"plot_sweep: {bad}: unreadable, left out (ValueError: summary.json: epochs_run is 'two'; "
            "allowed: an integer)") in lines
    assert any(line.startswith(f"plot_sweep: {elsewhere}: unreadable, left out (LinkOut: ") for line in lines)
    assert precious.read_bytes() == b"keep me"
    assert not (sweep / "bs-8.png").is_symlink() and (sweep / "bs-8.png").read_bytes().startswith(b"\x89PNG")
    assert "| gn |  | 0.0500 |" in (sweep / "summary.md").read_text()  # the seed left, and no bs 16 run


def load_script():
    spec = importlib.util.spec_from_file_location("plot_sweep", ROOT / "scripts" / "plot_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("args, message", [
    (("{sweep}", "--format", "svg"), "--format=svg: allowed: png, pdf"),
    (("{tmp}/nope",), "sweep={tmp}/nope: no such folder"),
    (("drawn={tmp}/nope",), "sweep=drawn={tmp}/nope: no such folder"),
    (("{tmp}/empty",), "sweep={tmp}/empty: no run folders found (a run folder holds summary.json, "
                       "metrics.csv or .hydra/config.yaml)"),
    ((), "the following arguments are required: FOLDER"),
])
def test_script_bad_input_is_one_line(tmp_path, sweep, capsys, args, message):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        load_script().main([a.format(sweep=sweep, tmp=tmp_path) for a in args])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"normexp: error: {message.format(tmp=tmp_path)}\n"


def test_a_named_folder_is_a_protocol_of_its_own_in_claims_and_distances(tmp_path):
    code = ("optim.scaling=none", "optim.factors=autonn", "norm.moments=matconvnet")
    line = results.writeup_curves().set_index(["norm", "batch_size"]).loc[("bn", 256), "val_error"]
    full = results.WRITEUP_TRAIN_DIGITS
    make_run(tmp_path / "code", "bn", 256, 0, tuple(line + 0.01), extra=code, train_digits=full)
    make_run(tmp_path / "text", "bn", 256, 0, tuple(line + 0.0095), train_digits=full)
    drawn = (*code, "optim.auto_lr.with_norm=0.001")
    make_run(tmp_path / "drawn", "bn", 256, 0, tuple(line + 0.001), extra=drawn, train_digits=full)
    out = tmp_path / "o"
    proc = plot_sweep(tmp_path / "code", tmp_path / "text", f"drawn={tmp_path / 'drawn'}", "--out", out)
    assert proc.returncode == 0, proc.stderr
    claims_md = (tmp_path / "o" / "claims.md").read_text()
    assert claims_md.startswith("| claim | code | drawn | text |")
    table = (tmp_path / "o" / "curve_distance.md").read_text().splitlines()
    assert table[0] == ("| batch size | line | error: code | error: drawn | error: text | objective: code "
                        "| objective: drawn | objective: text | epochs | closest |")
    assert table[2].startswith("| 256 | BNORM | 1.00 | 0.10 | 0.95 |") and table[2].endswith("| 30 | drawn |")


def test_distance_table_calls_a_tie_within_two_hundredths_of_a_point_and_splits_a_protocols_variants():
    def row(protocol, variant, distance):
        return {"protocol": protocol, "variant": variant, "norm": "gn", "batch_size": 2,
                "val_error_distance": distance, "val_loss_distance": 0.01, "epochs": 30}

    close = pd.DataFrame([row("code", "gn [code]", 0.0050), row("text", "gn [text]", 0.0049)])
    tie = "| 2 | GNORM | 0.50 | 0.49 | 0.010 | 0.010 | 30 | tie |"
    assert plots.distance_markdown(close).splitlines()[2] == tie
    apart = pd.concat([close, pd.DataFrame([row("code", "gn optim.lr=0.001 [code]", 0.001)])])
    lines = plots.distance_markdown(apart).splitlines()
    assert lines[0].startswith("| batch size | line | error: code | error: code optim.lr=0.001 | error: text")
    assert lines[2] == "| 2 | GNORM | 0.50 | 0.10 | 0.49 | 0.010 | 0.010 | 0.010 | 30 | code optim.lr=0.001 |"


def test_new_norms_and_a_name_without_a_style_still_plot_each_with_its_own_line(tmp_path):
    s = tmp_path / "sweep"
    for norm, errors in (("frn", (0.2, 0.1)), ("ws_gn", (0.2, 0.08)), ("evonorm_s0", (0.3, 0.12))):
        for bs in (4, 1):
            make_run(s, norm, bs, 0, errors)
    for bs in (4, 1):
        make_run(s, "gn", bs, 0, (0.3, 0.15), extra=("norm.name=mynorm",))  # a name normexp has no style for
    df = results.load([s])
    fig = plots.summary_figure(df)
    assert legend_texts(fig) == ["frn", "ws_gn", "evonorm_s0", "mynorm"]
    styles = plots.variant_styles(df)
    assert len({styles[v].color for v in styles}) == 4
    mine = line_of(fig.axes[0], plots.style_of("mynorm").color)
    assert mine.get_xdata().tolist() == [1, 4] and mine.get_ydata() == pytest.approx([0.15, 0.15])
    assert plots.style_of("mynorm") == plots.style_of("mynorm") and "mynorm" not in plots.STYLES
    assert len(plots.convergence_figure(df, 1).axes) == 2
    table = results.summary_markdown(results.summary_table(df), plots.NORM_ORDER)
    assert "| mynorm | 0.1500 | 0.1500 |" in table


def test_a_sweep_over_the_rate_gets_the_sensitivity_figure_and_the_best_rate_table(tmp_path):
    s = tmp_path / "lr"
    for norm in ("bn", "gn"):
        for lr, err in ((0.001, 0.03), (0.01, 0.02)):
            make_run(s, norm, 8, 0, (0.1, err), extra=(f"optim.lr={lr}",), lr=lr)
    make_run(s, "bn", 8, 0, (0.5,), status="diverged", diverged_epoch=2, extra=("optim.lr=0.1",), lr=0.1)
    written = [p.name for p in plots.write_report(results.load([s]), tmp_path / "out")]
    expected = {"lr_sensitivity.png", "best_rate.png", "rates.csv", "best_rates.csv", "best_rates.md"}
    assert expected <= set(written)
    fig = plots.lr_sensitivity_figure(results.rate_table(results.load([s])))
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_title() == "batch size 8"
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 2]
    assert sorted(ln.get_ydata().tolist() for ln in lines) == [[0.03, 0.02], [0.03, 0.02]]
    crosses = [ln for ln in ax.get_lines() if ln.get_marker() == "x"]
    assert [ln.get_xdata().tolist() for ln in crosses] == [[0.1]]  # the diverged run, marked


def test_claims_split_by_rate_only_where_a_protocol_has_a_rate_axis(tmp_path):
    for bs in (2, 1):  # the text's protocol at its one rate per batch size: a column of its own
        make_run(tmp_path / "text", "gn", bs, 0, (0.1, 0.01))
        for norm in ("bn", "brn"):
            make_run(tmp_path / "text", norm, bs, 0, (0.9, 0.9))
        for lr in (0.001, 0.01):  # a labelled rate sweep: BN and BRN converge at their best rate only
            make_run(tmp_path / "lr", "gn", bs, 0, (0.1, 0.02), extra=(f"optim.lr={lr}",), lr=lr)
            for norm in ("bn", "brn"):
                err = 0.03 if lr == 0.001 else 0.9
                make_run(tmp_path / "lr", norm, bs, 0, (0.1, err), extra=(f"optim.lr={lr}",), lr=lr)
    df = results.load([tmp_path / "text", tmp_path / "lr"], labels={tmp_path / "lr": "lr"})
    plots.write_report(df, tmp_path / "out")
    table = (tmp_path / "out" / "claims.md").read_text().splitlines()
    assert table[0] == "| claim | lr at its best rate | lr at the fixed rate | text |"
    only_gn = next(line for line in table if line.startswith("| bs 2 and 1: only GN converges"))
    assert [cell.split(":")[0].strip() for cell in only_gn.split("|")[2:5]] == ["no", "yes", "yes"]
    assert set(pd.read_csv(tmp_path / "out" / "rates.csv")["protocol"]) == {"lr"}


def test_a_sweep_at_one_rate_gets_no_rate_figures(sweep, tmp_path):
    written = [p.name for p in plots.write_report(results.load([sweep]), tmp_path / "out")]
    assert "lr_sensitivity.png" not in written
