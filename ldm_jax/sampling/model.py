"""A trained latent diffusion model loaded from a training workdir, ready to sample.

``load_model(workdir)`` reads the newest diffusion checkpoint's UNet weights (EMA by
default) and the autoencoder checkpoint that stage recorded, plus what sampling needs
from the run: config (its networks and image size as trained: ``architecture.resolve``),
latent scale factor, schedule and the training label distribution.
Only the weights are read: optimizer states and the discriminator are left on disk.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np

from ldm_jax import attributes
from ldm_jax import parallel
from ldm_jax.checkpoint.checkpointer import RETRAIN_HINT, Checkpointer, abstract_with_shardings
from ldm_jax.checkpoint.restore import autoencoder_param_shapes, load_autoencoder, schedule_from_config
from ldm_jax.diffusion.schedule import Schedule
from ldm_jax.models import architecture, presets
from ldm_jax.models.init import init_unet_params
from ldm_jax.storage import local_path


@dataclasses.dataclass(frozen=True)
class SamplingModel:
    """UNet + autoencoder with their weights, and the run facts sampling depends on.

    ``label_distribution`` is ``[K, A + 1]``: the distinct training label rows and their
    counts (last column); None for checkpoints written before it was recorded. ``stage`` is the
    training stage of the UNet (``UNET_STAGES``).
    """

    unet: Any
    autoencoder: Any
    unet_params: Any
    ae_params: Any
    scale: float
    schedule: Schedule
    config: ml_collections.ConfigDict
    step: int
    ema: bool
    autoencoder_step: int
    label_distribution: np.ndarray | None
    stage: str = "diffusion"

    @property
    def prediction(self) -> str:
        return self.config[self.stage].prediction

    @property
    def image_size(self) -> int:
        """The side of the images the run trained on."""
        return int(self.config.data.image_size)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return architecture.latent_shape(self.config)


UNET_STAGES = ("diffusion", "counterfactual")


def _unet(cfg, stage: str):
    """``(UNet, its parameters' ShapeDtypeStructs)`` of stage ``stage`` of resolved config ``cfg``."""
    unet = presets.build_unet(architecture.stage_unet(cfg, stage), dtype=jax.numpy.dtype(cfg.compute_dtype))
    latent = (1, *architecture.latent_shape(cfg))
    key, num_attributes = jax.random.PRNGKey(0), len(attributes.ATTRIBUTES)
    extra = architecture.source_channels(cfg) if stage == "counterfactual" else 0
    image = architecture.image_shape(cfg)
    return unet, jax.eval_shape(lambda: init_unet_params(key, unet, latent, num_attributes, extra, image))


def abstract_model(cfg, stage: str = "diffusion") -> SamplingModel:
    """The model ``load_model`` would give for a run of resolved config ``cfg``, with
    ``ShapeDtypeStruct``s for its weights: what ``bench.py --target`` compiles sampling for."""
    unet, unet_params = _unet(cfg, stage)
    return SamplingModel(
        unet=unet,
        autoencoder=presets.build_autoencoder(cfg.autoencoder_net, dtype=jax.numpy.dtype(cfg.compute_dtype)),
        unet_params=unet_params,
        ae_params=autoencoder_param_shapes(cfg),
        scale=1.0,
        schedule=schedule_from_config(cfg[stage]),
        config=cfg,
        step=0,
        ema=True,
        autoencoder_step=0,
        label_distribution=None,
        stage=stage,
    )


def load_model(workdir, *, ema: bool = True, mesh=None, stage: str = "diffusion") -> SamplingModel:
    """The newest checkpoint of ``workdir``'s UNet ``stage`` (see the module docstring): the
    ``diffusion`` model, or the ``counterfactual`` filter, whose UNet also takes the source
    image (``generate.source_denoiser``).

    Raises ``FileNotFoundError`` when the workdir has no complete checkpoint of that stage.
    """
    if stage not in UNET_STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {UNET_STAGES}")
    workdir = local_path(workdir, "workdir")
    mesh = mesh if mesh is not None else parallel.make_mesh(1)
    directory = workdir / stage / "checkpoints"
    hint = f"train the {stage} stage first (train.py --workdir {workdir}" + (
        ", with --config.stages including counterfactual)" if stage == "counterfactual" else ")"
    )
    if not directory.is_dir():
        raise FileNotFoundError(f"{workdir} has no {stage} checkpoints ({directory} is missing): {hint}")
    checkpointer = Checkpointer(directory, async_save=False)
    try:
        step = checkpointer.latest_step()
        if step is None:
            raise FileNotFoundError(f"no complete {stage} checkpoint in {directory}: {hint}")
        checkpointer.verify(step, RETRAIN_HINT)
        meta = checkpointer.restore_meta(step)
        cfg = architecture.resolve(meta["config"])
        unet, abstract = _unet(cfg, stage)
        field = "ema_params" if ema else "params"
        tree = {field: {"unet": abstract_with_shardings(abstract, parallel.param_sharding(mesh, abstract))}}
        unet_params = checkpointer.restore_subtree(step, tree)[field]["unet"]
    finally:
        checkpointer.close()
    autoencoder, ae_params, ae_step = load_autoencoder(
        cfg, meta["autoencoder_checkpoint"], meta["autoencoder_step"], mesh
    )
    distribution = meta.get("label_distribution")
    return SamplingModel(
        unet=unet,
        autoencoder=autoencoder,
        unet_params=unet_params,
        ae_params=ae_params,
        scale=float(meta["scale_factor"]),
        schedule=schedule_from_config(cfg[stage]),
        config=cfg,
        step=int(step),
        ema=ema,
        autoencoder_step=int(ae_step),
        label_distribution=None if distribution is None else np.asarray(distribution, np.int64),
        stage=stage,
    )
