"""Reading what a finished training stage left behind: schedule, weights, label statistics.

Shared by the diffusion stage (which freezes the autoencoder) and by sampling/evaluation.
"""

from __future__ import annotations

import jax
import numpy as np

from ldm_jax import parallel
from ldm_jax.checkpoint.checkpointer import RETRAIN_HINT, Checkpointer, abstract_with_shardings
from ldm_jax.diffusion.schedule import DEFAULT_BETA_RANGE, Schedule, make_schedule
from ldm_jax.models import architecture, presets
from ldm_jax.models.init import init_autoencoder_params


def schedule_from_config(dcfg) -> Schedule:
    """The diffusion stage's noise schedule, from its config section.

    ``beta_start``/``beta_end`` (0: the schedule's default) go only to schedules with a β
    range, so ``schedule=cosine`` ignores them.
    """
    betas = {}
    if dcfg.schedule in DEFAULT_BETA_RANGE:
        betas = dict(beta_start=dcfg.beta_start or None, beta_end=dcfg.beta_end or None)
    return make_schedule(dcfg.schedule, dcfg.num_train_timesteps, zero_terminal_snr=dcfg.zero_terminal_snr, **betas)


def label_distribution(label_rows: np.ndarray) -> np.ndarray:
    """``[K, A + 1]``: the distinct rows of ``label_rows [N, A]`` and how often each occurs."""
    rows, counts = np.unique(np.asarray(label_rows, np.int64), axis=0, return_counts=True)
    return np.concatenate([rows, counts[:, None]], axis=1)


def autoencoder_param_shapes(cfg):
    """``ShapeDtypeStruct``s of the autoencoder parameters of resolved run config ``cfg``."""
    autoencoder = presets.build_autoencoder(cfg.autoencoder_net)
    key = jax.random.PRNGKey(0)
    shape = (1, *architecture.image_shape(cfg))
    return jax.eval_shape(lambda: init_autoencoder_params(key, key, autoencoder, shape))


def load_autoencoder(cfg, directory, step: int | None, mesh, fsdp_min_size: int = parallel.FSDP_MIN_SIZE):
    """``(autoencoder, params, step)`` from an autoencoder checkpoint directory (newest step
    when ``step`` is None); only the autoencoder weights are read, placed on ``mesh`` by
    ``parallel.param_sharding``. ``cfg`` is a resolved run config (``architecture.resolve``)."""
    autoencoder = presets.build_autoencoder(cfg.autoencoder_net, dtype=jax.numpy.dtype(cfg.compute_dtype))
    checkpointer = Checkpointer(directory, async_save=False)
    try:
        step = checkpointer.latest_step() if step is None else step
        if step is None or step not in checkpointer.all_steps():
            raise FileNotFoundError(
                f"no complete autoencoder checkpoint{'' if step is None else f' at step {step}'} "
                f"in {directory}: run the autoencoder stage first or set "
                f"diffusion.autoencoder_checkpoint"
            )
        checkpointer.verify(step, RETRAIN_HINT)
        abstract = autoencoder_param_shapes(cfg)
        shardings = parallel.param_sharding(mesh, abstract, fsdp_min_size)
        tree = {"params": {"autoencoder": abstract_with_shardings(abstract, shardings)}}
        params = checkpointer.restore_subtree(step, tree)["params"]
    finally:
        checkpointer.close()
    return autoencoder, params["autoencoder"], step
