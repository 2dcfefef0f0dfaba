"""ldm_jax.checkpoint: reading and writing what training stages leave on disk, for
training, sampling and evaluation alike.

- ``checkpointer``: Orbax checkpoints of a stage (train state, data-iterator state, metadata)
  and abstract trees with shardings to restore into.
- ``restore``: a finished stage's noise schedule, autoencoder weights and label statistics.
"""
