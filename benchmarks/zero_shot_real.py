"""A trained run on real head-CT DICOMs it has never seen: label-free false-positive figures.

Issue 10 reports the demo model's zero-shot figures on real slices (Dice 0.10, "any" 0.99 on
every slice with the easy phantom). Real slices with masks are not here, but real DICOMs are
(``../shared/data/real/rsna-dicom``: 59 RSNA slices from the skull base to above the vertex,
labels unknown for most). Their Hounsfield units say where a predicted mask cannot be blood,
so a model trained on a phantom can be checked on real scans without labels:

- ``implausible``: the share of the predicted masks' core pixels (each mask eroded by 2 px at
  512) whose HU no bleed has, below 0 (fat, air) or above 120 (bone, calcification, metal;
  acute blood reads ~40-90 HU). Pooled over slices. The core, because a true mask's edge does
  cross such HU: blurred against bone by partial volume and the kernel, and drawn by a model
  working at 96-256 px. On the real phantom's own true masks at 512 px (16 patients, seed 3)
  9.3 % of all mask pixels, and 0.06 % of core pixels, are outside 0-120 HU.
- ``no brain``: slices with under 2 % of their pixels in brain's 15-45 HU after a 5x5 median
  (above the vertex, the bone cap, the table; neck slices keep muscle and count as brain):
  any mask there is a false positive.
- ``outside the skull``: on slices whose skull closes round the brain (the skull base's
  foramina and sinuses open it on the lowest ones, which are left out), the share of mask
  pixels outside it: on temporalis, masseter and neck muscle, scalp, the holder. Outside is
  what the image border reaches without crossing bone (over 300 HU, dilated 2 px to close
  sutures and noise); the skull is closed when what it encloses holds at least half of the
  slice's brain-HU pixels. Pooled over those slices, with the number of them that carry a
  mask of 20 or more pixels outside.
- the "any" probability and how many slices get a mask at all (most RSNA slices do not bleed:
  ~14 % of the challenge's slices).

Runs the project's own ``fusion-predict RUN DICOMS --out OUT/predict`` (the run's thresholds,
its export's TTA), then scores its mask PNGs against the DICOMs' HU. Prints a table, writes
``OUT/zero_shot_real.json`` (per slice and pooled).

    python benchmarks/zero_shot_real.py RUN [RUN ...] --out OUT [--dicoms ../shared/data/real/rsna-dicom]

Each run's overlays (``fusion-predict``'s, mask in red) are also tiled into one contact sheet,
``OUT/predict-N/sheet.png``, each tile labelled with its index, p(any) and mask pixels ("NB":
no brain), to see at a glance where the masks fall.

Several runs are predicted one after another on the same slices and printed side by side. These
are not accuracy figures: a model that marks true bleeds scores the same as one that marks
brain at random, as long as both avoid bone, air and empty slices. They catch what a phantom
teaches that real CT contradicts (docs/benchmarks.md, "Zero-shot on real DICOMs").
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from data_build import dicom  # noqa: E402
from data_build.files import atomic_write_bytes, atomic_write_text  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy_benchmark import ProxyError, command_path  # noqa: E402

DEFAULT_DICOMS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "rsna-dicom"
#: HU no bleed reads: below fat/air's upper end, above acute blood plus partial volume.
BLOOD_HU_RANGE = (0.0, 120.0)
#: Brain parenchyma HU (after a 5x5 median, so noise and thin bone edges do not count).
BRAIN_HU_RANGE = (15.0, 45.0)
#: A slice with less of its pixels in `BRAIN_HU_RANGE` holds no brain worth a mask.
MIN_BRAIN_SHARE = 0.02
#: A mask's core: what a 5x5 disc erosion leaves (2 px in from its edge at 512 px).
CORE_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
#: Bone for `outside_skull`: HU above this, dilated by `CORE_KERNEL` (2 px) to close sutures.
BONE_HU = 300.0
#: A slice's skull is closed when it encloses at least this share of the brain-HU pixels.
MIN_ENCLOSED_BRAIN = 0.5
#: A mask with at least this many pixels outside the skull counts as marking it.
OUTSIDE_PIXELS = 20


def outside_skull(smooth: np.ndarray, brain: np.ndarray) -> np.ndarray | None:
    """Bool [H, W]: what the image border reaches without crossing bone, or None where the
    skull does not close round the brain or the slice has no brain-HU pixels (``smooth``:
    median-filtered HU; ``brain``: its brain-HU pixels).

    ``brain`` also holds muscle and scalp outside the skull (15-45 HU): a slice with much of
    it can read as open and drop out, so the figure leans low where muscle is thick; and on a
    skull-base slice that is only partly enclosed, brain beyond a gap counts as outside.
    """
    bone = cv2.dilate((smooth > BONE_HU).astype(np.uint8), CORE_KERNEL).astype(bool)
    _, labels = cv2.connectedComponents((~bone).astype(np.uint8), connectivity=4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    outside = np.isin(labels, border[border > 0])
    inside = ~outside & ~bone
    if not brain.any() or (inside & brain).sum() < MIN_ENCLOSED_BRAIN * brain.sum():
        return None
    return outside


def slice_figures(hu: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Label-free figures of one predicted mask (bool or 0/255 [H, W]) on its slice's HU."""
    if hu.shape != mask.shape:
        mask = cv2.resize(mask.astype(np.uint8), (hu.shape[1], hu.shape[0]),
                          interpolation=cv2.INTER_NEAREST)
    on = mask.astype(bool)
    core = cv2.erode(on.astype(np.uint8), CORE_KERNEL).astype(bool)
    lo, hi = BLOOD_HU_RANGE
    smooth = cv2.medianBlur(np.clip(hu, -1024, 3071).astype(np.float32), 5)
    brain_px = (smooth >= BRAIN_HU_RANGE[0]) & (smooth <= BRAIN_HU_RANGE[1])
    brain = float(brain_px.mean())
    outside = outside_skull(smooth, brain_px)
    return {
        "mask_pixels": int(on.sum()),
        "core_pixels": int(core.sum()),
        "implausible_pixels": int((core & ((hu < lo) | (hu > hi))).sum()),
        "brain_share": round(brain, 4),
        "no_brain": brain < MIN_BRAIN_SHARE,
        "skull_closed": outside is not None,
        "outside_pixels": None if outside is None else int((on & outside).sum()),
    }


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pooled figures of `score_run`'s per-slice rows."""
    masked = [r for r in rows if r["mask_pixels"] > 0]
    empty_head = [r for r in rows if r["no_brain"]]
    core = sum(r["core_pixels"] for r in rows)
    p_any = np.array([r["p_any"] for r in rows], dtype=np.float64)
    closed = [r for r in rows if r.get("outside_pixels") is not None]
    closed_mask = sum(r["mask_pixels"] for r in closed)
    return {
        "slices": len(rows),
        "p_any_median": round(float(np.median(p_any)), 3) if rows else None,
        "called_any": sum(r["decision_any"] for r in rows),
        "slices_with_mask": len(masked),
        "mask_pixels_median": int(np.median([r["mask_pixels"] for r in masked])) if masked else 0,
        "implausible_share": round(sum(r["implausible_pixels"] for r in rows) / core, 4) if core else 0.0,
        "no_brain_slices": len(empty_head),
        "no_brain_with_mask": sum(r["mask_pixels"] > 0 for r in empty_head),
        "no_brain_called_any": sum(r["decision_any"] for r in empty_head),
        "skull_closed_slices": len(closed),
        # None, not 0: rows scored before the figure existed, or no mask on a closed skull.
        "outside_share": round(sum(r["outside_pixels"] for r in closed) / closed_mask, 4) if closed_mask else None,
        "outside_slices": sum(r["outside_pixels"] >= OUTSIDE_PIXELS for r in closed) if closed else None,
    }


