"""bench.py and ldm_jax.benchmarking: the jaxpr FLOP counter against hand counts and the
reference UNets' FLOPs, the JSON record of each mode on phantom_tiny, the peak table, and
bench.py's import closure (no data/IO packages)."""

import importlib.util
import json
import pathlib
import statistics
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from ldm_jax.benchmarking import timing, workloads
from ldm_jax.benchmarking.flops import count_flops
from ldm_jax.models import presets
from ldm_jax.training import diffusion_step

ROOT = pathlib.Path(__file__).resolve().parent.parent
FORBIDDEN = ("tensorflow_datasets", "tensorflow", "grain", "pydicom", "scipy", "PIL", "tqdm", "orbax", "tensorboardX")
QUICK = ["--preset", "phantom_tiny", "--warmup", "1", "--repeats", "2", "--iters", "1"]


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_cli", ROOT / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    return module


def _spec(*shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


def test_matmul_flops_are_2mnk():
    m, k, n = 3, 5, 7
    assert count_flops(jnp.matmul, _spec(m, k), _spec(k, n)) == 2 * m * n * k
    # batched einsum: batch dims multiply, contraction over two axes
    flops = count_flops(lambda a, b: jnp.einsum("bijk,bjkl->bil", a, b), _spec(2, 3, 4, 5), _spec(2, 4, 5, 6))
    assert flops == 2 * 2 * 3 * 6 * (4 * 5)


def test_conv_flops_are_2_out_kh_kw_cin_over_groups():
    def conv(x, w, groups=1, stride=1):
        return lax.conv_general_dilated(
            x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups
        )

    out_elems = 2 * 8 * 8 * 16
    assert count_flops(conv, _spec(2, 8, 8, 6), _spec(3, 3, 6, 16)) == 2 * out_elems * 3 * 3 * 6
    grouped = count_flops(lambda x, w: conv(x, w, groups=2), _spec(2, 8, 8, 6), _spec(3, 3, 3, 16))
    assert grouped == 2 * out_elems * 3 * 3 * 6 // 2
    strided = count_flops(lambda x, w: conv(x, w, stride=2), _spec(2, 8, 8, 6), _spec(3, 3, 6, 16))
    assert strided == 2 * (2 * 4 * 4 * 16) * 3 * 3 * 6


def test_flops_recurse_into_scan_remat_jit_cond_custom_vjp():
    m = 4
    one = 2 * m**3

    @jax.custom_vjp
    def custom(a):
        return a @ a

    custom.defvjp(lambda a: (custom(a), a), lambda a, g: (g @ a.T,))

    def f(a):
        a, _ = lax.scan(lambda c, _: (jax.checkpoint(lambda c: jnp.tanh(c @ c))(c), None), a, None, length=3)
        a = jax.jit(lambda c: c @ c)(a)
        a = lax.cond(a[0, 0] > 0, lambda c: c @ c @ c, lambda c: c, a)  # the costlier branch: 2 matmuls
        return custom(a) + jnp.sum(a)

    assert count_flops(f, _spec(m, m)) == (3 + 1 + 2 + 1) * one


@pytest.mark.parametrize("name, reference", [("ldm64", 202.4e9), ("sd15", 803.3e9)])
def test_unet_forward_flops_match_pytorch_counter(name, reference):
    flops = workloads.forward_flops_per_image(presets.get_preset(name))
    assert flops == pytest.approx(reference, rel=0.03)


def test_peak_table_and_override():
    assert timing.peak_tflops("NVIDIA H100 80GB HBM3", "gpu") == (989.0, "table: H100 SXM")
    assert timing.peak_tflops("TPU v5 lite", "tpu")[0] == 197.0
    assert timing.peak_tflops("TPU v5", "tpu")[0] == 459.0
    assert timing.peak_tflops("TPU v4 lite", "tpu")[0] is None  # v4i is not a v4
    assert timing.peak_tflops("NVIDIA H100 PCIe", "gpu")[0] is None
    assert timing.peak_tflops("cpu", "cpu")[0] is None
    assert timing.peak_tflops("cpu", "cpu", 2.0) == (2.0, "--peak-tflops")
    with pytest.raises(ValueError, match="peak-tflops"):
        timing.peak_tflops("cpu", "cpu", 0.0)


def _check_record(record, mode, batch, peak=None):
    assert tuple(record) == timing.RESULT_FIELDS
    assert record["framework"] == "jax" and record["preset"] == "phantom_tiny" and record["mode"] == mode
    assert record["batch"] == batch and record["device_count"] == jax.device_count() == 8
    assert record["platform"] == "cpu" and isinstance(record["device_kind"], str)
    assert {"jax", "jaxlib", "flax", "optax", "python", "platform"} <= set(record["versions"])
    assert all(isinstance(v, str) for v in record["versions"].values())
    for field in ("compile_s", "warmup_s", "step_time_s", "images_per_s", "flops_per_image", "achieved_tflops"):
        assert isinstance(record[field], float) and record[field] > 0, field
    assert len(record["run_times_s"]) == record["repeats"] == 2
    assert record["step_time_s"] == statistics.median(record["run_times_s"])
    assert record["images_per_s"] == pytest.approx(batch / record["step_time_s"])
    assert record["achieved_tflops"] == pytest.approx(record["flops_per_image"] * record["images_per_s"] / 1e12)
    # CPU: no memory statistics and no table peak, each with its reason
    assert record["peak_memory_bytes"] is None and "memory_stats" in record["peak_memory_note"]
    assert "--peak-tflops" in record["peak_tflops_source"]
    if peak is None:
        assert record["peak_tflops"] is None and record["mfu"] is None
    else:
        assert record["peak_tflops"] == peak
        assert record["mfu"] == pytest.approx(record["achieved_tflops"] / (peak * record["device_count"]))
    json.dumps(record)


def test_bench_train_and_unet_records(tmp_path):
    bench = _bench_module()
    assert bench.main([*QUICK, "--mode", "train", "--batch", "8", "--json", str(tmp_path / "train.json")]) == 0
    train = json.loads((tmp_path / "train.json").read_text())
    _check_record(train, "train", 8)
    # batch 16: the same program as the sample test's guided forward (shared through the compilation cache)
    unet = bench.benchmark(bench.parse_args([*QUICK, "--mode", "unet", "--batch", "16", "--peak-tflops", "1.0"]))
    assert unet["flops_per_image"] == pytest.approx(
        workloads.forward_flops_per_image(presets.get_preset("phantom_tiny"))
    )
    # the training loop's step: the encoder's forward, then about 3 x the UNet's forward (forward and backward)
    expected = workloads.train_flops_per_image(presets.get_preset("phantom_tiny"))
    assert train["flops_per_image"] == pytest.approx(expected)
    assert train["flops_per_image"] > 3 * unet["flops_per_image"]
    _check_record(unet, "unet", 16, peak=1.0)
    assert train["steps"] is None and train["unet_fraction"] is None and train["ceiling_tflops"] is None


def test_bench_train_mode_is_the_training_loops_step(monkeypatch):
    """--mode train builds its step with ``diffusion_step.make_train_step``, the function the loop jits."""
    built = []
    make = diffusion_step.make_train_step
    monkeypatch.setattr(diffusion_step, "make_train_step", lambda *args: built.append(args) or make(*args))
    workloads.train_flops_per_image(presets.get_preset("phantom_micro"))
    assert len(built) == 1 and built[0][1] is not None  # with the preset's autoencoder


def test_bench_sample_runs_without_forbidden_packages(tmp_path):
    """The whole sample job (UNet, sampler, decoder) runs in a subprocess where the forbidden
    packages look absent (``sys.modules[name] = None``: importing them fails, ``find_spec``
    says None), and writes a full record."""
    script = textwrap.dedent(f"""
        import runpy, sys
        sys.modules.update(dict.fromkeys({FORBIDDEN!r}))
        sys.argv = ["bench.py"] + sys.argv[1:]
        runpy.run_path("bench.py", run_name="__main__")
        loaded = [m for m, module in sys.modules.items() if module is not None and m.split(".")[0] in {FORBIDDEN!r}]
        assert not loaded, loaded
    """)
    out = tmp_path / "sample.json"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            *QUICK,
            "--mode",
            "sample",
            "--batch",
            "8",
            "--steps",
            "2",
            "--measure-ceiling",
            "--ceiling-size",
            "128",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    assert json.loads(result.stdout) == record
    _check_record(record, "sample", 8)
    assert record["steps"] == 2
    assert 0 < record["unet_fraction"] and record["unet_forward_s"] > 0
    assert record["ceiling_tflops"] > 0
    assert record["mfu_vs_ceiling"] == pytest.approx(record["achieved_tflops"] / (8 * record["ceiling_tflops"]))


@pytest.mark.parametrize(
    "args, error",
    [
        (["--preset", "phantom_tiny", "--mode", "train", "--batch", "8", "--bf16-weights"], "--bf16-weights is for"),
        (["--preset", "phantom_tiny", "--mode", "unet", "--batch", "8", "--steps", "5"], "--steps applies"),
        (["--preset", "phantom_tiny", "--mode", "unet", "--batch", "12"], "not divisible"),
        (["--preset", "ldm64", "--mode", "sample", "--batch", "8"], "needs an autoencoder"),
    ],
)
def test_bench_rejects_bad_input(args, error, capsys):
    assert _bench_module().main(args) == 2
    assert error in capsys.readouterr().err
