"""Low-data proxy benchmark (issue 10): k folds by patient on a ~90-slice synthetic drop.

    python benchmarks/proxy_benchmark.py --out /tmp/proxy                 # full: 4 folds, 256 px, 40 epochs
    python benchmarks/proxy_benchmark.py --out /tmp/proxy-quick --quick   # fold 0, 128 px, 12 epochs
    python benchmarks/proxy_benchmark.py --out /tmp/proxy-real --drop REAL_DROP   # the same on real slices

Mirrors the real-slice protocol of issue 10 (92 usable slices, all bleeding, 4 folds by
patient, 256 px, 40 epochs, the same folds for every model) with the project's own commands:

1. ``fusion-synth OUT/drop`` writes the drop (``--difficulty`` passed through when this
   fusion-synth has it), unless ``--drop`` names an existing one.
2. The drop is read with the project's own reader (`data_build.drop.discover`). Only
   **bleeding slices with a traced mask** are kept (any = 1 and at least one polygon), as in the
   real set; whole patients are taken in a hashed order until ``--target-slices`` are reached.
3. Patients are dealt into ``--folds`` folds (largest first, each to the fold with the fewest
   slices so far): a patient is in exactly one fold.
4. Per fold, two sub-drops are written as symbolic links to the drop's files (renders and
   DICOMs of the chosen slices only; labels, flagged list and segmentation CSVs whole): the
   other folds' slices, built with ``fusion-build --split-fractions 1-v,v,0`` (train and the
   validation split that calibrates thresholds and stops early; v is chosen with the builder's
   own split rule so that ~15 % of the slices, ``--val-share``, land in val), and the fold's
   own slices, built with ``--split-fractions 0,0,1`` (all test).
5. Per (preset, seed, fold): ``fusion-train`` on the first, ``fusion-evaluate --split test``
   of the run on the second. A cell whose ``result.json`` exists is not run again.
6. Figures: per-slice Dice (mean), empty predicted masks on bleeding slices, macro AUC over the
   5 types pooled over folds (per-slice probabilities from each fold's predictions.csv), the
   training-loss curve (RUN/history.csv), and the wall time of ``fusion-train`` per fold; on
   the benchmark's own synthetic drop also the mean Dice by bleed-to-brain contrast band (the
   phantom redrawn and measured once, OUT/slice_contrast.json): real bleeds are 12 / 20 / 28 HU
   above brain at p10 / 50 / 90, and the bands show where a model's Dice comes from.

Writes OUT/proxy_benchmark.json (every figure), OUT/proxy_benchmark.md (the table) and
OUT/loss_curves.csv, and prints the table. docs/benchmarks.md, "Low-data proxy", says how this
maps to the real-slice protocol and where it may differ.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

# Importable as a module by tests (benchmarks/ is no package): the repo root goes on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from data_build.files import atomic_write_text  # noqa: E402
from data_build.schema import TYPE_NAMES  # noqa: E402
from fusion.inference import DEFAULT_TTA, TTA_MODES  # noqa: E402

#: The presets compared by default: the project's default against the peer-shaped U-Net.
DEFAULT_PRESETS: tuple[str, ...] = ("fusion", "peer-unet")
DEFAULT_SEEDS: tuple[int, ...] = (0, 1)
try:  # the phantom settings, once fusion-synth has them (issue 10, item 1)
    from data_build.synth.difficulty import DIFFICULTIES  # noqa: E402
except ImportError:
    DIFFICULTIES: tuple[str, ...] = ("easy", "real")  # type: ignore[no-redef]
#: The real set of issue 10: 92 usable slices, all bleeding, 4 folds by patient.
REAL_SET_SLICES = 92
FOLD_SALT = "proxy-v1"
#: Full protocol (issue 10) and the quick mode (one fold, smaller, fewer epochs).
FULL = {"image_size": 256, "epochs": 40}
QUICK = {"image_size": 128, "epochs": 12, "only_fold": 0}
#: Calibration target of issue 10 for the proxy: peer-unet's Dice as on real slices.
PEER_DICE_TARGET = (0.40, 0.55)
#: fusion-evaluate figures are read at this mask threshold (its default).
RESULT_FILE = "result.json"
#: Bleed-to-brain contrast bands (HU, [low, high)) of the by-contrast table. Real CT-ICH
#: slices: 12 / 20 / 28 HU at the 10th / 50th / 90th percentile (issue 10); under ~8 HU a
#: bleed is iso-dense with brain (the phantom's subacute subdurals).
CONTRAST_BANDS: tuple[tuple[float, float], ...] = ((-math.inf, 8.0), (8.0, 16.0), (16.0, 24.0), (24.0, math.inf))
#: Per-slice contrast of the proxy's own synthetic drop, measured once (OUT/slice_contrast.json).
CONTRAST_FILE = "slice_contrast.json"


class ProxyError(Exception):
    """The benchmark cannot go on; the message says what was wrong and what to do."""


# --- slice selection and folds (pure) --------------------------------------------------------


@dataclass(frozen=True)
class Selected:
    """A slice kept for the benchmark: its id and its patient group (`Case.group`)."""

    id: str
    group: str


def select_slices(cases: Iterable[Any]) -> tuple[list[Selected], dict[str, int]]:
    """Keep the bleeding slices with a traced mask, as in the real set of issue 10.

    Args:
      cases: `data_build.cases.Case` objects (``labels``, ``polygons``, ``id``, ``group``).

    Returns:
      (kept slices sorted by id, counts of the slices left out by reason).
    """
    kept: list[Selected] = []
    left_out: dict[str, int] = {}
    for case in cases:
        if case.labels is None:
            reason = "no labels"
        elif not case.labels[0]:
            reason = "not bleeding (any = 0)"
        elif case.polygons is None:
            reason = "bleeding, mask unknown (no polygon rows)"
        elif not case.polygons:
            reason = "bleeding, mask known empty"
        else:
            kept.append(Selected(case.id, case.group))
            continue
        left_out[reason] = left_out.get(reason, 0) + 1
    return sorted(kept, key=lambda s: s.id), left_out


def _unit_hash(text: str) -> float:
    digest = hashlib.sha256((FOLD_SALT + text).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def group_sizes(slices: Iterable[Selected]) -> dict[str, int]:
    """Slices per group."""
    sizes: dict[str, int] = {}
    for s in slices:
        sizes[s.group] = sizes.get(s.group, 0) + 1
    return sizes


def limit_to_target(slices: Sequence[Selected], target: int | None) -> list[Selected]:
    """Whole groups, in hashed order, until at least `target` slices (all when None or 0)."""
    if not target:
        return list(slices)
    sizes = group_sizes(slices)
    chosen: set[str] = set()
    total = 0
    for group in sorted(sizes, key=lambda g: (_unit_hash(g), g)):
        if total >= target:
            break
        chosen.add(group)
        total += sizes[group]
    return [s for s in slices if s.group in chosen]


def assign_folds(sizes: Mapping[str, int], k: int) -> dict[str, int]:
    """Deal groups (patients) into k folds with slice counts as even as whole groups allow.

    Largest group first (ties in hashed order), each to the fold with the fewest slices so far
    (ties: lowest fold). The same groups give the same folds in every run, on every machine.

    Args:
      sizes: group -> number of slices (> 0).
      k: number of folds, 2 <= k <= number of groups.

    Returns:
      group -> fold index in [0, k).

    Raises:
      ProxyError: k < 2, or fewer groups than folds.
    """
    if k < 2:
        raise ProxyError(f"--folds must be at least 2, got {k}")
    if len(sizes) < k:
        raise ProxyError(
            f"{len(sizes)} patients cannot fill {k} folds; write more patients (--patients) or "
            f"use fewer --folds"
        )
    totals = [0] * k
    out: dict[str, int] = {}
    for group in sorted(sizes, key=lambda g: (-sizes[g], _unit_hash(g), g)):
        fold = min(range(k), key=lambda f: (totals[f], f))
        out[group] = fold
        totals[fold] += sizes[group]
    return out


def fold_members(slices: Sequence[Selected], folds: Mapping[str, int], k: int) -> list[list[str]]:
    """Slice ids per fold, sorted."""
    members: list[list[str]] = [[] for _ in range(k)]
    for s in slices:
        members[folds[s.group]].append(s.id)
    return [sorted(m) for m in members]


def choose_val_fraction(group_labels: Mapping[str, Sequence[Sequence[int] | None]],
                        share: float) -> tuple[float, int]:
    """The ``fusion-build`` validation fraction that puts closest to `share` of slices in val.

    ``fusion-build`` splits whole patients, stratified by type with a phase hashed per stratum:
    on ~20 patients a nominal 0.15 put 12 to 24 of 70 slices in val, and ``hash`` 0 to 4.
    This runs the builder's own assignment (`data_build.splits.assign_groups`, its defaults)
    for fractions 0.01 .. 0.50 and keeps the one whose validation slice count is nearest to
    ``share`` of the slices (ties: the fraction nearest to `share`), at least one slice.

    Args:
      group_labels: patient group -> its slices' labels, as `records.plan_shards` passes them.
      share: wanted share of slices in val, in (0, 1).

    Returns:
      (validation fraction to pass, validation slices it gives).

    Raises:
      ProxyError: no fraction leaves both splits non-empty (fewer than 2 patients).
    """
    from data_build import splits

    n = sum(len(labels) for labels in group_labels.values())
    best: tuple[float, float, float, int] | None = None
    for step in range(1, 51):
        fraction = step / 100
        assigned = splits.assign_groups(group_labels, (1.0 - fraction, fraction, 0.0))
        n_val = sum(len(group_labels[g]) for g, split in assigned.items() if split == "val")
        if not 0 < n_val < n:
            continue
        key = (abs(n_val - share * n), abs(fraction - share), fraction, n_val)
        best = key if best is None or key < best else best
    if best is None:
        raise ProxyError(f"{len(group_labels)} training patient(s) cannot be split into train and "
                         f"val; write more patients (--patients) or use fewer --folds")
    return best[2], best[3]


# --- reading the commands' outputs (the one place that knows their keys) -------------------


@dataclass(frozen=True)
class Evaluation:
    """What the benchmark takes from one ``fusion-evaluate`` output folder.

    Attributes:
      n_slices: slices scored.
      dice_mean: mean per-slice Dice over slices with a known mask; None when none.
      n_bleeding: slices whose true mask is not empty.
      n_empty: of those, slices whose predicted mask is empty.
      labels: [N, 5] 0/1 per `TYPE_NAMES`, slices with labels only.
      probabilities: [N, 5] float, the same slices.
    """

    n_slices: int
    dice_mean: float | None
    n_bleeding: int
    n_empty: int
    labels: list[list[int]]
    probabilities: list[list[float]]


def read_evaluation(folder: Path) -> Evaluation:
    """Read FOLDER/metrics.json and FOLDER/predictions.csv of ``fusion-evaluate``.

    The only function that knows their keys (they may be renamed by a refactor).

    Raises:
      ProxyError: a file is missing or lacks a key (the message names it).
    """
    try:
        m = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        seg = m["segmentation"]
        n_bleeding = int(seg["n_true_nonempty"])
        rate = seg["empty_prediction_rate"]
        with open(folder / "predictions.csv", newline="", encoding="utf-8") as handle:
            rows = [r for r in csv.DictReader(handle) if r["has_labels"] == "1"]
        labels = [[int(r[f"label_{t}"]) for t in TYPE_NAMES] for r in rows]
        probabilities = [[float(r[f"p_{t}"]) for t in TYPE_NAMES] for r in rows]
        return Evaluation(
            n_slices=int(m["n_slices"]),
            dice_mean=seg["dice"]["mean"],
            n_bleeding=n_bleeding,
            n_empty=0 if rate is None else int(round(float(rate) * n_bleeding)),
            labels=labels,
            probabilities=probabilities,
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ProxyError(
            f"cannot read the fusion-evaluate output in {folder} ({type(err).__name__}: {err}); "
            f"has fusion-evaluate changed its metrics.json / predictions.csv?"
        ) from None


def read_slice_dice(folder: Path) -> dict[str, float]:
    """Per-slice Dice from ``fusion-evaluate``'s FOLDER/predictions.csv (slices with a mask).

    Raises:
      ProxyError: the file is missing or lacks a key.
    """
    try:
        with open(folder / "predictions.csv", newline="", encoding="utf-8") as handle:
            return {r["id"]: float(r["dice"]) for r in csv.DictReader(handle) if r["has_mask"] == "1"}
    except (OSError, ValueError, KeyError) as err:
        raise ProxyError(f"cannot read per-slice Dice in {folder}/predictions.csv "
                         f"({type(err).__name__}: {err})") from None


def read_slice_pixels(folder: Path) -> dict[str, tuple[int, int, int]] | None:
    """Per-slice (true, predicted, both) mask pixels from FOLDER/predictions.csv, slices with a
    mask; None when the file predates those columns (rerun ``fusion-evaluate`` on the cell).

    Raises:
      ProxyError: the file is missing or unreadable.
    """
    keys = ("pixels_true", "pixels_pred", "pixels_both")
    try:
        with open(folder / "predictions.csv", newline="", encoding="utf-8") as handle:
            rows = csv.DictReader(handle)
            if not set(keys) <= set(rows.fieldnames or ()):
                return None
            return {r["id"]: tuple(int(r[k]) for k in keys) for r in rows if r["has_mask"] == "1"}
    except (OSError, ValueError, KeyError) as err:
        raise ProxyError(f"cannot read mask pixels in {folder}/predictions.csv "
                         f"({type(err).__name__}: {err})") from None


def read_mask_threshold(folder: Path) -> float:
    """The mask threshold ``fusion-evaluate`` cut at (0.5 where its metrics.json predates it)."""
    try:
        seg = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))["segmentation"]
        return float(seg.get("mask_threshold", 0.5))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ProxyError(f"cannot read the mask threshold in {folder / 'metrics.json'}: {err}") from None


def read_history(path: Path) -> dict[str, list[float | None]]:
    """RUN/history.csv (Keras CSVLogger) as column -> value per epoch (None where not a number).

    Returns {} when the file is missing.
    """
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError:
        return {}
    columns: dict[str, list[float | None]] = {}
    for row in rows:
        for key, text in row.items():
            try:
                value: float | None = float(text)
            except (TypeError, ValueError):
                value = None
            columns.setdefault(key, []).append(
                value if value is not None and math.isfinite(value) else None
            )
    return columns


def split_counts(shards: Path) -> dict[str, int]:
    """Slices per split of a ``fusion-build`` output (its typed manifest); {} when unreadable."""
    from data_build.manifest import Manifest, ManifestError

    try:
        manifest = Manifest.load(shards)
    except ManifestError:
        return {}
    return {split: counts.slices for split, counts in manifest.counts.items()}


# --- aggregation and the table (pure) --------------------------------------------------------


@dataclass
class Row:
    """One (preset, seed) over the folds it has results for.

    Attributes:
      folds: fold indices, ascending.
      dice_per_fold: mean per-slice Dice of each fold.
      dice: mean per-slice Dice over all slices of those folds (each fold weighted by its
        bleeding slices, which are all its slices in this protocol).
      macro_auc: AUC per type on the slices of all folds pooled, then the mean over the types
        with both classes present; None when no type has both.
      auc_per_type: type -> pooled AUC (None where one class is absent).
      n_empty / n_bleeding: empty predicted masks on bleeding slices, summed over folds.
      worst_fold_empty: the highest per-fold fraction of empty predictions.
      train_seconds: wall time of ``fusion-train`` per fold.
      epoch_seconds: per fold, the median wall time of its epochs after the first (the first
        also traces and compiles; RUN/history.csv's ``epoch_seconds``), for the folds whose
        history has it.
    """

    preset: str
    seed: int | str
    folds: list[int] = field(default_factory=list)
    dice_per_fold: list[float | None] = field(default_factory=list)
    dice: float | None = None
    macro_auc: float | None = None
    auc_per_type: dict[str, float | None] = field(default_factory=dict)
    n_empty: int = 0
    n_bleeding: int = 0
    worst_fold_empty: float | None = None
    train_seconds: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)


def steady_epoch_seconds(history: Mapping[str, Sequence[float | None]]) -> float | None:
    """Median ``epoch_seconds`` over the epochs after the first; None without two timed epochs."""
    times = [t for t in list(history.get("epoch_seconds") or [])[1:] if t is not None]
    return float(np.median(times)) if times else None


def pooled_macro_auc(labels: np.ndarray, probabilities: np.ndarray) -> tuple[float | None, dict]:
    """Per-type AUC of pooled slices and their mean over the types where it is defined.

    Args:
      labels: [N, 5] 0/1 in `TYPE_NAMES` order.
      probabilities: [N, 5].
    """
    from fusion.metrics import roc_auc

    per_type: dict[str, float | None] = {}
    for j, name in enumerate(TYPE_NAMES):
        auc = roc_auc(labels[:, j], probabilities[:, j]) if len(labels) else math.nan
        per_type[name] = None if math.isnan(auc) else auc
    defined = [v for v in per_type.values() if v is not None]
    return (float(np.mean(defined)) if defined else None), per_type


def aggregate(cells: Sequence[Mapping[str, Any]]) -> list[Row]:
    """One `Row` per (preset, seed) from the cells' result dicts (see `run_cell`)."""
    by_key: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for cell in cells:
        by_key.setdefault((cell["preset"], int(cell["seed"])), []).append(cell)
    rows = []
    for (preset, seed), group in sorted(by_key.items()):
        group = sorted(group, key=lambda c: int(c["fold"]))
        row = Row(preset, seed, folds=[int(c["fold"]) for c in group])
        evals = [c["evaluation"] for c in group]
        row.dice_per_fold = [e["dice_mean"] for e in evals]
        weighted = [(e["dice_mean"], e["n_bleeding"]) for e in evals if e["dice_mean"] is not None]
        n = sum(w for _, w in weighted)
        row.dice = sum(d * w for d, w in weighted) / n if n else None
        labels = np.array([r for e in evals for r in e["labels"]], dtype=np.float64).reshape(-1, 5)
        probs = np.array([r for e in evals for r in e["probabilities"]], dtype=np.float64)
        row.macro_auc, row.auc_per_type = pooled_macro_auc(labels, probs.reshape(-1, 5))
        row.n_empty = sum(e["n_empty"] for e in evals)
        row.n_bleeding = sum(e["n_bleeding"] for e in evals)
        rates = [e["n_empty"] / e["n_bleeding"] for e in evals if e["n_bleeding"]]
        row.worst_fold_empty = max(rates) if rates else None
        row.train_seconds = [float(c["train_seconds"]) for c in group]
        steady = [steady_epoch_seconds(c.get("history") or {}) for c in group]
        row.epoch_seconds = [t for t in steady if t is not None]
        rows.append(row)
    return rows


def seed_means(rows: Sequence[Row]) -> list[Row]:
    """Per preset with several seeds: a row whose figures are the means over its seeds."""
    out = []
    for preset in sorted({r.preset for r in rows}):
        mine = [r for r in rows if r.preset == preset]
        if len(mine) < 2:
            continue
        mean = Row(preset, f"mean of {len(mine)}")
        mean.dice = _mean([r.dice for r in mine])
        mean.macro_auc = _mean([r.macro_auc for r in mine])
        mean.n_empty = sum(r.n_empty for r in mine)
        mean.n_bleeding = sum(r.n_bleeding for r in mine)
        worst = [r.worst_fold_empty for r in mine if r.worst_fold_empty is not None]
        mean.worst_fold_empty = max(worst) if worst else None
        mean.train_seconds = [s for r in mine for s in r.train_seconds]
        mean.epoch_seconds = [s for r in mine for s in r.epoch_seconds]
        out.append(mean)
    return out


def _mean(values: Iterable[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def _f(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: Sequence[Row]) -> str:
    """The table of issue 10 (model, mean Dice (per fold), macro AUC, empty masks, train time)."""
    lines = [
        "| preset | seed | mean Dice (per fold) | macro AUC (5 types, pooled) | "
        "empty predicted masks (worst fold) | train time / fold | s / epoch after the first |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per_fold = " / ".join(_f(d) for d in r.dice_per_fold)
        dice = _f(r.dice) + (f" ({per_fold})" if len(r.dice_per_fold) > 1 else "")
        worst = "" if r.worst_fold_empty is None else f" ({r.worst_fold_empty:.0%})"
        minutes = _mean(r.train_seconds)
        time_text = "—" if minutes is None else f"{minutes / 60:.1f} min"
        lines.append(
            f"| `{r.preset}` | {r.seed} | {dice} | {_f(r.macro_auc)} | "
            f"{r.n_empty} of {r.n_bleeding}{worst} | {time_text} | {_f(_mean(r.epoch_seconds), 1)} |"
        )
    return "\n".join(lines) + "\n"


def _curve_points(values: Sequence[float]) -> list[float]:
    """First, 25 %, 50 %, 75 % and last epoch of a curve (fewer when it is short)."""
    if not values:
        return []
    n = len(values)
    picks = sorted({0, round((n - 1) * 0.25), round((n - 1) * 0.5), round((n - 1) * 0.75), n - 1})
    return [values[i] for i in picks]


def loss_table(cells: Sequence[Mapping[str, Any]]) -> str:
    """Training-loss curves in brief: total and mask loss at 0, 25, 50, 75, 100 % of epochs."""
    lines = [
        "| preset | seed | fold | epochs | train loss (0 / 25 / 50 / 75 / 100 % of epochs) | "
        "mask loss, first -> last | best val loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in sorted(cells, key=lambda c: (c["preset"], int(c["seed"]), int(c["fold"]))):
        h = c.get("history", {})
        loss = [v for v in h.get("loss", []) if v is not None]
        mask = next(([v for v in values if v is not None] for k, values in sorted(h.items())
                     if k.endswith("mask_loss") and not k.startswith("val")), [])
        val = [v for v in h.get("val_loss", []) if v is not None]
        mask_text = f"{mask[0]:.3f} -> {mask[-1]:.3f}" if mask else "—"
        lines.append(
            f"| `{c['preset']}` | {c['seed']} | {c['fold']} | {len(loss)} | "
            f"{' / '.join(f'{v:.3f}' for v in _curve_points(loss)) or '—'} | {mask_text} | "
            f"{_f(min(val) if val else None)} |"
        )
    return "\n".join(lines) + "\n"


def loss_curves_csv(cells: Sequence[Mapping[str, Any]]) -> str:
    """Every history column of every cell, one row per (preset, seed, fold, epoch)."""
    keys = sorted({k for c in cells for k in c.get("history", {}) if k != "epoch"})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["preset", "seed", "fold", "epoch", *keys])
    for c in sorted(cells, key=lambda c: (c["preset"], int(c["seed"]), int(c["fold"]))):
        h = c.get("history", {})
        for epoch in range(len(h.get("loss", []))):
            values = [_cell_text(h.get(k, []), epoch) for k in keys]
            writer.writerow([c["preset"], c["seed"], c["fold"], epoch + 1, *values])
    return buf.getvalue()


def _cell_text(values: Sequence[float | None], epoch: int) -> str:
    value = values[epoch] if epoch < len(values) else None
    return "" if value is None else repr(value)


# --- running the project's commands ----------------------------------------------------------


def command_path(name: str) -> str:
    """The console script `name` next to this Python, else on PATH.

    Raises:
      ProxyError: not installed.
    """
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise ProxyError(f"{name} not found next to {sys.executable} nor on PATH; install the "
                         f"project first (pip install -e .)")
    return found


def run_command(args: Sequence[str], log: Path) -> float:
    """Run one fusion-* command with stdout and stderr in `log`; its wall time in seconds.

    Raises:
      ProxyError: a non-zero exit (the message holds the last lines of the log).
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as handle:
        done = subprocess.run([command_path(args[0]), *args[1:]], stdout=handle,
                              stderr=subprocess.STDOUT, env=env, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-8:]
        raise ProxyError(
            f"{' '.join(args)} failed (exit status {done.returncode}); last lines of {log}:\n  "
            + "\n  ".join(tail)
        )
    return seconds


def synth_supports_difficulty() -> bool:
    """Whether this fusion-synth has a ``--difficulty`` option (read from its --help)."""
    done = subprocess.run([command_path("fusion-synth"), "--help"], capture_output=True,
                          text=True, check=False)
    return "--difficulty" in done.stdout


def write_drop(out: Path, args: argparse.Namespace) -> Path:
    """Write the synthetic drop with fusion-synth (kept when already complete); its folder."""
    root = out / "drop"
    if (root / "hemorrhage-labels.csv").exists():
        return root
    command = ["fusion-synth", str(root), "--patients", str(args.patients),
               "--slices-per-patient", str(args.slices_per_patient), "--seed", str(args.synth_seed),
               "--size", str(args.synth_size), "--no-broken", "--no-progress", "--overwrite"]
    if args.difficulty_used:
        command += ["--difficulty", args.difficulty_used]
    print(f"writing the drop: {' '.join(command)}", flush=True)
    run_command(command, out / "logs" / "synth.log")
    return root


def _link(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(source.resolve(), dest)


def write_subdrop(drop_root: Path, cases: Sequence[Any], dest: Path) -> None:
    """A drop at `dest` holding only `cases`, as symbolic links to the drop's files.

    Renders and DICOMs of the given cases keep their paths relative to the drop root; every
    other file (labels, flagged list, segmentation CSVs wherever they lie) is linked whole:
    labels and tracings of slices without renders are ignored by ``fusion-build``, as in the
    real drop. Written under a temporary name and renamed, so a killed run leaves no half drop.

    Args:
      drop_root: the full drop.
      cases: `data_build.cases.Case` objects from `data_build.drop.discover(drop_root)`.
      dest: the sub-drop folder; must not exist.
    """
    # Paths relative to the drop as found (not resolved), so a drop of links works too.
    root = Path(os.path.abspath(drop_root))
    partial = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    chosen: set[Path] = set()
    for case in cases:
        chosen.update(Path(os.path.abspath(p)) for p in case.render_paths.values())
        if case.dicom_path:
            chosen.add(Path(os.path.abspath(case.dicom_path)))
    for path in sorted(chosen):
        _link(path, partial / path.relative_to(root))
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        if here == root:
            dirs[:] = [d for d in dirs if d != "renders"]
        for name in files:
            if not name.lower().endswith(".dcm"):
                _link(here / name, partial / (here / name).relative_to(root))
    os.replace(partial, dest)


@dataclass(frozen=True)
class FoldPlan:
    """The benchmark's slices and folds.

    Attributes:
      folds: slice ids per fold.
      groups: patient groups per fold.
      left_out: slices of the drop left out, by reason (`select_slices`), plus whole groups
        beyond ``--target-slices`` and the drop's own skips.
    """

    folds: list[list[str]]
    groups: list[list[str]]
    left_out: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def plan_folds(drop_root: Path, k: int, target: int | None) -> tuple[FoldPlan, dict[str, Any]]:
    """Read the drop, keep bleeding slices with masks, deal patients into k folds.

    Returns:
      (the plan, slice id -> `Case` for the kept slices).
    """
    from data_build.drop import discover

    drop = discover(drop_root, workers=1, progress=False)
    selected, left_out = select_slices(drop.cases)
    if drop.skips:
        left_out["inputs skipped (or masks dropped) by the drop reader"] = len(drop.skips)
    kept = limit_to_target(selected, target)
    if len(kept) < len(selected):
        left_out["beyond --target-slices (whole patients)"] = len(selected) - len(kept)
    if not kept:
        raise ProxyError(f"{drop_root} has no bleeding slice with a traced mask; nothing to score")
    folds = assign_folds(group_sizes(kept), k)
    groups: list[list[str]] = [sorted(g for g, f in folds.items() if f == i) for i in range(k)]
    plan = FoldPlan(fold_members(kept, folds, k), groups, left_out)
    by_id = {c.id: c for c in drop.cases}
    return plan, {s.id: by_id[s.id] for s in kept}


def build_fold(out: Path, fold: int, plan: FoldPlan, cases: Mapping[str, Any], drop_root: Path,
               val_share: float) -> tuple[tuple[Path, Path], dict[str, Any]]:
    """Sub-drops and shards of one fold (kept when already built).

    Returns:
      ((train shards, test shards), the fold's split figures: slices per split as built, the
      validation fraction passed to fusion-build and the val count it was chosen for).
    """
    folder = out / "folds" / f"fold{fold}"
    test_ids = plan.folds[fold]
    train_ids = [i for f, ids in enumerate(plan.folds) if f != fold for i in ids]
    group_labels: dict[str, list[Any]] = {}
    for i in train_ids:
        group_labels.setdefault(cases[i].group, []).append(cases[i].labels)
    fraction, n_val = choose_val_fraction(group_labels, val_share)
    fractions = {"train": f"{1 - fraction:.2f},{fraction:.2f},0", "test": "0,0,1"}
    shards = {}
    for part, ids in (("train", train_ids), ("test", test_ids)):
        sub, shards[part] = folder / f"{part}-drop", folder / f"{part}-shards"
        if (shards[part] / "manifest.json").exists():
            continue
        if not sub.exists():
            write_subdrop(drop_root, [cases[i] for i in ids], sub)
        run_command(["fusion-build", str(sub), "--out", str(shards[part]), "--split-fractions",
                     fractions[part], "--workers", "1", "--overwrite", "--no-progress"],
                    folder / f"build-{part}.log")
    built = split_counts(shards["train"])
    if built.get("val") != n_val:
        print(f"warning: fold {fold}: fusion-build put {built.get('val')} slices in val where its "
              f"split rule predicted {n_val}; see {shards['train']}/manifest.json", flush=True)
    figures = {"train": built.get("train"), "val": built.get("val"),
               "test": split_counts(shards["test"]).get("test"),
               "val_fraction_passed": fraction, "val_predicted": n_val}
    atomic_write_text(folder / "splits.json", json.dumps(figures) + "\n")
    return (shards["train"], shards["test"]), figures


def cell_dir(out: Path, preset: str, seed: int, fold: int) -> Path:
    """Folder of one (preset, seed, fold): run/, eval/, logs and result.json."""
    return out / "cells" / preset / f"seed{seed}" / f"fold{fold}"


def run_cell(out: Path, preset: str, seed: int, fold: int, shards: tuple[Path, Path],
             n_expected: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train on the fold's train shards, evaluate on its test shards; the cell's result.

    A cell with a result.json is read, not run; a cell killed half-way is run again from the
    start (``--overwrite``), so its wall time is always one whole run.
    """
    cell = cell_dir(out, preset, seed, fold)
    if (cell / RESULT_FILE).exists():
        return json.loads((cell / RESULT_FILE).read_text(encoding="utf-8"))
    train_seconds = run_command(
        ["fusion-train", str(shards[0]), "--out", str(cell / "run"),
         *(["--config", str(args.configs[preset])] if preset in args.configs else ["--preset", preset]),
         "--image-size", str(args.image_size), "--epochs", str(args.epochs), "--seed", str(seed),
         "--overwrite", "--quiet", *shlex.split(args.extra_train_args)],
        cell / "train.log")
    evaluate_seconds = run_command(
        ["fusion-evaluate", str(cell / "run"), str(shards[1]), "--split", "test", "--out",
         str(cell / "eval"), "--bootstrap", "0", "--tta", args.tta, "--overwrite"],
        cell / "evaluate.log")
    evaluation = read_evaluation(cell / "eval")
    mask_threshold = read_mask_threshold(cell / "eval")
    if evaluation.n_slices != n_expected:
        print(f"warning: fold {fold} has {n_expected} slices but fusion-evaluate scored "
              f"{evaluation.n_slices}; see {shards[1]}/manifest.json for skips", flush=True)
    result = {
        "preset": preset, "seed": seed, "fold": fold, "n_expected": n_expected,
        "train_seconds": train_seconds, "evaluate_seconds": evaluate_seconds,
        "evaluation": dataclasses.asdict(evaluation), "mask_threshold": mask_threshold,
        "history": read_history(cell / "run" / "history.csv"),
    }
    atomic_write_text(cell / RESULT_FILE, json.dumps(result, allow_nan=False) + "\n")
    return result


#: Where `recalibrate_cell` keeps a cell's first evaluation (masks cut at 0.5).
EVAL_AT_HALF = "eval-at-0.5"


def recalibrate_cell(out: Path, preset: str, seed: int, fold: int, shards: tuple[Path, Path],
                     tta: str) -> dict[str, Any]:
    """A finished cell from before mask-threshold calibration (its result.json has no
    ``mask_threshold``): calibrate the run's thresholds on the fold's val split and evaluate
    again. The first evaluation moves to EVAL_AT_HALF and ``evaluation_at_0.5``; a killed
    recalibration is redone from the start by the same command."""
    cell = cell_dir(out, preset, seed, fold)
    result = json.loads((cell / RESULT_FILE).read_text(encoding="utf-8"))
    if "mask_threshold" in result:
        return result
    run_command(["fusion-train", str(shards[0]), "--out", str(cell / "run"), "--export-only", "--recalibrate"],
                cell / "recalibrate.log")
    run_command(["fusion-evaluate", str(cell / "run"), str(shards[1]), "--split", "test", "--out",
                 str(cell / "eval.recalibrated"), "--bootstrap", "0", "--tta", tta, "--overwrite"],
                cell / "evaluate.log")
    if not (cell / EVAL_AT_HALF).exists():
        (cell / "eval").rename(cell / EVAL_AT_HALF)
    shutil.rmtree(cell / "eval", ignore_errors=True)
    (cell / "eval.recalibrated").rename(cell / "eval")
    result = {**result, "evaluation_at_0.5": result["evaluation"],
              "evaluation": dataclasses.asdict(read_evaluation(cell / "eval")),
              "mask_threshold": read_mask_threshold(cell / "eval")}
    atomic_write_text(cell / RESULT_FILE, json.dumps(result, allow_nan=False) + "\n")
    return result


def protocol_of(args: argparse.Namespace) -> dict[str, Any]:
    """Every setting that changes a cell's result (a resumed run must keep them all)."""
    drop: dict[str, Any] = {"path": str(args.drop.resolve())} if args.drop else {
        "patients": args.patients, "slices_per_patient": args.slices_per_patient,
        "seed": args.synth_seed, "size": args.synth_size, "difficulty": args.difficulty_used,
    }
    return {
        "drop": drop, "target_slices": args.target_slices, "folds": args.folds,
        "fold_salt": FOLD_SALT, "val_share": args.val_share,
        "image_size": args.image_size, "epochs": args.epochs,
        "extra_train_args": args.extra_train_args, "evaluate_tta": args.tta,
    }


def check_protocol(out: Path, protocol: Mapping[str, Any]) -> None:
    """Record the protocol in OUT/protocol.json, or refuse one that differs from it.

    Raises:
      ProxyError: OUT holds results of another protocol.
    """
    path = out / "protocol.json"
    if path.exists():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if "evaluate_tta" in protocol:  # recorded before --tta existed: evaluated without TTA
            stored.setdefault("evaluate_tta", "none")
        changed = sorted(k for k in set(stored) | set(protocol) if stored.get(k) != protocol.get(k))
        if changed:
            details = "; ".join(f"{k}: {stored.get(k)!r} then, {protocol.get(k)!r} now"
                                for k in changed)
            raise ProxyError(f"{out} holds results of another protocol ({details}); use another "
                             f"--out, or the same options to resume")
        return
    atomic_write_text(path, json.dumps(protocol, indent=2) + "\n")


def _split_list(text: str, kind: type, what: str) -> list[Any]:
    try:
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ProxyError(f"{what} {text!r}: expected a comma-separated list, e.g. "
                         f"{'fusion,peer-unet' if kind is str else '0,1'}") from None
    if not values:
        raise ProxyError(f"{what} is empty")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line -> options, with --quick's defaults filled in and lists parsed."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="Work and result folder (resumable).")
    p.add_argument("--drop", type=Path, help="An existing drop to use instead of fusion-synth's.")
    p.add_argument("--patients", type=int, default=50, help="fusion-synth --patients [50].")
    p.add_argument("--slices-per-patient", type=int, default=6, help="fusion-synth option [6].")
    p.add_argument("--synth-seed", type=int, default=0, help="fusion-synth --seed [0].")
    p.add_argument("--synth-size", type=int, default=512, help="fusion-synth --size [512, as real].")
    p.add_argument("--difficulty", choices=DIFFICULTIES, default=None,
                   help="fusion-synth --difficulty [real], when this fusion-synth has the option.")
    p.add_argument("--target-slices", type=int, default=REAL_SET_SLICES,
                   help=f"Whole patients until this many bleeding slices with masks "
                        f"[{REAL_SET_SLICES}, as the real set; 0: all].")
    p.add_argument("--folds", type=int, default=4, help="Folds by patient [4].")
    p.add_argument("--only-fold", type=int, default=None, help="Run this fold only (0-based).")
    p.add_argument("--presets", default=",".join(DEFAULT_PRESETS),
                   help=f"Comma-separated fusion-train presets [{','.join(DEFAULT_PRESETS)}]; an entry "
                        "NAME=FILE trains a candidate from a run config JSON (fusion-train --config "
                        "FILE, e.g. a preset's RUN/config.json edited) under the name NAME.")
    p.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)),
                   help="Comma-separated training seeds [0,1].")
    p.add_argument("--image-size", type=int, default=None,
                   help=f"fusion-train --image-size [{FULL['image_size']}; --quick {QUICK['image_size']}].")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"fusion-train --epochs [{FULL['epochs']}; --quick {QUICK['epochs']}].")
    p.add_argument("--quick", action="store_true",
                   help="Fold 0 only, 128 px, 12 epochs (explicit options still win).")
    p.add_argument("--val-share", type=float, default=0.15,
                   help="Share of each fold's training slices held out for validation, met as "
                        "closely as whole patients allow [0.15, as the real protocol].")
    p.add_argument("--extra-train-args", default="",
                   help="More fusion-train options, one quoted string, e.g. '--batch-size 8'.")
    p.add_argument("--tta", choices=TTA_MODES, default=DEFAULT_TTA,
                   help=f"fusion-evaluate --tta [{DEFAULT_TTA}, its default]; results evaluated "
                        "before this option existed used 'none' (resume them with --tta none).")
    p.add_argument("--plan-only", action="store_true", help="Write the drop, print the folds, stop.")
    p.add_argument("--report-only", action="store_true",
                   help="Train nothing: summarise the cells already finished.")
    p.add_argument("--recalibrate", action="store_true",
                   help="Cells trained before mask-threshold calibration: calibrate it on the fold's val "
                        "split (fusion-train --export-only --recalibrate) and evaluate again; the first "
                        "evaluation stays in the cell (eval-at-0.5/, result.json).")
    args = p.parse_args(argv)
    base = QUICK if args.quick else FULL
    args.image_size = args.image_size or base["image_size"]
    args.epochs = args.epochs or base["epochs"]
    if args.only_fold is None and args.quick:
        args.only_fold = QUICK["only_fold"]
    entries = [e.partition("=") for e in _split_list(args.presets, str, "--presets")]
    args.configs = {name: Path(path) for name, eq, path in entries if eq}
    args.preset_list = [name for name, _, _ in entries]
    args.seed_list = _split_list(args.seeds, int, "--seeds")
    return args


