import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax.diffusion import forward, samplers, schedule, toy
from ldm_jax.diffusion.samplers import SamplerConfig

# Well separated (>= 3.5 combined stds between means), so labelling a sample by its most
# likely component is wrong with probability < 3e-4, far below the standard errors used.
MIXTURE = toy.GaussianMixture(
    weights=[0.5, 0.3, 0.2], means=[[-3.0, 0.0], [3.0, 1.0], [0.0, -3.5]], stds=[[0.6, 0.6], [0.5, 0.5], [0.7, 0.5]]
)
# Two components 10 stds apart in dim 0, each with fine detail (std 0.2) there; dim 1 is N(0, 0.5²).
DETAIL = toy.GaussianMixture(weights=[0.5, 0.5], means=[[-1.0, 0.0], [1.0, 0.0]], stds=[[0.2, 0.5], [0.2, 0.5]])


@functools.lru_cache(maxsize=None)
def _schedule(zero_terminal_snr=False, num_steps=1000):
    return schedule.make_schedule("linear", num_steps, zero_terminal_snr=zero_terminal_snr)


def _run(denoise_fn, sched, sampling=SamplerConfig(), **kwargs):
    """``sample`` jitted over (x_T, key) (one compilation instead of many eager ops)."""
    return jax.jit(lambda x_T, key: samplers.sample(denoise_fn, sched, x_T, key, sampling, **kwargs))


def _labels(x, mixture=MIXTURE):
    x = np.asarray(x, np.float64)
    z = (x[:, None] - mixture.means) / mixture.stds
    return np.argmax(np.log(mixture.weights) - 0.5 * np.sum(z**2 + 2 * np.log(mixture.stds), -1), axis=1)


def test_timestep_spacings_closed_forms():
    np.testing.assert_array_equal(samplers.timesteps(10, 3, "leading"), [6, 3, 0])
    np.testing.assert_array_equal(samplers.timesteps(10, 3, "trailing"), [9, 6, 2])  # round(10, 6.67, 3.33) - 1
    np.testing.assert_array_equal(samplers.timesteps(10, 3, "linspace"), [9, 4, 0])  # round(4.5) = 4 (to even)
    np.testing.assert_array_equal(samplers.timesteps(10, 4, "quadratic"), [9, 5, 2, 0])  # k + round(6·(k/3)²)
    np.testing.assert_array_equal(samplers.timesteps(1000, 50, "leading")[[0, -1]], [980, 0])
    np.testing.assert_array_equal(samplers.timesteps(1000, 50, "trailing")[[0, -1]], [999, 19])
    np.testing.assert_array_equal(samplers.timesteps(1000, 20, "quadratic")[[0, -3, -2, -1]], [999, 13, 4, 0])
    np.testing.assert_array_equal(samplers.timesteps(1000, 50, "quadratic")[[0, -2, -1]], [999, 1, 0])
    for spacing in samplers.SPACINGS:
        np.testing.assert_array_equal(samplers.timesteps(16, 16, spacing), np.arange(16)[::-1])
        for n in (1, 7, 333, 999):
            ts = samplers.timesteps(1000, n, spacing)
            assert len(ts) == n and np.all(np.diff(ts) < 0) and ts.min() >= 0 and ts.max() <= 999


def _constant_x0_chains(sampler, eta, T, num_steps, n, c):
    """(schedule, trajectory [num_steps + 1, n, 1]) of n chains whose model predicts x̂_0 = c."""
    sched = _schedule(num_steps=T)
    x_T = jax.random.normal(jax.random.key(0), (n, 1))
    denoise = lambda x, t, cond: jnp.full_like(x, c)  # noqa: E731
    _, traj = _run(
        denoise,
        sched,
        SamplerConfig(sampler=sampler, num_steps=num_steps, eta=eta, prediction="x0"),
        return_trajectory=True,
    )(x_T, jax.random.key(1))
    assert traj.shape == (num_steps + 1, n, 1)
    return sched, traj


