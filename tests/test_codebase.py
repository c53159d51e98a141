"""Rules the code keeps (docs/extending.md): the generic parts name no binarizer, optimizer or
technique, no module imports a private name of another package, and the package's imports
form no circle, its layers reading downward."""

import ast
import re
from pathlib import Path

from onebit import quant
from onebit.train.optim import BinaryOptimConfig, OptimConfig
from onebit.train.techniques import TECHNIQUES

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src/onebit"
GENERIC = ["train/trainer.py", "nn/binary.py", "config.py"]
OPTIMIZERS = {*OptimConfig.OWN, *BinaryOptimConfig.OWN}


def test_generic_code_names_no_binarizer_method_or_technique():
    names = {*quant.ACTIVATIONS, *quant.WEIGHTS, *quant.METHODS, *TECHNIQUES} - {"fp"}
    names |= OPTIMIZERS
    for file in GENERIC:
        tree = ast.parse((SRC / file).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in names, f"{file}:{node.lineno} names {node.value!r}"


def test_no_module_imports_a_private_name_of_another_package():
    for path in SRC.rglob("*.py"):
        package = ".".join(("onebit", *path.relative_to(SRC).parent.parts))
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.module is None:
                continue
            source = node.module if node.level == 0 else package
            for alias in node.names:
                private = re.match(r"_[A-Za-z]", alias.name)
                inside = source == package or source.startswith(f"{package}.")
                assert not private or inside, (
                    f"{path.relative_to(SRC)}:{node.lineno} imports {alias.name} from {source}"
                )


def _module_name(path: Path) -> str:
    parts = ("onebit", *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that runs: at module level or in a function, not under
    ``if TYPE_CHECKING:`` (type-only, never executed)."""
    found, todo = [], [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        todo += [c for c in ast.iter_child_nodes(node) if not _is_type_checking(c)]
    return found


def import_graph() -> dict[str, set[str]]:
    """{module: the onebit modules importing it runs}: the modules it names, and the package
    ``__init__`` of each outside its own package (``onebit/__init__.py``, the public facade,
    left out). Compiled extensions (setup.py) are modules of their own."""
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    modules = {*files, *re.findall(r'"(onebit\.[\w.]+)"', (ROOT / "setup.py").read_text())}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in _imported(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                named = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: package.count(".") + 2 - node.level]
                    base = ".".join([*up, base] if base else up)
                named = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            for target in named:
                if target not in modules:
                    continue
                parts = target.split(".")
                targets |= {
                    ".".join(parts[:i])
                    for i in range(2, len(parts) + 1)
                    if not name.startswith(".".join(parts[:i]) + ".")
                }
        graph[name] = targets - {name, "onebit"}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = stack[stack.index(v) :]
            del stack[stack.index(v) :]
            if len(part) > 1:
                circles.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


# The layers, lowest first: a module imports from its own layer or those below only.
LAYERS = [
    {"errors", "io", "machine", "user_code", "input_spec", "config"},
    {"quant"},
    {"nn"},
    {"models", "data"},
    {"binarize", "profile", "train", "deploy", "contrib", "report", "plot"},
    {"cli", "__main__"},
]


def _layer(module: str) -> int:
    if module == "onebit":
        return len(LAYERS)  # the public facade re-exports every layer
    top = module.split(".")[1]
    return next(i for i, names in enumerate(LAYERS) if top in names)


def test_the_import_graph_has_no_circle():
    assert _circles(import_graph()) == []


def test_the_import_graph_finds_a_circle_it_is_shown():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_layers_read_downward_and_config_imports_only_the_lowest_modules():
    graph = import_graph()
    upward = [
        f"{m} -> {t}" for m, targets in graph.items() for t in targets if _layer(t) > _layer(m)
    ]
    assert upward == []
    assert graph["onebit.config"] <= {"onebit.errors", "onebit.io", "onebit.user_code"}
