"""Runs many ``python -m normexp.train`` command lines from one warm process: torch, Hydra and normexp are
imported once here, then each command line runs in a child forked from this process, exactly as
``python -m normexp.train`` runs it (its own process, argv, environment, working folder, stdout and stderr),
without paying the imports again. Most of a bad-input run is those imports.

    python tests/cli_forks.py < cases.json > results.json
    python tests/cli_forks.py --serve      # a request per line on stdin, its results a line on stdout

cases.json: {"workers": N, "cases": [{"args": [...], "env": {...}, "cwd": "...", "timeout": s}, ...]};
results.json: [{"returncode": rc, "stdout": "...", "stderr": "..."}, ...] in the same order.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import sys
import tempfile
import time

import normexp.train  # noqa: F401  (the imports a run pays: torch, Hydra, normexp)

TRAIN = sys.modules["normexp.train"].__file__


def child(case: dict, out_fd: int, err_fd: int) -> None:
    """In the forked process: the command line as ``python -m normexp.train`` would run it."""
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    os.chdir(case["cwd"])
    os.environ.clear()
    os.environ.update(case["env"])
    sys.path[0] = case["cwd"]  # as ``-m`` puts the working folder first (a PYTHONPATH: tests/helpers.py)
    sys.argv = [TRAIN, *case["args"]]
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.modules.pop("normexp.train", None)  # run afresh as __main__, as ``-m`` runs it (its imports stay)
    code = 0
    try:
        runpy.run_module("normexp.train", run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if stop.code is not None and not isinstance(stop.code, int):
            print(stop.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001  (as the interpreter would: the traceback, exit 1)
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_all(request: dict) -> list[dict]:
    """Every case of ``request``, ``workers`` children at a time; their results in the cases' order."""
    cases, workers = request["cases"], max(1, int(request.get("workers", 2)))
    results: list[dict | None] = [None] * len(cases)
    running: dict[int, tuple[int, object, object, float]] = {}
    pending = list(range(len(cases)))
    while pending or running:
        while pending and len(running) < workers:
            i = pending.pop(0)
            out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
            pid = os.fork()
            if pid == 0:
                child(cases[i], out.fileno(), err.fileno())
            running[pid] = (i, out, err, time.monotonic() + float(cases[i].get("timeout", 300)))
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            for other, (_, _, _, deadline) in list(running.items()):
                if time.monotonic() > deadline:
                    os.kill(other, signal.SIGKILL)
            time.sleep(0.01)
            continue
        i, out, err, _ = running.pop(pid)
        texts = []
        for f in (out, err):
            f.seek(0)
            texts.append(f.read().decode(errors="replace"))
            f.close()
        results[i] = {"returncode": os.waitstatus_to_exitcode(status), "stdout": texts[0], "stderr": texts[1]}
    return results


def main() -> None:
    """One request on stdin, its results on stdout; with --serve, one request per line until stdin ends."""
    if "--serve" not in sys.argv:
        json.dump(run_all(json.load(sys.stdin)), sys.stdout)
        return
    for line in sys.stdin:
        sys.stdout.write(json.dumps(run_all(json.loads(line))) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
