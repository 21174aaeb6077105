"""notebooks/walkthrough.ipynb runs top to bottom against the test server (executed with nbclient), so it never rots."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO
from tests.helpers import step_runs

pytestmark = pytest.mark.slow
NOTEBOOK = REPO / "notebooks" / "walkthrough.ipynb"


def test_the_walkthrough_runs_every_step_and_shows_the_checks_and_the_submission(
    tracking_server: str, unique_name: str, tmp_path: Path
) -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    (parameters,) = [i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", [])]
    # as papermill does: the injected values in a cell right after the parameters cell
    injected = f'PROJECT = {str(REPO / "projects" / "digits")!r}\nSETTINGS = ["name={unique_name}"]\nDRY_RUN = True'
    notebook.cells.insert(parameters + 1, nbformat.v4.new_code_cell(injected))
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    nbformat.write(notebook, tmp_path / "executed.ipynb")  # to look at when this fails

    texts = {i: _text(cell) for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"}
    assert not [c for c in notebook.cells if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    everything = "\n".join(texts.values())
    assert "## Classes" in everything and "imbalance ratio" in everything  # the problem card, rendered
    assert "passed" in everything and "loss_at_init" in everything  # the check table
    assert any(f"{verb} the baseline" in everything for verb in ("beats", "falls short of", "ties with"))
    assert "rows; accuracy on the hidden answers" in everything
    assert f'href="{tracking_server}/#/experiments/' in everything  # the UI link, clickable
    images = sum(o.get("data", {}).get("image/png") is not None for c in notebook.cells for o in c.get("outputs", []))
    assert images >= 3  # exploration figures and the learning curves, inline
    for step in ("understand", "ingest", "explore", "sample", "prepare", "check", "train", "tune", "promote", "submit"):
        assert [r.info.status for r in step_runs(tracking_server, unique_name, step)] == ["FINISHED"], step


def _text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        data = output.get("data", {})
        parts += [data.get("text/plain", ""), data.get("text/markdown", ""), data.get("text/html", "")]
    return "\n".join(p if isinstance(p, str) else "".join(p) for p in parts)
