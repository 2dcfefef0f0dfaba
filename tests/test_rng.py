"""A run's random streams (``ldm_jax.rng``): every key it draws is drawn once, for one purpose."""

import jax
import numpy as np
import optax
import pytest
from micro import micro_config
from test_diffusion_step import AE, B, C, SCHEDULE, SIZE, UNET, _batch, _cfg, _lesion_pairs

from ldm_jax import attributes, parallel, rng
from ldm_jax.models import architecture
from ldm_jax.training import counterfactual_step, diffusion_step, run, stages


def test_split_is_fold_in_so_streams_need_names():
    """The premise of ``rng``: with jax's default threefry keys ``split(k, n)[i]`` is ``fold_in(k, i)``."""
    key = jax.random.PRNGKey(11)
    split = np.asarray(jax.random.split(key, 5))
    for i in range(5):
        np.testing.assert_array_equal(split[i], np.asarray(jax.random.fold_in(key, i)))


def test_a_stream_is_named_and_a_family_indexed():
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="unknown random stream 'nosie'"):
        rng.stream(key, "nosie")
    with pytest.raises(ValueError, match="'step' is a family"):
        rng.stream(key, "step")
    with pytest.raises(ValueError, match="'noise' is no family"):
        rng.stream(key, "noise", 3)
    assert len(set(rng.ID.values())) == len(rng.STREAMS)


@pytest.fixture
def drawn(monkeypatch):
    """Every key derived through ``rng.stream``, as (path of stream names from its root, key bytes)."""
    real, paths, record = rng.stream, {}, []

    def recording(parent, name, index=None):
        key = real(parent, name, index)
        parent_bytes = np.asarray(parent).tobytes()
        path = paths.get(parent_bytes, (parent_bytes.hex(),)) + ((name,) if index is None else ((name, int(index)),))
        paths[np.asarray(key).tobytes()] = path
        record.append((path, np.asarray(key).tobytes()))
        return key

    monkeypatch.setattr(rng, "stream", recording)
    return record


def _assert_each_drawn_once(record):
    by_path, by_key = {}, {}
    for path, key in record:
        by_path.setdefault(path, []).append(key)
        by_key.setdefault(key, set()).add(path)
    twice = [p for p, keys in by_path.items() if len(keys) > 1]
    shared = [sorted(p) for p in by_key.values() if len(p) > 1]
    assert not twice, f"streams drawn for two purposes: {twice}"
    assert not shared, f"different streams with equal keys: {shared}"


def _names(record) -> set[str]:
    return {part if isinstance(part, str) else part[0] for path, _ in record for part in path[1:]}


def test_every_key_a_run_draws_is_drawn_once_for_one_purpose(drawn):
    """Keys of the three stages of one seed, drawn (eagerly, so that each is seen) by the functions a
    run calls: each stage's init and two updates of two micro-batches, the latent scale's batches,
    the sample grids, the ranking pairs: no stream is drawn twice and no two streams share a key."""
    cfg = architecture.resolve(micro_config())
    root = jax.random.PRNGKey(cfg.seed)
    stage_keys = {name: rng.stream(root, name) for name in stages.STAGES}  # as run.train derives them
    optimizer, latent, num_attributes = optax.sgd(0.0), (B, SIZE // 2, SIZE // 2, C), len(attributes.ATTRIBUTES)
    with jax.disable_jit():
        ae_stage = stages.autoencoder_stage(cfg)
        images = np.zeros((cfg.autoencoder.batch_size, *architecture.image_shape(cfg)), np.float32)
        ae_stage.step(ae_stage.init(stage_keys["autoencoder"]), {"image": images}, None, False)

        state = diffusion_step.init_state(stage_keys["diffusion"], UNET, optimizer, latent, num_attributes)
        step = diffusion_step.make_train_step(UNET, AE, optimizer, SCHEDULE, _cfg(accum_steps=2))
        for i in range(2):
            state, _ = step(state, _batch(i), {}, np.float32(0.7))
        run.estimate_scale_factor(AE, {}, iter([_batch(5), _batch(6)]), 2, stage_keys["diffusion"])
        run._grid_sampler(cfg, parallel.make_mesh(1), UNET, AE, {}, SCHEDULE, 0.7, stage_keys["diffusion"])

        state = diffusion_step.init_state(stage_keys["counterfactual"], UNET, optimizer, latent, num_attributes, C + 4)
        step = counterfactual_step.make_train_step(UNET, AE, optimizer, SCHEDULE, _cfg(accum_steps=2, rank_pairs=4))
        batch = {**_batch(1), "counterfactual": _batch(2)["image"], "pairs": _lesion_pairs(4)}
        for _ in range(2):
            state, _ = step(state, batch, {}, np.float32(0.7))
    assert set(rng.STREAMS) <= _names(drawn)  # every stream was seen
    _assert_each_drawn_once(drawn)