def predict(run: Path, dicoms: Path, out: Path) -> Path:
    """``fusion-predict RUN DICOMS --out OUT`` (the project's own command); its predictions.csv."""
    try:
        exe = command_path("fusion-predict")
    except ProxyError as e:
        raise SystemExit(str(e)) from None
    cmd = [exe, str(run), str(dicoms), "--out", str(out), "--overwrite"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"fusion-predict failed on {run}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return out / "predictions.csv"


def score_run(predictions: Path) -> list[dict[str, Any]]:
    """Per-slice figures: each row of predictions.csv against its DICOM's HU."""
    rows = []
    with predictions.open(newline="") as f:
        for rec in csv.DictReader(f):
            if not rec.get("mask_png"):
                raise SystemExit(f"{predictions} has no mask for {rec['id']}: the run has no mask head")
            hu, _ = dicom.read_hu(rec["path"])
            mask = cv2.imread(str(predictions.parent / rec["mask_png"]), cv2.IMREAD_GRAYSCALE)
            if mask is None:
                raise SystemExit(f"cannot read the predicted mask {rec['mask_png']} of {rec['id']}")
            rows.append({"id": rec["id"], "p_any": float(rec["p_any"]),
                         "decision_any": int(rec["decision_any"]), "overlay_png": rec.get("overlay_png") or "",
                         **slice_figures(hu, mask)})
    return rows


def contact_sheet(predict_dir: Path, rows: Sequence[dict[str, Any]], tile: int = 160,
                  columns: int = 10) -> Path:
    """Tile the overlays of `score_run`'s rows (predictions.csv's ``overlay_png``, relative to
    PREDICT_DIR) into PREDICT_DIR/sheet.png; a missing overlay is a black tile, counted."""
    blank = np.zeros((tile, tile, 3), dtype=np.uint8)
    tiles, missing = [], 0
    for i, row in enumerate(rows):
        name = row.get("overlay_png")
        image = cv2.imread(str(predict_dir / name), cv2.IMREAD_COLOR) if name else None
        if image is None:  # an overlay fusion-predict did not write: a black tile, still labelled
            image = blank.copy()
            missing += 1
        image = cv2.resize(image, (tile, tile), interpolation=cv2.INTER_AREA)
        label = f"{i} {row['p_any']:.2f} {row['mask_pixels']}" + (" NB" if row["no_brain"] else "")
        cv2.putText(image, label, (2, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (0, 0, 0), 3)  # outline
        cv2.putText(image, label, (2, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (0, 255, 255), 1)
        tiles.append(image)
    tiles += [blank] * ((-len(tiles) % columns) if tiles else columns)
    sheet = np.vstack([np.hstack(tiles[j:j + columns]) for j in range(0, len(tiles), columns)])
    ok, png = cv2.imencode(".png", sheet)
    if not ok:
        raise SystemExit(f"cannot encode the contact sheet of {predict_dir}")
    out = predict_dir / "sheet.png"
    atomic_write_bytes(out, png.tobytes())
    if missing:
        print(f"warning: {missing} of {len(rows)} overlays missing from {predict_dir}: black tiles in {out}",
              file=sys.stderr)
    return out


COLUMNS = (("slices", "slices"), ("p_any_median", "median p(any)"), ("called_any", "called any"),
           ("slices_with_mask", "slices with a mask"), ("mask_pixels_median", "mask px, median"),
           ("implausible_share", "mask core px on HU < 0 or > 120"), ("no_brain_slices", "slices without brain"),
           ("no_brain_with_mask", "of them with a mask"), ("no_brain_called_any", "of them called any"),
           ("skull_closed_slices", "slices with a closed skull"),
           ("outside_share", "of their mask px, outside the skull"),
           ("outside_slices", f"of them with >= {OUTSIDE_PIXELS} mask px outside"))


def table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown table, one row per run."""
    lines = ["| run | " + " | ".join(title for _, title in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for run, res in results.items():
        s = res["summary"]
        lines.append(f"| {run} | " + " | ".join(str(s.get(key)) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="fusion-train run folders (or their exports)")
    p.add_argument("--dicoms", type=Path, default=DEFAULT_DICOMS, help=f"real DICOM slices [{DEFAULT_DICOMS}]")
    p.add_argument("--out", type=Path, required=True, help="work and result folder")
    args = p.parse_args(argv)
    if not args.dicoms.is_dir():
        raise SystemExit(f"no DICOM folder at {args.dicoms}: pass --dicoms with real head-CT slices")
    results: dict[str, dict[str, Any]] = {}
    for i, run in enumerate(args.runs):
        name = f"{i}:{run}"
        predictions = predict(run, args.dicoms, args.out / f"predict-{i}")
        rows = score_run(predictions)
        results[name] = {"summary": summarise(rows), "slices": rows,
                         "sheet": str(contact_sheet(predictions.parent, rows))}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "zero_shot_real.json", json.dumps(
        {"dicoms": str(args.dicoms), "blood_hu_range": BLOOD_HU_RANGE, "brain_hu_range": BRAIN_HU_RANGE,
         "min_brain_share": MIN_BRAIN_SHARE, "bone_hu": BONE_HU, "min_enclosed_brain": MIN_ENCLOSED_BRAIN,
         "outside_pixels": OUTSIDE_PIXELS, "runs": results}, indent=1) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
