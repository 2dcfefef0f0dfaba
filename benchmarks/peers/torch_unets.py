"""PyTorch peers of ``bench.py``: diffusers' reference UNets at the ``ldm64`` and ``sd15`` shapes.

    python benchmarks/peers/torch_unets.py [--preset ldm64 sd15] [--mode train unet] \
        [--backend eager compile] [--batch B] [--json FILE]

Runs every (preset, mode, backend) combination asked for, at the batches of the reference
table in BENCHMARKS.md unless ``--batch`` is given, and prints one JSON record per line
with the fields of ``bench.py`` (``ldm_jax.benchmarking.timing.RESULT_FIELDS``).

Models (same shapes as ``ldm_jax.models.presets``; the parameter count is checked):

- ``ldm64``: ``UNet2DModel``, channels (224, 448, 672, 896), 2 res blocks per level,
  attention at the three lower resolutions and in the middle with 32-channel heads,
  17 class embeddings (16 classes + null), 64×64×4 latents — 274,075,428 parameters.
- ``sd15``: ``UNet2DConditionModel`` with Stable Diffusion 1.5's config (320, 640, 1280,
  1280 channels, 8 heads, 768-d cross-attention on a 77-token context) — 859,520,964.

Protocol (as ``bench.py``): bf16 autocast over float32 parameters (``--dtype f32``: no
autocast, TF32 matmuls as XLA's default precision on GPU), AdamW (β = 0.9/0.999, ε = 1e-8,
weight decay 1e-4 as optax's defaults; fused on CUDA), MSE on ε with t ~ U{0..999} and the
linear β schedule 1e-4 → 0.02; the UNet forward under ``torch.inference_mode``. The first
call is reported as ``compile_s`` (torch.compile compiles there; eager selects kernels),
then ``--warmup`` calls, then ``--repeats`` runs of ``--iters`` calls each ended by
``torch.cuda.synchronize()``; the median per-call time is the step time. FLOPs per image:
``torch.utils.flop_counter.FlopCounterMode`` on one batch-1 forward (training = 3×).
Peak memory: ``torch.cuda.max_memory_allocated``.

torch and diffusers are optional: without them the script exits with a message.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ldm_jax.benchmarking import timing  # noqa: E402 (standard library only; after the path set-up)

DEFAULT_BATCH = {("ldm64", "train"): 64, ("ldm64", "unet"): 128, ("sd15", "train"): 16, ("sd15", "unet"): 32}
EXPECTED_PARAMS = {"ldm64": 274_075_428, "sd15": 859_520_964}  # ldm_jax's presets (tests/test_presets.py)
LATENT = (4, 64, 64)  # C, H, W of both presets' latents
CONTEXT = (77, 768)
NUM_CLASS_EMBEDS = 17
TRAIN_TIMESTEPS = 1000


def build_unet(preset: str, diffusers):
    """The diffusers UNet of ``preset`` (float32 parameters, randomly initialised)."""
    if preset == "ldm64":
        return diffusers.UNet2DModel(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            block_out_channels=(224, 448, 672, 896),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=32,
            norm_num_groups=32,
            num_class_embeds=NUM_CLASS_EMBEDS,
            resnet_time_scale_shift="default",
        )
    return diffusers.UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CONTEXT[1],
        attention_head_dim=8,
        norm_num_groups=32,
    )


def random_inputs(preset: str, batch: int, device, torch, dtype):
    """(x [B, 4, 64, 64] float32, t [B] int64, conditioning kwargs) for the model's forward."""
    x = torch.randn(batch, *LATENT, device=device)
    t = torch.randint(0, TRAIN_TIMESTEPS, (batch,), device=device)
    if preset == "ldm64":
        return x, t, {"class_labels": torch.randint(0, NUM_CLASS_EMBEDS, (batch,), device=device)}
    return x, t, {"encoder_hidden_states": torch.randn(batch, *CONTEXT, device=device, dtype=dtype)}


def forward_flops_per_image(model, preset: str, device, torch) -> int:
    """FLOPs of one batch-1 forward as ``FlopCounterMode`` counts them (multiply-add = 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    x, t, cond = random_inputs(preset, 1, device, torch, torch.float32)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x, t, **cond)
    return counter.get_total_flops()


def make_call(model, preset: str, mode: str, batch: int, device, torch, autocast, weight_dtype, channels_last):
    """A function that runs one training step or one forward and returns its output tensor."""
    x0, t, cond = random_inputs(preset, batch, device, torch, weight_dtype)
    if channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    if mode == "unet":
        x0 = x0.to(weight_dtype)

        def forward():
            with torch.inference_mode(), autocast():
                return model(x0, t, **cond).sample

        return forward

    betas = torch.linspace(1e-4, 0.02, TRAIN_TIMESTEPS, dtype=torch.float64)
    alphas_cumprod = torch.cumprod(1 - betas, 0).to(device=device, dtype=torch.float32)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4, fused=device.type == "cuda"
    )

    def step():
        t = torch.randint(0, TRAIN_TIMESTEPS, (batch,), device=device)
        noise = torch.randn_like(x0)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with autocast():
            out = model(x_t, t, **cond).sample
        loss = torch.nn.functional.mse_loss(out.float(), noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def make_sync(device, torch):
    """``sync(_)``: wait for the device's queued work (CUDA), a no-op on the CPU."""

    def sync(_):
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return sync


