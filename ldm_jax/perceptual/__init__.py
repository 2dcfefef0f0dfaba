"""ldm_jax.perceptual: image similarity measures shared by the autoencoder's loss and by
evaluation.

- ``ssim``: SSIM and MS-SSIM in JAX.
- ``lpips``: LPIPS with VGG16, from the user's local weight files.
- ``weights``: torch-free reading of ``.pth``/``.safetensors``/``.npz`` weight files into Flax
  variables (also used by evaluation's InceptionV3).
"""
