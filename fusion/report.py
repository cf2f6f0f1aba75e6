"""A self-contained HTML evaluation report: inline SVG charts and base64 PNG overlays.

No plotting library: the charts are simple enough to draw as SVG by hand, and the one HTML file
opens anywhere (no external URL, script or font), so it can be mailed or archived with a run.
"""
from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

#: Colour-blind-safe palette (Okabe-Ito), one colour per curve.
PALETTE: tuple[str, ...] = (
    "#000000",
    "#E69F00",
    "#56B4E9",
    "#009E73",
    "#D55E00",
    "#0072B2",
    "#CC79A7",
    "#F0E442",
)

#: Section ids of the report, in order (tests check that each is present).
SECTIONS: tuple[str, ...] = (
    "summary",
    "classification",
    "roc",
    "pr",
    "reliability",
    "segmentation",
    "area",
    "overlays",
    "notes",
)

#: Overlays smaller than this (px) are enlarged by an integer factor.
MIN_OVERLAY_PX = 192

_W, _H = 360, 300  # chart size in px
_ML, _MR, _MT, _MB = 52, 12, 28, 42  # margins: left, right, top, bottom


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    try:
        f = float(value)
    except (TypeError, ValueError):
        return _esc(value)
    if not math.isfinite(f):
        return "–"
    return f"{f:.{digits}f}"


def _fmt_ci(value: Any, ci: Any, digits: int = 3) -> str:
    text = _fmt(value, digits)
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
        text += f" <span class=ci>({_fmt(ci[0], digits)}, {_fmt(ci[1], digits)})</span>"
    return text


class _Axes:
    """Maps data coordinates to SVG pixels inside the chart's margins."""

    def __init__(self, xlim: tuple[float, float], ylim: tuple[float, float]) -> None:
        x0, x1 = xlim
        y0, y1 = ylim
        self.xlim = (x0, x1 if x1 > x0 else x0 + 1.0)
        self.ylim = (y0, y1 if y1 > y0 else y0 + 1.0)

    def x(self, v: float) -> float:
        a, b = self.xlim
        return _ML + (v - a) / (b - a) * (_W - _ML - _MR)

    def y(self, v: float) -> float:
        a, b = self.ylim
        return _H - _MB - (v - a) / (b - a) * (_H - _MT - _MB)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def _frame(ax: _Axes, title: str, xlabel: str, ylabel: str) -> list[str]:
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
        f'viewBox="0 0 {_W} {_H}" role="img" aria-label="{_esc(title)}">',
        f'<rect x="0" y="0" width="{_W}" height="{_H}" fill="white"/>',
        f'<text x="{_W / 2}" y="17" text-anchor="middle" font-size="13" '
        f'font-weight="bold">{_esc(title)}</text>',
    ]
    x0, x1 = ax.xlim
    y0, y1 = ax.ylim
    for t in _ticks(x0, x1):
        px = ax.x(t)
        parts.append(
            f'<line x1="{px:.1f}" y1="{_MT}" x2="{px:.1f}" y2="{_H - _MB}" stroke="#eee"/>'
            f'<text x="{px:.1f}" y="{_H - _MB + 14}" text-anchor="middle" '
            f'font-size="10">{t:g}</text>'
        )
    for t in _ticks(y0, y1):
        py = ax.y(t)
        parts.append(
            f'<line x1="{_ML}" y1="{py:.1f}" x2="{_W - _MR}" y2="{py:.1f}" stroke="#eee"/>'
            f'<text x="{_ML - 4}" y="{py + 3:.1f}" text-anchor="end" font-size="10">{t:g}</text>'
        )
    parts.append(
        f'<rect x="{_ML}" y="{_MT}" width="{_W - _ML - _MR}" height="{_H - _MT - _MB}" '
        f'fill="none" stroke="#444"/>'
        f'<text x="{(_ML + _W - _MR) / 2}" y="{_H - 8}" text-anchor="middle" '
        f'font-size="11">{_esc(xlabel)}</text>'
        f'<text x="12" y="{(_MT + _H - _MB) / 2}" text-anchor="middle" font-size="11" '
        f'transform="rotate(-90 12 {(_MT + _H - _MB) / 2})">{_esc(ylabel)}</text>'
    )
    return parts


