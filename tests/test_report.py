"""fusion.report: SVG charts and the self-contained HTML document."""
from __future__ import annotations

import hashlib
import math
import re
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest

from fusion import report as R


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.ids: set[str] = set()
        self.urls: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"] or "")
        self.urls += [a[k] or "" for k in ("src", "href") if a.get(k)]
        self.scripts += tag == "script"


def test_svg_lines_maps_points_and_skips_nan() -> None:
    svg = R.svg_lines([("a", [0.0, 0.5, 1.0], [0.0, float("nan"), 1.0])], "t", "x", "y",
                      diagonal=True)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    pts = re.search(r'<polyline points="([^"]+)"', svg).group(1).split()
    assert len(pts) == 2  # the NaN point is left out
    (x0, y0), (x1, y1) = (tuple(map(float, p.split(","))) for p in pts)
    assert x0 < x1 and y0 > y1  # SVG y grows downwards
    assert "stroke-dasharray" in svg  # the diagonal


def test_svg_lines_refuses_curves_of_unequal_length() -> None:
    # zip(strict=True): a curve whose xs and ys differ in length is a bug upstream, not a shorter curve
    with pytest.raises(ValueError):
        R.svg_lines([("a", [0.0, 0.5, 1.0], [0.0, 1.0])], "t", "x", "y")


def test_svg_histogram_counts() -> None:
    svg = R.svg_histogram([0.05, 0.05, 0.95, float("nan")], "h", "x", bins=10)
    titles = re.findall(r"<title>(\d+) in", svg)
    assert sorted(map(int, titles)) == [1, 2]


def test_bland_altman_draws_limits() -> None:
    svg = R.svg_bland_altman([1, 2, 3], [0.1, -0.1, 0.0], 0.0, -0.2, 0.2, "ba", "mm²")
    assert svg.count("<circle") == 3 and "bias" in svg and "+1.96 SD" in svg
    empty = R.svg_bland_altman([], [], None, None, None, "ba", "mm²")
    assert empty.startswith("<svg") and "<circle" not in empty


def test_overlay_png_panels() -> None:
    img = np.zeros((64, 64), np.float32)
    t = np.zeros((64, 64), bool)
    t[10:20, 10:20] = True
    png = R.overlay_png(img, t, np.zeros_like(t))
    arr = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    factor = math.ceil(R.MIN_OVERLAY_PX / 64)
    assert arr.shape == (64 * factor, 3 * 64 * factor + 8, 3)
    # green tint in the true-mask panel, none in the prediction panel
    mid = arr[15 * factor, 64 * factor + 4 + 15 * factor]
    assert mid[1] > mid[2] and mid[1] > 50
    assert arr[15 * factor, 2 * 64 * factor + 8 + 15 * factor].max() == 0


def test_render_html_minimal_and_escaped() -> None:
    metrics = {
        "model": "<script>alert(1)</script>",
        "split": "test",
        "classification": {"n": 0},
        "segmentation": {"n": 0},
        "area": {},
        "notes": ["a <b>note</b>"],
    }
    overlays = [{"kind": "worst", "id": '"><script>x</script>', "dice": 0.1,
                 "png": R.overlay_png(np.zeros((8, 8)), np.ones((8, 8), bool),
                                      np.zeros((8, 8), bool))}]
    text = R.render_html(metrics, {}, overlays)
    p = _Tags()
    p.feed(text)
    assert set(R.SECTIONS) <= p.ids
    assert p.scripts == 0 and "<script>" not in text
    assert all(u.startswith("data:image/png;base64,") for u in p.urls) and len(p.urls) == 1
    assert "no slice of this split has a known mask".lower() in text.lower()


def test_render_html_full_tables() -> None:
    ci = {"auc": [0.7, 0.9]}
    metrics = {
        "classification": {
            "n": 10,
            "per_class": {"any": {"auc": 0.8, "auprc": 0.7, "positives": 4, "negatives": 6,
                                  "threshold": 0.4, "sensitivity": 0.75, "specificity": None,
                                  "f1": 0.6, "ci": ci}},
            "macro": {"auc": 0.8}, "macro_types": {"auc": 0.8},
            "multi": {"auc": None, "positives": 0, "negatives": 10, "ci": {}},
        },
        "segmentation": {"n": 3, "dice": {"mean": 0.5, "median": 0.4, "quantiles": {}}},
        "area": {"fraction": {"n": 3, "mae": 0.01, "bias": 0.0, "loa_low": -0.02,
                              "loa_high": 0.02, "pearson_r": 0.9}},
    }
    plots = {"roc": [("any", [0, 0, 1], [0, 1, 1])], "pr": [], "reliability": [],
             "dice": [0.1, 0.5, 0.9], "area_fraction": {"mean": [0.1], "diff": [0.0]}}
    text = R.render_html(metrics, plots, [])
    assert "0.800 <span class=ci>(0.700, 0.900)</span>" in text
    assert "multi (≥2 types)" in text
    assert text.count("<svg") == 5  # ROC, PR, reliability, Dice histogram, one Bland-Altman


