"""The writeup's figures from a results table (``normexp.results.load``), as matplotlib Figures.

- ``convergence_figure``: one batch size, two panels, validation objective (log scale) and validation error
  against epoch, one line per norm, as the mcnGroupNorm writeup's ``plotResults.m`` drew them (MATLAB's
  default colours, its line styles). Several seeds: the mean, with a band from the lowest to the highest seed.
- ``summary_figure``: final validation error against batch size, 256 down to 1 on a log-2 axis, one line per
  norm, like Figure 1 of the GN paper.

A run that diverged ends its line at its last finished epoch; a red x at the top of the panel marks the epoch
in which its training loss blew up, and its legend entry says so.
"""

from __future__ import annotations

import io
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, LogFormatter, MaxNLocator, NullLocator

from normexp.analysis import claims, results, runfiles


@dataclass(frozen=True)
class Style:
    writeup_name: str | None  # the writeup's legend name, where it has one
    color: str
    marker: str
    linestyle: str


# the writeup's line styles {'o-', '+--', '+-', '.-'} for BSLN, BNORM, GNORM, RENORM and MATLAB's default
# colour order, fixed per norm here so that a norm keeps its colour at every batch size
STYLES = {
    "none": Style("BSLN", "#0072BD", "o", "-"),
    "bn": Style("BNORM", "#D95319", "+", "--"),
    "brn": Style("RENORM", "#7E2F8E", ".", "-"),
    "gn": Style("GNORM", "#EDB120", "+", "-"),
    "ln": Style(None, "#77AC30", "x", "-."),
    "in": Style(None, "#4DBEEE", "s", ":"),
    "frn": Style(None, "#A2142F", "d", "-"),
    "ws_gn": Style(None, "#8C564B", "^", "--"),
    "evonorm_s0": Style(None, "#E377C2", "v", "-."),
    "custom": Style(None, "#17BECF", "*", ":"),
}
# a norm without a style of its own (a name of the user's, ``norm.name`` set by hand) still gets a line:
# a colour and marker picked from its name, the same in every figure
OTHER_COLORS = ("#7F7F7F", "#BCBD22", "#1F77B4", "#2CA02C", "#9467BD", "#FF7F0E", "#393B79", "#637939")
OTHER_MARKERS = ("P", "X", "h", "p", "<", ">")
NORM_ORDER = tuple(STYLES)
DIVERGED_COLOR = "red"
FORMATS = ("png", "pdf")
STUDY_BATCH_SIZES = (256, 128, 64, 32, 16, 8, 4, 2, 1)


class PlainLogFormatter(LogFormatter):
    """Log-axis labels as plain numbers (0.2, not 2 x 10^-1), on the ticks matplotlib would label."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:.3g}" if super().__call__(x, pos) else ""


def writeup_ylim(batch_size: int) -> tuple[float, float]:
    """Upper y-limits (objective, error) of the writeup's figures (``plotResults.m``, ``enforceAxis``)."""
    return (0.3, 0.1) if batch_size == 4 else (0.1, 0.05)


def ordered_variants(df: pd.DataFrame) -> list[str]:
    return results.variant_order(df["variant"], NORM_ORDER)


PROTOCOL_LINES = {"text": "-", "code": "--"}  # where runs of both protocols are drawn together


def variant_styles(df: pd.DataFrame) -> dict[str, Style]:
    """The norm's style for a plain variant; the variants of one norm (group counts) get shades of its colour;
    with both protocols, a variant's protocol ("gn [code]") its line style."""
    core = {v: re.sub(r" \[[^]]*\]$", "", v) for v in ordered_variants(df)}
    styles = _core_styles(list(dict.fromkeys(core.values())))
    found = {}
    for variant, name in core.items():
        protocol = variant[len(name):].strip(" []")
        line = PROTOCOL_LINES.get(protocol, ":") if protocol else styles[name].linestyle
        found[variant] = Style(styles[name].writeup_name, styles[name].color, styles[name].marker, line)
    return found


def _core_styles(variants: list[str]) -> dict[str, Style]:
    styles = {}
    for name in dict.fromkeys(v.split()[0] for v in variants):
        own = [v for v in variants if v.split()[0] == name]
        base = style_of(name)
        if own == [name]:
            styles[name] = base
            continue
        for v, shade in zip(own, np.linspace(-0.5, 0.5, len(own)), strict=True):  # the norm's own colour,
            rgb = np.array(to_rgb(base.color))  # from darker to lighter
            rgb = rgb * (1 + shade) if shade < 0 else rgb + shade * (1 - rgb)
            styles[v] = Style(base.writeup_name, _hex(rgb), base.marker, base.linestyle)
    return styles


