"""The counterfactual stage's ranking term: train the filter for the reader that scores it.

The filter table scores a dense-tissue filter by how well a reader told where a mass is separates
breasts with the mass from breasts without it (``evaluation.detectability``): the ring contrast
c(x) = mean(x | lesion) − mean(x | band around it), and the AUC over different breasts. The
regression loss alone barely rewards a faint, uncertain mass: its squared error grows with the
square of the mass's contrast (docs/filter.md). So with
``rank_pairs`` = P each batch also holds P matched dense pairs, one breast rendered with a mass and
without it (``lesion_pairs.phantom_pairs``; fresh seeds every batch, from
``seeds.TRAINING_PAIRS_SEED`` on), and the loss adds the logistic surrogate of the
batch's AUC on the decoded x0 predictions x̂0 = D(ẑ0 / s):

    L_rank = (1/P²) Σ_{i,j} softplus(−(c(x̂0⁺_i) − c(x̂0⁻_j)) / τ)

(RankNet, Burges et al. 2005). Since softplus(−d/τ) ≥ log 2 · 1[d ≤ 0], L_rank / log 2 bounds
1 − AUC of the batch's pairs from above. Both images of a pair are denoised from one z_t: the
lesion-free target noised with one t, drawn from ⌈rank_min_t · T⌉ … T − 1, and one ε. z_t then
cannot tell them apart, and the mass's presence in the prediction has to come from the source.

With a pixel stem (``models.source_stem``) and ``rank_map_weight`` > 0 the loss also adds
``rank_map_weight`` · L_rank of the stem's evidence map m in place of x̂0, at τ = 1 (m's scale is
learned): deep supervision of the part of the filter that must find the mass, the objective of
the learned observer (``evaluation.observer``).
"""

from __future__ import annotations

import jax
import numpy as np

from ldm_jax import parallel
from ldm_jax.data.mass_reader import ring_contrast

PAIR_KIND = "mass"  # the reader the term trains for: masses' ring contrast


def pair_arrays(first_pair: int, num: int, size: int) -> dict[str, np.ndarray]:
    """``num`` matched dense mass pairs from training-pair seed ``first_pair`` on: ``image``,
    ``counterfactual`` ``[num, 2, size, size, 1]`` in [-1, 1] and ``labels`` ``[num, 2, A]`` (index
    0 with the mass, 1 without), and the reader's ``lesion`` and ``band`` masks ``[num, size, size, 1]``
    as float32."""
    from ldm_jax.data import lesion_pairs, seeds  # the phantom generator needs scipy; the train step does not

    pairs = lesion_pairs.phantom_pairs(num, size, PAIR_KIND, seeds.TRAINING_PAIRS_SEED + first_pair)
    both = (pairs["with"], pairs["without"])
    lesion, breast = pairs["with"]["mask"], pairs["with"]["breast_mask"]
    band = np.stack([lesion_pairs.mass_band(m, b) for m, b in zip(lesion, breast)])
    return {
        **{key: np.stack([p[key] for p in both], axis=1) for key in ("image", "counterfactual", "labels")},
        "lesion": lesion[..., None].astype(np.float32),
        "band": band[..., None].astype(np.float32),
    }


class WithLesionPairs:
    """``pipeline``'s batches, each with ``"pairs"``: ``pair_arrays`` of the next ``per_batch``
    training pairs, sharded over the mesh along the pair axis. Resumable: its state is the
    pipeline's plus the number of pairs drawn, so a resumed run draws the pairs an uninterrupted
    one would."""

    STATE_KEY = "lesion_pairs_drawn"

    def __init__(self, pipeline, mesh, per_batch: int, image_size: int):
        parallel.check_batch_size(per_batch, mesh, "rank_pairs")
        self.pipeline, self.per_batch, self.image_size = pipeline, per_batch, image_size
        self.sharding = parallel.batch_sharding(mesh)
        self.drawn = 0

    def __iter__(self) -> WithLesionPairs:
        return self

    def __next__(self) -> dict:
        batch = next(self.pipeline)
        pairs = pair_arrays(self.drawn, self.per_batch, self.image_size)
        self.drawn += self.per_batch
        return {**batch, "pairs": {key: parallel.global_array(a, self.sharding) for key, a in pairs.items()}}

    def get_state(self) -> dict:
        return {**self.pipeline.get_state(), self.STATE_KEY: self.drawn}

    def set_state(self, state: dict) -> None:
        from ldm_jax.data.pipeline import IteratorMismatchError

        state = dict(state)
        if not isinstance(state.get(self.STATE_KEY), int):
            raise IteratorMismatchError("the checkpoint holds no count of the lesion pairs drawn (rank_pairs)")
        drawn = state.pop(self.STATE_KEY)
        self.pipeline.set_state(state)
        self.drawn = drawn


def ranking_loss(positives, negatives, temperature: float):
    """``(1/(PN)) Σ_{i,j} softplus(−(s⁺_i − s⁻_j) / τ)``: the logistic surrogate of 1 − AUC (module docstring)."""
    return jax.nn.softplus(-(positives[:, None] - negatives[None, :]) / temperature).mean()


def map_ranking_loss(sown, lesion, band):
    """L_rank of the evidence maps the pixel stem sowed (``unet.apply(..., mutable=["intermediates"])``),
    read on the last ``len(lesion)`` rows (the pairs', with index 0 of each pair the mass) at their
    float masks ``[2P, H, W, 1]``; τ = 1."""
    maps = sown["intermediates"]["source_stem"]["source_map"][0][-len(lesion) :]
    contrast = ring_contrast(maps, lesion, band).reshape(-1, 2)
    return ranking_loss(contrast[:, 0], contrast[:, 1], 1.0)


def check(cfg, pixel_stem: int = 0) -> None:
    """Refuse the counterfactual stage's ranking settings that cannot train, before anything is compiled."""
    if cfg.rank_map_weight and not (cfg.rank_pairs and pixel_stem):
        raise ValueError(
            f"rank_map_weight={cfg.rank_map_weight}: ranks the pixel stem's map on the ranking pairs; it needs "
            f"rank_pairs > 0 (got {cfg.rank_pairs}) and unet.pixel_stem > 0 (got {pixel_stem})"
        )
    if not cfg.rank_pairs:
        return
    if cfg.rank_pairs < 0 or cfg.rank_pairs % cfg.accum_steps:
        raise ValueError(
            f"rank_pairs={cfg.rank_pairs}: expected a positive multiple of accum_steps={cfg.accum_steps}, "
            "each micro-batch ranking its share of the pairs"
        )
    if not cfg.rank_temperature > 0:
        raise ValueError(f"rank_temperature={cfg.rank_temperature}: expected > 0")
    if not 0.0 <= cfg.rank_min_t < 1.0:
        raise ValueError(f"rank_min_t={cfg.rank_min_t}: expected a fraction of the timesteps in [0, 1)")