def check_args(args: argparse.Namespace) -> None:
    """Refuse impossible options before anything is written.

    Raises:
      ProxyError: the message names the option and what it accepts.
    """
    from fusion.config import PRESETS, ConfigError, RunConfig

    unknown = [p for p in args.preset_list if p not in PRESETS and p not in args.configs]
    if unknown:
        raise ProxyError(f"unknown preset(s) {', '.join(unknown)} in --presets; known: "
                         f"{', '.join(PRESETS)}, or NAME=CONFIG.json")
    for name, path in args.configs.items():
        if name in PRESETS or not name.replace("-", "").replace("_", "").isalnum():
            raise ProxyError(f"--presets {name}={path}: name a candidate with letters, digits, - and _, "
                             f"and not like a preset ({', '.join(PRESETS)})")
        try:
            RunConfig.load(path)
        except ConfigError as err:
            raise ProxyError(f"--presets {name}={path}: {err}") from None
    if args.folds < 2:
        raise ProxyError(f"--folds must be at least 2, got {args.folds}")
    if args.only_fold is not None and not 0 <= args.only_fold < args.folds:
        raise ProxyError(f"--only-fold {args.only_fold} is not a fold of 0..{args.folds - 1}")
    if not 0 < args.val_share < 1:
        raise ProxyError(f"--val-share must lie between 0 and 1, got {args.val_share}")
    if args.drop and not (args.drop / "hemorrhage-labels.csv").is_file():
        raise ProxyError(f"--drop {args.drop} is not a drop (no hemorrhage-labels.csv)")
    if args.drop and args.out.resolve().is_relative_to(args.drop.resolve()):
        raise ProxyError(f"--out {args.out} lies inside --drop {args.drop}; the sub-drops would "
                         f"link to themselves: pick an --out outside the drop")
    for name in ("patients", "slices_per_patient", "synth_size", "image_size", "epochs"):
        if getattr(args, name) < 1:
            raise ProxyError(f"--{name.replace('_', '-')} must be at least 1")


