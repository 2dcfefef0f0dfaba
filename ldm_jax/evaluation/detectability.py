"""Known-location lesion detectability on same-seed phantom pairs: does a filter make a lesion
easier to see?

A *pair* is one phantom seed rendered twice, with a lesion and without it (``finding="none"``):
the same breast, tissue and quantum noise, differing only inside the lesion mask. A reader told
where the lesion is scores both images of a pair at the lesion's mask:

* mass: ring contrast ``mean(x | lesion) − mean(x | band around it)`` (``lesions.mass_contrast``);
* calcification cluster: the peak difference-of-Gaussians response inside the lesion (dilated by
  one pixel) in units of the image's robust noise level over the breast outside it
  (``lesions.speck_response``, ``lesions.speck_threshold`` with k = 1).

Detectability is the area under the ROC curve of those scores, the Mann–Whitney statistic

    AUC = P(s⁺ > s⁻) + ½ P(s⁺ = s⁻)

over (with-lesion, without-lesion) images of *different* seeds: a reader sees one image at a
time, so the AUC is about telling lesions from breasts, and the same-breast comparison C[i, i]
is left out. Its 95% interval is a percentile bootstrap over *pairs* (both images of a drawn
seed go in together, so the pairing's correlation is kept): with counts w_b of each pair in
resample b and C[i, j] the comparison of positive i with negative j (i ≠ j),

    AUC_b = Σ_{i≠j} w_i C[i, j] w_j / Σ_{i≠j} w_i w_j.

Leaving the diagonal out also keeps the bootstrap centred: with it, a resampled pair would be
compared with its own copy (weight Σ w_i² instead of n), which biases the interval whenever
same-breast comparisons differ from the rest, e.g. after an edit that makes the two images of
a pair nearly equal.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ldm_jax.data.lesion_pairs import KINDS
from ldm_jax.evaluation import lesions


def comparison_matrix(positives, negatives) -> np.ndarray:
    """``C[i, j] = 1[s⁺_i > s⁻_j] + ½ 1[s⁺_i = s⁻_j]``, float64 ``[n, m]``."""
    pos, neg = np.asarray(positives, np.float64), np.asarray(negatives, np.float64)
    if pos.ndim != 1 or neg.ndim != 1 or not pos.size or not neg.size:
        raise ValueError(f"need non-empty 1-D scores, got shapes {pos.shape} and {neg.shape}")
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise ValueError("scores must be finite")
    return (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])


def auc(positives, negatives) -> float:
    """Mann–Whitney AUC: P(s⁺ > s⁻) + ½ P(s⁺ = s⁻) over all positive/negative combinations."""
    return float(comparison_matrix(positives, negatives).mean())


def paired_auc(positives, negatives, *, resamples: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """AUC over different seeds of paired scores (``positives[i]`` and ``negatives[i]`` from one
    seed) with a percentile bootstrap interval over pairs (module docstring):
    ``{"auc", "low", "high", "pairs"}``."""
    c = comparison_matrix(positives, negatives)
    n = c.shape[0]
    if c.shape != (n, n) or n < 2:
        raise ValueError(f"paired scores need equal lengths >= 2, got {c.shape}")
    np.fill_diagonal(c, 0.0)
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    counts = np.zeros((resamples, n))
    np.add.at(counts, (np.arange(resamples)[:, None], draws), 1.0)
    compared = n**2 - np.sum(counts**2, axis=1)  # Σ_{i≠j} w_i w_j
    informative = compared > 0  # a resample of one pair repeated compares no two seeds (small n only)
    boot = np.einsum("bi,ij,bj->b", counts[informative], c, counts[informative]) / compared[informative]
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    return {"auc": float(c.sum() / (n * (n - 1))), "low": float(low), "high": float(high), "pairs": n}


def lesion_score(image, lesion_mask, breast_mask, kind: str) -> float:
    """The known-location reader's score of ``image`` at ``lesion_mask`` (see the module docstring)."""
    if kind == "mass":
        return lesions.mass_contrast(image, lesion_mask, breast_mask)
    if kind == "calcification":
        response = lesions.speck_response(image)
        noise = lesions.speck_threshold(response, lesion_mask, breast_mask, k=1.0)
        region = ndimage.binary_dilation(np.asarray(lesion_mask, bool))
        return float(response[region].max() / max(noise, 1e-12))
    raise ValueError(f"unknown lesion kind {kind!r}; expected one of {KINDS}")


def detectability(with_lesion, without_lesion, lesion_masks, breast_masks, kind: str, **bootstrap) -> dict:
    """``paired_auc`` of the reader's scores on filtered images ``[N, H, W(, 1)]`` of the pairs, each
    pair scored at its lesion's mask."""
    if not len(with_lesion) == len(without_lesion) == len(lesion_masks) == len(breast_masks):
        raise ValueError("images with and without the lesion and the masks must have one length")
    scores = [
        [lesion_score(images[i], lesion_masks[i], breast_masks[i], kind) for i in range(len(lesion_masks))]
        for images in (with_lesion, without_lesion)
    ]
    return paired_auc(*scores, **bootstrap)
