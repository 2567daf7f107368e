"""The architecture's import rules (docs/architecture.md), checked on the source.

Every import of a lightdist module counts, also those inside functions: a lazy import still
ties two modules together, and a circle of lazy imports is still a circle.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightdist"
FAMILIES = ("lightdist.vision", "lightdist.text", "lightdist.rl")
# Plain nn.Modules: they know nothing of Lightning nor of the rest of lightdist.
MODELS = ("lightdist.vision.models", "lightdist.text.models", "lightdist.rl.qnets")
# What families and commands build on; none of it may know a family or a command.
SHARED = ("lightdist.data", "lightdist.tasks", "lightdist.callbacks", "lightdist.distributed", "lightdist.config",
          "lightdist.checkpoints", "lightdist.run_dir", "lightdist.runs", "lightdist.loggers", "lightdist.errors",
          "lightdist.compat")
ABOVE_SHARED = ("lightdist.train", "lightdist.commands", "lightdist.main", *FAMILIES)
ABOVE_LIBRARIES = ("lightdist.commands", "lightdist.main")
LIBRARIES = ("lightdist.train", "lightdist.evaluation", "lightdist.optimize", "lightdist.sweeps", "lightdist.predict")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    """Every module name this file imports (absolute, relative resolved), wherever the import sits."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def import_graph(root: Path = PACKAGE) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(lightdist module -> lightdist modules it imports, lightdist module -> every name it imports)."""
    files = {_module_name(p): p for p in root.rglob("*.py")}
    graph, raw = {}, {}
    for name, path in files.items():
        raw[name] = _imports(path, name)
        targets = set()
        for imported in raw[name]:
            while imported and imported not in files:  # `from pkg import function` -> pkg
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph, raw


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _family(name: str) -> str | None:
    return next((f for f in FAMILIES if _within(name, (f,))), None)


def violations(graph: dict[str, set[str]], raw: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            own_models = tuple(m for m in MODELS if _family(m) == _family(module))
            if _within(module, MODELS) and target != "lightdist.errors" and not _within(target, own_models):
                found.append(f"{module} (a model) imports {target}")
            if _within(module, SHARED) and _within(target, ABOVE_SHARED):
                found.append(f"{module} (shared) imports {target}")
            family = _family(module)
            if family and _family(target) not in (None, family):
                found.append(f"{module} ({family}) imports another family: {target}")
            if family and _within(target, ("lightdist.train", *ABOVE_LIBRARIES)):
                found.append(f"{module} ({family}) imports {target}")
            if _within(module, LIBRARIES) and _within(target, ABOVE_LIBRARIES):
                found.append(f"{module} (library) imports {target}")
            if _within(module, ("lightdist.commands",)) and target == "lightdist.main":
                found.append(f"{module} (a command) imports lightdist.main")
            # commands stand side by side; sweep runs its point as a training run
            if (_within(module, ("lightdist.commands",)) and _within(target, ("lightdist.commands",))
                    and target not in ("lightdist.commands", "lightdist.commands.train")):
                found.append(f"{module} imports another command: {target}")
            if _within(module, ("lightdist.errors", "lightdist.compat")) and target not in (
                    "lightdist.errors", "lightdist"):
                found.append(f"{module} imports {target}")
        if _within(module, MODELS):
            lightning = sorted(n for n in raw[module] if n.split(".")[0] in ("lightning", "pytorch_lightning"))
            if lightning:
                found.append(f"{module} (a model) imports {lightning[0]}")
    return found


def test_no_import_cycle():
    graph, _ = import_graph()
    assert len(graph) > 50, "the package was not found"
    assert cycles(graph) == []


def test_layers_import_only_downward():
    assert violations(*import_graph()) == []


def test_families_and_commands_are_where_the_rules_say():
    graph, _ = import_graph()
    for family in FAMILIES:
        assert any(_within(m, (family,)) for m in graph), f"{family} is missing: update the layout rules"
    assert any(_within(m, ("lightdist.commands",)) for m in graph), "lightdist.commands is missing"


@pytest.mark.parametrize("source, expected", [
    # a circle of imports inside functions is still a circle
    ({"a.py": "def f():\n    from lightdist.b import g\n", "b.py": "from lightdist import a\n"},
     [["lightdist.a", "lightdist.b"]]),
    ({"a.py": "from lightdist.b import g\n", "b.py": "import os\n"}, []),
    # relative imports resolve inside their package
    ({"pkg/__init__.py": "", "pkg/x.py": "from . import y\n", "pkg/y.py": "from .x import z\n"},
     [["lightdist.pkg.x", "lightdist.pkg.y"]]),
])
def test_cycle_finder(tmp_path, source, expected):
    root = tmp_path / "lightdist"
    for name, text in source.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "__init__.py").touch()
    global PACKAGE
    saved, PACKAGE = PACKAGE, root
    try:
        assert cycles(import_graph(root)[0]) == expected
    finally:
        PACKAGE = saved


def test_rule_checker_flags_what_it_must():
    graph = {"lightdist.vision.models.cnn": {"lightdist.data.base"},
             "lightdist.text.models.cnn": {"lightdist.text.models.embedding", "lightdist.vision.models.resnet"},
             "lightdist.commands.sweep": {"lightdist.commands.train"},
             "lightdist.commands.eval": {"lightdist.commands.predict"},
             "lightdist.data.base": {"lightdist.text.data.readers"},
             "lightdist.text.task": {"lightdist.vision.data"},
             "lightdist.train": {"lightdist.commands.train"},
             "lightdist.errors": set()}
    raw = {name: set() for name in graph}
    raw["lightdist.vision.models.cnn"] = {"lightning.pytorch", "lightdist.data.base"}
    found = violations(graph, raw)
    assert found == [
        "lightdist.commands.eval imports another command: lightdist.commands.predict",
        "lightdist.data.base (shared) imports lightdist.text.data.readers",
        "lightdist.text.models.cnn (a model) imports lightdist.vision.models.resnet",
        "lightdist.text.models.cnn (lightdist.text) imports another family: lightdist.vision.models.resnet",
        "lightdist.text.task (lightdist.text) imports another family: lightdist.vision.data",
        "lightdist.train (library) imports lightdist.commands.train",
        "lightdist.vision.models.cnn (a model) imports lightdist.data.base",
        "lightdist.vision.models.cnn (a model) imports lightning.pytorch",
    ]
