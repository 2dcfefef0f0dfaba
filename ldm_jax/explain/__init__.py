"""The explainer page: latent diffusion on mammograms, with figures computed by ldm_jax."""
