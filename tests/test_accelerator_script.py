"""benchmarks/accelerator/run.sh: the GPU session's stages name flags that the CLIs accept."""

import os
import shlex
import subprocess

import bench
from tests.micro import ROOT

SCRIPT = ROOT / "benchmarks" / "accelerator" / "run.sh"
STAGES = ("ldm64", "sd15", "sample", "variants", "peers", "train128", "eval128")


def _run(*stages, out):
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(out), "PY": "python3"}
    return subprocess.run(
        ["bash", str(SCRIPT), *stages], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_dry_run_lists_every_stage_with_valid_bench_flags(tmp_path):
    result = _run(*STAGES, out=tmp_path)
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]
    bench_rows = [c[2:] for c in commands if c[:2] == ["python3", "bench.py"]]
    assert len(bench_rows) == 11  # 4 reference rows, the sample job, 6 variants
    records = set()
    for argv in bench_rows:
        args = bench.parse_args(argv)  # exits on a flag bench.py does not know
        records.add(args.json)
        assert args.json.parent == tmp_path
    assert len(records) == len(bench_rows)  # no record overwrites another
    assert any("benchmarks/peers/torch_unets.py" in c for c in commands)
    train = next(c for c in commands if "train.py" in c)
    assert train[:2] == ["timeout", "540"] and "configs/phantom128.py" in train
    assert any("evaluate.py" in c for c in commands)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{s}.log" for s in STAGES)


def test_unknown_stage_is_refused_before_anything_runs(tmp_path):
    result = _run("ldm64", "bogus", out=tmp_path)
    assert result.returncode == 2
    assert "unknown stage 'bogus'" in result.stderr
    assert not (tmp_path / "ldm64.log").exists()
