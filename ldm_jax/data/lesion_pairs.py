"""Same-seed phantom pairs: one breast rendered with a lesion and without it (``finding="none"``),
the same tissue and quantum noise, differing only inside the lesion mask. The filter table and
the learned observer score held-out pairs (``evaluation.detectability``); the counterfactual
stage's ranking term trains on pairs from ``seeds.TRAINING_PAIRS_SEED`` on (``training.lesion_ranking``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ldm_jax.data.imageio import to_model_range
from ldm_jax.data.phantoms import generate_phantom

KINDS = ("mass", "calcification")


def phantom_arrays(phantoms) -> dict[str, np.ndarray]:
    """Stack ``Phantom`` objects: ``image`` and ``counterfactual`` NHWC float32 in ``[-1, 1]``,
    ``mask`` and ``breast_mask`` bool ``[N, H, W]``, ``labels`` int32 ``[N, 4]``."""
    phantoms = list(phantoms)
    if not phantoms:
        raise ValueError("no phantoms given")
    return {
        "image": to_model_range(np.stack([p.image for p in phantoms]))[..., None],
        "counterfactual": to_model_range(np.stack([p.counterfactual for p in phantoms]))[..., None],
        "mask": np.stack([p.mask for p in phantoms]),
        "breast_mask": np.stack([p.breast_mask for p in phantoms]),
        "labels": np.stack([p.labels for p in phantoms]),
    }


def pair_seeds(num: int, offset: int) -> list[tuple[int, str]]:
    """``num`` (seed, density) pairs alternating C and D, from seed ``offset`` on."""
    return [(offset + i, "CD"[i % 2]) for i in range(num)]


def phantom_pairs(num: int, size: int, kind: str, offset: int) -> dict[str, np.ndarray]:
    """``num`` dense same-seed pairs of ``kind``: ``phantom_arrays`` of the phantoms with the lesion
    (``"with"``) and of the same seeds without it (``"without"``), each with its
    ``"counterfactual"`` (the fat-only truth)."""
    if kind not in KINDS:
        raise ValueError(f"unknown lesion kind {kind!r}; expected one of {KINDS}")
    seeds = pair_seeds(num, offset)
    return {
        "with": phantom_arrays(generate_phantom(s, size, density=d, finding=kind) for s, d in seeds),
        "without": phantom_arrays(generate_phantom(s, size, density=d, finding="none") for s, d in seeds),
    }


def mass_band(lesion_mask, breast_mask, ring: int = 2) -> np.ndarray:
    """The ``ring``-pixel band around a lesion, inside the breast: where the mass reader takes the
    lesion's surround (bool, the masks' shape)."""
    lesion, breast = np.asarray(lesion_mask, bool), np.asarray(breast_mask, bool)
    return ndimage.binary_dilation(lesion, iterations=ring) & ~lesion & breast
