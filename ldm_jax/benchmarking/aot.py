"""Ahead-of-time compilation of a config's programs for a target accelerator: ``bench.py --target``.

Each program is the one the trainer or the sampler runs, from the same builder
(``loop.step_program`` over ``stages``; ``sampling.programs``), lowered on abstract inputs over a
mesh of the target's abstract devices and compiled by the target's own compiler (libtpu, or
XLA:GPU through the CUDA plugin). Per program and chip it reports:

- memory: arguments, outputs, aliases (donated state), temporaries and their total
  ``arguments + outputs − aliases + temporaries`` against the chip's HBM; a program the
  compiler refuses (TPU: ``RESOURCE_EXHAUSTED``) does not fit, with the compiler's own words;
- FLOPs and bytes accessed per chip from the compiler's cost analysis, beside the project's
  jaxpr count of model FLOPs (``flops.count_flops``, global, divided by the chip count);
- the collectives of the compiled program, counted and sized by kind;
- a roofline bound: ``max(FLOPs / peak, bytes / HBM bandwidth)`` per chip, a lower bound on the
  step time (so an upper bound on images/s and MFU). An estimate, never a measured time.

A compiler's cost analysis counts a loop's body once: the sampling job's FLOPs come from the
project's counter, which follows the loop's trip count.
"""

from __future__ import annotations

import dataclasses
import re
import time

import jax
import jax.numpy as jnp

from ldm_jax import parallel
from ldm_jax.benchmarking import targets
from ldm_jax.benchmarking.flops import count_flops
from ldm_jax.diffusion.samplers import SamplerConfig
from ldm_jax.sampling import model as sampling_model
from ldm_jax.sampling import programs as sampling_programs
from ldm_jax.sampling.generate import Edit
from ldm_jax.training import autoencoder_step, loop, stages

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4}
_DTYPE_BYTES.update({"f64": 8, "s64": 8, "u64": 8})


@dataclasses.dataclass
class Program:
    """A program to compile: ``jitted`` on the abstract ``args``, ``global_batch`` images per call,
    ``model_flops`` counted from its jaxpr (all chips together)."""

    name: str
    jitted: object
    args: tuple
    global_batch: int
    model_flops: float


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), x.dtype), tree)


def stage_program(cfg, name: str, mesh, gan: bool = False) -> Program:
    """The training step of stage ``name`` of resolved config ``cfg`` as ``run_stage`` jits it;
    the autoencoder stage with (``gan``) or without its discriminator, and with LPIPS when the
    config names its weights (they are read, as the trainer reads them)."""
    perceptual = autoencoder_step.load_perceptual(cfg.autoencoder) if name == "autoencoder" else (None, None)
    stage = stages.stage_of(cfg, name, perceptual)
    abstract, shardings = loop.abstract_state(stage, mesh, jax.random.PRNGKey(0), cfg.mesh.fsdp_min_size)
    program = loop.step_program(stage, mesh, shardings, cfg.mesh.fsdp_min_size)
    batch = stages.batch_specs(cfg, name)
    static = stage.static_args(cfg.autoencoder.gan_start if gan else 0)
    extra = _abstract(stage.extra_args)
    stop = jax.ShapeDtypeStruct((mesh.size,), jnp.int32)
    flops = count_flops(lambda s, b, *e: stage.step(s, b, *e, *static), abstract, batch, *extra)
    args = (abstract, batch, stop, *extra, *static)
    return Program(name, program.jitted, args, cfg[name].batch_size, float(flops))


def sampling_program(cfg, name: str, mesh, batch: int, sampling: SamplerConfig) -> Program:
    """``sample.py``'s generation (``name='sample'``) or SDEdit job (``'edit'``) at ``batch`` images."""
    model = sampling_model.abstract_model(cfg)
    sampling = dataclasses.replace(sampling, prediction=model.prediction)
    if name == "sample":
        fn = sampling_programs.generate_program(
            model.unet, model.autoencoder, model.schedule, model.latent_shape, sampling, mesh
        )
        args = tuple(sampling_programs.generate_arg_specs(model, batch).values())
    else:
        fn = sampling_programs.edit_program(model, sampling, mesh, Edit("sdedit", 0.6))
        args = tuple(sampling_programs.edit_arg_specs(model, batch).values())
    return Program(name, fn, args, batch, float(count_flops(fn, *args)))


def build(cfg, name: str, mesh, *, sample_batch: int, sampling: SamplerConfig) -> Program:
    """Program ``name`` (``targets.PROGRAMS``) of resolved config ``cfg`` over ``mesh``."""
    if name in ("autoencoder", "autoencoder_gan"):
        return dataclasses.replace(stage_program(cfg, "autoencoder", mesh, gan=name.endswith("gan")), name=name)
    if name in ("diffusion", "counterfactual"):
        return stage_program(cfg, name, mesh)
    if name in ("sample", "edit"):
        return sampling_program(cfg, name, mesh, sample_batch, sampling)
    raise ValueError(f"unknown program {name!r}; expected one of {targets.PROGRAMS}")