def resolve_difficulty(args: argparse.Namespace) -> str | None:
    """The --difficulty passed to fusion-synth; None with --drop or a fusion-synth without it.

    Raises:
      ProxyError: --difficulty was asked for and this fusion-synth has no such option.
    """
    if args.drop:
        return None
    if synth_supports_difficulty():
        return args.difficulty or "real"
    if args.difficulty:
        raise ProxyError(f"--difficulty {args.difficulty}: this fusion-synth has no --difficulty "
                         f"option; update the project, or leave --difficulty out")
    print("note: this fusion-synth has no --difficulty option; the drop is its only phantom, "
          "which issue 10 calls far easier than real CT", flush=True)
    return None


def print_plan(plan: FoldPlan) -> None:
    """Folds, patients and what was left out, on stdout."""
    sizes = [len(f) for f in plan.folds]
    print(f"{sum(sizes)} bleeding slices with masks in {len(plan.folds)} folds by patient: "
          f"{' / '.join(map(str, sizes))} slices, "
          f"{' / '.join(str(len(g)) for g in plan.groups)} patients", flush=True)
    for reason, n in sorted(plan.left_out.items()):
        print(f"  left out: {n} {reason}")


def finished_cells(out: Path, presets: Sequence[str], seeds: Sequence[int], k: int) -> list[dict]:
    """The result.json of every finished cell of these presets and seeds."""
    cells = []
    for preset in presets:
        for seed in seeds:
            for fold in range(k):
                path = cell_dir(out, preset, seed, fold) / RESULT_FILE
                if path.exists():
                    cells.append(json.loads(path.read_text(encoding="utf-8")))
    return cells


