"""The layout follows the data flow, and imports point one way: data -> measurement -> figures/report -> CLI.

Every module of ``src/shiftlab`` has a layer; a module may import only from its own layer or below. The check reads
every import statement, also those inside functions and under ``if TYPE_CHECKING:``, so a lazy import cannot hide a
dependency that points upstream.

And no module imports itself through others: modules of one layer may import each other, and :data:`ALLOWED` lets a
few imports point up, but no chain of imports may come back to where it started (see :func:`runtime_imports` for
which imports that check counts).
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
    {"_tensors", "_io", "_pandas", "accumulate", "distributed", "_embed"},
    {"images", "kernels", "shifts", "metrics", "digits", "weights"},  # inputs and formulas; digits; weights files
    {"data", "ops", "_compare", "datasets", "views", "outputs"},  # inputs, operators, comparisons; model outputs
    {"layers"},  # shift-invariant layers (BlurPool, APS) and model conversion
    # maps; networks; zoos; axes; metrics; dense metrics; how layers treat the border (mode auto)
    # the shifted forward pass (ShiftMode's runner: batching, hooks, train flags, layout plans, border cores)
    {"equivariance", "engine", "models", "zoo", "layouts", "invariance", "dense", "borders"},
    # the metrics by name; measuring models (layer by layer; predictions; frames under shifts)
    {"catalog", "probe", "testing", "evaluate", "explore"},
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


# --------------------------------------------------------------------------- no import cycles


def dotted_name(path: Path) -> str:
    """``probe``, ``layers.blurpool``; a subpackage's ``__init__.py`` is the subpackage itself (``layers``)."""
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_dotted_module(name: str) -> bool:
    relative = Path(*name.split("."))
    return (SOURCE / relative.with_suffix(".py")).exists() or (SOURCE / relative / "__init__.py").exists()


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(path: Path, text: str | None = None) -> set[str]:
    """The shiftlab modules that ``path`` (or ``text`` read as that file) imports when it runs, by dotted name.

    Counted: every ``import`` and ``from ... import`` statement anywhere in the file, at module level and inside
    functions and methods (a function-level import closes a cycle as soon as the function runs), absolute or relative.
    ``from shiftlab.a import b`` counts ``shiftlab.a.b`` when ``b`` is a module, else ``shiftlab.a``. Not counted:
    imports under ``if TYPE_CHECKING:`` (they never run), and ``shiftlab`` itself, the package's ``__init__.py``
    that re-exports the public API (``from shiftlab import __version__`` inside a function).
    """
    package = dotted_name(path).split(".") if path.name == "__init__.py" else dotted_name(path).split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names if alias.name.startswith("shiftlab.")]
            targets = [name.removeprefix("shiftlab.") for name in targets]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the importer's package, one level up per extra dot
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
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


def test_import_reading():
    """Function-level and relative imports count; ``TYPE_CHECKING`` imports and the package facade do not."""
    text = (
        "from typing import TYPE_CHECKING\n"
        "import shiftlab.probe\n"
        "from shiftlab import __version__, report\n"
        "from shiftlab.layers import blurpool, make_shift_invariant\n"
        "from .recipes import RECIPES\n"
        "from . import spec\n"
        "if TYPE_CHECKING:\n"
        "    from shiftlab.explore import ExplorerData\n"
        "else:\n"
        "    from shiftlab import frames\n"
        "def f():\n"
        "    from shiftlab.notebook import probe_html\n"
    )
    found = runtime_imports(SOURCE / "layers" / "convert.py", text)  # read as if it were layers/convert.py
    assert found == {
        "probe",
        "report",
        "layers",
        "layers.blurpool",
        "layers.recipes",
        "layers.spec",
        "frames",
        "notebook",
    }
