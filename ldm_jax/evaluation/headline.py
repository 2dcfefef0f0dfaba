"""The few numbers that say whether a phantom run went as it should (``evaluate.py --headline``).

``headline(workdir, options)`` measures, in about a minute on a CPU:

- ``reconstruction_psnr``: the autoencoder's mean PSNR (dB) on ``options.held_out`` held-out
  phantoms (the same images and metric as ``evaluate.py``'s reconstruction section);
- ``grey_by_density``: the mean grey level (0–255, whole image) of ``options.num`` samples
  generated for ``density=X`` alone (``options.guidance``, ``options.steps``), per class, beside
  that of the held-out phantoms of the class and of their reconstructions — it should rise
  from A to D;
- ``density_accuracy``: the phantom classifier's density accuracy on those samples (the
  ``conditioning`` section of ``evaluate.py``), and ``reconstruction_density_accuracy``, its
  accuracy on the reconstructions of the held-out phantoms: the ceiling the autoencoder sets
  for the samples (a sample is a decoded latent). Only when a classifier file exists
  (``--classifier`` or ``<out>/phantom_classifier.msgpack``); training one takes minutes, so
  it is not done here.

README's demo table gives these numbers as a mean and range over seeds.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from ldm_jax import attributes
from ldm_jax.storage import write_atomic
from ldm_jax.evaluation import classifier as clf
from ldm_jax.evaluation import metrics
from ldm_jax.evaluation.evaluator import DENSITY_CONDITIONS, Evaluator, held_out_phantoms
from ldm_jax.evaluation.options import Options
from ldm_jax.sampling.grid import to_pixels

DENSITIES = attributes.ATTRIBUTES["density"]


def mean_grey_by_density(images: np.ndarray, density: np.ndarray) -> list[float]:
    """Mean 8-bit grey level of ``images [N, H, W, 1]`` (model range) per density class A–D
    (nan for a class with no image)."""
    pixels = to_pixels(images, 255, np.uint8).astype(np.float64)
    return [float(pixels[density == k].mean()) if np.any(density == k) else float("nan") for k in range(len(DENSITIES))]


def headline(workdir, options: Options = Options(), out=None) -> dict:
    """Measure the headline numbers of a phantom run and write ``<out>/headline.json``."""
    out = pathlib.Path(out or pathlib.Path(workdir) / "eval")
    out.mkdir(parents=True, exist_ok=True)
    ev = Evaluator(workdir, options, out)
    if not ev.phantoms:
        raise ValueError(
            f"the headline numbers are measured on phantoms; this run trained on {ev.model.config.data.dataset!r}"
        )
    real = held_out_phantoms(options.held_out, ev.model.image_size)
    recon = ev.reconstruct(real["image"])
    samples, targets = ev.samples(list(DENSITY_CONDITIONS))
    result = {
        "checkpoint_step": ev.model.step,
        "autoencoder_step": ev.model.autoencoder_step,
        "reconstruction_psnr": float(np.mean(metrics.psnr(real["image"], recon, np.ptp(metrics.MODEL_RANGE)))),
        "grey_by_density": {
            "samples": mean_grey_by_density(samples, targets[:, 0]),
            "held_out": mean_grey_by_density(real["image"], real["labels"][:, 0]),
            "reconstructions": mean_grey_by_density(recon, real["labels"][:, 0]),
        },
        "samples_per_density": options.num // len(DENSITIES),
        "guidance": options.guidance,
        "steps": options.steps,
    }
    if ev.classifier_file.exists():
        params, config = ev.classifier()
        predicted = clf.predict(params, config, samples)["labels"]
        result["density_accuracy"] = clf.conditioning_accuracy(predicted, targets)["density"]
        predicted = clf.predict(params, config, recon)["labels"]
        result["reconstruction_density_accuracy"] = clf.conditioning_accuracy(predicted, real["labels"])["density"]
    write_atomic(out / "headline.json", (json.dumps(result, indent=2) + "\n").encode())
    return result


def format_headline(result: dict) -> str:
    """The headline numbers as a few lines for the terminal."""
    grey = result["grey_by_density"]
    lines = [
        f"held-out reconstruction PSNR  {result['reconstruction_psnr']:.1f} dB",
        "mean grey of density=A/B/C/D samples  "
        + " / ".join(f"{g:.1f}" for g in grey["samples"])
        + "   (held-out phantoms "
        + " / ".join(f"{g:.1f}" for g in grey["held_out"])
        + ", their reconstructions "
        + " / ".join(f"{g:.1f}" for g in grey["reconstructions"])
        + ")",
    ]
    if "density_accuracy" in result:
        lines.append(
            f"density accuracy of those samples  {100 * result['density_accuracy']:.0f}%   (of the "
            f"reconstructions: {100 * result['reconstruction_density_accuracy']:.0f}%)"
        )
    return "\n".join(lines)
