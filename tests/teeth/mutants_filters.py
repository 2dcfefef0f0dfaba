"""Planted bugs in the dense-tissue filters, their measure and the counterfactual stage that the
tests must catch (see run.py)."""

from run import Mutant

_DETECT = "tests/test_detectability.py::test_auc_is_the_mann_whitney_probability_with_ties_counted_half"
_PAIRED = "tests/test_diffusion_step.py::test_paired_step_denoises_the_counterfactual_and_sees_the_image"
_GUIDE = "tests/test_sampling.py::test_density_only_guidance_holds_the_other_attributes_on_both_sides"
_FILTER = "tests/test_sampling.py::test_counterfactual_edit_samples_the_source_conditional_target"
_LABELS = "tests/test_filters.py::test_edits_are_told_everything_but_the_finding"
_SECTION = "tests/test_training.py::test_a_stage_section_may_change_until_that_stage_has_a_checkpoint"
_OBSERVER = "tests/test_observer.py::test_the_trained_observer_finds_the_blob_at_the_mask_and_not_the_one_beside_it"

MUTANTS = [
    Mutant(
        "auc_ties_count_nothing",
        "ldm_jax/evaluation/detectability.py",
        "+ 0.5 * (pos[:, None] == neg[None, :])",
        "+ 0.0 * (pos[:, None] == neg[None, :])",
        (_DETECT,),
    ),
    Mutant(
        "paired_step_denoises_the_image_not_its_counterfactual",
        "ldm_jax/training/counterfactual_step.py",
        'autoencoder, ae_params, batch["counterfactual"], rng.stream(key, "encode"), scale',
        'autoencoder, ae_params, batch["image"], rng.stream(key, "encode"), scale',
        (_PAIRED,),
    ),
    Mutant(
        "density_guide_nulls_everything",
        "ldm_jax/sampling/generate.py",
        "        null = labels.at[:, 0].set(null[:, 0])\n",
        "        null = null\n",
        (_GUIDE,),
    ),
    Mutant(
        "counterfactual_filter_never_sees_its_source",
        "ldm_jax/sampling/generate.py",
        "source = source_inputs(setup.unet, setup.autoencoder, batch.ae_params, batch.images, batch.scale)",
        "source = jax.tree.map(jnp.zeros_like, source_inputs(setup.unet, setup.autoencoder, batch.ae_params, "
        "batch.images, batch.scale))",
        (_FILTER,),
    ),
    Mutant(
        "edits_told_the_finding",
        "ldm_jax/evaluation/filters.py",
        'source = attributes.without(np.asarray(labels, np.int32), "finding")',
        "source = np.asarray(labels, np.int32).copy()",
        (_LABELS,),
    ),
    Mutant(
        "a_started_stage_section_stays_free",
        "ldm_jax/training/run_info.py",
        'untrained = tuple(stage for stage in STAGES if not _has_checkpoint(workdir / stage / "checkpoints"))',
        "untrained = STAGES",
        (_SECTION,),
    ),
]
MUTANTS += [
    Mutant(
        "diffedit_keeps_latents_one_level_off",
        "ldm_jax/sampling/generate.py",
        "known = (mask, path[::-1][1:])",
        "known = (mask, path[::-1][:-1])",
        ("tests/test_sampling.py::test_diffedit_moves_only_where_the_condition_acts_and_keeps_the_rest_exactly",),
    ),
    Mutant(
        "diffedit_mask_inverted",
        "ldm_jax/sampling/generate.py",
        "return (difference > MASK_THRESHOLD * peak).astype(z0.dtype)",
        "return (difference <= MASK_THRESHOLD * peak).astype(z0.dtype)",
        ("tests/test_sampling.py::test_diffedit_moves_only_where_the_condition_acts_and_keeps_the_rest_exactly",),
    ),
    Mutant(
        "known_region_ignored",
        "ldm_jax/diffusion/samplers.py",
        "            x = mask * x + (1 - mask) * x_known\n",
        "            x = x\n",
        ("tests/test_samplers.py::test_known_region_is_kept_and_the_rest_sampled_as_without_it",),
    ),
]
MUTANTS += [
    Mutant(
        "auc_compares_a_breast_with_itself",
        "ldm_jax/evaluation/detectability.py",
        "    np.fill_diagonal(c, 0.0)\n",
        "",
        ("tests/test_detectability.py::test_pairs_that_differ_by_a_hair_are_chance_with_an_interval_that_covers_it",),
    ),
]
MUTANTS += [
    Mutant(
        "lesion_weight_off_by_one",
        "ldm_jax/training/diffusion_step.py",
        "return 1.0 + (weight - 1.0) * share",
        "return 1.0 + weight * share",
        ("tests/test_diffusion_step.py::test_lesion_weight_weighs_each_latent_pixel_by_its_share_of_lesion",),
    ),
    Mutant(
        "source_pixels_folded_in_the_wrong_order",
        "ldm_jax/models/layers.py",
        "transpose(0, 1, 3, 2, 4, 5)",
        "transpose(0, 1, 3, 4, 2, 5)",
        ("tests/test_sampling.py::test_source_features_are_the_scaled_latent_and_every_pixel_on_the_latent_grid",),
    ),
    Mutant(
        "filter_trained_with_the_finding",
        "ldm_jax/training/counterfactual_step.py",
        'labels = attributes.without(batch["labels"], "finding")',
        'labels = batch["labels"]',
        (_PAIRED,),
    ),
    Mutant(
        "new_config_keys_not_defaulted",
        "ldm_jax/training/run_info.py",
        "saved = with_defaults(resolve(json.loads(saved_path.read_text())).to_dict())",
        "saved = resolve(json.loads(saved_path.read_text())).to_dict()",
        ("tests/test_training.py::test_a_key_added_after_the_run_was_saved_takes_its_default",),
    ),
    Mutant(
        "observer_reads_the_whole_crop",
        "ldm_jax/evaluation/observer.py",
        "return ring_contrast(maps, masks, 1 - masks)",
        "return ring_contrast(maps, jnp.ones_like(masks), jnp.zeros_like(masks))",
        (_OBSERVER,),
    ),
    Mutant(
        "observer_trained_without_negatives",
        "ldm_jax/evaluation/observer.py",
        "np.ones(len(crops_with)), np.zeros(len(crops_without))",
        "np.ones(len(crops_with)), np.ones(len(crops_without))",
        (_OBSERVER,),
    ),
    Mutant(
        "observer_crop_centre_transposed",
        "ldm_jax/evaluation/observer.py",
        "y, x = int(round(rows.mean())), int(round(cols.mean()))",
        "x, y = int(round(rows.mean())), int(round(cols.mean()))",
        ("tests/test_observer.py::test_lesion_crops_centre_the_mask_and_pad_with_the_background",),
    ),
]
_RANK_TERM = "tests/test_diffusion_step.py::test_ranking_term_adds_the_weighted_auc_surrogate_of_the_decoded_contrasts"
_RANK_LEARNS = "tests/test_diffusion_step.py::test_ranking_term_teaches_the_filter_to_show_the_mass"
_RANK_ROWS = "tests/test_diffusion_step.py::test_pair_rows_share_z_t_of_the_lesion_free_target_without_the_finding"
MUTANTS += [
    Mutant(
        "ranking_prefers_the_breast_without_the_mass",
        "ldm_jax/training/counterfactual_step.py",
        "ranking_loss(contrast[:, 0], contrast[:, 1], cfg.rank_temperature)",
        "ranking_loss(contrast[:, 1], contrast[:, 0], cfg.rank_temperature)",
        (_RANK_TERM, _RANK_LEARNS),
    ),
    Mutant(
        "ranking_reads_latents_not_images",
        "ldm_jax/training/counterfactual_step.py",
        'autoencoder.apply({"params": ae_params}, x0 / scale, method=autoencoder.decode)',
        'autoencoder.apply({"params": ae_params}, x0, method=autoencoder.decode)',
        (_RANK_TERM,),
    ),
    Mutant(
        "pairs_noised_apart",
        "ldm_jax/training/counterfactual_step.py",
        'noise = per_pair(jax.random.normal(rng.stream(key, "pair_noise"), (p, *z.shape[1:]), z.dtype))',
        'noise = jax.random.normal(rng.stream(key, "pair_noise"), (2 * p, *z.shape[1:]), z.dtype)',
        (_RANK_ROWS,),
    ),
    Mutant(
        "pairs_noised_from_their_own_targets",
        "ldm_jax/training/counterfactual_step.py",
        '"z_t": q_sample(schedule, without, t, noise)',
        '"z_t": q_sample(schedule, z, t, noise)',
        (_RANK_ROWS,),
    ),
    Mutant(
        "pairs_at_any_t",
        "ldm_jax/training/counterfactual_step.py",
        "first_t = int(np.ceil(cfg.rank_min_t * schedule.num_steps))",
        "first_t = 0",
        (_RANK_ROWS,),
    ),
    Mutant(
        "ring_contrast_against_the_whole_image",
        "ldm_jax/data/mass_reader.py",
        "around = (images * band).sum(axes) / jnp.maximum(band.sum(axes), 1.0)",
        "around = images.mean(axes)",
        ("tests/test_lesion_ranking.py::test_ring_contrast_is_the_tables_mass_reader",),
    ),
    Mutant(
        "resumed_stream_redraws_the_first_pairs",
        "ldm_jax/training/lesion_ranking.py",
        "        self.drawn = drawn\n",
        "        self.drawn = 0\n",
        ("tests/test_lesion_ranking.py::test_a_resumed_stream_draws_the_pairs_an_uninterrupted_one_would",),
    ),
    Mutant(
        "pair_labels_dropped_per_image",
        "ldm_jax/training/counterfactual_step.py",
        """        labels = attributes.without(pairs["labels"][:, 0], "finding")
        labels = per_pair(diffusion_step.drop_labels(rng.stream(key, "pair_labels"), labels, cfg, unet.num_classes))""",
        """        labels = attributes.without(flat(pairs["labels"]), "finding")
        labels = diffusion_step.drop_labels(rng.stream(key, "pair_labels"), labels, cfg, unet.num_classes)""",
        (
            "tests/test_diffusion_step.py::"
            "test_both_images_of_a_pair_get_one_label_pattern_at_the_default_dropout_rates",
        ),
    ),
]