def style_of(name: str) -> Style:
    """The norm's style, or for a name without one a style chosen by the name's checksum."""
    if name in STYLES:
        return STYLES[name]
    pick = zlib.crc32(name.encode())
    return Style(None, OTHER_COLORS[pick % len(OTHER_COLORS)],
                 OTHER_MARKERS[pick // len(OTHER_COLORS) % len(OTHER_MARKERS)], "-")


def _hex(rgba) -> str:
    return "#" + "".join(f"{round(255 * x):02x}" for x in rgba[:3])


def legend_label(variant: str, style: Style) -> str:
    return f"{variant} ({style.writeup_name})" if style.writeup_name and " " not in variant else variant


def run_note(runs: pd.DataFrame) -> str:
    """What the legend adds for a line: seeds (distinct ones: duplicates are left out by results.load), and
    the runs that diverged or have not finished."""
    n, seeds = len(runs), runs["seed"].nunique()
    notes = [f"{seeds} seeds"] if seeds > 1 else []
    diverged = runs[runs["status"] == "diverged"]
    if len(diverged):
        epochs = ", ".join(str(e) for e in sorted(diverged["diverged_epoch"].dropna().unique()))
        share = f"{len(diverged)}/{n} " if n > 1 else ""
        notes.append(f"{share}diverged in epoch {epochs}")
    for status in ("interrupted", results.UNFINISHED):
        count = int((runs["status"] == status).sum())
        if count:
            notes.append(f"{count}/{n} {status}" if n > 1 else status)
    return f" [{'; '.join(notes)}]" if notes else ""


def epoch_stats(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean, min and max of ``column`` over the runs at each epoch (only epochs some run has finished)."""
    rows = df.dropna(subset=["epoch"])
    return rows.groupby("epoch")[column].agg(["mean", "min", "max", "count"]).sort_index()


def convergence_figure(df: pd.DataFrame, batch_size: int, writeup_limits: bool = False) -> Figure:
    """The writeup's figure for one batch size: validation objective (log; with ``writeup_limits`` linear,
    in the writeup's ranges) and error against epoch."""
    at_bs = df[df["batch_size"] == batch_size]
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    ax_obj, ax_err = fig.subplots(1, 2)
    styles = variant_styles(at_bs)
    handles = []
    diverged_points: list[tuple[int, str]] = []
    for variant in ordered_variants(at_bs):
        rows, style = at_bs[at_bs["variant"] == variant], styles[variant]
        run_rows = results.runs(rows)
        for ax, column in ((ax_obj, "val_loss"), (ax_err, "val_error")):
            _draw_mean_and_band(ax, epoch_stats(rows, column), style, several=len(run_rows) > 1)
        handles.append(Line2D([], [], color=style.color, marker=style.marker, linestyle=style.linestyle,
                              label=legend_label(variant, style) + run_note(run_rows)))
        for run in run_rows[run_rows["status"] == "diverged"].itertuples():
            diverged_points.append((int(run.diverged_epoch), variant))

    max_epoch = int(max([*at_bs["epochs"].dropna(), *at_bs["epoch"].dropna(), 1]))
    for ax, title, ylabel in ((ax_obj, "objective", "validation objective (cross-entropy)"),
                              (ax_err, "error", "validation error (top-1)")):
        ax.set_title(f"{title} (bs {batch_size})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_xlim(0.5, max_epoch + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, which="major", alpha=0.4)
    if writeup_limits:  # the writeup's layout: linear axes from 0, its ranges
        obj_top, err_top = writeup_ylim(batch_size)
        ax_obj.set_ylim(0, obj_top)
        ax_err.set_ylim(0, err_top)
    else:
        ax_obj.set_yscale("log")
        ax_obj.yaxis.set_major_formatter(PlainLogFormatter())
        ax_obj.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))
        if ax_obj.get_ylim()[0] <= 0 or not np.isfinite(ax_obj.get_ylim()).all():
            ax_obj.set_ylim(0.01, 10)  # no finite positive values to scale to
    for ax in (ax_obj, ax_err):
        _mark_diverged(ax, diverged_points, make_room=not writeup_limits)
    if diverged_points:
        handles.append(_diverged_handle("diverged: training loss not finite or above train.max_loss"))
    if at_bs.groupby("variant")["run_dir"].nunique().gt(1).any():
        handles.append(Line2D([], [], color="grey", linewidth=8, alpha=0.3,
                              label="line: mean over seeds; band: lowest to highest"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 2), frameon=False)
    return fig


def _draw_mean_and_band(ax: Axes, stats: pd.DataFrame, style: Style, several: bool) -> None:
    if stats.empty:
        return
    x = stats.index.to_numpy(dtype=float)
    ax.plot(x, stats["mean"].to_numpy(dtype=float), color=style.color, marker=style.marker,
            linestyle=style.linestyle, markersize=6)
    if several:
        ax.fill_between(x, stats["min"].to_numpy(dtype=float), stats["max"].to_numpy(dtype=float),
                        color=style.color, alpha=0.2, linewidth=0)


def _mark_diverged(ax: Axes, points: list[tuple[int, str]], make_room: bool = True) -> None:
    """A red x at the top of the panel for each (x, variant) in ``points``, labelled with the variant and
    stacked downwards where they coincide; ``make_room`` raises the top of the axis above the data."""
    counts: dict[tuple[int, str], int] = {}
    for point in points:
        counts[point] = counts.get(point, 0) + 1
    rows: dict[int, int] = {}
    placed = []
    for (x, variant), n in counts.items():
        k = rows[x] = rows.get(x, -1) + 1
        placed.append((x, 0.95 - 0.08 * k, variant + (f" x{n}" if n > 1 else "")))
    if make_room and placed:
        _raise_top(ax, 0.08 * (max(rows.values()) + 1) + 0.04)
    data_to_axes = ax.transData + ax.transAxes.inverted()
    for x, y, text in placed:
        on_right = data_to_axes.transform((x, 1.0))[0] > 0.5  # label to the left of the x, inside the panel
        ax.plot([x], [y], transform=ax.get_xaxis_transform(), color=DIVERGED_COLOR, marker="x", markersize=9,
                markeredgewidth=2, linestyle="none", clip_on=False)
        ax.annotate(text, (x, y), xycoords=ax.get_xaxis_transform(), xytext=(-7 if on_right else 7, -3),
                    textcoords="offset points", fontsize=8, color=DIVERGED_COLOR,
                    ha="right" if on_right else "left")


def _diverged_handle(label: str) -> Line2D:
    return Line2D([], [], color=DIVERGED_COLOR, marker="x", linestyle="none", markersize=9, markeredgewidth=2,
                  label=label)


def _raise_top(ax: Axes, fraction: float) -> None:
    """Sets the top of the y-axis so that the data end ``fraction`` of the height below it."""
    bottom, top = ax.get_ylim()
    if ax.get_yscale() == "log":
        low, high = np.log10(bottom), np.log10(top)
        ax.set_ylim(bottom, 10 ** (low + (high - low) / (1 - fraction)))
    else:
        ax.set_ylim(bottom, bottom + (top - bottom) / (1 - fraction))


def summary_figure(df: pd.DataFrame) -> Figure:
    """Final validation error against batch size (256 on the left down to 1), one line per norm; runs that
    did not complete are left out of the means, and a batch size where every run diverged gets a red x."""
    table = results.summary_table(df)
    fig = Figure(figsize=(9, 5.4), layout="constrained")
    ax = fig.subplots()
    styles = variant_styles(df)
    diverged_points: list[tuple[int, str]] = []
    handles = []
    several_seeds = bool((table["runs"] > 1).any()) if len(table) else False
    for variant in ordered_variants(df):
        rows, style = table[table["variant"] == variant].sort_values("batch_size"), styles[variant]
        done = rows[rows["completed"] > 0]
        mean = done["final_val_error_mean"].to_numpy(dtype=float)
        spread = np.stack([mean - done["final_val_error_min"].to_numpy(dtype=float),
                           done["final_val_error_max"].to_numpy(dtype=float) - mean])
        ax.errorbar(done["batch_size"].to_numpy(dtype=float), mean, yerr=spread if several_seeds else None,
                    color=style.color, marker=style.marker, linestyle=style.linestyle, markersize=7,
                    capsize=3)
        all_diverged = rows[(rows["diverged"] > 0) & (rows["completed"] == 0)]
        diverged_points += [(int(bs), variant) for bs in all_diverged["batch_size"]]
        handles.append(Line2D([], [], color=style.color, marker=style.marker, linestyle=style.linestyle,
                              label=legend_label(variant, style) + _not_completed_note(rows)))
        theirs = rows.dropna(subset=["writeup_error"])  # a circle whatever the norm's marker: + has no inside
        ax.plot(theirs["batch_size"].to_numpy(dtype=float), theirs["writeup_error"].to_numpy(dtype=float),
                color=style.color, marker="o", markersize=11, fillstyle="none", linestyle="none")
    if len(table) and table["writeup_error"].notna().any():
        handles.append(Line2D([], [], color="grey", marker="o", markersize=11, fillstyle="none",
                              linestyle="none", label="hollow: the writeup's final error (read off)"))
    sizes = sorted({*STUDY_BATCH_SIZES, *table.get("batch_size", [])})
    ax.set_xscale("log", base=2)
    ax.set_xlim(max(sizes) * 1.4, min(sizes) / 1.4)  # largest batch on the left, as in the GN paper
    ax.xaxis.set_major_locator(FixedLocator(sizes))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(s) for s in sizes])
    _error_axis(ax, table)
    ax.set_xlabel("batch size (images per step)")
    ax.set_ylabel("final validation error (top-1)")
    ax.set_title("final validation error against batch size")
    ax.grid(True, alpha=0.4)
    _mark_diverged(ax, diverged_points)
    if diverged_points:
        handles.append(_diverged_handle("every run diverged"))
    if several_seeds:
        handles.append(Line2D([], [], color="grey", marker="|", markersize=10, linestyle="none",
                              label="mean over completed seeds; bars: lowest to highest"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 2), frameon=False)
    return fig


