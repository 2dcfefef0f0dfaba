"""``sample.py``'s work: build a generation or editing ``Job`` from its options and run it."""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax import attributes
from ldm_jax import parallel
from ldm_jax.diffusion.samplers import SamplerConfig
from ldm_jax.sampling import edit_inputs, job, programs
from ldm_jax.sampling.conditions import Conditions
from ldm_jax.sampling.generate import EDITS, Edit, image_keys
from ldm_jax.sampling.model import load_model
from ldm_jax.storage import local_path


@dataclasses.dataclass(frozen=True)
class _Context:
    """What a generation job and an editing job share: the options, the loaded model and its
    sampler, the job's settings (what a resumed job must match) and every image's record fields."""

    args: Any
    model: Any
    sampling: SamplerConfig
    mesh: Any
    scale: jax.Array
    settings: dict
    common: dict

    def put(self, batch: np.ndarray) -> jax.Array:
        """A host batch as one array over the mesh's batch axis."""
        return parallel.global_array(batch, parallel.batch_sharding(self.mesh))

    def keys(self, indices) -> jax.Array:
        """Image i's key depends on (seed, i) only (``image_keys``)."""
        return self.put(np.asarray(image_keys(jax.random.PRNGKey(self.args.seed), indices)))


def run(args, edit) -> job.Summary:
    """The job ``sample.py``'s ``Options`` (``args``) and ``EditOptions`` (``edit``) describe."""
    shard = job.parse_shard(args.shard)
    local_path(args.out, "--out")
    parallel.initialize_distributed()
    mesh = parallel.make_mesh(1)
    batch = args.batch or 4 * mesh.size
    parallel.check_batch_size(batch, mesh)
    stage = EDITS[edit.edit_method].stage if edit.edit_input is not None else "diffusion"
    model = load_model(args.workdir, ema=args.ema, mesh=mesh, stage=stage)
    sampling = SamplerConfig(
        sampler=args.sampler,
        num_steps=args.steps,
        eta=args.eta,
        prediction=model.prediction,
        guidance_scale=args.guidance,
    )
    settings = {
        "workdir": str(pathlib.Path(args.workdir).absolute()),
        "checkpoint_step": model.step,
        "autoencoder_step": model.autoencoder_step,
        "ema": model.ema,
        "seed": args.seed,
        "sampler": sampling.sampler,
        "steps": args.steps,
        "spacing": sampling.timestep_spacing,
        "eta": args.eta,
        "guidance": args.guidance,
        "format": args.format,
    }
    common = {
        "seed": args.seed,
        "sampler": sampling.sampler,
        "steps": args.steps,
        "guidance": args.guidance,
        "checkpoint_step": model.step,
        "ema": model.ema,
    }
    scale = jax.device_put(jnp.float32(model.scale), parallel.replicated(mesh))
    context = _Context(args, model, sampling, mesh, scale, settings, common)
    task = _generation_job(context) if edit.edit_input is None else _edit_job(context, edit)
    return job.run(task, batch_size=batch, shard=shard, progress=args.progress)


def _generation_job(c: _Context) -> job.Job:
    model, args = c.model, c.args
    conditions = Conditions(args.condition, model.label_distribution, args.seed)
    generate = parallel.compile_together(
        programs.generate_program(model.unet, model.autoencoder, model.schedule, model.latent_shape, c.sampling, c.mesh)
    )

    def compute(indices):
        return generate(model.unet_params, model.ae_params, c.scale, c.put(conditions.labels(indices)), c.keys(indices))

    def record(index):
        return {**c.common, "condition": attributes.format_condition(conditions.labels([index])[0])}

    return job.Job(
        out=pathlib.Path(args.out),
        settings={**c.settings, "condition": conditions.spec, "num": args.num},
        num=args.num,
        fmt=args.format,
        compute=compute,
        labels=lambda i: conditions.labels([i])[0],
        record=record,
    )


def _edit_job(c: _Context, edit) -> job.Job:
    model, args = c.model, c.args
    inputs = edit_inputs.list_inputs(edit.edit_input)
    source = Conditions(edit.edit_from, model.label_distribution, args.seed)
    # The counterfactual filter's output is the fat-only breast of its training pairs: recorded as density A.
    target = Conditions(edit.edit_to or "density=A", model.label_distribution, args.seed)
    spec = Edit(edit.edit_method, edit.edit_strength, edit.edit_guide, edit.edit_keep_detail)
    edit_fn = parallel.compile_together(programs.edit_program(model, c.sampling, c.mesh, spec))
    described = {
        "method": spec.method,
        "strength": spec.strength,
        "guide": spec.guide,
        "keep_detail": spec.detail,
    }
    size = model.image_size

    def compute(indices):
        images = np.stack([edit_inputs.read_input(inputs[i], size) for i in indices])[..., None]
        batch = [images, source.labels(indices), target.labels(indices)]
        return edit_fn(model.unet_params, model.ae_params, c.scale, *map(c.put, batch), c.keys(indices))

    def record(index):
        return {
            **c.common,
            "source_sha256": edit_inputs.digest(inputs[index]),
            "source_condition": attributes.format_condition(source.labels([index])[0]),
            "condition": attributes.format_condition(target.labels([index])[0]),
            **described,
        }

    root = pathlib.Path(edit.edit_input).absolute()
    names = "\n".join(str(p.absolute().relative_to(root)) if root.is_dir() else p.name for p in inputs)
    settings = {
        **c.settings,
        "edit_input": str(root),
        "inputs": len(inputs),
        "inputs_digest": hashlib.sha256(names.encode()).hexdigest(),
        "edit_from": source.spec,
        "edit_to": target.spec,
        **described,
    }
    return job.Job(
        out=pathlib.Path(args.out),
        settings=settings,
        num=len(inputs),
        fmt=args.format,
        compute=compute,
        labels=lambda i: target.labels([i])[0],
        record=record,
        preview=lambda i, image: [edit_inputs.read_input(inputs[i], size), image],
    )
