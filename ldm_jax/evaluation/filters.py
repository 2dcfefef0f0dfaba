"""Dense-tissue filters measured on same-seed phantom pairs (``evaluate.py``'s
``dense_tissue_filters`` section).

Every filter sees the same images: dense (C/D) held-out phantoms in pairs with and without a
mass or a calcification cluster (``lesion_pairs.phantom_pairs``). Each is scored by

- known-location detectability of masses and of calcification clusters (paired AUC with its
  95% bootstrap interval, ``detectability``);
- SSIM and PSNR to the fat-only truth (the phantom's counterfactual);
- lesions kept: of the lesions a detector finds in the truth, the fraction it still finds
  in the filtered image (``lesions.lesion_preservation``);
- the phantom classifier's density after filtering (fraction called A or B).

Filters: the unedited image, the fat-only truth itself (the ideal), an intensity-threshold
filter, the autoencoder's round trip decode(encode(x)) (where every latent edit starts), the
model's edits to density A (``sampling.generate.make_edit``) swept over method, strength and
guidance, and, when the run trained it, the supervised ``counterfactual`` filter swept over
strength; and every edit again with its detail kept (x + D(ẑ) − D(E(x)), ``generate.keep_detail``),
which takes the autoencoder's round-trip loss out of the edit. The edits are told the density,
view and laterality but not the finding, and both images of a pair get the same labels and the
same noise key: an edit that knew whether a lesion is present could paint one, and the pair
would no longer differ only in the lesion.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from ldm_jax import attributes
from ldm_jax.evaluation import detectability, lesions, metrics
from ldm_jax.sampling.generate import Edit

FINDING = attributes.ATTRIBUTE_NAMES.index("finding")
DENSITY = attributes.ATTRIBUTE_NAMES.index("density")


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


@dataclasses.dataclass(frozen=True)
class EditFilter:
    """One model edit to density A: ``make_edit``'s method, strength, guidance scale and guide."""

    method: str
    strength: float
    guidance: float
    guide: str = "all"
    detail: bool = False  # returned as its change to the input (``generate.keep_detail``)

    @property
    def family(self) -> str:
        """The curve this edit belongs to (all its settings but the strength)."""
        guide = ", density-only guidance" if self.guide == "density" else ""
        detail = ", detail kept" if self.detail else ""
        return f"{self.method} g={self.guidance:g}{guide}{detail}"

    @property
    def edit(self) -> Edit:
        """``make_edit``'s settings of this filter (its guidance scale goes to the sampler)."""
        return Edit(self.method, self.strength, self.guide, self.detail)

    @property
    def without_detail(self) -> EditFilter:
        return dataclasses.replace(self, detail=False)

    @property
    def name(self) -> str:
        return f"{self.family} s={self.strength:g}"


def sweep(strengths, guidances, methods, counterfactual: bool = False) -> list[EditFilter]:
    """Every (method, guidance, strength) of the unsupervised edits, plus SDEdit with density-only
    guidance at each guided scale (> 1): guidance that pushes along density alone, the other
    attributes held; with ``counterfactual``, the supervised filter (unguided) at each strength.
    Then each of them again with its detail kept (``EditFilter.detail``)."""
    filters = [EditFilter(m, s, g) for m in methods for g in guidances for s in strengths]
    if "sdedit" in methods:
        filters += [EditFilter("sdedit", s, g, "density") for g in guidances if g > 1 for s in strengths]
    if counterfactual:
        filters += [EditFilter("counterfactual", s, 1.0) for s in strengths]
    return filters + [dataclasses.replace(f, detail=True) for f in filters]


def edit_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(source, target) labels of an edit that must not know the finding: the finding nulled in
    both, the target's density A."""
    source = attributes.without(np.asarray(labels, np.int32), "finding")
    target = source.copy()
    target[:, DENSITY] = 0
    return source, target


def stack_pairs(pairs: dict) -> dict[str, np.ndarray]:
    """One set of arrays from ``{kind: phantom_pairs(...)}``: per kind its images with the lesion,
    then the same seeds without it; ``labels`` are the with-lesion phantom's for both images of a
    pair (the edits' conditions), ``pair`` indexes the pair (for noise keys) and ``kind``/``has_lesion``
    say what each row is. Masks are the with-lesion phantom's (where the reader looks)."""
    rows: dict[str, list] = {k: [] for k in ("image", "counterfactual", "mask", "breast_mask", "labels", "finding")}
    kinds, has_lesion, pair = [], [], []
    offset = 0
    for kind, p in pairs.items():
        n = len(p["with"]["image"])
        for lesion, arrays in ((True, p["with"]), (False, p["without"])):
            for key in ("image", "counterfactual"):
                rows[key].append(arrays[key])
            rows["mask"].append(p["with"]["mask"])
            rows["breast_mask"].append(p["with"]["breast_mask"])
            rows["labels"].append(p["with"]["labels"])
            rows["finding"].append(arrays["labels"][:, FINDING])
            kinds += [kind] * n
            has_lesion += [lesion] * n
            pair.append(offset + np.arange(n))
        offset += n
    out = {k: np.concatenate(v) for k, v in rows.items()}
    out.update(kind=np.array(kinds), has_lesion=np.array(has_lesion), pair=np.concatenate(pair))
    return out


def score(data: dict, filtered: np.ndarray, predict_density, **bootstrap) -> dict:
    """Every measure of the module docstring for ``filtered`` images (rows of ``stack_pairs``'
    ``data``); ``predict_density(images) -> [N]`` density indices."""
    out = {}
    for kind in dict.fromkeys(data["kind"]):
        rows = data["kind"] == kind
        with_lesion, without = rows & data["has_lesion"], rows & ~data["has_lesion"]
        out[f"{kind}_detectability"] = detectability.detectability(
            filtered[with_lesion],
            filtered[without],
            data["mask"][with_lesion],
            data["breast_mask"][with_lesion],
            kind,
            **bootstrap,
        )
    similarity = metrics.reconstruction_metrics(data["counterfactual"], filtered)
    kept = lesions.lesion_preservation(
        *(a[data["has_lesion"]] for a in (data["counterfactual"], filtered, data["mask"], data["breast_mask"])),
        data["finding"][data["has_lesion"]],
    )
    density = np.asarray(predict_density(filtered))
    out.update(
        ssim_to_truth=float(np.mean(similarity["ssim"])),
        psnr_to_truth=metrics.finite_mean(similarity["psnr"]),  # inf for the truth itself
        lesions_kept={kind: kept[kind]["fraction"] for kind in kept},
        density_a_or_b=float(np.mean(density <= 1)),
    )
    return out
