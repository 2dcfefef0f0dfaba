"""The forward and the reverse process of a run, pictured: for ``evaluate``'s report and the
explainer page (``explain.figures``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax import attributes
from ldm_jax.diffusion import forward, samplers
from ldm_jax.diffusion.samplers import SamplerConfig
from ldm_jax.diffusion.schedule import Schedule
from ldm_jax.sampling.generate import denoiser, image_keys


def noised(schedule: Schedule, x0: np.ndarray, ts, seed: int = 0) -> np.ndarray:
    """x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε (``forward.q_sample``, DDPM eq. 4) of one image ``[H, W, C]``
    at every t of ``ts``, with one ε drawn from ``seed``: ``[len(ts), H, W, C]``."""
    ts = jnp.asarray(ts, jnp.int32)
    noise = jax.random.normal(jax.random.PRNGKey(seed), x0.shape)
    batch = len(ts)
    return np.asarray(
        forward.q_sample(
            schedule, jnp.broadcast_to(x0, (batch, *x0.shape)), ts, jnp.broadcast_to(noise, (batch, *x0.shape))
        )
    )


def pixel_frames(schedule: Schedule, image: np.ndarray, count: int = 11) -> dict:
    """The report's forward diffusion: ``noised`` image at ``count`` timesteps from 0 to T − 1,
    clipped to [-1, 1]."""
    ts = np.linspace(0, schedule.num_steps - 1, count).round().astype(int)
    return {"t": ts.tolist(), "frames": list(np.clip(noised(schedule, image, ts), -1, 1))}


def reverse_path(ev, condition: str = "density=D", seed: int = 0) -> dict:
    """One unguided sample of evaluator ``ev``'s model under ``condition`` on ``ev.sampling``'s grid
    (x_T from image key 0 of ``seed``): ``t`` the n grid timesteps, ``path`` the latents
    ``[n + 1, 1, h, w, c]`` from x_T to x_0 and the ``labels`` ``[1, A]``."""
    m = ev.model
    labels = jnp.asarray(attributes.parse_condition(condition))[None]
    keys = image_keys(jax.random.PRNGKey(seed), jnp.arange(1))
    x_T = jax.random.normal(keys[0], (1, *m.latent_shape))
    sampling = SamplerConfig(num_steps=ev.sampling.num_steps, prediction=m.prediction)

    @jax.jit
    def path(unet_params):
        denoise = denoiser(m.unet, unet_params)
        return samplers.sample(denoise, m.schedule, x_T, keys, sampling, cond=labels, return_trajectory=True)[1]

    return {"t": sampling.grid(m.schedule.num_steps), "path": path(m.unet_params), "labels": labels}


def trajectory_frames(ev, frames: int = 8, seed: int = 0) -> dict:
    """The report's denoising trajectory: ``reverse_path`` (density D) decoded at ``frames`` points."""
    path = reverse_path(ev, "density=D", seed)["path"]
    picks = np.linspace(0, len(path) - 1, frames).round().astype(int)
    images = [np.asarray(ev.decode(path[i] / ev.model.scale))[0] for i in picks]
    return {"captions": [f"step {i} of {len(path) - 1}" for i in picks], "frames": images}
