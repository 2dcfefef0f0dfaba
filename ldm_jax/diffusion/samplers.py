"""Reverse-process samplers as small steps run by one driver, classifier-free guidance and
DDIM inversion.

A sampler is one step function, written as k-diffusion writes each sampler's loop body
(Karras et al. 2022): ``step(x, x0, eps, lv, carry, z, eta) -> (x_s, carry)`` takes the
latent x_t, the model's estimates x̂_0 and ε̂ at t, ``lv`` the ``Levels`` of t and of the next
grid timestep s < t, its own ``carry`` from the previous step, noise z ~ N(0, I) and η, and
returns x_s and its next carry (steps that need no noise, η or carry ignore them).
``SAMPLERS`` maps a name to a ``Sampler`` record (the step, its first carry, its default
timestep spacing) and ``sample`` runs any of them as one ``lax.scan`` over a descending grid
t_0 > ... > t_{n-1} and a final step to clean data (ᾱ = 1). Adding a sampler is one step
function and one registry entry. The settings of a run are one ``SamplerConfig``.

Levels are named as in the papers: x_t = alpha_t x_0 + sigma_t ε with alpha_t = √ᾱ_t and
sigma_t = √(1-ᾱ_t) (DPM-Solver's α_t, σ_t), and lambda_t = log(alpha_t/sigma_t).

``denoise_fn(x, t, cond)`` gets x [B, ...], t int32 [B] and ``cond`` (any pytree with a
leading batch axis, or None) and returns the model output in the ``prediction``
parameterization (``forward.PREDICTIONS``).

Under ``jax.jit``: ``denoise_fn``, the ``SamplerConfig``'s sampler, num_steps, spacing,
prediction and clip_x0, ``start_step`` and ``return_trajectory`` must be static (Python
values closed over by the jitted function); ``x_T``, ``key``, ``cond``, ``null_cond``, the
config's ``eta`` and the ``Schedule`` may be traced. ``guidance_scale`` may be either: a
Python number is static (1 skips the unconditional pass), an array is traced (both passes
always run). A network's parameters belong in the jitted function's arguments, e.g.
``jax.jit(lambda params, x, key: sample(partial(apply, params), schedule, x, key, sampling))``.

Randomness: the noise of grid step i (the index into the full ``timesteps`` grid) is
``jax.random.normal(jax.random.fold_in(key, i), x.shape)`` for one key. With a batch of
keys (``[B]`` typed keys or ``[B, 2]`` raw uint32 keys) example b's noise comes from
``fold_in(key[b], i)`` alone, so an example's result does not depend on its batch.

Zero terminal SNR: with ε-prediction the first step from ᾱ = 0 gets x̂_0 = 0 (see
``forward.x0_from_eps``); use v- or x0-prediction there.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax.diffusion import forward
from ldm_jax.diffusion.schedule import Schedule

SPACINGS = ("leading", "trailing", "linspace", "quadratic")


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
        raise ValueError(
            f"num_steps={num_steps!r} must be an integer in [1, {num_train_steps}] (the number of training steps T)"
        )
    k = np.arange(num_steps)
    if spacing == "leading":
        return k[::-1] * (num_train_steps // num_steps)
    if spacing == "trailing":
        return np.round(num_train_steps - k * num_train_steps / num_steps).astype(np.int64) - 1
    if spacing == "quadratic":
        stretch = np.round((num_train_steps - num_steps) * np.linspace(0, 1, num_steps) ** 2).astype(np.int64)
        return (k + stretch)[::-1]
    return np.round(np.linspace(0, num_train_steps - 1, num_steps)).astype(np.int64)[::-1]


class Levels(NamedTuple):
    """The noise levels of one step from timestep t down to s, the next grid timestep:
    alpha = √ᾱ and sigma = √(1-ᾱ) at t and at s. The final step goes to clean data
    (alpha_s = 1, sigma_s = 0)."""

    alpha_t: jax.Array
    sigma_t: jax.Array
    alpha_s: jax.Array
    sigma_s: jax.Array

    @property
    def lambda_t(self) -> jax.Array:
        """λ_t = log(alpha_t/sigma_t), half the log-SNR (Lu et al. 2022); -∞ where ᾱ_t = 0."""
        return jnp.log(self.alpha_t) - jnp.log(self.sigma_t)

    @property
    def lambda_s(self) -> jax.Array:
        """λ_s = log(alpha_s/sigma_s); +∞ at the final step."""
        return jnp.log(self.alpha_s) - jnp.log(self.sigma_s)

    @property
    def exp_neg_h(self) -> jax.Array:
        """e^{-h} with h = lambda_s - lambda_t, as (alpha_t sigma_s)/(sigma_t alpha_s): no infinities
        (0 at the final step)."""
        return (self.alpha_t * self.sigma_s) / (self.sigma_t * self.alpha_s)

    @property
    def beta_ts(self) -> jax.Array:
        """β_{t|s} = 1 - ᾱ_t/ᾱ_s = (ᾱ_s - ᾱ_t)/ᾱ_s, the variance of q(x_t | x_s), the difference
        taken from whichever of ᾱ and 1 - ᾱ is small, so float32 cancellation does not eat it."""
        return (
            jnp.where(self.alpha_s > self.sigma_s, self.sigma_t**2 - self.sigma_s**2, self.alpha_s**2 - self.alpha_t**2)
            / self.alpha_s**2
        )


def ddpm_step(x, x0, eps, lv: Levels, carry, z, eta):
    """Ancestral sampling: x_s ~ q(x_s | x_t, x̂_0) (DDPM eqs. 6-7 on any sub-grid s < t, with
    ᾱ_{t|s} = ᾱ_t/ᾱ_s): mean (alpha_s β_{t|s} x̂_0 + (alpha_t/alpha_s) sigma_s² x_t)/sigma_t²,
    std (sigma_s/sigma_t) √β_{t|s}."""
    beta_ts = lv.beta_ts
    mean = (lv.alpha_s * beta_ts * x0 + (lv.alpha_t / lv.alpha_s) * lv.sigma_s**2 * x) / lv.sigma_t**2
    return mean + (lv.sigma_s / lv.sigma_t) * jnp.sqrt(beta_ts) * z, carry


def ddim_step(x, x0, eps, lv: Levels, carry, z, eta):
    """x_s = alpha_s x̂_0 + √(sigma_s² - σ²) ε̂ + σ z with σ = η (sigma_s/sigma_t) √β_{t|s}
    (DDIM eqs. 12, 16); η = 1 on the full grid is DDPM's posterior."""
    sigma_eta = eta * (lv.sigma_s / lv.sigma_t) * jnp.sqrt(lv.beta_ts)
    return lv.alpha_s * x0 + jnp.sqrt(jnp.maximum(lv.sigma_s**2 - sigma_eta**2, 0.0)) * eps + sigma_eta * z, carry