@pytest.mark.parametrize("sampler,eta", [("ddim", 1.0), ("ddpm", 0.0)])
def test_full_grid_step_is_the_ddpm_posterior(sampler, eta):
    """On the full grid, each step of DDPM and of DDIM with η = 1 draws from q(x_{t-1} | x_t, x̂_0)
    (DDPM eqs. 6-7; DDIM eq. 16). With x̂_0 = c fixed, the standardized residuals
    (x_{t-1} - μ̃(c, x_t)) / √β̃_t of n = 4000 chains must have mean within 5/√n of 0 and
    variance within 5·√(2/n) of 1 at every t >= 1; the last step returns c exactly."""
    n, c, T = 4000, 0.7, 20
    sched, traj = _constant_x0_chains(sampler, eta, T, T, n, c)
    t = jnp.repeat(jnp.arange(T - 1, 0, -1), n)  # steps t = T-1 .. 1, flattened with the chains
    x_t = traj[:-2].reshape(-1, 1)
    mean, var, _ = forward.q_posterior(sched, jnp.full_like(x_t, c), x_t, t)
    r = np.asarray((traj[1:-1].reshape(-1, 1) - mean) / jnp.sqrt(var)).reshape(T - 1, n)
    np.testing.assert_array_less(np.abs(r.mean(1)), 5 / np.sqrt(n))
    np.testing.assert_array_less(np.abs(r.var(1) - 1), 5 * np.sqrt(2 / n))
    np.testing.assert_allclose(np.asarray(traj[-1]), c, rtol=1e-6)


