"""Throughput benchmark of ldm_jax on a device, or compiler verdicts for an accelerator it does not have.

    python bench.py --preset ldm64|sd15|mammo256|phantom_tiny --mode train|unet|sample --batch B \\
        [--steps 50] [--guidance 7.5] [--dtype bf16|f32] [--attention none|xla|cudnn] [--bf16-weights] \\
        [--peak-tflops X] [--measure-ceiling] [--json FILE]
    python bench.py --target v5e:4x8|v5p:2x2x1|v6e:2x2|... --config configs/X.py [--config.KEY=VALUE] \\
        [--programs diffusion sample ...] [--batch B] [--max-batch] [--json FILE]

Timing (``--preset``; protocol in BENCHMARKS.md): compile time (trace + lower + compile, ahead of
time) and the warm-up calls are timed apart and kept out of the throughput; then ``--repeats``
runs of ``--iters`` calls, each run ended by ``jax.block_until_ready``; the step time is the
median per-call time. Reports images/s, the peak device memory, model FLOPs per image (counted
from the jaxpr: matmuls and convolutions), achieved TFLOP/s and MFU against the device's dense
bf16 peak and, with ``--measure-ceiling``, against a measured bf16 matmul.

Ahead of time (``--target``; ``ldm_jax.benchmarking.aot``): the config's programs (training
steps, sampling and editing jobs, from the builders the trainer and sampler use) compiled by the
target's own compiler on abstract devices: memory per chip against its HBM (or the compiler's
refusal), FLOPs, bytes, collectives and a roofline bound. ``--batch`` sets every program's global
batch (default: the config's; sampling 4 per chip); ``--max-batch`` finds, by bisection, the
largest per-chip batch that fits. Exit status 1 when a program does not fit. Needs libtpu
(``pip install "jax[tpu]==<jax version>"``).

Progress goes to stderr, the JSON record(s) to stdout (and ``--json FILE``). Timing imports only
jax, flax, optax, numpy and ml_collections (runs on a bare accelerator host).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

import jax

from ldm_jax import cli
from ldm_jax.benchmarking import targets, timing, workloads
from ldm_jax.diffusion.samplers import SamplerConfig
from ldm_jax.models import presets
from ldm_jax.parallel import check_batch_size, make_mesh

ATTENTION = {"none": None, "xla": "xla", "cudnn": "cudnn"}
VERSION_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "ml_collections")
AOT_PACKAGES = (*VERSION_PACKAGES, "libtpu")


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class Options:
    preset: str | None = cli.flag(None, "model preset (timing)", choices=presets.PRESETS)
    mode: str | None = cli.flag(None, "the job timed", choices=workloads.MODES)
    batch: int | None = cli.flag(None, "global batch, split over all devices")
    target: str | None = cli.flag(None, "compile ahead of time for this accelerator: " + ", ".join(targets.EXAMPLES))
    config: str | None = cli.flag(None, "run config whose programs --target compiles (--config.KEY=VALUE overrides)")
    programs: list[str] = cli.flag([], "programs --target compiles (default: all it runs)", choices=targets.PROGRAMS)
    max_batch: bool = cli.flag(False, "--target: find the largest per-chip batch that fits, by bisection")
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
        if self.batch is not None and self.batch < 1:
            raise ValueError(f"--batch must be >= 1, got {self.batch}")
        if self.target is not None or self.config is not None:
            if self.target is None or self.config is None or self.preset or self.mode:
                raise ValueError("--target and --config go together, without --preset and --mode")
            targets.parse_target(self.target)
            self.steps = 50 if self.steps is None else self.steps
            return
        if self.programs or self.max_batch:
            raise ValueError("--programs and --max-batch apply to --target only")
        if self.preset is None or self.mode is None or self.batch is None:
            raise ValueError("timing needs --preset, --mode and --batch (or compile ahead with --target and --config)")
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


def compile_ahead(args: Options, overrides=()) -> list[dict]:
    """One ``aot.compile_program`` record per program of ``--config`` for ``--target``."""
    from ldm_jax.benchmarking import aot
    from ldm_jax.models import architecture
    from ldm_jax.training.config import stages_of

    cfg = architecture.resolve(cli.load_config(args.config, overrides))
    target = targets.parse_target(args.target)
    mesh = aot.target_mesh(target, cfg.mesh.fsdp)
    stages = stages_of(cfg)
    runs = [n for n in targets.PROGRAMS if n in ("sample", "edit") or n.removesuffix("_gan") in stages]
    names = args.programs or runs
    sampling = SamplerConfig(sampler="ddim", num_steps=args.steps, guidance_scale=args.guidance)
    records = []
    for name in names:

        def compile_at(batch, name=name):
            program = aot.build(_with_batch(cfg, name, batch), name, mesh, sample_batch=batch, sampling=sampling)
            _log(f"compiling {name} at global batch {program.global_batch} for {target.text}")
            record = aot.compile_program(program, target)
            _log(aot.summary_line(record))
            return record

        default = args.batch or (4 * mesh.size if name in ("sample", "edit") else None)
        record = compile_at(default)
        if args.max_batch:
            record = {**record, "max_per_chip_batch": _largest_fit(compile_at, record, mesh.size)}
            _log(f"{name}: largest per-chip batch that fits on {target.text}: {record['max_per_chip_batch']}")
        records.append({**record, "date": timing.utc_now(), "versions": timing.versions(AOT_PACKAGES)})
    return records


def _with_batch(cfg, name, batch):
    """``cfg`` with stage ``name``'s global batch set to ``batch`` (None: as it is)."""
    stage = name.removesuffix("_gan")
    if batch is None or stage not in ("autoencoder", "diffusion", "counterfactual"):
        return cfg
    cfg = cfg.copy_and_resolve_references()
    cfg[stage].batch_size = batch
    return cfg


def _largest_fit(compile_at, first: dict, chips: int) -> int:
    """The largest per-chip batch b for which ``compile_at(b · chips)`` fits (0: not even 1): doubling
    from the first record's batch while it fits, then bisecting the last gap."""
    fits = {int(first["per_chip_batch"]): first["fits"]}
    b = int(first["per_chip_batch"])
    step = 2 if first["fits"] else 0.5
    while True:
        b = max(int(b * step), 1) if step < 1 else b * 2
        if b in fits:
            break
        fits[b] = compile_at(b * chips)["fits"]
        if fits[b] != (step > 1) or b == 1:
            break
    good = max([k for k, v in fits.items() if v], default=0)
    bad = min([k for k, v in fits.items() if not v and k > good], default=None)
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        if compile_at(mid * chips)["fits"]:
            good = mid
        else:
            bad = mid
    return good


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


def run(args: Options, overrides=()) -> int:
    """Benchmark (or compile ahead), print the JSON record(s) to stdout and write them to ``--json``;
    the exit status (1: a program does not fit its target)."""
    result = compile_ahead(args, overrides) if args.target else benchmark(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
        _log(f"wrote {args.json}")
    return int(args.target is not None and not all(r["fits"] for r in result))


def main(argv=None) -> int:
    argv, overrides = cli.split_overrides(sys.argv[1:] if argv is None else argv)
    return cli.run(parser(), lambda args: run(args, overrides), argv)


if __name__ == "__main__":
    sys.exit(main())