def _legend(labels: Sequence[str], colors: Sequence[str]) -> list[str]:
    parts = []
    for i, (label, color) in enumerate(zip(labels, colors, strict=True)):
        y = _MT + 12 + i * 13
        parts.append(
            f'<line x1="{_W - _MR - 118}" y1="{y - 3}" x2="{_W - _MR - 104}" y2="{y - 3}" '
            f'stroke="{color}" stroke-width="2"/>'
            f'<text x="{_W - _MR - 100}" y="{y}" font-size="10">{_esc(label)}</text>'
        )
    return parts


def svg_lines(
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    title: str,
    xlabel: str,
    ylabel: str,
    xlim: tuple[float, float] = (0.0, 1.0),
    ylim: tuple[float, float] = (0.0, 1.0),
    diagonal: bool = False,
    markers: bool = False,
) -> str:
    """Line chart (ROC, PR, reliability). Non-finite points are left out.

    Args:
      series: (label, xs, ys) per curve; xs and ys of equal length.
      diagonal: draw the y = x reference line (chance ROC, perfect calibration).
      markers: draw a dot at every point (for sparse curves such as reliability bins).

    Returns:
      An ``<svg>`` element as text.

    Raises:
      ValueError: a curve's xs and ys differ in length (points would be silently dropped).
    """
    ax = _Axes(xlim, ylim)
    parts = _frame(ax, title, xlabel, ylabel)
    if diagonal:
        parts.append(
            f'<line x1="{ax.x(xlim[0]):.1f}" y1="{ax.y(ylim[0]):.1f}" x2="{ax.x(xlim[1]):.1f}" '
            f'y2="{ax.y(ylim[1]):.1f}" stroke="#999" stroke-dasharray="4 3"/>'
        )
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(series))]
    for (_, xs, ys), color in zip(series, colors, strict=True):
        pts = [
            (float(x), float(y))
            for x, y in zip(xs, ys, strict=True)
            if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)
        ]
        if not pts:
            continue
        path = " ".join(f"{ax.x(x):.1f},{ax.y(y):.1f}" for x, y in pts)
        parts.append(
            f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.6"/>'
        )
        if markers:
            parts.extend(
                f'<circle cx="{ax.x(x):.1f}" cy="{ax.y(y):.1f}" r="2.5" fill="{color}"/>'
                for x, y in pts
            )
    parts.extend(_legend([s[0] for s in series], colors))
    parts.append("</svg>")
    return "".join(parts)


