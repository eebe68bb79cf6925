"""The layout follows the data flow, and imports point one way: data -> measurement -> figures/report -> CLI.

Every module of ``src/shiftlab`` has a layer; a module may import only from its own layer or below. The check reads
every import statement, also those inside functions, so a lazy import cannot hide a dependency that points upstream.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "shiftlab"

#: Lower layers first. A module may import from its own layer and the layers before it.
LAYERS: list[set[str]] = [
    {"errors", "_format", "_command"},  # vocabulary; is this process the command
    {"_tensors", "_io", "_pandas", "accumulate", "distributed"},  # plumbing; optional pandas; torchrun's group
    {"images", "kernels", "shifts", "metrics", "digits", "weights"},  # inputs and formulas; digits; weights files
    {"data", "ops", "_compare", "datasets", "views", "outputs"},  # inputs, operators, comparisons; model outputs
    {"layers"},  # shift-invariant layers (BlurPool, APS) and model conversion
    # maps; networks; zoos; axes; metrics; dense metrics; how layers treat the border (mode auto)
    # the shifted forward pass (ShiftMode's runner: batching, hooks, train flags, layout plans, border cores)
    {"equivariance", "engine", "models", "zoo", "layouts", "invariance", "dense", "borders"},
    {"probe", "testing", "evaluate", "explore"},  # measuring models (layer by layer; predictions; frames under shifts)
    {"finetune"},  # training a converted model by self-distillation, judged by the evaluation
    {"figures", "sections", "invariance_figures", "frames"},  # presentation: figures, report sections, packed frames
    {"report", "experiments", "notebook"},  # the HTML report; experiments made of all the above; Jupyter display
    {"cli", "__main__"},  # the command line, on top
]

#: Deliberate exceptions: (importer, imported, why).
ALLOWED = {
    ("probe", "figures"): "ProbeResult.plot_depth/plot_heatmap: thin shortcuts, imported when called",
    ("evaluate", "invariance_figures"): "EvaluationResult.plot_*: thin shortcuts, imported when called",
    ("probe", "notebook"): "ProbeResult._repr_html_: Jupyter's display hook, imported when called",
    ("evaluate", "notebook"): "EvaluationResult._repr_html_: Jupyter's display hook, imported when called",
    ("finetune", "figures"): "FinetuneResult.plot_curve: a thin shortcut, imported when called",
}


#: Subpackages that count as one module.
PACKAGES = ("experiments", "layers")


def module_name(path: Path) -> str:
    relative = path.relative_to(SOURCE).with_suffix("")
    parts = relative.parts
    return parts[0] if parts[0] in PACKAGES else ".".join(parts)


def layer_of(name: str) -> int:
    for index, members in enumerate(LAYERS):
        if name in members:
            return index
    raise AssertionError(f"module shiftlab.{name} has no layer in tests/test_architecture.py: give it one")


def is_module(name: str) -> bool:
    return (SOURCE / f"{name}.py").exists() or (SOURCE / name / "__init__.py").exists()


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "shiftlab":  # from shiftlab import x: x may be a module (or __version__, a name)
                names = [f"shiftlab.{alias.name}" for alias in node.names if is_module(alias.name)]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "shiftlab" and len(parts) > 1:
                found.add("experiments" if parts[1] == "experiments" else parts[1])
    return found


MODULES = sorted(path for path in SOURCE.rglob("*.py") if path.name != "__init__.py" or path.parent != SOURCE)


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(SOURCE)))
def test_imports_point_one_way(path):
    importer = module_name(path)
    if importer.endswith("__init__"):
        importer = importer.split(".")[0]
    level = layer_of(importer)
    upstream = [
        name for name in sorted(imported_modules(path)) if layer_of(name) > level and (importer, name) not in ALLOWED
    ]
    assert not upstream, f"shiftlab.{importer} (layer {level}) imports from a later layer: {upstream}"


def test_every_exception_is_still_needed():
    for (importer, imported), why in ALLOWED.items():
        path = SOURCE / f"{importer}.py"
        assert imported in imported_modules(path), f"{importer} -> {imported} is allowed ({why}) but no longer used"
