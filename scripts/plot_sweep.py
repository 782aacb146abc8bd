"""Draw a sweep's figures and summary table from its run folders.

    python scripts/plot_sweep.py outputs/sweeps/mcn_sweep_<time> [--out DIR] [--format pdf] [--writeup-ylim]
    python scripts/plot_sweep.py outputs/writeup/code outputs/writeup/text drawn=outputs/lr/mcn_drawn_sweep

Writes bs-<N>.<format> for every batch size present, summary.<format>, summary.csv, summary.md, claims.md and,
for runs on the writeup's data, curve_distance.md (for a rate sweep, its rate figures and tables too) into
the (first) sweep folder, or into --out. Works on a partial sweep; what it leaves out, and why, goes to
stderr.
A FOLDER written NAME=FOLDER names the protocol of its runs in the tables and figures (where their settings
do not tell it apart: the code's protocol at the drawn rate, say); a word of letters, digits, "_" or "-".
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from normexp import validation
from normexp.analysis import plots, results

LABELLED = re.compile(r"([A-Za-z][\w-]*)=(.+)")  # NAME=FOLDER (a folder of that whole name comes first)


def main(argv: list[str] | None = None) -> int:
    parser = validation.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="+", metavar="FOLDER",
                        help="sweep folders, folders of sweeps, or single run folders; NAME=FOLDER names "
                             "the protocol of its runs")
    parser.add_argument("--out", type=Path, help="where to write (default: the first FOLDER)")
    parser.add_argument("--format", default="png", help="figure file format: png (default) or pdf")
    parser.add_argument("--writeup-ylim", action="store_true",
                        help="the writeup's y-limits: objective 0.1, error 0.05 (0.3, 0.1 at batch size 4)")
    args = parser.parse_args(argv)
    if args.format not in plots.FORMATS:
        parser.error(f"--format={args.format}: allowed: {', '.join(plots.FORMATS)}")
    folders, labels = [], {}
    for arg in args.sweeps:
        named = LABELLED.fullmatch(arg)
        folder = Path(named[2]) if named and not Path(arg).is_dir() else Path(arg)
        if not folder.is_dir():
            parser.error(f"sweep={arg}: no such folder")
        folders.append(folder)
        if folder != Path(arg):
            labels[folder] = named[1]

    skipped: list[str] = []
    df = results.load(folders, skipped, labels)
    for line in skipped + results.status_notes(df):
        print(f"plot_sweep: {line}", file=sys.stderr)
    if df.empty:
        parser.error(f"sweep={' '.join(args.sweeps)}: no run folders found (a run folder holds "
                     "summary.json, metrics.csv or .hydra/config.yaml)")
    waiting = results.not_started(folders, labels)
    for path in plots.write_report(df, args.out or folders[0], args.format, args.writeup_ylim, waiting):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
