"""README.md and docs/*.md hold what they promise: README is a manual of at most 30,000 bytes,
every relative link reaches a file (and a heading, when it names one), and every command they
show would parse: its script exists and takes the flags used, its config file exists and has the
keys overridden, its make target is in the Makefile.

Commands are read from fenced code blocks and from inline code that holds a ``python`` or is a ``make``
command. A script's flags are the ones its ``--help`` prints (run once per script); config keys are
checked by loading the config with the overrides, as ``train.py`` does (``ldm_jax.cli.load_config``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_BYTES = 30_000


def doc_files() -> list[pathlib.Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


# ---------------------------------------------------------------------------------------------
# Markdown: prose, code, headings, links.


@dataclasses.dataclass(frozen=True)
class Command:
    """One shell command line (continuations joined) shown in a document."""

    path: pathlib.Path
    line: int
    text: str

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def split_markdown(text: str) -> tuple[str, list[tuple[int, str]]]:
    """The prose (fenced code blanked out, line numbers kept) and the fenced code lines (number, text)."""
    prose, code, fenced = [], [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            prose.append("")
        elif fenced:
            code.append((number, line))
            prose.append("")
        else:
            prose.append(line)
    return "\n".join(prose), code


INLINE_CODE = re.compile(r"`([^`]+)`")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower case, punctuation (anything but letters,
    digits, ``_``, ``-`` and spaces) dropped, each space a ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"<[^>]+>", "", text)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


@functools.lru_cache(maxsize=None)
def anchors(path: pathlib.Path) -> frozenset[str]:
    return text_anchors(path.read_text(encoding="utf-8"))


def text_anchors(text: str) -> frozenset[str]:
    """Every heading anchor of a markdown text; a repeated heading gets ``-1``, ``-2``, … as on GitHub."""
    prose, _ = split_markdown(text)
    seen: dict[str, int] = {}
    result = set()
    for match in HEADING.finditer(prose):
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return frozenset(result)


def link_errors(path: pathlib.Path, text: str) -> list[str]:
    """Relative links of ``text`` (the file ``path``) whose file or heading does not exist."""
    prose, _ = split_markdown(text)
    prose = INLINE_CODE.sub(lambda m: " " * len(m.group(0)), prose)  # links in code are not links
    errors = []
    for match in LINK.finditer(prose):
        target = match.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, …
            continue
        line = prose.count("\n", 0, match.start()) + 1
        file_part, _, anchor = target.partition("#")
        where = f"{path.relative_to(ROOT)}:{line}: link {target!r}"
        if not file_part:  # a heading of this text
            if anchor not in text_anchors(text):
                errors.append(f"{where}: no heading with anchor #{anchor} here")
            continue
        resolved = (path.parent / file_part).resolve()
        if not resolved.exists():
            errors.append(f"{where}: no file {resolved}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            errors.append(f"{where}: {resolved.name} has no heading with anchor #{anchor}")
    return errors


def commands(path: pathlib.Path, text: str) -> list[Command]:
    """The command lines of the fenced code blocks (``\\`` continuations joined, ``#`` comments cut)
    and the inline code spans that hold a ``python`` command or are a ``make`` command."""
    prose, code = split_markdown(text)
    found = []
    pending, start = "", 0
    for number, line in code:
        line = re.sub(r"(^|\s)#.*$", "", line)
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        if (pending + line).strip():
            found.append(Command(path, start, pending + line))
        pending = ""
    for match in INLINE_CODE.finditer(prose):
        span = match.group(1).replace("\n", " ")
        if PYTHON.search(span) or re.match(r"\s*make\s", span):
            found.append(Command(path, prose.count("\n", 0, match.start()) + 1, span))
    return found


# ---------------------------------------------------------------------------------------------
# What a command may use: a script's flags, a config's keys, the Makefile's targets.


@functools.lru_cache(maxsize=None)
def help_flags(program: tuple[str, ...]) -> frozenset[str]:
    """The ``--flags`` that ``python PROGRAM --help`` prints (``program``: a script path or ``-m``, module)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, *program, "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"python {' '.join(program)} --help failed:\n{done.stderr[-2000:]}"
    return frozenset(re.findall(r"(?<![\w-])--[A-Za-z][\w-]*", done.stdout))


@functools.lru_cache(maxsize=None)
def make_targets() -> frozenset[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set()
    for match in re.finditer(r"^([^\s:=#][^:=#]*?)\s*::?(?!=)", text, re.M):
        targets.update(name for name in match.group(1).split() if not name.startswith("$"))
    return frozenset(targets)


PYTHON = re.compile(r"(?<![\w.-])python3?\s+(?:-m\s+([\w.]+)|(\S+\.py))")
SEPARATOR = re.compile(r";|&&|\|\||(?<!\S)&(?!\S)")
MAKE = re.compile(r"(?<![\w./-])make\s+")


def _tokens(text: str) -> list[str]:
    try:
        tokens = shlex.split(text)
    except ValueError:  # an unbalanced quote in a placeholder: split on spaces
        tokens = text.split()
    return [token.strip("[]") for token in tokens]


def _config_errors(where: str, config: str | None, overrides: list[tuple[str, str]]) -> list[str]:
    from ldm_jax import cli

    if config is None:
        return [
            f"{where}: --config.{key} overrides a key, but the command names no config file" for key, _ in overrides
        ]
    if not (ROOT / config).is_file():
        return [f"{where}: --config {config}: no such file"]
    errors = []
    for key, value in overrides:
        try:
            cli.load_config(str(ROOT / config), [(key, value)])
        except ValueError as error:
            errors.append(f"{where}: {error}")
    return errors


def python_errors(command: Command) -> list[str]:
    """What in ``command``'s ``python X.py …`` / ``python -m ldm_jax… …`` invocations would not parse."""
    errors = []
    for match in PYTHON.finditer(command.text):
        module, script = match.groups()
        rest = SEPARATOR.split(command.text[match.end() :])[0]
        where = f"{command.where()}: python {module and '-m ' + module or script}"
        if script is not None:
            if not (ROOT / script).is_file():
                errors.append(f"{where}: no such script")
                continue
            program = (script,)
        elif module.split(".")[0] == "ldm_jax":
            program = ("-m", module)
        else:  # another package's module (pytest, pip): not ours to check
            continue
        flags = help_flags(program)
        tokens = _tokens(rest)
        config, overrides = None, []
        for i, token in enumerate(tokens):
            flag = re.match(r"--([A-Za-z][\w-]*)((?:\.[\w-]+)+)?(?:=(.*))?$", token)
            if not flag:
                continue
            name, dotted, value = flag.groups()
            if dotted:  # --config.a.b=VALUE
                if f"--{name}" not in flags:
                    errors.append(f"{where}: {token.split('=')[0]}: the program has no --{name}")
                elif value is None and i + 1 < len(tokens):
                    overrides.append((dotted[1:], tokens[i + 1]))
                else:
                    overrides.append((dotted[1:], value or ""))
                continue
            if f"--{name}" not in flags:
                errors.append(f"{where}: --{name} is not one of its flags")
            elif name == "config":
                path = value if value is not None else (tokens[i + 1] if i + 1 < len(tokens) else "")
                if path.endswith(".py"):  # a config file (data.build's --config is a builder config)
                    config = path
        if config is not None or overrides:
            errors += _config_errors(where, config, overrides)
    return errors


def make_errors(command: Command) -> list[str]:
    """Targets of ``command``'s ``make …`` that the Makefile does not define."""
    errors = []
    for match in MAKE.finditer(command.text):
        rest = SEPARATOR.split(command.text[match.end() :])[0]
        for token in _tokens(rest):
            if token.startswith("-") or "=" in token:
                continue
            if token not in make_targets():
                errors.append(f"{command.where()}: make {token}: no such target in the Makefile")
    return errors


def command_errors(command: Command) -> list[str]:
    return python_errors(command) + make_errors(command)


def all_commands() -> list[Command]:
    return [c for path in doc_files() for c in commands(path, path.read_text(encoding="utf-8"))]


# ---------------------------------------------------------------------------------------------
# The checks.


def test_readme_is_a_manual_of_at_most_30_kb():
    size = README.stat().st_size
    assert size <= MAX_README_BYTES, f"README.md is {size:,} bytes, over {MAX_README_BYTES:,}: move reference to docs/"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_reach_a_file_and_heading(path):
    errors = link_errors(path, path.read_text(encoding="utf-8"))
    assert not errors, "\n".join(errors)


def test_readme_links_every_docs_page():
    linked = {m.group(1).partition("#")[0] for m in LINK.finditer(README.read_text(encoding="utf-8"))}
    missing = [p.name for p in doc_files()[1:] if f"docs/{p.name}" not in linked]
    assert not missing, f"README.md does not link {missing}"


def test_docs_show_commands_of_every_program():
    """The command extraction finds what the docs show (a guard against it silently finding nothing)."""
    texts = [c.text for c in all_commands()]
    for program in ("train.py", "sample.py", "evaluate.py", "bench.py", "explain.py", "ldm_jax.data.build"):
        assert any(PYTHON.search(t) and program in t for t in texts), program
    assert any(MAKE.search(t) for t in texts)
    assert any("--config." in t for t in texts)


@pytest.mark.parametrize("command", all_commands(), ids=lambda c: c.where())
def test_command_parses(command):
    errors = command_errors(command)
    assert not errors, "\n".join(errors)


def test_the_checks_catch_planted_mistakes():
    """A broken link, a missing heading, a flag a script lacks, a config key it lacks, a missing script,
    a missing config file and a make target the Makefile lacks are each reported."""
    doc = ROOT / "docs" / "planted.md"  # never written: the checks read the text given
    text = "\n".join(
        [
            "# Planted",
            "[gone](no_such_page.md) and [no heading](../README.md#no-such-heading) and [here](#planted)",
            "[not here](#no-heading-here) and [there](../README.md#two-commands)",
            "```",
            "python train.py --config configs/phantom_tiny.py --workdir w --no-such-flag",
            "python train.py --config configs/phantom_tiny.py --workdir w --config.diffusion.no_such_key=1",
            "python train.py --config configs/no_such_config.py --workdir w",
            "python no_such_script.py --help",
            "make no-such-target",
            "make test",
            "```",
        ]
    )
    links = link_errors(doc, text)
    assert len(links) == 3, links
    assert "no_such_page.md" in links[0] and "#no-such-heading" in links[1] and "#no-heading-here" in links[2]
    found = {c.line: command_errors(c) for c in commands(doc, text)}
    assert len(found[5]) == 1 and "--no-such-flag" in found[5][0], found
    assert len(found[6]) == 1 and "no_such_key" in found[6][0], found
    assert len(found[7]) == 1 and "no_such_config.py" in found[7][0], found
    assert len(found[8]) == 1 and "no such script" in found[8][0], found
    assert len(found[9]) == 1 and "no-such-target" in found[9][0], found
    assert found[10] == [], found


def test_github_slugs():
    assert github_slug("The supervised filter (`--edit-method counterfactual`)") == (
        "the-supervised-filter---edit-method-counterfactual"
    )
    assert github_slug("The demo's autoencoder (`configs/phantom_tiny.py`, 2026-11-30)") == (
        "the-demos-autoencoder-configsphantom_tinypy-2026-11-30"
    )
    assert github_slug("CPU compile time: LLVM at -O1") == "cpu-compile-time-llvm-at--o1"
    assert github_slug("Limits of the 64×64 phantoms") == "limits-of-the-6464-phantoms"
