"""The sub-packages of ``ldm_jax`` import one way only: down the layers of ``LAYERS``.

Every ``.py`` under ``ldm_jax/`` is parsed with ``ast``; every ``import x`` and
``from x import y`` (at module level or inside functions, absolute or relative) that names
an ``ldm_jax`` module is an edge from the importing module's package to the imported one's.
A module may import its own package and packages of lower layers; an edge to a higher
layer, or to another package of the same layer, fails the test. The CLIs (train.py,
sample.py, evaluate.py, bench.py, explain.py) sit above all of it and are not checked.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "ldm_jax"

# Lowest first. Packages of one layer never import each other.
LAYERS = (
    ("storage",),  # storage faults, free space, atomic writes (the standard library only)
    ("attributes", "diffusion", "parallel", "cli", "rng"),  # labels, diffusion maths, device mesh, flags, key streams
    ("models",),  # networks and their parameter initialisation
    ("data", "checkpoint", "perceptual"),  # data sources, checkpoint I/O, SSIM/LPIPS
    ("sampling",),
    ("training",),  # writes sample grids with sampling
    ("evaluation", "benchmarking"),
    ("explain",),  # the explainer page: figures from every layer below
)
RANK = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}


def _module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str, root: pathlib.Path) -> bool:
    base = root.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _imported_modules(tree: ast.AST, module: str, is_package: bool, root: pathlib.Path):
    """``(line, imported module)`` for every import in ``tree`` (``from p import m`` names the
    module ``p.m`` when it is one, else ``p``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield node.lineno, full if _is_module(full, root) else base


def _package_of(module: str) -> str:
    """``ldm_jax.training.run`` → ``training``; ``ldm_jax`` itself → ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def violations(root: pathlib.Path = ROOT, package: str = PACKAGE, rank: dict[str, int] = RANK) -> list[str]:
    """Every import in ``root/package`` that goes up or sideways between layers, as text;
    a package missing from ``rank`` is reported too."""
    found = []
    for path in sorted((root / package).rglob("*.py")):
        module = _module_name(path, root)
        source_package = _package_of(module)
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(root)
        for line, target in sorted(set(_imported_modules(tree, module, path.name == "__init__.py", root))):
            if target != package and not target.startswith(package + "."):
                continue
            target_package = _package_of(target)
            if target_package in ("", source_package):
                continue  # its own package, or the bare root package (version only)
            missing = [name for name in (source_package, target_package) if name and name not in rank]
            if missing:
                found += [f"{where}:{line}: {package}.{name} is in no layer: add it to LAYERS" for name in missing]
                continue
            source_rank = rank.get(source_package, -1)  # the root __init__ sits below every layer
            if rank[target_package] >= source_rank:
                how = "up" if rank[target_package] > source_rank else "sideways"
                found.append(
                    f"{where}:{line}: {module} imports {target} ({how}: "
                    f"{source_package or package} is layer {source_rank + 1}, "
                    f"{target_package} is layer {rank[target_package] + 1})"
                )
    return found


def test_every_package_is_placed_in_a_layer():
    packages = {
        p.stem if p.is_file() else p.name
        for p in (ROOT / PACKAGE).iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()
    }
    assert packages == set(RANK), f"unplaced: {sorted(packages - set(RANK))}, gone: {sorted(set(RANK) - packages)}"


def test_imports_only_go_down_the_layers():
    found = violations()
    assert not found, "imports against the layer order:\n" + "\n".join(found)


def test_the_checker_finds_upward_sideways_relative_and_function_level_imports(tmp_path):
    files = {
        "pkg/__init__.py": "",
        "pkg/low/__init__.py": "",
        "pkg/low/a.py": "import pkg.low.b\nfrom pkg import low\n",
        "pkg/low/b.py": "def f():\n    from pkg.high import c\n",
        "pkg/side.py": "from . import low\nimport pkg.other\n",
        "pkg/other.py": "from .low import a\n",
        "pkg/high/__init__.py": "",
        "pkg/high/c.py": "from pkg.low.a import f\nfrom ..low import b\nimport os\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = violations(tmp_path, "pkg", {"low": 0, "side": 1, "other": 1, "high": 2})
    assert [f.split(" (")[0] for f in found] == [
        "pkg/low/b.py:2: pkg.low.b imports pkg.high.c",
        "pkg/side.py:2: pkg.side imports pkg.other",
    ]
    assert "up: low is layer 1, high is layer 3" in found[0]
    assert "sideways" in found[1]
