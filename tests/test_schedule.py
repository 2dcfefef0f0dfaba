import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ldm_jax.checkpoint.restore import schedule_from_config
from ldm_jax.diffusion import forward, schedule
from ldm_jax.training.config import default_config


def test_linear_and_scaled_linear_closed_forms():
    lin = schedule.beta_schedule("linear", 1000)
    assert lin.dtype == np.float64 and lin.shape == (1000,)
    np.testing.assert_allclose(lin[[0, -1]], [1e-4, 0.02], rtol=1e-12)
    np.testing.assert_allclose(np.diff(lin), (0.02 - 1e-4) / 999, rtol=1e-9)
    sd = schedule.beta_schedule("scaled_linear", 1000)
    np.testing.assert_allclose(np.sqrt(sd)[[0, -1]], np.sqrt([0.00085, 0.012]), rtol=1e-12)
    np.testing.assert_allclose(np.diff(np.sqrt(sd)), (np.sqrt(0.012) - np.sqrt(0.00085)) / 999, rtol=1e-9)
    ldm = schedule.beta_schedule("scaled_linear", 7, beta_start=0.0015, beta_end=0.0195)
    np.testing.assert_allclose(ldm[[0, 3, 6]], [0.0015, ((np.sqrt(0.0015) + np.sqrt(0.0195)) / 2) ** 2, 0.0195])


def test_cosine_and_sigmoid_closed_forms():
    T, s = 50, 0.008
    betas = schedule.beta_schedule("cosine", T)
    f = lambda t: np.cos((t / T + s) / (1 + s) * np.pi / 2) ** 2
    ac = np.cumprod(1 - betas)
    # Nichol & Dhariwal eq. 17 wherever the 0.999 clip is inactive (all but the last step).
    np.testing.assert_allclose(ac[:-1], f(np.arange(1, T)) / f(0), rtol=1e-10)
    assert betas[-1] == 0.999 and betas.max() == 0.999
    sig = schedule.beta_schedule("sigmoid", 11, beta_start=0.1, beta_end=0.3)
    np.testing.assert_allclose(sig[5], 0.2, rtol=1e-12)  # sigmoid(0) = 1/2: the midpoint
    np.testing.assert_allclose(sig[0], 0.1 + 0.2 / (1 + np.exp(6)), rtol=1e-12)
    np.testing.assert_allclose(sig + sig[::-1], 0.4, rtol=1e-12)  # sigmoid(-x) = 1 - sigmoid(x)


@pytest.mark.parametrize("name", schedule.SCHEDULES)
def test_schedule_tables_match_float64_definitions(name):
    sched = schedule.make_schedule(name, 300)
    betas = schedule.beta_schedule(name, 300)
    ac = np.cumprod(1 - betas)
    ac_prev = np.append(1.0, ac[:-1])
    assert sched.num_steps == 300
    for field in sched.__dataclass_fields__:
        assert getattr(sched, field).dtype == jnp.float32 and getattr(sched, field).shape == (300,)
    expected = {
        "betas": betas,
        "alphas": 1 - betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - ac),
        "log_snr": np.log(ac / (1 - ac)),
        "posterior_variance": betas * (1 - ac_prev) / (1 - ac),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1 - ac),
        "posterior_mean_coef2": (1 - ac_prev) * np.sqrt(1 - betas) / (1 - ac),
    }
    for field, value in expected.items():
        np.testing.assert_allclose(np.asarray(getattr(sched, field)), value, rtol=2e-6, atol=1e-30, err_msg=field)
    pv = expected["posterior_variance"]
    assert pv[0] == 0
    np.testing.assert_allclose(
        np.asarray(sched.posterior_log_variance_clipped), np.log(np.append(pv[1], pv[1:])), rtol=1e-5
    )


