"""Results in notebooks: HTML tables with the depth plot, tidy DataFrames, and the example notebook executed.

The notebook runs twice: its code cells in this process, in order, in one namespace, each cell's last expression
displayed as IPython would display it (``_repr_html_``), which needs nothing beyond the test extra's pandas; and,
where nbclient, nbformat and ipykernel are installed (the test extra installs them), in a real Jupyter kernel,
whose display messages must carry the HTML table and the plot.
"""

from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from helpers import needs_loopback
from nets import pooled_net

from shiftlab import probe
from shiftlab.errors import ShiftlabError
from shiftlab.invariance.evaluate import COLUMNS as EVALUATION_COLUMNS
from shiftlab.invariance.evaluate import EvaluationResult
from shiftlab.probing.layerwise import COLUMNS
from shiftlab.report.notebook import MAX_ROWS, table_html

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "measuring_a_model.ipynb"


@pytest.fixture(scope="module")
def small_result():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return probe(pooled_net(), x, shifts=[(0, 0), (0, 1), (0, 2)])


def evaluation() -> EvaluationResult:
    rows = [
        {"model": "m", "metric": "consistency", "statistic": "consistency", "at": "", "value": 0.75, "count": 8,
         "ci_low": 0.5, "ci_high": 1.0},
        {"model": "m", "metric": "consistency", "statistic": "agreement", "at": "distance 1", "value": 0.5,
         "count": 4, "ci_low": None, "ci_high": None},
    ]  # fmt: skip
    return EvaluationResult({"seed": 0}, ["m"], {"total": 2, "evaluated": 2, "skipped": 0}, [], {}, rows)


class TestHtml:
    def test_probe_result_is_a_table_with_the_depth_plot(self, small_result):
        text = small_result._repr_html_()
        assert text.count("<tr>") == 1 + len(small_result.summary())  # header + one row per layer
        for row in small_result.summary():
            assert f"<td>{row['layer']}</td>" in text
        assert '<img alt="relative L2 error against depth" src="data:image/png;base64,' in text
        assert "3 shifts (circular), 2 image(s)" in text

    def test_evaluation_result_is_a_table_of_its_headline_rows(self):
        text = evaluation()._repr_html_()
        assert "<td>consistency</td><td>consistency</td><td></td><td>0.75</td><td>8</td><td>0.5</td><td>1</td>" in text
        assert "distance 1" not in text  # broken-down rows stay in .rows and to_pandas()
        assert "1 model(s), 2 of 2 images (0 skipped)" in text

    def test_long_tables_are_cut_and_say_so(self):
        text = table_html(["n"], [[index] for index in range(MAX_ROWS + 5)])
        assert text.count("<tr>") == 1 + MAX_ROWS + 1 and "... 5 more rows" in text

    def test_text_is_escaped(self):
        assert "<td>&lt;script&gt;</td>" in table_html(["a"], [["<script>"]])


class TestPandas:
    def test_probe_rows(self, small_result):
        frame = small_result.to_pandas()
        assert list(frame.columns) == list(COLUMNS)
        assert len(frame) == len(small_result.rows)
        assert frame["rel_l2"].tolist() == [row["rel_l2"] for row in small_result.rows]

    def test_evaluation_rows(self):
        frame = evaluation().to_pandas()
        assert list(frame.columns) == list(EVALUATION_COLUMNS) and frame["value"].tolist() == [0.75, 0.5]

    def test_without_pandas(self, small_result, monkeypatch):
        monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
        with pytest.raises(ShiftlabError) as error:
            small_result.to_pandas()
        assert str(error.value) == "pandas: is not installed, and ProbeResult.to_pandas() needs it: pip install pandas"
        with pytest.raises(ShiftlabError, match=r"EvaluationResult.to_pandas\(\) needs it: pip install pandas$"):
            evaluation().to_pandas()


def code_cells() -> list[str]:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    return ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]


def run_cell(source: str, namespace: dict) -> object:
    """Run a cell as IPython does: every statement, then the value of the last one when it is an expression.

    IPython's magics (``%matplotlib inline``: how Jupyter draws figures) are not Python; they are left out here.
    """
    tree = ast.parse("\n".join(line for line in source.splitlines() if not line.lstrip().startswith("%")))
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, "<cell>", "exec"), namespace)
    if last is None:
        return None
    return eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace)


@pytest.mark.slow
def test_notebook_cells_in_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    shown = [run_cell(source, namespace) for source in code_cells()]
    result = namespace["result"]
    assert shown[0] is result  # the first code cell ends with the result: displayed as HTML in Jupyter
    text = result._repr_html_()
    assert "<td>conv1</td>" in text and "data:image/png;base64," in text
    assert shown[1] == result.summary()[:3]
    assert list(shown[2].columns) == ["dx", "feature_dx", "multiple", "aligned_dx", "rel_l2"]
    assert len(shown[2]) == 8
    assert (tmp_path / "probe.csv").read_text().splitlines()[0] == ",".join(COLUMNS)
    assert type(shown[3]).__name__ == "Figure" and type(shown[4]).__name__ == "Figure"


@pytest.mark.slow
@needs_loopback  # the kernel talks over ZMQ on 127.0.0.1
def test_notebook_in_a_kernel(tmp_path, monkeypatch):
    missing = [name for name in ("nbclient", "nbformat", "ipykernel") if not _importable(name)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (pip install -e '.[test]' installs them): no Jupyter kernel")
    import nbformat
    from nbclient import NotebookClient

    import shiftlab

    # The kernel imports the shiftlab under test (this process's), whatever its working directory.
    here = str(Path(shiftlab.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([here, *filter(None, [os.environ.get("PYTHONPATH")])]))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    results = [output for output in code[0].outputs if output.output_type == "execute_result"]
    assert len(results) == 1
    assert "<td>conv1</td>" in results[0].data["text/html"]  # the result displayed itself as a table
    assert "data:image/png;base64," in results[0].data["text/html"]
    assert any("image/png" in output.get("data", {}) for output in code[3].outputs)  # a matplotlib Figure
    assert not [output for cell in code for output in cell.outputs if output.output_type == "error"]
    assert (tmp_path / "probe.csv").exists()


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