def dpmpp_2m_step(x, x0, eps, lv: Levels, carry, z, eta):
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): with h = lambda_s - lambda_t,
    x_s = (sigma_s/sigma_t) x_t + alpha_s (1 - e^{-h}) D, D = x̂_0 + (x̂_0 - x̂_0,prev)/(2r),
    r = h_prev/h. First order (D = x̂_0) at the first step (carry h_prev = 0: no previous
    step) and the final one (sigma_s = 0, h = ∞), which returns x̂_0. Carry (x̂_0, h)."""
    x0_prev, h_prev = carry
    h = lv.lambda_s - lv.lambda_t
    first_order = (h_prev == 0) | (lv.sigma_s == 0)
    k = jnp.where(first_order, 0.0, h / (2.0 * h_prev))  # 1/(2r)
    d = x0 + k * (x0 - x0_prev)
    return (lv.sigma_s / lv.sigma_t) * x + lv.alpha_s * (1.0 - lv.exp_neg_h) * d, (x0, h)


def dpmpp_3m_step(x, x0, eps, lv: Levels, carry, z, eta):
    """DPM-Solver++(3M): the exact integral of the data-prediction ODE over h = lambda_s - lambda_t
    (Lu et al. 2022, eq. 9) with x̂_0(λ) expanded to second order at lambda_t,

        x_s = (sigma_s/sigma_t) x_t + alpha_s (e_1 x̂_0 + e_2 x̂_0' + e_3 x̂_0''),
        e_1 = 1 - e^{-h},  e_2 = h - e_1,  e_3 = h²/2 - e_2  (e_n = ∫_0^h e^{τ-h} τ^{n-1}/(n-1)! dτ),

    where x̂_0' = d_1 + h_1 d_2 and x̂_0'' = 2 d_2 are those of the quadratic through the last
    three estimates (Newton's divided differences d_1 = (x̂_0 - x̂_0,1)/h_1 and
    d_2 = (d_1 - (x̂_0,1 - x̂_0,2)/h_2)/(h_1 + h_2), with h_1, h_2 the previous steps' h).
    First order at the first step and at the final one (which returns x̂_0), second order
    (x̂_0'' = 0, x̂_0' = d_1) at the second: third order in h. DPM-Solver's
    ``multistep_dpm_solver_third_update`` (and its diffusers and k-diffusion ports) weighs
    x̂_0'' by e_3/2, which leaves it second order. It wants 20 steps or more: over the long first
    log-SNR steps of a 10-step grid the extrapolation overshoots (on the tests' mixture, stds
    up to 60% too wide, against 15% for 2M; within 2% at 20 steps, against 7%). Carry
    (x̂_0, x̂_0,1, h_1, h_2), where an h of 0 means no usable previous step (none yet, or an
    infinite one from ᾱ = 0)."""
    x0_1, x0_2, h_1, h_2 = carry
    h = lv.lambda_s - lv.lambda_t
    second = (h_1 > 0) & (lv.sigma_s > 0)
    third = (h_2 > 0) & second
    d_1 = jnp.where(second, 1.0 / h_1, 0.0) * (x0 - x0_1)
    d_2 = jnp.where(third, 1.0 / (h_1 + h_2), 0.0) * (d_1 - jnp.where(third, 1.0 / h_2, 0.0) * (x0_1 - x0_2))
    e_1 = 1.0 - lv.exp_neg_h
    e_2 = jnp.where(second, h - e_1, 0.0)
    e_3 = jnp.where(third, h**2 / 2 - e_2, 0.0)
    x = (lv.sigma_s / lv.sigma_t) * x + lv.alpha_s * (e_1 * x0 + e_2 * (d_1 + h_1 * d_2) + e_3 * 2.0 * d_2)
    return x, (x0, x0_1, jnp.where(jnp.isfinite(h), h, 0.0), h_1)


def _no_carry(x):
    return ()


def _dpmpp_2m_carry(x):
    return jnp.zeros_like(x), jnp.zeros((), jnp.float32)


def _dpmpp_3m_carry(x):
    return jnp.zeros_like(x), jnp.zeros_like(x), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)


@dataclasses.dataclass(frozen=True)
class Sampler:
    """A registered sampler: its canonical ``name``, its ``step`` (see the module docstring),
    ``init(x_T)`` its first carry, ``spacing`` its default timestep spacing and whether its
    step uses ``eta``."""

    name: str
    step: Callable
    init: Callable
    spacing: str
    eta: bool = False


# The multistep solvers' final step returns x̂_0 = E[x_0 | x_t] at the grid's last t, which shrinks
# detail of std s by √ᾱ_t s / √(ᾱ_t s² + 1 - ᾱ_t), so their default ``quadratic`` grid ends at
# t = 0 with log-SNR steps that grow smoothly there. ``trailing`` ends at t = T/n - 1 (20 steps
# on LDM's schedule keep 69% of an std of 0.2); the long last log-SNR step of
# ``leading``/``linspace`` makes the multistep extrapolation overshoot.
_DPMPP_2M = Sampler("dpmpp_2m", dpmpp_2m_step, _dpmpp_2m_carry, "quadratic")
SAMPLERS = {
    "ddpm": Sampler("ddpm", ddpm_step, _no_carry, "leading"),
    "ddim": Sampler("ddim", ddim_step, _no_carry, "leading", eta=True),
    "dpmpp_2m": _DPMPP_2M,
    "dpmpp": _DPMPP_2M,  # sample.py's name for it
    "dpmpp_3m": Sampler("dpmpp_3m", dpmpp_3m_step, _dpmpp_3m_carry, "quadratic"),
}


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """The settings of one sampling run.

    ``sampler``: a ``SAMPLERS`` name (an alias becomes its canonical name); ``num_steps`` of
    its grid; ``eta``: DDIM's η (ddim only); ``spacing``: a ``SPACINGS`` grid, None for the
    sampler's default; ``prediction``: the model's parameterization (``forward.PREDICTIONS``);
    ``guidance_scale``: the classifier-free guidance scale s (1: none); ``clip_x0``: clip x̂_0
    to [-clip_x0, clip_x0] (ε̂ recomputed), None for no clipping.
    """

    sampler: str = "ddim"
    num_steps: int = 50
    eta: float = 0.0
    spacing: str | None = None
    prediction: str = "eps"
    guidance_scale: float = 1.0
    clip_x0: float | None = None

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; expected one of {tuple(SAMPLERS)}")
        object.__setattr__(self, "sampler", SAMPLERS[self.sampler].name)
        static_eta = isinstance(self.eta, numbers.Real)
        if not SAMPLERS[self.sampler].eta and not (static_eta and self.eta == 0):
            with_eta = ", ".join(sorted({s.name for s in SAMPLERS.values() if s.eta}))
            raise ValueError(f"eta={self.eta} applies to the {with_eta} sampler only, not {self.sampler!r}")
        if static_eta and self.eta < 0:
            raise ValueError(f"eta={self.eta} must be >= 0")
        if self.prediction not in forward.PREDICTIONS:
            raise ValueError(f"unknown prediction {self.prediction!r}; expected one of {forward.PREDICTIONS}")
        if self.clip_x0 is not None and not (isinstance(self.clip_x0, numbers.Real) and self.clip_x0 > 0):
            raise ValueError(f"clip_x0={self.clip_x0!r} must be None or a positive number")

    @property
    def timestep_spacing(self) -> str:
        """``spacing``, or the sampler's default when it is None."""
        return self.spacing or SAMPLERS[self.sampler].spacing

    def grid(self, num_train_steps: int) -> np.ndarray:
        """The descending timestep grid: ``timesteps(num_train_steps, num_steps, timestep_spacing)``."""
        return timesteps(num_train_steps, self.num_steps, self.timestep_spacing)


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
    ε̃ = u + s·(c - u) (Ho & Salimans 2022, eq. 6) applied to the raw model output; ``prediction``
    and ``clip_x0`` as checked by ``SamplerConfig``."""
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating) or jnp.ndim(x) < 1:
        raise ValueError(
            f"x must be a floating-point array [B, ...], got shape {jnp.shape(x)}, dtype {jnp.result_type(x)}"
        )
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


def _levels(schedule: Schedule, ts: np.ndarray, prev: np.ndarray) -> Levels:
    """The ``Levels`` of steps from ``ts`` to ``prev``, where a negative ``prev`` means clean data (ᾱ = 1)."""
    valid = prev >= 0
    safe = np.maximum(prev, 0)
    return Levels(
        schedule.sqrt_alphas_cumprod[ts],
        schedule.sqrt_one_minus_alphas_cumprod[ts],
        jnp.where(valid, schedule.sqrt_alphas_cumprod[safe], 1.0),
        jnp.where(valid, schedule.sqrt_one_minus_alphas_cumprod[safe], 0.0),
    )


def _check_start(start_step, num_steps: int) -> None:
    if isinstance(start_step, bool) or not isinstance(start_step, numbers.Integral) or not 0 <= start_step < num_steps:
        raise ValueError(f"start_step={start_step!r} must be an integer in [0, {num_steps}) (num_steps)")


def sample(
    denoise_fn,
    schedule: Schedule,
    x_T,
    key,
    sampling: SamplerConfig = SamplerConfig(),
    *,
    cond=None,
    null_cond=None,
    start_step: int | None = None,
    return_trajectory: bool = False,
    known=None,
):
    """Run ``sampling``'s sampler from ``x_T`` [B, ...] at grid step ``start_step`` down to x_0.

    The scan runs ``SAMPLERS[sampling.sampler].step`` over ``sampling.grid(T)`` from grid step
    ``start_step`` (default 0): ``x_T`` is then the latent at that timestep (SDEdit / img2img,
    see ``sdedit_start``), and the step's carry starts afresh there. Returns x_0, and with
    ``return_trajectory`` also the latents [n + 1, B, ...] from ``x_T`` to x_0, where
    n = num_steps - start_step.

    ``known = (mask, latents)`` keeps a known region (blended diffusion, Avrahami et al. 2022;
    DiffEdit, Couairon et al. 2023): after step k, x ← mask · x + (1 − mask) · latents[k], with
    ``latents`` [n, B, ...] the known latents at the levels the steps reach (e.g. a DDIM
    inversion's trajectory, reversed) and ``mask`` broadcastable to x (1: generated).
    """
    sampler = SAMPLERS[sampling.sampler]
    grid = sampling.grid(schedule.num_steps)
    start = 0 if start_step is None else start_step
    _check_start(start, sampling.num_steps)
    predict = _model(
        denoise_fn, schedule, x_T, cond, null_cond, sampling.guidance_scale, sampling.prediction, sampling.clip_x0
    )

    ts = grid[start:]
    levels = _levels(schedule, ts, np.append(ts[1:], -1))
    mask, known_latents = (None, None) if known is None else known
    if known is not None and jnp.shape(known_latents) != (len(ts), *jnp.shape(x_T)):
        raise ValueError(f"known latents of shape {jnp.shape(known_latents)}: expected {(len(ts), *jnp.shape(x_T))}")

    def body(carry, inputs):
        x, state = carry
        i, t, lv, x_known = inputs
        x0, eps = predict(x, t)
        z = standard_normal(key, i, x.shape, x.dtype)
        x, state = sampler.step(x, x0, eps, lv, state, z, sampling.eta)
        if x_known is not None:
            x = mask * x + (1 - mask) * x_known
        x = x.astype(x_T.dtype)
        return (x, state), (x if return_trajectory else None)

    xs = (np.arange(start, sampling.num_steps), ts, levels, known_latents)
    (x0, _), traj = jax.lax.scan(body, (x_T, sampler.init(x_T)), xs)
    if return_trajectory:
        return x0, jnp.concatenate([x_T[None], traj])
    return x0


def start_step_for_strength(strength: float, num_steps: int) -> int:
    """The grid step where the last round(strength · num_steps) of ``num_steps`` steps remain."""
    remaining = int(round(strength * num_steps)) if isinstance(strength, numbers.Real) and 0 < strength <= 1 else 0
    if remaining < 1:
        raise ValueError(f"strength={strength!r} must be in (0, 1] and leave at least one of the {num_steps} steps")
    return num_steps - remaining


def sdedit_start(schedule: Schedule, x0, key, strength: float, sampling: SamplerConfig = SamplerConfig()):
    """(x_t, start_step) for SDEdit / img2img (Meng et al. 2022): noise ``x0`` to the grid step
    ``start_step_for_strength(strength, sampling.num_steps)`` (strength in (0, 1]) of
    ``sampling.grid(T)``.

    x_t = q_sample(x0, t, ε) with ε = ``standard_normal(key, num_steps, ...)`` (one key, or
    one per example); pass both to ``sample`` with the same ``sampling``.
    """
    grid = sampling.grid(schedule.num_steps)
    start = start_step_for_strength(strength, sampling.num_steps)
    t = jnp.full((jnp.shape(x0)[0],), grid[start], jnp.int32)
    noise = standard_normal(key, sampling.num_steps, jnp.shape(x0), jnp.result_type(x0))
    return forward.q_sample(schedule, x0, t, noise), start


def ddim_invert(
    denoise_fn,
    schedule: Schedule,
    x0,
    sampling: SamplerConfig = SamplerConfig(),
    *,
    cond=None,
    null_cond=None,
    start_step: int = 0,
    return_trajectory: bool = False,
):
    """Deterministic DDIM inversion x_0 -> x_{t_0} (DDIM eq. 12 with η = 0, run upwards) on
    ``sampling.grid(T)``, with its ``prediction`` and ``guidance_scale`` (η and clip_x0 unused).

    Step from level c to the next timestep n of the ascending grid, with the model
    evaluated at n on the current latent (x_n ≈ x_c, as in Mokady et al. 2023):
    ε̂ = ε(x_c, n), x̂_0 = (x_c - sigma_c ε̂)/alpha_c, x_n = alpha_n x̂_0 + sigma_n ε̂.
    Returns x at grid step ``start_step`` (default 0, the top), ready for
    ``sample(..., sampling, start_step=start_step)``; with ``return_trajectory`` also the latents
    [num_steps - start_step + 1, B, ...] from x_0 upwards.
    """
    grid = sampling.grid(schedule.num_steps)
    _check_start(start_step, sampling.num_steps)
    predict = _model(denoise_fn, schedule, x0, cond, null_cond, sampling.guidance_scale, sampling.prediction, None)
    up = grid[start_step:][::-1]
    levels = _levels(schedule, up, np.append(-1, up[:-1]))  # at n, and at c below it (clean data below the first)

    def step(x, inputs):
        n, (alpha_n, sigma_n, alpha_c, sigma_c) = inputs
        _, eps = predict(x, n)
        x = (alpha_n * (x - sigma_c * eps) / alpha_c + sigma_n * eps).astype(x0.dtype)
        return x, (x if return_trajectory else None)

    x_top, traj = jax.lax.scan(step, x0, (up, levels))
    if return_trajectory:
        return x_top, jnp.concatenate([x0[None], traj])
    return x_top
