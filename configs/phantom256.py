"""One accelerator: 256×256 phantoms with the mammo256 networks (f = 4 → 64×64×4 latents), bfloat16."""

from ldm_jax.training.config import default_config


def get_config():
    cfg = default_config()
    cfg.model = "mammo256"
    cfg.compute_dtype = "bfloat16"
    cfg.data.config = "256"
    cfg.autoencoder.update(dict(steps=50000, batch_size=16, learning_rate=4.5e-6 * 16, gan_start=25000))
    cfg.diffusion.update(dict(steps=150000, batch_size=64, learning_rate=1e-4, warmup_steps=2000))
    cfg.checkpoint.every = 5000
    cfg.log.update(dict(every=100, sample_every=10000))
    return cfg
