"""The denoising loss (DDPM eq. 14 generalized) with ε / x0 / v targets and SNR weightings.

Per example b: L_b = w(SNR_b) · Σ_p m_bp d(ŷ_bp, y_bp) / Σ_p m_bp, with d = (ŷ - y)² ("l2")
or |ŷ - y| ("l1"), m a mask (all ones by default) and p the non-batch positions. The
batch loss is the mask-weighted mean Σ_b M_b L_b / Σ_b M_b with M_b = Σ_p m_bp, i.e.
the mean over every unmasked position. Computed in float32.

Min-SNR-γ weighting (Hang et al. 2023) caps the weight a loss puts on ‖x̂_0 - x_0‖² at γ.
Per unit of that error, ‖ε̂ - ε‖² = SNR‖x̂_0 - x_0‖² and ‖v̂ - v‖² = (SNR + 1)‖x̂_0 - x_0‖²,
so the uniform ε and v losses weight it by SNR and SNR + 1:

- ε: min(SNR, γ)/SNR = min(1, γ/SNR), i.e. min(SNR, γ) on the x0 error (at SNR = 0 its limit, 1);
- x0: min(SNR, γ), the same x0-error weight as ε;
- v: min(SNR + 1, γ)/(SNR + 1) = min(1, γ/(SNR + 1)), i.e. min(SNR + 1, γ) on the x0 error.

For v this departs from Hang et al.'s min(SNR, γ)/(SNR + 1) where SNR < γ (above, the two
agree). Theirs is 0 at SNR = 0 and below 6e-5 for t ≥ 949 of the default schedule (LDM
scaled_linear, T = 1000) rescaled to zero terminal SNR: the last step, which zero terminal
SNR exists for (there v = -x_0 and the sampler's first x̂_0 is -v̂), would never be trained.
Ours is 1 where SNR + 1 ≤ γ, the uniform v loss Lin et al. (2023) train that step with.
ε needs no such term: at SNR = 0 its target is x_t itself and says nothing about x_0.

The factors convert squared errors, so ``min_snr`` requires ``loss_type="l2"``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax.diffusion import forward
from ldm_jax.diffusion.schedule import Schedule

WEIGHTINGS = ("uniform", "min_snr")
LOSS_TYPES = ("l2", "l1")


def snr_weight(
    schedule: Schedule, t, *, target: str = "eps", weighting: str = "uniform", min_snr_gamma: float = 5.0
) -> jax.Array:
    """The loss weight w(SNR(t)) [B] for ``target`` under ``weighting`` (see module docstring)."""
    if target not in forward.PREDICTIONS:
        raise ValueError(f"unknown target {target!r}; expected one of {forward.PREDICTIONS}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")
    if isinstance(min_snr_gamma, (int, float)) and not min_snr_gamma > 0:
        raise ValueError(f"min_snr_gamma={min_snr_gamma} must be > 0")
    ratio = forward.snr(schedule, t)
    if weighting == "uniform":
        return jnp.ones_like(ratio)
    if target == "eps":
        return jnp.minimum(1.0, min_snr_gamma / ratio)  # γ/0 = inf -> 1 at SNR = 0
    if target == "x0":
        return jnp.minimum(ratio, min_snr_gamma)
    return jnp.minimum(1.0, min_snr_gamma / (ratio + 1.0))  # 1 at SNR = 0 for γ >= 1


def _weighted_sums(schedule, model_output, x0, noise, t, target, weighting, min_snr_gamma, loss_type, mask):
    """(Σ_p w m d, Σ_p m), both [B]."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}")
    if weighting == "min_snr" and loss_type != "l2":
        raise ValueError(
            f"weighting='min_snr' needs loss_type='l2' (got {loss_type!r}): its factors convert "
            "squared errors between targets; use weighting='uniform' with an l1 loss"
        )
    forward.check_like("noise", noise, "x0", x0)
    if jnp.shape(model_output) != jnp.shape(x0) or not jnp.issubdtype(jnp.result_type(model_output), jnp.floating):
        raise ValueError(
            f"model_output has shape {jnp.shape(model_output)} and dtype "
            f"{jnp.result_type(model_output)}; expected a floating array of x0's shape {jnp.shape(x0)}"
        )
    weight = snr_weight(schedule, t, target=target, weighting=weighting, min_snr_gamma=min_snr_gamma)
    x0, noise = x0.astype(jnp.float32), noise.astype(jnp.float32)
    if target == "eps":
        y = noise
    elif target == "x0":
        y = x0
    else:
        y = forward.v_target(schedule, x0, t, noise)
    diff = model_output.astype(jnp.float32) - y
    d = diff**2 if loss_type == "l2" else jnp.abs(diff)
    batch = x0.shape[0]
    if mask is None:
        m = jnp.ones_like(d)
    else:
        mshape = jnp.shape(mask)
        if mshape == (batch,) and x0.ndim > 1:
            mask = jnp.reshape(mask, (batch,) + (1,) * (x0.ndim - 1))
        elif len(mshape) != x0.ndim or np.broadcast_shapes(mshape, x0.shape) != x0.shape:
            raise ValueError(
                f"mask has shape {mshape}; expected [{batch}] (per example) or a shape of rank "
                f"{x0.ndim} broadcastable to x0's {x0.shape}"
            )
        m = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), d.shape)
    axes = tuple(range(1, d.ndim))
    return weight * jnp.sum(m * d, axes), jnp.sum(m, axes)


def per_example_loss(
    schedule: Schedule,
    model_output,
    x0,
    noise,
    t,
    *,
    target: str = "eps",
    weighting: str = "uniform",
    min_snr_gamma: float = 5.0,
    loss_type: str = "l2",
    mask=None,
) -> jax.Array:
    """L_b [B]: each example's weighted, masked mean error (0 for a fully masked example).

    ``model_output``, ``x0``, ``noise``: [B, ...] (NHWC latents); ``t``: int [B];
    ``mask``: None, per-example weights [B], or an array of x0's rank broadcastable to it.
    """
    num, den = _weighted_sums(schedule, model_output, x0, noise, t, target, weighting, min_snr_gamma, loss_type, mask)
    return num / jnp.where(den > 0, den, 1.0)


def diffusion_loss(
    schedule: Schedule,
    model_output,
    x0,
    noise,
    t,
    *,
    target: str = "eps",
    weighting: str = "uniform",
    min_snr_gamma: float = 5.0,
    loss_type: str = "l2",
    mask=None,
) -> jax.Array:
    """The batch loss, a float32 scalar: Σ_b M_b L_b / Σ_b M_b (0 if everything is masked).

    Arguments as in ``per_example_loss``.
    """
    num, den = _weighted_sums(schedule, model_output, x0, noise, t, target, weighting, min_snr_gamma, loss_type, mask)
    total = jnp.sum(den)
    return jnp.sum(num) / jnp.where(total > 0, total, 1.0)
