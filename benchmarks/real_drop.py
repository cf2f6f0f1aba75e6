"""Make a benchmark drop from the real RSNA DICOMs in ../shared/data/real/rsna-dicom.

Each real slice is windowed with the project's presets and written as the drop's four
512x512 RGB JPEG renders (bone colour map, as in the drop), then replicated under new ids until the drop
holds N slices. Labels and a mask polygon are attached to a fraction of them so the build does
the same work as on the real drop. Nothing is written into the repository.

    python benchmarks/real_drop.py /tmp/bench-drop --slices 1000
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import cv2
import numpy as np

from data_build.dicom import read_hu
from data_build.renders import grey_to_rgb
from data_build.windows import PRESETS, WINDOW_NAMES, to_uint8, window

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
DETECTION_HEADER = (
    "Case ID,Origin,URL,Labeling State,All Labels,Total Reads,Total Qualified Reads,"
    "Majority Label,Number of ROIs,Correct Label,Difficulty,Agreement,Comments,Internal Notes"
)


def render_jpegs(hu: np.ndarray) -> dict[str, bytes]:
    """HU [H, W] -> {window name: RGB JPEG bytes} as the drop stores them."""
    out = {}
    for name in WINDOW_NAMES:
        grey = to_uint8(window(hu, PRESETS[name].level, PRESETS[name].width))
        rgb = grey_to_rgb(grey)  # the drop's bone colour map
        ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok
        out[name] = buf.tobytes()
    return out


def make_drop(root: Path, n_slices: int, dicom_dir: Path = REAL / "rsna-dicom", mask_every: int | None = None) -> int:
    """Write a drop of `n_slices` slices rendered from the real DICOMs; returns the count.

    A mask polygon goes on one slice in three (i = 1, 5 mod 6), or with `mask_every` = k on
    slice i = 1 mod k only (k a multiple of 3 keeps them on bleeding slices: 39 gives the
    users' real share, ~3k masks in 116k slices)."""
    sources = sorted(dicom_dir.glob("*.dcm"))
    if not sources:
        raise SystemExit(f"no DICOMs in {dicom_dir}: the benchmark needs ../shared/data/real")
    renders = [render_jpegs(read_hu(p)[0]) for p in sources]
    labels = ["Image,any,epidural,intraparenchymal,intraventricular,subarachnoid,subdural"]
    seg = [DETECTION_HEADER]
    for i in range(n_slices):
        sid = "ID_" + hashlib.sha256(f"bench{i}".encode()).hexdigest()[:9]
        kind = "intraparenchymal" if i % 3 else "normal"
        for name, data in renders[i % len(renders)].items():
            folder = root / "renders" / kind / name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{sid}.jpg").write_bytes(data)
        labels.append(f"{sid},{int(kind != 'normal')},0,{int(kind != 'normal')},0,0,0")
        if kind != "normal" and (i % 2 if mask_every is None else i % mask_every == 1):
            poly = '[{""x"": 0.4, ""y"": 0.4}, {""x"": 0.55, ""y"": 0.42}, {""x"": 0.5, ""y"": 0.56}]'
            seg.append(
                f'{i},{sid}.jpg,,Labeled,[],3,3,"{poly}",1,,0.1,0.8,,'
            )
    (root / "hemorrhage-labels.csv").write_text("\n".join(labels) + "\n")
    (root / "segmentation").mkdir(exist_ok=True)
    name = "Results_Intraparenchymal Hemorrhage Detection_2020-11-16_21.39.31.268.csv"
    (root / "segmentation" / name).write_text("\n".join(seg) + "\n")
    return n_slices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", type=Path)
    parser.add_argument("--slices", type=int, default=1000)
    args = parser.parse_args()
    print(f"wrote {make_drop(args.root, args.slices)} slices under {args.root}")


if __name__ == "__main__":
    main()
