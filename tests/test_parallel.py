import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax import parallel


def test_mesh_shapes_and_batch_sharding():
    assert jax.device_count() == 8
    mesh = parallel.make_mesh(fsdp=2)
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
    batch = parallel.global_batch_from_local({"x": np.arange(16.0).reshape(16, 1)}, mesh)
    assert batch["x"].shape == (16, 1)
    assert len({s.device for s in batch["x"].addressable_shards}) == 8
    assert all(s.data.shape == (2, 1) for s in batch["x"].addressable_shards)
    np.testing.assert_array_equal(np.asarray(batch["x"]), np.arange(16.0).reshape(16, 1))


def test_bad_mesh_and_batch_rejected():
    with pytest.raises(ValueError, match="fsdp=3"):
        parallel.make_mesh(fsdp=3)
    with pytest.raises(ValueError, match="batch size 12"):
        parallel.check_batch_size(12, parallel.make_mesh())


def test_param_sharding_splits_large_arrays_only():
    mesh = parallel.make_mesh(fsdp=4)
    params = {"big": jnp.zeros((512, 1024)), "small": jnp.zeros((3,)), "odd": jnp.zeros((513, 1023))}
    shard = parallel.param_sharding(mesh, params)
    assert shard["big"].spec == jax.sharding.PartitionSpec(None, "fsdp")
    assert shard["small"].spec == jax.sharding.PartitionSpec()
    assert shard["odd"].spec == jax.sharding.PartitionSpec()
