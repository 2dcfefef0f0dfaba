"""The clinical attributes the models are conditioned on, shared by data, models and CLIs.

Labels travel as an int32 array ``[B, len(ATTRIBUTES)]`` in the order of ``ATTRIBUTES``.
Index ``len(values)`` of an attribute is its *null* value (classifier-free guidance:
"attribute not given").
"""

from __future__ import annotations

import numpy as np

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "density": ("A", "B", "C", "D"),  # BI-RADS breast composition
    "finding": ("none", "mass", "calcification"),
    "view": ("CC", "MLO"),
    "laterality": ("L", "R"),
}
ATTRIBUTE_NAMES: tuple[str, ...] = tuple(ATTRIBUTES)
NUM_CLASSES: tuple[int, ...] = tuple(len(v) for v in ATTRIBUTES.values())


def null_labels(batch_size: int, num_classes: tuple[int, ...] = NUM_CLASSES) -> np.ndarray:
    """The all-null label array ``[B, A]``: every attribute "not given" (index ``num_classes[a]``)."""
    return np.tile(np.asarray(num_classes, np.int32), (batch_size, 1))


def without(labels, name: str):
    """``labels`` ``[B, A]`` (numpy or jax) with attribute ``name`` set to its null index ("not given")."""
    a = ATTRIBUTE_NAMES.index(name)
    column = np.arange(len(ATTRIBUTE_NAMES)) == a
    return (labels * ~column + NUM_CLASSES[a] * column).astype(labels.dtype)


def encode_value(attribute: str, value: str | int) -> int:
    """Index of ``value`` (a name like ``"C"`` or an integer index) for ``attribute``."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {attribute!r}; expected one of {ATTRIBUTE_NAMES}")
    names = ATTRIBUTES[attribute]
    if isinstance(value, (int, np.integer)):
        if not 0 <= value < len(names):
            raise ValueError(f"{attribute} index {value} out of range [0, {len(names)})")
        return int(value)
    lowered = {n.lower(): i for i, n in enumerate(names)}
    key = str(value).strip().lower()
    if key not in lowered:
        raise ValueError(f"unknown {attribute} value {value!r}; expected one of {names}")
    return lowered[key]


def parse_condition(text: str) -> np.ndarray:
    """Labels ``[A]`` from ``"density=D,finding=mass"``; attributes not named are null.

    An empty string (or ``"none"``) is the unconditional, all-null condition.
    """
    labels = null_labels(1)[0]
    text = text.strip()
    if text.lower() in ("", "none", "unconditional"):
        return labels
    for part in text.split(","):
        if "=" not in part:
            raise ValueError(f"condition part {part!r} must look like attribute=value (e.g. density=C)")
        name, value = (s.strip() for s in part.split("=", 1))
        index = encode_value(name, value)  # raises on an unknown attribute or value
        labels[ATTRIBUTE_NAMES.index(name)] = index
    return labels


def format_condition(labels) -> str:
    """Inverse of ``parse_condition``: ``"density=D,finding=mass"`` (null attributes left out)."""
    parts = [
        f"{name}={ATTRIBUTES[name][int(v)]}"
        for name, v in zip(ATTRIBUTE_NAMES, labels)
        if int(v) < len(ATTRIBUTES[name])
    ]
    return ",".join(parts) or "unconditional"
