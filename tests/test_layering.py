"""The import graph points down: cli -> training -> sampling -> models -> nn -> ops -> kernels.

Every import statement of a checked package is read from its source (module level and inside
function bodies alike, so a function-local import cannot hide an upward arrow), resolved to an
absolute module name and compared with the layers above the package.
"""
import ast
from pathlib import Path

import pytest

import vaebm_fast

ROOT = Path(vaebm_fast.__file__).parent

# Folders and top-level modules above models: the layers of the package order plus the tools
# that drive them (bench runs samplers, presets configures training, demo runs everything).
ABOVE_MODELS = ("sampling", "training", "cli", "bench", "presets", "demo", "__main__")

# package -> what it may not import.
FORBIDDEN = {
    "nn": ("models",) + ABOVE_MODELS,
    "models": ABOVE_MODELS,
}


def _module_name(path: Path, root: Path) -> str:
    parts = ("vaebm_fast",) + path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str, root: Path) -> bool:
    """True if ``name`` (vaebm_fast.x.y) is a module or package of the tree at ``root``."""
    rel = Path(*name.split(".")[1:])
    return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


def imported_modules(path: Path, root: Path = ROOT):
    """(line, absolute module name) for every import in the file at ``path``, in line order.

    ``from pkg import name`` yields ``pkg.name`` when that is a module, else ``pkg`` (a name
    taken from a package's ``__init__`` depends on everything that ``__init__`` imports).
    ``importlib.import_module("...")`` with a literal name counts as an import too.
    """
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((node.lineno, alias.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                found.append((node.lineno, candidate if _is_module(candidate, root) else module))
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ast.unparse(node.func) in ("importlib.import_module", "import_module",
                                             "__import__")):
            found.append((node.lineno, node.args[0].value))
    return sorted(found)


def _violations(package: str, root: Path = ROOT):
    forbidden = FORBIDDEN[package]
    for path in sorted((root / package).rglob("*.py")):
        for line, module in imported_modules(path, root):
            parts = module.split(".")
            if parts[0] != "vaebm_fast":
                continue
            # The root package's __init__ imports the samplers: importing from it runs upward.
            if len(parts) == 1 or parts[1] in forbidden:
                yield f"{path.relative_to(root.parent)}:{line} imports {module}"


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_down(package):
    assert list((ROOT / package).rglob("*.py")), f"no modules under vaebm_fast/{package}"
    assert list(_violations(package)) == []


def test_the_checker_sees_function_local_and_relative_imports(tmp_path):
    """The check itself: an import hidden in a function body, relative or absolute, is found."""
    fake_root = tmp_path / "vaebm_fast"
    (fake_root / "nn").mkdir(parents=True)
    (fake_root / "sampling").mkdir()
    (fake_root / "models").mkdir()
    for init in ("__init__.py", "nn/__init__.py", "sampling/__init__.py",
                 "models/__init__.py", "sampling/prepare.py", "models/cells.py"):
        (fake_root / init).write_text("")
    (fake_root / "nn" / "layer.py").write_text(
        "from ..ops import swish\n"
        "def f():\n"
        "    from ..sampling.prepare import prepared\n"
        "    from .. import models\n"
        "    import vaebm_fast.sampling\n"
        "    from vaebm_fast import FastSampler\n")
    found = list(_violations("nn", fake_root))
    assert [v.rsplit(" ", 1)[1] for v in found] == [
        "vaebm_fast.sampling.prepare", "vaebm_fast.models", "vaebm_fast.sampling", "vaebm_fast"]
