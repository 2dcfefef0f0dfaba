"""The shape of the code (issue 34, "one home per idea"): short functions, no long positional
tuples, one registry of edit methods, and one module of phantom seed ranges that do not overlap."""

from __future__ import annotations

import ast
import importlib.util
import pathlib

import pytest

from ldm_jax.data import seeds
from ldm_jax.data.lesion_pairs import KINDS
from ldm_jax.sampling.generate import EDITS

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 80
MAX_TUPLE = 4
LONG_FUNCTIONS_ALLOWED = {("ldm_jax/data/phantoms.py", "generate_phantom")}  # the phantom generator, one recipe


def _trees():
    for path in sorted((ROOT / "ldm_jax").rglob("*.py")):
        yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(), filename=str(path))


def long_functions() -> list[str]:
    """``path:line name (n lines)`` of every function over ``MAX_FUNCTION_LINES``, ``def`` to the end
    of its body (decorators excluded)."""
    found = []
    for path, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (path, node.name) not in (
                LONG_FUNCTIONS_ALLOWED
            ):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found.append(f"{path}:{node.lineno} {node.name} ({lines} lines)")
    return found


def _targets(node) -> list:
    if isinstance(node, ast.Assign):
        return node.targets
    if isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension, ast.AnnAssign)):
        return [node.target]
    if isinstance(node, ast.withitem) and node.optional_vars is not None:
        return [node.optional_vars]
    return []


def long_tuples() -> list[str]:
    """``path:line`` of every ``return`` of a tuple literal, and every assignment or loop target
    tuple, of more than ``MAX_TUPLE`` elements."""
    found = []
    for path, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple) and len(node.value.elts) > MAX_TUPLE:
                found.append(f"{path}:{node.lineno} returns {len(node.value.elts)} values")
            for target in _targets(node):
                for part in ast.walk(target):
                    if isinstance(part, (ast.Tuple, ast.List)) and len(part.elts) > MAX_TUPLE:
                        found.append(f"{path}:{part.lineno} unpacks {len(part.elts)} values")
    return found


def test_no_function_is_over_80_lines():
    assert long_functions() == []


def test_no_tuple_of_more_than_4_values_is_returned_or_unpacked():
    assert long_tuples() == []


def test_the_checks_see_what_they_look_for():
    source = "def f(x):\n    a, b, c, d, e = x\n" + "    y = 1\n" * 80 + "    return (a, b, c, d, e)\n"
    tree = ast.parse(source)
    function = tree.body[0]
    assert function.end_lineno - function.lineno + 1 == 83
    targets = [t for node in ast.walk(tree) for t in _targets(node)]
    assert [len(t.elts) for t in targets if isinstance(t, ast.Tuple)] == [5]


def test_one_registry_of_edit_methods():
    import sample
    from ldm_jax.evaluation import options

    cli_methods = {f.name: f.metadata["choices"] for f in sample.EditOptions.__dataclass_fields__.values()}
    assert tuple(EDITS) == cli_methods["edit_method"]
    assert set(options.UNSUPERVISED_EDITS) == {n for n, m in EDITS.items() if m.stage == "diffusion"}
    assert {m.stage for m in EDITS.values()} == {"diffusion", "counterfactual"}


def _configs():
    for path in sorted((ROOT / "configs").glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module.get_config()


def test_phantom_seed_ranges_are_disjoint_for_every_split_size_the_builder_accepts():
    from ldm_jax.data.builders import mammo_phantoms
    from ldm_jax.models import architecture
    from ldm_jax.evaluation.options import Options as EvaluationOptions
    from ldm_jax.explain.page import Options as PageOptions

    records = max(mammo_phantoms._DEFAULT_SIZES.values())  # the largest split a default data set holds
    assert all(records <= most for most in seeds.MAX_SPLIT_SIZE.values())
    evaluation, page = EvaluationOptions(), PageOptions()
    filters = [architecture.resolve(cfg).counterfactual for cfg in _configs()]
    ranked = max(f.steps * f.rank_pairs for f in filters)
    offsets, most = seeds.SPLIT_SEED_OFFSET, seeds.MAX_SPLIT_SIZE
    ranges = {f"{split} split": (first, most[split]) for split, first in offsets.items()}
    ranges["training pairs"] = (seeds.TRAINING_PAIRS_SEED, max(ranked, evaluation.observer_pairs))
    for kind in KINDS:
        ranges[f"filter table {kind} pairs"] = (seeds.kind_offset(seeds.FILTER_PAIRS_SEED, kind), evaluation.pairs)
    ranges["explainer mass pairs"] = (seeds.kind_offset(seeds.EXPLAIN_PAIRS_SEED, "mass"), page.edits)
    spans = sorted((first, first + size, name) for name, (first, size) in ranges.items())
    for (_, end, name), (start, _, following) in zip(spans, spans[1:]):
        assert end <= start, f"{name} overlaps {following}"
    assert seeds.SPLIT_SEED_OFFSET["test"] + evaluation.held_out <= seeds.SPLIT_SEED_OFFSET["test"] + records
    assert 0 <= seeds.EXPLAIN_PHANTOM_SEED < records  # a training-split phantom, as the page says
    with pytest.raises(ValueError, match="unknown lesion kind"):
        seeds.kind_offset(seeds.FILTER_PAIRS_SEED, "cyst")
