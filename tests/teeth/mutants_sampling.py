"""Planted bugs in the samplers, the schedules and the sampling job that the tests must catch
(see run.py)."""

from run import Mutant

MUTANTS = [
    Mutant("sampling_job_rewrites_existing_files", "ldm_jax/sampling/job.py",
           "    todo = _agreed([i for i in mine if not job.path(i).exists()], job.num)\n",
           "    todo = _agreed(list(mine), job.num)\n",
           ("tests/test_sampling.py::test_shards_and_resume_reproduce_the_unsharded_job",)),
]

_DDPM_STEP = ("                mean = (sa_s * ratio * x0 + (sa_t / sa_s) * so_s**2 * x) / so_t**2\n"
              "                x = mean + (so_s / so_t) * jnp.sqrt(ratio) * z\n")
# DDPM's sub-grid step with the single-step β_t where 1 - ᾱ_t/ᾱ_s belongs (right on the full grid only)
_DDPM_STEP_BETA_T = _DDPM_STEP.replace("ratio", "schedule.betas[t]")
_SUBGRID_MIXTURE = ("tests/test_samplers.py::test_reverse_process_with_exact_denoiser_recovers_the_mixture"
                    "[ddpm-50-0.0-leading-False-eps-16384-0.1-0.1]")
_TERMINAL = "tests/test_schedule.py::test_terminal_distribution_is_close_to_standard_normal"

MUTANTS += [
    Mutant("ddpm_subgrid_beta", "ldm_jax/diffusion/samplers.py", _DDPM_STEP, _DDPM_STEP_BETA_T,
           (_SUBGRID_MIXTURE,)),
    Mutant("ddpm_subgrid_beta_step", "ldm_jax/diffusion/samplers.py", _DDPM_STEP, _DDPM_STEP_BETA_T,
           ("tests/test_samplers.py::test_subgrid_step_is_the_closed_form_transition[ddpm-0.0]",)),
    Mutant("ddim_eta_squared", "ldm_jax/diffusion/samplers.py",
           "                sigma = eta * (so_s / so_t) * jnp.sqrt(ratio)\n",
           "                sigma = eta**2 * (so_s / so_t) * jnp.sqrt(ratio)\n",
           ("tests/test_samplers.py::test_subgrid_step_is_the_closed_form_transition[ddim-0.5]",)),
    # off by one in the cumulative product: the mean coefficient √ᾱ taken one step early
    Mutant("schedule_sqrt_alphas_cumprod_off_by_one", "ldm_jax/diffusion/schedule.py",
           "        sqrt_alphas_cumprod=np.sqrt(ac),\n",
           "        sqrt_alphas_cumprod=np.sqrt(ac_prev),\n",
           (_TERMINAL,)),
    # q(x_t | x_0) with ᾱ for √ᾱ on x_0: the old terminal test never looked at q_sample
    Mutant("q_sample_mean_without_sqrt", "ldm_jax/diffusion/forward.py",
           "    return (_coef(schedule.sqrt_alphas_cumprod, t, x0) * x0\n",
           "    return (_coef(schedule.alphas_cumprod, t, x0) * x0\n",
           (_TERMINAL,)),
]
