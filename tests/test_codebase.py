"""Rules the code keeps (docs/extending.md): the generic parts name no binarizer or technique,
and no module imports a private name of another package."""

import ast
import re
from pathlib import Path

from onebit import quant
from onebit.train.techniques import TECHNIQUES

SRC = Path(__file__).resolve().parent.parent / "src/onebit"
GENERIC = ["train/trainer.py", "nn/binary.py", "config.py"]


def test_generic_code_names_no_binarizer_method_or_technique():
    names = {*quant.ACTIVATIONS, *quant.WEIGHTS, *quant.METHODS, *TECHNIQUES} - {"fp"}
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
