"""Orbax checkpoints of a training stage: train state, data-iterator state and metadata.

Each step's checkpoint is one composite of three items: ``state`` (the ``TrainState``
pytree, sharded arrays written in parallel by every process), ``data`` (JSON: the input
pipeline's stream position and what its order depends on) and ``meta`` (JSON: config,
latent scale factor, the autoencoder checkpoint used...); JSON items are written once.
Orbax writes into a temporary directory and renames it when complete, so a save that
was interrupted is never listed by ``latest_step`` and never restored from. Once a save is
complete, process 0 writes its content manifest (``manifest``); ``restore_intact`` restores the
newest checkpoint that verifies and reads, moving a corrupt one aside to ``<step>.corrupt``.
A save that finds no space left raises ``StorageFullError``, naming the intact checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import sys

import jax
import orbax.checkpoint as ocp

from ldm_jax import parallel
from ldm_jax.checkpoint import manifest
from ldm_jax.storage import CorruptCheckpointError, StorageFullError, out_of_space

ITEMS = ("state", "data", "meta")
_JSON_FILE = "metadata"  # the file name of an Orbax JSON item
RETRAIN_HINT = "; train.py on that run moves it aside and trains again from the newest intact checkpoint"
# What TensorStore and Orbax say when a checkpoint's files are damaged or gone (an unverified
# checkpoint that fails to read with one of these is treated as corrupt; any other error is raised).
_DAMAGE_MARKERS = ("corrupt", "data_loss", "not_found", "no such file", "truncated", "unexpected end")


class _WithoutFullDiskTracebacks(logging.Filter):
    """Drops the log records whose exception is a full disk: Orbax's save threads (absl) and
    their asyncio tasks log the traceback before the save re-raises it, and ``Checkpointer``
    reports it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (error is not None and out_of_space(error))


for _logger in ("absl", "asyncio"):
    logging.getLogger(_logger).addFilter(_WithoutFullDiskTracebacks())


