"""Phantom-specific evaluation: phantom arrays, and simple detectors for masses and microcalcifications.

Phantoms (``ldm_jax.data.phantoms``) carry their lesion mask, so detection is only asked *where*
the lesion is: is it conspicuous there? Images are float ``[H, W]`` (or ``[H, W, 1]``) in the
model range ``[-1, 1]``; all thresholds are in those units (1 unit = 2047.5 12-bit levels).

* **Microcalcification specks**: local maxima of a difference of Gaussians (a band-pass matched
  to ~1-pixel specks, Marr & Hildreth 1980), ``DoG = G_σ1 * x − G_σ2 * x``, above ``k`` robust
  standard deviations (1.4826 · MAD) of the DoG over the breast outside the lesion. The
  threshold is set on the *reference* (original) image and applied unchanged to the test
  image (reconstruction or edit): "the same detector". A reference speck is preserved when the
  test image's DoG exceeds that threshold within ``tolerance`` pixels of it.
* **Masses**: contrast ``mean(x | lesion) − mean(x | 2-pixel ring around it, inside the
  breast)``, detected above ``min_contrast``. In fat-only counterfactuals a mass stands out
  (median contrast ≈ 0.15; at the same place without a mass ≈ 0). In the originals masses
  are often isodense with the glands and the ring contrast is dominated by the texture, so
  mass preservation is meaningful against counterfactuals (the target of dense-tissue
  removal), not on originals.

Where it works (20 phantoms per size, this detector with its defaults): at 256×256, 33
specks are found in the originals and none survive when the cluster is removed (same seed,
``finding="none"``); a Gaussian blur of σ = 1 px keeps 12%. At 128×128 few specks are found in
the originals and texture maxima fake half of them; counterfactuals work from 128×128 up. At
64×64 (3.1 mm pixels) the 0.1–1 mm calcifications are sub-pixel, below the texture, and
nothing is detectable: ``fraction`` is nan.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ldm_jax.data import lesion_pairs
from ldm_jax.data.mass_reader import ring_contrast_np

MASS, CALCIFICATION = 1, 2  # finding indices (ldm_jax.attributes.ATTRIBUTES["finding"])


def _image(x, name) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 2:
        raise ValueError(f"{name} must be a grayscale image [H, W] or [H, W, 1], got shape {x.shape}")
    return x


def _masks(lesion_mask, breast_mask, shape):
    lesion, breast = np.asarray(lesion_mask, bool), np.asarray(breast_mask, bool)
    if lesion.shape != shape or breast.shape != shape:
        raise ValueError(f"masks {lesion.shape}, {breast.shape} do not match the image {shape}")
    return lesion, breast


# ----------------------------------------------------------------------------- microcalcifications


def speck_response(image, sigma_inner: float = 0.5, sigma_outer: float = 2.0) -> np.ndarray:
    """Difference of Gaussians ``G_σ1 * x − G_σ2 * x`` (σ in pixels): bright, ~1-pixel specks peak."""
    image = _image(image, "image")
    return ndimage.gaussian_filter(image, sigma_inner) - ndimage.gaussian_filter(image, sigma_outer)


def speck_threshold(response, lesion_mask, breast_mask, k: float = 5.0, exclusion: int = 3) -> float:
    """``k`` robust standard deviations (1.4826 · median absolute deviation) of ``response`` over the
    breast, excluding the lesion dilated by ``exclusion`` pixels."""
    lesion, breast = _masks(lesion_mask, breast_mask, response.shape)
    background = breast & ~ndimage.binary_dilation(lesion, iterations=exclusion) if exclusion else breast & ~lesion
    if background.sum() < 16:
        raise ValueError(f"only {int(background.sum())} background breast pixels to estimate the noise from")
    values = response[background]
    return float(k * 1.4826 * np.median(np.abs(values - np.median(values))))


def detect_specks(response, region, threshold: float) -> np.ndarray:
    """Positions ``[K, 2]`` (row, col) of the 3×3 local maxima of ``response`` above ``threshold``
    inside ``region`` (bool ``[H, W]``)."""
    peaks = (response == ndimage.maximum_filter(response, size=3)) & (response > threshold) & region
    return np.argwhere(peaks)


def _disk(radius: float) -> np.ndarray:
    r = int(np.floor(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return yy**2 + xx**2 <= radius**2


def _reference_specks(reference, lesion, breast, k, sigma_inner, sigma_outer):
    """The reference's speck threshold and the specks it finds in the lesion (dilated by 1 pixel)."""
    response = speck_response(reference, sigma_inner, sigma_outer)
    threshold = speck_threshold(response, lesion, breast, k)
    region = ndimage.binary_dilation(lesion)
    return threshold, region, detect_specks(response, region, threshold)


