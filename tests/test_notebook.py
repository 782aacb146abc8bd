"""notebooks/analysis.ipynb runs headless on a sweep made by the test, and by default on the results shipped
under outputs/writeup/, and shows their figures and tables."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbclient
import nbformat
import pytest
from fake_runs import make_run
from helpers import ROOT

from normexp.analysis import plots, results

SHIPPED = ROOT / "outputs" / "writeup"


def test_analysis_notebook_runs_on_a_tiny_sweep(tmp_path, monkeypatch):
    sweep = tmp_path / "sweep"
    make_run(sweep, "gn", 8, 0, (0.2, 0.1))
    make_run(sweep, "gn", 8, 1, (0.3, 0.2))
    make_run(sweep, "bn", 8, 0, (0.4,), status="diverged", diverged_epoch=2, epochs=2)
    make_run(sweep, "gn", 2, 0, (0.25, 0.15))
    make_run(sweep, "evonorm_s0", 8, 0, (0.3, 0.2))  # a new norm, and a name without a style: no special case
    make_run(sweep, "gn", 2, 0, (0.35, 0.25), extra=("norm.name=mynorm",))
    monkeypatch.setenv("NORMEXP_SWEEP", str(sweep))
    text, markdown, images = run_notebook(ROOT / "notebooks", monkeypatch)
    assert str(sweep) in text and "bn, batch size 8, seed 0: diverged in epoch 2" in text
    assert len(markdown) == 2 and "| gn | 0.1500 ± 0.0707 (n=2) | 0.1500 |" in markdown[0]
    assert "| evonorm_s0 | 0.2000 |  |" in markdown[0] and "| mynorm |  | 0.2500 |" in markdown[0]
    assert markdown[1].startswith("| claim |")
    assert len(images) == 1 + 2  # the summary, then one figure per batch size (8 and 2)


@pytest.mark.skipif(not SHIPPED.is_dir(), reason="no results shipped under outputs/writeup yet")
def test_without_a_sweep_the_notebook_shows_the_shipped_results(tmp_path, monkeypatch):
    """A fresh clone (no outputs/sweeps/): the writeup's study as shipped, beside the writeup's numbers."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "writeup").symlink_to(SHIPPED)
    monkeypatch.delenv("NORMEXP_SWEEP", raising=False)
    text, markdown, images = run_notebook(tmp_path / "notebooks", monkeypatch)
    assert text.splitlines()[0] == str(tmp_path / "outputs" / "writeup")
    assert "| bn [code] | " in markdown[0] and "· writeup 0.0093" in markdown[0]  # BN at 256, read off
    assert markdown[1].startswith("| claim | code | text |")
    assert len(images) == 1 + len(plots.batch_sizes(results.load([SHIPPED])))


def run_notebook(cwd: Path, monkeypatch) -> tuple[str, list[str], list]:
    """notebooks/analysis.ipynb run headless from ``cwd``: its printed text, its Markdown and its images."""
    # the python3 kernel starts "python" from PATH: make that this interpreter, with normexp installed
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    notebook = nbformat.read(ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"], outputs
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    markdown = [o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    return text, markdown, [o for o in outputs if "image/png" in o.get("data", {})]
