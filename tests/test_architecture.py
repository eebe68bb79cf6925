"""The folder tree is the map, and imports point one way: core -> layers -> probing, invariance -> report -> CLI.

``src/shiftlab`` is laid out by subsystem: the core at the top level (errors, images, shifts, operators, models),
``layers/``, ``probing/`` (the shifted forward pass, layer by layer), ``invariance/`` (data-set metrics, the
evaluation), ``report/`` (figures, sections, the HTML page), ``experiments/`` and ``cli``.

Every module has a layer, by its dotted path (``probing.engine``; ``layers`` and ``experiments`` count as one module
each); a module may import only from its own layer or below. The check reads every import statement, also those inside
functions and under ``if TYPE_CHECKING:``, so a lazy import cannot hide a dependency that points upstream. Besides:

- ``probing/`` and ``invariance/`` are independent subsystems: neither imports the other;
- inside shiftlab, nobody imports a package facade (``shiftlab.probing``'s ``__init__``), only the defining module;
- no module imports itself through others: modules of one layer may import each other, and :data:`ALLOWED` lets a
  few imports point up, but no chain of imports may come back to where it started (see :func:`runtime_imports`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "shiftlab"

#: Lower layers first. A module may import from its own layer and the layers before it.
LAYERS: list[set[str]] = [
    {"errors", "_format", "_command"},  # vocabulary; is this process the command
    # plumbing; optional pandas; torchrun's group; figures as data: URIs
    {"_tensors", "_io", "_pandas", "accumulate", "distributed", "report._embed"},
    {"images", "kernels", "shifts", "distances", "digits", "weights"},  # inputs and formulas; digits; weights files
    # inputs, operators, comparisons; data sets and shifted views; model outputs
    {"data", "ops", "probing._compare", "invariance.datasets", "invariance.views", "outputs"},
    {"layers"},  # shift-invariant layers (BlurPool, APS) and model conversion
    # the shifted forward pass; maps; networks; zoos; axes; protocols; dense metrics; how layers treat the border
    {
        "probing.engine",
        "probing.equivariance",
        "models",
        "zoo",
        "probing.layouts",
        "invariance.protocols",
        "invariance.dense",
        "probing.borders",
    },
    # measuring models (layer by layer; assertions; predictions; frames under shifts)
    {"invariance.catalog", "probing.layerwise", "testing", "invariance.evaluate", "probing.explore"},
    {"finetune"},  # training a converted model by self-distillation, judged by the evaluation
    # presentation: figures, report sections, packed frames
    {"report.figures", "report.sections", "report.invariance_figures", "probing.frames"},
    # the HTML report; experiments made of all the above; Jupyter display; the packages' facades (for users)
    {"report.html", "experiments", "report.notebook", "probing", "invariance", "report"},
    {"cli", "__main__"},  # the command line, on top
]

#: Deliberate exceptions: (importer, imported, why).
ALLOWED = {
    ("probing.layerwise", "report.figures"): (
        "ProbeResult.plot_depth/plot_heatmap: thin shortcuts, imported when called"
    ),
    ("invariance.evaluate", "report.invariance_figures"): (
        "EvaluationResult.plot_*: thin shortcuts, imported when called"
    ),
    ("probing.layerwise", "report.notebook"): "ProbeResult._repr_html_: Jupyter's display hook, imported when called",
    ("invariance.evaluate", "report.notebook"): (
        "EvaluationResult._repr_html_: Jupyter's display hook, imported when called"
    ),
    ("finetune", "report.figures"): "FinetuneResult.plot_curve: a thin shortcut, imported when called",
}

#: Subpackages that count as one module.
PACKAGES = ("experiments", "layers")
#: Subpackages whose ``__init__`` re-exports a module of the same name from before the layout: for users only.
FACADES = ("probing", "invariance", "report")
#: Subsystems that do not import each other.
INDEPENDENT = ("probing", "invariance")


def dotted_name(path: Path) -> str:
    """``probing.engine``, ``layers.blurpool``; a subpackage's ``__init__.py`` is the subpackage itself (``layers``)."""
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(name: str) -> str:
    """The module as layered: ``layers.aps`` -> ``layers`` (a package counted as one), else the dotted name."""
    return name.split(".")[0] if name.split(".")[0] in PACKAGES else name


