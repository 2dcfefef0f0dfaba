"""The counterfactual stage's ranking term: its reader against the table's, its loss against the
AUC it stands in for, and the resumable stream of training pairs."""

import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax.data.pipeline import IteratorMismatchError
from ldm_jax.data import lesion_pairs
from ldm_jax.data.seeds import TRAINING_PAIRS_SEED
from ldm_jax.evaluation import detectability, lesions
from ldm_jax.parallel import make_mesh, to_host
from ldm_jax.training import lesion_ranking

SIZE = 64


@pytest.fixture(scope="module")
def pairs():
    return lesion_ranking.pair_arrays(0, 4, SIZE)


def test_pairs_are_one_breast_with_and_without_its_mass(pairs):
    """Index 0 holds the mass, index 1 the same breast without it: the images differ only inside the
    lesion mask, and only the first is labelled a mass."""
    lesion = pairs["lesion"][..., 0].astype(bool)
    assert pairs["image"].shape == (4, 2, SIZE, SIZE, 1) and lesion.any(axis=(1, 2)).all()
    difference = np.abs(pairs["image"][:, 0, ..., 0] - pairs["image"][:, 1, ..., 0])
    assert difference[~lesion].max() == 0.0 and (difference[lesion] > 0).mean() > 0.5
    labels = pairs["labels"]
    assert (labels[:, 0] != labels[:, 1]).sum(axis=1).tolist() == [1] * 4  # the finding alone differs


def test_ring_contrast_is_the_tables_mass_reader(pairs):
    """``ring_contrast`` gives ``lesions.mass_contrast`` (the filter table's reader) on each image."""
    seeds = lesion_pairs.pair_seeds(4, TRAINING_PAIRS_SEED)
    breasts = lesion_pairs.phantom_pairs(4, SIZE, "mass", seeds[0][0])["with"]["breast_mask"]
    for part in (0, 1):
        images = pairs["image"][:, part]
        ours = np.asarray(lesion_ranking.ring_contrast(jnp.asarray(images), pairs["lesion"], pairs["band"]))
        table = [lesions.mass_contrast(x, m[..., 0], b) for x, m, b in zip(images, pairs["lesion"], breasts)]
        np.testing.assert_allclose(ours, table, rtol=1e-5, atol=1e-6)


def test_ranking_loss_is_the_logistic_surrogate_of_one_minus_the_auc():
    """Its value is the mean softplus over all (positive, negative) combinations, and since
    softplus(−d/τ) ≥ log 2 · 1[d ≤ 0] it bounds (1 − AUC) · log 2 from above; separated scores
    drive it to 0."""
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(0.05, 0.05, 16), rng.normal(0.0, 0.05, 16)
    loss = float(lesion_ranking.ranking_loss(jnp.asarray(pos), jnp.asarray(neg), 0.05))
    d = pos[:, None] - neg[None, :]
    np.testing.assert_allclose(loss, np.mean(np.log1p(np.exp(-d / 0.05))), rtol=1e-5)
    assert loss >= (1 - detectability.auc(pos, neg)) * np.log(2)
    assert float(lesion_ranking.ranking_loss(jnp.asarray(pos + 10), jnp.asarray(neg), 0.05)) < 1e-6


class _Stream:
    """A stand-in input pipeline: batch k holds k; its state is the next k."""

    def __init__(self):
        self.k = 0

    def __next__(self):
        self.k += 1
        return {"index": np.full(8, self.k - 1)}

    def get_state(self):
        return {"position": self.k}

    def set_state(self, state):
        self.k = state["position"]


def test_a_resumed_stream_draws_the_pairs_an_uninterrupted_one_would():
    mesh = make_mesh()
    per_batch = mesh.size
    uninterrupted = lesion_ranking.WithLesionPairs(_Stream(), mesh, per_batch, SIZE)
    batches = [next(uninterrupted) for _ in range(3)]
    first = to_host(batches[0]["pairs"]["image"])
    np.testing.assert_array_equal(first, lesion_ranking.pair_arrays(0, per_batch, SIZE)["image"])
    assert not np.array_equal(first, to_host(batches[1]["pairs"]["image"]))  # fresh pairs every batch

    stopped = lesion_ranking.WithLesionPairs(_Stream(), mesh, per_batch, SIZE)
    next(stopped), next(stopped)
    state = stopped.get_state()
    resumed = lesion_ranking.WithLesionPairs(_Stream(), mesh, per_batch, SIZE)
    resumed.set_state(state)
    batch = next(resumed)
    assert int(batch["index"][0]) == 2
    for key in ("image", "counterfactual", "lesion", "band"):
        np.testing.assert_array_equal(to_host(batch["pairs"][key]), to_host(batches[2]["pairs"][key]))

    with pytest.raises(IteratorMismatchError, match="lesion pairs drawn"):
        resumed.set_state({"position": 1})


def test_settings_that_cannot_train_are_refused():
    from micro import micro_config

    from ldm_jax.models import architecture

    assert "rank_pairs" not in micro_config().diffusion  # a key of the counterfactual stage only
    cfg = architecture.resolve(micro_config()).counterfactual
    cfg.rank_pairs, cfg.rank_map_weight = 8, 0.0
    lesion_ranking.check(cfg)
    # the stem's map is ranked on the pairs: it needs both
    mapped = cfg.copy_and_resolve_references()
    mapped.rank_map_weight = 1.0
    lesion_ranking.check(mapped, pixel_stem=4)
    with pytest.raises(ValueError, match=r"unet.pixel_stem > 0 \(got 0\)"):
        lesion_ranking.check(mapped)
    mapped.rank_pairs = 0
    with pytest.raises(ValueError, match=r"rank_pairs > 0 \(got 0\)"):
        lesion_ranking.check(mapped, pixel_stem=4)
    for key, value, message in (
        ("accum_steps", 3, "multiple of accum_steps=3"),
        ("rank_temperature", 0.0, "rank_temperature=0.0"),
        ("rank_min_t", 1.0, "rank_min_t=1.0"),
    ):
        bad = cfg.copy_and_resolve_references()
        bad[key] = value
        with pytest.raises(ValueError, match=message):
            lesion_ranking.check(bad)
