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


@pytest.mark.parametrize(
    "env, message",
    [
        ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234"}, "JAX_NUM_PROCESSES, JAX_PROCESS_ID missing"),
        ({"JAX_COORDINATOR_ADDRESS": "localhost", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "host:port"),
        ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, "must be below"),
        (
            {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
            "JAX_NUM_PROCESSES='two'",
        ),
        (
            {
                "JAX_COORDINATOR_ADDRESS": "h:1",
                "JAX_NUM_PROCESSES": "2",
                "JAX_PROCESS_ID": "0",
                "LDM_JAX_HEARTBEAT_TIMEOUT": "0",
            },
            "LDM_JAX_HEARTBEAT_TIMEOUT='0'",
        ),
    ],
)
def test_bad_launch_environment_is_named_before_joining(monkeypatch, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: pytest.fail("must not be called"))
    with pytest.raises(ValueError, match=message):
        parallel.initialize_distributed()


def test_batch_and_mesh_errors_name_processes_and_devices():
    with pytest.raises(
        ValueError,
        match=r"diffusion.batch_size 12 is not divisible by the 8 devices of the mesh "
        r"\(1 process\(es\) × 8 devices\)",
    ):
        parallel.check_batch_size(12, parallel.make_mesh(), "diffusion.batch_size")
    with pytest.raises(ValueError, match=r"fsdp=3 must be >= 1 and divide the device count 8"):
        parallel.make_mesh(fsdp=3)


def test_process_rows_and_flags_on_one_process():
    mesh = parallel.make_mesh(fsdp=2)
    assert parallel.process_rows(mesh, 16) == range(0, 16)
    flags = parallel.process_flags(True, mesh)
    assert flags.shape == (8,) and int(jax.jit(jnp.max)(flags)) == 1


def test_fsdp_divides_the_mammo256_train_state():
    """docs/multihost.md's per-device table: fsdp=4 must hold at most a third of the replicated state."""
    import functools

    from ldm_jax.models import presets
    from ldm_jax.training import diffusion_step
    from ldm_jax.training.config import default_config
    from ldm_jax.training.state import make_optimizer

    preset = presets.get_preset("mammo256")
    init = functools.partial(
        diffusion_step.init_state,
        unet=presets.build_unet(preset.unet),
        optimizer=make_optimizer(default_config().diffusion),
        latent_shape=(1, preset.latent_size, preset.latent_size, preset.latent_channels),
        num_attributes=4,
    )
    state = jax.eval_shape(init, jax.random.PRNGKey(0))
    per_device = {
        f: parallel.bytes_per_device(state, parallel.param_sharding(parallel.make_mesh(f), state)) for f in (1, 2, 4, 8)
    }
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    assert per_device[1] == total
    assert per_device[1] > per_device[2] > per_device[4] > per_device[8]
    assert per_device[4] <= per_device[1] / 3
