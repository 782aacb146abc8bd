"""notebooks/analysis.ipynb runs headless on a sweep made by the test and shows its figures and table."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbclient
import nbformat
from fake_runs import make_run
from helpers import ROOT


def test_analysis_notebook_runs_on_a_tiny_sweep(tmp_path, monkeypatch):
    sweep = tmp_path / "sweep"
    make_run(sweep, "gn", 8, 0, (0.2, 0.1))
    make_run(sweep, "gn", 8, 1, (0.3, 0.2))
    make_run(sweep, "bn", 8, 0, (0.4,), status="diverged", diverged_epoch=2, epochs=2)
    make_run(sweep, "gn", 2, 0, (0.25, 0.15))
    make_run(sweep, "evonorm_s0", 8, 0, (0.3, 0.2))  # a new norm, and a name without a style: no special case
    make_run(sweep, "gn", 2, 0, (0.35, 0.25), extra=("norm.name=mynorm",))
    monkeypatch.setenv("NORMEXP_SWEEP", str(sweep))
    # the python3 kernel starts "python" from PATH: make that this interpreter, with normexp installed
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    notebook = nbformat.read(ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert str(sweep) in text and "bn, batch size 8, seed 0: diverged in epoch 2" in text
    markdown = [o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert len(markdown) == 1 and "| gn | 0.1500 ± 0.0707 (n=2) | 0.1500 |" in markdown[0]
    assert "| evonorm_s0 | 0.2000 |  |" in markdown[0] and "| mynorm |  | 0.2500 |" in markdown[0]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1 + 2  # the summary, then one figure per batch size (8 and 2)
