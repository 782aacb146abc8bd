"""Draw a sweep's figures and summary table from its run folders.

    python scripts/plot_sweep.py outputs/sweeps/mcn_sweep_<time> [--out DIR] [--format pdf] [--writeup-ylim]

Writes bs-<N>.<format> for every batch size present, summary.<format>, summary.csv and summary.md into the
(first) sweep folder, or into --out. Works on a partial sweep; what it leaves out, and why, goes to stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path

from normexp import validation
from normexp.analysis import plots, results


def main(argv: list[str] | None = None) -> int:
    parser = validation.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="+", type=Path, metavar="FOLDER",
                        help="sweep folders, folders of sweeps, or single run folders")
    parser.add_argument("--out", type=Path, help="where to write (default: the first FOLDER)")
    parser.add_argument("--format", default="png", help="figure file format: png (default) or pdf")
    parser.add_argument("--writeup-ylim", action="store_true",
                        help="the writeup's y-limits: objective 0.1, error 0.05 (0.3, 0.1 at batch size 4)")
    args = parser.parse_args(argv)
    if args.format not in plots.FORMATS:
        parser.error(f"--format={args.format}: allowed: {', '.join(plots.FORMATS)}")
    for folder in args.sweeps:
        if not folder.is_dir():
            parser.error(f"sweep={folder}: no such folder")

    skipped: list[str] = []
    df = results.load(args.sweeps, skipped)
    for line in skipped + results.status_notes(df):
        print(f"plot_sweep: {line}", file=sys.stderr)
    if df.empty:
        parser.error(f"sweep={' '.join(map(str, args.sweeps))}: no run folders found (a run folder holds "
                     "summary.json, metrics.csv or .hydra/config.yaml)")
    out = args.out or args.sweeps[0]
    for path in plots.write_report(df, out, args.format, args.writeup_ylim, results.not_started(args.sweeps)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
