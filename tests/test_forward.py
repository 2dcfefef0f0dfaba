import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax.diffusion import forward, schedule

SCHEDULES = [("linear", False), ("cosine", False), ("scaled_linear", True)]


def _batch(key, t, shape=(2, 3, 1)):
    k1, k2 = jax.random.split(key)
    return (
        jax.random.normal(k1, (len(t),) + shape),
        jax.random.normal(k2, (len(t),) + shape),
        jnp.asarray(t, jnp.int32),
    )


@pytest.mark.parametrize("name,zero_snr", SCHEDULES)
def test_q_sample_closed_form_per_example_t(name, zero_snr):
    """DDPM eq. 4 on NHWC input with a different t per example, against float64 ᾱ."""
    sched = schedule.make_schedule(name, 200, zero_terminal_snr=zero_snr)
    betas = schedule.beta_schedule(name, 200)
    if zero_snr:
        betas = schedule.rescale_zero_terminal_snr(betas)
    ac = np.cumprod(1 - betas)
    x0, noise, t = _batch(jax.random.key(0), [0, 57, 199])
    xt = forward.q_sample(sched, x0, t, noise)
    a = np.sqrt(ac[np.asarray(t)])[:, None, None, None]
    np.testing.assert_allclose(np.asarray(xt), a * x0 + np.sqrt(1 - a**2) * noise, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,zero_snr", SCHEDULES)
def test_posterior_equals_bayes_rule(name, zero_snr):
    """q(x_{t-1} | x_t, x_0) ∝ N(x_t; √α_t x_{t-1}, β_t) · N(x_{t-1}; √ᾱ_{t-1} x_0, 1-ᾱ_{t-1}):
    a product of Gaussians in x_{t-1}, precision α_t/β_t + 1/(1-ᾱ_{t-1}), mean = variance ·
    (√α_t x_t/β_t + √ᾱ_{t-1} x_0/(1-ᾱ_{t-1})), computed here in float64 at random t >= 1."""
    T = 200
    sched = schedule.make_schedule(name, T, zero_terminal_snr=zero_snr)
    betas = schedule.beta_schedule(name, T)
    if zero_snr:
        betas = schedule.rescale_zero_terminal_snr(betas)
    ac = np.cumprod(1 - betas)
    t_np = np.append(np.random.default_rng(1).integers(1, T, 6), T - 1)
    x0, xt, t = _batch(jax.random.key(1), t_np)
    mean, var, log_var = forward.q_posterior(sched, x0, xt, t)
    b, a_prev = betas[t_np][:, None, None, None], ac[t_np - 1][:, None, None, None]
    precision = (1 - b) / b + 1 / (1 - a_prev)
    expected_mean = (
        np.sqrt(1 - b) * np.asarray(xt, np.float64) / b + np.sqrt(a_prev) * np.asarray(x0, np.float64) / (1 - a_prev)
    ) / precision
    assert var.shape == log_var.shape == (7, 1, 1, 1)
    np.testing.assert_allclose(np.asarray(var), 1 / precision, rtol=2e-5)
    np.testing.assert_allclose(np.asarray(log_var), -np.log(precision), rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(np.asarray(mean), expected_mean, rtol=2e-5, atol=2e-5)
    # t = 0: x_{-1} is the clean x_0 itself (variance 0, log-variance clipped to t = 1's)
    mean0, var0, log_var0 = forward.q_posterior(sched, x0[:1], xt[:1], jnp.array([0]))
    np.testing.assert_allclose(np.asarray(mean0), np.asarray(x0[:1]), rtol=1e-6)
    assert float(var0[0, 0, 0, 0]) == 0.0
    np.testing.assert_allclose(float(log_var0[0, 0, 0, 0]), float(sched.posterior_log_variance_clipped[1]))


@pytest.mark.parametrize("name,zero_snr", SCHEDULES)
def test_eps_x0_v_conversions_round_trip(name, zero_snr):
    sched = schedule.make_schedule(name, 100, zero_terminal_snr=zero_snr)
    t_np = np.array([0, 1, 50, 98, 99])
    x0, noise, t = _batch(jax.random.key(2), t_np)
    xt = forward.q_sample(sched, x0, t, noise)
    v = forward.v_target(sched, x0, t, noise)
    a = np.asarray(sched.sqrt_alphas_cumprod)[t_np][:, None, None, None]
    np.testing.assert_allclose(np.asarray(v), a * noise - np.sqrt(1 - a**2) * x0, rtol=1e-5, atol=1e-6)
    identifiable = t_np < 99 if zero_snr else np.ones(5, bool)
    for param, pred in (("eps", noise), ("x0", x0), ("v", v)):
        x0_hat, eps_hat = forward.x0_eps_from_prediction(sched, xt, t, pred, param)
        np.testing.assert_allclose(np.asarray(eps_hat), np.asarray(noise), rtol=1e-4, atol=2e-4, err_msg=param)
        if param == "eps":  # 1/√ᾱ amplifies float32 rounding at large t
            np.testing.assert_allclose(
                np.asarray(x0_hat)[identifiable], np.asarray(x0)[identifiable], rtol=1e-3, atol=5e-3
            )
        else:
            np.testing.assert_allclose(np.asarray(x0_hat), np.asarray(x0), rtol=1e-4, atol=2e-4, err_msg=param)
    np.testing.assert_allclose(
        np.asarray(forward.eps_from_x0(sched, xt, t, x0)), np.asarray(noise), rtol=1e-4, atol=2e-4
    )
    if zero_snr:  # at ᾱ = 0 x_0 is not identifiable from ε: 0 by convention, with finite gradients
        x0_last = forward.x0_from_eps(sched, xt, t, noise)[-1]
        assert float(jnp.abs(x0_last).max()) == 0.0
        grads = jax.grad(lambda e: forward.x0_from_eps(sched, xt, t, e).sum())(noise)
        assert np.isfinite(np.asarray(grads)).all() and float(jnp.abs(grads[-1]).max()) == 0.0


def test_snr_and_log_snr_agree():
    sched = schedule.make_schedule("linear", 1000)
    t = jnp.arange(0, 1000, 37)
    ac = np.cumprod(1 - schedule.beta_schedule("linear", 1000))[np.asarray(t)]
    np.testing.assert_allclose(np.asarray(forward.snr(sched, t)), ac / (1 - ac), rtol=2e-5)
    np.testing.assert_allclose(
        np.log(np.asarray(forward.snr(sched, t))), np.asarray(sched.log_snr[t]), rtol=1e-5, atol=1e-5
    )


def test_forward_functions_work_under_jit_with_traced_t():
    sched = schedule.make_schedule("linear", 100)
    x0, noise, t = _batch(jax.random.key(3), [3, 90])
    jitted = jax.jit(forward.q_sample)(sched, x0, t, noise)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(forward.q_sample(sched, x0, t, noise)), rtol=1e-6)


def test_bad_forward_inputs_raise_at_trace_time():
    sched = schedule.make_schedule("linear", 100)
    x0, noise, t = _batch(jax.random.key(4), [3, 90])
    with pytest.raises(ValueError, match=r"timestep 100 out of range: expected 0 <= t < T = 100"):
        forward.q_sample(sched, x0, jnp.array([5, 100]), noise)
    with pytest.raises(ValueError, match="timestep -1 out of range"):
        forward.snr(sched, np.array([-1]))
    with pytest.raises(ValueError, match="must be integers, got dtype float32"):
        forward.q_sample(sched, x0, jnp.array([5.0, 6.0]), noise)
    with pytest.raises(ValueError, match=r"shape \[2\] \(the batch size of x\), got \(3,\)"):
        forward.q_sample(sched, x0, jnp.array([1, 2, 3]), noise)
    with pytest.raises(ValueError, match=r"noise has shape \(2, 2, 3, 2\)"):
        forward.q_sample(sched, x0, t, jnp.zeros((2, 2, 3, 2)))
    with pytest.raises(ValueError, match="dtype bfloat16"):
        forward.q_sample(sched, x0, t, noise.astype(jnp.bfloat16))
    with pytest.raises(ValueError, match="unknown parameterization 'score'"):
        forward.x0_eps_from_prediction(sched, x0, t, noise, "score")
    with pytest.raises(ValueError, match=r"eps has shape \(2, 2, 3\)"):  # checked while tracing
        jax.jit(forward.x0_from_eps)(sched, x0, t, noise[..., 0])
