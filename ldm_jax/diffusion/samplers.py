"""Reverse-process samplers (DDPM, DDIM, DPM-Solver++(2M)), guidance and DDIM inversion.

Each sampler is one ``lax.scan`` over a descending timestep grid t_0 > ... > t_{n-1} and a
final step to clean data (ᾱ = 1). ``denoise_fn(x, t, cond)`` gets x [B, ...], t int32 [B]
and ``cond`` (any pytree with a leading batch axis, or None) and returns the model output
in the ``prediction`` parameterization (``forward.PREDICTIONS``).

Under ``jax.jit``: ``denoise_fn``, ``sampler``, ``num_steps``, ``spacing``, ``prediction``,
``start_step``, ``return_trajectory`` and ``clip_x0`` must be static (Python values closed
over by the jitted function); ``x_T``, ``key``, ``cond``, ``null_cond``, ``eta`` and the
``Schedule`` may be traced. ``guidance_scale`` may be either: a Python number is static
(1 skips the unconditional pass), an array is traced (both passes always run). A network's
parameters belong in the jitted function's arguments, e.g.
``jax.jit(lambda params, x, key: sample(partial(apply, params), schedule, x, key, ...))``.

Randomness: the noise of grid step i (the index into the full ``timesteps`` grid) is
``jax.random.normal(jax.random.fold_in(key, i), x.shape)`` for one key. With a batch of
keys (``[B]`` typed keys or ``[B, 2]`` raw uint32 keys) example b's noise comes from
``fold_in(key[b], i)`` alone, so an example's result does not depend on its batch.

Zero terminal SNR: with ε-prediction the first step from ᾱ = 0 gets x̂_0 = 0 (see
``forward.x0_from_eps``); use v- or x0-prediction there.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax.diffusion import forward
from ldm_jax.diffusion.schedule import Schedule

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")
SPACINGS = ("leading", "trailing", "linspace", "quadratic")
# ``sample``'s timestep spacing when none is given (its docstring says why dpmpp_2m's differs).
DEFAULT_SPACING = {"ddpm": "leading", "ddim": "leading", "dpmpp_2m": "quadratic"}


def timesteps(num_train_steps: int, num_steps: int, spacing: str) -> np.ndarray:
    """``num_steps`` descending int timesteps in [0, num_train_steps) (Lin et al. 2023, Table 2).

    ``leading``: k·⌊T/n⌋ for k = n-1..0; ``trailing``: round(T - k·T/n) - 1 for k = 0..n-1;
    ``linspace``: round(linspace(0, T-1, n)) reversed; ``quadratic``: k + round((T-n)·(k/(n-1))²)
    for k = n-1..0, DDIM's quadratic grid (Song et al. 2021, App. D.2) shifted by k to keep
    the steps distinct: from T-1 down to 0, dense near 0. With n = T all are T-1, ..., 0.
    """
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; expected one of {SPACINGS}")
    integer = isinstance(num_steps, numbers.Integral) and not isinstance(num_steps, bool)
    if not integer or not 1 <= num_steps <= num_train_steps:
        raise ValueError(f"num_steps={num_steps!r} must be an integer in [1, {num_train_steps}] "
                         "(the number of training steps T)")
    k = np.arange(num_steps)
    if spacing == "leading":
        return k[::-1] * (num_train_steps // num_steps)
    if spacing == "trailing":
        return np.round(num_train_steps - k * num_train_steps / num_steps).astype(np.int64) - 1
    if spacing == "quadratic":
        stretch = np.round((num_train_steps - num_steps) * np.linspace(0, 1, num_steps) ** 2).astype(np.int64)
        return (k + stretch)[::-1]
    return np.round(np.linspace(0, num_train_steps - 1, num_steps)).astype(np.int64)[::-1]


def _is_batched(key) -> bool:
    typed = jnp.issubdtype(jnp.result_type(key), jax.dtypes.prng_key)
    return jnp.ndim(key) == (1 if typed else 2)


def standard_normal(key, index, shape, dtype=jnp.float32):
    """N(0, I) of ``shape`` from ``fold_in(key, index)``; per example for a batch of keys [B]."""
    if _is_batched(key):
        if jnp.shape(key)[0] != shape[0]:
            raise ValueError(f"{jnp.shape(key)[0]} keys for a batch of {shape[0]}")
        return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, index), shape[1:], dtype))(key)
    return jax.random.normal(jax.random.fold_in(key, index), shape, dtype)


def _check_cond(cond, null_cond, guidance_scale, batch: int) -> bool:
    """Validate the conditioning; True when guidance needs the 2B (cond, null_cond) batch."""
    for name, tree in (("cond", cond), ("null_cond", null_cond)):
        for leaf in jax.tree.leaves(tree):
            if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != batch:
                raise ValueError(f"{name} leaf of shape {jnp.shape(leaf)}: expected a leading batch axis of {batch}")
    static_one = isinstance(guidance_scale, numbers.Real) and guidance_scale == 1
    if null_cond is None:
        if not static_one:
            raise ValueError(f"guidance_scale={guidance_scale} needs null_cond (the unconditional input)")
        return False
    if cond is None:
        raise ValueError("null_cond was given without cond; guidance needs both")

    def spec(tree):
        return jax.tree.map(lambda a: (jnp.shape(a), jnp.result_type(a)), tree)

    if jax.tree.structure(cond) != jax.tree.structure(null_cond) or spec(cond) != spec(null_cond):
        raise ValueError(f"null_cond {spec(null_cond)} must match cond {spec(cond)} in structure, shapes and dtypes")
    if jnp.ndim(guidance_scale) != 0:
        raise ValueError(f"guidance_scale must be a scalar, got shape {jnp.shape(guidance_scale)}")
    return not static_one


def _model(denoise_fn, schedule, x, cond, null_cond, guidance_scale, prediction, clip_x0):
    """``predict(x, t) -> (x̂_0, ε̂)`` at scalar timestep t, with classifier-free guidance
    ε̃ = u + s·(c - u) (Ho & Salimans 2022, eq. 6) applied to the raw model output."""
    if prediction not in forward.PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; expected one of {forward.PREDICTIONS}")
    if clip_x0 is not None and not (isinstance(clip_x0, numbers.Real) and clip_x0 > 0):
        raise ValueError(f"clip_x0={clip_x0!r} must be None or a positive number")
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating) or jnp.ndim(x) < 1:
        raise ValueError(f"x must be a floating-point array [B, ...], got shape {jnp.shape(x)}, "
                         f"dtype {jnp.result_type(x)}")
    batch = jnp.shape(x)[0]
    guided = _check_cond(cond, null_cond, guidance_scale, batch)

    def call(x, tb, c):
        out = denoise_fn(x, tb, c)
        if jnp.shape(out) != jnp.shape(x):
            raise ValueError(f"denoise_fn returned shape {jnp.shape(out)}; expected x's shape {jnp.shape(x)}")
        return out.astype(x.dtype)

    def predict(x, t):
        tb = jnp.full((batch,), t, jnp.int32)
        if guided:
            both = jax.tree.map(lambda c, u: jnp.concatenate([c, u]), cond, null_cond)
            out_c, out_u = jnp.split(call(jnp.concatenate([x, x]), jnp.concatenate([tb, tb]), both), 2)
            out = out_u + jnp.asarray(guidance_scale, x.dtype) * (out_c - out_u)
        else:
            out = call(x, tb, cond)
        x0, eps = forward.x0_eps_from_prediction(schedule, x, tb, out, prediction)
        if clip_x0 is not None:
            x0 = jnp.clip(x0, -clip_x0, clip_x0)
            eps = forward.eps_from_x0(schedule, x, tb, x0)
        return x0, eps

    return predict


def _levels(schedule: Schedule, ts: np.ndarray, prev: np.ndarray):
    """(√ᾱ, √(1-ᾱ)) at ``ts`` and at ``prev``, where a negative ``prev`` means clean data (ᾱ = 1)."""
    valid = prev >= 0
    safe = np.maximum(prev, 0)
    return (schedule.sqrt_alphas_cumprod[ts], schedule.sqrt_one_minus_alphas_cumprod[ts],
            jnp.where(valid, schedule.sqrt_alphas_cumprod[safe], 1.0),
            jnp.where(valid, schedule.sqrt_one_minus_alphas_cumprod[safe], 0.0))


def sample(denoise_fn, schedule: Schedule, x_T, key, *, sampler: str = "ddim", num_steps: int = 50,
           eta=0.0, spacing: str | None = None, prediction: str = "eps", cond=None, null_cond=None,
           guidance_scale=1.0, start_step: int | None = None, return_trajectory: bool = False,
           clip_x0: float | None = None):
    """Run the reverse process from ``x_T`` [B, ...] at grid step ``start_step`` down to x_0.

    - ``ddpm``: ancestral sampling from q(x_s | x_t, x̂_0) (DDPM eqs. 6-7, on any sub-grid
      s < t with ᾱ_{t|s} = ᾱ_t/ᾱ_s).
    - ``ddim``: x_s = √ᾱ_s x̂_0 + √(1-ᾱ_s-σ²) ε̂ + σ z, σ = η √((1-ᾱ_s)/(1-ᾱ_t)) √(1-ᾱ_t/ᾱ_s)
      (DDIM eqs. 12, 16); η = 1 on the full grid is DDPM's posterior.
    - ``dpmpp_2m``: DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), first order at the first and
      the final step. The final step to ᾱ = 1 returns x̂_0 = E[x_0 | x_t] at the last grid step
      t, which shrinks detail of std s by √ᾱ_t s / √(ᾱ_t s² + 1 - ᾱ_t), so the default
      ``quadratic`` grid ends at t = 0 with log-SNR steps that grow smoothly there. ``trailing``
      ends at t = T/n - 1 (20 steps on LDM's schedule keep 69% of an std of 0.2); the long last
      log-SNR step of ``leading``/``linspace`` makes the second-order extrapolation overshoot.

    ``spacing`` None is ``DEFAULT_SPACING[sampler]``: ``leading``, or ``quadratic`` for
    ``dpmpp_2m``. ``start_step`` (default 0) indexes ``timesteps(T, num_steps, spacing)``:
    ``x_T`` is then the latent at that timestep (SDEdit / img2img, see ``sdedit_start``).
    Returns x_0, and with ``return_trajectory`` also the latents [n + 1, B, ...] from ``x_T``
    to x_0, where n = num_steps - start_step. ``clip_x0`` clips x̂_0 to [-clip_x0, clip_x0]
    (ε̂ recomputed).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
    if sampler != "ddim" and not (isinstance(eta, numbers.Real) and eta == 0):
        raise ValueError(f"eta={eta} applies to the ddim sampler only, not {sampler!r}")
    if isinstance(eta, numbers.Real) and eta < 0:
        raise ValueError(f"eta={eta} must be >= 0")
    grid = timesteps(schedule.num_steps, num_steps, DEFAULT_SPACING[sampler] if spacing is None else spacing)
    start = 0 if start_step is None else start_step
    if isinstance(start, bool) or not isinstance(start, numbers.Integral) or not 0 <= start < num_steps:
        raise ValueError(f"start_step={start_step!r} must be an integer in [0, {num_steps}) (num_steps)")
    predict = _model(denoise_fn, schedule, x_T, cond, null_cond, guidance_scale, prediction, clip_x0)

    ts = grid[start:]
    prev = np.append(ts[1:], -1)
    sa_t, so_t, sa_s, so_s = _levels(schedule, ts, prev)
    first_order = np.arange(len(ts)) == 0
    first_order[-1] = True
    xs = (np.arange(start, num_steps), ts, sa_t, so_t, sa_s, so_s, first_order)

    def step(carry, inputs):
        x, x0_prev, h_prev = carry
        i, t, sa_t, so_t, sa_s, so_s, first = inputs
        x0, eps = predict(x, t)
        h = h_prev
        if sampler in ("ddpm", "ddim"):
            z = standard_normal(key, i, x.shape, x.dtype)
            # β_{t|s} = 1 - ᾱ_t/ᾱ_s = (ᾱ_s - ᾱ_t)/ᾱ_s, the difference taken from whichever of
            # ᾱ and 1 - ᾱ is small, so float32 cancellation does not eat it.
            ratio = jnp.where(sa_s > so_s, so_t**2 - so_s**2, sa_s**2 - sa_t**2) / sa_s**2
            if sampler == "ddpm":
                mean = (sa_s * ratio * x0 + (sa_t / sa_s) * so_s**2 * x) / so_t**2
                x = mean + (so_s / so_t) * jnp.sqrt(ratio) * z
            else:
                sigma = eta * (so_s / so_t) * jnp.sqrt(ratio)
                x = sa_s * x0 + jnp.sqrt(jnp.maximum(so_s**2 - sigma**2, 0.0)) * eps + sigma * z
        else:
            h = (jnp.log(sa_s) - jnp.log(so_s)) - (jnp.log(sa_t) - jnp.log(so_t))  # λ_s - λ_t, λ = log(α/σ)
            k = jnp.where(first, 0.0, h / (2.0 * h_prev))  # 1/(2r), r = h_prev/h
            d = x0 + k * (x0 - x0_prev)
            exp_neg_h = (sa_t * so_s) / (so_t * sa_s)  # e^{-h} without infinities
            x = (so_s / so_t) * x + sa_s * (1.0 - exp_neg_h) * d
        x = x.astype(x_T.dtype)
        return (x, x0, h), (x if return_trajectory else None)

    init = (x_T, jnp.zeros_like(x_T), jnp.ones((), sa_t.dtype))
    (x0, _, _), traj = jax.lax.scan(step, init, xs)
    if return_trajectory:
        return x0, jnp.concatenate([x_T[None], traj])
    return x0


def start_step_for_strength(strength: float, num_steps: int) -> int:
    """The grid step where the last round(strength · num_steps) of ``num_steps`` steps remain."""
    remaining = int(round(strength * num_steps)) if isinstance(strength, numbers.Real) and 0 < strength <= 1 else 0
    if remaining < 1:
        raise ValueError(f"strength={strength!r} must be in (0, 1] and leave at least one of the "
                         f"{num_steps} steps")
    return num_steps - remaining


def sdedit_start(schedule: Schedule, x0, key, strength: float, num_steps: int = 50, spacing: str = "leading"):
    """(x_t, start_step) for SDEdit / img2img (Meng et al. 2022): noise ``x0`` to the grid step
    ``start_step_for_strength(strength, num_steps)`` (strength in (0, 1]).

    x_t = q_sample(x0, t, ε) with ε = ``standard_normal(key, num_steps, ...)`` (one key, or
    one per example); pass both to ``sample`` with the same ``num_steps`` and ``spacing``
    (``DEFAULT_SPACING[sampler]`` for ``sample``'s default).
    """
    grid = timesteps(schedule.num_steps, num_steps, spacing)
    start = start_step_for_strength(strength, num_steps)
    t = jnp.full((jnp.shape(x0)[0],), grid[start], jnp.int32)
    noise = standard_normal(key, num_steps, jnp.shape(x0), jnp.result_type(x0))
    return forward.q_sample(schedule, x0, t, noise), start


def ddim_invert(denoise_fn, schedule: Schedule, x0, *, num_steps: int = 50, spacing: str = "leading",
                prediction: str = "eps", cond=None, null_cond=None, guidance_scale=1.0,
                start_step: int = 0, return_trajectory: bool = False):
    """Deterministic DDIM inversion x_0 -> x_{t_0} (DDIM eq. 12 with η = 0, run upwards).

    Step from level c to the next timestep n of the ascending grid, with the model
    evaluated at n on the current latent (x_n ≈ x_c, as in Mokady et al. 2023):
    ε̂ = ε(x_c, n), x̂_0 = (x_c - √(1-ᾱ_c) ε̂)/√ᾱ_c, x_n = √ᾱ_n x̂_0 + √(1-ᾱ_n) ε̂.
    Returns x at grid step ``start_step`` of ``timesteps(T, num_steps, spacing)`` (default 0,
    the top), ready for ``sample(..., start_step=start_step)``; with ``return_trajectory``
    also the latents [num_steps - start_step + 1, B, ...] from x_0 upwards.
    """
    grid = timesteps(schedule.num_steps, num_steps, spacing)
    if isinstance(start_step, bool) or not isinstance(start_step, numbers.Integral) or not 0 <= start_step < num_steps:
        raise ValueError(f"start_step={start_step!r} must be an integer in [0, {num_steps}) (num_steps)")
    predict = _model(denoise_fn, schedule, x0, cond, null_cond, guidance_scale, prediction, None)
    up = grid[start_step:][::-1]
    cur = np.append(-1, up[:-1])
    sa_n, so_n, sa_c, so_c = _levels(schedule, up, cur)

    def step(x, inputs):
        t, sa_n, so_n, sa_c, so_c = inputs
        _, eps = predict(x, t)
        x = (sa_n * (x - so_c * eps) / sa_c + so_n * eps).astype(x0.dtype)
        return x, (x if return_trajectory else None)

    x_top, traj = jax.lax.scan(step, x0, (up, sa_n, so_n, sa_c, so_c))
    if return_trajectory:
        return x_top, jnp.concatenate([x0[None], traj])
    return x_top
