"""explain.py: the explainer page's numbers, the page built from the micro model (every section and
figure, every image embedded, one slider frame per t), and the page in headless Chromium."""

import base64
import html.parser
import io
import json
import pathlib
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from ldm_jax.data.imageio import encode_png
from ldm_jax.diffusion.schedule import make_schedule
from ldm_jax.explain import browser, figures
from ldm_jax.explain.page import Options, build

SECTIONS = ["forward", "chain", "schedules", "horizon", "latent", "reverse", "filter"]
RUN_FIGURES = {
    "forward": ["forward-phantom", "forward-image"],
    "chain": ["chain-histograms"],
    "schedules": ["schedule-curves", "schedule-images", "schedule-terminal"],
    "horizon": ["horizon-table", "horizon-images", "horizon-quality"],
    "latent": ["latent-channels", "latent-flops"],
    "reverse": ["reverse-trajectory", "reverse-density"],
    "filter": ["filter-edits", "filter-numbers", "filter-evaluation"],
}
FRAMES = 4
PAGE_OPTIONS = dict(frames=FRAMES, draws=2, steps=2, step_counts=[1, 2], num=4, held_out=4, edits=1)


class _Page(html.parser.HTMLParser):
    """Sections, figures (``div.fig`` ids and the section each sits in), images, sliders and
    every attribute that could load something."""

    def __init__(self):
        super().__init__()
        self.sections, self.figures, self.images, self.loads = [], {}, [], []
        self.sliders, self._slider, self.needs_run = {}, None, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a["id"])
        if tag == "div" and "fig" in a.get("class", "").split():
            self.figures[a["id"]] = self.sections[-1]
            self._slider = a["id"]
        if tag == "div" and a.get("class") == "frame":
            self.sliders.setdefault(self._slider, []).append(a["data-t"])
        if tag == "p" and a.get("class") == "needs-run":
            self.needs_run.append(self.sections[-1])
        if tag == "img":
            self.images.append(a["src"])
        self.loads += [(tag, k, v) for k, v in attrs if k in ("src", "href") and tag != "img"]


def _parse(path) -> _Page:
    parser = _Page()
    parser.feed(pathlib.Path(path).read_text())
    return parser


def _png(src: str) -> Image.Image:
    assert src.startswith("data:image/png;base64,"), src[:60]
    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))


# ----------------------------------------------------------------------------- the numbers


def test_the_markov_chain_and_q_sample_draw_the_same_distribution():
    schedule = make_schedule("linear", 200)
    x0 = np.array([[[-0.8]], [[0.6]]], np.float32)  # two pixels [2, 1, 1]
    out = figures.markov_chain(schedule, x0, [9, 99, 199], draws=4000)
    ac = np.cumprod(1 - np.linspace(1e-4, 0.02, 200))
    for i, t in enumerate([9, 99, 199]):
        for name in ("chain", "closed_form"):
            draws = out[name][i][:, :, 0, 0]  # [draws, 2 pixels]
            np.testing.assert_allclose(draws.mean(0), np.sqrt(ac[t]) * x0[:, 0, 0], atol=0.04)
            np.testing.assert_allclose(draws.std(0), np.sqrt(1 - ac[t]), rtol=0.04)
    with pytest.raises(ValueError, match="ascending"):
        figures.markov_chain(schedule, x0, [99, 9], draws=2)


def test_prior_kl_is_the_gaussian_kl_and_zero_at_zero_terminal_snr():
    x0 = np.array([-1.0, 0.0, 0.5])
    s = make_schedule("linear", 10)
    a = float(np.prod(1 - np.linspace(1e-4, 0.02, 10)))
    # KL(N(m, v) || N(0, 1)) = (v + m² - 1 - log v) / 2 with m = √a x0, v = 1 - a
    expected = np.mean((1 - a) + a * x0**2 - 1 - np.log(1 - a)) / 2
    assert figures.prior_kl(s, x0) == pytest.approx(expected, rel=1e-5)
    assert figures.prior_kl(make_schedule("linear", 10, zero_terminal_snr=True), x0) == pytest.approx(0, abs=1e-6)


def test_pixel_space_unet_steps_cost_more_than_latent_ones(trained_micro):
    from ldm_jax.sampling.model import load_model

    m = load_model(trained_micro)
    pixel, latent = (
        figures.unet_step_flops(m.config.unet, (64, 64, 1)),
        figures.unet_step_flops(m.config.unet, (16, 16, 4)),
    )
    assert latent > 0 and pixel > 10 * latent  # 16× the positions; attention grows faster still


# ----------------------------------------------------------------------------- the page


def test_without_a_run_the_forward_sections_are_built_on_phantoms(tmp_path):
    path = build(None, Options(frames=3, draws=1), tmp_path / "explain.html")
    page = _parse(path)
    assert page.sections == SECTIONS
    assert page.needs_run == ["horizon", "latent", "reverse", "filter"]
    assert list(page.figures) == [
        f for s in SECTIONS[:4] for f in RUN_FIGURES[s] if f not in ("forward-image", "horizon-quality")
    ]
    assert [label.split(",")[0] for label in page.sliders["forward-phantom"]] == ["t = 0", "t = 500", "t = 999"]
    ac = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))  # DDPM's linear schedule, T = 1000
    shown = [float(re.search(r"ᾱ_t = ([0-9.e+-]+)", label).group(1)) for label in page.sliders["forward-phantom"]]
    np.testing.assert_allclose(shown, ac[[0, 500, 999]], rtol=2e-3)


