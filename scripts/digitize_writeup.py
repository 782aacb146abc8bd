"""Read the writeup's convergence figures back into numbers: every line of both panels, per epoch.

    python scripts/digitize_writeup.py /path/to/reference/figures [--out normexp/analysis/writeup_curves.csv]

Each figure (``bs-<N>.png``, MATLAB's default colours and markers) has two panels: the validation objective
and the validation error per epoch, lines BSLN (no norm), BNORM, GNORM and RENORM. A panel's frame and
gridlines give its pixel scale; the axis limits are the writeup's (``plots.writeup_ylim``). A line is a
polyline through one vertex per epoch: each vertex's row is the one whose two segments (to the previous and
next vertex) and marker cover the line's colour best, found by coordinate ascent from the best marker match.
A vertex the figure does not show (a line that leaves the axes, or is not drawn) is left empty, with why.

It prints, for every line's last epoch, the value read here beside the one read by hand
(``normexp/analysis/writeup.csv``), and writes the curves atomically.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image

from normexp.analysis import plots, results, runfiles
from normexp.validation import Parser

# MATLAB's default line colours, in the writeup's legend order
COLOURS = {"none": (0, 114, 189), "bn": (217, 83, 25), "gn": (237, 177, 32), "brn": (126, 47, 142)}
BATCH_SIZES = (256, 128, 64, 32, 16, 4, 2, 1)
MARKER_RADIUS = 5  # pixels: markers are about 11 pixels across
MARKER_WEIGHT = 2.0  # a vertex's marker against each of its two segments
MIN_COVER = 0.01  # of its marker's square: where its colour covers less, the figure shows no vertex
MIN_CORE = 20  # pixels of a line's own colour in a panel (beyond its legend) for it to be drawn at all


def colour_weight(image: np.ndarray, colour: tuple[int, int, int], strict: bool = False) -> np.ndarray:
    """How much each pixel is of this line colour, 0 to 1: its darkness along the white-to-colour axis, for
    pixels close to that axis (antialiased edges count for less). Strict: the colour itself, as a marker's
    core is drawn, not where two lines' edges blend."""
    d = 255.0 - image
    dc = 255.0 - np.asarray(colour, float)
    t = (d @ dc) / (dc @ dc)
    off = np.linalg.norm(d - t[..., None] * dc, axis=2)
    near = (t >= 0.6) & (off <= 25) if strict else (t >= 0.35) & (off <= 45)
    return np.where(near, np.clip(t, 0, 1), 0.0)


