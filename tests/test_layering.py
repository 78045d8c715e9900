"""Imports flow one way (DESIGN.md): cli -> stages -> trainers -> methods -> models -> runtime -> io/conventions/errors.

The test reads every module's imports from its source (module level and inside functions alike: an import hidden
in a function is still a dependency) and fails on an upward one, naming the file, the line and the rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import wsss

PACKAGE = Path(wsss.__file__).parent

# floor of each module, bottom = 0; a module may import its own floor only inside its own package (sideways,
# e.g. seeds.saliency -> seeds.grabcut), and any floor below it
FLOORS: list[tuple[int, tuple[str, ...]]] = [
    (0, ("wsss", "wsss.errors", "wsss.progress")),
    (1, ("wsss.files",)),
    (2, ("wsss.conventions",)),
    (3, ("wsss.io", "wsss.config", "wsss.metrics")),
    (4, ("wsss.datasets", "wsss.runtime", "wsss.crf", "wsss.folders")),  # readers, runtime plumbing, CRF
    (5, ("wsss.models.backbones",)),                        # the backbone contract, below every model
    (6, ("wsss.models", "wsss.fit")),  # models; the training loop (runtime only: neither imports the other)
    (7, ("wsss.seeds", "wsss.label", "wsss.pairs", "wsss.report")),   # methods, training data, overlays
    (8, ("wsss.trainers",)),                                  # trainers
    (9, ("wsss.recipes",)),
    (10, ("wsss.stages",)),
    (11, ("wsss.cli",)),
    (12, ("wsss.__main__",)),
]


def floor_of(module: str) -> int:
    best, best_len = None, -1
    for floor, prefixes in FLOORS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = floor, len(prefix)
    assert best is not None, f"{module}: no floor in tests/test_layering.py; add it to FLOORS"
    return best


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """``[(line, imported wsss module)]`` of one source file, relative imports resolved."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "wsss" or target.startswith("wsss."):
                out.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names if a.name == "wsss" or a.name.startswith("wsss."))
    return out


def group(module: str) -> str:
    """The top-level module or subpackage of ``wsss`` a module belongs to (``wsss.seeds.cam`` -> ``wsss.seeds``)."""
    return ".".join(module.split(".")[:2])


def upward_imports(root: Path = PACKAGE) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        importer = module_name(path, root)
        for line, target in imports_of(path, root):
            if target == "wsss" and importer != "wsss":
                continue  # the package's own __init__ (__version__) is the floor
            low, high = floor_of(target), floor_of(importer)
            same_package = group(target) == group(importer)
            if low > high or (low == high and not same_package):
                problems.append(f"{path.relative_to(root.parent)}:{line}: {importer} (floor {high}) imports "
                                f"{target} (floor {low})")
    return problems


def test_no_module_imports_upward():
    assert upward_imports() == []


def test_the_checker_finds_an_upward_import_hidden_in_a_function(tmp_path):
    root = tmp_path / "wsss"
    (root / "stages").mkdir(parents=True)
    for name in ("__init__.py", "stages/__init__.py", "stages/runner.py", "conventions.py"):
        (root / name).write_text("")
    (root / "io.py").write_text("from .conventions import IGNORE\n\n\ndef f():\n    from .stages.runner import run\n")
    (root / "stages/folder.py").write_text("from ..io import f\nfrom . import runner\n")
    assert upward_imports(root) == ["wsss/io.py:5: wsss.io (floor 3) imports wsss.stages.runner (floor 10)"]
    (root / "pairs.py").write_text("from .seeds import x\n")  # same floor, another package: sideways is refused
    assert upward_imports(root)[-1] == "wsss/pairs.py:1: wsss.pairs (floor 7) imports wsss.seeds (floor 7)"
    assert floor_of("wsss.models.backbones.resnet") == 5 and floor_of("wsss.models.deeplab") == 6