def slice_contrasts(out: Path, args: argparse.Namespace, ids: Iterable[str]) -> dict[str, float | None]:
    """Bleed-to-brain contrast (HU) of each slice in `ids`, measured on the phantom that drew it.

    Only for the proxy's own synthetic drop (the phantom is redrawn from fusion-synth's
    arguments, `writer.iter_synthetic_slices`, and measured as `benchmarks/phantom_stats.py`
    does); None for a slice without a bleed; {} for a ``--drop`` (real slices: no HU truth here).
    Cached in OUT/slice_contrast.json.
    """
    if args.drop is not None:
        return {}
    wanted, path = set(ids), out / CONTRAST_FILE
    cached = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if wanted <= set(cached):
        return cached
    from data_build.synth import stats, writer

    found: dict[str, float | None] = {}  # None: a slice without a bleed
    for case in writer.iter_synthetic_slices(args.patients, args.slices_per_patient, args.synth_size,
                                             args.synth_seed, difficulty=args.difficulty_used or "easy"):
        if case.id in wanted:
            found[case.id] = (float(stats.bleed_contrast(np.rint(case.slice.hu), case.slice.mask).contrast)
                              if case.slice.mask.any() else None)
    atomic_write_text(path, json.dumps(found, indent=1, sort_keys=True) + "\n")
    return found