def calcification_pair(
    original,
    test,
    lesion_mask,
    breast_mask,
    *,
    k: float = 5.0,
    tolerance: float = 1.5,
    sigma_inner: float = 0.5,
    sigma_outer: float = 2.0,
) -> tuple[int, int]:
    """(specks detected in ``original`` inside the lesion mask (dilated 1 px), of those still detected
    in ``test`` within ``tolerance`` pixels), with the original's threshold for both images."""
    original, test = _image(original, "original"), _image(test, "test")
    if original.shape != test.shape:
        raise ValueError(f"original {original.shape} and test {test.shape} differ in shape")
    lesion, breast = _masks(lesion_mask, breast_mask, original.shape)
    threshold, _, specks = _reference_specks(original, lesion, breast, k, sigma_inner, sigma_outer)
    if len(specks) == 0:
        return 0, 0
    nearby = ndimage.maximum_filter(speck_response(test, sigma_inner, sigma_outer), footprint=_disk(tolerance))
    return len(specks), int(np.sum(nearby[specks[:, 0], specks[:, 1]] > threshold))


def calcification_detectability(originals, tests, lesion_masks, breast_masks, findings, **detector) -> dict:
    """Fraction of microcalcification specks, detectable in the originals, still detected in the test
    images (e.g. autoencoder reconstructions), over images with ``finding == calcification``.

    Returns ``{"images", "specks", "preserved", "fraction"}`` (``fraction`` is nan without any
    detectable speck). ``detector`` keywords go to ``calcification_pair``.
    """
    findings = np.asarray(findings)
    if not len(originals) == len(tests) == len(lesion_masks) == len(breast_masks) == len(findings):
        raise ValueError("originals, tests, masks and findings must have one length")
    images = specks = preserved = 0
    for i in np.flatnonzero(findings == CALCIFICATION):
        n, kept = calcification_pair(originals[i], tests[i], lesion_masks[i], breast_masks[i], **detector)
        images += 1
        specks += n
        preserved += kept
    return {
        "images": images,
        "specks": specks,
        "preserved": preserved,
        "fraction": preserved / specks if specks else float("nan"),
    }


# ----------------------------------------------------------------------------- masses and clusters


def mass_contrast(image, lesion_mask, breast_mask, ring: int = 2) -> float:
    """The mass reader (``mass_reader``) on ``image``: its mean over the lesion minus its mean over a
    ``ring``-pixel band around it inside the breast."""
    image = _image(image, "image")
    lesion, breast = _masks(lesion_mask, breast_mask, image.shape)
    return ring_contrast_np(image, lesion, lesion_pairs.mass_band(lesion, breast, ring))


def lesion_pair(
    reference,
    test,
    lesion_mask,
    breast_mask,
    finding: int,
    *,
    min_contrast: float = 0.02,
    min_specks: int = 1,
    k: float = 5.0,
    sigma_inner: float = 0.5,
    sigma_outer: float = 2.0,
) -> tuple[bool, bool]:
    """(lesion detected in ``reference``, lesion detected in ``test``).

    Mass: ``mass_contrast > min_contrast``. Calcification cluster: at least ``min_specks`` specks
    inside the lesion (dilated 1 px), with the reference's speck threshold for both images.
    """
    reference, test = _image(reference, "reference"), _image(test, "test")
    if reference.shape != test.shape:
        raise ValueError(f"reference {reference.shape} and test {test.shape} differ in shape")
    if finding == MASS:
        return (
            mass_contrast(reference, lesion_mask, breast_mask) > min_contrast,
            mass_contrast(test, lesion_mask, breast_mask) > min_contrast,
        )
    if finding == CALCIFICATION:
        lesion, breast = _masks(lesion_mask, breast_mask, reference.shape)
        threshold, region, specks = _reference_specks(reference, lesion, breast, k, sigma_inner, sigma_outer)
        in_test = detect_specks(speck_response(test, sigma_inner, sigma_outer), region, threshold)
        return len(specks) >= min_specks, len(in_test) >= min_specks
    raise ValueError(f"finding {finding} has no lesion (expected {MASS} mass or {CALCIFICATION} calcification)")


def lesion_preservation(references, tests, lesion_masks, breast_masks, findings, **detector) -> dict:
    """Per finding (``"mass"``, ``"calcification"``): of the lesions detected in the references, the
    fraction still detected in the tests (e.g. dense-tissue-removal edits against the phantoms'
    counterfactuals). Returns ``{name: {"lesions", "detected", "preserved", "fraction"}}``;
    images without a finding are skipped. ``detector`` keywords go to ``lesion_pair``.
    """
    findings = np.asarray(findings)
    if not len(references) == len(tests) == len(lesion_masks) == len(breast_masks) == len(findings):
        raise ValueError("references, tests, masks and findings must have one length")
    out = {}
    for name, finding in (("mass", MASS), ("calcification", CALCIFICATION)):
        indices = np.flatnonzero(findings == finding)
        pairs = [
            lesion_pair(references[i], tests[i], lesion_masks[i], breast_masks[i], finding, **detector) for i in indices
        ]
        detected = sum(r for r, _ in pairs)
        preserved = sum(r and t for r, t in pairs)
        out[name] = {
            "lesions": len(indices),
            "detected": detected,
            "preserved": preserved,
            "fraction": preserved / detected if detected else float("nan"),
        }
    return out