def _error_axis(ax: Axes, table: pd.DataFrame) -> None:
    """A log axis up to 1 (chance is 0.9), so that 2 % and 3 % stay apart next to a norm at chance; linear
    from 0 where some error is 0 or there is none."""
    errors = (np.concatenate([table["final_val_error_min"].to_numpy(dtype=float),
                              table["writeup_error"].to_numpy(dtype=float)]) if len(table) else np.array([]))
    errors = errors[np.isfinite(errors)]
    if len(errors) and (errors > 0).all():
        ax.set_yscale("log")
        bottom = errors.min() / 1.3
        ax.set_ylim(bottom, 1.0)
        ticks = [t * 10.0**k for k in range(int(np.floor(np.log10(bottom))), 1) for t in (1, 2, 3, 5)]
        ax.yaxis.set_major_locator(FixedLocator([t for t in ticks if bottom <= t <= 1.0]))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        ax.yaxis.set_minor_locator(NullLocator())
        return
    highest = table["final_val_error_max"].max() if len(table) else np.nan
    ax.set_ylim(0, highest * 1.12 if highest > 0 else None)  # nan > 0 is False: matplotlib's own top


def _not_completed_note(rows: pd.DataFrame) -> str:
    """Legend note for the summary figure: per batch size, the runs that diverged or did not finish."""
    notes = []
    for status in results.STATUSES[1:]:
        hit = rows[rows[status] > 0]
        if len(hit):
            sizes = ", ".join(f"{r.batch_size}" + (f" ({r[status]}/{r.runs})" if r.runs > 1 else "")
                              for _, r in hit.iterrows())
            notes.append(f"{status} at bs {sizes}")
    return f" [{'; '.join(notes)}]" if notes else ""


