"""A Gaussian mixture with an exact denoiser: ground truth for the samplers without training.

Data x_0 ~ Σ_k w_k N(μ_k, diag σ_k²) in D dims. Under q(x_t | x_0) = N(√ᾱ x_0, (1-ᾱ) I),
component k becomes N(√ᾱ μ_k, diag(ᾱσ_k² + 1 - ᾱ)), so with responsibilities r_k(x_t):

    E[ε | x_t]   = √(1-ᾱ) Σ_k r_k (x_t - √ᾱ μ_k) / (ᾱσ_k² + 1 - ᾱ)
    E[x_0 | x_t] = Σ_k r_k (μ_k + √ᾱ σ_k² (x_t - √ᾱ μ_k) / (ᾱσ_k² + 1 - ᾱ))

(the Gaussian conditional, Bishop 2006 eq. 2.116, per component). These are the minimizers
of the ε- and x0-losses, i.e. a perfectly trained network.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax.diffusion import forward
from ldm_jax.diffusion.schedule import Schedule


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianMixture:
    """Weights [K] (summing to 1), means [K, D], stds [K] (isotropic) or [K, D] (diagonal).

    Class labels are component indices 0..K-1; ``null_label`` = K means "any component".
    """

    weights: np.ndarray
    means: np.ndarray
    stds: np.ndarray

    def __post_init__(self):
        w, mu, sd = (np.asarray(a, np.float64) for a in (self.weights, self.means, self.stds))
        if w.ndim != 1 or mu.ndim != 2 or mu.shape[0] != w.shape[0]:
            raise ValueError(f"weights [K] and means [K, D] expected, got shapes {w.shape} and {mu.shape}")
        if np.any(w < 0) or not np.isclose(w.sum(), 1.0):
            raise ValueError(f"weights {w} must be non-negative and sum to 1")
        if sd.shape not in ((w.shape[0],), mu.shape) or np.any(sd <= 0):
            raise ValueError(f"stds of shape {sd.shape} must be positive with shape [K]={w.shape} or [K, D]={mu.shape}")
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "means", mu)
        object.__setattr__(self, "stds", np.broadcast_to(sd.reshape(w.shape[0], -1), mu.shape).copy())

    @property
    def null_label(self) -> int:
        return self.weights.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def mean(self) -> np.ndarray:
        """E[x_0] = Σ_k w_k μ_k, [D]."""
        return self.weights @ self.means

    def covariance(self) -> np.ndarray:
        """Cov[x_0] = Σ_k w_k (diag σ_k² + μ_k μ_kᵀ) - E[x_0] E[x_0]ᵀ, [D, D]."""
        second = np.einsum("k,ki,kj->ij", self.weights, self.means, self.means)
        m = self.mean()
        return np.diag(self.weights @ self.stds**2) + second - np.outer(m, m)

    def sample(self, key: jax.Array, n: int):
        """(x [n, D] float32, labels [n] int32): n draws and the component each came from."""
        k_label, k_noise = jax.random.split(key)
        labels = jax.random.choice(k_label, self.weights.shape[0], (n,), p=jnp.asarray(self.weights))
        z = jax.random.normal(k_noise, (n, self.dim))
        x = jnp.asarray(self.means, jnp.float32)[labels] + jnp.asarray(self.stds, jnp.float32)[labels] * z
        return x, labels.astype(jnp.int32)


def mixture_eps_fn(schedule: Schedule, mixture: GaussianMixture, prediction: str = "eps"):
    """The exact ``denoise_fn(x, t, cond)`` of ``mixture``: E[ε | x_t] (or E[x_0 | x_t], or v).

    ``x`` is [B, ...] with D values per example; ``cond`` is None (the mixture) or int
    labels [B]: component k conditions on that component, ``mixture.null_label`` on none.
    The output has x's shape and dtype; ``prediction`` picks ε, x0 or v = √ᾱ ε - √(1-ᾱ) x0.
    """
    if prediction not in forward.PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; expected one of {forward.PREDICTIONS}")
    weights = jnp.asarray(mixture.weights, jnp.float32)
    means = jnp.asarray(mixture.means, jnp.float32)
    var0 = jnp.asarray(mixture.stds, jnp.float32) ** 2
    num_components = weights.shape[0]

    def denoise_fn(x, t, cond):
        batch = x.shape[0]
        forward.check_timesteps(schedule, t, batch)
        if np.prod(x.shape[1:]) != mixture.dim:
            raise ValueError(f"x has shape {x.shape}; expected {mixture.dim} values per example")
        xf = x.reshape(batch, 1, mixture.dim).astype(jnp.float32)
        a = schedule.sqrt_alphas_cumprod[t][:, None, None]
        s = schedule.sqrt_one_minus_alphas_cumprod[t][:, None, None]
        var = a**2 * var0 + s**2  # [B, K, D]
        diff = xf - a * means
        logits = jnp.log(weights) - 0.5 * jnp.sum(diff**2 / var + jnp.log(var), axis=-1)
        if cond is not None:
            if jnp.shape(cond) != (batch,) or not jnp.issubdtype(jnp.result_type(cond), jnp.integer):
                raise ValueError(
                    f"cond must be int labels [{batch}], got shape {jnp.shape(cond)}, dtype {jnp.result_type(cond)}"
                )
            allowed = (cond[:, None] == jnp.arange(num_components)) | (cond[:, None] == num_components)
            logits = jnp.where(allowed, logits, -jnp.inf)
        r = jax.nn.softmax(logits, axis=-1)[..., None]
        eps = jnp.sum(r * s * diff / var, axis=1)
        x0 = jnp.sum(r * (means + a * var0 * diff / var), axis=1)
        out = {"eps": eps, "x0": x0, "v": a[:, 0] * eps - s[:, 0] * x0}[prediction]
        return out.reshape(x.shape).astype(x.dtype)

    return denoise_fn