class Checkpointer:
    """Asynchronous, rotating checkpoints of one stage under ``directory``."""

    def __init__(self, directory: str | pathlib.Path, keep: int = 3, async_save: bool = True, name: str = ""):
        self.directory = pathlib.Path(directory).absolute()
        self.name = name or self.directory.parent.name  # the stage, in messages
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, cleanup_tmp_directories=True
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
        self._unsealed: list[int] = []  # steps saved here whose manifest is not written yet

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state, pipeline, meta: dict) -> None:
        """Start an asynchronous save (returns once the arrays are copied off the devices).

        Every process calls it at the same step: arrays are written by the processes that
        hold them, the JSON items by process 0."""
        with self._storage_errors(step):
            self._manager.save(
                int(step),
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    data=ocp.args.JsonSave(pipeline.get_state()),
                    meta=ocp.args.JsonSave(meta),
                ),
                force=True,
            )
            self._unsealed.append(int(step))
            # Orbax finishes the previous save before it starts this one: all but this one are complete.
            self._seal(keep_newest=self._manager.is_saving_in_progress())

    def _seal(self, keep_newest: bool = False) -> None:
        """Write the manifests of the saved steps (all but the newest with ``keep_newest``: it is
        still being written); steps that rotation has already deleted are skipped."""
        done = self._unsealed[:-1] if keep_newest else self._unsealed
        self._unsealed = self._unsealed[len(done) :]
        if jax.process_index() == 0:
            for step in done:
                if (self.directory / str(step)).is_dir():
                    manifest.write(self.directory / str(step))

    @contextlib.contextmanager
    def _storage_errors(self, step: int | None):
        """A full disk while saving becomes one ``StorageFullError`` line naming what is intact."""
        try:
            yield
        except Exception as error:
            if not out_of_space(error):
                raise
            self._manager.reload()
            intact = self._manager.latest_step()
            # An asynchronous save's error surfaces in the next call: name the save that did not finish.
            step = next((s for s in [*self._unsealed, step] if s is not None and s not in self.all_steps()), step)
            at = f" checkpoint {step}" if step is not None else " a checkpoint"
            raise StorageFullError(
                f"{self.name}: no space left on device writing{at} to {self.directory}; "
                + (f"checkpoints up to {intact} are intact" if intact is not None else "no checkpoint is complete yet")
                + "; free space and run the same command"
            ) from None

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
        with self._reading(step):
            restored = self._manager.restore(int(step), args=ocp.args.Composite(**items))
        return restored.state, restored.meta

    def restore_data(self, step: int) -> dict:
        """The input pipeline state saved at ``step`` (``{}`` for the per-process files of
        checkpoints written before the stream position was saved)."""
        if not (self.directory / str(step) / "data" / _JSON_FILE).exists():
            return {}
        with self._reading(step):
            return self._manager.restore(int(step), args=ocp.args.Composite(data=ocp.args.JsonRestore())).data

    def restore_subtree(self, step: int, tree) -> dict:
        """Only the arrays of ``tree``: a nested dict of ``ShapeDtypeStruct``s (with shardings)
        mirroring part of the saved ``TrainState``, e.g. ``{"ema_params": {"unet": ...}}`` for
        inference. Nothing else (optimizer state, other networks) is read from disk."""
        args = ocp.args.PyTreeRestore(
            item=tree, restore_args=ocp.checkpoint_utils.construct_restore_args(tree), partial_restore=True
        )
        with self._reading(step):
            return dict(self._manager.restore(int(step), args=ocp.args.Composite(state=args)).state)

    def restore_meta(self, step: int) -> dict:
        """Only the JSON metadata of ``step`` (no arrays are read)."""
        with self._reading(step):
            return self._manager.restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk, and write their manifests."""
        with self._storage_errors(self._unsealed[-1] if self._unsealed else None):
            self._manager.wait_until_finished()
            self._seal()

    def close(self) -> None:
        with self._storage_errors(self._unsealed[-1] if self._unsealed else None):
            self._manager.close()
            self._seal()

    def verify(self, step: int, hint: str = "") -> None:
        """Raise ``CorruptCheckpointError`` (its message ending in ``hint``) when checkpoint ``step``'s
        files differ from its manifest."""
        why = manifest.problem(self.directory / str(step))
        if why is not None:
            raise CorruptCheckpointError(self._corrupt(step, why) + hint)

    def _corrupt(self, step: int, why: str) -> str:
        return f"{self.name}: checkpoint {step} in {self.directory} is corrupt ({why})"

    @contextlib.contextmanager
    def _reading(self, step: int):
        """A checkpoint without a manifest that fails to read with a damage error (``_DAMAGE_MARKERS``)
        raises ``CorruptCheckpointError``; any other error, or one from a verified checkpoint, is raised as is."""
        try:
            yield
        except CorruptCheckpointError:
            raise
        except Exception as error:
            text = str(error)
            if manifest.has_manifest(self.directory / str(step)) or not any(m in text.lower() for m in _DAMAGE_MARKERS):
                raise
            raise CorruptCheckpointError(self._corrupt(step, f"does not read: {_damage_line(text)}")) from error

    def restore_intact(self, abstract_state, pipeline=None, step: int | None = None):
        """``(step, state, meta)`` of the newest checkpoint that verifies and reads (or of ``step``,
        which must); None when there is none. A corrupt checkpoint is named in one line on stderr
        and moved aside to ``<step>.corrupt`` (nothing is deleted); ``CorruptCheckpointError``
        when every checkpoint was corrupt or the chosen ``step`` is."""
        candidates = [step] if step else sorted(self.all_steps(), reverse=True)
        if step and step not in self.all_steps():
            raise FileNotFoundError(f"{self.name}: no complete checkpoint {step} in {self.directory}")
        corrupt = []
        for candidate in candidates:
            try:
                self.verify(candidate)
                return candidate, *self.restore(candidate, abstract_state, pipeline)
            except CorruptCheckpointError as error:
                if step:
                    raise
                corrupt.append(candidate)
                print(f"{error}; moved aside to {self._move_aside(candidate)}", file=sys.stderr)
        if corrupt:
            raise CorruptCheckpointError(
                f"{self.name}: no checkpoint in {self.directory} is intact (steps {', '.join(map(str, corrupt))} "
                "were moved aside as <step>.corrupt); move one back to retry it, or move them away to train "
                "this stage from the start"
            )
        return None

    def _move_aside(self, step: int, suffix: str = "corrupt") -> pathlib.Path:
        """Rename checkpoint ``step`` to ``<step>.<suffix>`` (``.<suffix>.1``... when taken); returns the new path."""
        parallel.sync(f"checkpoint_{self.name}_{step}_{suffix}")
        target = self.directory / f"{step}.{suffix}"
        count = 0
        while target.exists():
            count += 1
            target = self.directory / f"{step}.{suffix}.{count}"
        if jax.process_index() == 0:
            (self.directory / str(step)).rename(target)
        parallel.sync(f"checkpoint_{self.name}_{step}_{suffix}_moved")
        self._manager.reload()
        return target

    def supersede_after(self, step: int) -> list[pathlib.Path]:
        """Move the checkpoints newer than ``step`` aside to ``<step>.superseded``, so that training
        restored from ``step`` can save those steps again; returns where they went."""
        return [self._move_aside(s, "superseded") for s in self.all_steps() if s > step]


def _damage_line(text: str) -> str:
    """The line of a TensorStore/Orbax error text that says what is damaged."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return next((line for line in lines if any(m in line.lower() for m in _DAMAGE_MARKERS)), lines[0])[:300]


def abstract_with_shardings(tree, shardings):
    """``ShapeDtypeStruct``s of ``tree`` (arrays or structs) carrying ``shardings``."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
