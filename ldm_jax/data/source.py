"""``open_source(cfg, workdir)``: the random-access source of a run's training split, from
its config (``cfg.data``); used by training and by evaluation's memorization audit."""

from __future__ import annotations

import pathlib

import jax

from ldm_jax import parallel


def open_source(cfg, workdir: pathlib.Path):
    """The training split's random-access source; builds ``mammo_phantoms`` first when asked to
    (process 0 builds, the others wait for it). Without ``cfg.data.data_dir`` the data lives
    in ``<workdir>/data``."""
    from ldm_jax.data import build, pipeline

    data_dir = pathlib.Path(cfg.data.data_dir or workdir / "data")
    config = cfg.data.config or None
    if cfg.data.dataset == "mammo_phantoms" and cfg.data.build_if_missing:
        n = cfg.data.num_records
        sizes = {"train": n, "validation": max(n // 10, 1), "test": max(n // 10, 1)} if n else None
        if jax.process_index() == 0:
            build.build_phantoms(config, data_dir, sizes)
        parallel.sync("phantoms_built")
        config = build.build_phantoms(config, data_dir, sizes).builder_config.name  # prepared: only reads
    return pipeline.load_source(cfg.data.dataset, str(data_dir), cfg.data.split, config)
