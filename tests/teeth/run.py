"""Check that the tests bite: plant each known bug in a scratch copy of the repository and
run the tests that must catch it; a bug they miss (a surviving mutant) fails this script.

    .venv/bin/python tests/teeth/run.py            # every mutant in tests/teeth/mutants_*.py
    .venv/bin/python tests/teeth/run.py --only ddpm_subgrid_beta --list

Each ``mutants_<area>.py`` holds ``MUTANTS``, a list of ``Mutant``: one exact text
replacement in one file (the text must occur exactly once) and the tests to run. The copy
shares this checkout's ``.jax_cache`` so that compiles are reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Mutant:
    """A plausible bug: in ``path`` (relative to the repository), ``old`` becomes ``new``;
    at least one of ``tests`` (pytest node ids or files) must then fail."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


def load_mutants() -> list[Mutant]:
    mutants = []
    for file in sorted(pathlib.Path(__file__).parent.glob("mutants_*.py")):
        spec = importlib.util.spec_from_file_location(file.stem, file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        mutants += module.MUTANTS
    names = [m.name for m in mutants]
    if len(set(names)) != len(names):
        raise ValueError(f"mutant names repeat: {sorted(n for n in set(names) if names.count(n) > 1)}")
    return mutants


def _copy_repository(scratch: pathlib.Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for name in files:
        if (ROOT / name).is_file():
            (scratch / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, scratch / name)
    (ROOT / ".jax_cache").mkdir(exist_ok=True)
    (scratch / ".jax_cache").symlink_to(ROOT / ".jax_cache")


def why_not_planted(mutant: Mutant, root: pathlib.Path = ROOT) -> str | None:
    """None when ``mutant`` plants in the repository at ``root`` (its text occurs exactly once), else why not."""
    target = root / mutant.path
    if not target.is_file():
        return f"{mutant.name}: {mutant.path} does not exist: update the mutant to the current code"
    count = target.read_text().count(mutant.old)
    if count != 1:
        return (
            f"{mutant.name}: the text to replace occurs {count} times in {mutant.path}, not once: "
            "update the mutant to the current code"
        )
    return None


def plant(scratch: pathlib.Path, mutant: Mutant) -> None:
    problem = why_not_planted(mutant, scratch)
    if problem:
        raise ValueError(problem)
    target = scratch / mutant.path
    target.write_text(target.read_text().replace(mutant.old, mutant.new))


def caught(mutant: Mutant) -> tuple[bool, str]:
    """(whether a test failed with the bug planted, pytest's last lines)."""
    with tempfile.TemporaryDirectory(prefix="teeth_") as tmp:
        scratch = pathlib.Path(tmp)
        _copy_repository(scratch)
        plant(scratch, mutant)
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutant.tests],
            cwd=scratch,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
    tail = "\n".join(result.stdout.splitlines()[-3:])
    if result.returncode in (2, 3, 4, 5):  # interrupted, internal error, usage error, no tests collected
        raise RuntimeError(
            f"{mutant.name}: pytest could not run the tests (exit {result.returncode}):\n"
            f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    return result.returncode == 1, tail


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", help="mutant names to run (default: all)")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = p.parse_args(argv)
    mutants = load_mutants()
    if args.only:
        unknown = set(args.only) - {m.name for m in mutants}
        if unknown:
            p.error(f"unknown mutant(s): {sorted(unknown)}")
        mutants = [m for m in mutants if m.name in args.only]
    if args.list:
        for m in mutants:
            print(f"{m.name}: {m.path} -> {' '.join(m.tests)}")
        return 0
    survivors, stale = [], []
    for i, mutant in enumerate(mutants, 1):
        problem = why_not_planted(mutant)
        if problem:  # reported, and the run goes on: a stale mutant fails it at the end
            print(f"[{i}/{len(mutants)}] DOES NOT APPLY: {problem}", flush=True)
            stale.append(mutant.name)
            continue
        start = time.monotonic()
        ok, tail = caught(mutant)
        print(
            f"[{i}/{len(mutants)}] {mutant.name}: {'caught' if ok else 'SURVIVED'} ({time.monotonic() - start:.0f} s)",
            flush=True,
        )
        if not ok:
            survivors.append(mutant.name)
            print(tail, flush=True)
    print(
        f"{len(mutants) - len(survivors) - len(stale)} of {len(mutants)} planted bugs caught"
        + (f"; survived: {', '.join(survivors)}" if survivors else "")
        + (f"; do not apply: {', '.join(stale)}" if stale else "")
    )
    return 1 if survivors or stale else 0


if __name__ == "__main__":
    sys.exit(main())
