"""How far from the cut are the bleeds a run misses, and what does the class head say there?

Issue 10's goal allows at most 10 % of bleeding slices with an empty predicted mask; the proxy's
fold 0 misses 3-4 of 23 (iso-dense subdurals). A cheap remedy would be a rescue at inference: a
slice the class head calls bleeding (p(any) >= the run's threshold) whose mask is empty at the
cut keeps the pixels at a fraction of its own peak mask probability. This script measures what
such a rule can do before anyone builds it:

- per bleeding slice left empty at the run's mask threshold: its peak mask probability, its
  p(any), and the Dice a peak-relative cut (``--fraction`` x the peak) would give it;
- on bleeding slices: the mean Dice at the cut, and with the reverse rule (no mask where
  p(any) is under its threshold), with the count of bleeding slices the class head misses;
- on slices with a known empty mask (normal slices, e.g. ``--normals-of``): how many get a mask
  at the cut (and its size in pixels at the model's size: median and largest), how many the
  class head calls bleeding, how many a rescue would add, and how many masks the reverse rule
  would keep.

Only slices with a known mask are scored (``has_mask``), as ``fusion-evaluate`` does.

    python benchmarks/missed_bleeds.py RUN SHARDS [--split test] --out OUT.json
    python benchmarks/missed_bleeds.py RUN --normals-of PROXY_OUT --fold 0 --out OUT.json

``--normals-of`` builds (once) shards of the proxy drop's normal slices whose patients the
fold's run never trained on (the fold's own patients and those left out of every fold), from
``benchmarks/proxy_benchmark.py``'s ``OUT/folds.json`` and its drop (``OUT/drop``, or the
``--drop`` that ``OUT/protocol.json`` records).
Masks at the model's size, the run's thresholds, flip TTA; docs/benchmarks.md, "An empty-mask
rescue".
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: A peak below this is no guess at all (what a rescue would require).
PEAK_FLOOR = 0.1


class MissedError(Exception):
    """Bad options or inputs: the message says what and what to do (exit status 1)."""


def summarise(prob: np.ndarray, true: np.ndarray, p_any: np.ndarray, cut: float, any_cut: float,
              fraction: float, ids: Sequence[str] | None = None) -> dict[str, Any]:
    """The figures of the module docstring from [N, H, W] mask probabilities, [N, H, W] bool
    truth (slices with a known mask only) and [N] p(any), at the run's mask cut and "any"
    threshold. A slice is bleeding when its truth has a pixel, normal when it has none."""
    from fusion.metrics import dice
    from fusion.targets import binary_mask

    p = np.nan_to_num(prob, nan=0.0)
    n = len(p)
    ids = list(ids) if ids is not None else [str(i) for i in range(n)]
    pred = binary_mask(p, cut)
    peak = p.reshape(n, -1).max(axis=1, initial=0.0)
    bleeding, found = true.reshape(n, -1).any(axis=1), pred.reshape(n, -1).any(axis=1)
    called = p_any >= any_cut
    rescuable = ~found & called & (peak >= PEAK_FLOOR)
    # What a peak-relative cut marks, before the floor (a zero peak marks nothing).
    guesses = (p >= fraction * peak[:, None, None]) & (peak > 0)[:, None, None]
    guess_dice, slice_dice = dice(guesses, true), dice(pred, true)
    missed = [{"index": int(i), "id": ids[i], "peak": float(peak[i]), "p_any": float(p_any[i]),
               "called": bool(called[i]), "peak_relative_dice": float(guess_dice[i])}
              for i in np.flatnonzero(bleeding & ~found)]
    normal = ~bleeding
    normal_pixels = pred.reshape(n, -1).sum(axis=1)[found & normal]
    vetoed = np.where(called, slice_dice, 0.0)  # the reverse rule: no mask where the head says no bleed
    return {"slices": n, "bleeding": int(bleeding.sum()), "mask_threshold": cut,
            "dice_bleeding": _mean(slice_dice[bleeding]), "bleeding_not_called": int(np.sum(bleeding & ~called)),
            "dice_bleeding_vetoed": _mean(vetoed[bleeding]),
            "any_threshold": any_cut, "fraction": fraction, "peak_floor": PEAK_FLOOR,
            "missed": missed, "missed_rescuable": int(np.sum(rescuable & bleeding)),
            "normal": int(normal.sum()), "normal_with_mask": int(np.sum(found & normal)),
            "normal_called": int(np.sum(called & normal)),
            "normal_rescue_adds": int(np.sum(rescuable & normal)),
            "normal_with_mask_vetoed": int(np.sum(found & normal & called)),
            "normal_mask_pixels_median": float(np.median(normal_pixels)) if normal_pixels.size else None,
            "normal_mask_pixels_max": int(normal_pixels.max()) if normal_pixels.size else None}


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if values.size else None


def collect(run: Path, shards: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], Any]:
    """Flip-TTA mask probabilities, truth and p(any) of the split's slices with a known mask,
    their ids, and the loaded predictor."""
    from fusion.keras_predictor import open_model
    from fusion.reader import ShardSequence

    predictor = open_model(run, "tensorflow", tta="flip")
    probs, truth, p_any, ids = [], [], [], []
    for batch in ShardSequence(shards, split, image_size=predictor.image_size, batch_size=8, as_dicts=True):
        known = np.asarray(batch["has_mask"]).reshape(-1) > 0.5
        out = predictor.predict(np.asarray(batch["image"], np.float32)[known], batch_size=8, tta="flip")
        probs.append(out["mask"][..., 0])
        p_any.append(out["probabilities"][:, 0])
        truth.append(np.asarray(batch["mask"])[known][..., 0] >= 0.5)
        ids += [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(batch["id"]).reshape(-1)[known]]
    if not ids:
        raise MissedError(f"split {split!r} of {shards} holds no slice with a known mask")
    return np.concatenate(probs), np.concatenate(truth), np.concatenate(p_any), ids, predictor


def _check_fold(groups: Sequence[Sequence[str]], fold: int) -> None:
    if not 0 <= fold < len(groups):
        raise MissedError(f"--fold {fold} is not a fold of this proxy run (0-{len(groups) - 1})")


def unseen_normals(cases: Sequence[Any], groups: Sequence[Sequence[str]], fold: int) -> list[Any]:
    """Normal slices (any = 0, mask known empty) of patients outside every fold but `fold`."""
    _check_fold(groups, fold)
    trained = {g for k, gs in enumerate(groups) if k != fold for g in gs}
    return [c for c in cases if c.labels is not None and c.labels[0] == 0 and c.polygons == ()
            and c.group not in trained]


def normal_shards(proxy_out: Path, fold: int) -> Path:
    """Shards (all test) of `unseen_normals` of the proxy's drop; built once under
    PROXY_OUT/normals/foldK (the drop: PROXY_OUT/drop, or the one protocol.json names)."""
    from proxy_benchmark import ProxyError, command_path, write_subdrop

    from data_build.drop import DropError, discover

    folder = proxy_out / "normals" / f"fold{fold}"
    try:
        groups = json.loads((proxy_out / "folds.json").read_text(encoding="utf-8"))["groups"]
        drop_info = json.loads((proxy_out / "protocol.json").read_text(encoding="utf-8"))["drop"]
    except (OSError, ValueError, KeyError) as err:
        raise MissedError(f"{proxy_out} is not a proxy_benchmark.py --out folder ({err}); run "
                          f"benchmarks/proxy_benchmark.py --plan-only first") from None
    drop_root = Path(drop_info.get("path", proxy_out / "drop"))
    _check_fold(groups, fold)  # before the drop is read
    if (folder / "shards" / "manifest.json").exists():
        return folder / "shards"
    try:
        cases = unseen_normals(discover(drop_root, workers=1, progress=False).cases, groups, fold)
        if not cases:
            raise MissedError(f"{drop_root} has no normal slice outside fold {fold}'s training folds")
        if not (folder / "drop").exists():
            folder.mkdir(parents=True, exist_ok=True)
            write_subdrop(drop_root, cases, folder / "drop")
        subprocess.run([command_path("fusion-build"), str(folder / "drop"), "--out", str(folder / "shards"),
                        "--split-fractions", "0,0,1", "--workers", "1", "--overwrite", "--no-progress"], check=True)
    except (DropError, ProxyError, subprocess.CalledProcessError) as err:
        raise MissedError(f"cannot build the normal slices' shards: {err}") from None
    return folder / "shards"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="A run folder (fusion-train --out).")
    p.add_argument("shards", type=Path, nargs="?", help="Shards to score (or --normals-of).")
    p.add_argument("--split", default="test", help="Split of SHARDS [test].")
    p.add_argument("--normals-of", type=Path, help="A proxy_benchmark.py --out folder: score the "
                   "normal slices of patients RUN never trained on.")
    p.add_argument("--fold", type=int, default=0, help="With --normals-of: the fold RUN was trained for [0].")
    p.add_argument("--fraction", type=float, default=0.5, help="Peak-relative cut [0.5].")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write.")
    args = p.parse_args(argv)
    if (args.shards is None) == (args.normals_of is None):
        p.error("give exactly one of SHARDS or --normals-of")
    if args.normals_of is not None and args.split != "test":
        p.error("--normals-of builds test shards only; leave --split out")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit status 0 done, 1 bad inputs, 2 bad options."""
    from fusion.errors import FusionError

    args = parse_args(argv)
    try:
        shards = args.shards if args.shards is not None else normal_shards(args.normals_of, args.fold)
        prob, true, p_any, ids, predictor = collect(args.run, shards, args.split)
    except (MissedError, FusionError) as err:  # a model that does not load, an empty split
        print(f"error: {err}", file=sys.stderr)
        return 1
    any_cut = float(predictor.thresholds[0]) if predictor.thresholds is not None else 0.5
    result = summarise(prob, true, p_any, predictor.mask_threshold, any_cut, args.fraction, ids)
    result.update(run=str(args.run), shards=str(shards), split=args.split)
    from data_build.files import atomic_write_text

    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "missed"}))
    for m in result["missed"]:
        print(f"  missed {m['id']}: peak {m['peak']:.3f}, p(any) {m['p_any']:.3f}, "
              f"peak-relative Dice {m['peak_relative_dice']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
