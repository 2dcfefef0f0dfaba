"""``evaluate(workdir, options)``: every metric of a trained run, and its HTML report.

Sections (each recorded in ``eval/metrics.json``):

- ``reconstruction``: PSNR/SSIM/MS-SSIM of the autoencoder on held-out images; on
  phantoms, the fraction of microcalcification specks still detected after it.
- ``generation``: Fréchet distance, KID and precision/recall of samples against held-out
  images in the phantom classifier's feature space (and InceptionV3's when its weights
  file is given); MS-SSIM diversity of samples and of real images.
- ``conditioning``: the classifier's per-attribute accuracy and confusion matrices on
  samples generated per density class.
- ``dense_tissue_filters`` (phantoms): dense held-out phantoms in same-seed pairs with and
  without a lesion, through every filter (the unedited image, the fat-only truth, a
  threshold filter, the model's edits to density A swept over method, strength and guidance):
  lesion detectability with 95% intervals, similarity to the truth, lesions kept and density
  after filtering (``filters``).
- ``memorization``: each sample's nearest training image by feature distance and by
  MS-SSIM; the fraction above the MS-SSIM threshold and the closest pairs.

Held-out phantoms are the ``mammo_phantoms`` test split's seeds, generated again with
their masks and counterfactuals; training images come from the run's own data source. The
sections live in ``sections`` and ``filter_table``, the options in ``options``, the model and its
jitted functions in ``evaluator``, the files written in ``outputs``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time

import numpy as np

from ldm_jax.evaluation import classifier as clf
from ldm_jax.evaluation import filter_table, outputs, sections
from ldm_jax.evaluation.evaluator import DENSITY_CONDITIONS, Evaluator, held_out_phantoms, log
from ldm_jax.evaluation.options import Options, chosen_sections, edit_filters
from ldm_jax.evaluation.process import trajectory_frames
from ldm_jax.sampling.grid import make_grid, to_pixels


def evaluate(workdir, options: Options = Options(), out=None) -> dict:
    """Run the chosen sections, write ``<out>/metrics.json`` and ``<out>/report.html``; return the metrics."""
    start = time.perf_counter()
    chosen = chosen_sections(options)
    edit_filters(options)  # bad flags fail before anything is computed
    out = pathlib.Path(out or pathlib.Path(workdir) / "eval")
    out.mkdir(parents=True, exist_ok=True)
    ev = Evaluator(workdir, options, out)
    model, o = ev.model, options
    results: dict = {
        "checkpoint_step": model.step,
        "autoencoder_step": model.autoencoder_step,
        "options": dataclasses.asdict(o),
    }
    html: dict = {"title": f"ldm_jax evaluation: {pathlib.Path(workdir).name} (step {model.step})", "editing": []}

    if not ev.phantoms:
        raise ValueError(
            f"evaluate.py grounds its checks on phantoms; this run trained on {model.config.data.dataset!r}"
        )
    real = held_out_phantoms(o.held_out, model.image_size)
    if "reconstruction" in chosen:
        log(f"{o.held_out} held-out phantoms; reconstruction")
        results["reconstruction"] = sections.reconstruction(ev, real)
    if chosen != ("reconstruction",):
        _sampled_sections(ev, chosen, real, results, html)
    return outputs.finish(ev, results, html, start, real)


def _sampled_sections(ev: Evaluator, chosen, real: dict, results: dict, html: dict) -> None:
    """The sections that need the phantom classifier (and samples), into ``results`` and ``html``."""
    o = ev.options
    params, config = ev.classifier()
    results["classifier_held_out"] = clf.accuracy_report(params, config, real["image"], real["labels"])["accuracy"]
    if {"generation", "conditioning", "memorization"} & set(chosen):
        log(f"generating {o.num} samples ({o.steps} steps, guidance {o.guidance})")
        samples, targets = ev.samples(list(DENSITY_CONDITIONS))
        fake_features = clf.features(params, config, samples)
        html["sample_grids"] = {
            c: make_grid(to_pixels(samples[i :: len(DENSITY_CONDITIONS)][:16], 255, np.uint8))
            for i, c in enumerate(DENSITY_CONDITIONS)
        }
        html["trajectory"] = trajectory_frames(ev, seed=o.seed)
    if "generation" in chosen:
        real_features = clf.features(params, config, real["image"])
        results["generation"] = sections.generation(real["image"], samples, real_features, fake_features, o)
    if "conditioning" in chosen:
        results["conditioning"] = sections.conditioning(params, config, samples, targets)
    if "dense_tissue_filters" in chosen:
        log("dense-tissue filters")
        results["dense_tissue_filters"], rows, html["filter_charts"] = filter_table.dense_tissue_filters(
            ev, params, config
        )
        html["editing"] += rows
    if "memorization" in chosen:
        log("memorization audit")
        results["memorization"], rows = sections.memorization(ev, samples, fake_features, params, config)
        html["editing"] += rows
