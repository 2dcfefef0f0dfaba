"""One command-line style (ldm_jax.cli): every entry point's --help has the shared layout, and
a bad flag or a bad input ends as one line ``<prog>: error: ...`` on stderr with exit status 2."""

import ast
import dataclasses
import subprocess
import sys

import pytest

from ldm_jax import cli
from micro import ROOT

CLIS = {  # prog: command
    "train.py": ["train.py"],
    "sample.py": ["sample.py"],
    "evaluate.py": ["evaluate.py"],
    "bench.py": ["bench.py"],
    "python -m ldm_jax.data.build": ["-m", "ldm_jax.data.build"],
    "demo_seeds.py": ["benchmarks/demo_seeds.py"],
    "explain.py": ["explain.py"],
}

BAD = [  # (prog, arguments): one bad flag value and one bad input per CLI
    ("train.py", ["--config", "configs/phantom_tiny.py", "--workdir", "{tmp}/w", "--config.seed=one"]),
    ("train.py", ["--config", "configs/phantom_tiny.py", "--workdir", "{tmp}/w", "--config.nonexistent_key=1"]),
    ("sample.py", ["--workdir", "{tmp}/w", "--out", "{tmp}/o", "--num", "two"]),
    ("sample.py", ["--workdir", "{tmp}/nowhere", "--out", "{tmp}/o", "--num", "2"]),
    ("evaluate.py", ["--workdir", "{tmp}/w", "--edit-method", "blur"]),
    ("evaluate.py", ["--workdir", "{tmp}/nonexistent"]),
    ("bench.py", ["--preset", "phantom_tiny", "--mode", "nonsense", "--batch", "8"]),
    ("bench.py", ["--preset", "ldm64", "--mode", "sample", "--batch", "8"]),
    ("python -m ldm_jax.data.build", ["--dataset", "mammo_phantoms", "--data-dir", "{tmp}/d", "--workers", "x"]),
    (
        "python -m ldm_jax.data.build",
        [
            "--dataset",
            "mammo_dicom",
            "--data-dir",
            "{tmp}/d",
            "--dicom-dir",
            "{tmp}",
            "--labels",
            "{tmp}/l.csv",
            "--split-fractions",
            "0.8,x",
        ],
    ),
    ("demo_seeds.py", ["--seeds", "zero"]),
    ("explain.py", ["--frames", "0"]),
    ("explain.py", ["--workdir", "{tmp}/nowhere"]),
    ("explain.py", ["--frames", "1001", "--out", "{tmp}/x.html"]),  # more frames than the T = 1000 timesteps
]


def _run_all(commands) -> list[subprocess.CompletedProcess]:
    """Run the commands side by side (each pays its imports once)."""
    procs = [
        subprocess.Popen([sys.executable, *c], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=300), *p.communicate()) for p in procs]


def _docstring(command) -> str:
    path = ROOT / (command[1].replace(".", "/") + ".py" if command[0] == "-m" else command[0])
    return ast.get_docstring(ast.parse(path.read_text()))


def test_every_cli_has_the_shared_help_layout():
    """A usage line, the module docstring, then the options (with defaults where there are any)."""
    for (prog, command), result in zip(CLIS.items(), _run_all([[*c, "--help"] for c in CLIS.values()])):
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].startswith(f"usage: {prog} [-h]"), lines[0]
        first = _docstring(command).splitlines()[0]
        assert first in lines and "options:" in lines and lines.index(first) < lines.index("options:"), prog
        assert prog == "train.py" or "(default: " in result.stdout, prog  # train.py's two flags are required


def test_bad_flags_and_bad_inputs_are_one_line_with_status_2(tmp_path):
    commands = [CLIS[prog] + [a.format(tmp=tmp_path) for a in args] for prog, args in BAD]
    for (prog, args), result in zip(BAD, _run_all(commands)):
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, (prog, args, result.stderr[-2000:])
        assert lines[0].startswith(f"{prog}: error: "), lines[0]
    assert not (tmp_path / "w" / "config.json").exists()  # train.py refused before any work


def test_config_overrides_take_the_type_of_the_field():
    overrides = [
        ("seed", "3"),
        ("diffusion.learning_rate", "1e-3"),
        ("autoencoder.learning_rate", "1"),
        ("log.sample_conditions", ""),
        ("log.progress", "false"),
        ("data.config", "128"),
        ("mesh.fsdp", "2"),
    ]
    cfg = cli.load_config("configs/phantom_tiny.py", overrides)
    assert (cfg.seed, cfg.mesh.fsdp) == (3, 2)
    assert cfg.diffusion.learning_rate == 1e-3 and cfg.autoencoder.learning_rate == 1.0
    assert isinstance(cfg.autoencoder.learning_rate, float)
    assert cfg.log.sample_conditions == "" and cfg.log.progress is False and cfg.data.config == "128"
    for key, text, error in [
        ("diffusion.stepz", "3", "no key 'diffusion.stepz'"),
        ("seed.x", "1", "no key"),
        ("seed", "1.5", "seed=1.5"),
        ("log.progress", "maybe", "log.progress=maybe"),
    ]:
        with pytest.raises(ValueError, match=error):
            cli.load_config("configs/phantom_tiny.py", [(key, text)])


def test_split_overrides_takes_both_spellings():
    rest, overrides = cli.split_overrides(
        ["--config", "c.py", "--config.seed=1", "--config.log.every", "5", "--workdir", "w", "--config.seed"]
    )
    assert rest == ["--config", "c.py", "--workdir", "w", "--config.seed"]  # the last lacks a value
    assert overrides == [("seed", "1"), ("log.every", "5")]


@dataclasses.dataclass
class _Options:
    count: int = cli.flag(help="how many")
    names: list[str] = cli.flag(["a"], "one or more")
    fast: bool = cli.flag(True, "go fast")
    out: str | None = cli.flag(None, "where")

    def __post_init__(self):
        if self.count < 0:
            raise ValueError(f"--count must be >= 0, got {self.count}")


def test_dataclass_fields_become_flags(capsys):
    parser = cli.Parser("Doc.", "prog").add_options(_Options)
    assert parser.parse(["--count", "2", "--names", "x", "y", "--no-fast"]) == [_Options(2, ["x", "y"], False)]
    assert cli.run(parser, lambda options: options.count, ["--count", "3"]) == 3
    assert cli.run(parser, lambda options: None, ["--count", "-1"]) == 2
    assert capsys.readouterr().err == "prog: error: --count must be >= 0, got -1\n"
    with pytest.raises(SystemExit) as exit_info:
        parser.parse([])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "prog: error: the following arguments are required: --count\n"