def layer_of(name: str) -> int:
    for index, members in enumerate(LAYERS):
        if unit(name) in members:
            return index
    raise AssertionError(f"module shiftlab.{name} has no layer in tests/test_architecture.py: give it one")


def is_dotted_module(name: str) -> bool:
    relative = Path(*name.split("."))
    return (SOURCE / relative.with_suffix(".py")).exists() or (SOURCE / relative / "__init__.py").exists()


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(path: Path, text: str | None = None, *, type_checking: bool = True) -> set[str]:
    """The shiftlab modules that ``path`` (or ``text`` read as that file) imports, by dotted name.

    Counted: every ``import`` and ``from ... import`` statement anywhere in the file, at module level and inside
    functions and methods, absolute or relative; with ``type_checking=False``, not those under
    ``if TYPE_CHECKING:`` (they never run). ``from shiftlab.a import b`` counts ``a.b`` when ``b`` is a module, else
    ``a``. Not counted: ``shiftlab`` itself, the package's ``__init__.py`` that re-exports the public API
    (``from shiftlab import __version__`` inside a function).
    """
    package = dotted_name(path).split(".") if path.name == "__init__.py" else dotted_name(path).split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if not type_checking and isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [
                alias.name.removeprefix("shiftlab.") for alias in node.names if alias.name.startswith("shiftlab.")
            ]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the importer's package, one level up per extra dot
                base = package[: len(package) - node.level + 1]
                module: str | None = ".".join(base + ([node.module] if node.module else []))
            elif node.module == "shiftlab" or (node.module or "").startswith("shiftlab."):
                module = (node.module or "").removeprefix("shiftlab").removeprefix(".")
            else:
                module = None
            if module is not None:
                for alias in node.names:
                    submodule = f"{module}.{alias.name}" if module else alias.name
                    targets.append(submodule if is_dotted_module(submodule) else module)
        found.update(target for target in targets if target and is_dotted_module(target))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text() if text is None else text, str(path)))
    found.discard(dotted_name(path))
    return found


def runtime_imports(path: Path, text: str | None = None) -> set[str]:
    """What ``path`` imports when it runs: :func:`imported_modules` without ``if TYPE_CHECKING:`` blocks."""
    return imported_modules(path, text, type_checking=False)


MODULES = sorted(path for path in SOURCE.rglob("*.py") if path.name != "__init__.py" or path.parent != SOURCE)


def test_every_module_has_a_layer():
    unplaced = []
    for path in MODULES:
        try:
            layer_of(dotted_name(path))
        except AssertionError:
            unplaced.append(dotted_name(path))
    assert not unplaced, f"modules without a layer in tests/test_architecture.py: {unplaced}"


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(SOURCE)))
def test_imports_point_one_way(path):
    importer = dotted_name(path)
    level = layer_of(importer)
    upstream = [
        name
        for name in sorted(imported_modules(path))
        if layer_of(name) > level and (importer, name) not in ALLOWED and unit(name) != unit(importer)
    ]
    assert not upstream, f"shiftlab.{importer} (layer {level}) imports from a later layer: {upstream}"


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(SOURCE)))
def test_subsystems_stay_apart(path):
    importer = dotted_name(path)
    top = importer.split(".")[0]
    others = [package for package in INDEPENDENT if package != top] if top in INDEPENDENT else []
    across = [name for name in sorted(imported_modules(path)) if name.split(".")[0] in others]
    assert not across, f"shiftlab.{importer} imports across subsystems: {across}"
    if importer not in FACADES:
        facades = [name for name in imported_modules(path) if name in FACADES]
        assert not facades, f"shiftlab.{importer} imports a package facade {facades}: import the defining module"