def contrast_table(out: Path, cells: Sequence[Mapping[str, Any]],
                   contrast: Mapping[str, float | None]) -> str:
    """Mean per-slice Dice of each preset (seeds and folds pooled) per `CONTRAST_BANDS` band."""
    if not contrast:
        return ""
    by_preset: dict[str, list[list[float]]] = {}
    for cell in cells:
        dice = read_slice_dice(cell_dir(out, cell["preset"], cell["seed"], cell["fold"]) / "eval")
        bands = by_preset.setdefault(cell["preset"], [[] for _ in CONTRAST_BANDS])
        for sid, value in dice.items():
            c = contrast.get(sid)
            for b, (low, high) in enumerate(CONTRAST_BANDS):
                if c is not None and low <= c < high:
                    bands[b].append(value)
    names = [f"< {h:.0f} HU" if math.isinf(lo) else f">= {lo:.0f} HU" if math.isinf(h) else f"{lo:.0f}-{h:.0f} HU"
             for lo, h in CONTRAST_BANDS]
    lines = ["| preset | " + " | ".join(f"Dice, contrast {n} (slices)" for n in names) + " |",
             "|---" * (len(names) + 1) + "|"]
    for preset, bands in sorted(by_preset.items()):
        cells_text = [f"{np.mean(v):.3f} ({len(v)})" if v else "- (0)" for v in bands]
        lines.append(f"| `{preset}` | " + " | ".join(cells_text) + " |")
    return "\n".join(lines) + "\n"


