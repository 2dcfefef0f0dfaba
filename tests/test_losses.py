import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax.diffusion import forward, losses, schedule


@pytest.fixture(scope="module")
def setup():
    sched = schedule.make_schedule("linear", 100, zero_terminal_snr=True)
    k1, k2 = jax.random.split(jax.random.key(0))
    x0 = jax.random.normal(k1, (4, 3, 2, 1))
    noise = jax.random.normal(k2, (4, 3, 2, 1))
    t = jnp.array([0, 20, 70, 99])
    return sched, x0, noise, t


def _targets(sched, x0, noise, t):
    return {"eps": noise, "x0": x0, "v": forward.v_target(sched, x0, t, noise)}


def test_loss_is_zero_for_a_perfect_prediction(setup):
    sched, x0, noise, t = setup
    for target, y in _targets(sched, x0, noise, t).items():
        for weighting, loss_type in [("uniform", "l2"), ("uniform", "l1"), ("min_snr", "l2")]:
            kw = dict(target=target, weighting=weighting, loss_type=loss_type)
            assert float(losses.diffusion_loss(sched, y, x0, noise, t, **kw)) == 0.0, kw
            assert float(losses.diffusion_loss(sched, y + 0.5, x0, noise, t, **kw)) > 0.0, kw


def test_uniform_l2_and_l1_closed_form(setup):
    sched, x0, noise, t = setup
    offset = jnp.array([0.5, -1.0, 2.0, 0.25])[:, None, None, None]
    l2 = losses.per_example_loss(sched, noise + offset, x0, noise, t)
    l1 = losses.per_example_loss(sched, noise + offset, x0, noise, t, loss_type="l1")
    np.testing.assert_allclose(np.asarray(l2), [0.25, 1.0, 4.0, 0.0625], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(l1), [0.5, 1.0, 2.0, 0.25], rtol=1e-6)
    np.testing.assert_allclose(float(losses.diffusion_loss(sched, noise + offset, x0, noise, t)), 5.3125 / 4, rtol=1e-6)


def test_min_snr_weight_on_x0_error_per_target(setup):
    """For one estimate x̂_0 (with ε̂, v̂ derived from it at the same x_t), the min-SNR-γ
    weighted L2 loss is min(SNR, γ)·mean‖x̂_0 - x_0‖² for ε and x0 (Hang et al. 2023) and
    min(SNR + 1, γ)·mean‖x̂_0 - x_0‖² for v:
    ‖ε̂ - ε‖² = SNR‖x̂_0 - x_0‖² and ‖v̂ - v‖² = (SNR + 1)‖x̂_0 - x_0‖²."""
    sched, x0, noise, t = setup
    t = t[:3]  # identifiable steps (SNR > 0)
    x0, noise = x0[:3], noise[:3]
    xt = forward.q_sample(sched, x0, t, noise)
    x0_hat = x0 + 0.3 * jax.random.normal(jax.random.key(5), x0.shape)
    eps_hat = forward.eps_from_x0(sched, xt, t, x0_hat)
    a = sched.sqrt_alphas_cumprod[t][:, None, None, None]
    s = sched.sqrt_one_minus_alphas_cumprod[t][:, None, None, None]
    preds = {"eps": eps_hat, "x0": x0_hat, "v": a * eps_hat - s * x0_hat}
    snr = np.asarray(forward.snr(sched, t), np.float64)
    gamma = 5.0
    assert snr.min() + 1 < gamma < snr.max()  # both sides of the clip are exercised
    x0_err = np.mean(np.asarray(x0_hat - x0, np.float64) ** 2, axis=(1, 2, 3))
    for target, pred in preds.items():
        got = losses.per_example_loss(
            sched, pred, x0, noise, t, target=target, weighting="min_snr", min_snr_gamma=gamma
        )
        expected = np.minimum(snr + (target == "v"), gamma) * x0_err
        np.testing.assert_allclose(np.asarray(got), expected, rtol=2e-3, err_msg=target)


def test_snr_weights_at_zero_terminal_snr_are_finite(setup):
    sched, _, _, t = setup
    w = {
        target: np.asarray(losses.snr_weight(sched, t, target=target, weighting="min_snr"))
        for target in forward.PREDICTIONS
    }
    assert all(np.isfinite(v).all() for v in w.values())
    assert w["eps"][-1] == 1.0 and w["x0"][-1] == 0.0 and w["v"][-1] == 1.0  # the SNR -> 0 limits
    assert w["eps"][0] == pytest.approx(5.0 / float(forward.snr(sched, t[:1])[0]), rel=1e-6)