def _scores(ssim: float, mass_auc: float, kept: float) -> dict:
    auc = {"auc": mass_auc, "low": mass_auc - 0.04, "high": mass_auc + 0.04, "pairs": 96}
    return {
        "mass_detectability": auc,
        "calcification_detectability": {"auc": 0.55, "low": 0.52, "high": 0.58, "pairs": 96},
        "ssim_to_truth": ssim,
        "psnr_to_truth": 20.0,
        "lesions_kept": {"mass": kept, "calcification": 0.5},
        "density_a_or_b": 0.25,
    }


EVALUATED = {  # what evaluate.py's metrics.json holds, for the filter section to show
    "dense_tissue_filters": {
        "pairs_per_kind": 96,
        "edit_steps": 20,
        "filters": {
            "unedited": _scores(0.7313, 0.78, 0.94),
            "fat-only truth": {**_scores(1.0, 1.0, 1.0), "psnr_to_truth": "inf"},  # as metrics.json stores it
            "threshold filter": _scores(0.8145, 0.77, 0.69),
            "sdedit g=3 s=0.6": _scores(0.6397, 0.61, 0.38),
        },
    }
}


@pytest.fixture(scope="module")
def micro_page(trained_filter, tmp_path_factory):
    """The page of a copy of the micro run with its filter (and an evaluate.py metrics.json), a PNG of a phantom
    as the user's mammogram."""
    run = tmp_path_factory.mktemp("explain") / "run"
    shutil.copytree(trained_filter, run, ignore=lambda folder, _: ["data"] if folder == str(trained_filter) else [])
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text(json.dumps(EVALUATED))
    user = run / "mammogram.png"
    user.write_bytes(encode_png(np.round((figures.phantom(64, seed=3)[..., 0] + 1) * 127.5).astype(np.uint8)))
    return build(run, Options(image=str(user), **PAGE_OPTIONS))


@pytest.mark.slow
def test_the_page_has_every_section_and_figure_and_embeds_every_image(micro_page):
    page = _parse(micro_page)
    assert page.sections == SECTIONS and not page.needs_run
    assert page.figures == {f: s for s in SECTIONS for f in RUN_FIGURES[s]}
    assert page.loads == []  # no script, stylesheet, font or link to load
    assert len(page.images) > 50
    sizes = {_png(src).size for src in page.images}  # every image a decodable embedded PNG
    assert (64, 64) in sizes and (16, 16) in sizes  # images and latent channels
    # one frame per chosen t on both sliders, labelled with ᾱ_t and SNR of the run's schedule
    ts = [0, 333, 666, 999]
    for slider in ("forward-phantom", "forward-image"):
        labels = page.sliders[slider]
        assert [label.split(",")[0] for label in labels] == [f"t = {t}" for t in ts]
        snr = [float(re.search(r"SNR = ([0-9.e+-]+)", label).group(1)) for label in labels]
        assert snr == sorted(snr, reverse=True) and snr[0] > 100 and snr[-1] < 0.01
    text = pathlib.Path(micro_page).read_text()
    assert "4 times fewer numbers" in text  # 64×64×1 pixels over a 16×16×4 latent
    assert text.count("DDIM steps</th>") == 2  # one quality row per step count
    assert f"from the run {micro_page.parent}" in text
    assert "<tr><th>counterfactual g=1 s=1</th>" in text  # the run's supervised filter, measured on the page
    # evaluate.py's numbers, one row per filter: detectability with intervals, similarity, lesions kept, A/B
    assert (
        "<tr><td>sdedit g=3 s=0.6</td><td>0.61 [0.57, 0.65]</td><td>0.55 [0.52, 0.58]</td><td>0.64</td>"
        "<td>20</td><td>0.38</td><td>0.5</td><td>0.25</td></tr>" in text
    )
    assert "<tr><td>threshold filter</td><td>0.77 [0.73, 0.81]</td>" in text
    assert "<tr><td>fat-only truth</td><td>1 [0.96, 1]</td><td>0.55 [0.52, 0.58]</td><td>1</td><td>inf</td>" in text


@pytest.mark.slow
def test_the_slider_moves_in_headless_chromium_without_errors(micro_page):
    if browser.find_browser() is None:
        pytest.skip(f"no headless Chromium: install Debian's {browser.PACKAGE} (.ci/run installs it when missing)")
    frame = "document.querySelector('#forward-phantom .frame:not([hidden]) img').src"
    label = "document.querySelector('#forward-phantom .t').textContent"
    with browser.Page(micro_page) as page:
        before = page.evaluate(frame), page.evaluate(label)
        page.evaluate(
            "var r = document.querySelector('#forward-phantom input'); r.value = r.max;"
            "r.dispatchEvent(new Event('input'));"
        )
        after = page.evaluate(frame), page.evaluate(label)
        visible = page.evaluate("document.querySelectorAll('#forward-phantom .frame:not([hidden])').length")
        assert page.evaluate("document.querySelector('#forward-phantom input').max") == str(FRAMES - 1)
        assert page.errors() == []
    assert before[1].startswith("t = 0,") and after[1].startswith("t = 999,")
    assert before[0] != after[0] and after[0].startswith("data:image/png;base64,")
    assert visible == 1
    shots = browser.screenshot_sections(micro_page, micro_page.parent / "explain_screenshots")
    assert [s.name for s in shots] == [f"{i + 1:02d}_{s}.png" for i, s in enumerate(SECTIONS)]
    for shot in shots:
        width, height = Image.open(shot).size
        assert width > 600 and height > 100