def svg_histogram(
    values: Sequence[float], title: str, xlabel: str, bins: int = 20,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> str:
    """Histogram of values on equal bins over ``value_range``."""
    vals = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    counts, edges = np.histogram(vals, bins=bins, range=value_range)
    top = max(1, int(counts.max()) if counts.size else 1)
    ax = _Axes(value_range, (0.0, top * 1.05))
    parts = _frame(ax, title, xlabel, "slices")
    for c, a, b in zip(counts, edges[:-1], edges[1:], strict=True):
        if c == 0:
            continue
        x, w = ax.x(a), ax.x(b) - ax.x(a)
        y = ax.y(c)
        parts.append(
            f'<rect x="{x + 0.5:.1f}" y="{y:.1f}" width="{max(w - 1, 0.5):.1f}" '
            f'height="{ax.y(0) - y:.1f}" fill="{PALETTE[5]}"><title>{int(c)} in '
            f"[{a:.2f}, {b:.2f})</title></rect>"
        )
    parts.append("</svg>")
    return "".join(parts)


def svg_bland_altman(
    mean: Sequence[float], diff: Sequence[float], bias: float | None, lo: float | None,
    hi: float | None, title: str, unit: str,
) -> str:
    """Bland-Altman plot: difference (pred - true) against the mean, with bias and 95 % limits."""
    m = np.asarray(mean, dtype=float)
    d = np.asarray(diff, dtype=float)
    keep = np.isfinite(m) & np.isfinite(d)
    m, d = m[keep], d[keep]
    lines = [v for v in (bias, lo, hi) if v is not None and math.isfinite(v)]
    ys = np.r_[d, lines] if lines else d
    if m.size == 0:
        m, ys = np.array([0.0, 1.0]), np.array([-1.0, 1.0])
    pad_y = 0.1 * (ys.max() - ys.min() or 1.0)
    pad_x = 0.05 * (m.max() - m.min() or 1.0)
    ax = _Axes((m.min() - pad_x, m.max() + pad_x), (ys.min() - pad_y, ys.max() + pad_y))
    parts = _frame(
        ax, title, f"mean of predicted and true ({unit})", f"predicted − true ({unit})"
    )
    # not strict: with no finite point, m holds a placeholder range for the axes while d stays empty
    for x, y in zip(m, d, strict=False):
        parts.append(
            f'<circle cx="{ax.x(x):.1f}" cy="{ax.y(y):.1f}" r="2" fill="{PALETTE[5]}" '
            f'fill-opacity="0.6"/>'
        )
    limits = ((bias, "bias", ""), (lo, "−1.96 SD", "4 3"), (hi, "+1.96 SD", "4 3"))
    for value, label, dash in limits:
        if value is None or not math.isfinite(value):
            continue
        py = ax.y(value)
        # bias labelled on the left, limits on the right, so equal values stay readable
        tx, anchor = (_ML + 3, "start") if label == "bias" else (_W - _MR - 2, "end")
        ty = py + 11 if label == "−1.96 SD" else py - 3
        parts.append(
            f'<line x1="{_ML}" y1="{py:.1f}" x2="{_W - _MR}" y2="{py:.1f}" stroke="{PALETTE[4]}" '
            f'stroke-dasharray="{dash}"/><text x="{tx}" y="{ty:.1f}" text-anchor="{anchor}" '
            f'font-size="10" fill="{PALETTE[4]}">{label} {value:.3g}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def overlay_png(image: np.ndarray, true_mask: np.ndarray, pred_mask: np.ndarray) -> bytes:
    """Three panels side by side as PNG bytes: image, true mask (green), predicted mask (red).

    Args:
      image: [H, W] float in [0, 1] (one window) or uint8.
      true_mask, pred_mask: [H, W] bool.
    """
    import cv2

    img = np.asarray(image)
    gray = img if img.dtype == np.uint8 else np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    true_mask = np.asarray(true_mask, bool)
    pred_mask = np.asarray(pred_mask, bool)
    # Small slices (tests, low-resolution runs) are enlarged by whole pixels to stay legible.
    factor = max(1, int(math.ceil(MIN_OVERLAY_PX / max(gray.shape))))
    if factor > 1:
        gray = np.kron(gray, np.ones((factor, factor), np.uint8))
        true_mask = np.kron(true_mask, np.ones((factor, factor), bool))
        pred_mask = np.kron(pred_mask, np.ones((factor, factor), bool))
    base = np.repeat(gray[..., None], 3, axis=-1)  # BGR for cv2

    def tinted(mask: np.ndarray, bgr: tuple[int, int, int]) -> np.ndarray:
        out = base.copy()
        m = np.asarray(mask, bool)
        out[m] = (0.55 * out[m] + 0.45 * np.asarray(bgr)).astype(np.uint8)
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, bgr, 1)
        return out

    gap = np.full((gray.shape[0], 4, 3), 255, np.uint8)
    panel = np.concatenate(
        [base, gap, tinted(true_mask, (0, 200, 0)), gap, tinted(pred_mask, (0, 0, 230))], axis=1
    )
    ok, buf = cv2.imencode(".png", panel)
    if not ok:
        raise ValueError("PNG encoding of an overlay failed")
    return buf.tobytes()


def data_uri_png(png: bytes) -> str:
    """``data:image/png;base64,...`` for an ``<img src>``."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;
color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
h3{font-size:15px;margin-top:18px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}
.ci{color:#777;font-size:11px}.charts{display:flex;flex-wrap:wrap;gap:12px}
.note{color:#555;font-size:13px}figure{display:inline-block;margin:6px 12px 6px 0;
vertical-align:top}figcaption{font-size:12px;color:#444}
"""


@dataclass(frozen=True)
class _Row:
    """A table row: each field is one HTML-ready cell (already escaped or formatted), in column order.

    Subclasses set ``HEADER`` (the column titles, plain text) and declare one field per column, so a
    table's header and its rows cannot drift apart.
    """

    HEADER: ClassVar[tuple[str, ...]] = ()

    def cells(self) -> tuple[str, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))


