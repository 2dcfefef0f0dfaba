"""The planted bugs of ``tests/teeth`` still plant: each mutant's text occurs exactly once in its
file, so that ``tests/teeth/run.py`` tests the code as it is (running the mutants is that script's
work, not the suite's)."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent / "teeth"))
import run as teeth  # noqa: E402

MUTANTS = teeth.load_mutants()


def test_there_are_mutants_in_every_area():
    areas = {pathlib.Path(m.path).parts[1] for m in MUTANTS}
    assert {"diffusion", "training", "sampling", "evaluation", "data"} <= areas


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_the_mutant_still_plants(mutant):
    assert teeth.why_not_planted(mutant) is None
    for test in mutant.tests:
        file, _, name = test.partition("::")
        assert (teeth.ROOT / file).is_file(), f"{mutant.name}: no test file {file}"
        assert not name or f"def {name.split('[')[0]}(" in (teeth.ROOT / file).read_text(), f"no test {test}"
