"""Every seed range of the procedural phantoms (``phantoms.generate_phantom(seed, size)``), in one
place, so that no two uses draw the same breasts.

- ``SPLIT_SEED_OFFSET``: example i of a ``mammo_phantoms`` split is seed ``SPLIT_SEED_OFFSET[split] + i``;
  evaluate.py's held-out phantoms are the test split's first seeds. ``MAX_SPLIT_SIZE``: the most
  examples a split may hold (the builder refuses more) so that its seeds meet no other range.
- ``TRAINING_PAIRS_SEED``: same-seed lesion pairs to train on (the learned observer, the
  counterfactual stage's ranking term): train-split seeds past the largest train split.
- ``FILTER_PAIRS_SEED``: evaluate.py's filter-table pairs, test-split seeds past the largest test split;
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
MAX_SPLIT_SIZE = {"train": TRAINING_PAIRS_SEED, "validation": 10**9, "test": KIND_SEED_STRIDE}


def kind_offset(first_seed: int, kind: str) -> int:
    """Where ``kind``'s pairs start in a table of pairs from ``first_seed``: kind k of
    ``lesion_pairs.KINDS`` at ``first_seed + KIND_SEED_STRIDE · k``, so every kind has its own breasts."""
    if kind not in KINDS:
        raise ValueError(f"unknown lesion kind {kind!r}; expected one of {KINDS}")
    return first_seed + KIND_SEED_STRIDE * KINDS.index(kind)
