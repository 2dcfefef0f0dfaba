"""``build(workdir, options, out)``: the explainer page, one self-contained ``explain.html``.

"Latent Diffusion Models: An Intuitive Introduction in a Medical Imaging Context", finished with
this project's own numbers: every image and number on the page is computed at build time by the
functions in ``ldm_jax.explain.figures`` (which call the library) and embedded (PNG data URIs,
inline SVG, one inline script for the sliders); each figure names the function behind it. The
sections (``SECTIONS``) follow the article's outline. Without a run (``workdir`` None) the
forward-process sections are built on a phantom and the others say what they need.
"""

from __future__ import annotations

import dataclasses
import html
import json
import pathlib
import sys
import time

import numpy as np

from ldm_jax import attributes
from ldm_jax.cli import flag
from ldm_jax.storage import write_atomic
from ldm_jax.data.seeds import EXPLAIN_PAIRS_SEED
from ldm_jax.diffusion.schedule import SCHEDULES, make_schedule
from ldm_jax.evaluation import filters, metrics, report
from ldm_jax.evaluation import filter_table
from ldm_jax.evaluation.evaluator import DENSITY_CONDITIONS, Evaluator, compiled_edit
from ldm_jax.evaluation.options import Options as EvaluationOptions
from ldm_jax.evaluation.process import noised
from ldm_jax.explain import figures
from ldm_jax.sampling.edit_inputs import read_input

# (id, heading) of the page's sections, in the article's order.
SECTIONS = (
    ("forward", "1. The forward process destroys the image"),
    ("chain", "2. The Markov chain and its closed form"),
    ("schedules", "3. Variance schedules"),
    ("horizon", "4. How many steps: T large or small"),
    ("latent", "5. The latent space"),
    ("reverse", "6. The reverse process"),
    ("filter", "7. The dense-tissue filter"),
)
HORIZONS = (10, 100, 1000)  # T of section 4
LATENT_RANGE = 3.0  # latent values are shown from -3 to 3
STYLE = ".fig{margin:1em 0}.fig img{width:128px}.source{font-size:.9em}.frame figure{margin:.2em}"