@dataclass(frozen=True)
class _SummaryRow(_Row):
    HEADER: ClassVar[tuple[str, ...]] = ("", "value")
    label: str
    value: str


@dataclass(frozen=True)
class _ClassificationRow(_Row):
    HEADER: ClassVar[tuple[str, ...]] = (
        "label", "pos", "neg", "AUC", "AUPRC", "threshold", "sensitivity", "specificity", "F1",
    )
    label: str
    positives: str
    negatives: str
    auc: str
    auprc: str
    threshold: str
    sensitivity: str
    specificity: str
    f1: str

    @classmethod
    def per_label(cls, name: str, m: Mapping[str, Any]) -> _ClassificationRow:
        """One label's row, with 95 % bootstrap intervals where ``m["ci"]`` has them."""
        ci = m.get("ci", {})
        return cls(
            _esc(name),
            _fmt(m.get("positives")),
            _fmt(m.get("negatives")),
            _fmt_ci(m.get("auc"), ci.get("auc")),
            _fmt_ci(m.get("auprc"), ci.get("auprc")),
            _fmt(m.get("threshold")),
            _fmt_ci(m.get("sensitivity"), ci.get("sensitivity")),
            _fmt_ci(m.get("specificity"), ci.get("specificity")),
            _fmt_ci(m.get("f1"), ci.get("f1")),
        )

    @classmethod
    def macro(cls, label: str, m: Mapping[str, Any]) -> _ClassificationRow:
        """A macro-average row: no counts, no threshold, no intervals; the label in bold."""
        return cls(
            f"<b>{label}</b>", "", "", _fmt(m.get("auc")), _fmt(m.get("auprc")), "",
            _fmt(m.get("sensitivity")), _fmt(m.get("specificity")), _fmt(m.get("f1")),
        )


@dataclass(frozen=True)
class _ContextRow(_Row):
    HEADER: ClassVar[tuple[str, ...]] = (
        "type", "neg", "alone: n", "alone: AUC", "beside another type: n", "beside another type: AUC",
    )
    type: str
    negatives: str
    alone_n: str
    alone_auc: str
    with_other_n: str
    with_other_auc: str


@dataclass(frozen=True)
class _SegmentationRow(_Row):
    HEADER: ClassVar[tuple[str, ...]] = ("", "mean", "median", "5 %", "25 %", "75 %", "95 %")
    label: str
    mean: str
    median: str
    q05: str
    q25: str
    q75: str
    q95: str


@dataclass(frozen=True)
class _AreaRow(_Row):
    HEADER: ClassVar[tuple[str, ...]] = (
        "", "n", "MAE", "bias (pred − true)", "LoA low", "LoA high", "r",
    )
    label: str
    n: str
    mae: str
    bias: str
    loa_low: str
    loa_high: str
    pearson_r: str


