"""Every random stream of a training run, named in one place.

With jax's threefry keys (``jax_threefry_partitionable``, the default) ``split(k, n)[i]`` is
``fold_in(k, i)``: two purposes that derive keys from one parent by small integers draw the same
numbers unless those integers are told apart. Here every purpose has a name, the name a fixed id,
and a key is a path of names from the run's seed:

    stream(parent, name)         = fold_in(parent, ID[name])
    stream(parent, name, index)  = fold_in(fold_in(parent, ID[name]), index)   (a family: steps, …)

A run's keys: ``PRNGKey(seed)`` → stage (``autoencoder``, ``diffusion``, ``counterfactual``) →
``init`` (the networks' weights), ``step`` s (one key per update), ``scale_factor`` b (the latent
scale's batches), ``sample_grid`` (the logged grids); a step's key → ``encode``, ``timesteps``,
``noise``, ``labels``, ``dropout`` j (micro-batch j), the ranking pairs' ``pair_*``, the
autoencoder's ``posterior``. A family's name never has named children of its own, so two different
paths never fold the same integers into the same key. The ids are part of every run's key
schedule: a new name goes at the end of ``STREAMS``.
"""

from __future__ import annotations

import jax

STREAMS = (
    "autoencoder",
    "diffusion",
    "counterfactual",
    "init",
    "step",
    "scale_factor",
    "sample_grid",
    "encode",
    "timesteps",
    "noise",
    "labels",
    "dropout",
    "posterior",
    "discriminator",
    "pair_encode",
    "pair_timesteps",
    "pair_noise",
    "pair_labels",
    "label_rows",
    "label_kept",
    "label_attributes",
)
ID = {name: i for i, name in enumerate(STREAMS)}
FAMILIES = frozenset({"step", "scale_factor", "dropout"})  # streams drawn with an index


def stream(parent, name: str, index=None):
    """The key of stream ``name`` under ``parent`` (module docstring); ``index`` (an int or a traced
    int) for the members of a family."""
    if name not in ID:
        raise ValueError(f"unknown random stream {name!r}; the streams are {STREAMS}")
    if (index is not None) != (name in FAMILIES):
        raise ValueError(f"stream {name!r} is {'a family: give' if name in FAMILIES else 'no family: no'} index")
    key = jax.random.fold_in(parent, ID[name])
    return key if index is None else jax.random.fold_in(key, index)
