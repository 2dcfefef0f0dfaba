"""Planted bugs in training that the tests must catch (see run.py)."""

from run import Mutant

MUTANTS = [
    Mutant(
        "label_dropout_per_attribute_only",
        "ldm_jax/training/diffusion_step.py",
        "    drop = unconditional | jnp.where(single, ~kept, per_attribute)\n",
        "    drop = per_attribute\n",
        ("tests/test_training.py::test_label_dropout_trains_every_sampled_condition_pattern_at_its_stated_rate",),
    ),
    Mutant(
        "diffusion_z_t_from_other_noise",
        "ldm_jax/training/diffusion_step.py",
        '"z_t": q_sample(schedule, z, t, noise)',
        '"z_t": q_sample(schedule, z, t, jax.random.normal(rng.stream(key, "labels"), z.shape, z.dtype))',
        ("tests/test_diffusion_step.py::test_one_step_loss_is_min_snr_l2_of_eps_at_z_t_built_from_that_noise",),
    ),
    Mutant(
        "diffusion_latents_divided_by_scale",
        "ldm_jax/training/diffusion_step.py",
        "posterior.sample(key) * scale)",
        "posterior.sample(key) / scale)",
        ("tests/test_diffusion_step.py::test_one_step_loss_is_min_snr_l2_of_eps_at_z_t_built_from_that_noise",),
    ),
    Mutant(
        "latent_scale_factor_std_not_inverse",
        "ldm_jax/training/diffusion_step.py",
        "    return 1.0 / std\n",
        "    return std\n",
        ("tests/test_diffusion_step.py::test_latent_scale_factor_is_one_over_the_std_of_the_measured_latents",),
    ),
    Mutant(
        "ema_decay_warmup_off_by_one",
        "ldm_jax/training/state.py",
        "(1.0 + step) / (warmup + step)",
        "(2.0 + step) / (warmup + step)",
        ("tests/test_diffusion_step.py::test_ema_after_k_steps_follows_the_warm_up_decay_closed_form",),
    ),
    Mutant(
        "ema_decay_of_the_next_step",
        "ldm_jax/training/diffusion_step.py",
        "ema_decay(state.step, cfg.ema_decay",
        "ema_decay(state.step + 1, cfg.ema_decay",
        ("tests/test_diffusion_step.py::test_ema_after_k_steps_follows_the_warm_up_decay_closed_form",),
    ),
    Mutant(
        "accumulated_gradients_summed_not_averaged",
        "ldm_jax/training/diffusion_step.py",
        "lambda a, g: a + g / accum",
        "lambda a, g: a + g",
        ("tests/test_diffusion_step.py::test_accumulating_two_micro_batches_equals_the_large_batch",),
    ),
    Mutant(
        "accumulated_loss_summed_not_averaged",
        "ldm_jax/training/diffusion_step.py",
        "loss = loss + micro_loss / accum",
        "loss = loss + micro_loss",
        ("tests/test_diffusion_step.py::test_accumulating_two_micro_batches_equals_the_large_batch",),
    ),
    Mutant(
        "learning_rate_warmup_off",
        "ldm_jax/training/state.py",
        "        [warmup],\n",
        "        [0],\n",
        ("tests/test_diffusion_step.py::test_learning_rate_warms_up_linearly_then_follows_its_schedule",),
    ),
    Mutant(
        "resume_restores_nothing",
        "ldm_jax/training/loop.py",
        "    if restored is None:\n",
        "    if True:  # the checkpoint is ignored\n",
        ("tests/test_training.py::test_preempted_and_resumed_run_equals_uninterrupted",),
    ),
    Mutant(
        "resume_rewinds_the_data_iterator",
        "ldm_jax/training/loop.py",
        "None if cfg.data.reset_iterator else pipeline",
        "None",
        ("tests/test_training.py::test_preempted_and_resumed_run_equals_uninterrupted",),
    ),
    # the stem's evidence map ranked without its gradient: the term trains nothing
    Mutant(
        "map_ranking_without_gradient",
        "ldm_jax/training/lesion_ranking.py",
        'maps = sown["intermediates"]["source_stem"]["source_map"][0][-len(lesion) :]',
        'maps = jax.lax.stop_gradient(sown["intermediates"]["source_stem"]["source_map"][0][-len(lesion) :])',
        ("tests/test_diffusion_step.py::test_map_ranking_term_teaches_the_stem_to_find_the_mass",),
    ),
    # the map read on the batch's first rows instead of the pairs' (the last 2P)
    Mutant(
        "map_ranking_reads_the_batch_rows",
        "ldm_jax/training/lesion_ranking.py",
        '["source_map"][0][-len(lesion) :]',
        '["source_map"][0][: len(lesion)]',
        ("tests/test_diffusion_step.py::test_map_ranking_term_adds_the_surrogate_of_the_stems_evidence_map",),
    ),
    # the stem's features folded with rows and columns swapped
    Mutant(
        "pixel_stem_folds_transposed",
        "ldm_jax/models/source_stem.py",
        "blocks = latent_blocks(x, h)\n",
        "blocks = latent_blocks(x, h).transpose(0, 2, 1, 3, 4, 5)\n",
        ("tests/test_source_stem.py::test_a_pixel_reaches_only_the_cells_around_it",),
    ),
    Mutant(
        "pair_timesteps_from_the_batchs_stream",
        "ldm_jax/training/counterfactual_step.py",
        'rng.stream(key, "pair_timesteps")',
        'rng.stream(key, "timesteps")',
        ("tests/test_rng.py::test_every_key_a_run_draws_is_drawn_once_for_one_purpose",),
    ),
]