def _table(row_type: type[_Row], rows: Sequence[_Row]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in row_type.HEADER)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row.cells()) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary_section(metrics: Mapping[str, Any]) -> list[str]:
    cls = metrics.get("classification") or {}
    seg = metrics.get("segmentation") or {}
    rows = [
        _SummaryRow("model", _esc(metrics.get("model", ""))),
        _SummaryRow("shards / split", _esc(f"{metrics.get('shards', '')} / {metrics.get('split', '')}")),
        _SummaryRow("test-time augmentation", _esc(metrics.get("tta", "none"))),
        _SummaryRow("slices", _fmt(metrics.get("n_slices"))),
        _SummaryRow("slices with labels", _fmt(cls.get("n"))),
        _SummaryRow("slices with known masks", _fmt(seg.get("n"))),
        _SummaryRow("thresholds from", _esc(metrics.get("threshold_source", ""))),
        _SummaryRow("macro AUC (5 types)", _fmt((cls.get("macro_types") or {}).get("auc"))),
        _SummaryRow("mean Dice (known masks)", _fmt((seg.get("dice") or {}).get("mean"))),
        _SummaryRow("created", _esc(metrics.get("created", ""))),
    ]
    return ['<section id="summary"><h2>Summary</h2>', _table(_SummaryRow, rows) + "</section>"]


def _classification_rows(cls: Mapping[str, Any]) -> list[_ClassificationRow]:
    per = dict(cls.get("per_class", {}))
    if "multi" in cls:
        per["multi (≥2 types)"] = cls["multi"]
    rows = [_ClassificationRow.per_label(name, m) for name, m in per.items()]
    for key, label in (("macro", "macro (all labels)"), ("macro_types", "macro (5 types)")):
        if key in cls:
            rows.append(_ClassificationRow.macro(label, cls[key]))
    return rows


def _context_rows(cls: Mapping[str, Any]) -> list[_ContextRow]:
    """Rows of the alone / beside-another-type table; empty when metrics lack "by_context"."""
    by_context = cls.get("by_context")
    if not isinstance(by_context, Mapping):
        return []
    rows = []
    for name, block in by_context.items():
        if not isinstance(block, Mapping):
            continue
        alone = block.get("alone") or {}
        other = block.get("with_other") or {}
        rows.append(
            _ContextRow(_esc(name), _fmt(block.get("n_neg")), _fmt(alone.get("n_pos")),
                        _fmt(alone.get("auc")), _fmt(other.get("n_pos")), _fmt(other.get("auc")))
        )
    return rows


def _classification_section(cls: Mapping[str, Any]) -> list[str]:
    out = [
        '<section id="classification"><h2>Classification</h2>',
        "<p class=note>Decisions at the calibrated thresholds (p ≥ t is positive); 95 % "
        "bootstrap intervals in grey; – = not measurable on this split (e.g. no positives). "
        "“multi” = two or more of the five types: AUC/AUPRC from P(≥2) assuming independent "
        "types, decisions = two or more positive type decisions.</p>",
        _table(_ClassificationRow, _classification_rows(cls)),
    ]
    context_rows = _context_rows(cls)
    if context_rows:
        out.append(
            '<h3 id="by-context">Each type alone vs. beside another type</h3>'
            "<p class=note>AUC of P(type) with the type alone on a slice vs. beside another "
            "hemorrhage type: negatives are all slices without the type (neg); positives are the "
            "slices whose only type it is (alone) or the slices with it and at least one other "
            "type (beside another type). – = undefined (no positives or no negatives).</p>"
        )
        out.append(_table(_ContextRow, context_rows))
    out.append("</section>")
    return out


def _chart_section(section: str, heading: str, svgs: Sequence[str], note: str = "") -> list[str]:
    out = [f'<section id="{section}"><h2>{_esc(heading)}</h2>']
    if note:
        out.append(f"<p class=note>{_esc(note)}</p>")
    out.append('<div class="charts">' + "".join(svgs) + "</div></section>")
    return out