def mask_size_table(out: Path, cells: Sequence[Mapping[str, Any]]) -> str:
    """Per preset (seeds and folds pooled): are the masks too big or too small?

    Pixel precision and recall pooled over slices, the median predicted / true mask area over
    bleeding slices, and the share of them predicted over twice too big; issue 10 measured the
    default on real slices at 2.8-4.7x, precision 0.21-0.39, recall ~0.70.
    """
    by_preset: dict[str, list[tuple[int, int, int]]] = {}
    cuts: dict[str, list[float]] = {}
    older: dict[str, int] = {}
    for cell in cells:
        folder = cell_dir(out, cell["preset"], cell["seed"], cell["fold"]) / "eval"
        pixels = read_slice_pixels(folder)
        if pixels is None:
            older[cell["preset"]] = older.get(cell["preset"], 0) + 1
            continue
        by_preset.setdefault(cell["preset"], []).extend(pixels.values())
        cuts.setdefault(cell["preset"], []).append(read_mask_threshold(folder))
    lines = ["| preset | pixel precision | pixel recall | predicted / true area, median | "
             "over 2x too big | slices | mask threshold (cells) |", "|---|---|---|---|---|---|---|"]
    for preset, rows in sorted(by_preset.items()):
        t, p, both = np.array(rows, np.float64).reshape(-1, 3).T
        ratio = p[t > 0] / t[t > 0]
        lines.append(
            f"| `{preset}` | {_f(both.sum() / p.sum() if p.sum() else None, 2)} | "
            f"{_f(both.sum() / t.sum() if t.sum() else None, 2)} | "
            f"{_f(float(np.median(ratio)) if ratio.size else None, 2)} | "
            f"{int(np.sum(ratio > 2))} of {ratio.size} | {len(rows)} | "
            f"{', '.join(f'{c:.2f}' for c in cuts[preset])} |")
    if len(lines) == 2:
        return ""
    note = "".join(f"\n(`{k}`: {n} cells evaluated before the pixel columns; rerun fusion-evaluate)"
                   for k, n in sorted(older.items()))
    return "\n".join(lines) + note + "\n"


