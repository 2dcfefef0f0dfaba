"""``evaluate``'s ``dense_tissue_filters`` section: every filter (``filters``) on the same dense
same-seed pairs from ``seeds.FILTER_PAIRS_SEED``, scored, with example rows, the user's real images
through the filters (unscored) and the detectability-against-similarity charts."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax import attributes
from ldm_jax.data import lesion_pairs
from ldm_jax.data.seeds import FILTER_PAIRS_SEED, kind_offset
from ldm_jax.evaluation import classifier as clf
from ldm_jax.evaluation import filters, observer
from ldm_jax.evaluation.evaluator import Evaluator, compiled_edit, log
from ldm_jax.evaluation.options import edit_filters
from ldm_jax.sampling import edit_inputs
from ldm_jax.sampling.generate import image_keys, keep_detail

BASELINES = ("unedited", "fat-only truth", "threshold filter", "autoencoder round trip")


def dense_tissue_filters(ev: Evaluator, params, config) -> tuple[dict, list, dict]:
    """``(metrics, example rows, charts)`` of every filter on the table's pairs; ``params, config``
    are the phantom classifier's (the density after filtering)."""
    o = ev.options
    data, labels, keys, outputs = filter_inputs(ev, o.pairs, lesion_pairs.KINDS, FILTER_PAIRS_SEED)

    def predict_density(images):
        return clf.predict(params, config, images)["labels"][:, 0]

    results = {"pairs_per_kind": o.pairs, "edit_steps": o.filter_steps, "filters": {}}
    swept = edit_filters(o, counterfactual=ev.counterfactual is not None)
    edits = _run_edits(ev, swept, data, labels, keys, outputs, results["filters"])
    for name, images in outputs.items():
        results["filters"].setdefault(name, {}).update(filters.score(data, images, predict_density))
    shown = shown_filters(swept)
    rows = filter_rows(data, outputs, shown)
    if o.real_images:
        rows += _real_image_rows(ev, edits, shown)
    if o.observer_steps:
        log(f"learned observer: {o.observer_pairs} training pairs, {o.observer_steps} steps")
        mass_seed = kind_offset(FILTER_PAIRS_SEED, "mass")
        results["observer"] = observer.ceiling(
            ev.model.image_size, "mass", o.pairs, mass_seed, train_pairs=o.observer_pairs, steps=o.observer_steps
        )
    return results, rows, _filter_charts(results["filters"], swept, results.get("observer"))


def _run_edits(ev: Evaluator, swept, data, labels, keys, outputs: dict, timings: dict) -> dict:
    """Each of the ``swept`` filters on the pairs, into ``outputs`` (its seconds into ``timings``);
    returns the compiled edits by filter name. A detail-kept filter reuses its edit's output
    (``filters.sweep`` lists the edit first) against its model's autoencoder round trip."""
    edits, round_trips = {}, {ev.model.stage: outputs["autoencoder round trip"]}
    if ev.counterfactual is not None:  # its own autoencoder's round trip, for its detail-kept edits
        round_trips[ev.counterfactual.stage] = ev.reconstruct(data["image"], ev.counterfactual)
    for i, f in enumerate(swept):
        start = time.perf_counter()
        edits[f.name] = compiled_edit(ev, f)
        if f.detail:
            edited, round_trip = outputs[f.without_detail.name], round_trips[ev.edit_model(f).stage]
            outputs[f.name] = np.asarray(keep_detail(data["image"], edited, round_trip))
        else:
            outputs[f.name] = edits[f.name](data["image"], *labels, keys)
        timings[f.name] = {"seconds": time.perf_counter() - start}
        log(f"edit {i + 1}/{len(swept)}: {f.name} ({timings[f.name]['seconds']:.0f} s)")
    return edits


def filter_inputs(ev: Evaluator, num: int, kinds, first_seed: int):
    """``(data, labels, keys, outputs)`` of ``num`` dense same-seed pairs per lesion kind (from seed
    ``seeds.kind_offset(first_seed, kind)``): ``filters.stack_pairs``' arrays, the edits' (source, target)
    labels, a noise key per pair, and the ``BASELINES``' outputs."""
    pairs = {
        kind: lesion_pairs.phantom_pairs(num, ev.model.image_size, kind, kind_offset(first_seed, kind))
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


def shown_filters(swept) -> list[str]:
    """The filters example rows show: the threshold filter and each edit family at its middle strength."""
    families: dict = {}
    for f in swept:
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


def _filter_charts(scores: dict, swept, learned_observer: dict | None = None) -> dict:
    """Per lesion kind: detectability (AUC) against SSIM to the fat-only truth, one curve per edit
    family over its strengths, one point per baseline; the learned observer's mass AUC (when
    measured) as a level line."""
    charts = {}
    for kind in lesion_pairs.KINDS:
        series = {
            name: [(scores[name]["ssim_to_truth"], scores[name][f"{kind}_detectability"]["auc"])] for name in BASELINES
        }
        for f in swept:
            s = scores[f.name]
            series.setdefault(f.family, []).append((s["ssim_to_truth"], s[f"{kind}_detectability"]["auc"]))
        if kind == "mass" and learned_observer:
            series["learned observer of the unedited image"] = [
                (0.0, learned_observer["auc"]),
                (1.0, learned_observer["auc"]),
            ]
        charts[f"{kind} detectability (AUC, y) against SSIM to the fat-only truth (x)"] = series
    return charts
