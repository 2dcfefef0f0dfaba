"""The numbers and images of the explainer page, each computed by ``ldm_jax``'s own functions.

Every function is deterministic (fixed keys) and returns plain numpy arrays and floats. Images are
``[H, W, 1]`` in the model range [-1, 1]; timesteps are 0-based (``t = T - 1`` is the last step).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax import attributes
from ldm_jax.benchmarking.flops import count_flops
from ldm_jax.data.imageio import to_model_range
from ldm_jax.data.phantoms import generate_phantom
from ldm_jax.data.seeds import EXPLAIN_PHANTOM_SEED
from ldm_jax.diffusion import forward
from ldm_jax.diffusion.samplers import SamplerConfig
from ldm_jax.diffusion.schedule import SCHEDULES, Schedule, make_schedule
from ldm_jax.evaluation import classifier as clf
from ldm_jax.evaluation import metrics
from ldm_jax.evaluation.headline import mean_grey_by_density
from ldm_jax.evaluation.evaluator import DENSITY_CONDITIONS, Evaluator, held_out_phantoms
from ldm_jax.evaluation.process import noised, reverse_path
from ldm_jax.models import presets
from ldm_jax.models.init import init_unet_params
from ldm_jax.sampling.generate import image_keys, make_generate


def phantom(size: int, seed: int = EXPLAIN_PHANTOM_SEED, **attrs) -> np.ndarray:
    """``generate_phantom(seed, size, **attrs).image`` as ``[size, size, 1]`` in [-1, 1]."""
    return to_model_range(generate_phantom(seed, size, **attrs).image)[..., None]


def signal_levels(schedule: Schedule, ts) -> dict:
    """ᾱ_t and SNR(t) = ᾱ_t / (1 - ᾱ_t) (``forward.snr``) at timesteps ``ts``."""
    ts = jnp.asarray(ts, jnp.int32)
    return {
        "alpha_bar": np.asarray(schedule.alphas_cumprod[ts], np.float64),
        "snr": np.asarray(forward.snr(schedule, ts), np.float64),
    }


def forward_frames(schedule: Schedule, x0: np.ndarray, ts, ev: Evaluator | None = None) -> dict:
    """The forward process of image ``x0`` at ``ts``: pixel-space x_t, and with a run's
    autoencoder (``ev``) the latent z_t = q_sample(s·E(x_0), t, ε) (s: latent scale factor) and
    its decoding D(z_t / s). The same ε (per space) at every t."""
    out = {"t": [int(t) for t in ts], "pixel": noised(schedule, x0, ts), **signal_levels(schedule, ts)}
    if ev is not None:
        z0 = np.asarray(ev.encode(x0[None]))[0] * ev.model.scale
        z = noised(schedule, z0, ts, seed=1)
        out["latent"] = z
        out["decoded"] = np.asarray(ev.decode(jnp.asarray(z) / ev.model.scale))
    return out


def markov_chain(schedule: Schedule, x0: np.ndarray, ts, draws: int, seed: int = 0) -> dict:
    """``draws`` runs of the chain x_t = √(1-β_t) x_{t-1} + √β_t ε_t (DDPM eq. 2) from ``x0``,
    and ``draws`` one-step ``q_sample`` draws, both at each t of ``ts`` (ascending): arrays
    ``[len(ts), draws, *x0.shape]`` under ``"chain"`` and ``"closed_form"``."""
    ts = [int(t) for t in ts]
    if ts != sorted(ts):
        raise ValueError(f"markov_chain needs ascending timesteps, got {ts}")
    key = jax.random.PRNGKey(seed)

    @jax.jit
    def advance(x, start, stop):
        def step(s, x):
            eps = jax.random.normal(jax.random.fold_in(key, s), x.shape)
            return jnp.sqrt(1.0 - schedule.betas[s]) * x + jnp.sqrt(schedule.betas[s]) * eps

        return jax.lax.fori_loop(start, stop, step, x)

    x, done, chain = jnp.broadcast_to(x0, (draws, *x0.shape)), 0, []
    for t in ts:
        x, done = advance(x, done, t + 1), t + 1
        chain.append(np.asarray(x))
    x0s = jnp.broadcast_to(x0, (draws, *x0.shape))
    closed = [
        forward.q_sample(
            schedule,
            x0s,
            jnp.full((draws,), t, jnp.int32),
            jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(seed + 1), t), x0s.shape),
        )
        for t in ts
    ]
    return {"t": ts, "chain": np.stack(chain), "closed_form": np.stack([np.asarray(c) for c in closed])}


def histogram(values: np.ndarray, bins: np.ndarray) -> list[tuple[float, float]]:
    """``(bin centre, probability density)`` of ``values`` over ``bins`` (edges)."""
    density, _ = np.histogram(np.ravel(values), bins=bins, density=True)
    return list(zip(((bins[:-1] + bins[1:]) / 2).tolist(), density.tolist()))


def schedules(num_steps: int) -> dict[str, Schedule]:
    """Every ``SCHEDULES`` entry at ``num_steps`` with its default β range, and each again rescaled
    to zero terminal SNR (Lin et al. 2023), named ``"<name>, zero terminal SNR"``."""
    out = {name: make_schedule(name, num_steps) for name in SCHEDULES}
    out.update(
        {f"{name}, zero terminal SNR": make_schedule(name, num_steps, zero_terminal_snr=True) for name in SCHEDULES}
    )
    return out


def prior_kl(schedule: Schedule, x0: np.ndarray) -> float:
    """Mean per-pixel KL(q(x_{T-1} | x_0) ‖ N(0, I)) in nats, with q = N(√ᾱ x_0, 1 - ᾱ):
    ½(ᾱ x_0² - ᾱ - log(1 - ᾱ)), ᾱ = ᾱ_{T-1}; the mismatch a sampler that starts from N(0, I)
    makes at its first step."""
    a = float(np.asarray(schedule.alphas_cumprod, np.float64)[-1])
    return float(np.mean(0.5 * (a * np.asarray(x0, np.float64) ** 2 - a - np.log1p(-a))))


def unet_step_flops(unet_config, shape: tuple[int, int, int]) -> int:
    """FLOPs of one UNet call on one input ``[1, *shape]`` (``benchmarking.flops.count_flops``),
    the UNet built from ``unet_config`` with ``out_channels`` set to ``shape[-1]``."""
    unet = presets.build_unet({**unet_config.to_dict(), "out_channels": shape[-1]}, attention_impl="xla")
    num_attributes = len(attributes.ATTRIBUTES)
    params = jax.eval_shape(lambda: init_unet_params(jax.random.PRNGKey(0), unet, (1, *shape), num_attributes))
    x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    labels = jax.ShapeDtypeStruct((1, num_attributes), jnp.int32)
    return count_flops(lambda p, x, t, c: unet.apply({"params": p}, x, t, c), params, x, t, labels)


def latent_view(ev: Evaluator, x0: np.ndarray) -> dict:
    """Image ``x0``, its reconstruction D(E(x_0)) with its PSNR, the scaled latent s·E(x_0)
    ``[h, w, c]``, the compression ratio (pixels / latent values) and the FLOPs of one UNet step
    in pixel space and in latent space."""
    m = ev.model
    z = np.asarray(ev.encode(x0[None]))[0]
    recon = np.asarray(ev.decode(jnp.asarray(z[None])))[0]
    image_shape = (m.image_size, m.image_size, x0.shape[-1])
    return {
        "image": x0,
        "reconstruction": recon,
        "psnr": float(metrics.psnr(x0[None], recon[None], np.ptp(metrics.MODEL_RANGE))[0]),
        "latent": z * m.scale,
        "compression": float(np.prod(image_shape) / np.prod(m.latent_shape)),
        "flops_pixel": unet_step_flops(m.config.unet, image_shape),
        "flops_latent": unet_step_flops(m.config.unet, m.latent_shape),
    }


def reverse_trajectory(ev: Evaluator, condition: str = "density=D", seed: int = 0) -> dict:
    """One unguided sample under ``condition`` on ``ev.sampling``'s grid (``process.reverse_path``):
    at each step the latent x_t and the model's x̂_0 (``forward.x0_eps_from_prediction``), both
    decoded; ``[n, H, W, 1]`` each for the n grid timesteps ``t``, and the final sample."""
    m = ev.model
    reverse = reverse_path(ev, condition, seed)
    ts, xt, final = jnp.asarray(reverse["t"]), reverse["path"][:-1, 0], reverse["path"][-1]

    @jax.jit
    def predicted_x0(unet_params):
        prediction = m.unet.apply({"params": unet_params}, xt, ts, jnp.repeat(reverse["labels"], len(ts), 0))
        return forward.x0_eps_from_prediction(m.schedule, xt, ts, prediction, m.prediction)[0]

    return {
        "t": reverse["t"].tolist(),
        "xt": np.asarray(ev.decode(xt / m.scale)),
        "x0_hat": np.asarray(ev.decode(predicted_x0(m.unet_params) / m.scale)),
        "sample": np.asarray(ev.decode(final / m.scale))[0],
    }


def same_noise_by_density(ev: Evaluator, seed: int = 0) -> dict[str, np.ndarray]:
    """One x_T (image key 0 of ``seed``) sampled under each ``density=X`` alone with ``ev.generate``."""
    m = ev.model
    labels = jnp.stack([jnp.asarray(attributes.parse_condition(c)) for c in DENSITY_CONDITIONS])
    keys = jnp.repeat(image_keys(jax.random.PRNGKey(seed), jnp.arange(1)), len(DENSITY_CONDITIONS), 0)
    images = np.asarray(ev.generate(m.unet_params, m.ae_params, m.scale, labels, keys))
    return dict(zip(DENSITY_CONDITIONS, images))


def quality_by_steps(ev: Evaluator, step_counts, num: int, held_out: int, seed: int = 0) -> tuple[list[dict], list]:
    """For each DDIM step count: ``num`` samples cycling over ``density=X`` (guidance
    ``ev.sampling.guidance_scale``), the seconds to compile and to generate them, their mean grey
    per density (``headline.mean_grey_by_density``) and, when the run has a phantom classifier
    file, the density accuracy and the Fréchet distance to ``held_out`` held-out phantoms in the
    classifier's features (``evaluation.metrics``). Also returns the held-out phantoms' grey per
    density."""
    m = ev.model
    labels = jnp.stack([jnp.asarray(attributes.parse_condition(DENSITY_CONDITIONS[i % 4])) for i in range(num)])
    keys = image_keys(jax.random.PRNGKey(seed), jnp.arange(num))
    args = (m.unet_params, m.ae_params, m.scale, labels, keys)
    classifier = ev.classifier() if ev.classifier_file.exists() else None
    real = held_out_phantoms(held_out, m.image_size)
    rows = []
    for steps in step_counts:
        sampling = SamplerConfig(num_steps=steps, prediction=m.prediction, guidance_scale=ev.sampling.guidance_scale)
        start = time.perf_counter()
        generate = (
            jax.jit(make_generate(m.unet, m.autoencoder, m.schedule, m.latent_shape, sampling)).lower(*args).compile()
        )
        compiled = time.perf_counter()
        images = np.asarray(jax.block_until_ready(generate(*args)))
        row = {
            "steps": steps,
            "compile_seconds": compiled - start,
            "seconds": time.perf_counter() - compiled,
            "grey_by_density": mean_grey_by_density(images, np.asarray(labels[:, 0])),
            "images": images,
        }
        if classifier:
            params, config = classifier
            predicted = clf.predict(params, config, images)["labels"]
            row["density_accuracy"] = clf.conditioning_accuracy(predicted, np.asarray(labels))["density"]
            row["frechet_distance"] = metrics.frechet_distance(
                clf.features(params, config, real["image"]), clf.features(params, config, images)
            )
        rows.append(row)
    return rows, mean_grey_by_density(real["image"], real["labels"][:, 0])
