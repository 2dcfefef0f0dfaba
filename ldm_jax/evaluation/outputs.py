"""What ``evaluate`` writes: ``metrics.json`` (JSON-safe numbers) and ``report.html`` with the
training curves of every stage and the forward-diffusion frames."""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np

from ldm_jax.storage import write_atomic
from ldm_jax.evaluation import report
from ldm_jax.evaluation.evaluator import Evaluator, log
from ldm_jax.evaluation.process import pixel_frames
from ldm_jax.training.stages import STAGES


def training_curves(workdir: pathlib.Path) -> dict:
    """``{"<stage> loss": {"loss": [(step, loss), ...]}}`` from each trained stage's ``metrics.jsonl``."""
    curves = {}
    for stage in STAGES:
        path = workdir / stage / "metrics.jsonl"
        if path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            curves[f"{stage} loss"] = {"loss": [(r["step"], r["loss"]) for r in rows if "loss" in r]}
    return curves


def jsonable(value):
    """``value`` with numpy scalars and arrays as Python numbers and lists, non-finite floats as text."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else str(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value


def finish(ev: Evaluator, results: dict, html: dict, start: float, real: dict) -> dict:
    """Write metrics.json and report.html (with the training curves and the forward-diffusion frames
    of the first held-out image); return ``results`` with its ``seconds``."""
    results["seconds"] = time.perf_counter() - start
    html["metrics"] = results
    html["curves"] = {**training_curves(ev.workdir), **html.pop("filter_charts", {})}
    html["forward_diffusion"] = pixel_frames(ev.model.schedule, real["image"][0])
    write_atomic(ev.out / "metrics.json", (json.dumps(jsonable(results), indent=2) + "\n").encode())
    report.write_report(ev.out / "report.html", html)
    log(f"wrote {ev.out / 'metrics.json'} and {ev.out / 'report.html'} in {results['seconds']:.0f} s")
    return results
