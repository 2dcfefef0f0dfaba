import base64
import html.parser
import json
import re

import numpy as np
import pytest

from ldm_jax.data.imageio import decode_png
from ldm_jax.evaluation import report


class _Collector(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.frames, self.ranges, self.scripts, self.polylines = [], [], [], 0, 0
        self.text = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        elif tag == "div" and "frame" in (attrs.get("class") or "").split():
            self.frames.append(attrs["data-t"])
        elif tag == "input" and attrs.get("type") == "range":
            self.ranges.append(attrs)
        elif tag == "script":
            self.scripts += 1
            assert "src" not in attrs
        elif tag == "polyline":
            self.polylines += 1
        for name, value in attrs.items():
            if name in ("href", "src") and value:
                assert value.startswith("data:image/png;base64,"), value[:40]

    def handle_data(self, data):
        self.text.append(data)


def _report():
    rng = np.random.default_rng(0)
    float_image = rng.uniform(-1, 1, size=(16, 16, 1)).astype(np.float32)
    ts = [0, 250, 500, 999]
    return {
        "title": "Run <b>&</b> test",
        "curves": {
            "losses": {
                "loss": [(0, 1.0), (10, 0.5), (20, float("nan")), (30, 0.25)],
                "ema <loss>": [(0, 0.9), (30, 0.3)],
            },
            "empty": {"lr": []},
        },
        "sample_grids": {
            "density=A": rng.integers(0, 4096, (20, 30), dtype=np.uint16),
            "density=<D>": rng.integers(0, 256, (20, 30), dtype=np.uint8),
        },
        "forward_diffusion": {"t": ts, "frames": [float_image] * len(ts)},
        "trajectory": {"captions": ["t=999", "t=0"], "frames": [float_image, float_image[..., 0]]},
        "editing": [
            {
                "caption": "dense removal <seed 1>",
                "images": [("input", float_image), ("edit", float_image), ("ground truth", float_image)],
            }
        ],
        "metrics": {
            "fid": 12.3456789,
            "kid": {"mean": 0.01, "std": 0.002},
            "classifier": {"density": {"accuracy": 0.97, "confusion": [[5, 1], [0, 4]]}},
            "note": "<script>alert(1)</script>",
        },
    }


def test_report_renders_self_contained(tmp_path):
    path = tmp_path / "out" / "report.html"
    report.write_report(path, _report())
    text = path.read_text(encoding="utf-8")
    parser = _Collector()
    parser.feed(text)
    parser.close()

    # every image is an embedded PNG that decodes
    assert len(parser.images) == 2 + 4 + 2 + 3
    for attrs in parser.images:
        prefix = "data:image/png;base64,"
        assert attrs["src"].startswith(prefix)
        data = base64.b64decode(attrs["src"][len(prefix) :], validate=True)
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        assert decode_png(data).dtype == np.uint8

    # one slider frame per chosen t, one range input spanning them, one inline script
    assert parser.frames == ["t = 0", "t = 250", "t = 500", "t = 999"]
    assert len(parser.ranges) == 1 and parser.ranges[0]["min"] == "0" and parser.ranges[0]["max"] == "3"
    assert parser.scripts == 1
    assert parser.polylines == 2

    # no external resources, all text escaped
    assert not re.search(r"(https?:)?//[a-z0-9]", text, re.IGNORECASE)
    assert "<b>&</b>" not in text and "<script>alert" not in text
    assert "Run <b>&</b> test" in "".join(parser.text)
    assert "ema <loss>" in "".join(parser.text) and "dense removal <seed 1>" in "".join(parser.text)
    assert "12.35" in text and not list(tmp_path.glob("out/.*tmp"))


def test_report_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown report sections"):
        report.render_report({"title": "x", "sampels": {}})
    with pytest.raises(ValueError, match="one frame per t"):
        report.render_report({"forward_diffusion": {"t": [0, 1], "frames": [np.zeros((4, 4), np.uint8)]}})
    with pytest.raises(ValueError, match="grayscale"):
        report.render_report({"sample_grids": {"a": np.zeros((4, 4, 3), np.uint8)}})
    # only the sections given are rendered; no slider, no script
    text = report.render_report({"metrics": {"a": 1}})
    assert "<script" not in text and '<section id="metrics">' in text


def test_training_curves_cover_every_stage_that_logged(tmp_path):
    from ldm_jax.evaluation.outputs import training_curves

    for stage, losses in (("autoencoder", [0.5, 0.25]), ("counterfactual", [2.0])):
        (tmp_path / stage).mkdir()
        rows = [{"step": 10 * i, "loss": loss} for i, loss in enumerate(losses)] + [{"step": 99, "lr": 1e-4}]
        (tmp_path / stage / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    curves = training_curves(tmp_path)
    assert curves == {
        "autoencoder loss": {"loss": [(0, 0.5), (10, 0.25)]},
        "counterfactual loss": {"loss": [(0, 2.0)]},
    }
