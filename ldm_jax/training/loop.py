"""The training loop shared by both stages: sharded jit step, checkpoints, logging, failures.

One ``run_stage`` call trains one stage to ``cfg.steps``: it restores the newest intact
checkpoint of the stage if there is one (state, data position, metadata; a corrupt one is
moved aside, ``Checkpointer.restore_intact``), warns when the disk holds fewer checkpoints
than it keeps, runs the jitted
step over the mesh, logs scalars, writes sample images, checkpoints every
``checkpoint.every`` steps, at the end and on SIGTERM (preemption), and stops with a clear
message after ``max_nonfinite_steps`` non-finite updates in a row.

Preemption is agreed across processes: each step carries every process's SIGTERM flag into
the jitted step, which returns their maximum with the metrics; every process reads it at
the same step and they all save that same step and stop, even when only one host was told.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import signal
import sys
import time
from typing import Any, Callable

import jax

from ldm_jax import parallel
from ldm_jax.checkpoint.checkpointer import Checkpointer, abstract_with_shardings
from ldm_jax.storage import DataFaultError, free_bytes, tree_bytes
from ldm_jax.training.metrics_writer import MetricsWriter


class NonFiniteLossError(RuntimeError):
    """Too many consecutive updates had a non-finite loss or gradient."""


class Preempted(RuntimeError):
    """SIGTERM arrived (at any process); a checkpoint was written before stopping."""


class ProcessLostError(RuntimeError):
    """Another process of a multi-process job stopped answering."""


@dataclasses.dataclass
class Stage:
    """What ``run_stage`` needs to know about one stage.

    ``step(state, batch, *extra_args, *static_args(step))`` is the pure update; ``init(key)``
    the fresh state; ``meta`` goes into every checkpoint; ``on_sample(state, step)``
    returns named uint8 images to write.
    """

    name: str
    steps: int
    init: Callable[[jax.Array], Any]
    step: Callable
    extra_args: tuple = ()
    static_args: Callable[[int], tuple] = lambda step: ()
    meta: dict = dataclasses.field(default_factory=dict)
    on_sample: Callable[[Any, int], dict] | None = None


class SigtermFlag:
    """Remembers a SIGTERM instead of dying, so the loop can checkpoint first."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


@dataclasses.dataclass
class StepProgram:
    """A stage's step as the trainer runs it: ``jitted(state, batch, stop_flags, *extra_args,
    *static_args)``, the state donated, with the shardings of its state and frozen arguments."""

    jitted: Any
    state_shardings: Any
    extra_shardings: tuple
    static_argnums: tuple[int, ...]


def step_program(stage: Stage, mesh, state_shardings, fsdp_min_size: int) -> StepProgram:
    """The jitted step of ``stage`` over ``mesh``: the one program the trainer runs and
    ``bench.py --target`` compiles ahead of time. The batch and the per-device stop flags are
    split over the batch axes; frozen weights (the autoencoder, LPIPS) are placed by the rule
    that places parameters; the step also returns the largest stop flag (module docstring)."""
    batch_sharding = parallel.batch_sharding(mesh)
    extra_shardings = tuple(parallel.param_sharding(mesh, stage.extra_args, fsdp_min_size))
    num_dynamic = 3 + len(stage.extra_args)
    static_argnums = tuple(range(num_dynamic, num_dynamic + len(stage.static_args(0))))

    def step_and_stop(state, batch, stop_flags, *args):
        state, metrics = stage.step(state, batch, *args)
        return state, {**metrics, "stop": jax.numpy.max(stop_flags)}

    jitted = jax.jit(
        step_and_stop,
        in_shardings=(state_shardings, batch_sharding, batch_sharding) + extra_shardings,
        out_shardings=(state_shardings, parallel.replicated(mesh)),
        static_argnums=static_argnums,
        donate_argnums=(0,),
    )
    return StepProgram(jitted, state_shardings, extra_shardings, static_argnums)


def abstract_state(stage: Stage, mesh, key, fsdp_min_size: int):
    """``(abstract state, its shardings)``: ``stage.init``'s tree placed by ``parallel.param_sharding``."""
    abstract = jax.eval_shape(stage.init, key)
    return abstract, parallel.param_sharding(mesh, abstract, fsdp_min_size)


