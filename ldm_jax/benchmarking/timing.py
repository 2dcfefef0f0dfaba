"""Framework-free benchmark helpers: timing protocol, peak table, derived metrics, versions.

Imports only the standard library, so ``benchmarks/peers/torch_unets.py`` shares it on a
host without jax.

Protocol (``time_runs``): ``warmup`` synchronised calls whose time is reported apart
(compilation is timed by the caller, before any call); then ``repeats`` timed runs of
``iters`` calls each, synchronised once at the end of the run; the step time is the
median over runs of (run time / iters).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

# Dense bf16 peak per device (TFLOP/s, no sparsity), from the vendors' data sheets.
PEAK_BF16_TFLOPS = {
    "H100 SXM": 989.0,
    "H200 SXM": 989.0,
    "A100": 312.0,
    "TPU v4": 275.0,
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v6e": 918.0,
}
# ``device_kind`` strings (as jax and torch.cuda.get_device_name report them) -> table entry.
# PCIe/NVL boards have lower clocks and are left out on purpose (pass --peak-tflops).
_KIND_PATTERNS = (
    (r"NVIDIA H100(?!.*(PCIe|NVL)).*", "H100 SXM"),
    (r"NVIDIA H200(?!.*NVL).*", "H200 SXM"),
    (r"NVIDIA A100.*", "A100"),
    (r"TPU v4", "TPU v4"),
    (r"TPU v5( lite|e)", "TPU v5e"),
    (r"TPU v5p?", "TPU v5p"),
    (r"TPU v6( lite|e)", "TPU v6e"),
)

# Every key of a result record (bench.py and the PyTorch peer script print the same ones).
RESULT_FIELDS = (
    "framework",
    "preset",
    "mode",
    "batch",
    "steps",
    "dtype",
    "attention",
    "bf16_weights",
    "device_count",
    "device_kind",
    "platform",
    "versions",
    "date",
    "compile_s",
    "warmup_s",
    "warmup_runs",
    "repeats",
    "iters_per_run",
    "run_times_s",
    "step_time_s",
    "images_per_s",
    "peak_memory_bytes",
    "peak_memory_note",
    "flops_per_image",
    "flops_note",
    "achieved_tflops",
    "peak_tflops",
    "peak_tflops_source",
    "mfu",
    "ceiling_tflops",
    "mfu_vs_ceiling",
    "unet_forward_s",
    "unet_fraction",
)


def peak_tflops(device_kind: str, platform_name: str, override: float | None = None) -> tuple[float | None, str]:
    """(dense bf16 peak TFLOP/s per device, where it came from); the peak is None when unknown.

    ``override`` (``--peak-tflops``) wins; CPUs have no entry; otherwise ``device_kind``
    must match one of the table's devices exactly (H100/H200 SXM, A100, TPU v4/v5e/v5p/v6e).
    """
    if override is not None:
        if not override > 0:
            raise ValueError(f"--peak-tflops must be > 0, got {override}")
        return float(override), "--peak-tflops"
    if platform_name == "cpu":
        return None, "no peak for CPUs; pass --peak-tflops to get an MFU"
    for pattern, name in _KIND_PATTERNS:
        if re.fullmatch(pattern, device_kind.strip()):
            return PEAK_BF16_TFLOPS[name], f"table: {name}"
    return None, f"device kind {device_kind!r} is not in the peak table; pass --peak-tflops"


def time_runs(call: Callable[[], Any], sync: Callable[[Any], Any], *, warmup: int, repeats: int, iters: int) -> dict:
    """Time ``call`` (which launches one step) per the module protocol; ``sync(out)`` blocks on it.

    Returns ``warmup_s`` (all warm-up calls), ``run_times_s`` (seconds per call, one entry
    per timed run) and ``step_time_s`` (their median).
    """
    if warmup < 0 or repeats < 1 or iters < 1:
        raise ValueError(f"need warmup >= 0, repeats >= 1 and iters >= 1; got {warmup}, {repeats}, {iters}")
    start = time.perf_counter()
    for _ in range(warmup):
        sync(call())
    warmup_s = time.perf_counter() - start
    run_times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            out = call()
        sync(out)
        run_times.append((time.perf_counter() - start) / iters)
    return {
        "warmup_s": warmup_s,
        "warmup_runs": warmup,
        "repeats": repeats,
        "iters_per_run": iters,
        "run_times_s": run_times,
        "step_time_s": statistics.median(run_times),
    }


def throughput(
    batch: int,
    step_time_s: float,
    flops_per_image: float | None,
    device_count: int,
    peak: float | None,
    ceiling: float | None,
) -> dict:
    """images/s = batch / step time; achieved TFLOP/s = FLOPs per image · images/s / 1e12;
    MFU = achieved / (peak · devices); ``mfu_vs_ceiling`` the same against the measured
    matmul ceiling. Unknown inputs give None."""
    images_per_s = batch / step_time_s
    achieved = None if flops_per_image is None else flops_per_image * images_per_s / 1e12
    return {
        "images_per_s": images_per_s,
        "achieved_tflops": achieved,
        "mfu": None if achieved is None or peak is None else achieved / (peak * device_count),
        "mfu_vs_ceiling": None if achieved is None or ceiling is None else achieved / (ceiling * device_count),
    }


def peak_memory(devices) -> tuple[int | None, str | None]:
    """(largest ``peak_bytes_in_use`` over ``devices``, None) from ``device.memory_stats()``,
    or (None, why) where the backend does not report it (e.g. CPU). The peak covers the
    whole process so far (parameters, optimizer state, every compiled program run)."""
    peaks = []
    for device in devices:
        stats = device.memory_stats()
        if not stats or "peak_bytes_in_use" not in stats:
            return None, f"{device.platform} device {device.id}: memory_stats() reports no peak_bytes_in_use"
        peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks), None


def versions(packages: tuple[str, ...]) -> dict:
    """Installed versions of ``packages`` (None when absent), plus ``python`` and ``platform``."""
    found = {}
    for package in packages:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return {**found, "python": sys.version.split()[0], "platform": platform.platform()}


def utc_now() -> str:
    """The current time, ISO 8601 in UTC (seconds)."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def check_record(record: dict) -> dict:
    """``record`` with its keys in ``RESULT_FIELDS`` order; raises if a field is missing or extra."""
    missing, extra = set(RESULT_FIELDS) - set(record), set(record) - set(RESULT_FIELDS)
    if missing or extra:
        raise ValueError(f"result record: missing fields {sorted(missing)}, unexpected fields {sorted(extra)}")
    return {key: record[key] for key in RESULT_FIELDS}
