"""ldm_jax.sampling."""