def restore_or_init(stage: Stage, checkpointer: Checkpointer, mesh, key, pipeline, cfg):
    """``(state, meta or None, shardings)`` from the newest checkpoint (which also repositions
    ``pipeline``, unless ``cfg.data.reset_iterator``), else a fresh init.

    The state comes back split as this mesh wants it, whatever mesh wrote it.
    """
    from ldm_jax.data.pipeline import IteratorMismatchError

    abstract, shardings = abstract_state(stage, mesh, key, cfg.mesh.fsdp_min_size)
    chosen = cfg.checkpoint.get("restore_step", 0) or None
    try:
        restored = checkpointer.restore_intact(
            abstract_with_shardings(abstract, shardings), None if cfg.data.reset_iterator else pipeline, chosen
        )
    except IteratorMismatchError as error:
        raise IteratorMismatchError(
            f"{stage.name} checkpoint {chosen or checkpointer.latest_step()}: {error}. To continue training from "
            f"this checkpoint with the data read from the start of a fresh order, pass "
            f"--config.data.reset_iterator=True"
        ) from None
    if restored is None:
        return jax.jit(stage.init, out_shardings=shardings)(key), None, shardings
    step, state, meta = restored
    if chosen:
        for moved in checkpointer.supersede_after(step):
            print(f"{stage.name}: restoring step {step}: moved the newer checkpoint aside to {moved}", file=sys.stderr)
    return state, meta, shardings


def run_stage(
    stage: Stage,
    *,
    pipeline,
    mesh,
    workdir: pathlib.Path,
    cfg,
    key,
    state=None,
    shardings=None,
    sigterm: SigtermFlag | None = None,
):
    """Train ``stage`` to ``stage.steps`` and return the final state (see the module docstring).

    Without ``state`` the stage is restored from its newest checkpoint or initialised.
    ``sigterm`` is the run's SIGTERM flag (default: one watching only this stage).
    """
    stage_dir = workdir / stage.name
    checkpointer = Checkpointer(
        stage_dir / "checkpoints", keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save
    )
    if state is None:
        state, _, shardings = restore_or_init(stage, checkpointer, mesh, key, pipeline, cfg)
    first = jax.process_index() == 0
    start = int(jax.device_get(state.step))
    if first and start < stage.steps:
        _warn_if_disk_is_short(stage.name, checkpointer, state, cfg.checkpoint.keep)
    writer = MetricsWriter(stage_dir, enabled=first, start_step=start)
    program = step_program(stage, mesh, shardings, cfg.mesh.fsdp_min_size)
    extra_args = jax.device_put(stage.extra_args, program.extra_shardings)
    step_fn = parallel.compile_together(program.jitted, program.static_argnums)

    progress = _progress_bar(stage, start, enabled=first and cfg.log.progress)
    consume = _StepLog(stage, cfg, writer, progress)
    pending = None  # (step, metrics, batch size) of the previous step, read after the next one is dispatched
    global_batch = sampled_at = None

    def save(step):
        checkpointer.save(step, state, pipeline, stage.meta)

    try:
        with (
            contextlib.nullcontext(sigterm) if sigterm else SigtermFlag() as flag,
            _explained_runtime_errors(mesh, lambda: global_batch, checkpointer, stage.name, cfg.get(stage.name, {})),
        ):
            for step in range(start + 1, stage.steps + 1):
                batch = _next_batch(pipeline, save, step - 1, start, cfg.checkpoint.every)
                global_batch = jax.tree.leaves(batch)[0].shape[0]
                stop_flags = parallel.process_flags(flag.raised, mesh)
                state, metrics = step_fn(state, batch, stop_flags, *extra_args, *stage.static_args(step - 1))
                # The previous step's metrics are read after this step is dispatched, so the host
                # never waits for the device; every process decides to stop at the same step.
                stop = pending is not None and consume(*pending)
                pending = (step, metrics, global_batch)
                if stage.on_sample and cfg.log.sample_every and step % cfg.log.sample_every == 0:
                    _write_samples(stage, state, step, stage_dir, writer)
                    sampled_at = step
                if step % cfg.checkpoint.every == 0 or step == stage.steps:
                    save(step)
                if stop and step != stage.steps:
                    consume(*pending)
                    if step % cfg.checkpoint.every:
                        save(step)
                    checkpointer.wait()
                    who = "this process" if flag.raised else "another process of the job"
                    raise Preempted(
                        f"{stage.name}: SIGTERM received by {who}; checkpoint of step {step} written; "
                        f"resume with the same command"
                    )
            if pending is not None:
                consume(*pending)
            if stage.on_sample and start < stage.steps and sampled_at != stage.steps:
                _write_samples(stage, state, stage.steps, stage_dir, writer)
    finally:
        progress.close()
        checkpointer.wait()
        checkpointer.close()
        writer.close()
    return state


def _next_batch(pipeline, save, last_good: int, start: int, every: int):
    """The next batch; on a data fault, ``save(last_good)`` first unless that step is saved already
    (one process only: with several, the others are in the step's collectives and cannot join)."""
    try:
        return next(pipeline)
    except DataFaultError:
        if jax.process_count() == 1 and last_good > start and last_good % every:
            save(last_good)
        raise