def fold_split_lines(out: Path, k: int) -> tuple[list[dict[str, Any]], str]:
    """Each built fold's split figures (folds/foldK/splits.json) and one line per fold."""
    figures, lines = [], []
    for fold in range(k):
        path = out / "folds" / f"fold{fold}" / "splits.json"
        if path.exists():
            f = {"fold": fold, **json.loads(path.read_text(encoding="utf-8"))}
            figures.append(f)
            lines.append(f"fold {fold}: train {f['train']}, val {f['val']} (fusion-build val fraction "
                         f"{f['val_fraction_passed']:.2f}), test {f['test']} slices")
    return figures, "\n".join(lines) + ("\n" if lines else "")


def summarise(out: Path, cells: Sequence[Mapping[str, Any]], plan: FoldPlan,
              protocol: Mapping[str, Any], contrast: Mapping[str, float | None] | None = None) -> str:
    """Write proxy_benchmark.json / .md and loss_curves.csv; the Markdown text.

    `contrast`: slice id -> bleed-to-brain contrast in HU (`slice_contrasts`), for the
    by-contrast table; None or {} leaves it out.
    """
    rows = aggregate(cells)
    means = seed_means(rows)
    peer = next((r for r in means + rows if r.preset == "peer-unet"), None)
    calibration = None
    if peer is not None and peer.dice is not None:
        low, high = PEER_DICE_TARGET
        calibration = (f"peer-unet Dice {peer.dice:.3f} (seed {peer.seed}); issue 10's target "
                       f"for the proxy is {low:.2f}-{high:.2f} (real slices: 0.337 / 0.000 on "
                       f"folds 0-1): {'inside' if low <= peer.dice <= high else 'outside'}")
    splits_figures, splits_text = fold_split_lines(out, len(plan.folds))
    text = (
        f"Proxy benchmark: {protocol['image_size']} px, {protocol['epochs']} epochs, "
        f"{sum(len(f) for f in plan.folds)} slices in {len(plan.folds)} folds by patient\n"
        + splits_text + "\n" + markdown_table(rows + means)
        + ("\n" + calibration + "\n" if calibration else "")
        + "\nTraining loss (RUN/history.csv; every epoch in loss_curves.csv):\n\n"
        + loss_table(cells)
    )
    by_contrast = contrast_table(out, cells, contrast or {})
    if by_contrast:
        text += ("\nMean Dice by bleed-to-brain contrast (HU inside the mask against a 7-pixel ring "
                 "of brain, measured on the phantom; real CT: 12 / 20 / 28 at p10 / 50 / 90):\n\n"
                 + by_contrast)
    sizes = mask_size_table(out, cells)
    if sizes:
        text += ("\nMask size against the truth (pixels at the model's size, from each fold's "
                 "predictions.csv; real CT, default preset: 2.8-4.7x, precision 0.21-0.39, "
                 "recall ~0.70):\n\n" + sizes)
    report = {
        "protocol": dict(protocol), "plan": plan.to_json(), "fold_splits": splits_figures,
        "rows": [dataclasses.asdict(r) for r in rows],
        "seed_means": [dataclasses.asdict(r) for r in means], "calibration": calibration,
        "cells": list(cells),
    }
    atomic_write_text(out / "proxy_benchmark.json", json.dumps(report, indent=1, allow_nan=False) + "\n")
    atomic_write_text(out / "proxy_benchmark.md", text)
    atomic_write_text(out / "loss_curves.csv", loss_curves_csv(cells))
    return text


