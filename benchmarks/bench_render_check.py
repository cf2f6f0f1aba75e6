"""Render validation cost per slice: `convert._check_jpeg` on synthetic 512 x 512 renders.

The build proves every render JPEG decodes before storing it (issue #12 D3/D4 added the colour
component check and libjpeg's "Corrupt JPEG data" warnings). This times that check alone, in
one process, on the synthetic drop's renders (four windows a slice), and prints CPU ms per slice.

    python benchmarks/bench_render_check.py --patients 13 --repeats 5
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_build import convert  # noqa: E402
from data_build.synth.writer import write_synthetic_drop  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=13)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "drop"
        write_synthetic_drop(root, n_patients=args.patients, slices_per_patient=6, size=args.size,
                             dicoms=False, broken=False)
        renders = [p.read_bytes() for p in sorted((root / "renders").rglob("*.jpg"))]
    # CPU time of this process: on a shared machine it is far less noisy than wall time.
    times = []
    for _ in range(args.repeats):
        start = time.process_time()
        for data in renders:
            convert._check_jpeg("id", data, "path")
        times.append((time.process_time() - start) / len(renders) * 4 * 1000)
    print(f"{len(renders)} renders of {args.size} px; CPU ms per slice (4 renders): median "
          f"{statistics.median(times):.2f}, min {min(times):.2f}, max {max(times):.2f}")


if __name__ == "__main__":
    main()
