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
    {"validation", "analysis.runfiles", "layers", "model"},
    {"analysis.sweeps", "data", "norm", "optim", "perf", "logger"},
    {"analysis.results", "analysis.status", "runguard"},
    {"analysis.claims"},
    {"analysis.plots"},
    {"steps"},
    {"trainer"},
    {"config"},
    {"tune"},
    {"train"},
]
MAX_FUNCTION_LINES = 50


SUBPACKAGES = ("analysis",)


def module_name(dotted: str) -> str:
    """normexp.analysis.results -> analysis.results, normexp.data -> data."""
    parts = dotted.split(".")[1:]
    return ".".join(parts[:2] if parts[0] in SUBPACKAGES else parts[:1])


def normexp_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        packages = ("normexp", *(f"normexp.{s}" for s in SUBPACKAGES))
        if isinstance(node, ast.ImportFrom) and node.module in packages:
            prefix = "" if node.module == "normexp" else node.module.removeprefix("normexp.") + "."
            found |= {prefix + alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("normexp."):
            found.add(module_name(node.module))
        elif isinstance(node, ast.Import):
            found |= {module_name(a.name) for a in node.names if a.name.startswith("normexp.")}
    return found


def package_modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")
            if p.stem != "__init__"}


def test_every_module_has_a_layer_and_imports_only_lower_ones():
    layer_of = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    modules = package_modules()
    assert set(modules) == set(layer_of), "give each module a layer in LAYERS"
    upward = [f"{name} imports {other}" for name, path in modules.items() for other in normexp_imports(path)
              if layer_of[other] >= layer_of[name]]
    assert upward == []


def test_the_analysis_package_reads_runs_on_its_own():
    """normexp.analysis imports nothing of the training side but the one-line checks (which need no torch)."""
    analysis = {name: path for name, path in package_modules().items() if name.startswith("analysis.")}
    outside = [f"{name} imports {other}" for name, path in analysis.items() for other in normexp_imports(path)
               if not other.startswith("analysis.") and other != "validation"]
    assert outside == []


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in package_modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.name}:{node.lineno} {node.name}: {lines} lines")
    assert long == []


def test_reading_results_imports_no_torch_and_the_cli_module_runs_once():
    code = "import normexp.analysis.plots, normexp.analysis.status, sys; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
    # a module run with -m must not be imported again under its own name (two copies of its classes)
    code = ("import runpy, sys; sys.argv = ['normexp.train', '--help']\n"
            "try:\n    runpy.run_module('normexp.train', run_name='__main__')\n"
            "except SystemExit:\n    pass\nprint('normexp.train' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip().splitlines()[-1] == "False"