@dataclasses.dataclass(frozen=True)
class Options:
    """What the page computes (``explain.py``'s flags)."""

    frames: int = flag(11, "timesteps on the forward-process sliders, evenly spaced over 0 .. T-1")
    image: str = flag("", "a real mammogram (DICOM or PNG) to diffuse beside the phantom")
    size: int = flag(64, "phantom size without a run (a run uses its own image size)")
    draws: int = flag(8, "independent draws per timestep for the Markov-chain histograms")
    steps: int = flag(25, "DDIM steps of the reverse trajectory, the density samples and the edits")
    step_counts: list[int] = flag([5, 10, 25, 50], "DDIM step counts whose sample quality section 4 measures")
    num: int = flag(32, "samples per step count (spread over the density classes)")
    held_out: int = flag(64, "held-out phantoms the samples are compared with")
    guidance: float = flag(3.0, "classifier-free guidance scale of the samples and edits (1: none)")
    edits: int = flag(4, "dense same-seed pairs (with / without a mass) through the filters")
    classifier: str = flag("", "phantom classifier file (default <workdir>/eval/phantom_classifier.msgpack, if there)")
    seed: int = flag(0, "root seed")

    def __post_init__(self):
        for name in ("frames", "draws", "steps", "num", "held_out", "edits"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')}={getattr(self, name)} must be >= 1")
        if any(n < 1 for n in self.step_counts):
            raise ValueError(f"--step-counts {self.step_counts} must all be >= 1")


def _log(message: str) -> None:
    print(f"[explain] {message}", file=sys.stderr, flush=True)


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def _fig(fig_id: str, source: str, caption: str, content: str) -> str:
    """A figure block: ``content`` (HTML), a caption and the function that computed it."""
    return (
        f'<div class="fig" id="{fig_id}">{content}<p class="source">{_esc(caption)} '
        f"<small>Computed by <code>{_esc(source)}</code>.</small></p></div>"
    )


def _p(*sentences: str) -> str:
    return f"<p>{_esc(' '.join(sentences))}</p>"


def _latent_tiles(z: np.ndarray, label: str) -> str:
    """The channels of latent ``z [h, w, c]``, each shown from -LATENT_RANGE to LATENT_RANGE."""
    return "".join(report.figure(z[..., c] / LATENT_RANGE, f"{label} channel {c}") for c in range(z.shape[-1]))


def _n(value, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits; also the "inf"/"nan" strings metrics.json stores."""
    return f"{float(value):.{digits}g}"


# ----------------------------------------------------------------------------- sections


def _forward_slider(fig_id: str, name: str, frames: dict) -> str:
    labels = [
        f"t = {t}, ᾱ_t = {_n(a)}, SNR = {_n(s)}" for t, a, s in zip(frames["t"], frames["alpha_bar"], frames["snr"])
    ]
    cells = []
    for i, t in enumerate(frames["t"]):
        cell = report.figure(frames["pixel"][i], f"image space x_{t}")
        if "latent" in frames:
            cell += _latent_tiles(frames["latent"][i], f"latent z_{t}")
            cell += report.figure(frames["decoded"][i], f"decoded z_{t}")
        cells.append(cell)
    where = "image space and latent space (the run's autoencoder)" if "latent" in frames else "image space"
    return _fig(
        fig_id,
        "ldm_jax.diffusion.forward.q_sample, forward.snr (ldm_jax.explain.figures.forward_frames)",
        f"{name}: x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε in {where}, one ε for all t. Move the slider.",
        report.slider(labels, cells),
    )


def _forward(schedule, x0, ts, ev, user_image) -> str:
    parts = [
        _p(
            "Diffusion replaces an image bit by bit with Gaussian noise until nothing of it is left.",
            "Each step mixes in a little noise: q(x_t | x_{t−1}) = N(√(1−β_t) x_{t−1}, β_t I).",
            "After t steps the image keeps the fraction √ᾱ_t of its amplitude, ᾱ_t = ∏_{s≤t} (1−β_s),",
            "and the signal-to-noise ratio is SNR(t) = ᾱ_t / (1−ᾱ_t).",
            f"This page uses the schedule {_schedule_name(ev)} with T = {schedule.num_steps} steps (t counts from 0).",
        ),
        _forward_slider("forward-phantom", "A mammogram phantom", figures.forward_frames(schedule, x0, ts, ev)),
    ]
    if user_image is not None:
        frames = figures.forward_frames(schedule, user_image, ts, ev)
        parts.append(_forward_slider("forward-image", "Your mammogram", frames))
    if ev is not None:
        h, w, c = ev.model.latent_shape
        parts.append(
            _p(
                f"The {h}×{w}×{c} latent has {x0.shape[0] * x0.shape[1] // (h * w)} times fewer positions than the",
                "image, and the noise destroys it in the same way; decoding a noisy latent shows what the",
                "autoencoder makes of it.",
            )
        )
    return "".join(parts)


def _schedule_name(ev) -> str:
    if ev is None:
        return "linear (DDPM: β from 1e-4 to 0.02)"
    d = ev.model.config.diffusion
    return f"{d.schedule}{', zero terminal SNR' if d.zero_terminal_snr else ''} (the run's)"


def _chain(schedule, x0, draws: int) -> str:
    T = schedule.num_steps
    ts = sorted({max(1, T // 20), T // 4, T // 2, T - 1})
    draws_at = figures.markov_chain(schedule, x0, ts, draws)
    bins = np.linspace(-4.0, 4.0, 65)
    levels = figures.signal_levels(schedule, ts)
    charts, rows = [], {}
    for i, t in enumerate(ts):
        chain, closed = draws_at["chain"][i], draws_at["closed_form"][i]
        series = {
            "Markov chain, t steps": figures.histogram(chain, bins),
            "q_sample, one step": figures.histogram(closed, bins),
        }
        charts.append(report.chart(f"x_{t}: pixel values, density", series, width=360, height=220))
        a = levels["alpha_bar"][i]
        rows[f"t = {t}"] = {
            "mean (chain / q_sample / √ᾱ_t·mean x_0)": f"{_n(chain.mean(), 4)} / {_n(closed.mean(), 4)} / "
            f"{_n(np.sqrt(a) * x0.mean(), 4)}",
            "std (chain / q_sample)": f"{_n(chain.std(), 4)} / {_n(closed.std(), 4)}",
        }
    values = draws * x0.size
    return "".join(
        [
            _p(
                "The forward process is a Markov chain: x_t depends on x_{t−1} only.",
                "Because each step is Gaussian, t steps compose into one Gaussian,",
                "q(x_t | x_0) = N(√ᾱ_t x_0, (1−ᾱ_t) I), so x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε can be drawn in one step",
                "(the reparameterization). Training uses this: any t costs the same.",
                f"Below, {draws} runs of the chain, step by step, against {draws} one-step draws,",
                f"from the same phantom ({values} pixel values per histogram).",
            ),
            _fig(
                "chain-histograms",
                "ldm_jax.explain.figures.markov_chain (the chain, DDPM eq. 2) and ldm_jax.diffusion.forward.q_sample",
                "Histograms of the pixel values of x_t drawn both ways; the two curves agree up to sampling noise.",
                "".join(charts) + report.table(rows),
            ),
        ]
    )


def _schedules(schedule, x0, T: int) -> str:
    table = figures.schedules(T)
    levels = {name: figures.signal_levels(s, np.arange(T)) for name, s in table.items()}
    curves = {name: list(enumerate(v["alpha_bar"].tolist())) for name, v in levels.items() if "zero" not in name}
    with np.errstate(divide="ignore"):  # log SNR = -inf at a zero terminal SNR (the chart drops it)
        log_snr = {name: list(enumerate(np.log(v["snr"]).tolist())) for name, v in levels.items()}
    ts = [T // 10, T // 4, T // 2, (3 * T) // 4]
    images = report.image_rows(
        [
            {"caption": name, "images": [(f"t = {t}", x) for t, x in zip(ts, noised(table[name], x0, ts))]}
            for name in SCHEDULES
        ]
    )
    terminal = [["", "ᾱ_{T−1}", "SNR(T−1)"]]
    terminal += [[name, _n(v["alpha_bar"][-1]), _n(v["snr"][-1])] for name, v in levels.items()]
    return "".join(
        [
            _p(
                "The variance schedule β_0 … β_{T−1} sets how fast the signal goes.",
                "linear: β evenly spaced (DDPM); scaled-linear: √β evenly spaced (LDM, Stable Diffusion);",
                "cosine: ᾱ_t = f(t)/f(0) with f(t) = cos²((t/T + s)/(1 + s) · π/2) (Nichol & Dhariwal);",
                "sigmoid: β along a sigmoid. Zero terminal SNR (Lin et al. 2023) rescales √ᾱ so that ᾱ_{T−1} = 0:",
                "the last step is pure noise, as the sampler assumes when it starts from N(0, I).",
            ),
            _fig(
                "schedule-curves",
                "ldm_jax.diffusion.schedule.make_schedule, ldm_jax.diffusion.forward.snr",
                f"ᾱ_t and log SNR(t) over t = 0 … {T - 1} for each schedule (log SNR = −∞ at a zero terminal "
                "SNR is left off the chart).",
                report.chart("ᾱ_t", curves) + report.chart("log SNR(t)", log_snr),
            ),
            _fig(
                "schedule-images",
                "ldm_jax.diffusion.forward.q_sample under each make_schedule",
                "The same phantom and the same ε at equal t under each schedule.",
                images,
            ),
            _fig(
                "schedule-terminal",
                "ldm_jax.diffusion.schedule.make_schedule(zero_terminal_snr=...)",
                "What is left at the last step: ᾱ_{T−1} and the SNR there.",
                report.table({f"T = {T}": terminal}),
            ),
        ]
    )


def _horizon(x0, ev, options: Options) -> str:
    columns = [f"T = {T}" for T in HORIZONS]
    rows = {"ᾱ_{T−1}": [["", *columns]], "SNR(T−1)": [["", *columns]], "KL per pixel (nats)": [["", *columns]]}
    images = []
    for name in SCHEDULES:
        values, row = [], []
        for T in HORIZONS:
            s = make_schedule(name, T)
            level = figures.signal_levels(s, [T - 1])
            values.append((level["alpha_bar"][0], level["snr"][0], figures.prior_kl(s, x0)))
            row.append((f"T = {T}: x_{T - 1}", noised(s, x0, [T - 1])[0]))
        for key, column in zip(rows, zip(*values)):
            rows[key].append([name, *(_n(v) for v in column)])
        images.append({"caption": name, "images": row})
    kept = [row[0] for row in rows["SNR(T−1)"][1:] if float(row[1]) > 1]
    parts = [
        _p(
            "The β ranges are fixed per step, so T decides how much signal survives (Franzese et al. 2022,",
            f"“How much is enough?”). With T = {HORIZONS[0]}, the {' and '.join(kept)} schedules still have",
            "SNR > 1 at the last step: the phantom is plainly there. A sampler that starts from pure noise",
            "N(0, I) then starts from the wrong distribution; the KL divergence below is that mismatch.",
            "Large T leaves almost no signal but costs more steps to train and to sample; fast samplers",
            "(DDIM, DPM-Solver++) walk a short grid of a long schedule.",
        ),
        _fig(
            "horizon-table",
            "ldm_jax.diffusion.schedule.make_schedule, forward.snr, ldm_jax.explain.figures.prior_kl",
            "Terminal signal for T = 10, 100, 1000 under each schedule (default β ranges), and the mean per-pixel "
            "KL(q(x_{T−1} | x_0) ‖ N(0, I)) of the phantom.",
            report.table(rows),
        ),
        _fig(
            "horizon-images",
            "ldm_jax.diffusion.forward.q_sample at t = T − 1",
            "The phantom at the last step, x_{T−1}, for each T and schedule.",
            report.image_rows(images),
        ),
    ]
    if ev is None:
        parts.append(_needs_run("the sample quality per sampling step count"))
        return "".join(parts)
    quality, held_out_grey = figures.quality_by_steps(
        ev, options.step_counts, options.num, options.held_out, options.seed
    )
    table = {}
    for row in quality:
        cells = {
            "seconds to sample": _n(row["seconds"]),
            "seconds to compile": _n(row["compile_seconds"]),
            "mean grey A / B / C / D": " / ".join(f"{g:.1f}" for g in row["grey_by_density"]),
        }
        if "density_accuracy" in row:
            cells["density accuracy"] = _n(row["density_accuracy"])
            cells["Fréchet distance (classifier features)"] = _n(row["frechet_distance"])
        table[f"{row['steps']} DDIM steps"] = cells
    samples = report.image_rows(
        [
            {"caption": f"{row['steps']} steps", "images": list(zip(DENSITY_CONDITIONS, row["images"]))}
            for row in quality
        ]
    )
    classifier = "" if "density_accuracy" in quality[0] else " (no phantom classifier file: accuracy and FD left out)"
    parts.append(
        _fig(
            "horizon-quality",
            "ldm_jax.sampling.generate.make_generate; ldm_jax.evaluation.headline.mean_grey_by_density, "
            "evaluation.classifier, evaluation.metrics.frechet_distance (ldm_jax.explain.figures.quality_by_steps)",
            f"This run's T = {ev.model.schedule.num_steps} walked in fewer DDIM steps: {options.num} samples per "
            f"step count, guidance {options.guidance}, timed on this machine after compiling{classifier}. "
            f"Held-out phantoms' mean grey A / B / C / D: {' / '.join(f'{g:.1f}' for g in held_out_grey)}.",
            report.table(table) + samples,
        )
    )
    return "".join(parts)


def _needs_run(what: str) -> str:
    return f'<p class="needs-run">{_esc(what.capitalize())} needs a trained run: python explain.py --workdir RUN.</p>'


def _latent(ev, x0) -> str:
    if ev is None:
        return _needs_run("the latent space")
    v = figures.latent_view(ev, x0)
    h, w, c = v["latent"].shape
    return "".join(
        [
            _p(
                "A convolutional autoencoder compresses the image into a latent z = E(x) and decodes it back,",
                "x̂ = D(z). It is trained to keep what the eye and the task need and to drop the rest.",
                f"Here a {x0.shape[0]}×{x0.shape[1]}×{x0.shape[2]} image becomes a {h}×{w}×{c} latent:",
                f"{_n(v['compression'])} times fewer numbers. Diffusion then runs on latents, and each UNet step",
                "works on the smaller array.",
            ),
            _fig(
                "latent-channels",
                "the run's AutoencoderKL encode/decode (ldm_jax.explain.figures.latent_view), "
                "ldm_jax.evaluation.metrics.psnr",
                f"Input, reconstruction D(E(x)) (PSNR {v['psnr']:.1f} dB) and the {c} latent channels "
                f"(scaled by the run's factor {ev.model.scale:.3g}, shown from −{LATENT_RANGE:g} to {LATENT_RANGE:g}).",
                report.figure(v["image"], "input x")
                + report.figure(v["reconstruction"], "reconstruction D(E(x))")
                + _latent_tiles(v["latent"], "z"),
            ),
            _fig(
                "latent-flops",
                "ldm_jax.benchmarking.flops.count_flops (ldm_jax.explain.figures.unet_step_flops)",
                "Model FLOPs of one UNet step on one image, the run's UNet applied in pixel space and in latent space.",
                report.table(
                    {
                        "pixel space": f"{v['flops_pixel'] / 1e6:.1f} MFLOPs",
                        "latent space": f"{v['flops_latent'] / 1e6:.1f} MFLOPs",
                        "ratio": f"{v['flops_pixel'] / v['flops_latent']:.1f}×",
                    }
                ),
            ),
        ]
    )


def _reverse(ev, seed: int) -> str:
    if ev is None:
        return _needs_run("the reverse process")
    traj = figures.reverse_trajectory(ev, "density=D", seed)
    n = len(traj["t"])
    picks = np.unique(np.linspace(0, n - 1, min(8, n)).round().astype(int))
    steps = report.image_rows(
        [
            {"caption": caption, "images": [(f"t = {traj['t'][i]}", traj[key][i]) for i in picks]}
            for key, caption in (("xt", "the latent x_t, decoded"), ("x0_hat", "x̂_0 predicted at that step"))
        ]
    )
    same = figures.same_noise_by_density(ev, seed)
    return "".join(
        [
            _p(
                "The data distribution is unknown, so q(x_{t−1} | x_t) cannot be written down; a UNet learns it.",
                f"Its output (this run predicts {ev.model.prediction}) gives x̂_0, its estimate of the clean image;",
                "a sampler steps from x_T ~ N(0, I) down to x_0, each step moving towards the current x̂_0.",
            ),
            _fig(
                "reverse-trajectory",
                "ldm_jax.diffusion.samplers.sample(return_trajectory=True), "
                "forward.x0_eps_from_prediction (ldm_jax.explain.figures.reverse_trajectory)",
                f"One density=D sample, {n} DDIM steps without guidance: the latent x_t decoded, and x̂_0 at that step.",
                steps + report.figure(traj["sample"], "final sample"),
            ),
            _fig(
                "reverse-density",
                "ldm_jax.sampling.generate.make_generate (ldm_jax.explain.figures.same_noise_by_density)",
                f"The same x_T under each density condition ({ev.sampling.num_steps} DDIM steps, guidance "
                f"{ev.sampling.guidance_scale:g}): conditioning controls what is generated.",
                "".join(report.figure(image, condition) for condition, image in same.items()),
            ),
        ]
    )


def _filter(ev, workdir, options: Options) -> str:
    if ev is None:
        return _needs_run("the dense-tissue filter")
    data, labels, keys, outputs = filter_table.filter_inputs(ev, options.edits, ("mass",), EXPLAIN_PAIRS_SEED)
    edits = [filters.EditFilter("sdedit", 0.6, options.guidance)]
    if ev.counterfactual is not None:
        edits.append(filters.EditFilter("counterfactual", 1.0, 1.0))
    outputs.update({f.name: compiled_edit(ev, f)(data["image"], *labels, keys) for f in edits})
    shown = ["threshold filter", *(f.name for f in edits)]
    with_mass = data["has_lesion"]
    measured = {}
    for name, images in outputs.items():
        scores = metrics.reconstruction_metrics(data["counterfactual"][with_mass], images[with_mass])
        measured[name] = {"SSIM to fat-only truth": _n(scores["ssim"].mean()), "PSNR (dB)": _n(scores["psnr"].mean())}
    parts = [
        _p(
            "Dense glandular tissue hides lesions. The filter should give the same breast with the dense tissue",
            "removed and the lesion kept. Phantoms come with the truth: the same breast with the glandular tissue",
            "made fat (the counterfactual). The unsupervised edit encodes the image, noises it part of the way",
            "(SDEdit) and denoises it under density=A; the supervised counterfactual filter, when the run trained",
            "it, is a second UNet that saw (image, fat-only truth) pairs and sees the image at every step; with",
            "its ranking term (rank_pairs) it also learned to draw a mass above the same breast without one,",
            "and with a pixel stem (counterfactual.unet.pixel_stem) it reads the image at full resolution.",
            "A threshold filter that caps intensities is the baseline. Each pair is one seed rendered with and",
            "without a mass, so the lesion is the only difference a reader told where to look can use.",
        ),
        _fig(
            "filter-edits",
            "ldm_jax.evaluation.evaluator.compiled_edit (make_edit), ldm_jax.evaluation.filters, "
            "ldm_jax.data.lesion_pairs.phantom_pairs",
            f"{options.edits} dense held-out phantoms with a mass: input, fat-only truth, "
            + ", ".join(shown)
            + f" ({options.steps} steps).",
            report.image_rows(filter_table.filter_rows(data, outputs, shown, count=options.edits)),
        ),
        _fig(
            "filter-numbers",
            "ldm_jax.evaluation.metrics.reconstruction_metrics",
            f"Measured on the page's {options.edits} images with a mass, against the fat-only truth.",
            report.table(measured),
        ),
    ]
    evaluated = pathlib.Path(workdir) / "eval" / "metrics.json"
    if evaluated.exists():
        table = json.loads(evaluated.read_text()).get("dense_tissue_filters")
        if table:
            parts.append(
                _fig(
                    "filter-evaluation",
                    f"evaluate.py (ldm_jax.evaluation.run), read from {evaluated}",
                    f"evaluate.py's dense-tissue filters on {table['pairs_per_kind']} same-seed pairs per lesion kind "
                    "of this run: known-location detectability (AUC, 95% interval) of masses and calcification "
                    "clusters, similarity to the truth, lesions detected in the truth and still found after the "
                    "filter, and the fraction the phantom classifier calls A or B.",
                    report.table({"dense-tissue filters": _filter_grid(table["filters"])}),
                )
            )
    return "".join(parts)


def _auc(score: dict) -> str:
    return f"{_n(score['auc'], 2)} [{_n(score['low'], 2)}, {_n(score['high'], 2)}]"


def _filter_grid(scores: dict) -> list[list[str]]:
    """One row per filter of ``evaluate.py``'s ``dense_tissue_filters`` metrics."""
    header = ["", "mass AUC", "calcification AUC", "SSIM to truth", "PSNR (dB)", "masses kept", "calcs kept", "A/B"]
    return [header] + [
        [
            name,
            _auc(s["mass_detectability"]),
            _auc(s["calcification_detectability"]),
            _n(s["ssim_to_truth"]),
            _n(s["psnr_to_truth"]),
            _n(s["lesions_kept"]["mass"], 2),
            _n(s["lesions_kept"]["calcification"], 2),
            _n(s["density_a_or_b"], 2),
        ]
        for name, s in scores.items()
    ]


# ----------------------------------------------------------------------------- the page


def _evaluator(workdir, options: Options):
    eval_options = EvaluationOptions(
        steps=options.steps,
        filter_steps=options.steps,
        guidance=options.guidance,
        classifier=options.classifier,
        batch=2 * options.edits,
        seed=options.seed,
    )
    return Evaluator(workdir, eval_options, pathlib.Path(workdir) / "eval")


def build(workdir=None, options: Options = Options(), out=None) -> pathlib.Path:
    """Compute every section and write the page to ``out`` (default ``<workdir>/explain.html``,
    or ``explain.html`` without a run) atomically; returns its path."""
    start = time.perf_counter()
    ev = _evaluator(workdir, options) if workdir else None
    out = pathlib.Path(out or (pathlib.Path(workdir) / "explain.html" if workdir else "explain.html"))
    size = ev.model.image_size if ev else options.size
    schedule = ev.model.schedule if ev else make_schedule("linear", 1000)
    T = schedule.num_steps
    ts = np.unique(np.linspace(0, T - 1, options.frames).round().astype(int))
    if len(ts) != options.frames:
        raise ValueError(f"--frames {options.frames} is more than the schedule's T = {T} timesteps")
    x0 = figures.phantom(size, density="C", finding="mass")
    user_image = read_input(options.image, size)[..., None] if options.image else None
    render = {
        "forward": lambda: _forward(schedule, x0, ts, ev, user_image),
        "chain": lambda: _chain(schedule, x0, options.draws),
        "schedules": lambda: _schedules(schedule, x0, T),
        "horizon": lambda: _horizon(x0, ev, options),
        "latent": lambda: _latent(ev, x0),
        "reverse": lambda: _reverse(ev, options.seed),
        "filter": lambda: _filter(ev, workdir, options),
    }
    body = ["<h1>Latent diffusion models: an intuitive introduction on mammograms</h1>", _intro(workdir, ev)]
    for section, heading in SECTIONS:
        began = time.perf_counter()
        body.append(f'<section id="{section}"><h2>{_esc(heading)}</h2>{render[section]()}</section>')
        _log(f"{section}: {time.perf_counter() - began:.1f} s")
    write_atomic(
        out,
        report.page("Latent diffusion on mammograms, explained", "".join(body), report.SLIDER_SCRIPT, STYLE).encode(),
    )
    _log(f"wrote {out} in {time.perf_counter() - start:.0f} s")
    return out


def _intro(workdir, ev) -> str:
    if ev is None:
        return _p(
            "Every figure below was computed by ldm_jax when this page was built; no trained run was given, so the",
            "sections that need a model say so.",
        )
    m = ev.model
    return _p(
        f"Every figure below was computed by ldm_jax when this page was built, from the run {workdir}",
        f"(diffusion step {m.step}, autoencoder step {m.autoencoder_step}, {m.image_size}×{m.image_size} images,",
        f"conditioned on {', '.join(attributes.ATTRIBUTE_NAMES)}).",
    )
