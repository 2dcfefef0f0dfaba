"""ldm_jax.diffusion: the diffusion core, plain functions over a precomputed ``Schedule``.

- ``schedule``: beta schedules (linear, scaled_linear, cosine, sigmoid; zero terminal SNR)
  precomputed into the ``Schedule`` pytree.
- ``forward``: q(x_t | x_0) (``q_sample``), the posterior q(x_{t-1} | x_t, x_0), SNR and the
  ε / x0 / v conversions.
- ``losses``: the denoising loss for ε / x0 / v targets, uniform or min-SNR-γ weighted, L2 / L1,
  with masks.
- ``samplers``: DDPM, DDIM, DPM-Solver++(2M) and (3M) as one step function each, run by one
  ``lax.scan`` driver from a registry (``SAMPLERS``) with one ``SamplerConfig``; classifier-free
  guidance, SDEdit starts and DDIM inversion.
- ``toy``: a Gaussian mixture with its exact denoiser (ground truth for tests and demos).
"""