def _by_context_metrics(with_context: bool) -> dict:
    cls = {
        "n": 10,
        "per_class": {"subarachnoid": {"auc": 0.8, "positives": 4, "negatives": 6, "ci": {}}},
        "macro_types": {"auc": 0.8},
    }
    if with_context:
        cls["by_context"] = {
            "subarachnoid": {"n_neg": 6, "alone": {"n_pos": 3, "auc": 1.0},
                             "with_other": {"n_pos": 1, "auc": 0.25}},
            "<epidural>": {"n_neg": 10, "alone": {"n_pos": 0, "auc": None},
                           "with_other": {"n_pos": 0, "auc": None}},
        }
    return {"classification": cls, "segmentation": {"n": 0}, "area": {}, "notes": []}


def test_render_html_by_context_table() -> None:
    text = R.render_html(_by_context_metrics(True), {}, [])
    p = _Tags()
    p.feed(text)
    assert "by-context" in p.ids and set(R.SECTIONS) <= p.ids
    assert "<th>beside another type: AUC</th>" in text
    assert "positives are the slices whose only type it is" in text
    assert "<tr><td>subarachnoid</td><td>6</td><td>3</td><td>1.000</td><td>1</td>" \
        "<td>0.250</td></tr>" in text
    # names escaped, undefined AUCs shown as –
    undefined = "<td>&lt;epidural&gt;</td><td>10</td><td>0</td><td>–</td><td>0</td><td>–</td>"
    assert undefined in text
    # the table sits in the classification section, before the ROC section
    assert text.index('id="classification"') < text.index('id="by-context"') \
        < text.index('id="roc"')


def test_render_html_without_by_context() -> None:
    """An older metrics.json (no "by_context") renders, without the table."""
    text = R.render_html(_by_context_metrics(False), {}, [])
    p = _Tags()
    p.feed(text)
    assert set(R.SECTIONS) <= p.ids and "by-context" not in p.ids
    assert "beside another type" not in text
    assert "<td>subarachnoid</td>" in text


# Golden sha256 of render_html's output on fixed inputs that reach every branch of every section.
# Computed from the ORIGINAL render_html (the single 173-line function, main at 1d53906) before it was
# cut into one function per section, so the refactor is pinned byte for byte. Change them only with a
# deliberate change of the page, and say so in the commit.
_GOLDEN_SHA256 = {
    "full": "d8994593b25a571592b10bb5ad55c146b61524ebb49184dbb7a72444b8d296bc",
    "empty": "033d6b887d1620e60b3ed60e91ea6a5bf7d89173b1ede4d166db2d351df55a0f",
    "partial": "06e5f65b99d61a9d5fc5f428515cd85ff657c277f9e4a04c09997812bae64d9e",
}