def test_every_exception_is_still_needed():
    for (importer, imported), why in ALLOWED.items():
        path = SOURCE / Path(*importer.split(".")).with_suffix(".py")
        assert imported in imported_modules(path), f"{importer} -> {imported} is allowed ({why}) but no longer used"


# --------------------------------------------------------------------------- no import cycles


def import_groups(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other through some chain: the strongly connected components of more
    than one module (Tarjan), each sorted, in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(groups)


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each group of :func:`import_groups`."""
    return [_cycle_in(graph, set(group)) for group in import_groups(graph)]


def _cycle_in(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A path from the group's first module back to it, within the group (breadth first: a shortest one)."""
    start = min(group)
    paths = {target: [start, target] for target in sorted(graph[start] & group)}
    frontier = list(paths)
    while start not in paths:
        node = frontier.pop(0)
        for target in sorted(graph[node] & group):
            if target not in paths:
                paths[target] = [*paths[node], target]
                frontier.append(target)
    return paths[start]


#: Cycles not broken yet: (the modules of the cycle) -> why, and where it is to be broken. Any other cycle fails.
KNOWN_CYCLES: dict[tuple[str, ...], str] = {}


def test_no_import_cycles():
    graph = {dotted_name(path): runtime_imports(path) for path in MODULES}
    found = {tuple(group): cycle for group, cycle in zip(import_groups(graph), import_cycles(graph))}
    new = [" -> ".join(cycle) for group, cycle in found.items() if group not in KNOWN_CYCLES]
    assert not new, f"modules that import themselves through others: {new}"
    gone = [group for group in KNOWN_CYCLES if group not in found]
    assert not gone, f"cycles broken since, to remove from KNOWN_CYCLES: {gone}"


def test_cycle_check_can_fail():
    graph = {"probe": {"notebook"}, "notebook": {"report"}, "report": {"explore", "sections"}, "explore": {"probe"}}
    assert import_groups(graph) == [["explore", "notebook", "probe", "report"]]
    assert import_cycles(graph) == [["explore", "probe", "notebook", "report", "explore"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_direction_check_can_fail():
    """An upward import, a lazy one, one across subsystems and one of a facade are all seen."""
    text = "def f():\n    from shiftlab.report.html import write_report\n"
    found = imported_modules(SOURCE / "probing" / "engine.py", text)
    assert found == {"report.html"} and layer_of("report.html") > layer_of("probing.engine")
    across = imported_modules(SOURCE / "probing" / "engine.py", "import shiftlab.invariance.views\n")
    assert across == {"invariance.views"}
    assert imported_modules(SOURCE / "cli.py", "from shiftlab.probing import ProbeResult\n") == {"probing"}


def test_import_reading():
    """Function-level and relative imports count; ``TYPE_CHECKING`` imports count for the direction only; the
    package's own ``__init__`` (``from shiftlab import __version__``) does not."""
    text = (
        "from typing import TYPE_CHECKING\n"
        "import shiftlab.probing.layerwise\n"
        "from shiftlab import __version__, report\n"
        "from shiftlab.layers import blurpool, make_shift_invariant\n"
        "from .recipes import RECIPES\n"
        "from . import spec\n"
        "if TYPE_CHECKING:\n"
        "    from shiftlab.probing.explore import ExplorerData\n"
        "else:\n"
        "    from shiftlab.probing import frames\n"
        "def f():\n"
        "    from shiftlab.report.notebook import probe_html\n"
    )
    found = runtime_imports(SOURCE / "layers" / "convert.py", text)  # read as if it were layers/convert.py
    assert found == {
        "probing.layerwise",
        "report",
        "layers",
        "layers.blurpool",
        "layers.recipes",
        "layers.spec",
        "probing.frames",
        "report.notebook",
    }
    assert imported_modules(SOURCE / "layers" / "convert.py", text) == found | {"probing.explore"}
