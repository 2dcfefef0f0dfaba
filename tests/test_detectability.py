"""Known-location detectability: the AUC and its paired bootstrap interval against closed forms,
and the reader on phantom pairs (dense tissue masks masses; the fat-only truth reveals them)."""

import math

import numpy as np
import pytest

from ldm_jax.data import lesion_pairs
from ldm_jax.evaluation import detectability as det


def _binormal_auc(shift: float) -> float:
    """AUC of N(shift, 1) against N(0, 1): Φ(shift / √2)."""
    return 0.5 * (1.0 + math.erf(shift / 2.0))


def test_auc_is_the_mann_whitney_probability_with_ties_counted_half():
    assert det.auc([2.0], [1.0]) == 1.0 and det.auc([1.0], [2.0]) == 0.0
    assert det.auc([1.0, 1.0], [1.0, 1.0]) == 0.5
    assert det.auc([1.0, 3.0], [2.0, 3.0]) == (0 + 0 + 1 + 0.5) / 4
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1.0, 1.0, 4000), rng.normal(0.0, 1.0, 4000)
    assert det.auc(pos, neg) == pytest.approx(_binormal_auc(1.0), abs=0.01)


def test_paired_bootstrap_interval_covers_the_true_auc_95_percent_of_the_time():
    """Paired binormal scores (correlation 0.6 within a pair, as a breast shared by both images):
    the 95% interval covers Φ(Δ/√2) in about 95% of 200 experiments, and is narrower than the
    unpaired one would be."""
    rng = np.random.default_rng(1)
    shift, n, rho = 0.8, 100, 0.6
    truth = _binormal_auc(shift)
    covered, widths = 0, []
    for i in range(200):
        shared = rng.normal(size=n)
        pos = shift + math.sqrt(rho) * shared + math.sqrt(1 - rho) * rng.normal(size=n)
        neg = math.sqrt(rho) * shared + math.sqrt(1 - rho) * rng.normal(size=n)
        r = det.paired_auc(pos, neg, resamples=500, seed=i)
        assert r["low"] <= r["auc"] <= r["high"] and r["pairs"] == n
        covered += r["low"] <= truth <= r["high"]
        widths.append(r["high"] - r["low"])
    assert 0.9 <= covered / 200 <= 0.99, covered
    # Hanley & McNeil's unpaired standard error at this AUC and n gives a width of about 0.14.
    assert np.mean(widths) < 0.12, np.mean(widths)


def test_pairs_that_differ_by_a_hair_are_chance_with_an_interval_that_covers_it():
    """After an edit that makes both images of a pair nearly equal (s⁺_i = s⁻_i + 1e-6), telling
    lesions from breasts is chance: over different seeds every comparison is decided by the
    breasts alone, so the AUC is exactly ½, and so is every resample. Counting the same-breast
    comparisons would put the AUC at ½ + 1/(2n) and the bootstrap (which compares a resampled
    pair with its own copy) above it."""
    breasts = np.random.default_rng(3).normal(size=96)
    r = det.paired_auc(breasts + 1e-6, breasts, resamples=500)
    assert r["auc"] == 0.5 and r["low"] == 0.5 and r["high"] == 0.5, r


def test_few_pairs_still_give_a_finite_interval():
    """With 3 pairs, 1 resample in 9 draws one pair three times and compares no two seeds; it is
    left out rather than turning the interval into nan."""
    r = det.paired_auc([3.0, 2.0, 5.0], [1.0, 0.0, 4.0], resamples=200)
    assert r["auc"] == 4 / 6 and 0 <= r["low"] <= r["high"] <= 1, r  # 3>0, 2>1, 5>1, 5>0 of 6


def test_paired_auc_rejects_unpaired_or_bad_scores():
    with pytest.raises(ValueError, match="equal lengths"):
        det.paired_auc([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        det.paired_auc([1.0, np.nan], [1.0, 2.0])
    with pytest.raises(ValueError, match="unknown lesion kind"):
        det.lesion_score(np.zeros((8, 8)), np.ones((8, 8), bool), np.ones((8, 8), bool), "cyst")


def test_dense_tissue_hides_lesions_that_the_fat_only_truth_shows():
    """On 48 dense (C/D) pairs at 64×64: masses are hard to see in the images and obvious in the
    counterfactuals; calcification clusters are near chance in the images (sub-pixel at 3 mm
    pixels under the texture) and well above it in the counterfactuals."""
    for kind, image_at_most, truth_at_least in (("mass", 0.9, 0.95), ("calcification", 0.7, 0.8)):
        pairs = lesion_pairs.phantom_pairs(48, 64, kind, offset=123_000)
        w, wo = pairs["with"], pairs["without"]
        np.testing.assert_array_equal(w["breast_mask"], wo["breast_mask"])  # one breast per pair
        image = det.detectability(w["image"], wo["image"], w["mask"], w["breast_mask"], kind, resamples=200)
        truth = det.detectability(
            w["counterfactual"], wo["counterfactual"], w["mask"], w["breast_mask"], kind, resamples=200
        )
        assert image["auc"] <= image_at_most and truth["auc"] >= truth_at_least, (kind, image, truth)
        assert truth["low"] > image["high"], (kind, image, truth)
