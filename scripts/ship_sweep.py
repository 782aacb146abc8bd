"""Copy a sweep's finished runs into a folder that ships with the project: the files that results, the plot
script and the notebook read, without checkpoints, logs or machine paths.

    python scripts/ship_sweep.py outputs/sweeps/writeup/code_seed0 outputs/writeup/code/seed0

Copies the sweep's multirun.yaml and, of every run that has ended (completed or diverged), its .hydra/ files,
metrics.csv, summary.json (which records the run's provenance: normexp's commit, torch, oneDNN, the CPU) and
normexp.json (the folder's mark as normexp's, with the data files' sizes and hashes). In them the data root
becomes the name of its folder (the data is named by that and by the hashes), the folder the sweep ran from
becomes "." and the config folder it read becomes its name. Only real files ship, from real folders of the
sweep: a run with a symbolic link among its files, or a path that cannot be named so, is left out; so are
runs not ended yet; one line each on stderr: run it again as more finish.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from normexp import validation
from normexp.analysis import results, runfiles

RUN_FILES = (".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml", runfiles.METRICS,
             runfiles.SUMMARY, runfiles.MARKER)
ENDED = runfiles.FINAL_STATUSES
ABSOLUTE = re.compile(r"(^|[=:,\s'\"])/[^/\s]|file:///")  # an absolute path in a value: /x, key=/x, file:///x


def machine_paths(hydra: dict, root: str) -> dict[str, str]:
    """What to replace in files written under ``hydra`` (a run's or a sweep's ``hydra`` node) with the data
    root ``root``: the root (as given and as an absolute path) by the data folder's name, a sweep folder
    given as an absolute path by its name, the folder it ran from by ".", and the config folder it read (the
    checkout's conf/, wherever it ran from) by its name."""
    runtime = hydra.get("runtime") or {}
    cwd = runtime.get("cwd") or str(Path.cwd())
    found = {cwd: "."}
    sweep_dir = str((hydra.get("sweep") or {}).get("dir") or "")
    if Path(sweep_dir).is_absolute():
        found[sweep_dir] = Path(sweep_dir).name
    for source in runtime.get("config_sources") or []:
        path = str((source or {}).get("path") or "").removeprefix("file://")
        if Path(path).is_absolute():
            found[path] = Path(path).name
    if root:
        name = Path(root).name or root
        found |= {root: name, str((Path(cwd) / root).resolve()): name}
    return found


def run_paths(run_dir: Path) -> dict[str, str]:
    """A run's machine paths, from its .hydra/hydra.yaml and the data root its summary records."""
    summary = runfiles.read_summary(run_dir) or {}
    file = run_dir / ".hydra" / "hydra.yaml"
    hydra = ((yaml.safe_load(file.read_text()) or {}).get("hydra") or {}) if file.is_file() else {}
    return machine_paths(hydra, str(((summary.get("config") or {}).get("data") or {}).get("root") or ""))


def record_paths(record: Path) -> dict[str, str]:
    """multirun.yaml's machine paths: those of the command it records, which need not be any run's (a run
    that trained elsewhere, from another data folder, and was resumed or skipped here)."""
    data = yaml.safe_load(record.read_text()) or {}
    return machine_paths(data.get("hydra") or {}, str((data.get("data") or {}).get("root") or ""))


def longest_first(paths: dict[str, str]) -> dict[str, str]:
    """So that no part of a path is replaced twice."""
    return dict(sorted(paths.items(), key=lambda item: -len(item[0])))


def scrubbed(text: str, paths: dict[str, str]) -> str:
    for path, replacement in paths.items():
        text = text.replace(path, replacement)
    return text


def absolute_paths(value: Any) -> list[str]:
    """The strings in a parsed YAML or JSON file that are, or hold, an absolute path."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in absolute_paths(k) + absolute_paths(v)]
    if isinstance(value, list):
        return [s for v in value for s in absolute_paths(v)]
    return [value] if isinstance(value, str) and ABSOLUTE.search(value) else []


def shippable(folder: Path, names: tuple[str, ...], paths: dict[str, str]) -> dict[str, bytes]:
    """The files ``names`` of ``folder`` that exist, scrubbed of ``paths``; a ValueError (one line) where one
    is a symbolic link (only real files ship) or still holds an absolute path after the scrub."""
    found = {}
    for name in names:
        source = folder / name
        if source.is_symlink() or source.parent.is_symlink():
            raise ValueError(f"{source} is a symbolic link (to {os.readlink(source)}): only real files ship")
        if source.is_file():
            text = scrubbed(source.read_text(), longest_first(paths))
            parsed = yaml.safe_load(text) if name.endswith((".json", ".yaml")) else text  # JSON is YAML
            left = absolute_paths(parsed)
            if left:
                raise ValueError(f"{source} holds the machine path {left[0]!r}, which ship_sweep cannot name")
            found[name] = text.encode()
    return found


def ship(sweep: Path, dest: Path) -> tuple[list[Path], list[str]]:
    """The runs of ``sweep`` copied into ``dest`` (their new folders), and a line for each run left out."""
    shipped, left_out, paths = [], [], {str(Path.cwd()): "."}  # for multirun.yaml: every run's, and its own
    left_out += [f"{link}: a symbolic link to a folder (to {os.readlink(link)}), not followed" for link in
                 sorted(sweep.rglob("*")) if link.is_symlink() and link.is_dir()]
    for run_dir in results.find_run_dirs(sweep):  # real folders only: a link may lead anywhere
        try:
            status = (runfiles.read_summary(run_dir) or {}).get("status", "not started")
            if status not in ENDED:
                left_out.append(f"{run_dir}: {status}, not shipped")
                continue
            own = run_paths(run_dir)
            files = shippable(run_dir, RUN_FILES, own)
        except (OSError, ValueError, yaml.YAMLError) as err:
            left_out.append(f"{run_dir}: not shipped ({err})")
            continue
        target = dest / run_dir.relative_to(sweep)
        for name, data in files.items():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            runfiles.write_atomic(target / name, data)
        shipped.append(target)
        paths |= own
    record = sweep / "multirun.yaml"
    if record.is_file() or record.is_symlink():
        try:
            files = shippable(sweep, ("multirun.yaml",), paths | record_paths(record))
        except (OSError, ValueError, yaml.YAMLError) as err:
            left_out.append(f"{record}: not shipped ({err})")
            return shipped, left_out
        dest.mkdir(parents=True, exist_ok=True)
        runfiles.write_atomic(dest / "multirun.yaml", files["multirun.yaml"])
    return shipped, left_out


def main(argv: list[str] | None = None) -> int:
    parser = validation.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="the sweep folder (hydra.sweep.dir)")
    parser.add_argument("dest", type=Path, help="where the copy goes, e.g. outputs/writeup/code/seed0")
    args = parser.parse_args(argv)
    if not args.sweep.is_dir():
        parser.error(f"sweep={args.sweep}: no such folder")
    if args.dest.resolve().is_relative_to(args.sweep.resolve()):
        parser.error(f"dest={args.dest}: inside the sweep folder {args.sweep}; allowed: a folder outside it")
    shipped, left_out = ship(args.sweep, args.dest)
    for line in left_out:
        print(f"ship_sweep: {line}", file=sys.stderr)
    print(json.dumps({"shipped": len(shipped), "left_out": len(left_out), "to": str(args.dest)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
