"""A self-contained HTML evaluation report: no server, no external assets, no plotting library.

``render_report(report)`` turns a plain dict into one HTML page; ``write_report(path, report)``
writes it atomically. Images are embedded as base64 PNG data URIs, training curves as inline
SVG polylines, the forward-diffusion frames behind an ``<input type=range>`` with a few lines
of inline script. All text is HTML-escaped. Keys of ``report`` (all optional but ``title``):

``title``: str.
``curves``: ``{chart title: {series name: [(step, value), ...]}}``.
``sample_grids``: ``{condition: image}`` (e.g. ``make_grid`` of samples per condition).
``forward_diffusion``: ``{"t": [t, ...], "frames": [image, ...]}`` (one frame per t; a slider).
``trajectory``: ``{"captions": [str, ...], "frames": [image, ...]}`` (a denoising trajectory).
``editing``: ``[{"caption": str, "images": [(label, image), ...]}, ...]`` (one row per example,
e.g. input, edit, ground truth).
``metrics``: nested ``{name: value or dict or 2-D list}`` rendered as nested tables.

Images are ``[H, W]`` or ``[H, W, 1]``: uint8 as is, uint16 as 12-bit (``0..4095``), float as the
model range ``[-1, 1]``; all shown as 8-bit grayscale.
"""

from __future__ import annotations

import base64
import html
import math
import numbers
import os

import numpy as np

from ldm_jax.data.imageio import MAX_VALUE, encode_png
from ldm_jax.storage import write_atomic

SECTIONS = ("curves", "sample_grids", "forward_diffusion", "trajectory", "editing", "metrics")
_MARKED_POINTS = 32
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
STYLE = """
body{font-family:sans-serif;margin:2em;max-width:1200px;color:#222}
h2{border-bottom:1px solid #ccc;padding-bottom:.2em}
figure{display:inline-block;margin:.4em;text-align:center;vertical-align:top}
figcaption{font-size:.85em;color:#444}
img{image-rendering:pixelated;border:1px solid #ddd;min-width:96px}
table{border-collapse:collapse;margin:.3em 0}
td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}
.row{margin:.5em 0;border-bottom:1px dotted #ccc}.chart{display:inline-block;margin:.5em}
"""
SLIDER_SCRIPT = """
document.querySelectorAll('.slider').forEach(function(box){
  var frames=box.querySelectorAll('.frame'), range=box.querySelector('input'), label=box.querySelector('.t');
  function show(){frames.forEach(function(f,i){f.hidden=(i!=range.value);});
    label.textContent=frames[range.value].getAttribute('data-t');}
  range.addEventListener('input',show); show();
});
"""


def _text(value) -> str:
    return html.escape(str(value), quote=True)


