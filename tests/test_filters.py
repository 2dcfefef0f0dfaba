"""Dense-tissue filters on same-seed pairs: the pairs' layout, label-blind edits, the baselines' scores."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax import attributes
from ldm_jax.data.imageio import encode_png
from ldm_jax.data.phantoms import generate_phantom
from ldm_jax.data import lesion_pairs
from ldm_jax.evaluation import filters
from ldm_jax.evaluation.evaluator import Evaluator, compiled_edit
from ldm_jax.evaluation.options import Options
from ldm_jax.evaluation.run import evaluate
from ldm_jax.sampling.generate import image_keys, keep_detail


def test_sweep_crosses_method_guidance_and_strength_and_adds_density_only_guidance_and_kept_detail():
    sweep = filters.sweep([0.5, 1.0], [1.0, 3.0], ["sdedit", "ddim-inversion"])
    assert len(sweep) == 2 * (2 * 2 * 2 + 2)  # density-only guidance only where guided (g > 1)
    families = {
        "sdedit g=1",
        "sdedit g=3",
        "ddim-inversion g=1",
        "ddim-inversion g=3",
        "sdedit g=3, density-only guidance",
    }
    assert {f.family for f in sweep} == families | {f"{family}, detail kept" for family in families}
    assert len({f.name for f in sweep}) == len(sweep)
    edits = {f.name for f in sweep if not f.detail}
    assert all(f.without_detail.name in edits for f in sweep if f.detail)  # evaluate derives them from these


def test_edits_are_told_everything_but_the_finding():
    labels = np.array([[3, 1, 0, 1], [2, 0, 1, 0]], np.int32)
    source, target = filters.edit_labels(labels)
    null_finding = attributes.NUM_CLASSES[1]
    np.testing.assert_array_equal(source, [[3, null_finding, 0, 1], [2, null_finding, 1, 0]])
    np.testing.assert_array_equal(target, [[0, null_finding, 0, 1], [0, null_finding, 1, 0]])


def test_baselines_on_the_same_pairs():
    """The fat-only truth reveals masses the unedited image hides, keeps every lesion and is its own
    SSIM 1; each pair's two rows share labels, masks and pair index and differ in the finding."""
    pairs = {kind: lesion_pairs.phantom_pairs(24, 64, kind, offset=7_000) for kind in lesion_pairs.KINDS}
    data = filters.stack_pairs(pairs)
    n = 24
    assert len(data["image"]) == 4 * n and data["has_lesion"].sum() == 2 * n
    for k, kind in enumerate(lesion_pairs.KINDS):
        rows = slice(2 * n * k, 2 * n * (k + 1))
        assert (data["kind"][rows] == kind).all()
        np.testing.assert_array_equal(data["pair"][rows], np.tile(np.arange(n) + n * k, 2))
        np.testing.assert_array_equal(data["labels"][rows][:n], data["labels"][rows][n:])
        assert (data["finding"][rows][:n] == k + 1).all() and (data["finding"][rows][n:] == 0).all()
        assert (data["labels"][rows][:, 0] >= 2).all()  # dense: C or D
    dense = lambda images: np.full(len(images), 3)  # a stub classifier
    truth = filters.score(data, data["counterfactual"], dense, resamples=200)
    unedited = filters.score(data, data["image"], dense, resamples=200)
    assert truth["mass_detectability"]["low"] > unedited["mass_detectability"]["high"]
    assert truth["ssim_to_truth"] == 1.0 and truth["psnr_to_truth"] == float("inf")
    assert truth["lesions_kept"]["mass"] == 1.0 and unedited["ssim_to_truth"] < 0.9
    assert unedited["density_a_or_b"] == 0.0


@pytest.mark.slow
def test_evaluate_dense_section_alone_sweeps_every_filter_and_the_trained_counterfactual(trained_filter, tmp_path):
    """evaluate.py --sections dense_tissue_filters on a run with the counterfactual stage: the sweep
    holds the supervised filter's strengths beside the unsupervised edits, on the same pairs; a
    "real" image given by the user is shown through them, unscored and marked as such."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "patient_name_scan.png").write_bytes(encode_png(generate_phantom(3, 64, density="D").image))
    options = Options(
        real_images=str(real),
        sections="dense_tissue_filters",
        pairs=3,
        filter_steps=2,
        filter_strengths="0.5,1",
        filter_guidance="1",
        filter_methods="sdedit",
        batch=8,
        classifier_steps=5,
    )
    results = evaluate(trained_filter, options, tmp_path / "eval")
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(saved) >= {"dense_tissue_filters", "classifier_held_out"}
    assert not {"reconstruction", "generation", "conditioning", "memorization"} & set(saved)
    names = set(results["dense_tissue_filters"]["filters"])
    assert names == {
        "unedited",
        "fat-only truth",
        "threshold filter",
        "autoencoder round trip",
        *[
            f"{method} g=1{detail} s={s}"
            for method in ("sdedit", "counterfactual")
            for detail in ("", ", detail kept")
            for s in ("0.5", "1")
        ],
    }
    kept = results["dense_tissue_filters"]["filters"]["counterfactual g=1, detail kept s=1"]
    assert {"mass_detectability", "ssim_to_truth", "lesions_kept"} <= set(kept)
    page = (tmp_path / "eval" / "report.html").read_text()
    assert "mass detectability" in page
    assert "real image 1 of 1 (not scored" in page and "trained on phantoms only" in page
    assert "patient_name" not in page and "patient_name" not in json.dumps(saved)  # named by position only


@pytest.mark.slow
def test_a_filter_with_its_detail_kept_is_its_edit_as_a_change_to_the_input(trained_filter):
    """evaluate derives each detail-kept filter from its edit's output and the round trip through
    the autoencoder of the model that ran it: the same images as running the edit with ``detail``."""
    ev = Evaluator(trained_filter, Options(filter_steps=2, batch=4), None)
    pairs = {"mass": lesion_pairs.phantom_pairs(2, 64, "mass", offset=9_000)}
    data = filters.stack_pairs(pairs)
    labels = filters.edit_labels(data["labels"])
    keys = np.asarray(image_keys(jax.random.PRNGKey(1), jnp.asarray(data["pair"])))
    for edit in (filters.EditFilter("sdedit", 1.0, 3.0), filters.EditFilter("counterfactual", 1.0, 1.0)):
        plain = compiled_edit(ev, edit)(data["image"], *labels, keys)
        kept = compiled_edit(ev, dataclasses.replace(edit, detail=True))(data["image"], *labels, keys)
        round_trip = ev.reconstruct(data["image"], ev.counterfactual if edit.method == "counterfactual" else None)
        np.testing.assert_allclose(kept, keep_detail(data["image"], plain, round_trip), atol=1e-5)
        assert np.abs(kept - plain).max() > 0.05


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("sections", "generation,fid", "--sections"),
        ("filter_strengths", "0.5,1.5", "--filter-strengths"),
        ("filter_guidance", "0.5", "--filter-guidance"),
        ("filter_methods", "counterfactual", "--filter-methods"),
    ],
)
def test_bad_evaluation_options_fail_before_any_work(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        evaluate(tmp_path / "no_run", Options(**{field: value}), tmp_path / "eval")
    assert not (tmp_path / "eval").exists()
