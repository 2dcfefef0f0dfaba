"""ldm_jax.data.builders."""