def collectives(hlo_text: str) -> dict:
    """``{kind: {"count", "bytes"}}`` of the collectives in optimised HLO text (an async pair counted once)."""
    found = {kind: {"count": 0, "bytes": 0} for kind in COLLECTIVES}
    pattern = re.compile(r"=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(-start)?\(")
    for match in pattern.finditer(hlo_text):
        shapes = re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", match.group(1))
        size = 0
        for dtype, dims in shapes:
            count = 1
            for d in filter(None, dims.split(",")):
                count *= int(d)
            size += count * _DTYPE_BYTES.get(dtype, 4)
        found[match.group(2)]["count"] += 1
        found[match.group(2)]["bytes"] += size
    return {kind: value for kind, value in found.items() if value["count"]}


def _resource_message(error: Exception) -> str | None:
    text = str(error)
    if "RESOURCE_EXHAUSTED" not in text and "out of memory" not in text.lower():
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = next((line for line in lines if "RESOURCE_EXHAUSTED" in line or "memory" in line.lower()), lines[0])
    return first[:400]


def compile_program(program: Program, target: targets.Target) -> dict:
    """Compile ``program`` for ``target`` and report it (module docstring); a program that does not
    fit is reported with ``fits: False`` and the compiler's message, not raised."""
    chips = target.num_devices
    record = {
        "program": program.name,
        "target": target.text,
        "chip": target.chip.name,
        "chips": chips,
        "global_batch": program.global_batch,
        "per_chip_batch": program.global_batch / chips,
        "model_flops_per_chip": program.model_flops / chips,
    }
    start = time.perf_counter()
    lowered = program.jitted.lower(*program.args)
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as error:
        message = _resource_message(error)
        if message is None:
            raise
        return {**record, "fits": False, "compiler_message": message, "compile_s": time.perf_counter() - start}
    record["compile_s"] = time.perf_counter() - start
    memory = compiled.memory_analysis()
    sizes = {
        "argument_bytes": memory.argument_size_in_bytes,
        "output_bytes": memory.output_size_in_bytes,
        "alias_bytes": memory.alias_size_in_bytes,
        "temp_bytes": memory.temp_size_in_bytes,
        "code_bytes": memory.generated_code_size_in_bytes,
    }
    total = sizes["argument_bytes"] + sizes["output_bytes"] - sizes["alias_bytes"] + sizes["temp_bytes"]
    cost = compiled.cost_analysis() or {}
    cost = cost[0] if isinstance(cost, list) else cost
    flops, accessed = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
    chip = target.chip
    compute_s = flops / (chip.peak_tflops * 1e12)
    memory_s = accessed / chip.hbm_bytes_per_s
    bound_s = max(compute_s, memory_s)
    return {
        **record,
        **sizes,
        "total_bytes": total,
        "hbm_bytes": chip.hbm_bytes,
        "fits": total <= chip.hbm_bytes,
        "headroom": 1.0 - total / chip.hbm_bytes,
        "compiler_flops_per_chip": flops,
        "bytes_accessed_per_chip": accessed,
        "collectives": collectives(compiled.as_text()),
        "roofline_s": bound_s,
        "roofline_bound": "memory" if memory_s > compute_s else "compute",
        "max_images_per_s": program.global_batch / bound_s if bound_s else None,
        "max_mfu": (program.model_flops / chips) / bound_s / (chip.peak_tflops * 1e12) if bound_s else None,
    }


def target_mesh(target: targets.Target, fsdp: int):
    """A ``('data', 'fsdp')`` mesh over the target's abstract devices."""
    return parallel.make_mesh(fsdp, targets.target_devices(target))


def summary_line(record: dict) -> str:
    """One line per program: memory against HBM, or the compiler's refusal; FLOPs; the bound."""
    head = (
        f"{record['program']} on {record['target']} ({record['chips']} x {record['chip']}), "
        f"batch {record['global_batch']} ({record['per_chip_batch']:g} per chip)"
    )
    if not record["fits"] and "compiler_message" in record:
        return f"{head}: does not fit: {record['compiler_message']}"
    gib = 2**30
    verdict = "fits" if record["fits"] else "does not fit"
    return (
        f"{head}: {verdict}, {record['total_bytes'] / gib:.2f} GiB of {record['hbm_bytes'] / gib:.2f} GiB per chip "
        f"({record['headroom']:.0%} headroom); {record['compiler_flops_per_chip']:.3g} FLOP per chip "
        f"(model count {record['model_flops_per_chip']:.3g}); roofline {record['roofline_s'] * 1e3:.3g} ms "
        f"({record['roofline_bound']}-bound) -> at most {record['max_images_per_s']:.1f} images/s; "
        f"compiled in {record['compile_s']:.1f} s"
    )