def _warn_if_disk_is_short(name: str, checkpointer: Checkpointer, state, keep: int) -> None:
    """One line on stderr when the checkpoints' file system has room for fewer than ``keep`` + 1
    checkpoints (rotation writes a new one before it deletes the oldest). A checkpoint's size is
    the newest one's on disk, else the state's bytes."""
    latest = checkpointer.latest_step()
    if latest is not None:
        size = tree_bytes(checkpointer.directory / str(latest))
    else:
        size = sum(x.nbytes for x in jax.tree.leaves(state))
    free = free_bytes(checkpointer.directory)
    if free < (keep + 1) * size:
        print(
            f"{name}: warning: {free / 2**20:.1f} MiB free at {checkpointer.directory} holds {free // max(size, 1)} "
            f"checkpoints of {size / 2**20:.1f} MiB; checkpoint.keep={keep} needs {keep + 1}",
            file=sys.stderr,
        )


class _StepLog:
    """``log(step, metrics, global_batch) → stop``: reads one step's metrics from the devices, stops
    the run after ``max_nonfinite_steps`` skipped updates in a row, advances the progress bar and
    writes the scalars every ``log.every`` steps; True when some process has asked to stop."""

    def __init__(self, stage, cfg, writer, progress):
        self.stage, self.cfg, self.writer, self.progress = stage, cfg, writer, progress
        self.streak = self.skipped_total = 0
        self.timer = _Throughput()

    def __call__(self, step, metrics, global_batch) -> bool:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        stop = bool(metrics.pop("stop"))
        skipped = int(metrics.pop("skipped", 0))
        self.skipped_total += skipped
        self.streak = self.streak + 1 if skipped else 0
        if self.streak >= self.cfg.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{self.stage.name}: {self.streak} updates in a row had a non-finite loss or gradient (last at "
                f"step {step}); the state was not updated by them. Lower the learning rate, check the data, or "
                f"use float32 compute."
            )
        rate = self.timer.images_per_second(step, global_batch)
        self.progress.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}", img_s=f"{rate:.1f}", refresh=False)
        self.progress.update(1)
        if step % self.cfg.log.every == 0 or step == self.stage.steps:
            self.writer.scalars(step, {**metrics, "images_per_second": rate, "skipped_total": self.skipped_total})
        return stop


def _write_samples(stage, state, step, stage_dir, writer):
    from ldm_jax.data.imageio import encode_png
    from ldm_jax.storage import write_atomic

    for name, image in stage.on_sample(state, step).items():
        if jax.process_index() == 0:
            write_atomic(stage_dir / "samples" / f"step_{step:07d}_{name}.png", encode_png(image))
            writer.image(step, f"samples/{name}", image)
    writer.flush()


def _progress_bar(stage, start, enabled):
    from tqdm.auto import tqdm

    return tqdm(total=stage.steps, initial=start, desc=stage.name, disable=not enabled, dynamic_ncols=True, unit="step")


class _Throughput:
    """Images per second over a sliding window, excluding the first (compiling) step."""

    def __init__(self):
        self._times: list[tuple[int, float]] = []

    def images_per_second(self, step, batch_size):
        now = time.perf_counter()
        self._times = (self._times + [(step, now)])[-50:]
        if len(self._times) < 2 or not batch_size:
            return 0.0
        (s0, t0), (s1, t1) = self._times[0], self._times[-1]
        return (s1 - s0) * batch_size / max(t1 - t0, 1e-9)


_PEER_LOST = ("connection closed by peer", "connection reset", "heartbeat", "unavailable", "gloo")


def memory_hint(stage_name: str, section, batch: int, mesh) -> str:
    """What to change when stage ``stage_name`` (config ``section``) runs out of device memory: only
    keys that the stage has."""
    options = [f"lower {stage_name}.batch_size"]
    if "accum_steps" in section:
        options.append(f"raise {stage_name}.accum_steps (gradient accumulation)")
    options += ["use compute_dtype='bfloat16'", "shard parameters with mesh.fsdp > 1"]
    return (
        f"{stage_name}: out of device memory with {batch // max(mesh.size, 1)} examples per device (global batch "
        f"{batch} on {mesh.size} devices): {', '.join(options[:-1])}, or {options[-1]}"
    )


@contextlib.contextmanager
def _explained_runtime_errors(mesh, global_batch, checkpointer, stage_name: str, section):
    """Turn device errors into what the user can do: out of memory, or a lost process."""
    try:
        yield
    except jax.errors.JaxRuntimeError as error:
        text = str(error)
        if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
            raise MemoryError(memory_hint(stage_name, section, global_batch() or 0, mesh)) from error
        if jax.process_count() > 1 and any(marker in text.lower() for marker in _PEER_LOST):
            raise ProcessLostError(
                f"process {jax.process_index()} of {jax.process_count()}: another process of the job stopped "
                f"answering ({text.splitlines()[0][:200]}). The job cannot continue; start all processes again "
                f"with the same command to resume from the newest checkpoint "
                f"(step {checkpointer.latest_step()})."
            ) from error
        raise
