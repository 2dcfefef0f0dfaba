"""``evaluate.py``'s options (``Options``) and what they choose: the sections to run and the
dense-tissue filters swept (``filters.sweep``), checked before anything is computed."""

from __future__ import annotations

import dataclasses

from ldm_jax.cli import flag
from ldm_jax.evaluation import filters
from ldm_jax.evaluation.inception import FID_WEIGHTS_ENV
from ldm_jax.sampling.generate import EDITS

SECTIONS = ("reconstruction", "generation", "conditioning", "dense_tissue_filters", "memorization")
UNSUPERVISED_EDITS = tuple(name for name, method in EDITS.items() if method.stage == "diffusion")


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


def chosen_sections(options: Options) -> tuple[str, ...]:
    """The ``SECTIONS`` that ``options.sections`` names, in its order."""
    names = tuple(s.strip() for s in options.sections.split(",") if s.strip())
    if not names or set(names) - set(SECTIONS):
        raise ValueError(f"--sections {options.sections!r}: expected a comma-separated subset of {SECTIONS}")
    return names


def _floats(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise ValueError(f"--{name} is empty")
    return values


def edit_filters(options: Options, counterfactual: bool = False) -> list[filters.EditFilter]:
    """``filters.sweep`` of the methods, strengths and guidance scales the options name (with the
    ``counterfactual`` filter when the run trained it)."""
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