@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 0.5), ("ddim", 1.0)])
def test_subgrid_step_is_the_closed_form_transition(sampler, eta):
    """On the 50-step leading grid (t = 980, 960, ..., 0 of T = 1000) with x̂_0 = c fixed, each
    step t -> s is Gaussian with a closed form (float64 here, from the β table alone):
    DDPM draws from q(x_s | x_t, x_0 = c) with ᾱ_{t|s} = ᾱ_t/ᾱ_s, mean
    (√ᾱ_s (1-ᾱ_{t|s}) c + √ᾱ_{t|s} (1-ᾱ_s) x_t)/(1-ᾱ_t), variance (1-ᾱ_s)(1-ᾱ_{t|s})/(1-ᾱ_t);
    DDIM has mean √ᾱ_s c + √(1-ᾱ_s-σ²) ε̂, ε̂ = (x_t - √ᾱ_t c)/√(1-ᾱ_t), and variance σ² with
    σ = η √((1-ᾱ_s)/(1-ᾱ_t)) √(1-ᾱ_{t|s}) (DDIM eq. 16). The standardized residuals of
    n = 4000 chains must have mean within 5/√n of 0 and variance within 5·√(2/n) of 1 at each
    of the 49 steps above t = 0; the last step returns c exactly. (The one-step β_t in place of
    1 - ᾱ_{t|s} makes DDPM's step variance 6-9% of the right one here, and η² in place of η
    makes DDIM's a quarter at η = 0.5; the full-grid test above sees neither.)"""
    n, c, T, num_steps = 4000, 0.7, 1000, 50
    _, traj = _constant_x0_chains(sampler, eta, T, num_steps, n, c)
    ac = np.cumprod(1 - schedule.beta_schedule("linear", T))
    grid = np.arange(num_steps)[::-1] * (T // num_steps)
    a_t, a_s = ac[grid[:-1], None], ac[grid[1:], None]  # [49, 1]: steps t -> s above t = 0
    x_t = np.asarray(traj[:-2, :, 0], np.float64)
    x_s = np.asarray(traj[1:-1, :, 0], np.float64)
    beta_ts = 1 - a_t / a_s
    if sampler == "ddpm":
        mean = (np.sqrt(a_s) * beta_ts * c + np.sqrt(a_t / a_s) * (1 - a_s) * x_t) / (1 - a_t)
        var = (1 - a_s) / (1 - a_t) * beta_ts
    else:
        var = eta**2 * (1 - a_s) / (1 - a_t) * beta_ts
        mean = np.sqrt(a_s) * c + np.sqrt(1 - a_s - var) * (x_t - np.sqrt(a_t) * c) / np.sqrt(1 - a_t)
    r = (x_s - mean) / np.sqrt(var)
    np.testing.assert_array_less(np.abs(r.mean(1)), 5 / np.sqrt(n))
    np.testing.assert_array_less(np.abs(r.var(1) - 1), 5 * np.sqrt(2 / n))
    np.testing.assert_allclose(np.asarray(traj[-1]), c, rtol=1e-6)


def test_ddim_eta0_step_is_deterministic_eq12():
    """x_s = √ᾱ_s x̂_0 + √(1-ᾱ_s) ε̂ (DDIM eq. 12, η = 0), one step checked in float64."""
    sched = _schedule()
    x_T = jax.random.normal(jax.random.key(0), (3, 2, 2, 1))
    denoise = lambda x, t, cond: 0.5 * x
    _, traj = _run(denoise, sched, SamplerConfig(num_steps=4, spacing="trailing"), return_trajectory=True)(
        x_T, jax.random.key(1)
    )
    ac = np.cumprod(1 - schedule.beta_schedule("linear", 1000))
    a_t, a_s = ac[999], ac[749]
    x = np.asarray(x_T, np.float64)
    x0_hat = (x - np.sqrt(1 - a_t) * 0.5 * x) / np.sqrt(a_t)
    np.testing.assert_allclose(np.asarray(traj[1]), np.sqrt(a_s) * x0_hat + np.sqrt(1 - a_s) * 0.5 * x, rtol=1e-4)


def test_clip_x0_clips_the_prediction():
    """One step from t = 0 to clean data returns x̂_0 itself, here clipped from 5 to 1."""
    out = _run(
        lambda x, t, cond: jnp.full_like(x, 5.0), _schedule(), SamplerConfig(num_steps=1, prediction="x0", clip_x0=1.0)
    )(jnp.zeros((2, 3)), jax.random.key(0))
    np.testing.assert_allclose(np.asarray(out), 1.0, rtol=1e-6)


@pytest.mark.parametrize(
    "sampler,num_steps,eta,spacing,zero_snr,prediction,n,mean_allowance,std_allowance",
    [
        ("ddpm", 1000, 0.0, "leading", False, "eps", 8192, 0.0, 0.0),
        ("ddpm", 50, 0.0, "leading", False, "eps", 16384, 0.1, 0.1),
        ("ddim", 50, 0.0, "leading", False, "eps", 16384, 0.15, 0.06),
        ("ddim", 50, 0.5, "leading", False, "eps", 16384, 0.15, 0.06),
        ("dpmpp_2m", 20, 0.0, None, False, "eps", 16384, 0.05, 0.08),
        ("dpmpp_2m", 20, 0.0, None, True, "v", 16384, 0.05, 0.08),
        ("dpmpp_3m", 20, 0.0, None, False, "eps", 16384, 0.05, 0.03),
        ("dpmpp_3m", 20, 0.0, None, True, "v", 16384, 0.05, 0.03),
    ],
)
def test_reverse_process_with_exact_denoiser_recovers_the_mixture(
    sampler, num_steps, eta, spacing, zero_snr, prediction, n, mean_allowance, std_allowance
):
    """Sampling with the exact E[ε | x_t] (or v) of MIXTURE from x_T ~ N(0, I).

    Tolerances: weight of component k within 5·√(w(1-w)/n); its per-dim mean within
    5·σ/√n_k + mean_allowance·σ and std within 5/√(2 n_k) + std_allowance (relative). The
    allowances are the samplers' discretization error, 0 for 1000-step DDPM. Measured with
    n = 65536: DDPM on the 50-step sub-grid keeps the weights and means (within 0.06σ) but
    its stds are 7-10% low; DDIM(50) is first order (means off by up to 0.11σ, stds by up to
    -4%, also with η = 0.5); DPM-Solver++(2M, 20 steps of its default quadratic grid)
    overshoots where the components separate: stds up to +7%, means off by up to 0.05σ;
    DPM-Solver++(3M) on the same grid keeps the stds within 2% and the means within 0.05σ."""
    sched = _schedule(zero_snr)
    denoise = toy.mixture_eps_fn(sched, MIXTURE, prediction)
    x_T = jax.random.normal(jax.random.key(10), (n, 2))
    run = _run(
        denoise,
        sched,
        SamplerConfig(sampler=sampler, num_steps=num_steps, eta=eta, spacing=spacing, prediction=prediction),
    )
    x = np.asarray(run(x_T, jax.random.key(11)), np.float64)
    labels = _labels(x)
    for k, (w, mu, sd) in enumerate(zip(MIXTURE.weights, MIXTURE.means, MIXTURE.stds)):
        xk = x[labels == k]
        nk = len(xk)
        assert abs(nk / n - w) < 5 * np.sqrt(w * (1 - w) / n), (k, nk / n)
        np.testing.assert_array_less(np.abs(xk.mean(0) - mu), 5 * sd / np.sqrt(nk) + mean_allowance * sd)
        np.testing.assert_array_less(np.abs(xk.std(0) / sd - 1), 5 / np.sqrt(2 * nk) + std_allowance)


@pytest.mark.parametrize("num_steps", [20, 50])
def test_dpmpp_2m_defaults_keep_the_spread_of_fine_detail(num_steps):
    """DPM-Solver++(2M) with its default grid, LDM's schedule (scaled_linear 0.0015 -> 0.0195)
    and DETAIL's exact ε: each component's stds (0.2 and 0.5) and the overall stds within 5%.

    The last step returns x̂_0 = E[x_0 | x_t] at the grid's last t, which keeps a fraction
    √ᾱ s / √(ᾱ s² + 1 - ᾱ) of an std s = 0.2: 98% at t = 0 (where the quadratic grid ends), 56%
    at t = 49 and 75% at t = 19 (where the trailing grid ends at 20 and 50 steps). Measured with
    trailing: 0.69 / 0.74 of 0.2 and 0.85 / 0.94 of 0.5 (20 / 50 steps); quadratic: within 2%."""
    sched = schedule.make_schedule("scaled_linear", 1000, beta_start=0.0015, beta_end=0.0195)
    x_T = jax.random.normal(jax.random.key(20), (16384, 2))
    run = _run(toy.mixture_eps_fn(sched, DETAIL), sched, SamplerConfig(sampler="dpmpp_2m", num_steps=num_steps))
    x = np.asarray(run(x_T, jax.random.key(21)), np.float64)
    labels = _labels(x, DETAIL)
    ratios = [x[labels == k].std(0) / DETAIL.stds[k] for k in range(2)]
    ratios.append(x.std(0) / np.sqrt(np.diag(DETAIL.covariance())))
    np.testing.assert_allclose(np.array(ratios), 1.0, atol=0.05)


def test_dpmpp_3m_is_third_order():
    """DPM-Solver++(3M) with the exact ε of a smooth 2-component mixture, from one x_T, against
    its own 1000-step solution: the RMS error falls at least 6-fold per halving of the steps from
    20 to 40 to 80 (third order: 8; measured 12.6 and 8.8), where DPM-Solver++(2M)'s falls 5.6-
    and 4.2-fold and the reference implementations' e_3/2 weight on x̂_0'' gives 40 and 2.6."""
    mixture = toy.GaussianMixture(weights=[0.6, 0.4], means=[[-0.5, 0.0], [0.7, 0.3]], stds=[1.0, 0.8])
    sched = _schedule()
    denoise = toy.mixture_eps_fn(sched, mixture)
    x_T = jax.random.normal(jax.random.key(0), (4096, 2))
    exact, *runs = (
        np.asarray(
            _run(denoise, sched, SamplerConfig(sampler="dpmpp_3m", num_steps=n))(x_T, jax.random.key(1)), np.float64
        )
        for n in (1000, 20, 40, 80)
    )
    errors = [np.sqrt(np.mean((x - exact) ** 2)) for x in runs]
    assert errors[0] / errors[1] > 6 and errors[1] / errors[2] > 6, errors


def test_ddim_inversion_round_trip_is_first_order():
    """Inverting x_0 with DDIM and sampling back, with the exact ε of a smooth 2-component
    mixture, returns x_0 up to the discretization error, which is first order in the step:
    RMS error < 0.02 at 50 steps (measured 0.008) and it halves (ratio 0.4-0.6) at 100."""
    mixture = toy.GaussianMixture(weights=[0.6, 0.4], means=[[-0.5, 0.0], [0.7, 0.3]], stds=[1.0, 0.8])
    sched = _schedule()
    denoise = toy.mixture_eps_fn(sched, mixture)
    x0, _ = mixture.sample(jax.random.key(0), 512)
    errors = []
    for num_steps in (50, 100):
        invert = jax.jit(
            lambda x: samplers.ddim_invert(
                denoise, sched, x, SamplerConfig(num_steps=num_steps), return_trajectory=True
            )
        )
        x_T, traj = invert(x0)
        assert traj.shape == (num_steps + 1, 512, 2)
        np.testing.assert_array_equal(np.asarray(traj[-1]), np.asarray(x_T))
        back = _run(denoise, sched, SamplerConfig(num_steps=num_steps))(x_T, jax.random.key(1))
        errors.append(float(jnp.sqrt(jnp.mean((back - x0) ** 2))))
    assert errors[0] < 0.02
    assert 0.4 < errors[1] / errors[0] < 0.6, errors


def test_guidance_scale_one_is_the_conditional_model_and_guidance_batches_2b():
    sched = _schedule()
    batches = []
    mixture_fn = toy.mixture_eps_fn(sched, MIXTURE)

    def denoise(x, t, cond):
        batches.append(x.shape[0])
        return mixture_fn(x, t, cond)

    x_T = jax.random.normal(jax.random.key(0), (64, 2))
    cond = jnp.arange(64, dtype=jnp.int32) % 3
    null = jnp.full((64,), MIXTURE.null_label, jnp.int32)
    dpmpp = SamplerConfig(sampler="dpmpp_2m", num_steps=20)
    conditional = _run(denoise, sched, dpmpp, cond=cond)(x_T, jax.random.key(1))
    static_one = _run(denoise, sched, dpmpp, cond=cond, null_cond=null)(x_T, jax.random.key(1))
    traced_one = jax.jit(
        lambda s: samplers.sample(
            denoise,
            sched,
            x_T,
            jax.random.key(1),
            dataclasses.replace(dpmpp, guidance_scale=s),
            cond=cond,
            null_cond=null,
        )
    )(jnp.float32(1.0))
    assert batches == [64, 64, 128]  # a Python 1.0 skips the unconditional pass; a traced scale does not
    np.testing.assert_array_equal(np.asarray(static_one), np.asarray(conditional))
    np.testing.assert_allclose(np.asarray(traced_one), np.asarray(conditional), atol=1e-5)
    # each class-conditional sample lands in its component
    np.testing.assert_array_equal(_labels(conditional), np.asarray(cond))
    # one step from t = 0 to x_0: x̂_0 = (x - √(1-ᾱ_0) ε̃)/√ᾱ_0 with ε̃ = u + s(c - u)
    x = x_T * 0.3
    guided = _run(denoise, sched, SamplerConfig(num_steps=1, guidance_scale=3.0), cond=cond, null_cond=null)(
        x, jax.random.key(1)
    )
    t0 = jnp.zeros(64, jnp.int32)
    u, c = mixture_fn(x, t0, null), mixture_fn(x, t0, cond)
    np.testing.assert_allclose(
        np.asarray(guided), np.asarray(forward.x0_from_eps(sched, x, t0, u + 3.0 * (c - u))), rtol=1e-5, atol=1e-6
    )


def test_sampler_is_deterministic_given_key_and_does_not_recompile():
    sched = _schedule()
    traces = []
    mixture_fn = toy.mixture_eps_fn(sched, MIXTURE)

    def denoise(x, t, cond):
        traces.append(1)
        return mixture_fn(x, t, cond)

    run = _run(denoise, sched, SamplerConfig(sampler="ddpm", num_steps=10))
    x_T = jax.random.normal(jax.random.key(0), (8, 2))
    a, b = run(x_T, jax.random.key(1)), run(x_T, jax.random.key(1))
    c = run(x_T + 1.0, jax.random.key(2))
    assert len(traces) == 1
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(jnp.abs(a - run(x_T, jax.random.key(2))).min()) > 0
    assert c.shape == a.shape


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_start_step_continues_the_same_trajectory(sampler):
    """Restarting at grid step 6 of 10 from the trajectory's latent there, with the same key,
    retraces the rest of it: the noise of grid step i is fold_in(key, i)."""
    sched = _schedule()
    denoise = toy.mixture_eps_fn(sched, MIXTURE)
    x_T = jax.random.normal(jax.random.key(0), (16, 2))
    key = jax.random.key(3)
    config = SamplerConfig(sampler=sampler, num_steps=10)
    _, traj = _run(denoise, sched, config, return_trajectory=True)(x_T, key)
    _, part = _run(denoise, sched, config, start_step=6, return_trajectory=True)(traj[6], key)
    assert part.shape == (5, 16, 2)
    np.testing.assert_allclose(np.asarray(part), np.asarray(traj[6:]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_known_region_is_kept_and_the_rest_sampled_as_without_it(sampler):
    """``known = (mask, latents)``: where the mask is 0 each step ends on the known latent (the last
    one is the result); where it is 1 the chain is the one sampled without ``known``. The toy
    denoiser treats examples independently, so the mask is over examples: rows 0-7 generated,
    rows 8-15 known."""
    sched = _schedule()
    denoise = toy.mixture_eps_fn(sched, MIXTURE)
    x_T = jax.random.normal(jax.random.key(0), (16, 2))
    key = jax.random.key(3)
    config = SamplerConfig(sampler=sampler, num_steps=10)
    known = jax.random.normal(jax.random.key(9), (10, 16, 2))
    mask = (jnp.arange(16) < 8).astype(jnp.float32)[:, None]
    free = _run(denoise, sched, config)(x_T, key)
    kept = _run(denoise, sched, config, known=(mask, known))(x_T, key)
    np.testing.assert_array_equal(np.asarray(kept[8:]), np.asarray(known[-1, 8:]))
    np.testing.assert_allclose(np.asarray(kept[:8]), np.asarray(free[:8]), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="known latents of shape"):
        _run(denoise, sched, config, known=(mask, known[1:]))(x_T, key)


def test_sdedit_start_noises_to_the_grid_step():
    """strength 0.3 of 50 leading steps: the last 15 remain, start_step 35 (t = 280); x_t - √ᾱ x_0
    over 8192 values has std √(1-ᾱ_280) within 5/√(2n) (relative) and mean within 5·std/√n."""
    sched = _schedule()
    x0 = jnp.full((8, 32, 32, 1), 0.5)
    x_t, start = samplers.sdedit_start(sched, x0, jax.random.key(0), 0.3, SamplerConfig(num_steps=50))
    assert start == 35 and samplers.timesteps(1000, 50, "leading")[start] == 280
    residual = np.asarray(x_t - sched.sqrt_alphas_cumprod[280] * x0).ravel()
    sd = float(sched.sqrt_one_minus_alphas_cumprod[280])
    assert abs(residual.mean()) < 5 * sd / np.sqrt(residual.size)
    assert abs(residual.std() / sd - 1) < 5 / np.sqrt(2 * residual.size)
    with pytest.raises(ValueError, match="strength=0.001"):
        samplers.sdedit_start(sched, x0, jax.random.key(0), 0.001, SamplerConfig(num_steps=50))


def test_bad_sampler_settings_raise_when_built():
    cases = [
        (dict(sampler="euler"), "unknown sampler 'euler'"),
        (dict(prediction="score"), "unknown prediction 'score'"),
        (dict(sampler="ddpm", eta=0.5), "eta=0.5 applies to the ddim sampler only"),
        (dict(eta=-0.5), "eta=-0.5 must be >= 0"),
        (dict(clip_x0=-1.0), "clip_x0=-1.0"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            SamplerConfig(**kwargs)
    assert SamplerConfig(sampler="dpmpp").sampler == "dpmpp_2m"  # an alias is stored by its canonical name
    assert SamplerConfig(sampler="dpmpp").timestep_spacing == "quadratic"
    assert SamplerConfig(sampler="ddim", spacing="trailing").timestep_spacing == "trailing"


def test_bad_sampler_arguments_raise_at_trace_time():
    sched = _schedule(num_steps=100)
    x = jnp.zeros((4, 2))
    ok = lambda x, t, cond: x
    key = jax.random.key(0)
    cases = [
        (SamplerConfig(num_steps=101), {}, r"num_steps=101 must be an integer in \[1, 100\]"),
        (SamplerConfig(spacing="karras"), {}, "unknown timestep spacing 'karras'"),
        (SamplerConfig(), dict(start_step=50), r"start_step=50 must be an integer in \[0, 50\)"),
        (SamplerConfig(guidance_scale=2.0), dict(cond=jnp.zeros(4)), "guidance_scale=2.0 needs null_cond"),
        (SamplerConfig(), dict(cond=jnp.zeros(3)), r"cond leaf of shape \(3,\): expected a leading batch axis of 4"),
        (SamplerConfig(), dict(cond=jnp.zeros(4), null_cond=jnp.zeros(4, jnp.int32)), "null_cond .* must match cond"),
    ]
    for sampling, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            jax.jit(lambda x: samplers.sample(ok, sched, x, key, sampling, **kwargs))(x)
    with pytest.raises(ValueError, match=r"denoise_fn returned shape \(4, 1\); expected x's shape \(4, 2\)"):
        samplers.sample(lambda x, t, c: x[:, :1], sched, x, key)
    with pytest.raises(ValueError, match="floating-point"):
        samplers.sample(ok, sched, jnp.zeros((4, 2), jnp.int32), key)
    with pytest.raises(ValueError, match=r"num_steps=200"):
        samplers.ddim_invert(ok, sched, x, SamplerConfig(num_steps=200))
