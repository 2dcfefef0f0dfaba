"""One command-line style for every entry point (train.py, sample.py, evaluate.py, bench.py,
``python -m ldm_jax.data.build``, benchmarks/demo_seeds.py).

A program's options are dataclass fields: ``Parser.add_options`` makes each field a flag
``--field-name`` (type from the annotation; ``bool`` as ``--x/--no-x``; ``list[T]`` takes one
or more values; a field without default is required; ``flag`` adds help and choices), and
``--help`` shows the usage line, the module docstring and the options by group with their
defaults. ``run`` parses, builds the dataclasses (their ``__post_init__`` checks values) and
calls the program; a bad flag, or a ``ValueError``/``FileNotFoundError`` from bad input, ends
as one line ``<prog>: error: <reason>`` on stderr with exit status 2.

train.py's experiments are ml_collections config files: ``--config PATH`` plus
``--config.a.b=VALUE`` overrides (``split_overrides``, ``load_config``).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import os
import pathlib
import sys
import types
import typing

import ml_collections

from ldm_jax.storage import EXIT_NO_SPACE, StorageFault, out_of_space

ERRORS = (ValueError, FileNotFoundError)  # bad input: one line, exit status 2
USAGE_ERROR = 2


def flag(default=dataclasses.MISSING, help: str = "", choices=None) -> dataclasses.Field:
    """A dataclass field that ``Parser.add_options`` turns into a flag with ``help`` and ``choices``."""
    metadata = {"help": help, "choices": choices}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """The docstring as written; every optional flag's help ends with its default."""

    def _get_help_string(self, action):
        help = action.help or ""
        if action.required or action.default in (None, "", argparse.SUPPRESS) or "%(default)" in help:
            return help
        return f"{help} (default: %(default)s)"


def _flag_type(annotation):
    """``(type, takes a list)`` of an annotation: ``X | None`` is ``X``, ``list[X]`` a list of ``X``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return _flag_type(args[0])
    if typing.get_origin(annotation) is list:
        return args[0], True
    return annotation, False


class Parser(argparse.ArgumentParser):
    """``argparse`` with the shared help layout and one-line errors; options come from dataclasses."""

    def __init__(self, doc: str, prog: str):
        super().__init__(prog=prog, description=doc, formatter_class=_Formatter)
        self.option_classes: list[type] = []

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")

    def add_options(self, cls: type, title: str | None = None) -> Parser:
        """One flag per field of dataclass ``cls`` (under heading ``title``)."""
        group = self.add_argument_group(title) if title else self
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            kind, many = _flag_type(hints[field.name])
            required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
            default = (
                None
                if required
                else (field.default_factory() if field.default is dataclasses.MISSING else field.default)
            )
            kwargs = dict(dest=field.name, default=default, required=required, help=field.metadata.get("help", ""))
            if kind is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs.update(type=kind, choices=field.metadata.get("choices"), nargs="+" if many else None)
            group.add_argument("--" + field.name.replace("_", "-"), **kwargs)
        self.option_classes.append(cls)
        return self

    def parse(self, argv=None) -> list:
        """The options of ``argv``, one instance per ``add_options`` class (``ValueError`` from their checks)."""
        namespace = self.parse_args(argv)
        return [
            cls(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls)}) for cls in self.option_classes
        ]

    def fail(self, error: Exception | str, status: int = USAGE_ERROR) -> int:
        """Report ``error`` in the one-line style; returns ``status`` (the exit status)."""
        print(f"{self.prog}: error: {error}", file=sys.stderr)
        return status


def use_compilation_cache() -> None:
    """Turn on JAX's persistent compilation cache in ``$XDG_CACHE_HOME/ldm_jax/jax`` (default
    ``~/.cache``), so that a resumed job, or a second sampling job, loads its programs instead of
    compiling them again. A ``JAX_COMPILATION_CACHE_DIR`` that is set (empty: no cache) wins."""
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    import jax

    folder = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "ldm_jax" / "jax"
    jax.config.update("jax_compilation_cache_dir", str(folder))


def run(parser: Parser, program, argv=None, compilation_cache: bool = False) -> int:
    """``program(*options)`` on the parsed ``argv``; its return value (None: 0) is the exit status.
    Bad input, storage faults (``ldm_jax.storage``, each with its own status) and a full disk end as
    one line. ``compilation_cache``: the programs that compile what they run use ``use_compilation_cache``."""
    try:
        options = parser.parse(argv)
        if compilation_cache:
            use_compilation_cache()
        return program(*options) or 0
    except StorageFault as error:
        return parser.fail(error, error.exit_status)
    except ERRORS as error:
        return parser.fail(error)
    except OSError as error:
        if not out_of_space(error):
            raise
        where = f" writing {error.filename}" if error.filename else ""
        return parser.fail(f"no space left on device{where}; free space and run the same command", EXIT_NO_SPACE)


def split_overrides(argv, name: str = "config") -> tuple[list[str], list[tuple[str, str]]]:
    """``argv`` without its ``--config.a.b=VALUE`` (or ``--config.a.b VALUE``) arguments, and those as
    (key, text); a last ``--config.a.b`` without a value stays in ``argv`` (the parser refuses it)."""
    rest, overrides, argv = [], [], list(argv)
    prefix = f"--{name}."
    while argv:
        arg = argv.pop(0)
        if arg.startswith(prefix) and "=" in arg:
            overrides.append(tuple(arg[len(prefix) :].split("=", 1)))
        elif arg.startswith(prefix) and argv:
            overrides.append((arg[len(prefix) :], argv.pop(0)))
        else:
            rest.append(arg)
    return rest, overrides


def _value(text: str, current):
    """``text`` as the type of the key's ``current`` value: a string stays a string, else a Python literal."""
    if isinstance(current, str):
        return text
    if isinstance(current, bool) and text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def load_config(path: str, overrides=()) -> ml_collections.ConfigDict:
    """``get_config()`` of the config file ``path``, locked, with ``overrides`` ((dotted key, text)) applied.

    A key the config lacks, or a value of another type than the key's, raises ``ValueError``.
    """
    if not pathlib.Path(path).is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    cfg.lock()
    for key, text in overrides:
        *parents, leaf = key.split(".")
        node = cfg
        for name in parents:
            node = node.get(name) if isinstance(node, ml_collections.ConfigDict) else None
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            raise ValueError(f"--config.{key}: {path} has no key {key!r}")
        try:
            node[leaf] = _value(text, node[leaf])
        except TypeError as error:
            raise ValueError(f"--config.{key}={text}: {error}") from None
    return cfg
