"""Real mammograms: a `mammo_dicom` data set built by hand at 256×256 (see docs/data.md).

    python -m ldm_jax.data.build --dataset mammo_dicom --config 256 --data-dir DATA \\
        --dicom-dir /path/to/vindr/images --labels breast-level_annotations.csv
    python train.py --config configs/mammo256.py --workdir runs/mammo256 --config.data.data_dir=DATA
"""

from ldm_jax.training.config import default_config


def get_config():
    cfg = default_config()
    cfg.model = "mammo256"
    cfg.compute_dtype = "bfloat16"
    cfg.data.update(dict(dataset="mammo_dicom", config="256", build_if_missing=False, worker_count=4))
    cfg.autoencoder.update(dict(steps=100000, batch_size=16, learning_rate=4.5e-6 * 16, gan_start=50001))
    cfg.diffusion.update(dict(steps=300000, batch_size=64, learning_rate=1e-4, warmup_steps=5000))
    cfg.checkpoint.every = 5000
    cfg.log.update(dict(every=100, sample_every=10000))
    return cfg