@pytest.mark.parametrize("name", schedule.SCHEDULES)
def test_q_sample_equals_iterated_markov_chain(name):
    """x_t from q_sample vs x_t from t+1 steps of x_s = √(1-β_s) x_{s-1} + √β_s z (float64 numpy).

    n = 20000 draws each: the two-sample mean difference must be within 5 standard errors
    √(2(1-ᾱ)/n); the variance difference within 5 standard errors (1-ᾱ)·√(2·2/(n-1)) (Gaussian
    sample variances); the chain's residuals standardized with the schedule's ᾱ_t must pass a
    Kolmogorov-Smirnov test against N(0, 1) at p > 1e-3.
    """
    n, x0, T = 20000, 0.8, 1000
    sched = schedule.make_schedule(name, T)
    betas = schedule.beta_schedule(name, T)
    check_at = (0, 9, 99, 499, 999)
    rng = np.random.default_rng(sorted(schedule.SCHEDULES).index(name))
    x, chain = np.full(n, x0), {}
    for s in range(T):
        x = np.sqrt(1 - betas[s]) * x + np.sqrt(betas[s]) * rng.standard_normal(n)
        if s in check_at:
            chain[s] = x
    t = np.array(check_at, np.int32).repeat(n)
    noise = jax.random.normal(jax.random.key(len(name)), (t.size,))
    closed = np.asarray(forward.q_sample(sched, jnp.full((t.size,), x0), t, noise)).reshape(len(check_at), n)
    for row, s in enumerate(check_at):
        a, var = float(sched.sqrt_alphas_cumprod[s]), float(sched.sqrt_one_minus_alphas_cumprod[s]) ** 2
        assert abs(chain[s].mean() - closed[row].mean()) < 5 * np.sqrt(2 * var / n), (name, s)
        assert abs(chain[s].var() - closed[row].var()) < 5 * var * np.sqrt(4 / (n - 1)), (name, s)
        assert stats.kstest((chain[s] - a * x0) / np.sqrt(var), "norm").pvalue > 1e-3, (name, s)


