"""Orbax checkpoints of a training stage: train state, data-iterator state and metadata.

Each step's checkpoint is one composite of three items: ``state`` (the ``TrainState``
pytree, sharded arrays written in parallel by every process), ``data`` (JSON: the input
pipeline's stream position and what its order depends on) and ``meta`` (JSON: config,
latent scale factor, the autoencoder checkpoint used...); JSON items are written once.
Orbax writes into a temporary directory and renames it when complete, so a save that
was interrupted is never listed by ``latest_step`` and never restored from.
"""

from __future__ import annotations

import pathlib

import jax
import orbax.checkpoint as ocp

ITEMS = ("state", "data", "meta")
_JSON_FILE = "metadata"  # the file name of an Orbax JSON item


class Checkpointer:
    """Asynchronous, rotating checkpoints of one stage under ``directory``."""

    def __init__(self, directory: str | pathlib.Path, keep: int = 3, async_save: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, cleanup_tmp_directories=True
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state, pipeline, meta: dict) -> None:
        """Start an asynchronous save (returns once the arrays are copied off the devices).

        Every process calls it at the same step: arrays are written by the processes that
        hold them, the JSON items by process 0."""
        self._manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(pipeline.get_state()),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )

    def restore(self, step: int, abstract_state, pipeline=None):
        """Restore ``(state, meta)`` at ``step``, and ``pipeline``'s position when given.

        ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` with shardings (from
        ``jax.eval_shape``): arrays come back with those shardings, whatever topology wrote
        them. The data position is checked before any array is read (``pipeline.set_state``
        raises ``IteratorMismatchError`` when it cannot be used).
        """
        if pipeline is not None:
            pipeline.set_state(self.restore_data(step))
        items = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
        restored = self._manager.restore(int(step), args=ocp.args.Composite(**items))
        return restored.state, restored.meta

    def restore_data(self, step: int) -> dict:
        """The input pipeline state saved at ``step`` (``{}`` for the per-process files of
        checkpoints written before the stream position was saved)."""
        if not (self.directory / str(step) / "data" / _JSON_FILE).exists():
            return {}
        return self._manager.restore(int(step), args=ocp.args.Composite(data=ocp.args.JsonRestore())).data

    def restore_subtree(self, step: int, tree) -> dict:
        """Only the arrays of ``tree``: a nested dict of ``ShapeDtypeStruct``s (with shardings)
        mirroring part of the saved ``TrainState``, e.g. ``{"ema_params": {"unet": ...}}`` for
        inference. Nothing else (optimizer state, other networks) is read from disk."""
        args = ocp.args.PyTreeRestore(
            item=tree, restore_args=ocp.checkpoint_utils.construct_restore_args(tree), partial_restore=True
        )
        return dict(self._manager.restore(int(step), args=ocp.args.Composite(state=args)).state)

    def restore_meta(self, step: int) -> dict:
        """Only the JSON metadata of ``step`` (no arrays are read)."""
        return self._manager.restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def abstract_with_shardings(tree, shardings):
    """``ShapeDtypeStruct``s of ``tree`` (arrays or structs) carrying ``shardings``."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