def _as_uint8(image) -> np.ndarray:
    """8-bit grayscale ``[H, W]`` from uint8, 12-bit uint16 or model-range float images."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"expected a grayscale image [H, W] or [H, W, 1], got shape {image.shape}")
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return np.round(np.clip(image, 0, MAX_VALUE) * (255.0 / MAX_VALUE)).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        return np.round((np.clip(np.nan_to_num(image, nan=-1.0), -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    raise ValueError(f"unsupported image dtype {image.dtype} (uint8, uint16 or float)")


def image_tag(image, alt: str = "") -> str:
    """``<img>`` with the image embedded as a base64 PNG data URI."""
    data = base64.b64encode(encode_png(_as_uint8(image))).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_text(alt)}">'


def figure(image, caption) -> str:
    """An embedded image with its caption below."""
    return f"<figure>{image_tag(image, caption)}<figcaption>{_text(caption)}</figcaption></figure>"


def _format(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return f"{float(value):.4g}"
    return str(value)


# ----------------------------------------------------------------------------- sections


def chart(title: str, series: dict, width: int = 480, height: int = 260) -> str:
    """Inline SVG line chart of ``{name: [(step, value), ...]}``; non-finite points are dropped."""
    clean = {}
    for name, points in series.items():
        points = [(float(s), float(v)) for s, v in points if math.isfinite(float(s)) and math.isfinite(float(v))]
        if points:
            clean[name] = sorted(points)
    if not clean:
        return f'<div class="chart"><b>{_text(title)}</b>: no finite values</div>'
    steps = [s for pts in clean.values() for s, _ in pts]
    values = [v for pts in clean.values() for _, v in pts]
    x0, x1 = min(steps), max(steps)
    y0, y1 = min(values), max(values)
    x1, y1 = (x1 if x1 > x0 else x0 + 1.0), (y1 if y1 > y0 else y0 + 1.0)
    left, right, top, bottom = 60, 10, 20, 30
    plot_w, plot_h = width - left - right, height - top - bottom

    def xy(s, v):
        return left + (s - x0) / (x1 - x0) * plot_w, top + (1 - (v - y0) / (y1 - y0)) * plot_h

    def label(x, y, value, anchor="start"):
        return f'<text x="{x}" y="{y}" text-anchor="{anchor}" font-size="11">{_text(_format(value))}</text>'

    parts = [
        f'<svg width="{width}" height="{height}" role="img"><title>{_text(title)}</title>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>',
        label(left - 4, top + 4, y1, "end"),
        label(left - 4, top + plot_h, y0, "end"),
        label(left, height - 12, x0),
        label(left + plot_w, height - 12, x1, "end"),
    ]
    legend = []
    for i, (name, points) in enumerate(clean.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
            f'points="{" ".join("%.1f,%.1f" % xy(s, v) for s, v in points)}"/>'
        )
        if len(points) <= _MARKED_POINTS:  # short series (e.g. one operating point) get markers
            parts += ['<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>' % (*xy(s, v), colour) for s, v in points]
        legend.append(f'<span style="color:{colour}">&#9632; {_text(name)}</span>')
    parts.append("</svg>")
    return f'<div class="chart"><b>{_text(title)}</b><br>{"".join(parts)}<br>{" ".join(legend)}</div>'


def _curves(curves: dict) -> str:
    return "".join(chart(title, series) for title, series in curves.items())


def _sample_grids(grids: dict) -> str:
    return "".join(figure(image, condition) for condition, image in grids.items())


def slider(labels: list[str], frames: list[str]) -> str:
    """One frame (HTML) shown at a time behind an ``<input type=range>``; ``labels[i]`` is shown
    beside the range while frame i is (``SLIDER_SCRIPT`` does the switching)."""
    if len(labels) != len(frames) or not frames:
        raise ValueError(f"a slider needs one label per frame, got {len(labels)} labels and {len(frames)} frames")
    shown = "".join(
        f'<div class="frame" data-t="{_text(label)}"{" hidden" if i else ""}>{frame}</div>'  # frame 0 shown
        for i, (label, frame) in enumerate(zip(labels, frames))
    )
    return (
        f'<div class="slider">{shown}<input type="range" min="0" max="{len(frames) - 1}" step="1" value="0" '
        f'aria-label="diffusion step"> <span class="t"></span></div>'
    )


def _forward_diffusion(section: dict) -> str:
    ts, frames = list(section["t"]), list(section["frames"])
    if len(ts) != len(frames) or not frames:
        raise ValueError(f"forward_diffusion needs one frame per t, got {len(ts)} t and {len(frames)} frames")
    return slider([f"t = {t}" for t in ts], [image_tag(f, f"t = {t}") for t, f in zip(ts, frames)])


def _trajectory(section: dict) -> str:
    captions, frames = list(section["captions"]), list(section["frames"])
    if len(captions) != len(frames):
        raise ValueError(f"trajectory needs one caption per frame, got {len(captions)} and {len(frames)}")
    return "".join(figure(f, c) for c, f in zip(captions, frames))


def image_rows(rows: list) -> str:
    """Rows of captioned images: ``[{"caption": str, "images": [(label, image), ...]}, ...]``."""
    return "".join(
        f'<div class="row"><p>{_text(row.get("caption", ""))}</p>'
        f"{''.join(figure(image, label) for label, image in row['images'])}</div>"
        for row in rows
    )


def _value(value) -> str:
    """A metric cell: a nested table for dicts, a grid for 2-D arrays (e.g. confusion matrices)."""
    if isinstance(value, dict):
        return table(value)
    if isinstance(value, (list, tuple, np.ndarray)):
        array = np.asarray(value, dtype=object)
        if array.ndim == 2:
            return (
                "<table>"
                + "".join("<tr>" + "".join(f"<td>{_text(_format(v))}</td>" for v in row) + "</tr>" for row in array)
                + "</table>"
            )
        return _text(", ".join(_format(v) for v in array.ravel()))
    return _text(_format(value))


def table(metrics: dict) -> str:
    """``{name: value}`` as a two-column table (nested dicts as nested tables, 2-D lists as grids)."""
    rows = "".join(f"<tr><th>{_text(k)}</th><td>{_value(v)}</td></tr>" for k, v in metrics.items())
    return f"<table>{rows}</table>"


_RENDER = {
    "curves": ("Training curves", _curves),
    "sample_grids": ("Samples per condition", _sample_grids),
    "forward_diffusion": ("Forward diffusion", _forward_diffusion),
    "trajectory": ("Denoising trajectory", _trajectory),
    "editing": ("Editing", image_rows),
    "metrics": ("Metrics", table),
}


def render_report(report: dict) -> str:
    """The HTML page of ``report`` (see the module docstring for its keys)."""
    unknown = set(report) - set(SECTIONS) - {"title"}
    if unknown:
        raise ValueError(f"unknown report sections {sorted(unknown)}; expected title and {SECTIONS}")
    title = report.get("title", "Evaluation report")
    body = [f"<h1>{_text(title)}</h1>"]
    for key in SECTIONS:
        if report.get(key) is not None:
            heading, render = _RENDER[key]
            body.append(f'<section id="{key}"><h2>{heading}</h2>{render(report[key])}</section>')
    script = SLIDER_SCRIPT if report.get("forward_diffusion") is not None else ""
    return page(title, "".join(body), script)


def page(title: str, body: str, script: str = "", style: str = "") -> str:
    """A whole HTML document: ``title`` (escaped), ``body`` (HTML), ``STYLE`` then ``style``, and an
    inline ``script``."""
    title = _text(title)
    script = f"<script>{script}</script>" if script else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{STYLE}{style}</style></head><body>{body}{script}</body></html>\n"
    )


def write_report(path: str | os.PathLike, report: dict) -> None:
    """Render ``report`` and write it to ``path`` atomically (temporary file, then rename)."""
    write_atomic(path, render_report(report).encode("utf-8"))
