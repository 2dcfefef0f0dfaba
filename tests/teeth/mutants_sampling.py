"""Planted bugs in the samplers, the schedules and the sampling job that the tests must catch
(see run.py)."""

from run import Mutant

MUTANTS = [
    Mutant(
        "sampling_job_rewrites_existing_files",
        "ldm_jax/sampling/job.py",
        "    todo = _agreed([i for i in mine if not job.path(i).exists()], job.num)\n",
        "    todo = _agreed(list(mine), job.num)\n",
        ("tests/test_sampling.py::test_shards_and_resume_reproduce_the_unsharded_job",),
    ),
]

_NEXT_LEVELS = "    levels = _levels(schedule, ts, np.append(ts[1:], -1))\n"
# a sub-grid step t -> s taken as one training step t -> t-1 (DDPM's β_t where β_{t|s} belongs):
# the levels of s read one step below t instead of at the next grid timestep (right on the full grid only)
_NEXT_LEVELS_ONE_STEP = "    levels = _levels(schedule, ts, ts - 1)\n"
_SUBGRID_MIXTURE = (
    "tests/test_samplers.py::test_reverse_process_with_exact_denoiser_recovers_the_mixture"
    "[ddpm-50-0.0-leading-False-eps-16384-0.1-0.1]"
)
_TERMINAL = "tests/test_schedule.py::test_terminal_distribution_is_close_to_standard_normal"

MUTANTS += [
    Mutant(
        "ddpm_subgrid_beta", "ldm_jax/diffusion/samplers.py", _NEXT_LEVELS, _NEXT_LEVELS_ONE_STEP, (_SUBGRID_MIXTURE,)
    ),
    Mutant(
        "ddpm_subgrid_beta_step",
        "ldm_jax/diffusion/samplers.py",
        _NEXT_LEVELS,
        _NEXT_LEVELS_ONE_STEP,
        ("tests/test_samplers.py::test_subgrid_step_is_the_closed_form_transition[ddpm-0.0]",),
    ),
    Mutant(
        "ddim_eta_squared",
        "ldm_jax/diffusion/samplers.py",
        "    sigma_eta = eta * (lv.sigma_s / lv.sigma_t) * jnp.sqrt(lv.beta_ts)\n",
        "    sigma_eta = eta**2 * (lv.sigma_s / lv.sigma_t) * jnp.sqrt(lv.beta_ts)\n",
        ("tests/test_samplers.py::test_subgrid_step_is_the_closed_form_transition[ddim-0.5]",),
    ),
    # DPM-Solver++(3M) with the reference implementations' e_3/2 weight on x̂_0'': second order
    Mutant(
        "dpmpp_3m_half_second_derivative",
        "ldm_jax/diffusion/samplers.py",
        "e_3 * 2.0 * d_2)\n",
        "e_3 * d_2)\n",
        ("tests/test_samplers.py::test_dpmpp_3m_is_third_order",),
    ),
    # x̂_0' taken at the midpoint of the last two estimates (d_1 alone) in the third-order step
    Mutant(
        "dpmpp_3m_slope_at_midpoint",
        "ldm_jax/diffusion/samplers.py",
        "e_2 * (d_1 + h_1 * d_2)",
        "e_2 * d_1",
        ("tests/test_samplers.py::test_dpmpp_3m_is_third_order",),
    ),
    # off by one in the cumulative product: the mean coefficient √ᾱ taken one step early
    Mutant(
        "schedule_sqrt_alphas_cumprod_off_by_one",
        "ldm_jax/diffusion/schedule.py",
        "        sqrt_alphas_cumprod=np.sqrt(ac),\n",
        "        sqrt_alphas_cumprod=np.sqrt(ac_prev),\n",
        (_TERMINAL,),
    ),
    # q(x_t | x_0) with ᾱ for √ᾱ on x_0: the old terminal test never looked at q_sample
    Mutant(
        "q_sample_mean_without_sqrt",
        "ldm_jax/diffusion/forward.py",
        "        _coef(schedule.sqrt_alphas_cumprod, t, x0) * x0 + _coef(",
        "        _coef(schedule.alphas_cumprod, t, x0) * x0 + _coef(",
        (_TERMINAL,),
    ),
]

_DETAIL = "tests/test_sampling.py::test_an_edit_with_its_detail_kept_moves_density_and_keeps_what_the_autoencoder_loses"
MUTANTS += [
    # the edit's change subtracted instead of added
    Mutant(
        "keep_detail_subtracts_the_edit",
        "ldm_jax/sampling/generate.py",
        "return jnp.clip(images + edited - round_trip, -1.0, 1.0)",
        "return jnp.clip(images - edited + round_trip, -1.0, 1.0)",
        (_DETAIL,),
    ),
    # the residual taken against the edited latent's decode: x itself comes back, the edit is lost
    Mutant(
        "keep_detail_against_the_edit",
        "ldm_jax/sampling/generate.py",
        "return keep_detail(images, out, decode(autoencoder, ae_params, z0, scale)) if detail else out",
        "return keep_detail(images, out, out) if detail else out",
        (_DETAIL,),
    ),
]
