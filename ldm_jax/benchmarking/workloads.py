"""The benchmarked jobs on a model preset, compiled ahead of time and sharded over a mesh.

- ``train``: the training loop's diffusion step (``diffusion_step.make_train_step``) with the
  diffusion defaults of ``training.config`` (AdamW after gradient clipping, EMA, label dropout,
  min-SNR ε loss; float32 params, ``dtype`` compute) on the preset's images, encoded by its
  autoencoder (``ldm64``, which has none: on latents); linear schedule, T = 1000; the state
  is donated.
- ``unet``: one UNet forward (inference), optionally with bfloat16 weights.
- ``sample``: ``make_generate``'s whole job under a ``SamplerConfig`` (bench.py: N DDIM steps)
  with classifier-free guidance (a 2B UNet batch per step when the scale is not 1) and the
  autoencoder decode.

The global batch is split over every device of the mesh on its batch axes; parameters and
optimizer state are replicated. Model FLOPs are counted (``flops.count_flops``) on abstract
inputs with ``attention_impl='xla'``, whose attention is two ``dot_general``s per head —
the same arithmetic cuDNN's fused kernel does, which the counter could not see.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax import attributes
from ldm_jax.benchmarking.flops import count_flops
from ldm_jax.benchmarking.timing import time_runs
from ldm_jax.diffusion.samplers import SamplerConfig
from ldm_jax.diffusion.schedule import make_schedule
from ldm_jax.models import presets
from ldm_jax.parallel import batch_sharding, replicated
from ldm_jax.sampling.generate import image_keys, make_generate
from ldm_jax.training import diffusion_step
from ldm_jax.training.config import default_config
from ldm_jax.training.state import make_optimizer

MODES = ("train", "unet", "sample")
DTYPES = {"bf16": jnp.bfloat16, "f32": jnp.float32}
TRAIN_TIMESTEPS = 1000


@dataclasses.dataclass
class CompiledStep:
    """A compiled benchmark step: ``call()`` launches one step and returns its outputs (pass them to
    ``jax.block_until_ready``); ``compile_s`` is the trace + lower + compile time."""

    call: Callable[[], Any]
    compile_s: float


def input_specs(cfg, batch: int, dtype) -> tuple:
    """``ShapeDtypeStruct``s (x, t, labels, context) of a UNet call on preset ``cfg``; None where absent.

    x: float32 latents ``[B, s, s, c]``; t: int32 ``[B]``; labels: int32 ``[B, A]`` when the
    UNet is class-conditioned; context: ``[B, L, context_dim]`` in ``dtype`` when it cross-attends.
    """
    num_classes = tuple(cfg.unet.get("num_classes", ()))
    return (
        jax.ShapeDtypeStruct((batch, cfg.latent_size, cfg.latent_size, cfg.latent_channels), jnp.float32),
        jax.ShapeDtypeStruct((batch,), jnp.int32),
        jax.ShapeDtypeStruct((batch, len(num_classes)), jnp.int32) if num_classes else None,
        jax.ShapeDtypeStruct((batch, cfg.context_len, cfg.unet.context_dim), dtype) if cfg.context_len else None,
    )


def random_inputs(cfg, specs, rng: np.random.Generator) -> tuple:
    """Host arrays for ``input_specs``: N(0, 1) latents and context, uniform t and labels (null included)."""
    x, t, labels, context = specs
    num_classes = np.asarray(tuple(cfg.unet.get("num_classes", ())), np.int32)
    return (
        rng.standard_normal(x.shape, np.float32),
        rng.integers(0, TRAIN_TIMESTEPS, t.shape, np.int32),
        None if labels is None else rng.integers(0, num_classes + 1, labels.shape, np.int32),
        None if context is None else rng.standard_normal(context.shape, np.float32).astype(context.dtype),
    )


def _forward(unet):
    def forward(params, x, t, labels, context):
        return unet.apply({"params": params}, x, t, labels, context)

    return forward


def _param_shapes(module, example, **init_kwargs):
    return jax.eval_shape(lambda k, *a: module.init(k, *a, **init_kwargs)["params"], jax.random.key(0), *example)


def random_params(module, example, rng: np.random.Generator, mesh, dtype=jnp.float32, **init_kwargs):
    """Parameters shaped as ``module.init(key, *example, **init_kwargs)`` makes them, drawn
    N(0, 0.02²) on the host and replicated over ``mesh``.

    Values do not change the timing; drawing them here avoids compiling Flax's
    initialisers (tens of seconds on a CPU, and a large program for sd15).
    """
    shapes = _param_shapes(module, example, **init_kwargs)
    params = jax.tree.map(lambda s: (0.02 * rng.standard_normal(s.shape, np.float32)).astype(dtype), shapes)
    return jax.device_put(params, replicated(mesh))


def _compile(fn, *args, **jit_kwargs):
    start = time.perf_counter()
    compiled = jax.jit(fn, **jit_kwargs).lower(*args).compile()
    return compiled, time.perf_counter() - start


def forward_flops_per_image(cfg, batch: int = 1) -> float:
    """Model FLOPs of one UNet forward per image, counted at ``batch`` on abstract inputs (no allocation)."""
    unet = presets.build_unet(cfg.unet, dtype=jnp.bfloat16, attention_impl="xla")
    specs = input_specs(cfg, batch, jnp.bfloat16)
    return count_flops(_forward(unet), _param_shapes(unet, specs), *specs) / batch


def _train_step(cfg, unet):
    """(step, optimizer, autoencoder or None): the training loop's diffusion step with the config defaults."""
    dcfg = default_config().diffusion
    optimizer = make_optimizer(dcfg)
    autoencoder = None if cfg.autoencoder is None else presets.build_autoencoder(cfg.autoencoder, dtype=unet.dtype)
    step = diffusion_step.make_train_step(unet, autoencoder, optimizer, make_schedule("linear", TRAIN_TIMESTEPS), dcfg)
    return step, optimizer, autoencoder


