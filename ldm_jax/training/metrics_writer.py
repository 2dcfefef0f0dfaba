"""Scalars and images to ``metrics.jsonl`` and TensorBoard event files (tensorboardX, no TensorFlow)."""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np

from ldm_jax.storage import write_atomic


class MetricsWriter:
    """Writes on the first process only; other processes get a writer that does nothing.

    A run resumed at ``start_step`` first drops the ``metrics.jsonl`` rows of later steps
    (written after the checkpoint it resumes from), so every step is listed once.
    """

    def __init__(self, logdir: str | pathlib.Path, enabled: bool = True, start_step: int = 0):
        self.enabled = enabled
        self.logdir = pathlib.Path(logdir)
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        self.logdir.mkdir(parents=True, exist_ok=True)
        path = self.logdir / "metrics.jsonl"
        if path.exists():
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= start_step]
            if len(kept) != len(lines):
                write_atomic(path, "".join(kept).encode())
        self._jsonl = open(path, "a", encoding="utf-8")
        self._tb = SummaryWriter(str(self.logdir / "tensorboard"))

    def scalars(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        for name, value in values.items():
            value = float(value)
            row[name] = value if math.isfinite(value) else str(value)
            self._tb.add_scalar(name, value, int(step))
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        """A uint8 grayscale image ``[H, W]``."""
        if self.enabled:
            self._tb.add_image(name, np.asarray(image)[None], int(step), dataformats="CHW")

    def flush(self) -> None:
        if self.enabled:
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
