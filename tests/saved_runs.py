"""Reading what a training run left on disk: metrics rows and saved train states as numpy."""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp


def metrics(workdir, stage):
    return [json.loads(line) for line in (workdir / stage / "metrics.jsonl").read_text().splitlines()]


def split_arrays(state_dir) -> int:
    """How many arrays of a saved train state were split over devices when written."""
    shardings = json.loads((state_dir / "_sharding").read_text())
    return sum(any(json.loads(s)["partition_spec"]) for s in shardings.values())


def flat(tree) -> dict:
    """``{"params/unet/...": leaf}`` for a train state or its saved (dict) form."""

    def name(key):
        return str(getattr(key, "name", getattr(key, "key", getattr(key, "idx", key))))

    return {"/".join(name(k) for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def raw_state(state_dir) -> dict:
    """The saved arrays as numpy, whatever devices (of whichever processes) wrote them."""
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(state_dir).item_metadata.tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return flat(checkpointer.restore(state_dir, restore_args=args))


def assert_same_state(a_dir, b_dir):
    a, b = raw_state(a_dir), raw_state(b_dir)
    assert a.keys() == b.keys() and len(a) > 10
    for path, value in a.items():
        np.testing.assert_array_equal(value, b[path], err_msg=path)


class StreamPosition:
    """Stands in for the input pipeline where only its checkpointed stream position matters."""

    def __init__(self, position=0):
        self.position = position

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]