def lr_sensitivity_figure(rates: pd.DataFrame) -> Figure:
    """Final validation error against the learning rate (``results.rate_table``), a panel per batch size
    (largest first), a line per norm through the mean over completed seeds with a band from the lowest to
    the highest; a red x at the top of the panel where a run diverged."""
    sizes = sorted(rates["batch_size"].unique(), reverse=True)
    fig = Figure(figsize=(3.3 * len(sizes), 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(sizes), sharey=True))
    norms = [n for n in NORM_ORDER if n in set(rates["norm"])] + sorted(set(rates["norm"]) - set(NORM_ORDER))
    several = bool((rates["runs"] > 1).any())
    for ax, bs in zip(axes, sizes, strict=True):
        for norm in norms:
            rows, style = rates[(rates["norm"] == norm) & (rates["batch_size"] == bs)], style_of(norm)
            done = rows.dropna(subset=["error"]).sort_values("lr")
            stats = pd.DataFrame({"mean": done["error"].to_numpy(), "min": done["error_min"].to_numpy(),
                                  "max": done["error_max"].to_numpy()}, index=done["lr"].to_numpy())
            _draw_mean_and_band(ax, stats, style, several)
            for lr in rows.loc[rows["diverged"] > 0, "lr"]:
                ax.plot([lr], [0.97], transform=ax.get_xaxis_transform(), color=DIVERGED_COLOR, marker="x",
                        markersize=8, markeredgewidth=2, linestyle="none", clip_on=False)
                ax.plot([lr], [0.97], transform=ax.get_xaxis_transform(), color=style.color, marker="|",
                        markersize=12, linestyle="none", clip_on=False)
        ax.set_xscale("log")
        ax.set_title(f"batch size {bs}")
        ax.set_xlabel("learning rate")
        ax.grid(True, alpha=0.4)
    axes[0].set_yscale("log")
    axes[0].set_ylim(0.005, 1.3)
    axes[0].yaxis.set_major_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    axes[0].set_ylabel("final validation error (top-1)")
    handles = [Line2D([], [], color=style_of(n).color, marker=style_of(n).marker,
                      linestyle=style_of(n).linestyle, label=legend_label(n, style_of(n))) for n in norms]
    handles.append(_diverged_handle("a run diverged (tick: its norm's colour)"))
    if several:
        handles.append(Line2D([], [], color="grey", linewidth=8, alpha=0.3, label="lowest to highest seed"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    return fig


def best_rate_figure(best: pd.DataFrame) -> Figure:
    """Each norm's error at its best rate against batch size (``results.best_rates``), beside its error at
    the code's fixed rate and at that rate scaled linearly with the batch size (the text's protocol)."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    handles = []
    for norm in [n for n in NORM_ORDER if n in set(best["norm"])]:
        rows, style = best[best["norm"] == norm].sort_values("batch_size"), style_of(norm)
        for column, linestyle, width in (("best_error", "-", 2.2), ("fixed_error", "--", 1.0),
                                         ("scaled_error", ":", 1.0)):
            ax.plot(rows["batch_size"].to_numpy(float), rows[column].to_numpy(float), color=style.color,
                    marker=style.marker, linestyle=linestyle, linewidth=width, markersize=7)
        handles.append(Line2D([], [], color=style.color, marker=style.marker, linestyle="-",
                              label=legend_label(norm, style)))
    handles += [Line2D([], [], color="grey", linestyle=ls, label=text) for ls, text in
                (("-", "at its best rate"), ("--", "at the code's fixed rate"),
                 (":", "at that rate scaled with the batch size"))]
    sizes = sorted(best["batch_size"].unique())
    ax.set_xscale("log", base=2)
    ax.set_xlim(max(sizes) * 1.4, min(sizes) / 1.4)
    ax.xaxis.set_major_locator(FixedLocator(sizes))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(s) for s in sizes])
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.set_xlabel("batch size (images per step)")
    ax.set_ylabel("final validation error (top-1)")
    ax.set_title("the best rate against the two protocols' rates")
    ax.grid(True, alpha=0.4)
    fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
    return fig


def batch_sizes(df: pd.DataFrame) -> list[int]:
    """The batch sizes present, largest first."""
    return sorted({int(b) for b in df["batch_size"]}, reverse=True)



CLOSER_BY = 0.0002  # a protocol lies closer to a writeup line where its error distance is 0.02 points smaller


def distance_markdown(distance: pd.DataFrame) -> str:
    """``results.curve_distance`` as a table: per batch size and writeup line, each protocol's distance of
    validation error (percentage points) and objective, and which protocol lies closest (by more than
    ``CLOSER_BY``, else "tie"). A protocol with several variants of one norm gets a column per variant."""
    table = distance.reset_index(drop=True)
    table["column"] = table["protocol"]
    several = table.groupby(["protocol", "norm", "batch_size"])["variant"].transform("nunique") > 1
    settings = pd.Series([v.split(" [")[0].removeprefix(n) for v, n in zip(table["variant"], table["norm"],
                                                                             strict=True)], index=table.index)
    table.loc[several, "column"] = (table["protocol"] + " " + settings.str.strip()).str.strip()
    columns = sorted(set(table["column"]))
    lines = ["| batch size | line | " + " | ".join(f"error: {c}" for c in columns) + " | "
             + " | ".join(f"objective: {c}" for c in columns) + " | epochs | closest |",
             "|---:|---|" + "---:|" * (2 * len(columns) + 1) + "---|"]
    order = {n: i for i, n in enumerate(NORM_ORDER)}
    groups = table.groupby(["batch_size", "norm"])
    for bs, norm in sorted(groups.groups, key=lambda k: (-k[0], order.get(k[1], len(order)), k[1])):
        at = groups.get_group((bs, norm)).set_index("column")
        errors = at["val_error_distance"].sort_values()
        apart = len(errors) == 1 or errors.iloc[1] - errors.iloc[0] > CLOSER_BY
        closest = errors.index[0] if apart else "tie"
        cells = [f"{100 * at.at[c, 'val_error_distance']:.2f}" if c in at.index else "–" for c in columns]
        cells += [f"{at.at[c, 'val_loss_distance']:.3f}" if c in at.index else "–" for c in columns]
        name = STYLES[norm].writeup_name if norm in STYLES else norm
        epochs = int(at["epochs"].max())
        lines.append(f"| {bs} | {name} | " + " | ".join(cells) + f" | {epochs} | {closest} |")
    return "\n".join(lines) + "\n"


def write_report(df: pd.DataFrame, out_dir: Path, fmt: str = "png", writeup_limits: bool = False,
                 not_started: pd.DataFrame | None = None) -> list[Path]:
    """bs-<N>.<fmt> per batch size, summary.<fmt>, summary.csv and summary.md in ``out_dir``, and claims.md
    (the writeup's claims, per protocol, waiting for the runs ``not_started``); curve_distance.csv and .md
    where runs are comparable with the writeup's; where the runs vary the learning rate, lr_sensitivity.<fmt>,
    best_rate.<fmt>, rates.csv, best_rates.csv and best_rates.md, and the figures and claims of a protocol
    with a rate axis show each norm at its best rate (claims also at the fixed rate); their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written, drawn, decided, waiting = [], df, df, not_started
    table = results.summary_table(df)
    texts = {"summary.csv": table.to_csv(index=False),
             "summary.md": results.summary_markdown(table, NORM_ORDER)}
    near = df[df["run_dir"].isin(results.runs(df).loc[lambda r: results.comparable(r), "run_dir"])]
    distance = results.curve_distance(near)
    if len(distance):  # runs on the writeup's data and epochs: how far each lies from its figure's line
        texts["curve_distance.csv"] = distance.to_csv(index=False)
        texts["curve_distance.md"] = distance_markdown(distance)
    rates = results.axis_rates(df)  # the protocols with a rate axis; the others' runs stay at their own rates
    if len(rates):
        axes = set(rates["protocol"])
        best = results.best_rates(rates, *results.code_rates())
        written.append(_save(lr_sensitivity_figure(rates), out_dir / f"lr_sensitivity.{fmt}"))
        written.append(_save(best_rate_figure(best), out_dir / f"best_rate.{fmt}"))
        texts["rates.csv"] = rates.to_csv(index=False)
        texts["best_rates.csv"] = best.to_csv(index=False)
        texts["best_rates.md"] = results.best_rates_markdown(best)
        decided = results.at_rates(df, best, axes)
        drawn = decided[~decided["protocol"].str.endswith(" at the fixed rate")]
        if not_started is not None:  # a run not started on a rate axis may be at either rate
            axis = not_started["protocol"].isin(axes)
            labelled = (not_started[axis].assign(protocol=not_started.loc[axis, "protocol"] + " " + label)
                        for label in ("at the fixed rate", "at its best rate"))
            waiting = pd.concat([not_started[~axis], *labelled], ignore_index=True)
    texts["claims.md"] = claims.claims_markdown(claims.claims_table(decided, waiting))
    for bs in batch_sizes(drawn):
        written.append(_save(convergence_figure(drawn, bs, writeup_limits), out_dir / f"bs-{bs}.{fmt}"))
    written.append(_save(summary_figure(drawn), out_dir / f"summary.{fmt}"))
    for name, text in texts.items():
        runfiles.write_atomic(out_dir / name, text.encode())
    return [*written, *(out_dir / name for name in texts)]


def _save(fig: Figure, path: Path) -> Path:
    """The figure written whole or not at all, and never through a link of that name (which it replaces)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=120, format=path.suffix.lstrip("."))
    runfiles.write_atomic(path, buffer.getvalue())
    return path
