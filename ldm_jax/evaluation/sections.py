"""The sections of ``evaluate`` measured on samples and held-out images (the filter table is
``filter_table``): reconstruction, generation, conditioning and the memorization audit."""

from __future__ import annotations

import os

import numpy as np

from ldm_jax.evaluation import classifier as clf
from ldm_jax.evaluation import lesions, metrics
from ldm_jax.evaluation.evaluator import Evaluator, batched, log, training_images
from ldm_jax.evaluation.inception import FID_WEIGHTS_ENV, inception_features, load_fid_inception
from ldm_jax.evaluation.options import Options


def _summary(values) -> dict:
    return {"mean": metrics.finite_mean(values), "n": int(np.size(values))}


def reconstruction(ev: Evaluator, real: dict) -> dict:
    """PSNR/SSIM/MS-SSIM of the autoencoder on held-out phantoms ``real`` (``held_out_phantoms``)
    and the fraction of microcalcification specks still detected after it."""
    recon = ev.reconstruct(real["image"])
    scores = metrics.reconstruction_metrics(real["image"], recon)
    result = {name: _summary(v) for name, v in scores.items()}
    result["calcification_specks"] = lesions.calcification_detectability(
        real["image"], recon, real["mask"], real["breast_mask"], real["labels"][:, 1]
    )
    return result


def generation(real_images, samples, real_features, fake_features, o: Options) -> dict:
    """Fréchet distance, KID and precision/recall in the classifier's feature space (and
    InceptionV3's when its weights are given); MS-SSIM diversity."""
    kid_mean, kid_std = metrics.kernel_inception_distance(
        real_features, fake_features, num_subsets=50, subset_size=min(len(samples), len(real_features))
    )
    out = {
        "phantom_classifier_features": {
            "frechet_distance": metrics.frechet_distance(real_features, fake_features),
            "kid_mean": kid_mean,
            "kid_std": kid_std,
            **metrics.precision_recall(real_features, fake_features),
        },
        "ms_ssim_diversity": {
            "samples": metrics.ms_ssim_diversity(samples, num_pairs=256),
            "held_out_real": metrics.ms_ssim_diversity(real_images, num_pairs=256),
        },
    }
    if o.inception_weights or os.environ.get(FID_WEIGHTS_ENV):
        module, variables = load_fid_inception(o.inception_weights or None)
        ri, fi = (batched(lambda x: inception_features(module, variables, x), (a,), 8) for a in (real_images, samples))
        out["inception_features"] = {"frechet_distance": metrics.frechet_distance(ri, fi)}
    else:
        note = (
            "skipped: give --inception-weights (or $LDM_JAX_FID_WEIGHTS) pointing to the standard FID file "
            "pt_inception-2015-12-05-6726825d.pth for literature-comparable numbers; nothing is downloaded"
        )
        log(f"InceptionV3 features {note}")
        out["inception_features"] = note
    return out


def conditioning(params, config, samples, targets) -> dict:
    """The classifier's per-attribute accuracy and confusion matrices on ``samples`` generated under
    ``targets`` labels."""
    predicted = clf.predict(params, config, samples)["labels"]
    return {
        "accuracy": clf.conditioning_accuracy(predicted, targets),
        "confusion": {k: v.tolist() for k, v in clf.confusion_matrices(predicted, targets).items()},
    }


def memorization(ev: Evaluator, samples, fake_features, params, config) -> tuple[dict, list]:
    """Each sample's nearest training image by feature distance and by MS-SSIM; the closest pairs."""
    o = ev.options
    train = training_images(ev.model, ev.workdir, o.train_images)
    index, distance = metrics.nearest_neighbours(fake_features, clf.features(params, config, train))
    ms_index, ms_score = metrics.nearest_by_ms_ssim(samples, train)
    result = {
        "training_images_searched": len(train),
        "ms_ssim_threshold": o.copy_threshold,
        "fraction_above_threshold": metrics.fraction_above(ms_score, o.copy_threshold),
        "nearest_ms_ssim": {"max": float(ms_score.max()), "mean": float(ms_score.mean())},
        "nearest_feature_distance": {"min": float(distance.min()), "mean": float(distance.mean())},
        "feature_and_ms_ssim_agree": float(np.mean(index == ms_index)),
    }
    rows = [
        {
            "caption": f"memorization: sample {i} and its nearest training image (MS-SSIM {ms_score[i]:.3f})",
            "images": [("sample", samples[i]), ("nearest training image", train[ms_index[i]])],
        }
        for i in np.argsort(-ms_score)[:4]
    ]
    return result, rows
