"""Beta schedules and the precomputed ``Schedule`` pytree.

Timesteps are 0-based: index ``t = 0 .. T-1`` is DDPM's step ``t + 1``. ``alphas_cumprod[t]``
is ᾱ_t = ∏_{s<=t} (1 - β_s) and ``alphas_cumprod_prev[t]`` is ᾱ_{t-1}, with ᾱ_{-1} = 1
(clean data). All tables are computed in float64 on the host and stored as float32.

Zero terminal SNR (Lin et al. 2023, Alg. 1) makes ᾱ_{T-1} exactly 0: then
``log_snr[T-1] = -inf`` (stored as such), SNR = 0, the posterior tables stay finite, and x_0
cannot be recovered from ε at that step (x_{T-1} = ε carries no information about x_0):
``forward.x0_from_eps`` returns 0 there. Train with v-prediction, as Lin et al. recommend.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

SCHEDULES = ("linear", "scaled_linear", "cosine", "sigmoid")

# Defaults: DDPM's linear 1e-4 -> 0.02; Stable Diffusion's scaled_linear 0.00085 -> 0.012
# (LDM's own configs use 0.0015 -> 0.0195); the sigmoid schedule spans DDPM's range.
DEFAULT_BETA_RANGE = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012), "sigmoid": (1e-4, 0.02)}


def beta_schedule(
    name: str, num_steps: int, beta_start: float | None = None, beta_end: float | None = None, cosine_s: float = 0.008
) -> np.ndarray:
    """β_0 .. β_{T-1} (float64) of schedule ``name`` over ``num_steps`` = T >= 2 steps.

    - ``linear``: ``linspace(β_start, β_end, T)`` (DDPM, Ho et al. 2020, Sec. 4).
    - ``scaled_linear``: ``linspace(√β_start, √β_end, T)**2`` (LDM / Stable Diffusion).
    - ``cosine``: ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2), β_t = 1 - ᾱ_t/ᾱ_{t-1}
      clipped to 0.999 (Nichol & Dhariwal 2021, eq. 17); takes no β range.
    - ``sigmoid``: β_start + (β_end - β_start) · sigmoid(linspace(-6, 6, T)).

    ``beta_start``/``beta_end`` of None take the schedule's default (``DEFAULT_BETA_RANGE``);
    the values are used as given for any T (they are not rescaled with T).
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown beta schedule {name!r}; expected one of {SCHEDULES}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 2:
        raise ValueError(f"num_steps={num_steps!r} must be an integer >= 2")
    if name == "cosine":
        if beta_start is not None or beta_end is not None:
            raise ValueError(
                f"the cosine schedule takes no beta_start/beta_end (got {beta_start}, {beta_end}); "
                "it is set by cosine_s"
            )
        if not cosine_s > 0:
            raise ValueError(f"cosine_s={cosine_s} must be > 0")
        f = np.cos((np.arange(num_steps + 1) / num_steps + cosine_s) / (1 + cosine_s) * np.pi / 2) ** 2
        alphas_cumprod = f / f[0]
        return np.minimum(1.0 - alphas_cumprod[1:] / alphas_cumprod[:-1], 0.999)
    default_start, default_end = DEFAULT_BETA_RANGE[name]
    b0 = default_start if beta_start is None else float(beta_start)
    b1 = default_end if beta_end is None else float(beta_end)
    if not 0 < b0 <= b1 < 1:
        raise ValueError(f"beta_start={b0}, beta_end={b1}: expected 0 < beta_start <= beta_end < 1")
    if name == "linear":
        return np.linspace(b0, b1, num_steps)
    if name == "scaled_linear":
        return np.linspace(np.sqrt(b0), np.sqrt(b1), num_steps) ** 2
    return b0 + (b1 - b0) / (1.0 + np.exp(-np.linspace(-6.0, 6.0, num_steps)))


def rescale_zero_terminal_snr(betas) -> np.ndarray:
    """Rescale ``betas`` so that ᾱ_{T-1} = 0 (Lin et al. 2023, Algorithm 1).

    √ᾱ is shifted so its last value is 0 and scaled so its first value is unchanged; the
    last returned β is exactly 1.
    """
    betas = np.asarray(betas, np.float64)
    if betas.ndim != 1 or betas.shape[0] < 2 or not np.all((betas > 0) & (betas < 1)):
        raise ValueError(f"betas must be a 1-D array of >= 2 values in (0, 1), got shape {betas.shape}")
    sqrt_ac = np.sqrt(np.cumprod(1.0 - betas))
    first, last = sqrt_ac[0], sqrt_ac[-1]
    alphas_cumprod = ((sqrt_ac - last) * first / (first - last)) ** 2
    alphas = np.append(alphas_cumprod[0], alphas_cumprod[1:] / alphas_cumprod[:-1])
    return 1.0 - alphas


@flax.struct.dataclass
class Schedule:
    """Per-timestep tables, float32 arrays of shape [T] (DDPM eqs. 4, 6, 7).

    ``log_snr`` = log(ᾱ/(1-ᾱ)); ``posterior_*`` describe q(x_{t-1} | x_t, x_0) =
    N(coef1·x_0 + coef2·x_t, posterior_variance), whose variance is 0 at t = 0, so the log
    is clipped to its value at t = 1.
    """

    betas: jax.Array
    alphas: jax.Array
    alphas_cumprod: jax.Array
    alphas_cumprod_prev: jax.Array
    sqrt_alphas_cumprod: jax.Array
    sqrt_one_minus_alphas_cumprod: jax.Array
    log_snr: jax.Array
    posterior_variance: jax.Array
    posterior_log_variance_clipped: jax.Array
    posterior_mean_coef1: jax.Array
    posterior_mean_coef2: jax.Array

    @property
    def num_steps(self) -> int:
        """T, static (from the array shape)."""
        return self.betas.shape[0]


def make_schedule(
    name: str = "linear",
    num_steps: int = 1000,
    beta_start: float | None = None,
    beta_end: float | None = None,
    zero_terminal_snr: bool = False,
    cosine_s: float = 0.008,
) -> Schedule:
    """The ``Schedule`` of ``beta_schedule(name, ...)``, optionally rescaled to zero terminal SNR."""
    betas = beta_schedule(name, num_steps, beta_start, beta_end, cosine_s)
    if zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    one_minus_ac = 1.0 - ac
    with np.errstate(divide="ignore"):  # log(0) = -inf at a zero terminal SNR, on purpose
        log_snr = np.log(ac) - np.log(one_minus_ac)
    posterior_variance = betas * (1.0 - ac_prev) / one_minus_ac
    tables = dict(
        betas=betas,
        alphas=alphas,
        alphas_cumprod=ac,
        alphas_cumprod_prev=ac_prev,
        sqrt_alphas_cumprod=np.sqrt(ac),
        sqrt_one_minus_alphas_cumprod=np.sqrt(one_minus_ac),
        log_snr=log_snr,
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=np.log(np.append(posterior_variance[1], posterior_variance[1:])),
        posterior_mean_coef1=betas * np.sqrt(ac_prev) / one_minus_ac,
        posterior_mean_coef2=(1.0 - ac_prev) * np.sqrt(alphas) / one_minus_ac,
    )
    return Schedule(**{k: jnp.asarray(v, jnp.float32) for k, v in tables.items()})