def _train_batch_specs(cfg, batch: int, dtype, autoencoder) -> dict:
    """The step's batch: ``image`` (or ``latents`` without an autoencoder), ``labels``, ``context`` where used."""
    x, _, labels, context = input_specs(cfg, batch, dtype)
    if autoencoder is not None:
        x = jax.ShapeDtypeStruct((batch, cfg.image_size, cfg.image_size, cfg.image_channels), jnp.float32)
    specs = {"image" if autoencoder is not None else "latents": x, "labels": labels, "context": context}
    return {k: v for k, v in specs.items() if v is not None}


def _encoder_example(specs: dict) -> tuple:
    return (jax.ShapeDtypeStruct((1, *specs["image"].shape[1:]), jnp.float32),)


def train_flops_per_image(cfg, batch: int = 1) -> float:
    """Model FLOPs per image of the training step (encoder forward, UNet forward and backward), on abstract inputs."""
    unet = presets.build_unet(cfg.unet, dtype=jnp.bfloat16, attention_impl="xla")
    step, optimizer, autoencoder = _train_step(cfg, unet)
    specs = _train_batch_specs(cfg, batch, jnp.bfloat16, autoencoder)
    unet_params = _param_shapes(unet, input_specs(cfg, 1, jnp.bfloat16))
    state = jax.eval_shape(lambda p: diffusion_step.state_around(p, optimizer, jax.random.PRNGKey(0)), unet_params)
    ae_params = (
        {} if autoencoder is None else _param_shapes(autoencoder, _encoder_example(specs), method=autoencoder.encode)
    )
    return count_flops(step, state, specs, ae_params, jnp.float32(1.0)) / batch


def train_job(cfg, unet, batch: int, mesh, seed: int) -> CompiledStep:
    """The training loop's diffusion step on random images (or latents), labels and context; the state is donated."""
    step, optimizer, autoencoder = _train_step(cfg, unet)
    rng = np.random.default_rng(seed)
    unet_params = random_params(unet, input_specs(cfg, 1, unet.dtype), rng, mesh)
    state = jax.jit(
        lambda p: diffusion_step.state_around(p, optimizer, jax.random.PRNGKey(seed)), out_shardings=replicated(mesh)
    )(unet_params)
    specs = _train_batch_specs(cfg, batch, unet.dtype, autoencoder)
    ae_params = (
        {}
        if autoencoder is None
        else random_params(autoencoder, _encoder_example(specs), rng, mesh, method=autoencoder.encode)
    )
    _, _, labels, _ = random_inputs(cfg, input_specs(cfg, batch, unet.dtype), rng)
    data = {
        k: labels if k == "labels" else rng.standard_normal(v.shape, np.float32).astype(v.dtype)
        for k, v in specs.items()
    }
    data = jax.device_put(data, batch_sharding(mesh))
    scale = jax.device_put(np.float32(1.0), replicated(mesh))
    compiled, compile_s = _compile(
        step, state, data, ae_params, scale, donate_argnums=0, out_shardings=replicated(mesh)
    )

    def call():
        nonlocal state
        state, metrics = compiled(state, data, ae_params, scale)
        return state, metrics

    return CompiledStep(call, compile_s)


