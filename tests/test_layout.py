"""The package's shape: modules import downwards only (so never in a circle), functions fit on a screen,
and reading results needs no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "normexp"
# each module may import only modules of earlier layers
LAYERS = [
    {"validation", "runfiles", "sweeps", "layers"},
    {"data", "model", "norm", "optim", "perf", "results", "status", "logger", "claims"},
    {"plots", "runguard", "provenance"},
    {"steps"},
    {"trainer"},
    {"seeds"},
    {"config", "tune"},
    {"train"},
]
MAX_FUNCTION_LINES = 50


def normexp_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "normexp":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("normexp."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("normexp.")}
    return found


def test_every_module_has_a_layer_and_imports_only_lower_ones():
    layer_of = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    modules = {p.stem: p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert set(modules) == set(layer_of), "give each module a layer in LAYERS"
    upward = [f"{name} imports {other}" for name, path in modules.items() for other in normexp_imports(path)
              if layer_of[other] >= layer_of[name]]
    assert upward == []


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.name}:{node.lineno} {node.name}: {lines} lines")
    assert long == []


def test_reading_results_imports_no_torch_and_the_cli_module_runs_once():
    code = "import normexp.results, normexp.plots, normexp.status, sys; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
    # a module run with -m must not be imported again under its own name (two copies of its classes)
    code = ("import runpy, sys; sys.argv = ['normexp.train', '--help']\n"
            "try:\n    runpy.run_module('normexp.train', run_name='__main__')\n"
            "except SystemExit:\n    pass\nprint('normexp.train' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip().splitlines()[-1] == "False"
