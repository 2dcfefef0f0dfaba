"""Planted bugs in the autoencoder losses and the evaluation metrics that the tests must catch
(see run.py)."""

from run import Mutant

_AE_STEP = "tests/test_autoencoder_step.py"
_DICOM = "tests/test_builder_dicom.py::test_every_record_read_back_holds_only_known_features_and_no_identifier"
_FID = "tests/test_pretrained.py::test_inception_blocks_match_numpy_branch_by_branch"
_LPIPS = "tests/test_pretrained.py::test_lpips_matches_an_independent_numpy_vgg16"
_SSIM = "tests/test_ssim.py::test_ms_ssim_and_ssim_match_pytorch_msssim_reference_values"

MUTANTS = [
    Mutant(
        "generator_hinge_sign_flipped",
        "ldm_jax/training/autoencoder_step.py",
        "        return -jnp.mean(logits_fake)\n",
        "        return jnp.mean(logits_fake)\n",
        (_AE_STEP,),
    ),
    Mutant(
        "kl_missing_half",
        "ldm_jax/models/autoencoder.py",
        "        return 0.5 * jnp.sum(terms, axis=tuple(range(1, self.mean.ndim)))\n",
        "        return jnp.sum(terms, axis=tuple(range(1, self.mean.ndim)))\n",
        (_AE_STEP,),
    ),
    Mutant(
        "kl_missing_logvar_term",
        "ldm_jax/models/autoencoder.py",
        "        terms = jnp.square(self.mean) + jnp.exp(self.logvar) - 1.0 - self.logvar\n",
        "        terms = jnp.square(self.mean) + jnp.exp(self.logvar) - 1.0\n",
        (_AE_STEP,),
    ),
    Mutant(
        "adaptive_gan_weight_inverted",
        "ldm_jax/training/autoencoder_step.py",
        "        weight = optax.tree.norm(last_layer(grads)) / (optax.tree.norm(last_layer(g_grads)) + 1e-4)\n",
        "        weight = optax.tree.norm(last_layer(g_grads)) / (optax.tree.norm(last_layer(grads)) + 1e-4)\n",
        (_AE_STEP,),
    ),
    Mutant(
        "l1_reconstruction_mean_not_sum",
        "ldm_jax/training/autoencoder_step.py",
        "    per_example = cfg.l1_weight * jnp.sum(jnp.abs(x - recon), axis=(1, 2, 3))\n",
        "    per_example = cfg.l1_weight * jnp.mean(jnp.abs(x - recon), axis=(1, 2, 3))\n",
        (_AE_STEP,),
    ),
    Mutant(
        "ms_ssim_skips_downsampling",
        "ldm_jax/perceptual/ssim.py",
        "            x = _avg_pool2(x)\n            y = _avg_pool2(y)\n",
        "            pass\n",
        (_SSIM,),
    ),
    Mutant(
        "ms_ssim_weights_reversed",
        "ldm_jax/perceptual/ssim.py",
        "MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)\n",
        "MS_SSIM_WEIGHTS = (0.1333, 0.2363, 0.3001, 0.2856, 0.0448)\n",
        (_SSIM,),
    ),
    Mutant(
        "ms_ssim_luminance_at_every_scale",
        "ldm_jax/perceptual/ssim.py",
        "        term = full if j == scales - 1 else cs\n",
        "        term = full\n",
        (_SSIM,),
    ),
    Mutant(
        "dicom_id_is_the_relative_path",
        "ldm_jax/data/builders/mammo_dicom.py",
        '"id": key,\n                "patient": patient,\n',
        '"id": row.path,\n                "patient": patient,\n',
        (_DICOM,),
    ),
    Mutant(
        "dicom_patient_feature_carries_the_path",
        "ldm_jax/data/builders/mammo_dicom.py",
        '"id": key,\n                "patient": patient,\n',
        '"id": key,\n                "patient": f"{patient}|{row.path}",\n',
        (_DICOM,),
    ),
    Mutant(
        "fid_mixed_7c_average_pool",
        "ldm_jax/evaluation/inception.py",
        'InceptionE("max", name="Mixed_7c")',
        'InceptionE("avg", name="Mixed_7c")',
        (_FID,),
    ),
    Mutant(
        "fid_inception_a_branch_order",
        "ldm_jax/evaluation/inception.py",
        "return jnp.concatenate([b1, b5, b3, bp], axis=-1)",
        "return jnp.concatenate([b1, b3, b5, bp], axis=-1)",
        (_FID,),
    ),
    Mutant(
        "fid_inception_e_branch_order",
        "ldm_jax/evaluation/inception.py",
        "return jnp.concatenate([b1, b3, bd, bp], axis=-1)",
        "return jnp.concatenate([b1, bd, b3, bp], axis=-1)",
        (_FID,),
    ),
    Mutant(
        "fid_average_pool_counts_padding",
        "ldm_jax/evaluation/inception.py",
        "count_include_pad=False)",
        "count_include_pad=True)",
        (_FID,),
    ),
    Mutant(
        "lpips_vgg_average_pool",
        "ldm_jax/perceptual/lpips.py",
        "x = nn.max_pool(x, (2, 2), (2, 2))",
        "x = nn.avg_pool(x, (2, 2), (2, 2))",
        (_LPIPS,),
    ),
    Mutant(
        "lpips_scaling_layer_sign",
        "ldm_jax/perceptual/lpips.py",
        "(jnp.concatenate([x, y]) - SHIFT) / SCALE",
        "(jnp.concatenate([x, y]) + SHIFT) / SCALE",
        (_LPIPS,),
    ),
]