@pytest.mark.parametrize(
    "name,beta_range,terminal_snr",
    [
        ("linear", (None, None), 4.036e-5),
        ("scaled_linear", (None, None), 4.682e-3),
        ("scaled_linear", (0.0015, 0.0195), 1.423e-4),
        ("cosine", (None, None), 2.429e-9),
        ("sigmoid", (None, None), 3.968e-5),
    ],
)
def test_terminal_distribution_is_close_to_standard_normal(name, beta_range, terminal_snr):
    """Terminal SNR(T-1) = ᾱ/(1-ᾱ) at T = 1000 (the parameters, as docs/diffusion_api.md states them, from
    float64 ᾱ; SD's scaled_linear keeps the most signal), and the terminal distribution that
    ``q_sample`` draws from, N(a x_0, s²) with a = q_sample(1, T-1, ε=0) and s = q_sample(0,
    T-1, ε=1): its KL to N(0, 1), 0.5·(a²x_0² + s² - 1 - log s²) (float64 from the float32 a
    and s), must equal the closed form 0.5·(ᾱx_0² - ᾱ - log(1-ᾱ)) within 1e-5 (relative) for
    x_0 in {-1, 0.5, 1}, with ᾱ_{T-1} = ∏(1 - β_t) from the schedule's definition written out
    here (for cosine ᾱ_{T-1} = f(T-1)/f(0)·(1 - 0.999), the last β clipped); at |x_0| = 1 it
    is 0.5·log(1 + SNR), so the stated SNR fixes it too (within 1e-3)."""
    T = 1000
    sched = schedule.make_schedule(name, T, *beta_range)
    ac = np.cumprod(1 - schedule.beta_schedule(name, T, *beta_range))[-1]
    np.testing.assert_allclose(float(forward.snr(sched, jnp.array([T - 1]))[0]), terminal_snr, rtol=1e-3)
    np.testing.assert_allclose(ac / (1 - ac), terminal_snr, rtol=1e-3)

    defaults = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012), "sigmoid": (1e-4, 0.02)}
    start, end = beta_range if beta_range[0] is not None else defaults.get(name, beta_range)
    if name == "cosine":
        f = lambda t: np.cos((t / T + 0.008) / 1.008 * np.pi / 2) ** 2
        ac_T = f(T - 1) / f(0) * (1 - 0.999)
    else:
        betas = {
            "linear": lambda: np.linspace(start, end, T),
            "scaled_linear": lambda: np.linspace(start**0.5, end**0.5, T) ** 2,
            "sigmoid": lambda: start + (end - start) / (1 + np.exp(-np.linspace(-6, 6, T))),
        }[name]()
        ac_T = np.prod(1 - betas)

    x0 = np.array([-1.0, 0.5, 1.0])
    t = jnp.full((3,), T - 1, jnp.int32)
    a = np.asarray(forward.q_sample(sched, jnp.ones(3), t, jnp.zeros(3)), np.float64)
    s = np.asarray(forward.q_sample(sched, jnp.zeros(3), t, jnp.ones(3)), np.float64)
    u = s**2 - 1
    kl = 0.5 * (a**2 * x0**2 + u - np.log1p(u))
    expected = 0.5 * (ac_T * x0**2 - ac_T - np.log1p(-ac_T))
    np.testing.assert_allclose(kl, expected, rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(kl[[0, 2]], 0.5 * np.log1p(terminal_snr), rtol=1e-3, err_msg=name)


@pytest.mark.parametrize("name", schedule.SCHEDULES)
def test_zero_terminal_snr_rescaling(name):
    """Lin et al. 2023, Alg. 1: √ᾱ is an affine map of the original with ᾱ_0 kept and ᾱ_{T-1} = 0."""
    betas = schedule.beta_schedule(name, 100)
    rescaled = schedule.rescale_zero_terminal_snr(betas)
    old, new = np.sqrt(np.cumprod(1 - betas)), np.sqrt(np.cumprod(1 - rescaled))
    assert rescaled[-1] == 1.0 and new[-1] == 0.0
    np.testing.assert_allclose(new[0], old[0], rtol=1e-12)
    np.testing.assert_allclose(new, (old - old[-1]) / (old[0] - old[-1]) * old[0], rtol=1e-9, atol=1e-15)
    sched = schedule.make_schedule(name, 100, zero_terminal_snr=True)
    assert float(sched.alphas_cumprod[-1]) == 0.0 and float(forward.snr(sched, jnp.array([99]))[0]) == 0.0
    assert np.isneginf(sched.log_snr[-1]) and np.isfinite(np.asarray(sched.log_snr[:-1])).all()
    for field in (
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
    ):
        assert np.isfinite(np.asarray(getattr(sched, field))).all(), field
    # the last step's q(x_T | x_0) is exactly N(0, 1)
    x = forward.q_sample(sched, jnp.full((3,), 5.0), jnp.array([99] * 3), jnp.array([0.1, -0.2, 0.3]))
    np.testing.assert_allclose(np.asarray(x), [0.1, -0.2, 0.3], rtol=1e-7)


def test_schedule_from_config_passes_the_beta_range_only_where_it_applies():
    dcfg = default_config().diffusion  # beta_start=0.0015, beta_end=0.0195 (LDM)
    T = dcfg.num_train_timesteps
    np.testing.assert_allclose(np.asarray(schedule_from_config(dcfg).betas)[[0, -1]], [0.0015, 0.0195], rtol=1e-6)
    dcfg.schedule = "cosine"  # the β range is ignored, not refused
    s, f = 0.008, lambda t: np.cos((t / T + s) / (1 + s) * np.pi / 2) ** 2
    ac = np.asarray(schedule_from_config(dcfg).alphas_cumprod, np.float64)
    np.testing.assert_allclose(ac[:-1], f(np.arange(1, T)) / f(0), rtol=1e-5, atol=1e-10)  # N&D eq. 17
    dcfg.update(schedule="linear", beta_start=0.0, beta_end=0.0)  # 0: the schedule's default range
    np.testing.assert_allclose(np.asarray(schedule_from_config(dcfg).betas)[[0, -1]], [1e-4, 0.02], rtol=1e-6)


def test_schedule_is_a_pytree_usable_under_jit():
    sched = schedule.make_schedule("cosine", 64)
    assert len(jax.tree.leaves(sched)) == 11
    out = jax.jit(lambda s: s.alphas_cumprod[s.num_steps - 1])(sched)
    assert float(out) == float(sched.alphas_cumprod[63])


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="'quadratic'.*linear"):
        schedule.make_schedule("quadratic")
    with pytest.raises(ValueError, match="num_steps=1 "):
        schedule.beta_schedule("linear", 1)
    with pytest.raises(ValueError, match="num_steps=10.0"):
        schedule.beta_schedule("linear", 10.0)
    with pytest.raises(ValueError, match="beta_start=0.02, beta_end=0.0001"):
        schedule.beta_schedule("linear", 10, 0.02, 1e-4)
    with pytest.raises(ValueError, match="cosine schedule takes no beta_start"):
        schedule.make_schedule("cosine", beta_start=1e-4)
    with pytest.raises(ValueError, match=r"shape \(3, 2\)"):
        schedule.rescale_zero_terminal_snr(np.full((3, 2), 0.1))
