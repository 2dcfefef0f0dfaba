"""The forward process q(x_t | x_0), its posterior and the ε / x0 / v parameterizations.

``t`` is an integer array [B] of 0-based timesteps; the per-timestep coefficients are
gathered and broadcast to the rank of ``x`` ([B, H, W, C] for latents, any rank works).
Coefficients are cast to ``x``'s dtype, so outputs keep the input dtype.

Shapes, dtypes and parameterization names are checked in Python (at trace time); the range
0 <= t < T is checked whenever ``t`` is concrete (eager calls), not for traced ``t``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax.diffusion.schedule import Schedule

PREDICTIONS = ("eps", "x0", "v")


def check_timesteps(schedule: Schedule, t, batch_size: int | None = None) -> None:
    """Raise ``ValueError`` unless ``t`` is an integer array [B] (with 0 <= t < T when concrete)."""
    shape, dtype = jnp.shape(t), jnp.result_type(t)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"timesteps t must be integers, got dtype {dtype}")
    if len(shape) != 1 or (batch_size is not None and shape[0] != batch_size):
        expected = "[B]" if batch_size is None else f"[{batch_size}] (the batch size of x)"
        raise ValueError(f"timesteps t must have shape {expected}, got {shape}")
    try:
        values = np.asarray(t)
    except jax.errors.TracerArrayConversionError:
        return
    if values.size and (values.min() < 0 or values.max() >= schedule.num_steps):
        bad = values[(values < 0) | (values >= schedule.num_steps)][0]
        raise ValueError(f"timestep {bad} out of range: expected 0 <= t < T = {schedule.num_steps}")


def check_like(name: str, x, ref_name: str, ref) -> None:
    """Raise ``ValueError`` unless ``x`` is a floating array with the shape and dtype of ``ref``."""
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise ValueError(f"{name} must be a floating-point array, got dtype {jnp.result_type(x)}")
    if jnp.shape(x) != jnp.shape(ref) or jnp.result_type(x) != jnp.result_type(ref):
        raise ValueError(
            f"{name} has shape {jnp.shape(x)} and dtype {jnp.result_type(x)}; expected those of "
            f"{ref_name}: {jnp.shape(ref)}, {jnp.result_type(ref)}"
        )


def _check(schedule: Schedule, x, t) -> None:
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating) or jnp.ndim(x) < 1:
        raise ValueError(
            f"x must be a floating-point array [B, ...], got shape {jnp.shape(x)}, dtype {jnp.result_type(x)}"
        )
    check_timesteps(schedule, t, jnp.shape(x)[0])


def _coef(table: jax.Array, t, x) -> jax.Array:
    """``table[t]`` reshaped to [B, 1, ..., 1] (the rank of ``x``), in ``x``'s dtype."""
    return table[t].astype(jnp.result_type(x)).reshape((-1,) + (1,) * (jnp.ndim(x) - 1))


def q_sample(schedule: Schedule, x0, t, noise):
    """x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε, a draw from q(x_t | x_0) (DDPM eq. 4)."""
    _check(schedule, x0, t)
    check_like("noise", noise, "x0", x0)
    return (
        _coef(schedule.sqrt_alphas_cumprod, t, x0) * x0 + _coef(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise
    )


def q_posterior(schedule: Schedule, x0, xt, t):
    """q(x_{t-1} | x_t, x_0) = N(μ̃, β̃) (DDPM eqs. 6-7).

    Returns ``(mean, variance, log_variance_clipped)``: the mean has x's shape, the
    variances are [B, 1, ..., 1] (broadcastable to x).
    """
    _check(schedule, xt, t)
    check_like("x0", x0, "xt", xt)
    mean = _coef(schedule.posterior_mean_coef1, t, xt) * x0 + _coef(schedule.posterior_mean_coef2, t, xt) * xt
    return (mean, _coef(schedule.posterior_variance, t, xt), _coef(schedule.posterior_log_variance_clipped, t, xt))


def snr(schedule: Schedule, t) -> jax.Array:
    """SNR(t) = ᾱ_t / (1 - ᾱ_t), float32 [B] (0 at a zero terminal SNR)."""
    check_timesteps(schedule, t)
    return (schedule.sqrt_alphas_cumprod[t] / schedule.sqrt_one_minus_alphas_cumprod[t]) ** 2


def x0_from_eps(schedule: Schedule, xt, t, eps):
    """x_0 = (x_t - √(1-ᾱ_t) ε) / √ᾱ_t (DDPM eq. 4 solved for x_0).

    Where ᾱ_t = 0 (zero terminal SNR) x_0 is not identifiable from ε; 0 is returned there,
    with finite gradients.
    """
    _check(schedule, xt, t)
    check_like("eps", eps, "xt", xt)
    a = _coef(schedule.sqrt_alphas_cumprod, t, xt)
    s = _coef(schedule.sqrt_one_minus_alphas_cumprod, t, xt)
    return jnp.where(a > 0, (xt - s * eps) / jnp.where(a > 0, a, 1), 0)


def eps_from_x0(schedule: Schedule, xt, t, x0):
    """ε = (x_t - √ᾱ_t x_0) / √(1-ᾱ_t) (DDPM eq. 4 solved for ε)."""
    _check(schedule, xt, t)
    check_like("x0", x0, "xt", xt)
    return (xt - _coef(schedule.sqrt_alphas_cumprod, t, xt) * x0) / _coef(schedule.sqrt_one_minus_alphas_cumprod, t, xt)


def v_target(schedule: Schedule, x0, t, noise):
    """v = √ᾱ_t ε - √(1-ᾱ_t) x_0 (Salimans & Ho 2022, Sec. 4)."""
    _check(schedule, x0, t)
    check_like("noise", noise, "x0", x0)
    return (
        _coef(schedule.sqrt_alphas_cumprod, t, x0) * noise - _coef(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * x0
    )


def x0_eps_from_v(schedule: Schedule, xt, t, v):
    """(x_0, ε) = (√ᾱ x_t - √(1-ᾱ) v, √(1-ᾱ) x_t + √ᾱ v) (Salimans & Ho 2022); exact for every t."""
    _check(schedule, xt, t)
    check_like("v", v, "xt", xt)
    a = _coef(schedule.sqrt_alphas_cumprod, t, xt)
    s = _coef(schedule.sqrt_one_minus_alphas_cumprod, t, xt)
    return a * xt - s * v, s * xt + a * v


def x0_eps_from_prediction(schedule: Schedule, xt, t, prediction, parameterization: str):
    """(x_0, ε) from a model output in ``parameterization`` (one of ``PREDICTIONS``)."""
    if parameterization == "eps":
        return x0_from_eps(schedule, xt, t, prediction), prediction
    if parameterization == "x0":
        return prediction, eps_from_x0(schedule, xt, t, prediction)
    if parameterization == "v":
        return x0_eps_from_v(schedule, xt, t, prediction)
    raise ValueError(f"unknown parameterization {parameterization!r}; expected one of {PREDICTIONS}")