@pytest.mark.parametrize("gamma", [5.0, 0.5])
def test_v_min_snr_weight_trains_the_zero_terminal_snr_step(gamma):
    """v: min(SNR + 1, γ)/(SNR + 1), against SNR from the float64 betas; at SNR = 0 exactly
    min(1, γ) (Hang et al.'s min(SNR, γ)/(SNR + 1) would be 0 there)."""
    betas = schedule.rescale_zero_terminal_snr(schedule.beta_schedule("scaled_linear", 1000, 0.0015, 0.0195))
    sched = schedule.make_schedule("scaled_linear", 1000, 0.0015, 0.0195, zero_terminal_snr=True)
    t = np.array([0, 60, 110, 111, 500, 949, 998, 999])
    ac = np.cumprod(1.0 - betas)[t]
    snr = ac / (1.0 - ac)
    assert snr[-1] == 0 and snr[0] + 1 > gamma  # the terminal step and a capped one (γ = 5: uncapped ones too)
    w = np.asarray(losses.snr_weight(sched, jnp.asarray(t), target="v", weighting="min_snr", min_snr_gamma=gamma))
    np.testing.assert_allclose(w, np.minimum(snr + 1, gamma) / (snr + 1), rtol=2e-5)
    assert w[-1] == min(1.0, gamma)


def test_masks_give_the_masked_mean(setup):
    sched, x0, noise, t = setup
    pred = noise + jax.random.normal(jax.random.key(1), noise.shape)
    err = np.asarray(pred - noise, np.float64) ** 2
    # per-example weights [B]
    w = jnp.array([1.0, 0.0, 2.0, 1.0])
    expected = np.sum(np.asarray(w)[:, None] * err.reshape(4, -1)) / (np.sum(w) * 6)
    np.testing.assert_allclose(float(losses.diffusion_loss(sched, pred, x0, noise, t, mask=w)), expected, rtol=1e-5)
    # per-pixel mask [B, H, W, 1]: the mean over the unmasked pixels of the whole batch
    m = (jax.random.uniform(jax.random.key(2), (4, 3, 2, 1)) > 0.5).astype(jnp.float32).at[1].set(0.0)
    mnp = np.asarray(m, bool)
    np.testing.assert_allclose(
        float(losses.diffusion_loss(sched, pred, x0, noise, t, mask=m)), err[mnp].mean(), rtol=1e-5
    )
    per = np.asarray(losses.per_example_loss(sched, pred, x0, noise, t, mask=m))
    assert per[1] == 0.0  # fully masked example
    np.testing.assert_allclose(per[0], err[0][mnp[0]].mean(), rtol=1e-5)
    assert float(losses.diffusion_loss(sched, pred, x0, noise, t, mask=jnp.zeros(4))) == 0.0


def test_loss_is_differentiable_under_jit(setup):
    sched, x0, noise, t = setup

    @jax.jit
    def loss_and_grad(pred, t):
        return jax.value_and_grad(
            lambda p: losses.diffusion_loss(sched, p, x0, noise, t, target="v", weighting="min_snr")
        )(pred)

    pred = jnp.zeros_like(x0)
    value, grad = loss_and_grad(pred, t)
    y = forward.v_target(sched, x0, t, noise)
    w = losses.snr_weight(sched, t, target="v", weighting="min_snr")[:, None, None, None]
    np.testing.assert_allclose(np.asarray(grad), np.asarray(-2 * w * y / y.size), rtol=1e-5, atol=1e-8)
    assert np.isfinite(float(value))


def test_bad_loss_arguments(setup):
    sched, x0, noise, t = setup
    with pytest.raises(ValueError, match="unknown target 'score'"):
        losses.diffusion_loss(sched, noise, x0, noise, t, target="score")
    with pytest.raises(ValueError, match="unknown weighting 'p2'"):
        losses.diffusion_loss(sched, noise, x0, noise, t, weighting="p2")
    with pytest.raises(ValueError, match="unknown loss_type 'huber'"):
        losses.diffusion_loss(sched, noise, x0, noise, t, loss_type="huber")
    with pytest.raises(ValueError, match="weighting='min_snr' needs loss_type='l2'"):
        losses.diffusion_loss(sched, noise, x0, noise, t, weighting="min_snr", loss_type="l1")
    with pytest.raises(ValueError, match="weighting='min_snr' needs loss_type='l2'"):  # at trace time
        jax.jit(lambda p: losses.per_example_loss(sched, p, x0, noise, t, weighting="min_snr", loss_type="l1"))(x0)
    with pytest.raises(ValueError, match="min_snr_gamma=0"):
        losses.diffusion_loss(sched, noise, x0, noise, t, weighting="min_snr", min_snr_gamma=0)
    with pytest.raises(ValueError, match=r"model_output has shape \(4, 3, 2\)"):
        losses.diffusion_loss(sched, noise[..., 0], x0, noise, t)
    with pytest.raises(ValueError, match=r"mask has shape \(4, 3\)"):
        losses.diffusion_loss(sched, noise, x0, noise, t, mask=jnp.ones((4, 3)))
    with pytest.raises(ValueError, match="timestep 100 out of range"):
        losses.diffusion_loss(sched, noise, x0, noise, jnp.array([0, 1, 2, 100]))
