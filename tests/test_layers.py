"""The import graph of feedd: no cycle, and every import points down the layers.

The graph is read from the source with :mod:`ast`, so it holds every import a module can run:
those inside functions (the lazy ones) too, but not those under ``if TYPE_CHECKING:``, which never
run. ``from feedd.x import y`` where ``y`` is a module counts as an import of ``feedd.x.y``.
Importing ``feedd.x.y`` is not counted as importing ``feedd`` or ``feedd.x`` (their ``__init__``
run first, but they are façades holding no logic, and ``feedd``'s is lazy).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import feedd

ROOT = Path(feedd.__file__).parent

#: feedd's layers, top first. A module may import its own package and anything in a lower layer;
#: the packages of one layer do not import each other (``exchanges`` and ``nats`` are independent),
#: except in the bottom layer, whose single modules may import each other (acyclically). A package
#: here is ``feedd.<name>`` (a folder or a top-level module); ``feedd`` is the package's ``__init__``.
LAYERS: list[set[str]] = [
    {"__main__"},  # python -m feedd
    {"cli", "client"},  # tools; feedd.client is the subscriber library
    {"ops"},  # the daemon composing the service, notify, logs
    {"control"},  # the service's task tree and registries, reload, state, metrics, history
    {"http"},  # the API over a service object it is handed (control only under TYPE_CHECKING)
    # hub, sinks, the drop-oldest buffer, the subscriber line protocol | the recorder (it taps the
    # feed's frames, not the hub's records) and replay (feed's adapters, validation, overlap)
    {"fanout", "record"},
    {"feed"},  # runner, supervisor, host gates, status counters, backoff, ...
    {"config"},
    {"exchanges", "nats"},  # independent of each other
    {"wire"},  # WebSocket frames, TLS, the upgrade, the transport seam
    {"model", "codec", "errors", "feedd"},  # the bottom: records, their encoding, the exception tree
]

#: a tool beside the layers: the simulators import only themselves and the bottom layer
BESIDE = {"sim"}

#: the imports allowed to point up, each with its reason
UPWARD_EXCEPTIONS = {
    # ``feedd.WebSocketService`` is imported on first use by the façade's ``__getattr__``
    ("feedd", "feedd.control.service"),
}


def module_names() -> dict[str, Path]:
    names = {}
    for path in ROOT.rglob("*.py"):
        parts = ("feedd", *path.relative_to(ROOT).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names[name] = path
    return names


MODULES = module_names()


def _runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement except those in the body of an ``if TYPE_CHECKING:``."""
    if isinstance(tree, (ast.Import, ast.ImportFrom)):
        yield tree
        return
    if isinstance(tree, ast.If) and ast.unparse(tree.test) in {"TYPE_CHECKING", "typing.TYPE_CHECKING"}:
        children: list[ast.AST] = list(tree.orelse)
    else:
        children = list(ast.iter_child_nodes(tree))
    for child in children:
        yield from _runtime_imports(child)


def _owner(name: str) -> str | None:
    """The feedd module ``name`` is, or is inside of (``feedd.x.y.attr`` -> ``feedd.x.y``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            candidates = [f"{source}.{alias.name}" for alias in node.names]
        for candidate in candidates:
            target = _owner(candidate)
            if target is not None and target != module:
                targets.add(target)
    return targets


GRAPH = {module: imports_of(module) for module in MODULES}


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "feedd"


def layer_of(package: str) -> int | None:
    for index, layer in enumerate(LAYERS):
        if package in layer:
            return index
    return None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as its modules in order (the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (found := visit(target)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_graph_sees_lazy_imports_but_not_type_checking_ones() -> None:
    # feedd's façade imports the service inside __getattr__, and only for type checking above it
    assert "feedd.control.service" in GRAPH["feedd"]
    tree = ast.parse("if TYPE_CHECKING:\n    import a\nelse:\n    import b\ndef f():\n    import c\n")
    assert [alias.name for node in _runtime_imports(tree) for alias in node.names] == ["b", "c"]


def test_find_cycle_names_the_modules_of_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle() -> None:
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_module_is_in_a_layer() -> None:
    placed = set().union(*LAYERS) | BESIDE
    unplaced = sorted(module for module in MODULES if package_of(module) not in placed)
    assert not unplaced, f"modules in no layer (add their package to LAYERS): {unplaced}"


def test_imports_point_down_the_layers() -> None:
    bottom = len(LAYERS) - 1
    wrong = []
    for module, targets in sorted(GRAPH.items()):
        package = package_of(module)
        for target in sorted(targets):
            other = package_of(target)
            if other == package or (module, target) in UPWARD_EXCEPTIONS:
                continue
            if package in BESIDE:
                if layer_of(other) != bottom:
                    wrong.append(f"{module} -> {target} (sim imports only sim and the bottom layer)")
                continue
            mine, theirs = layer_of(package), layer_of(other)
            if mine is None or theirs is None:
                continue  # reported by test_every_module_is_in_a_layer
            if theirs < mine:
                wrong.append(f"{module} -> {target} (points up: {package} is below {other})")
            elif theirs == mine and mine != bottom:
                wrong.append(f"{module} -> {target} ({package} and {other} share a layer)")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)
