"""Throughput benchmark of the ldm_jax UNet: the training loop's step, UNet forward, or a full sampling job.

    python bench.py --preset ldm64|sd15|mammo256|phantom_tiny --mode train|unet|sample --batch B \\
        [--steps 50] [--guidance 7.5] [--dtype bf16|f32] [--attention none|xla|cudnn] [--bf16-weights] \\
        [--peak-tflops X] [--measure-ceiling] [--json FILE]

Protocol (BENCHMARKS.md): compile time (trace + lower + compile, ahead of time) and the
warm-up calls are timed apart and kept out of the throughput; then ``--repeats`` runs of
``--iters`` calls, each run ended by ``jax.block_until_ready``; the step time is the median
per-call time. Reports images/s, the peak device memory, model FLOPs per image (counted from
the jaxpr: matmuls and convolutions), achieved TFLOP/s and MFU
against the device's dense bf16 peak and, with ``--measure-ceiling``, against a measured
bf16 matmul. Progress goes to stderr, the JSON record to stdout (and ``--json FILE``).

Imports only jax, flax, optax, numpy and ml_collections (runs on a bare accelerator host).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

import jax

from ldm_jax import cli
from ldm_jax.benchmarking import timing, workloads
from ldm_jax.diffusion.samplers import SamplerConfig
from ldm_jax.models import presets
from ldm_jax.parallel import check_batch_size, make_mesh

ATTENTION = {"none": None, "xla": "xla", "cudnn": "cudnn"}
VERSION_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "ml_collections")


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class Options:
    preset: str = cli.flag(help="model preset", choices=presets.PRESETS)
    mode: str = cli.flag(help="the job timed", choices=workloads.MODES)
    batch: int = cli.flag(help="global batch, split over all devices")
    steps: int | None = cli.flag(None, "DDIM steps of --mode sample (default 50)")
    guidance: float = cli.flag(7.5, "classifier-free guidance scale of --mode sample (1 runs no unconditional branch)")
    dtype: str = cli.flag("bf16", "compute dtype", choices=tuple(workloads.DTYPES))
    attention: str = cli.flag("none", "attention_impl of the UNet (none: jax picks)", choices=tuple(ATTENTION))
    bf16_weights: bool = cli.flag(False, "cast the weights to bfloat16 (unet, sample)")
    warmup: int = cli.flag(2, "untimed calls after compilation")
    repeats: int = cli.flag(5, "timed runs; the median is reported")
    iters: int | None = cli.flag(None, "calls per timed run (default 5; sample: 1)")
    peak_tflops: float | None = cli.flag(None, "dense bf16 peak TFLOP/s per device (overrides the table)")
    measure_ceiling: bool = cli.flag(False, "time a large bf16 matmul as a second MFU base")
    ceiling_size: int = cli.flag(8192, "M = N = K of the ceiling matmul")
    seed: int = cli.flag(0, "seed of the random weights and inputs")
    json: pathlib.Path | None = cli.flag(None, "also write the record to this file")

    def __post_init__(self):
        if self.batch < 1:
            raise ValueError(f"--batch must be >= 1, got {self.batch}")
        if self.mode != "sample" and self.steps is not None:
            raise ValueError("--steps applies to --mode sample only")
        if self.mode == "sample" and self.steps is None:
            self.steps = 50
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        if self.warmup < 0 or self.repeats < 1 or (self.iters is not None and self.iters < 1) or self.ceiling_size < 1:
            raise ValueError("need --warmup >= 0, --repeats >= 1, --iters >= 1 and --ceiling-size >= 1")
        if self.mode == "train" and self.bf16_weights:
            raise ValueError("--bf16-weights is for inference (--mode unet or sample); training keeps float32 params")
        if self.iters is None:
            self.iters = 1 if self.mode == "sample" else 5


def parser() -> cli.Parser:
    return cli.Parser(__doc__, "bench.py").add_options(Options)


def parse_args(argv=None) -> Options:
    """The ``Options`` of ``argv`` (``SystemExit`` on a bad flag, ``ValueError`` on a bad value)."""
    return parser().parse(argv)[0]


def _time(job: workloads.CompiledStep, args, iters: int) -> dict:
    return timing.time_runs(job.call, jax.block_until_ready, warmup=args.warmup, repeats=args.repeats, iters=iters)


def benchmark(args) -> dict:
    """Run the benchmark ``args`` (``Options``) describe and return its result record."""
    cfg = presets.get_preset(args.preset)
    mesh = make_mesh(1)
    check_batch_size(args.batch, mesh)
    if args.mode == "sample":
        workloads.check_sample_preset(args.preset, cfg)
    dtype = workloads.DTYPES[args.dtype]
    unet = presets.build_unet(cfg.unet, dtype=dtype, attention_impl=ATTENTION[args.attention])
    device = jax.devices()[0]
    peak, peak_source = timing.peak_tflops(device.device_kind, device.platform, args.peak_tflops)
    _log(f"{args.preset} {args.mode} batch {args.batch} on {mesh.size} x {device.device_kind} ({device.platform})")

    unet_forward_s = unet_fraction = None
    if args.mode == "train":
        job = workloads.train_job(cfg, unet, args.batch, mesh, args.seed)
        flops = workloads.train_flops_per_image(cfg, args.batch)
        flops_note = (
            "training step: "
            + ("encoder forward + " if cfg.autoencoder is not None else "")
            + "UNet forward and backward"
        )
    elif args.mode == "unet":
        job = workloads.unet_job(cfg, unet, args.batch, mesh, args.seed, args.bf16_weights)
        flops, flops_note = workloads.forward_flops_per_image(cfg, args.batch), "UNet forward"
    else:
        autoencoder = presets.build_autoencoder(cfg.autoencoder, dtype=dtype)
        sampling = SamplerConfig(sampler="ddim", num_steps=args.steps, guidance_scale=args.guidance)
        job = workloads.sample_job(
            cfg, unet, autoencoder, args.batch, mesh, args.seed, sampling, bf16_weights=args.bf16_weights
        )
        flops = workloads.sample_flops_per_image(cfg, args.batch, sampling)
        guided = 2 * args.batch if args.guidance != 1 else args.batch
        flops_note = f"{args.steps} DDIM steps x UNet forward at batch {guided} + autoencoder decode, per image"
    _log(f"compiled in {job.compile_s:.2f} s; {args.warmup} warm-up calls, {args.repeats} x {args.iters} timed")
    result = _time(job, args, args.iters)
    _log(f"step time {result['step_time_s'] * 1e3:.2f} ms (median of {args.repeats})")

    if args.mode == "sample":
        _log(f"timing the per-step UNet forward at batch {guided}, {args.steps} calls per run")
        forward = workloads.unet_job(cfg, unet, guided, mesh, args.seed, args.bf16_weights)
        unet_forward_s = _time(forward, args, args.steps)["step_time_s"]
        unet_fraction = args.steps * unet_forward_s / result["step_time_s"]

    ceiling = None
    if args.measure_ceiling:
        _log(f"measuring the matmul ceiling ({args.ceiling_size}^3 bf16)")
        ceiling = workloads.matmul_ceiling_tflops(args.ceiling_size, device)
    memory, memory_note = timing.peak_memory(jax.local_devices())
    record = {
        "framework": "jax",
        "preset": args.preset,
        "mode": args.mode,
        "batch": args.batch,
        "steps": args.steps,
        "dtype": args.dtype,
        "attention": args.attention,
        "bf16_weights": args.bf16_weights,
        "device_count": mesh.size,
        "device_kind": device.device_kind,
        "platform": device.platform,
        "versions": timing.versions(VERSION_PACKAGES),
        "date": timing.utc_now(),
        "compile_s": job.compile_s,
        **result,
        "peak_memory_bytes": memory,
        "peak_memory_note": memory_note,
        "flops_per_image": flops,
        "flops_note": flops_note,
        "peak_tflops": peak,
        "peak_tflops_source": peak_source,
        "ceiling_tflops": ceiling,
        "unet_forward_s": unet_forward_s,
        "unet_fraction": unet_fraction,
        **timing.throughput(args.batch, result["step_time_s"], flops, mesh.size, peak, ceiling),
    }
    return timing.check_record(record)


def run(args: Options) -> None:
    """Benchmark, print the JSON record to stdout and write it to ``--json``."""
    text = json.dumps(benchmark(args), indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
        _log(f"wrote {args.json}")


def main(argv=None) -> int:
    return cli.run(parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