def unet_job(cfg, unet, batch: int, mesh, seed: int, bf16_weights: bool = False) -> CompiledStep:
    """One jitted UNet forward at ``batch`` on random inputs."""
    rng = np.random.default_rng(seed)
    params = random_params(
        unet, input_specs(cfg, 1, unet.dtype), rng, mesh, jnp.bfloat16 if bf16_weights else jnp.float32
    )
    inputs = jax.device_put(random_inputs(cfg, input_specs(cfg, batch, unet.dtype), rng), batch_sharding(mesh))
    compiled, compile_s = _compile(_forward(unet), params, *inputs, out_shardings=batch_sharding(mesh))
    return CompiledStep(lambda: compiled(params, *inputs), compile_s)


def check_sample_preset(name: str, cfg) -> None:
    """Raise unless ``make_generate`` can run preset ``cfg``: it decodes with the autoencoder
    and conditions on the mammography labels only (no context)."""
    if cfg.autoencoder is None or cfg.context_len or tuple(cfg.unet.get("num_classes", ())) != attributes.NUM_CLASSES:
        raise ValueError(
            f"--mode sample runs ldm_jax.sampling.generate.make_generate, which needs an autoencoder "
            f"and the mammography labels {attributes.NUM_CLASSES} without context; preset {name!r} "
            f"has autoencoder={'yes' if cfg.autoencoder else 'none'}, "
            f"num_classes={tuple(cfg.unet.get('num_classes', ()))}, context_len={cfg.context_len}"
        )


def _latent_shape(cfg) -> tuple:
    return (cfg.latent_size, cfg.latent_size, cfg.latent_channels)


def _latent_spec(cfg) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((1, *_latent_shape(cfg)), jnp.float32)


def _generate_args(batch: int, key):
    """``generate``'s data arguments: (scale 1, labels [B, A] all class 0, per-image keys [B])."""
    return (
        jnp.float32(1.0),
        jnp.zeros((batch, len(attributes.NUM_CLASSES)), jnp.int32),
        image_keys(key, jnp.arange(batch)),
    )


def _make_generate(cfg, unet, autoencoder, sampling: SamplerConfig):
    return make_generate(unet, autoencoder, make_schedule("linear", TRAIN_TIMESTEPS), _latent_shape(cfg), sampling)


def sample_job(
    cfg, unet, autoencoder, batch: int, mesh, seed: int, sampling: SamplerConfig, *, bf16_weights: bool = False
) -> CompiledStep:
    """``make_generate``'s job (``sampling``'s steps and guidance, then the decode) on ``batch`` images."""
    rng = np.random.default_rng(seed)
    weight_dtype = jnp.bfloat16 if bf16_weights else jnp.float32
    unet_params = random_params(unet, input_specs(cfg, 1, unet.dtype), rng, mesh, weight_dtype)
    ae_params = random_params(autoencoder, (_latent_spec(cfg),), rng, mesh, weight_dtype, method=autoencoder.decode)
    scale, labels, keys = _generate_args(batch, jax.random.key(seed))
    labels, keys = jax.device_put((labels, keys), batch_sharding(mesh))
    args = (unet_params, ae_params, scale, labels, keys)
    compiled, compile_s = _compile(
        _make_generate(cfg, unet, autoencoder, sampling), *args, out_shardings=batch_sharding(mesh)
    )
    return CompiledStep(lambda: compiled(*args), compile_s)


def sample_flops_per_image(cfg, batch: int, sampling: SamplerConfig) -> float:
    """Model FLOPs per image of the whole sampling job (every UNet call and the decode), on abstract inputs."""
    unet = presets.build_unet(cfg.unet, dtype=jnp.bfloat16, attention_impl="xla")
    autoencoder = presets.build_autoencoder(cfg.autoencoder, dtype=jnp.bfloat16)
    unet_params = _param_shapes(unet, input_specs(cfg, 1, jnp.bfloat16))
    ae_params = _param_shapes(autoencoder, (_latent_spec(cfg),), method=autoencoder.decode)
    args = jax.eval_shape(lambda: _generate_args(batch, jax.random.key(0)))
    generate = _make_generate(cfg, unet, autoencoder, sampling)
    return count_flops(generate, unet_params, ae_params, *args) / batch


def matmul_ceiling_tflops(size: int, device, *, warmup: int = 2, repeats: int = 5, iters: int = 10) -> float:
    """TFLOP/s of a ``size``³ bfloat16 matmul (2·size³ FLOPs) on one ``device``, timed like the jobs."""
    if size < 1:
        raise ValueError(f"--ceiling-size must be >= 1, got {size}")
    rng = np.random.default_rng(0)
    a, b = (
        jax.device_put(rng.standard_normal((size, size), np.float32).astype(jnp.bfloat16), device) for _ in range(2)
    )
    compiled, _ = _compile(jnp.matmul, a, b)
    timing = time_runs(lambda: compiled(a, b), jax.block_until_ready, warmup=warmup, repeats=repeats, iters=iters)
    return 2 * size**3 / timing["step_time_s"] / 1e12
