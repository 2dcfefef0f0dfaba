"""ldm_jax: latent diffusion for mammography in JAX/Flax."""

__version__ = "0.1.0"
