"""Train state pytree, optimizers with learning-rate schedules, and the EMA of weights."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from ldm_jax import rng

LR_SCHEDULES = ("constant", "cosine")


@flax.struct.dataclass
class TrainState:
    """Everything a training run needs to continue exactly where it stopped.

    ``params`` and ``opt_state`` are dicts keyed by network name (``unet``; or
    ``autoencoder`` and ``discriminator``); ``ema_params`` mirrors ``params`` (or is
    ``None``); ``rng`` is the stage's key (uint32[2]); the key of step ``s`` is its ``step`` stream
    (``step_key``), so randomness depends only on the seed and the step.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    rng: jax.Array


def step_key(state: TrainState):
    """The key of update ``state.step``: stream ``step`` of the stage's key (``ldm_jax.rng``)."""
    return rng.stream(state.rng, "step", state.step)


def learning_rate_schedule(cfg) -> optax.Schedule:
    """Linear warm-up over ``cfg.warmup_steps`` to ``cfg.learning_rate``, then constant or cosine decay."""
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r}; expected one of {LR_SCHEDULES}")
    warmup = max(int(cfg.warmup_steps), 0)
    if cfg.lr_schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0,
            cfg.learning_rate,
            warmup_steps=max(warmup, 1),
            decay_steps=max(int(cfg.steps), warmup + 1),
            end_value=cfg.learning_rate * 0.01,
        )
    return optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.learning_rate, max(warmup, 1)), optax.constant_schedule(cfg.learning_rate)],
        [warmup],
    )


def make_optimizer(cfg) -> optax.GradientTransformation:
    """AdamW (β1, β2, weight decay from ``cfg``) after global-norm gradient clipping.

    Its state mirrors the parameter tree array by array, so it is split like the
    parameters and a checkpoint restores on any mesh.
    """
    parts = []
    if cfg.grad_clip and cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay))
    return optax.chain(*parts)


def ema_decay(step, max_decay: float, warmup: float = 10.0):
    """EMA decay with warm-up: ``min(max_decay, (1 + step) / (warmup + step))``.

    Early on the average follows the weights closely; later it approaches ``max_decay``.
    """
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(max_decay, (1.0 + step) / (warmup + step))


def ema_update(ema_params, params, decay):
    """θ_ema ← d·θ_ema + (1 − d)·θ."""
    return jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), ema_params, params)


def all_finite(*values) -> jax.Array:
    """True when every scalar in ``values`` is finite (pass a gradient's global norm for the gradient)."""
    return jnp.all(jnp.isfinite(jnp.stack([jnp.asarray(v, jnp.float32) for v in values])))


def guarded_update(finite, params, updates, new_opt_state, old_opt_state):
    """``(params + updates, new_opt_state)`` when ``finite``, else the old params and optimizer state.

    The guard is folded into the update (one kernel per parameter) rather than a second
    select over every array, which keeps compile time down.
    """
    params = jax.tree.map(lambda p, u: p + jnp.where(finite, u, jnp.zeros_like(u)).astype(p.dtype), params, updates)
    opt_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_opt_state, old_opt_state)
    return params, opt_state
