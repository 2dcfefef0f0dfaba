"""CPU demo: 64×64 phantoms, tiny autoencoder (f = 4 → 16×16×4 latents) and UNet; README gives its time and numbers."""

from ldm_jax.training.config import default_config


def get_config():
    cfg = default_config()
    cfg.model = "phantom_tiny"
    cfg.data.config = "64"
    cfg.data.num_records = 4096
    # L1 alone (ssim_weight 0): SSIM's gradient is large in the black background, where its local
    # means are near 0, and made the outcome swing with the seed. Cosine decay after a short warm-up,
    # and batch 8 for twice the updates over the same images. gan_start beyond the last step: no GAN
    # term in the demo. Alternatives and their scores: docs/decisions.md.
    cfg.autoencoder.update(
        dict(
            steps=900,
            batch_size=8,
            learning_rate=1e-3,
            lr_schedule="cosine",
            warmup_steps=20,
            ssim_weight=0.0,
            gan_start=100000,
            b1=0.9,
            b2=0.99,
        )
    )
    # Batch 16: more, smaller updates separate the density classes better than fewer, larger ones
    # (docs/decisions.md). scale_factor_batches: batches whose latents set the latent scale factor.
    cfg.diffusion.update(
        dict(
            steps=1100,
            batch_size=16,
            learning_rate=2e-3,
            warmup_steps=50,
            lr_schedule="cosine",
            ema_decay=0.995,
            scale_factor_batches=4,
        )
    )
    cfg.checkpoint.every = 200
    # Grids per density with the other attributes given: full label rows are the pattern the
    # model is trained on most (46% of rows; docs/sampling.md, "Which conditions are trained").
    cfg.log.update(
        dict(
            every=20,
            sample_every=0,
            sample_count=8,
            sample_steps=25,
            sample_conditions=";".join(f"density={d},finding=none,view=CC,laterality=L" for d in "ABCD"),
        )
    )
    return cfg
