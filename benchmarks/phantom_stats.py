"""How hard is the phantom? Issue 10's bleed/ring table on synthetic slices, beside real CT.

Draws exactly the slices `fusion-synth` would write for the same arguments
(`writer.iter_synthetic_slices`), rounds their HU to integers as the DICOMs store them, and
measures every bleeding slice with `data_build.synth.stats`: median HU inside the mask, median
and std of a 7-pixel ring of brain around it (ring pixels kept in [0, 80] HU), contrast, and area
in pixels at 512 x 512; percentiles 10 / 50 / 90. Also times the phantom per slice.

    python benchmarks/phantom_stats.py --patients 80 --slices-per-patient 6 --difficulty easy real

Prints a Markdown table for docs/benchmarks.md ("Phantom realism").
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from data_build.synth import stats, writer
from data_build.synth.difficulty import DIFFICULTIES

#: Issue 10's real-CT areas as it quotes them; `stats.REAL_CT` holds their middles.
REAL_AREA_TEXT = "160-265 / 1,100-1,900 / 4,300-8,800"
LABELS = {
    "bleed_hu": "bleed HU", "ring_hu": "brain ring HU", "contrast": "contrast (HU)",
    "area_px512": "area (px at 512²)", "ring_std": "ring HU std",
}


def measure(difficulty: str, patients: int, slices: int, size: int,
            seed: int) -> tuple[dict[str, tuple[float, ...]], int, int, float]:
    """Percentile table, bleeding slices measured, slices drawn, seconds per slice."""
    rows: list[stats.BleedContrast] = []
    n = 0
    start = time.perf_counter()
    for case in writer.iter_synthetic_slices(patients, slices, size, seed, difficulty=difficulty):
        n += 1
        hu = np.rint(case.slice.hu)  # the DICOM stores integers
        row = stats.bleed_contrast(hu, case.slice.mask)
        if row is not None:
            rows.append(row)
    seconds = (time.perf_counter() - start) / max(n, 1)
    return stats.summarise(rows), len(rows), n, seconds


def _fmt(values: tuple[float, ...], digits: int = 0) -> str:
    return " / ".join(f"{v:,.{digits}f}" for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=80)
    parser.add_argument("--slices-per-patient", type=int, default=6)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--difficulty", nargs="+", choices=DIFFICULTIES,
                        default=list(DIFFICULTIES))
    args = parser.parse_args()
    header = "| | " + " | ".join(LABELS[f] for f in stats.FIGURES) + " | slices | s/slice |"
    print(header)
    print("|---" * (len(stats.FIGURES) + 3) + "|")
    real = {f: _fmt(v, 1 if f == "ring_std" else 0) for f, v in stats.REAL_CT.items()}
    real["area_px512"] = REAL_AREA_TEXT  # the issue quotes ranges (over folds) for the area
    print("| real CT (issue 10) | " + " | ".join(real[f] for f in stats.FIGURES) + " | 92 | |")
    for difficulty in args.difficulty:
        table, n_bleed, n, seconds = measure(difficulty, args.patients, args.slices_per_patient,
                                             args.size, args.seed)
        cells = " | ".join(_fmt(table[f], 1 if f == "ring_std" else 0) for f in stats.FIGURES)
        print(f"| `--difficulty {difficulty}` | {cells} | {n_bleed} of {n} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