def panels(image: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The (left, right, top, bottom) pixel frame of each panel, left to right: the dark axis lines give the
    left and bottom edges, the gridlines the top and right."""
    dark = image.sum(2) < 200
    grey = np.abs(image - 223).max(2) <= 6
    lefts = [x for x in np.nonzero(dark.sum(0) > 0.6 * image.shape[0])[0]]
    bottom = int(np.nonzero(dark.sum(1) > 0.6 * image.shape[1])[0][-1])
    frames = []
    for left in lefts:
        column = dark[:, left]
        top = int(np.nonzero(column[: bottom])[0][0])
        row = grey[top, left + 1:]
        right = left + 1 + int(np.nonzero(row)[0][-1]) if row.any() else None
        span = np.nonzero(dark[bottom, left:])[0]
        gaps = np.nonzero(np.diff(span) > 1)[0]
        right = left + int(span[gaps[0]] if len(gaps) else span[-1])
        frames.append((int(left), right, top, bottom))
    return frames


def legend_mask(image: np.ndarray, frame: tuple[int, int, int, int]) -> np.ndarray:
    """True inside the panel's legend box (a dark rectangle inside the frame), where no curve is read."""
    left, right, top, bottom = frame
    dark = image[top:bottom, left + 2:right - 1].sum(2) < 200
    rows = np.nonzero(dark.sum(1) > 0.3 * (right - left))[0]
    out = np.zeros(image.shape[:2], bool)
    if len(rows) >= 2:
        r0, r1 = top + rows[0], top + rows[-1]
        cols = np.nonzero(dark[rows[0]])[0]
        out[r0:r1 + 1, left + 2 + cols[0]:left + 2 + cols[-1] + 1] = True
    return out


def _segment_cover(weight: np.ndarray, x0: int, y0: np.ndarray, x1: int, y1: float) -> np.ndarray:
    """Mean colour weight along the straight segments from (x0, y0[i]) to (x1, y1), one per candidate row."""
    length = np.maximum(np.hypot(x1 - x0, y1 - y0), 1.0)
    s = np.linspace(0, 1, int(np.ceil(length.max())) + 1)[:, None]
    xs = np.broadcast_to(np.rint(x0 + s * (x1 - x0)).astype(int), (len(s), len(y0)))
    ys = np.clip(np.rint(y0[None, :] + s * (y1 - y0[None, :])).astype(int), 0, weight.shape[0] - 1)
    return weight[ys, xs].mean(0)


def box_mean(weight: np.ndarray, radius: int) -> np.ndarray:
    """The mean weight of the (2 radius + 1)-pixel square centred on each pixel (an integral image)."""
    k = 2 * radius + 1
    padded = np.pad(weight, ((radius + 1, radius), (radius + 1, radius)))
    total = padded.cumsum(0).cumsum(1)
    return (total[k:, k:] - total[:-k, k:] - total[k:, :-k] + total[:-k, :-k]) / (k * k)


def read_line(weight: np.ndarray, core: np.ndarray, xs: np.ndarray, top: int, bottom: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """The row of each vertex (at columns xs), rows above ``top`` included (a line may leave the axes), and
    how much of its marker's square its colour covers there."""
    above = 2 * (bottom - top)  # rows searched above the axes
    w = np.vstack([np.zeros((above, weight.shape[1])), weight[: bottom + 1]])
    pad = np.zeros((above, weight.shape[1]))
    marker = box_mean(np.vstack([pad, core[: bottom + 1]]), MARKER_RADIUS)[:, xs].T  # (vertex, row)
    near = box_mean(w, MARKER_RADIUS)[:, xs].T
    ys = (marker[:, above + top:].argmax(1) + above + top).astype(float)  # the best marker inside the axes
    for _ in range(6):  # coordinate ascent: each vertex given its neighbours
        for i, x in enumerate(xs):
            rows = np.nonzero(near[i] > 0.02)[0].astype(float)  # where its colour is near at all
            if len(rows) == 0:
                continue
            score = MARKER_WEIGHT * marker[i, rows.astype(int)]
            if i > 0:
                score = score + _segment_cover(w, x, rows, xs[i - 1], ys[i - 1])
            if i + 1 < len(xs):
                score = score + _segment_cover(w, x, rows, xs[i + 1], ys[i + 1])
            ys[i] = rows[score.argmax()]
    cover = near[np.arange(len(xs)), ys.astype(int)]
    return ys - above, cover


def digitize(path: Path, batch_size: int) -> list[dict]:
    image = np.asarray(Image.open(path).convert("RGB")).astype(float)
    epochs = 10 if batch_size == 1 else 30
    rows = []
    limits = plots.writeup_ylim(batch_size)  # every lower limit 0; epochs 0..30 (0..10 at batch size 1)
    for (left, right, top, bottom), panel, upper in zip(panels(image), ("objective", "error"), limits,
                                                        strict=True):
        hidden = legend_mask(image, (left, right, top, bottom))
        xs = np.rint(left + np.arange(1, epochs + 1) * (right - left) / epochs).astype(int)
        for norm, colour in COLOURS.items():
            weight, core = colour_weight(image, colour), colour_weight(image, colour, strict=True)
            for w in (weight, core):
                w[hidden] = 0
                w[:, :left + 1] = 0  # the axis line and tick labels; a last marker may overhang the frame
                w[:, right + MARKER_RADIUS + 2:] = 0
            if core[top:bottom + MARKER_RADIUS + 1].sum() < MIN_CORE:  # the legend's sample alone
                rows += [dict(batch_size=batch_size, norm=norm, panel=panel, epoch=e, value="",
                              note="not drawn") for e in range(1, epochs + 1)]
                continue
            ys, cover = read_line(weight, core, xs, top, bottom)
            shown = cover >= MIN_COVER
            for i, y in enumerate(ys):
                note = ""
                if not shown[i]:  # no vertex here: above the axes if the line leaves them on its way
                    left_top = i > 0 and shown[i - 1] and weight[top:top + 3, xs[i - 1]:xs[i] + 1].any()
                    note = "above the axes" if left_top else "not drawn"
                value = (bottom - y) / (bottom - top) * upper
                rows.append(dict(batch_size=batch_size, norm=norm, panel=panel, epoch=i + 1,
                                 value="" if note else f"{value:.5f}", note=note))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="digitize_writeup", description=__doc__.split("\n")[0])
    parser.add_argument("figures", type=Path, help="folder holding bs-<N>.png")
    parser.add_argument("--out", type=Path, default=results.WRITEUP_CURVES_CSV)
    args = parser.parse_args(argv)
    rows = []
    for n in BATCH_SIZES:
        path = args.figures / f"bs-{n}.png"
        if not path.is_file():
            sizes = ",".join(map(str, BATCH_SIZES))
            parser.error(f"{path}: no such figure; allowed: a folder holding bs-{{{sizes}}}.png")
        rows += digitize(path, n)
    print(f"{'line':<10} {'read here':>10} {'by hand':>8}   (final validation error, %)")
    for hand in results.writeup_final_errors().itertuples():
        line = (hand.norm, hand.batch_size, "error")
        last = [r for r in rows if (r["norm"], r["batch_size"], r["panel"]) == line]
        here = f"{100 * float(last[-1]['value']):.2f}" if last[-1]["value"] else last[-1]["note"]
        print(f"{hand.norm + ' ' + str(hand.batch_size):<10} {here:>10} {hand.writeup or '-':>8}")
    text = io.StringIO()
    text.write("# The writeup's curves, read off its figures by scripts/digitize_writeup.py (see its\n"
               "# docstring): validation objective and error (fractions) per epoch; empty where the figure\n"
               "# shows no vertex, with why.\n")
    columns = ["batch_size", "norm", "panel", "epoch", "value", "note"]
    writer = csv.DictWriter(text, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    runfiles.write_atomic(args.out, text.getvalue().encode())
    print(f"wrote {args.out} ({len(rows)} points)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