def matmul_ceiling_tflops(size: int, device, torch) -> float:
    """TFLOP/s of a ``size``³ bfloat16 matmul (2·size³ FLOPs), timed like the jobs."""
    a, b = (torch.randn(size, size, device=device, dtype=torch.bfloat16) for _ in range(2))
    result = timing.time_runs(lambda: a @ b, make_sync(device, torch), warmup=2, repeats=5, iters=10)
    return 2 * size**3 / result["step_time_s"] / 1e12


def run_one(args, preset: str, mode: str, backend: str, batch: int, torch, diffusers, device, ceiling) -> dict:
    """One benchmark record (see the module docstring)."""
    sync = make_sync(device, torch)
    bf16_compute = args.dtype == "bf16"
    weight_dtype = torch.bfloat16 if args.bf16_weights else torch.float32

    def autocast():
        if not bf16_compute:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    torch.manual_seed(args.seed)
    model = build_unet(preset, diffusers).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    if n_params != EXPECTED_PARAMS[preset]:
        print(
            f"[torch_unets] warning: {preset} has {n_params:,} parameters, ldm_jax's preset "
            f"{EXPECTED_PARAMS[preset]:,}",
            file=sys.stderr,
        )
    flops = forward_flops_per_image(model, preset, device, torch) * (3 if mode == "train" else 1)
    model.to(weight_dtype)
    model.train(mode == "train")
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if backend == "compile":
        model = torch.compile(model, mode=args.compile_mode)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    call = make_call(model, preset, mode, batch, device, torch, autocast, weight_dtype, args.channels_last)
    start = time.perf_counter()
    sync(call())
    compile_s = time.perf_counter() - start
    result = timing.time_runs(call, sync, warmup=args.warmup, repeats=args.repeats, iters=args.iters)

    if device.type == "cuda":
        memory, memory_note = torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
        kind, platform_name = torch.cuda.get_device_name(device), "gpu"
    else:
        memory, memory_note = None, f"no memory statistics on {device.type}"
        kind, platform_name = device.type, device.type
    peak, peak_source = timing.peak_tflops(kind, platform_name, args.peak_tflops)
    versions = timing.versions(("torch", "diffusers", "numpy"))
    versions["torch_cuda"] = torch.version.cuda
    record = {
        "framework": "torch.compile" if backend == "compile" else "pytorch-eager",
        "preset": preset,
        "mode": mode,
        "batch": batch,
        "steps": None,
        "dtype": args.dtype,
        "attention": "sdpa",
        "bf16_weights": args.bf16_weights,
        "device_count": 1,
        "device_kind": kind,
        "platform": platform_name,
        "versions": versions,
        "date": timing.utc_now(),
        "compile_s": compile_s,
        **result,
        "peak_memory_bytes": memory,
        "peak_memory_note": memory_note,
        "flops_per_image": float(flops),
        "flops_note": "FlopCounterMode, " + ("3 x UNet forward" if mode == "train" else "UNet forward"),
        "peak_tflops": peak,
        "peak_tflops_source": peak_source,
        "ceiling_tflops": ceiling,
        "unet_forward_s": None,
        "unet_fraction": None,
        **timing.throughput(batch, result["step_time_s"], flops, 1, peak, ceiling),
    }
    del call, model
    if backend == "compile":
        torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return timing.check_record(record)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", nargs="+", choices=("ldm64", "sd15"), default=["ldm64", "sd15"])
    parser.add_argument("--mode", nargs="+", choices=("train", "unet"), default=["train", "unet"])
    parser.add_argument("--backend", nargs="+", choices=("eager", "compile"), default=["eager", "compile"])
    parser.add_argument("--batch", type=int, default=None, help="default: the reference table's batch per mode")
    parser.add_argument("--dtype", choices=("bf16", "f32"), default="bf16", help="bf16: autocast")
    parser.add_argument("--bf16-weights", action="store_true", help="bfloat16 parameters (--mode unet only)")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format for the convolutions")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode, e.g. max-autotune")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--measure-ceiling", action="store_true")
    parser.add_argument("--ceiling-size", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=pathlib.Path, default=None, help="also write all records (a JSON list)")
    args = parser.parse_args(argv)
    if args.batch is not None and args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")
    if args.bf16_weights and "train" in args.mode:
        parser.error("--bf16-weights is for --mode unet only; training keeps float32 params")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    try:
        import diffusers
        import torch
    except ImportError as error:
        sys.exit(
            f"torch_unets.py needs torch and diffusers ({error}); install them with "
            "`pip install torch diffusers` on the benchmark host"
        )
    if torch.cuda.is_available():
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    else:
        device = torch.device("cpu")
        print("[torch_unets] warning: no CUDA device; running on the CPU", file=sys.stderr)

    ceiling = None
    if args.measure_ceiling:
        ceiling = matmul_ceiling_tflops(args.ceiling_size, device, torch)
    records = []
    for preset in args.preset:
        for mode in args.mode:
            for backend in args.backend:
                batch = args.batch or DEFAULT_BATCH[(preset, mode)]
                print(f"[torch_unets] {preset} {mode} {backend} batch {batch}", file=sys.stderr, flush=True)
                record = run_one(args, preset, mode, backend, batch, torch, diffusers, device, ceiling)
                print(json.dumps(record), flush=True)
                records.append(record)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=2) + "\n")
    return records


if __name__ == "__main__":
    main()