def run(args: argparse.Namespace) -> None:
    """The whole protocol (see the module docstring)."""
    check_args(args)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    args.difficulty_used = resolve_difficulty(args)
    protocol = protocol_of(args)
    check_protocol(out, protocol)
    drop_root = args.drop or write_drop(out, args)
    plan, cases = plan_folds(drop_root, args.folds, args.target_slices)
    atomic_write_text(out / "folds.json", json.dumps(plan.to_json(), indent=1) + "\n")
    print_plan(plan)
    n_kept = sum(len(f) for f in plan.folds)
    if args.target_slices and n_kept < args.target_slices:
        print(f"note: only {n_kept} of the {args.target_slices} slices asked for (--target-slices); "
              f"write more patients (--patients) for the real set's size", flush=True)
    if args.plan_only:
        return
    folds = [args.only_fold] if args.only_fold is not None else list(range(args.folds))
    todo = [(f, p, s) for f in folds for p in args.preset_list for s in args.seed_list]
    started = time.perf_counter()
    for i, (fold, preset, seed) in enumerate(todo if not args.report_only else []):
        shards, _ = build_fold(out, fold, plan, cases, drop_root, args.val_share)
        kept = (cell_dir(out, preset, seed, fold) / RESULT_FILE).exists()
        cell = run_cell(out, preset, seed, fold, shards, len(plan.folds[fold]), args)
        if args.recalibrate:
            cell = recalibrate_cell(out, preset, seed, fold, shards, args.tta)
        elapsed = (time.perf_counter() - started) / 60
        print(f"[{i + 1}/{len(todo)}] fold {fold} {preset} seed {seed}: Dice "
              f"{_f(cell['evaluation']['dice_mean'])}, train {cell['train_seconds'] / 60:.1f} min"
              f"{' (finished before, kept)' if kept else ''} ({elapsed:.0f} min so far)", flush=True)
    cells = finished_cells(out, args.preset_list, args.seed_list, args.folds)
    if not cells:
        raise ProxyError(f"no finished cell in {out}; run without --report-only first")
    contrast = slice_contrasts(out, args, (sid for fold in plan.folds for sid in fold))
    print("\n" + summarise(out, cells, plan, protocol, contrast))
    print(f"wrote {out / 'proxy_benchmark.json'}, {out / 'proxy_benchmark.md'}, "
          f"{out / 'loss_curves.csv'}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit status 0 done, 1 a step failed, 2 bad options."""
    try:
        args = parse_args(argv)
        run(args)
    except ProxyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to continue (finished cells are kept)",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