def _golden_inputs(case: str) -> tuple[dict, dict, list]:
    """(metrics, plots, overlays) per case; the PNG bytes are fixed so the hash does not hang on cv2."""
    if case == "empty":
        return {}, {}, []
    if case == "partial":
        metrics = {
            "model": "m & <n>", "n_slices": np.int64(7),
            "classification": {
                "n": 7, "per_class": {"epidural": {"auc": float("inf"), "ci": {"auc": [0.1, None]}}},
                "by_context": {"epidural": "not a mapping", "intraventricular": {"n_neg": 7}},
            },
            "segmentation": {"n": 2, "dice": {"mean": 0.25}},
            "area": {"fraction": {}, "mm2": {"n": 2, "bias": -1.5, "loa_low": None, "loa_high": 3}},
            "notes": [],
        }
        plots = {"reliability": [("any", [0.05, 0.15], [0.0, float("nan")])],
                 "area_mm2": {"mean": [10.0, 20.0], "diff": [-1.0, -2.0]}}
        return metrics, plots, []
    ci3 = {k: [0.61, 0.92] for k in ("auc", "auprc", "sensitivity", "specificity", "f1")}
    per_class = {
        name: {"auc": 0.8 + i / 100, "auprc": 0.5 + i / 50, "positives": 10 + i, "negatives": 90 - i,
               "threshold": 0.3 + i / 20, "sensitivity": 0.7, "specificity": float("nan"),
               "f1": 0.65, "ci": ci3}
        for i, name in enumerate(("any", "epidural", "subdural", "<subarachnoid>"))
    }
    metrics = {
        "model": "/runs/a/model", "shards": "/data/shards", "split": "test", "tta": "hflip",
        "n_slices": 120, "threshold_source": "validation", "created": "2026-11-30T10:00:00Z",
        "classification": {
            "n": 118, "per_class": per_class,
            "multi": {"auc": 0.71, "auprc": 0.4, "positives": 5, "negatives": 113, "threshold": 0.5,
                      "sensitivity": 0.6, "specificity": 0.9, "f1": 0.5, "ci": {"auc": [0.6, 0.8]}},
            "macro": {"auc": 0.83, "auprc": 0.55, "sensitivity": 0.7, "specificity": 0.8, "f1": 0.6},
            "macro_types": {"auc": 0.81, "auprc": 0.52, "sensitivity": 0.69, "specificity": 0.79,
                            "f1": 0.58},
            "by_context": {"subdural": {"n_neg": 100, "alone": {"n_pos": 8, "auc": 0.9},
                                        "with_other": {"n_pos": 4, "auc": 0.7}}},
        },
        "segmentation": {
            "n": 60, "n_true_nonempty": 25, "empty_prediction_rate": 0.04,
            "false_positive_rate": 0.1,
            **{key: {"mean": 0.6 + j / 10, "median": 0.62, "quantiles": {
                "q05": 0.1, "q25": 0.4, "q75": 0.8, "q95": 0.95}}
               for j, key in enumerate(("dice", "iou", "dice_nonempty", "iou_nonempty"))},
            "ci": {"dice": [0.55, 0.66], "iou_nonempty": [0.3, 0.4]},
        },
        "area": {
            key: {"n": 60, "mae": 0.0123, "bias": -0.0011, "loa_low": -0.03, "loa_high": 0.028,
                  "pearson_r": 0.91, "ci": {"mae": [0.01, 0.015], "bias": [-0.002, 0.0]}}
            for key in ("fraction", "fraction_from_mask", "mm2")
        },
        "notes": ["first <note>", "second & last"],
    }
    rng = np.random.default_rng(0)
    plots = {
        "roc": [(n, [0.0, 0.1, 0.4, 1.0], [0.0, 0.6, 0.9, 1.0]) for n in per_class],
        "pr": [(n, [0.0, 0.5, 1.0], [1.0, 0.8, 0.3]) for n in per_class],
        "reliability": [("any", [0.05, 0.15, 0.55], [0.0, 0.2, float("nan")])],
        "dice": [float(v) for v in rng.random(50)] + [float("nan")],
        "area_fraction": {"mean": [0.01, 0.02, 0.05], "diff": [0.001, -0.002, float("inf")]},
        "area_mm2": {"mean": [12.0, 40.0, 90.0], "diff": [1.0, -3.0, 2.5]},
    }
    overlays = [{"kind": "best", "id": "case<1>/slice_3", "dice": 0.97, "png": b"\x89PNG-best"},
                {"kind": "worst", "id": "case2/slice_9", "dice": 0.05, "png": b"\x89PNG-worst"}]
    return metrics, plots, overlays


@pytest.mark.parametrize("case", sorted(_GOLDEN_SHA256))
def test_render_html_matches_golden_sha256(case: str) -> None:
    text = R.render_html(*_golden_inputs(case))
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == _GOLDEN_SHA256[case]


def test_render_html_says_whether_masks_are_too_big() -> None:
    metrics, plots, overlays = _golden_inputs("full")
    metrics["segmentation"]["mask_size"] = {"pixel_precision": 0.25, "pixel_recall": 0.7,
                                            "area_ratio": {"median": 2.8}}
    text = R.render_html(metrics, plots, overlays)
    assert "precision 0.250, recall 0.700" in text and "median 2.800 (above 1: over-segmented)" in text
    assert "probability ≥" not in text  # older metrics.json: no mask threshold recorded
    metrics["segmentation"]["mask_threshold"] = 0.65
    assert "A pixel is bleed at probability ≥ 0.650" in R.render_html(metrics, plots, overlays)
