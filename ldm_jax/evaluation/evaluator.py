"""One evaluation's model, jitted functions and phantom classifier (``Evaluator``), the images it
measures on (held-out phantoms, the run's training images) and its edits (``compiled_edit``)."""

from __future__ import annotations

import functools
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax import attributes
from ldm_jax.data import lesion_pairs
from ldm_jax.data.seeds import SPLIT_SEED_OFFSET
from ldm_jax.diffusion.samplers import SamplerConfig
from ldm_jax.evaluation import classifier as clf
from ldm_jax.evaluation import filters, metrics
from ldm_jax.evaluation.options import Options
from ldm_jax.sampling.generate import EDITS, decode, encode_mode, image_keys, make_generate, model_edit
from ldm_jax.sampling.model import load_model

DENSITY_CONDITIONS = tuple(f"density={d}" for d in attributes.ATTRIBUTES["density"])


def log(message: str) -> None:
    """``message`` to stderr, marked as evaluate.py's."""
    print(f"[evaluate] {message}", file=sys.stderr, flush=True)


def batched(fn, arrays: tuple, batch: int) -> np.ndarray:
    """``fn(*chunk)`` over fixed-size chunks of ``arrays`` (the last padded), concatenated."""
    n = len(arrays[0])
    out = []
    for start in range(0, n, batch):
        chunk = [a[start : start + batch] for a in arrays]
        rows = len(chunk[0])
        out.append(np.asarray(fn(*[metrics.pad_batch(c, batch) for c in chunk]))[:rows])
    return np.concatenate(out)


def held_out_phantoms(num: int, size: int):
    """The first ``num`` phantoms of the ``mammo_phantoms`` test split, as arrays (see lesions)."""
    from ldm_jax.data.phantoms import generate_phantom

    first = SPLIT_SEED_OFFSET["test"]
    return lesion_pairs.phantom_arrays(generate_phantom(first + i, size) for i in range(num))


def training_images(model, workdir: pathlib.Path, num: int) -> np.ndarray:
    """Up to ``num`` training images ``[N, S, S, 1]`` in [-1, 1] from the run's data source."""
    from ldm_jax.data.pipeline import InputPipeline
    from ldm_jax.data.source import open_source
    from ldm_jax.parallel import make_mesh

    source = open_source(model.config, workdir)
    mesh = make_mesh(1, jax.devices()[:1])
    batch = min(num, len(source))
    pipeline = InputPipeline(
        source,
        global_batch_size=batch,
        mesh=mesh,
        shuffle=False,
        num_epochs=1,
        image_size=model.image_size,
        random_flip=False,
        read_threads=1,
        prefetch_batches=1,
    )
    return np.asarray(next(pipeline)["image"])


class Evaluator:
    """Holds the model, jitted functions and the classifier for one evaluation."""

    def __init__(self, workdir, options: Options, out: pathlib.Path):
        self.workdir, self.options, self.out = pathlib.Path(workdir), options, out
        self.model = load_model(self.workdir)
        self.phantoms = self.model.config.data.dataset == "mammo_phantoms"
        m = self.model
        self.sampling = SamplerConfig(num_steps=options.steps, prediction=m.prediction, guidance_scale=options.guidance)
        self.generate = jax.jit(make_generate(m.unet, m.autoencoder, m.schedule, m.latent_shape, self.sampling))
        ae = m.autoencoder
        self.encode = jax.jit(lambda x: encode_mode(ae, m.ae_params, x, 1.0))
        self.decode = jax.jit(lambda z: decode(ae, m.ae_params, z, 1.0))

    @functools.cached_property
    def counterfactual(self):
        """The run's supervised dense-tissue filter (stage ``counterfactual``), None if not trained."""
        trained = (self.workdir / "counterfactual" / "checkpoints").is_dir()
        return load_model(self.workdir, stage="counterfactual") if trained else None

    def reconstruct(self, images: np.ndarray, model=None) -> np.ndarray:
        """decode(encode(x)) of images ``[N, S, S, 1]`` (posterior mode) through the autoencoder of
        ``model`` (default: the run's diffusion model), in fixed-size batches."""
        if model is None or model is self.model:
            return batched(lambda x: self.decode(self.encode(x)), (images,), self.options.batch)
        ae, params = model.autoencoder, model.ae_params
        round_trip = jax.jit(lambda x: decode(ae, params, encode_mode(ae, params, x, 1.0), 1.0))
        return batched(round_trip, (images,), self.options.batch)

    def samples(self, conditions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``num`` images cycling over ``conditions``, and their labels."""
        n = self.options.num
        labels = np.stack([attributes.parse_condition(conditions[i % len(conditions)]) for i in range(n)])
        keys = np.asarray(image_keys(jax.random.PRNGKey(self.options.seed), jnp.arange(n)))
        m = self.model
        images = batched(
            lambda lab, k: self.generate(m.unet_params, m.ae_params, m.scale, lab, k),
            (labels, keys),
            self.options.batch,
        )
        return images, labels

    @property
    def classifier_file(self) -> pathlib.Path:
        """``options.classifier``, or ``<out>/phantom_classifier.msgpack``."""
        return pathlib.Path(self.options.classifier or self.out / "phantom_classifier.msgpack")

    def classifier(self):
        """``(params, config)``: loaded, or trained on phantoms at the model's size and saved."""
        path = self.classifier_file
        if path.exists():
            params, config = clf.load_classifier(path)
            if config.image_size != self.model.image_size:
                raise ValueError(
                    f"classifier {path} is for {config.image_size}px images, the model makes {self.model.image_size}px"
                )
            return params, config
        if not self.phantoms:
            raise ValueError("no phantom classifier given (--classifier) and the run is not on phantoms")
        log(f"training the phantom classifier at {self.model.image_size}px (saved to {path})")
        config = clf.ClassifierConfig(image_size=self.model.image_size)
        params = clf.train_on_phantoms(config, steps=self.options.classifier_steps)
        clf.save_classifier(path, params, config)
        return params, config

    def edit_model(self, f: filters.EditFilter):
        """The model an edit runs (``EDITS[f.method].stage``): the run's counterfactual filter, or its
        diffusion model."""
        return self.counterfactual if EDITS[f.method].stage == "counterfactual" else self.model


def compiled_edit(ev: Evaluator, f: filters.EditFilter):
    """``edit(images, source_labels, target_labels, keys) -> images`` of one filter, jitted once and
    run in fixed-size batches (the counterfactual filter runs the run's counterfactual UNet)."""
    model = ev.edit_model(f)
    sampling = SamplerConfig(num_steps=ev.options.filter_steps, prediction=model.prediction, guidance_scale=f.guidance)
    edit = jax.jit(model_edit(model, sampling, f.edit))

    def run(images, source, target, keys):
        return batched(
            lambda x, s, t, k: edit(model.unet_params, model.ae_params, model.scale, x, s, t, k),
            (images, source, target, keys),
            ev.options.batch,
        )

    return run
