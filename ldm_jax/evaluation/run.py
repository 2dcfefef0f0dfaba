"""``evaluate(workdir, options)``: every metric of a trained run, and its HTML report.

Sections (each recorded in ``eval/metrics.json``):

- ``reconstruction``: PSNR/SSIM/MS-SSIM of the autoencoder on held-out images; on
  phantoms, the fraction of microcalcification specks still detected after it.
- ``generation``: Fréchet distance, KID and precision/recall of samples against held-out
  images in the phantom classifier's feature space (and InceptionV3's when its weights
  file is given); MS-SSIM diversity of samples and of real images.
- ``conditioning``: the classifier's per-attribute accuracy and confusion matrices on
  samples generated per density class.
- ``dense_tissue_filters`` (phantoms): dense held-out phantoms in same-seed pairs with and
  without a lesion, through every filter (the unedited image, the fat-only truth, a
  threshold filter, the model's edits to density A swept over method, strength and guidance):
  lesion detectability with 95% intervals, similarity to the truth, lesions kept and density
  after filtering (``filters``).
- ``memorization``: each sample's nearest training image by feature distance and by
  MS-SSIM; the fraction above the MS-SSIM threshold and the closest pairs.

Held-out phantoms are the ``mammo_phantoms`` test split's seeds, generated again with
their masks and counterfactuals; training images come from the run's own data source.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax import attributes
from ldm_jax.cli import flag
from ldm_jax.data import lesion_pairs
from ldm_jax.data.imageio import write_atomic
from ldm_jax.diffusion import samplers
from ldm_jax.diffusion.samplers import SamplerConfig
from ldm_jax.diffusion.forward import q_sample
from ldm_jax.evaluation import classifier as clf
from ldm_jax.evaluation import detectability, filters, lesions, metrics, observer, report
from ldm_jax.evaluation.inception import FID_WEIGHTS_ENV, inception_features, load_fid_inception
from ldm_jax.sampling import edit_inputs
from ldm_jax.sampling.generate import decode, denoiser, encode_mode, image_keys, keep_detail, make_edit, make_generate
from ldm_jax.sampling.grid import make_grid, to_pixels
from ldm_jax.sampling.model import load_model

DENSITY_CONDITIONS = tuple(f"density={d}" for d in attributes.ATTRIBUTES["density"])
SECTIONS = ("reconstruction", "generation", "conditioning", "dense_tissue_filters", "memorization")
UNSUPERVISED_EDITS = ("sdedit", "ddim-inversion", "diffedit")
TEST_SEED_OFFSET = 2_000_000_000  # mammo_phantoms' test split (never trained on)
FILTER_PAIRS_SEED = TEST_SEED_OFFSET + 10**6  # the filter table's pairs (detectability.kind_offset)


@dataclasses.dataclass(frozen=True)
class Options:
    """What ``evaluate`` measures and how (``evaluate.py``'s flags)."""

    num: int = flag(128, "generated samples (spread over the density classes)")
    held_out: int = flag(256, "held-out real images")
    train_images: int = flag(2048, "training images searched by the memorization audit")
    steps: int = flag(50, "DDIM steps of samples")
    guidance: float = flag(3.0, "classifier-free guidance scale of samples (1: none)")
    pairs: int = flag(96, "dense same-seed phantom pairs (with / without the lesion) per lesion kind")
    filter_steps: int = flag(10, "DDIM steps of the dense-tissue edits")
    filter_strengths: str = flag("0.2,0.4,0.6,0.8,1.0", "edit strengths swept (fractions of the steps redone)")
    filter_guidance: str = flag("1,3", "edit guidance scales swept")
    filter_methods: str = flag(
        "sdedit,ddim-inversion",
        f"unsupervised edit methods swept, some of {','.join(UNSUPERVISED_EDITS)} (diffedit: 8 more UNet "
        "calls per image; the counterfactual filter is added when trained)",
    )
    batch: int = flag(32, "images per compiled call")
    copy_threshold: float = flag(0.95, "MS-SSIM above which a sample counts as a likely copy")
    classifier: str = flag("", "phantom classifier file (default <out>/phantom_classifier.msgpack, trained if missing)")
    classifier_steps: int = flag(800, "training steps of a new phantom classifier (the recipe README measures)")
    inception_weights: str = flag(
        "", f"standard FID InceptionV3 weights file (default ${FID_WEIGHTS_ENV}; none: no Inception FD)"
    )
    seed: int = flag(0, "root seed")
    sections: str = flag(",".join(SECTIONS), "comma-separated sections to run (default: all)")
    real_images: str = flag(
        "", "PNG/DICOM file or folder of real mammograms to show through the dense-tissue filters (unscored)"
    )
    observer_steps: int = flag(
        0,
        "train a small filter for the mass reader on dense training pairs for this many steps and report "
        "its mass AUC on the table's pairs: how far a filter could go (0: off; 1500: ~3.5 min on 2 cores)",
    )
    observer_pairs: int = flag(3000, "training pairs of the learned observer")


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

    return lesion_pairs.phantom_arrays(generate_phantom(TEST_SEED_OFFSET + i, size) for i in range(num))


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
        self.encode = jax.jit(lambda x: encode_mode(ae, m.ae_params, x, 1.0))
        self.decode = jax.jit(lambda z: decode(ae, m.ae_params, z, 1.0))

    @functools.cached_property
    def counterfactual(self):
        """The run's supervised dense-tissue filter (stage ``counterfactual``), None if not trained."""
        trained = (self.workdir / "counterfactual" / "checkpoints").is_dir()
        return load_model(self.workdir, stage="counterfactual") if trained else None

    def reconstruct(self, images: np.ndarray, model=None) -> np.ndarray:
        """decode(encode(x)) of images ``[N, S, S, 1]`` (posterior mode) through the autoencoder of
        ``model`` (default: the run's diffusion model), in fixed-size batches."""
        if model is None or model is self.model:
            return _batched(lambda x: self.decode(self.encode(x)), (images,), self.options.batch)
        ae, params = model.autoencoder, model.ae_params
        round_trip = jax.jit(lambda x: decode(ae, params, encode_mode(ae, params, x, 1.0), 1.0))
        return _batched(round_trip, (images,), self.options.batch)

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
    return {"mean": metrics.finite_mean(values), "n": int(np.size(values))}


def _sections(options: Options) -> tuple[str, ...]:
    names = tuple(s.strip() for s in options.sections.split(",") if s.strip())
    if not names or set(names) - set(SECTIONS):
        raise ValueError(f"--sections {options.sections!r}: expected a comma-separated subset of {SECTIONS}")
    return names


def evaluate(workdir, options: Options = Options(), out=None) -> dict:
    """Run the chosen sections, write ``<out>/metrics.json`` and ``<out>/report.html``; return the metrics."""
    start = time.perf_counter()
    sections = _sections(options)
    _edit_filters(options)  # bad flags fail before anything is computed
    out = pathlib.Path(out or pathlib.Path(workdir) / "eval")
    out.mkdir(parents=True, exist_ok=True)
    ev = Evaluator(workdir, options, out)
    model, o = ev.model, options
    results: dict = {
        "checkpoint_step": model.step,
        "autoencoder_step": model.autoencoder_step,
        "options": dataclasses.asdict(o),
    }
    html: dict = {"title": f"ldm_jax evaluation: {pathlib.Path(workdir).name} (step {model.step})", "editing": []}

    if not ev.phantoms:
        raise ValueError(
            f"evaluate.py grounds its checks on phantoms; this run trained on {model.config.data.dataset!r}"
        )
    real = held_out_phantoms(o.held_out, model.image_size)
    if "reconstruction" in sections:
        _log(f"{o.held_out} held-out phantoms; reconstruction")
        recon = ev.reconstruct(real["image"])
        scores = metrics.reconstruction_metrics(real["image"], recon)
        results["reconstruction"] = {name: _summary(v) for name, v in scores.items()}
        results["reconstruction"]["calcification_specks"] = lesions.calcification_detectability(
            real["image"], recon, real["mask"], real["breast_mask"], real["labels"][:, 1]
        )
    if sections == ("reconstruction",):
        return _finish(ev, results, html, start, real)

    params, config = ev.classifier()
    results["classifier_held_out"] = clf.accuracy_report(params, config, real["image"], real["labels"])["accuracy"]

    if {"generation", "conditioning", "memorization"} & set(sections):
        _log(f"generating {o.num} samples ({o.steps} steps, guidance {o.guidance})")
        samples, targets = ev.samples(list(DENSITY_CONDITIONS))
        fake_features = clf.features(params, config, samples)
        html["sample_grids"] = {
            c: make_grid(to_pixels(samples[i :: len(DENSITY_CONDITIONS)][:16], 255, np.uint8))
            for i, c in enumerate(DENSITY_CONDITIONS)
        }
        html["trajectory"] = _trajectory(ev)
    if "generation" in sections:
        results["generation"] = _generation(
            real["image"], samples, clf.features(params, config, real["image"]), fake_features, o
        )
    if "conditioning" in sections:
        pred_labels = clf.predict(params, config, samples)["labels"]
        results["conditioning"] = {
            "accuracy": clf.conditioning_accuracy(pred_labels, targets),
            "confusion": {k: v.tolist() for k, v in clf.confusion_matrices(pred_labels, targets).items()},
        }
    if "dense_tissue_filters" in sections:
        _log("dense-tissue filters")
        results["dense_tissue_filters"], rows, html["filter_charts"] = _dense_tissue_filters(ev, params, config)
        html["editing"] += rows
    if "memorization" in sections:
        _log("memorization audit")
        results["memorization"], rows = _memorization(ev, samples, fake_features, params, config)
        html["editing"] += rows
    return _finish(ev, results, html, start, real)


def _finish(ev: Evaluator, results: dict, html: dict, start: float, real: dict) -> dict:
    """Write metrics.json and report.html (with the training curves and forward-diffusion frames)."""
    results["seconds"] = time.perf_counter() - start
    html["metrics"] = results
    html["curves"] = {**_curves(ev.workdir), **html.pop("filter_charts", {})}
    html["forward_diffusion"] = _forward_frames(ev.model, real["image"][0])
    write_atomic(ev.out / "metrics.json", (json.dumps(_jsonable(results), indent=2) + "\n").encode())
    report.write_report(ev.out / "report.html", html)
    _log(f"wrote {ev.out / 'metrics.json'} and {ev.out / 'report.html'} in {results['seconds']:.0f} s")
    return results


def _generation(real_images, samples, real_features, fake_features, o: Options) -> dict:
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
        ri, fi = (_batched(lambda x: inception_features(module, variables, x), (a,), 8) for a in (real_images, samples))
        out["inception_features"] = {"frechet_distance": metrics.frechet_distance(ri, fi)}
    else:
        note = (
            "skipped: give --inception-weights (or $LDM_JAX_FID_WEIGHTS) pointing to the standard FID file "
            "pt_inception-2015-12-05-6726825d.pth for literature-comparable numbers; nothing is downloaded"
        )
        _log(f"InceptionV3 features {note}")
        out["inception_features"] = note
    return out


def _memorization(ev: Evaluator, samples, fake_features, params, config) -> tuple[dict, list]:
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


def _floats(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise ValueError(f"--{name} is empty")
    return values


def _edit_filters(options: Options, counterfactual: bool = False) -> list[filters.EditFilter]:
    methods = [m.strip() for m in options.filter_methods.split(",") if m.strip()]
    unknown = set(methods) - set(UNSUPERVISED_EDITS)
    if unknown or not methods:
        raise ValueError(f"--filter-methods {options.filter_methods!r}: expected some of {UNSUPERVISED_EDITS}")
    strengths = _floats(options.filter_strengths, "filter-strengths")
    if not all(0 < s <= 1 for s in strengths):
        raise ValueError(f"--filter-strengths must be in (0, 1], got {strengths}")
    guidance = _floats(options.filter_guidance, "filter-guidance")
    if not all(g >= 1 for g in guidance):
        raise ValueError(f"--filter-guidance must be >= 1, got {guidance}")
    return filters.sweep(strengths, guidance, methods, counterfactual)


def _dense_tissue_filters(ev: Evaluator, params, config):
    """Every filter on the same dense same-seed pairs (``filters``): the metrics, example rows (and
    the user's real images through the filters, unscored) and the detectability-against-similarity
    charts."""
    o = ev.options
    data, labels, keys, outputs = filter_inputs(ev, o.pairs, lesion_pairs.KINDS, FILTER_PAIRS_SEED)

    def predict_density(images):
        return clf.predict(params, config, images)["labels"][:, 0]

    results = {"pairs_per_kind": o.pairs, "edit_steps": o.filter_steps, "filters": {}}
    edit_filters = _edit_filters(o, counterfactual=ev.counterfactual is not None)
    edits, round_trips = {}, {ev.model.stage: outputs["autoencoder round trip"]}
    if ev.counterfactual is not None:  # its own autoencoder's round trip, for its detail-kept edits
        round_trips[ev.counterfactual.stage] = ev.reconstruct(data["image"], ev.counterfactual)
    for i, f in enumerate(edit_filters):
        start = time.perf_counter()
        edits[f.name] = compiled_edit(ev, f)
        if f.detail:  # the same edit as its change to the input: sweep lists the edit itself first
            edited, round_trip = outputs[f.without_detail.name], round_trips[_edit_model(ev, f).stage]
            outputs[f.name] = np.asarray(keep_detail(data["image"], edited, round_trip))
        else:
            outputs[f.name] = edits[f.name](data["image"], *labels, keys)
        results["filters"][f.name] = {"seconds": time.perf_counter() - start}
        _log(f"edit {i + 1}/{len(edit_filters)}: {f.name} ({results['filters'][f.name]['seconds']:.0f} s)")
    for name, images in outputs.items():
        results["filters"].setdefault(name, {}).update(filters.score(data, images, predict_density))
    shown = shown_filters(edit_filters)
    rows = filter_rows(data, outputs, shown)
    if o.real_images:
        rows += _real_image_rows(ev, edits, shown)
    if o.observer_steps:
        _log(f"learned observer: {o.observer_pairs} training pairs, {o.observer_steps} steps")
        mass_seed = detectability.kind_offset(FILTER_PAIRS_SEED, "mass")
        results["observer"] = observer.ceiling(
            ev.model.image_size, "mass", o.pairs, mass_seed, train_pairs=o.observer_pairs, steps=o.observer_steps
        )
    return results, rows, _filter_charts(results["filters"], edit_filters, results.get("observer"))


def filter_inputs(ev: Evaluator, num: int, kinds, first_seed: int):
    """``(data, labels, keys, outputs)`` of ``num`` dense same-seed pairs per lesion kind (from seed
    ``detectability.kind_offset(first_seed, kind)``): ``filters.stack_pairs``' arrays, the edits' (source, target)
    labels, a noise key per pair, and the baselines' outputs (unedited, fat-only truth, threshold
    filter, autoencoder round trip)."""
    pairs = {
        kind: lesion_pairs.phantom_pairs(num, ev.model.image_size, kind, detectability.kind_offset(first_seed, kind))
        for kind in kinds
    }
    data = filters.stack_pairs(pairs)
    keys = np.asarray(image_keys(jax.random.PRNGKey(ev.options.seed + 1), jnp.asarray(data["pair"])))
    outputs = {
        "unedited": data["image"],
        "fat-only truth": data["counterfactual"],
        "threshold filter": filters.threshold_filter(data["image"], data["breast_mask"]),
        # what every latent edit starts from: decode(encode(x)), i.e. any edit at strength 0
        "autoencoder round trip": ev.reconstruct(data["image"]),
    }
    return data, filters.edit_labels(data["labels"]), keys, outputs


def _edit_model(ev: Evaluator, f: filters.EditFilter):
    """The model an edit runs: the run's counterfactual filter, or its diffusion model."""
    return ev.counterfactual if f.method == "counterfactual" else ev.model


def compiled_edit(ev: Evaluator, f: filters.EditFilter):
    """``edit(images, source_labels, target_labels, keys) -> images`` of one filter, jitted once and
    run in fixed-size batches (the counterfactual filter runs the run's counterfactual UNet)."""
    model = _edit_model(ev, f)
    sampling = SamplerConfig(num_steps=ev.options.filter_steps, prediction=model.prediction, guidance_scale=f.guidance)
    edit = jax.jit(
        make_edit(
            model.unet,
            model.autoencoder,
            model.schedule,
            sampling,
            method=f.method,
            strength=f.strength,
            guide=f.guide,
            detail=f.detail,
        )
    )

    def run(images, source, target, keys):
        return _batched(
            lambda x, s, t, k: edit(model.unet_params, model.ae_params, model.scale, x, s, t, k),
            (images, source, target, keys),
            ev.options.batch,
        )

    return run


def shown_filters(edit_filters) -> list[str]:
    """The filters example rows show: the threshold filter and each edit family at its middle strength."""
    families: dict = {}
    for f in edit_filters:
        families.setdefault(f.family, []).append(f.name)
    return ["threshold filter"] + [names[len(names) // 2] for names in families.values()]


def filter_rows(data, outputs, shown, count: int = 4) -> list[dict]:
    """Example pairs (with-lesion images): input, the fat-only truth and the ``shown`` filters."""
    rows = []
    for i in np.flatnonzero(data["has_lesion"])[:: max(1, int(data["has_lesion"].sum()) // count)][:count]:
        finding = attributes.ATTRIBUTES["finding"][data["finding"][i]]
        rows.append(
            {
                "caption": f"held-out dense phantom with a {finding}: "
                f"{attributes.format_condition(data['labels'][i])} → density=A",
                "images": [(name, outputs[name][i]) for name in ["unedited", "fat-only truth", *shown]],
            }
        )
    return rows


def _real_image_rows(ev: Evaluator, edits: dict, shown) -> list[dict]:
    """The user's real mammograms (``--real-images``) through the ``shown`` filters, unscored (there is
    no ground truth), named by position only; the captions say the models saw phantoms only."""
    paths = edit_inputs.list_inputs(ev.options.real_images)
    images = np.stack([edit_inputs.read_input(p, ev.model.image_size) for p in paths])[..., None]
    source, target = filters.edit_labels(attributes.null_labels(len(images)))  # nothing known; target A
    keys = np.asarray(image_keys(jax.random.PRNGKey(ev.options.seed + 2), jnp.arange(len(images))))
    breast = images[..., 0] > -1.0 + 1e-3
    outputs = {"threshold filter": filters.threshold_filter(images, breast)}
    outputs.update({name: edits[name](images, source, target, keys) for name in shown if name in edits})
    return [
        {
            "caption": f"real image {i + 1} of {len(images)} (not scored: no ground truth). Every model here was "
            f"trained on phantoms only; this shows what it does to a real mammogram, not that it is right.",
            "images": [("input", images[i]), *[(name, outputs[name][i]) for name in shown]],
        }
        for i in range(len(images))
    ]


def _filter_charts(scores: dict, edit_filters, learned_observer: dict | None = None) -> dict:
    """Per lesion kind: detectability (AUC) against SSIM to the fat-only truth, one curve per edit
    family over its strengths, one point per baseline; the learned observer's mass AUC (when
    measured) as a level line."""
    charts = {}
    for kind in lesion_pairs.KINDS:
        series = {
            name: [(scores[name]["ssim_to_truth"], scores[name][f"{kind}_detectability"]["auc"])]
            for name in ("unedited", "fat-only truth", "threshold filter", "autoencoder round trip")
        }
        for f in edit_filters:
            s = scores[f.name]
            series.setdefault(f.family, []).append((s["ssim_to_truth"], s[f"{kind}_detectability"]["auc"]))
        if kind == "mass" and learned_observer:
            series["learned observer of the unedited image"] = [
                (0.0, learned_observer["auc"]),
                (1.0, learned_observer["auc"]),
            ]
        charts[f"{kind} detectability (AUC, y) against SSIM to the fat-only truth (x)"] = series
    return charts


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
