"""Which labels image i of a sampling job gets.

A condition spec is one condition (``density=D,finding=mass``), a ``;``-separated list
cycled over the image index (image i gets entry i mod k), or ``random``: each image's
labels drawn from the training label distribution with a generator seeded by
(seed, i) alone. Either way the labels of image i are a pure function of the spec, the
seed and i.
"""

from __future__ import annotations

import numpy as np

from ldm_jax import attributes

RANDOM = "random"


class Conditions:
    """Labels per image index for a condition ``spec`` (see the module docstring).

    ``distribution`` is the model's ``[K, A + 1]`` training label table (rows + counts) or
    None. A value the model never saw in training is refused, as is ``random`` without a
    distribution.
    """

    def __init__(self, spec: str, distribution: np.ndarray | None, seed: int):
        self.spec = spec.strip()
        self.seed = int(seed)
        self._distribution = distribution
        if self.spec.lower() == RANDOM:
            if distribution is None:
                raise ValueError(
                    "condition 'random' draws from the training label distribution, which this "
                    "checkpoint does not record; give explicit conditions instead"
                )
            self._fixed = None
            counts = distribution[:, -1].astype(np.float64)
            self._rows, self._p = distribution[:, :-1].astype(np.int32), counts / counts.sum()
        else:
            self._fixed = np.stack([attributes.parse_condition(part) for part in self.spec.split(";")])
            for row in self._fixed:
                self._check_trained(row)

    def _check_trained(self, row: np.ndarray) -> None:
        if self._distribution is None:
            return
        seen = self._distribution[:, :-1]
        for a, (name, value) in enumerate(zip(attributes.ATTRIBUTE_NAMES, row)):
            null = attributes.NUM_CLASSES[a]
            if value != null and not np.any(seen[:, a] == value):
                raise ValueError(
                    f"{name}={attributes.ATTRIBUTES[name][value]} never occurs in this model's "
                    f"training data, so the model was not trained with it"
                )

    def labels(self, indices) -> np.ndarray:
        """int32 ``[B, A]`` labels of the images ``indices``."""
        indices = np.asarray(indices, np.int64)
        if self._fixed is not None:
            return self._fixed[indices % len(self._fixed)]
        draws = [np.random.default_rng((self.seed, int(i))).choice(len(self._p), p=self._p) for i in indices]
        return self._rows[np.asarray(draws, np.int64)].reshape(len(indices), -1)
