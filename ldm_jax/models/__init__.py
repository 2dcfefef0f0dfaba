"""Networks (Flax Linen, NHWC, float32 params with a configurable compute dtype).

- ``layers``: shared blocks (ResBlock, attention via ``jax.nn.dot_product_attention``,
  spatial transformer, up/down-sampling, timestep embedding).
- ``unet``: the conditional UNet ε_θ(x_t, t, labels, context, extra) (LDM openaimodel layout).
- ``autoencoder``: the KL autoencoder (``AutoencoderKL``) and its ``DiagonalGaussian`` posterior.
- ``discriminator``: the PatchGAN discriminator for the autoencoder's adversarial loss.
- ``presets``: named architecture shapes (``phantom_tiny``, ``mammo256``, ``ldm64``, ``sd15``)
  and the builders that turn them into modules.
- ``architecture``: a run config's networks and image size: its preset, with the fields the
  config sets (``unet``, ``autoencoder_net``, ``discriminator_net``).
- ``init``: fresh parameter trees (``init_unet_params``, ``init_autoencoder_params``).
"""