def _curve_sections(plots: Mapping[str, Any]) -> list[str]:
    """ROC, precision-recall and reliability sections, one chart each, all labels per chart."""
    roc = svg_lines(plots.get("roc", []), "ROC", "false positive rate", "true positive rate",
                    diagonal=True)
    pr = svg_lines(plots.get("pr", []), "Precision-recall", "recall", "precision")
    reliability = svg_lines(plots.get("reliability", []), "Reliability (10 bins)", "mean predicted",
                            "fraction positive", diagonal=True, markers=True)
    return [
        *_chart_section("roc", "ROC curves", [roc]),
        *_chart_section("pr", "Precision-recall curves", [pr]),
        *_chart_section(
            "reliability", "Reliability", [reliability],
            "Points on the diagonal are well calibrated; below it the model is over-confident.",
        ),
    ]


def _segmentation_rows(seg: Mapping[str, Any]) -> list[_SegmentationRow]:
    rows = []
    for key, label in (("dice", "Dice, all known masks"), ("iou", "IoU, all known masks"),
                       ("dice_nonempty", "Dice, slices with bleed"),
                       ("iou_nonempty", "IoU, slices with bleed")):
        d = seg.get(key) or {}
        q = d.get("quantiles") or {}
        ci = (seg.get("ci") or {}).get(key)
        rows.append(_SegmentationRow(label, _fmt_ci(d.get("mean"), ci), _fmt(d.get("median")),
                                     _fmt(q.get("q05")), _fmt(q.get("q25")), _fmt(q.get("q75")),
                                     _fmt(q.get("q95"))))
    return rows


def _segmentation_section(seg: Mapping[str, Any], dice: Sequence[float]) -> list[str]:
    """Dice/IoU table and per-slice Dice histogram; a note instead when no mask is known.

    Args:
      seg: the ``segmentation`` block of metrics.json.
      dice: per-slice Dice over the slices with a known mask.
    """
    out = ['<section id="segmentation"><h2>Segmentation</h2>']
    if seg.get("n"):
        out.append(_table(_SegmentationRow, _segmentation_rows(seg)))
        out.append(
            f"<p class=note>Slices with known masks: {_fmt(seg.get('n'))}, with bleed: "
            f"{_fmt(seg.get('n_true_nonempty'))}. Empty prediction where the truth has bleed: "
            f"{_fmt(seg.get('empty_prediction_rate'))}; bleed predicted on truly empty slices: "
            f"{_fmt(seg.get('false_positive_rate'))}. Both empty counts as Dice 1."
            + (f" A pixel is bleed at probability ≥ {_fmt(seg['mask_threshold'])} (the run's mask "
               f"threshold, thresholds.json)." if "mask_threshold" in seg else "") + "</p>"
        )
        size = seg.get("mask_size")
        if isinstance(size, Mapping):  # absent from the metrics.json of older versions
            out.append(
                f"<p class=note>Pixels (all slices pooled): precision "
                f"{_fmt(size.get('pixel_precision'))}, recall {_fmt(size.get('pixel_recall'))}. "
                f"Predicted / true mask area on slices with bleed, median "
                f"{_fmt((size.get('area_ratio') or {}).get('median'))} (above 1: over-segmented)."
                f"</p>"
            )
        out.append('<div class="charts">' + svg_histogram(dice, "Dice per slice (known masks)", "Dice")
                   + "</div>")
    else:
        out.append("<p class=note>No slice of this split has a known mask.</p>")
    out.append("</section>")
    return out


def _area_rows(area: Mapping[str, Any]) -> list[_AreaRow]:
    rows = []
    for key, label in (("fraction", "area head, fraction of image"),
                       ("fraction_from_mask", "predicted mask, fraction of image"),
                       ("mm2", "area head, mm²")):
        a = area.get(key)
        if not a:
            continue
        ci = a.get("ci") or {}
        rows.append(_AreaRow(label, _fmt(a.get("n")), _fmt_ci(a.get("mae"), ci.get("mae"), 4),
                             _fmt_ci(a.get("bias"), ci.get("bias"), 4), _fmt(a.get("loa_low"), 4),
                             _fmt(a.get("loa_high"), 4), _fmt(a.get("pearson_r"))))
    return rows


