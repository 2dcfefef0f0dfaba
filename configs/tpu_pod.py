"""Multi-host example (TPU v5e-32 pod slice, or 4 nodes × 8 GPUs): same program on every host.

Each host runs
    python train.py --config configs/tpu_pod.py --workdir /gcs/BUCKET/runs/pod --config.data.data_dir=/gcs/BUCKET/data
with the bucket mounted at /gcs/BUCKET on every host (gcsfuse; gs:// URLs are refused),
and `jax.distributed.initialize()` finds the other hosts (TPU metadata, SLURM or Open MPI;
elsewhere set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID). Every host
reads its own shard of the array_record files; the global batch is split over all chips;
parameters and optimizer state are split over groups of 4 chips (``mesh.fsdp``).
"""

from ldm_jax.training.config import default_config


def get_config():
    cfg = default_config()
    cfg.model = "mammo256"
    cfg.compute_dtype = "bfloat16"
    cfg.mesh.fsdp = 4
    cfg.data.update(dict(dataset="mammo_dicom", config="256", build_if_missing=False, worker_count=8))
    cfg.autoencoder.update(dict(steps=60000, batch_size=128, learning_rate=4.5e-6 * 128, gan_start=30001))
    cfg.diffusion.update(dict(steps=200000, batch_size=1024, learning_rate=4e-4, warmup_steps=5000))
    cfg.checkpoint.every = 2000
    cfg.log.update(dict(every=100, sample_every=10000))
    return cfg
