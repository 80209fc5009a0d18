"""The import graph points down, as docs/architecture.md draws it, and has no cycle.

Every import statement of every module of the package is read from its source (module level and
inside function bodies alike, so a function-local import cannot hide an upward arrow), resolved
to an absolute module name and compared with the layer map below.
"""
import ast
from pathlib import Path

import pytest

import vaebm_fast

ROOT = Path(vaebm_fast.__file__).parent

# The layers, top to bottom: the top-level modules and folders of vaebm_fast on each. A module
# may import its own folder and anything on a lower layer, never a higher one or its own layer's
# other entries (those are side by side). docs/architecture.md draws the same map.
LAYERS = [
    ("__main__",),                      # python -m vaebm_fast
    ("cli",),                           # the command line
    ("demo", "demo_digits", "bench"),   # the jobs the CLI runs
    ("presets",),                       # named configurations of models and training
    ("training",),                      # stage 1 (VAE) and stage 2 (EBM), the resumable loop
    ("sampling",),                      # Langevin samplers, CUDA-graph chains, replay buffer
    ("models",),                        # energy networks and VAEs
    ("nn",),                            # layers, BatchNorm folding, frozen copies
    ("info",),                          # what this machine can run
    ("ops",),                           # one module per op: spec, reference, checks, dispatch
    ("triton_kernels",),                # Triton kernels and launchers (leaves)
    ("data", "eval"),                   # data sets, metrics and plots
    ("_native", "_triton", "_kernel_rules", "_heap", "validation", "checkpoint",
     "distributed"),
    ("_compile",),                      # the native library compiled on first use
    ("_toolchain", "_requirements"),    # build recipe, torch floor (stdlib only: setup.py)
]
FLOOR = {name: i for i, names in enumerate(LAYERS) for name in names}


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


def _top(path: Path, root: Path) -> str:
    return path.relative_to(root).parts[0].removesuffix(".py")


def _violations(package: str, root: Path = ROOT):
    """Imports of the modules of ``package`` (a top-level name of LAYERS) that run upward or
    sideways."""
    floor = FLOOR[package]
    paths = [root / f"{package}.py"] if (root / f"{package}.py").is_file() else \
        sorted((root / package).rglob("*.py"))
    for path in paths:
        for line, module in imported_modules(path, root):
            parts = module.split(".")
            if parts[0] != "vaebm_fast" or (len(parts) > 1 and parts[1] == package):
                continue
            # The root package's __init__ imports the samplers: importing it runs upward.
            target = parts[1] if len(parts) > 1 else None
            if target is None or target not in FLOOR or FLOOR[target] <= floor:
                yield f"{path.relative_to(root.parent)}:{line} imports {module}"


def test_every_module_is_on_a_layer():
    names = {p.name.removesuffix(".py") for p in ROOT.iterdir()
             if (p.suffix == ".py" or (p / "__init__.py").is_file()) and p.name != "__init__.py"}
    assert names == set(FLOOR), "put new modules on a layer of LAYERS (and the docs)"


@pytest.mark.parametrize("package", sorted(FLOOR))
def test_imports_point_down(package):
    assert list(_violations(package)) == []


def test_no_import_cycle_between_modules():
    graph = {}
    for path in sorted(ROOT.rglob("*.py")):
        graph[_module_name(path, ROOT)] = {m for _, m in imported_modules(path, ROOT)
                                           if m.startswith("vaebm_fast.")}
    state, cycle = {}, []

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycle.append(trail + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycle == []


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