def _area_section(area: Mapping[str, Any], plots: Mapping[str, Any]) -> list[str]:
    """Area agreement table and one Bland-Altman plot per unit that has points.

    Args:
      area: the ``area`` block of metrics.json (fractions of the image; mm² where spacing is known).
      plots: reads ``area_fraction`` and ``area_mm2``, each ``{"mean": [...], "diff": [...]}``.
    """
    out = ['<section id="area"><h2>Bleed area</h2>']
    rows = _area_rows(area)
    if rows:
        out.append(_table(_AreaRow, rows))
    svgs = []
    for key, unit in (("fraction", "fraction"), ("mm2", "mm²")):
        pts = plots.get(f"area_{key}")
        a = area.get(key) or {}
        if pts:
            svgs.append(svg_bland_altman(pts["mean"], pts["diff"], a.get("bias"),
                                         a.get("loa_low"), a.get("loa_high"),
                                         f"Bland-Altman, area ({unit})", unit))
    if svgs:
        out.append('<div class="charts">' + "".join(svgs) + "</div>")
    else:
        out.append("<p class=note>No slice of this split has a known area.</p>")
    out.append("</section>")
    return out


def _overlay_figure(item: Mapping[str, Any]) -> str:
    caption = (f"{_esc(item.get('kind', ''))}: {_esc(item.get('id', ''))}, "
               f"Dice {_fmt(item.get('dice'))}")
    return (f'<figure><img alt="{caption}" src="{data_uri_png(item["png"])}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _overlay_section(overlays: Sequence[Mapping[str, Any]]) -> list[str]:
    out = [
        '<section id="overlays"><h2>Best and worst slices</h2>',
        "<p class=note>Among slices whose true mask has bleed: image (brain window), true mask "
        "(green), predicted mask (red).</p>",
    ]
    if overlays:
        out.extend(_overlay_figure(item) for item in overlays)
    else:
        out.append("<p class=note>No slice with a non-empty true mask.</p>")
    out.append("</section>")
    return out


def _notes_section(notes: Sequence[str]) -> list[str]:
    return [
        '<section id="notes"><h2>Notes</h2><ul>',
        *(f"<li>{_esc(note)}</li>" for note in notes or ["none"]),
        "</ul></section>",
    ]


def render_html(
    metrics: Mapping[str, Any],
    plots: Mapping[str, Any],
    overlays: Sequence[Mapping[str, Any]],
    title: str = "fusion evaluation report",
) -> str:
    """The whole report as one HTML document.

    Args:
      metrics: the metrics.json content (see `fusion.evaluate`).
      plots: ``{"roc": [(name, fpr, tpr)], "pr": [(name, recall, precision)],
        "reliability": [(name, mean_predicted, fraction_positive)], "dice": [values],
        "area_fraction": {"mean": [...], "diff": [...]}, "area_mm2": {...} or None}``.
      overlays: ``{"id", "dice", "kind" ("best"|"worst"), "png" bytes}`` per slice.
      title: page title.

    Returns:
      HTML text; every image is inline (SVG or base64 PNG), no external URL.
    """
    # One list entry per output line: the sections return lines, joined by "\n" once at the end.
    out = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        *_summary_section(metrics),
        *_classification_section(metrics.get("classification") or {}),
        *_curve_sections(plots),
        *_segmentation_section(metrics.get("segmentation") or {}, plots.get("dice", [])),
        *_area_section(metrics.get("area") or {}, plots),
        *_overlay_section(overlays),
        *_notes_section(metrics.get("notes", [])),
    ]
    return "\n".join(out) + "</body></html>"
