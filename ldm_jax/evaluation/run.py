"""``evaluate(workdir, options)``: every metric of a trained run, and its HTML report.

Sections (each recorded in ``eval/metrics.json``):

- ``reconstruction``: PSNR/SSIM/MS-SSIM of the autoencoder on held-out images; on
  phantoms, the fraction of microcalcification specks still detected after it.
- ``generation``: Fréchet distance, KID and precision/recall of samples against held-out
  images in the phantom classifier's feature space (and InceptionV3's when its weights
  file is given); MS-SSIM diversity of samples and of real images.
- ``conditioning``: the classifier's per-attribute accuracy and confusion matrices on
  samples generated per density class.
- ``dense_tissue_removal`` (phantoms): dense held-out phantoms edited to density A against
  their fat-only counterfactuals (SSIM, PSNR, lesion preservation, density after editing),
  beside two baselines: the unedited image and an intensity-threshold filter.
- ``memorization``: each sample's nearest training image by feature distance and by
  MS-SSIM; the fraction above the MS-SSIM threshold and the closest pairs.

Held-out phantoms are the ``mammo_phantoms`` test split's seeds, generated again with
their masks and counterfactuals; training images come from the run's own data source.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from ldm_jax import attributes
from ldm_jax.cli import flag
from ldm_jax.data.imageio import write_atomic
from ldm_jax.diffusion import samplers
from ldm_jax.diffusion.samplers import SamplerConfig
from ldm_jax.diffusion.forward import q_sample
from ldm_jax.evaluation import classifier as clf
from ldm_jax.evaluation import lesions, metrics, report
from ldm_jax.evaluation.inception import FID_WEIGHTS_ENV, inception_features, load_fid_inception
from ldm_jax.sampling.generate import decode, denoiser, image_keys, make_edit, make_generate
from ldm_jax.sampling.grid import make_grid, to_pixels
from ldm_jax.sampling.model import load_model

DENSITY_CONDITIONS = tuple(f"density={d}" for d in attributes.ATTRIBUTES["density"])
TEST_SEED_OFFSET = 2_000_000_000  # mammo_phantoms' test split (never trained on)


@dataclasses.dataclass(frozen=True)
class Options:
    """What ``evaluate`` measures and how (``evaluate.py``'s flags)."""

    num: int = flag(128, "generated samples (spread over the density classes)")
    held_out: int = flag(256, "held-out real images")
    train_images: int = flag(2048, "training images searched by the memorization audit")
    edits: int = flag(32, "dense phantoms edited to density A")
    steps: int = flag(50, "DDIM steps of samples and edits")
    guidance: float = flag(3.0, "classifier-free guidance scale (1: none)")
    edit_strength: float = flag(0.6, "fraction of the denoising steps the edits redo")
    edit_method: str = flag("sdedit", "how the edits take the inputs to noise", choices=("sdedit", "ddim-inversion"))
    batch: int = flag(32, "images per compiled call")
    copy_threshold: float = flag(0.95, "MS-SSIM above which a sample counts as a likely copy")
    classifier: str = flag("", "phantom classifier file (default <out>/phantom_classifier.msgpack, trained if missing)")
    classifier_steps: int = flag(800, "training steps of a new phantom classifier (the tested recipe)")
    inception_weights: str = flag(
        "", f"standard FID InceptionV3 weights file (default ${FID_WEIGHTS_ENV}; none: no Inception FD)"
    )
    seed: int = flag(0, "root seed")


def _log(message: str) -> None:
    print(f"[evaluate] {message}", file=sys.stderr, flush=True)


def _batched(fn, arrays: tuple, batch: int) -> np.ndarray:
    """``fn(*chunk)`` over fixed-size chunks of ``arrays`` (the last padded), concatenated."""
    n = len(arrays[0])
    out = []
    for start in range(0, n, batch):
        chunk = [a[start : start + batch] for a in arrays]
        rows = len(chunk[0])
        out.append(np.asarray(fn(*[metrics.pad_batch(c, batch) for c in chunk]))[:rows])
    return np.concatenate(out)


def held_out_phantoms(num: int, size: int):
    """The first ``num`` phantoms of the ``mammo_phantoms`` test split, as arrays (see lesions)."""
    from ldm_jax.data.phantoms import generate_phantom

    return lesions.phantom_arrays(generate_phantom(TEST_SEED_OFFSET + i, size) for i in range(num))


def training_images(model, workdir: pathlib.Path, num: int) -> np.ndarray:
    """Up to ``num`` training images ``[N, S, S, 1]`` in [-1, 1] from the run's data source."""
    from ldm_jax.data.pipeline import InputPipeline
    from ldm_jax.data.source import open_source
    from ldm_jax.parallel import make_mesh

    source = open_source(model.config, workdir)
    mesh = make_mesh(1, jax.devices()[:1])
    batch = min(num, len(source))
    pipeline = InputPipeline(
        source,
        global_batch_size=batch,
        mesh=mesh,
        shuffle=False,
        num_epochs=1,
        image_size=model.image_size,
        random_flip=False,
        read_threads=1,
        prefetch_batches=1,
    )
    return np.asarray(next(pipeline)["image"])


def threshold_filter(images: np.ndarray, breast_masks: np.ndarray, quantile: float = 0.3) -> np.ndarray:
    """Baseline dense-tissue filter: inside the breast, intensities above the breast's
    ``quantile`` are pulled down to it, and the fine detail (image − Gaussian blur, σ = 1 px)
    is added back so small bright lesions survive."""
    out = images.copy()
    for i, (x, breast) in enumerate(zip(images[..., 0], breast_masks)):
        level = np.quantile(x[breast], quantile)
        detail = x - ndimage.gaussian_filter(x, 1.0)
        out[i, ..., 0] = np.where(breast, np.minimum(x, level) + detail, x)
    return np.clip(out, -1.0, 1.0)


class Evaluator:
    """Holds the model, jitted functions and the classifier for one evaluation."""

    def __init__(self, workdir, options: Options, out: pathlib.Path):
        self.workdir, self.options, self.out = pathlib.Path(workdir), options, out
        self.model = load_model(self.workdir)
        self.phantoms = self.model.config.data.dataset == "mammo_phantoms"
        m = self.model
        self.sampling = SamplerConfig(num_steps=options.steps, prediction=m.prediction, guidance_scale=options.guidance)
        self.generate = jax.jit(make_generate(m.unet, m.autoencoder, m.schedule, m.latent_shape, self.sampling))
        ae = m.autoencoder
        self.encode = jax.jit(lambda x: ae.apply({"params": m.ae_params}, x, method=ae.encode).mode())
        self.decode = jax.jit(lambda z: decode(ae, m.ae_params, z, 1.0))

    def samples(self, conditions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``num`` images cycling over ``conditions``, and their labels."""
        n = self.options.num
        labels = np.stack([attributes.parse_condition(conditions[i % len(conditions)]) for i in range(n)])
        keys = np.asarray(image_keys(jax.random.PRNGKey(self.options.seed), jnp.arange(n)))
        m = self.model
        images = _batched(
            lambda lab, k: self.generate(m.unet_params, m.ae_params, m.scale, lab, k),
            (labels, keys),
            self.options.batch,
        )
        return images, labels

    @property
    def classifier_file(self) -> pathlib.Path:
        """``options.classifier``, or ``<out>/phantom_classifier.msgpack``."""
        return pathlib.Path(self.options.classifier or self.out / "phantom_classifier.msgpack")

    def classifier(self):
        """``(params, config)``: loaded, or trained on phantoms at the model's size and saved."""
        path = self.classifier_file
        if path.exists():
            params, config = clf.load_classifier(path)
            if config.image_size != self.model.image_size:
                raise ValueError(
                    f"classifier {path} is for {config.image_size}px images, the model makes {self.model.image_size}px"
                )
            return params, config
        if not self.phantoms:
            raise ValueError("no phantom classifier given (--classifier) and the run is not on phantoms")
        _log(f"training the phantom classifier at {self.model.image_size}px (saved to {path})")
        config = clf.ClassifierConfig(image_size=self.model.image_size)
        params = clf.train_on_phantoms(config, steps=self.options.classifier_steps)
        clf.save_classifier(path, params, config)
        return params, config


def _summary(values) -> dict:
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    return {"mean": float(finite.mean()) if finite.size else float("inf"), "n": int(values.size)}


def evaluate(workdir, options: Options = Options(), out=None) -> dict:
    """Run every section, write ``<out>/metrics.json`` and ``<out>/report.html``; return the metrics."""
    start = time.perf_counter()
    out = pathlib.Path(out or pathlib.Path(workdir) / "eval")
    out.mkdir(parents=True, exist_ok=True)
    ev = Evaluator(workdir, options, out)
    model, o = ev.model, options
    results: dict = {
        "checkpoint_step": model.step,
        "autoencoder_step": model.autoencoder_step,
        "options": dataclasses.asdict(o),
    }
    html: dict = {"title": f"ldm_jax evaluation: {pathlib.Path(workdir).name} (step {model.step})"}

    if not ev.phantoms:
        raise ValueError(
            f"evaluate.py grounds its checks on phantoms; this run trained on {model.config.data.dataset!r}"
        )
    real = held_out_phantoms(o.held_out, model.image_size)
    _log(f"{o.held_out} held-out phantoms; reconstruction")
    recon = _batched(lambda x: ev.decode(ev.encode(x)), (real["image"],), o.batch)
    scores = metrics.reconstruction_metrics(real["image"], recon)
    results["reconstruction"] = {name: _summary(v) for name, v in scores.items()}
    results["reconstruction"]["calcification_specks"] = lesions.calcification_detectability(
        real["image"], recon, real["mask"], real["breast_mask"], real["labels"][:, 1]
    )

    params, config = ev.classifier()
    results["classifier_held_out"] = clf.accuracy_report(params, config, real["image"], real["labels"])["accuracy"]

    _log(f"generating {o.num} samples ({o.steps} steps, guidance {o.guidance})")
    samples, targets = ev.samples(list(DENSITY_CONDITIONS))
    real_features, fake_features = clf.features(params, config, real["image"]), clf.features(params, config, samples)
    kid_mean, kid_std = metrics.kernel_inception_distance(
        real_features, fake_features, num_subsets=50, subset_size=min(len(samples), len(real_features))
    )
    results["generation"] = {
        "phantom_classifier_features": {
            "frechet_distance": metrics.frechet_distance(real_features, fake_features),
            "kid_mean": kid_mean,
            "kid_std": kid_std,
            **metrics.precision_recall(real_features, fake_features),
        },
        "ms_ssim_diversity": {
            "samples": metrics.ms_ssim_diversity(samples, num_pairs=256),
            "held_out_real": metrics.ms_ssim_diversity(real["image"], num_pairs=256),
        },
    }
    if o.inception_weights or os.environ.get(FID_WEIGHTS_ENV):
        module, variables = load_fid_inception(o.inception_weights or None)
        ri, fi = (
            _batched(lambda x: inception_features(module, variables, x), (a,), 8) for a in (real["image"], samples)
        )
        results["generation"]["inception_features"] = {"frechet_distance": metrics.frechet_distance(ri, fi)}
    else:
        note = (
            "skipped: give --inception-weights (or $LDM_JAX_FID_WEIGHTS) pointing to the standard FID file "
            "pt_inception-2015-12-05-6726825d.pth for literature-comparable numbers; nothing is downloaded"
        )
        _log(f"InceptionV3 features {note}")
        results["generation"]["inception_features"] = note

    pred_labels = clf.predict(params, config, samples)["labels"]
    results["conditioning"] = {
        "accuracy": clf.conditioning_accuracy(pred_labels, targets),
        "confusion": {k: v.tolist() for k, v in clf.confusion_matrices(pred_labels, targets).items()},
    }

    _log("dense-tissue removal")
    results["dense_tissue_removal"], html["editing"] = _dense_tissue_removal(ev, params, config)

    _log("memorization audit")
    train = training_images(model, ev.workdir, o.train_images)
    index, distance = metrics.nearest_neighbours(fake_features, clf.features(params, config, train))
    ms_index, ms_score = metrics.nearest_by_ms_ssim(samples, train)
    closest = np.argsort(-ms_score)[:4]
    results["memorization"] = {
        "training_images_searched": len(train),
        "ms_ssim_threshold": o.copy_threshold,
        "fraction_above_threshold": metrics.fraction_above(ms_score, o.copy_threshold),
        "nearest_ms_ssim": {"max": float(ms_score.max()), "mean": float(ms_score.mean())},
        "nearest_feature_distance": {"min": float(distance.min()), "mean": float(distance.mean())},
        "feature_and_ms_ssim_agree": float(np.mean(index == ms_index)),
    }
    html["editing"] += [
        {
            "caption": f"memorization: sample {i} and its nearest training image (MS-SSIM {ms_score[i]:.3f})",
            "images": [("sample", samples[i]), ("nearest training image", train[ms_index[i]])],
        }
        for i in closest
    ]

    results["seconds"] = time.perf_counter() - start
    html["metrics"] = results
    html["curves"] = _curves(ev.workdir)
    html["sample_grids"] = {
        c: make_grid(to_pixels(samples[i :: len(DENSITY_CONDITIONS)][:16], 255, np.uint8))
        for i, c in enumerate(DENSITY_CONDITIONS)
    }
    html["forward_diffusion"] = _forward_frames(model, real["image"][0])
    html["trajectory"] = _trajectory(ev)
    write_atomic(out / "metrics.json", (json.dumps(_jsonable(results), indent=2) + "\n").encode())
    report.write_report(out / "report.html", html)
    _log(f"wrote {out / 'metrics.json'} and {out / 'report.html'} in {results['seconds']:.0f} s")
    return results


def dense_edits(ev: Evaluator) -> tuple[dict, dict]:
    """``(data, candidates)``: ``options.edits`` dense (C/D) held-out phantoms with a finding
    (``lesions.phantom_arrays``), and ``{"edit", "unedited", "threshold_filter"}``: each image
    edited to density A, as it is, and through ``threshold_filter``."""
    from ldm_jax.data.phantoms import generate_phantom

    o, m = ev.options, ev.model
    phantoms = [
        generate_phantom(
            TEST_SEED_OFFSET + 10**6 + i, m.image_size, density=("C", "D")[i % 2], finding=(1, 2)[i // 2 % 2]
        )
        for i in range(o.edits)
    ]
    data = lesions.phantom_arrays(phantoms)
    edit = jax.jit(
        make_edit(m.unet, m.autoencoder, m.schedule, ev.sampling, method=o.edit_method, strength=o.edit_strength)
    )
    source, target = data["labels"], data["labels"].copy()
    target[:, 0] = 0
    keys = np.asarray(image_keys(jax.random.PRNGKey(o.seed + 1), jnp.arange(o.edits)))
    edited = _batched(
        lambda x, s, t, k: edit(m.unet_params, m.ae_params, m.scale, x, s, t, k),
        (data["image"], source, target, keys),
        o.batch,
    )
    candidates = {
        "edit": edited,
        "unedited": data["image"],
        "threshold_filter": threshold_filter(data["image"], data["breast_mask"]),
    }
    return data, candidates


def edit_rows(data: dict, candidates: dict, count: int = 6) -> list[dict]:
    """The report's ``editing`` rows of the first ``count`` ``dense_edits``: input, edit, fat-only
    truth and threshold filter."""
    return [
        {
            "caption": f"held-out phantom {i}: {attributes.format_condition(data['labels'][i])} → density=A",
            "images": [
                ("input", data["image"][i]),
                ("edit", candidates["edit"][i]),
                ("ground truth (fat only)", data["counterfactual"][i]),
                ("threshold filter", candidates["threshold_filter"][i]),
            ],
        }
        for i in range(min(count, len(data["image"])))
    ]


def _dense_tissue_removal(ev: Evaluator, params, config):
    """Dense (C/D) held-out phantoms with a finding, edited to density A, against their counterfactuals."""
    o = ev.options
    data, candidates = dense_edits(ev)
    out = {"method": o.edit_method, "strength": o.edit_strength, "images": o.edits}
    for name, images in candidates.items():
        scores = metrics.reconstruction_metrics(data["counterfactual"], images)
        density = clf.predict(params, config, images)["labels"][:, 0]
        out[name] = {
            "ssim_to_counterfactual": _summary(scores["ssim"]),
            "psnr_to_counterfactual": _summary(scores["psnr"]),
            "predicted_density_fraction": (np.bincount(density, minlength=4) / len(images)).tolist(),
            "lesions_kept": lesions.lesion_preservation(
                data["counterfactual"], images, data["mask"], data["breast_mask"], data["labels"][:, 1]
            ),
        }
    return out, edit_rows(data, candidates)


def _curves(workdir: pathlib.Path) -> dict:
    curves = {}
    for stage in ("autoencoder", "diffusion"):
        path = workdir / stage / "metrics.jsonl"
        if path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            curves[f"{stage} loss"] = {"loss": [(r["step"], r["loss"]) for r in rows if "loss" in r]}
    return curves


def _forward_frames(model, image: np.ndarray, count: int = 11) -> dict:
    """q_sample of one image at ``count`` timesteps from 0 to T − 1 (pixel space, one noise draw)."""
    ts = np.linspace(0, model.schedule.num_steps - 1, count).round().astype(int)
    noise = jax.random.normal(jax.random.PRNGKey(0), image.shape)
    frames = [
        np.clip(np.asarray(q_sample(model.schedule, image[None], jnp.asarray([t]), noise[None]))[0], -1, 1) for t in ts
    ]
    return {"t": ts.tolist(), "frames": frames}


def _trajectory(ev: Evaluator, frames: int = 8) -> dict:
    """One sample's latents from x_T to x_0 (density D, unguided), decoded, at ``frames`` points."""
    m, o = ev.model, ev.options
    labels = jnp.asarray(attributes.parse_condition("density=D"))[None]
    keys = image_keys(jax.random.PRNGKey(o.seed), jnp.arange(1))
    x_T = jax.random.normal(keys[0], (1, *m.latent_shape))

    unguided = dataclasses.replace(ev.sampling, guidance_scale=1.0)
    _, path = samplers.sample(
        denoiser(m.unet, m.unet_params), m.schedule, x_T, keys, unguided, cond=labels, return_trajectory=True
    )
    picks = np.linspace(0, len(path) - 1, frames).round().astype(int)
    images = [np.asarray(ev.decode(path[i] / m.scale))[0] for i in picks]
    return {"captions": [f"step {i} of {len(path) - 1}" for i in picks], "frames": images}


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else str(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value
