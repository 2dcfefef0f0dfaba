"""evaluate.py end to end on the micro model: every section, metrics.json and a report that renders."""

import base64
import html.parser
import io
import json

import numpy as np
import pytest
from PIL import Image

from ldm_jax.evaluation.headline import headline, mean_grey_by_density
from ldm_jax.evaluation.filters import threshold_filter
from ldm_jax.evaluation.options import Options
from ldm_jax.evaluation.run import evaluate


def test_threshold_filter_flattens_dense_tissue_but_keeps_fine_detail():
    x = np.full((1, 32, 32, 1), -1.0, np.float32)
    breast = np.zeros((1, 32, 32), bool)
    breast[0, :, :20] = True
    x[0, :, :20, 0] = np.linspace(-0.6, 0.6, 20)[None, :]  # a smooth dense gradient
    x[0, 16, 5, 0] = 0.9  # a bright speck in fatty tissue
    out = threshold_filter(x, breast, quantile=0.3)
    level = np.quantile(x[0][breast[0]], 0.3)
    assert abs(out[0, 2, 14, 0] - level) < 0.02  # dense tissue pulled down to the level
    assert out[0, 16, 5, 0] - out[0, 16, 7, 0] > 0.5  # the speck still stands out
    np.testing.assert_array_equal(out[0, :, 20:], x[0, :, 20:])  # outside the breast untouched


def test_mean_grey_by_density_is_the_8_bit_mean_per_class():
    images = np.stack([np.full((4, 4, 1), v, np.float32) for v in (-1.0, 1.0, 0.0, 0.0)])
    grey = mean_grey_by_density(images, np.array([0, 0, 2, 3]))
    assert grey[0] == 127.5 and grey[2] == grey[3] == 128.0  # (0 + 255) / 2; rint(127.5) = 128
    assert np.isnan(grey[1])


class _Images(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.frames, self.ranges = [], 0, 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "div" and attrs.get("class") == "frame":
            self.frames += 1
        if tag == "input" and attrs.get("type") == "range":
            self.ranges += 1


@pytest.mark.slow
def test_evaluate_writes_every_section_and_a_self_contained_report(two_processes, tmp_path):
    """On the checkpoint two processes wrote with parameters split over fsdp (the pod path):
    evaluate.py runs in one process and loads it whatever topology wrote it."""
    options = Options(
        num=8,
        held_out=16,
        train_images=16,
        steps=3,
        batch=8,
        classifier_steps=20,
        pairs=4,
        filter_steps=2,
        filter_strengths="1",
        filter_guidance="2",
        filter_methods="sdedit",  # inversion and DiffEdit: exact-model tests in test_sampling.py
        observer_steps=3,
        observer_pairs=8,
    )
    results = evaluate(two_processes, options, tmp_path / "eval")
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for section in ("reconstruction", "generation", "conditioning", "dense_tissue_filters", "memorization"):
        assert section in saved and section in results
    assert 0 < saved["reconstruction"]["ssim"]["mean"] <= 1
    filters = saved["dense_tissue_filters"]["filters"]
    edits = {"sdedit g=2 s=1", "sdedit g=2, density-only guidance s=1"}
    edits |= {name.replace(" s=1", ", detail kept s=1") for name in edits}
    assert set(filters) == {"unedited", "fat-only truth", "threshold filter", "autoencoder round trip"} | edits
    for scores in filters.values():
        assert 0 <= scores["mass_detectability"]["low"] <= scores["mass_detectability"]["high"] <= 1
        assert scores["mass_detectability"]["pairs"] == 4
    assert filters["fat-only truth"]["ssim_to_truth"] == pytest.approx(1.0)
    learned = saved["dense_tissue_filters"]["observer"]
    assert (learned["pairs"], learned["train_pairs"], learned["steps"]) == (4, 8, 3)
    assert 0 <= learned["low"] <= learned["auc"] <= learned["high"] <= 1
    assert saved["memorization"]["training_images_searched"] == 16
    assert 0.0 <= saved["memorization"]["fraction_above_threshold"] <= 1.0
    assert np.isfinite(saved["generation"]["phantom_classifier_features"]["frechet_distance"])

    # The headline numbers (evaluate.py --headline) are the same measurements as the full evaluation's.
    head = headline(two_processes, options, tmp_path / "eval")
    assert head["reconstruction_psnr"] == pytest.approx(saved["reconstruction"]["psnr"]["mean"], rel=1e-6)
    assert head["density_accuracy"] == pytest.approx(saved["conditioning"]["accuracy"]["density"])
    assert json.loads((tmp_path / "eval" / "headline.json").read_text())["grey_by_density"] == head["grey_by_density"]

    parser = _Images()
    parser.feed((tmp_path / "eval" / "report.html").read_text())
    assert parser.ranges == 1 and parser.frames == 11  # one frame per chosen t
    assert len(parser.images) > 20
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
