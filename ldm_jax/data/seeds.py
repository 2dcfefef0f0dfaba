"""Every seed range of the procedural phantoms (``phantoms.generate_phantom(seed, size)``), in one
place, so that no two uses draw the same breasts.

- ``SPLIT_SEED_OFFSET``: example i of a ``mammo_phantoms`` split is seed ``SPLIT_SEED_OFFSET[split] + i``
  (a split holds under 10⁹ examples, so the splits are disjoint); evaluate.py's held-out phantoms
  are the test split's first seeds.
- ``TRAINING_PAIRS_SEED``: same-seed lesion pairs to train on (the learned observer, the
  counterfactual stage's ranking term): train-split seeds past the records of any data set of
  the builder's default sizes.
- ``FILTER_PAIRS_SEED``: evaluate.py's filter-table pairs, test-split seeds past its records;
  ``EXPLAIN_PAIRS_SEED``: the explainer page's filter pairs, past those. Each lesion kind of a
  table of pairs starts at ``kind_offset``.
- ``EXPLAIN_PHANTOM_SEED``: the explainer page's phantom, a fixed train-split seed.
"""

from __future__ import annotations

from ldm_jax.data.lesion_pairs import KINDS

SPLIT_SEED_OFFSET = {"train": 0, "validation": 1_000_000_000, "test": 2_000_000_000}
TRAINING_PAIRS_SEED = 500_000_000
KIND_SEED_STRIDE = 10**6  # seeds between the lesion kinds of a table of pairs
FILTER_PAIRS_SEED = SPLIT_SEED_OFFSET["test"] + KIND_SEED_STRIDE
EXPLAIN_PAIRS_SEED = SPLIT_SEED_OFFSET["test"] + 5 * KIND_SEED_STRIDE
EXPLAIN_PHANTOM_SEED = 7


def kind_offset(first_seed: int, kind: str) -> int:
    """Where ``kind``'s pairs start in a table of pairs from ``first_seed``: kind k of
    ``lesion_pairs.KINDS`` at ``first_seed + KIND_SEED_STRIDE · k``, so every kind has its own breasts."""
    if kind not in KINDS:
        raise ValueError(f"unknown lesion kind {kind!r}; expected one of {KINDS}")
    return first_seed + KIND_SEED_STRIDE * KINDS.index(kind)
