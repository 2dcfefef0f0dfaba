"""One accelerator: 128×128 phantoms, f = 4 autoencoder → 32×32×4 latents, bfloat16 compute."""

from ldm_jax.training.config import default_config


def get_config():
    cfg = default_config()
    cfg.model = "phantom128"
    cfg.compute_dtype = "bfloat16"
    cfg.data.config = "128"
    cfg.autoencoder.update(dict(steps=20000, batch_size=32, learning_rate=1e-4, warmup_steps=500, gan_start=10000))
    cfg.diffusion.update(dict(steps=50000, batch_size=128, learning_rate=2e-4, warmup_steps=1000, ema_decay=0.9999))
    cfg.checkpoint.every = 2500
    cfg.log.update(dict(every=100, sample_every=5000))
    return cfg
