"""fusion.predict + fusion-predict: inputs, series grouping, volumes, path safety, exit codes."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

def make_fake_savedmodel(folder: Path, size: int | None = None, thresholds: bool = False) -> Path:
    """A tiny SavedModel honouring the export contract (no training, builds in ~1 s).

    probabilities[:, j] = mean of channel 0 over the image's left half, + 0.1 * j, clipped;
    mask = channel 0 (so masks are exact and flip-equivariant); area_fraction = mean(mask > 0.5).
    serve_hu windows HU with the brain window (L40 W80) into all four channels.
    """
    import tensorflow as tf

    h = w = size

    class Fake(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            if thresholds:
                self.thresholds = tf.Variable([0.5, 0.45, 0.5, 0.5, 0.5, 0.5], trainable=False)

        def _call(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
            ch0 = images[..., 0]
            half = tf.shape(ch0)[2] // 2
            left = tf.reduce_mean(ch0[:, :, :half], axis=[1, 2])
            probs = tf.clip_by_value(left[:, None] + 0.1 * tf.range(6, dtype=tf.float32), 0.0, 1.0)
            mask = images[..., :1]
            return {
                "probabilities": probs,
                "decisions": tf.cast(probs >= 0.5, tf.int32),
                "area_fraction": tf.reduce_mean(tf.cast(mask > 0.5, tf.float32), axis=[1, 2, 3]),
                "mask": mask,
            }

        @tf.function(input_signature=[tf.TensorSpec([None, h, w, 4], tf.float32, name="images")])
        def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
            return self._call(images)

        @tf.function(input_signature=[tf.TensorSpec([None, h, w, 1], tf.float32, name="hu")])
        def serve_hu(self, hu: tf.Tensor) -> dict[str, tf.Tensor]:
            unit = tf.clip_by_value((hu - 0.0) / 80.0, 0.0, 1.0)
            return self._call(tf.concat([unit] * 4, axis=-1))

    module = Fake()
    tf.saved_model.save(
        module,
        str(folder),
        signatures={"serving_default": module.serve, "serve_hu": module.serve_hu},
    )
    return folder


# --- fixtures --------------------------------------------------------------------------------

import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from factories import S, write_dicom  # noqa: E402

from data_build.dicom import read_meta  # noqa: E402
from fusion.cli import predict as cli  # noqa: E402
from fusion.inference import load_predictor  # noqa: E402
from fusion.predict import (  # noqa: E402
    PredictError,
    inside,
    run_predictions,
    safe_name,
)
from fusion.predict_inputs import DicomSlice, discover, group_series  # noqa: E402


def sphere_slices(radius: float, spacing: float, dz: float) -> list[tuple[float, np.ndarray]]:
    """(z, HU) slices of a ball of 80 HU in 0 HU, centred at z = 0."""
    n = int(math.ceil(radius / dz)) + 2
    c = (np.arange(S) - (S - 1) / 2) * spacing
    yy, xx = np.meshgrid(c, c, indexing="ij")
    out = []
    for k in range(-n, n + 1):
        z = k * dz
        out.append((z, np.where(xx**2 + yy**2 + z**2 <= radius**2, 80.0, 0.0)))
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_savedmodel(tmp_path_factory.mktemp("m") / "export")


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["../../etc/passwd", "/abs/path", "..", ".", "a\x00b", "a/../../b", "", "C:\\x\\y"]
)
def test_safe_name_never_escapes(text: str, tmp_path: Path) -> None:
    name = safe_name(text)
    assert name and "/" not in name and "\\" not in name and "\x00" not in name
    assert not name.startswith(".") and ".." not in name
    assert inside(tmp_path, name).parent == tmp_path.resolve()


def test_inside_rejects_escape(tmp_path: Path) -> None:
    with pytest.raises(PredictError, match="leave"):
        inside(tmp_path, "../x")


# --- discovery and series ----------------------------------------------------------------------


def test_group_series_orders_shuffled_files(tmp_path: Path) -> None:
    files = []
    for k, z in enumerate([3.0, -1.0, 1.0, 0.0, 2.0]):
        files.append(write_dicom(tmp_path / f"a{k}.dcm", np.zeros((8, 8)), "1.1", z=z))
    for k, inst in enumerate([2, 3, 1]):  # no positions: ordered by InstanceNumber
        files.append(
            write_dicom(tmp_path / f"b{k}.dcm", np.zeros((8, 8)), "1.2", z=None, instance=inst)
        )
    random.Random(0).shuffle(files)
    series = group_series([DicomSlice(f, read_meta(f)) for f in files])
    assert [g.id for g in series] == ["1.1", "1.2"]
    assert [s.meta.position[2] for s in series[0].slices] == [-1.0, 0.0, 1.0, 2.0, 3.0]
    assert [s.meta.instance_number for s in series[1].slices] == [1, 2, 3]


def test_discover_sorts_inputs(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    write_dicom(tmp_path / "d" / "x.dcm", np.zeros((8, 8)), "1.1")
    (tmp_path / "d" / "notes.txt").write_text("ignored in folders")
    (tmp_path / "d" / "broken.dcm").write_bytes(b"garbage")
    r = tmp_path / "renders" / "epidural"
    for w in ("bone_window", "subdural_window", "brain_bone_window", "max_contrast_window"):
        (r / w).mkdir(parents=True)
        cv2.imwrite(str(r / w / "ID_1.jpg"), np.zeros((8, 8, 3), np.uint8))
    found = discover([tmp_path / "d", tmp_path / "renders", tmp_path / "missing.png"])
    assert len(found.dicom) == 1
    assert list(found.renders) == [(str(r), "ID_1")]
    assert set(found.renders[(str(r), "ID_1")]) == {
        "brain_window", "subdural_window", "brain_bone_window", "max_contrast_window"}
    reasons = sorted(s.reason for s in found.skipped)
    assert reasons == ["missing", "unreadable-dicom"]


# --- end to end ------------------------------------------------------------------------------


def test_sphere_series_volume_end_to_end(model_dir: Path, tmp_path: Path) -> None:
    radius, spacing, dz = 6.0, 0.5, 1.0
    (tmp_path / "in").mkdir()
    slices = sphere_slices(radius, spacing, dz)
    order = list(range(len(slices)))
    random.Random(1).shuffle(order)  # file names must not give the order away
    files = [
        write_dicom(tmp_path / "in" / f"s{k:02d}.dcm", slices[i][1], "9.9", z=slices[i][0])
        for k, i in enumerate(order)
    ]
    summary = run_predictions(load_predictor(model_dir), [tmp_path / "in"], tmp_path / "out")
    assert summary.predicted == len(files) and summary.series == 1 and not summary.skipped
    series = json.loads((tmp_path / "out" / "series.json").read_text())
    assert len(series) == 1
    s = series[0]
    truth = 4 / 3 * math.pi * radius**3 / 1000.0
    assert s["spacing_source"] == "positions" and s["slice_spacing_mm"] == pytest.approx(dz)
    assert s["volume_ml"] == pytest.approx(truth, rel=0.05)
    assert s["abc2_ml"] == pytest.approx(truth, rel=0.15)
    rows = json.loads((tmp_path / "out" / "predictions.json").read_text())
    zs = [r["index_in_series"] for r in rows]
    assert zs == list(range(len(files)))
    mid = rows[len(rows) // 2]
    assert s["largest_slice_id"] == mid["id"]
    # mm^2 of the middle slice: pi r^2 within a few %
    assert mid["mask_area_mm2"] == pytest.approx(math.pi * radius**2, rel=0.05)
    mask = cv2.imread(str(tmp_path / "out" / mid["mask_png"]), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (S, S) and set(np.unique(mask)) == {0, 255}
    assert (tmp_path / "out" / mid["overlay_png"]).is_file()
    header = (tmp_path / "out" / "series.csv").read_text().splitlines()[0]
    assert "volume_ml" in header and "abc2_ml" in header


def test_cli_mixed_and_bad_inputs(model_dir: Path, tmp_path: Path) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    hu = np.zeros((S, S))
    hu[8:16, 8:16] = 80.0
    write_dicom(inp / "good.dcm", hu, "5.5", sop_uid="1.2.840.99.1")
    (inp / "corrupt.dcm").write_bytes(b"\x00" * 200)
    gray = np.zeros((S, S), np.uint8)
    gray[:, :10] = 255
    cv2.imwrite(str(inp / "plain.png"), gray)
    np.save(inp / "windows.npy", np.full((S, S, 4), 0.25, np.float32))
    np.save(inp / "bad.npy", np.zeros((3, 3, 3, 3)))
    (inp / "image.jpg").write_bytes(b"not a jpeg")
    r = inp / "renders" / "subdural"
    for w in ("brain_window", "subdural_window", "brain_bone_window"):  # one window missing
        (r / w).mkdir(parents=True)
        cv2.imwrite(str(r / w / "ID_2.jpg"), np.zeros((S, S, 3), np.uint8))
    r2 = inp / "renders" / "normal"
    for w in ("brain_window", "subdural_window", "brain_bone_window", "max_contrast_window"):
        (r2 / w).mkdir(parents=True)
        cv2.imwrite(str(r2 / w / "ID_3.jpg"), np.zeros((S, S, 3), np.uint8))
    (r2 / "subdural_window" / "ID_3.jpg").write_bytes(b"\xff\xd8 truncated")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    out = tmp_path / "out"
    res = CliRunner().invoke(cli.main, [str(model_dir), str(inp), str(notes), "--out", str(out),
                                        "--tta", "flip"])
    assert res.exit_code == 0, res.output
    assert "3 slices predicted" in res.output and "6 inputs skipped" in res.output
    rows = json.loads((out / "predictions.json").read_text())
    by_source = {r["source"]: r for r in rows}
    assert set(by_source) == {"dicom", "image", "npy"}
    assert by_source["dicom"]["mask_pixels"] == 64
    assert by_source["dicom"]["area_mm2"] == pytest.approx(64 * 0.25, rel=1e-3)
    assert by_source["image"]["area_mm2"] is None
    # plain image = brain window: white (HU 80) columns 0..9 -> 10 * S mask pixels
    assert by_source["image"]["mask_pixels"] == 10 * S
    skipped = json.loads((out / "skipped.json").read_text())
    assert sorted(s["reason"] for s in skipped) == [
        "bad-array", "corrupt-image", "corrupt-image", "missing-window", "unknown-file",
        "unreadable-dicom"]
    # the skip names the broken window file, not its siblings
    assert any(s["path"].endswith("subdural_window/ID_3.jpg") for s in skipped)
    assert len((out / "predictions.csv").read_text().splitlines()) == 4
    # second run refuses to overwrite
    again = CliRunner().invoke(cli.main, [str(model_dir), str(inp), "--out", str(out)])
    assert again.exit_code != 0 and "--overwrite" in again.output
    # --overwrite with a MODEL that does not open keeps the earlier masks
    masks_before = sorted(p.name for p in (out / "masks").iterdir())
    again = CliRunner().invoke(cli.main, [str(tmp_path / "no-such-model"), str(inp), "--out",
                                          str(out), "--overwrite"])
    assert again.exit_code != 0 and "does not exist" in again.output
    assert sorted(p.name for p in (out / "masks").iterdir()) == masks_before
    # --overwrite replaces the outputs: masks of inputs no longer given disappear
    again = CliRunner().invoke(cli.main, [str(model_dir), str(inp / "windows.npy"), "--out",
                                          str(out), "--overwrite"])
    assert again.exit_code == 0, again.output
    assert [p.name for p in (out / "masks").iterdir()] == ["windows.png"]
    assert json.loads((out / "fusion_predict.json").read_text())["tta"] == "flip"  # the default


def test_cli_nothing_predictable_exits_1(model_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"nope")
    res = CliRunner().invoke(cli.main, [str(model_dir), str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1
    assert "0 slices predicted" in res.output and "1 inputs skipped" in res.output


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_hostile_ids_stay_inside_out(model_dir: Path, tmp_path: Path) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    write_dicom(inp / "a.dcm", np.zeros((S, S)), "7.7", sop_uid="../../../escaped", z=0.0)
    write_dicom(inp / "b.dcm", np.zeros((S, S)), "7.7", sop_uid="/abs/escaped", z=1.0)
    out = tmp_path / "deep" / "out"
    summary = run_predictions(load_predictor(model_dir), [inp], out)
    assert summary.predicted == 2
    written = {p.resolve() for p in tmp_path.rglob("*") if p.is_file()} - {
        p.resolve() for p in inp.rglob("*")}
    assert written and all(out.resolve() in p.parents for p in written), written
    names = sorted(p.name for p in (out / "masks").iterdir())
    assert len(names) == 2 and all(not n.startswith(".") for n in names)


def test_real_dicoms_when_present(model_dir: Path, tmp_path: Path) -> None:
    real = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / "rsna-dicom"
    if not real.is_dir():
        pytest.skip("../shared/data/real is not present")
    files = sorted(real.glob("*.dcm"))[:6]
    summary = run_predictions(load_predictor(model_dir), files, tmp_path / "out", batch_size=4)
    assert summary.predicted == len(files) and summary.exit_code == 0
    rows = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert all(r["area_mm2"] is not None for r in rows)  # RSNA slices carry PixelSpacing


def test_plain_and_render_images_invert_the_bone_colour_map(tmp_path: Path) -> None:
    from data_build.renders import grey_to_rgb
    from fusion.predict_inputs import read_plain_grey, read_render_grey

    grey = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (8, 1))  # [8, 64] ramp
    rgb = grey_to_rgb(grey)
    assert np.abs(rgb[..., 2].astype(int) - rgb[..., 0]).max() > 2  # really tinted
    cv2.imwrite(str(tmp_path / "bone.png"), rgb[..., ::-1])  # cv2 writes BGR
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    cv2.imwrite(str(tmp_path / "grey3.png"), np.repeat(grey[..., None], 3, -1))
    for name, reader in (("bone.png", read_plain_grey), ("bone.png", read_render_grey),
                         ("grey.png", read_plain_grey), ("grey3.png", read_plain_grey)):
        got = reader(tmp_path / name)
        np.testing.assert_allclose(got, grey / 255.0, atol=1.01 / 255, err_msg=name)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match="PNG/JPEG"):
        read_plain_grey(tmp_path / "bad.png")


def test_killed_run_keeps_partial_tables_and_a_full_run_leaves_none(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fusion.predict as predict_mod

    (tmp_path / "in").mkdir()
    hu = np.zeros((S, S))
    for series in ("1.1", "2.2"):
        for k in range(2):
            write_dicom(tmp_path / "in" / f"s{series}-{k}.dcm", hu, series, z=float(k))
    predictor = load_predictor(model_dir)
    real_run_model = predict_mod._run_model
    calls = []

    def dies_on_second_series(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run is killed while predicting the second series
        return real_run_model(*args, **kwargs)

    monkeypatch.setattr(predict_mod, "_run_model", dies_on_second_series)
    files: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        run_predictions(predictor, [tmp_path / "in"], tmp_path / "out", checkpoint_s=0,
                        on_file=lambda: files.append(1))
    assert len(files) == 4  # every header was looked at
    out = tmp_path / "out"
    assert not (out / "predictions.csv").exists()  # nothing that looks whole
    partial = json.loads((out / "predictions.partial.json").read_text())
    assert len(partial) == 2 and len({r["series_id"] for r in partial}) == 1
    assert len(json.loads((out / "series.partial.json").read_text())) == 1

    monkeypatch.setattr(predict_mod, "_run_model", real_run_model)
    summary = run_predictions(predictor, [tmp_path / "in"], out, checkpoint_s=0)
    assert summary.predicted == 4
    assert len(json.loads((out / "predictions.json").read_text())) == 4
    assert not list(out.glob("*.partial.*"))


# --- D8: duplicates, gaps; D14: earlier outputs inside the input ---------------------------------


def test_duplicate_slices_do_not_inflate_the_volume(model_dir: Path, tmp_path: Path) -> None:
    """Issue 12 D8: copies of slices (same SOPInstanceUID or same position) were counted twice
    (105 -> 159 mL). Now they are dropped, counted in series.json and skipped.json, and the
    volume equals that of the clean series."""
    import shutil

    slices = sphere_slices(6.0, 0.5, 1.0)
    clean = tmp_path / "clean"
    clean.mkdir()
    files = [write_dicom(clean / f"s{k:02d}.dcm", hu, "9.8", z=z) for k, (z, hu) in enumerate(slices)]
    predictor = load_predictor(model_dir)
    run_predictions(predictor, [clean], tmp_path / "out-clean")
    (truth,) = json.loads((tmp_path / "out-clean" / "series.json").read_text())
    dup = tmp_path / "dup"
    shutil.copytree(clean, dup)
    for f in files[5:10]:
        shutil.copy(f, dup / f"copy-{f.name}")  # same SOPInstanceUID
    z, hu = slices[len(slices) // 2]
    write_dicom(dup / "rescan.dcm", hu, "9.8", z=z)  # a new UID at a known position
    summary = run_predictions(predictor, [dup], tmp_path / "out-dup")
    assert summary.predicted == len(files)
    (row,) = json.loads((tmp_path / "out-dup" / "series.json").read_text())
    assert row["n_duplicates_dropped"] == 6 and row["n_slices"] == len(files)
    assert row["volume_ml"] == truth["volume_ml"]
    skipped = json.loads((tmp_path / "out-dup" / "skipped.json").read_text())
    assert [s["reason"] for s in skipped] == ["duplicate-slice"] * 6
    header = (tmp_path / "out-dup" / "series.csv").read_text().splitlines()[0].split(",")
    assert {"n_duplicates_dropped", "n_gaps", "largest_gap_mm", "warnings"} <= set(header)


def test_gap_is_reported_and_excluded_from_the_volume(model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    hu = np.zeros((S, S))
    hu[8:16, 8:16] = 80.0  # 64 px of 0.25 mm^2 = 16 mm^2 per slice
    for k, z in enumerate([0.0, 1.0, 2.0, 3.0, 40.0, 41.0]):
        write_dicom(tmp_path / "in" / f"s{k}.dcm", hu, "9.7", z=z)
    run_predictions(load_predictor(model_dir), [tmp_path / "in"], tmp_path / "out")
    (row,) = json.loads((tmp_path / "out" / "series.json").read_text())
    assert row["n_gaps"] == 1 and row["largest_gap_mm"] == pytest.approx(37.0)
    assert row["slice_spacing_mm"] == pytest.approx(1.0)
    assert row["volume_ml"] == pytest.approx(6 * 16.0 * 1.0 / 1000)  # six 1-mm slabs, no gap
    assert "gap" in (tmp_path / "out" / "series.csv").read_text()


def test_earlier_outputs_inside_the_input_are_not_read(model_dir: Path, tmp_path: Path) -> None:
    """Issue 12 D14: an old --out inside the input folder had its masks/ and overlays/ PNGs
    predicted on as new images."""
    inp = tmp_path / "in"
    inp.mkdir()
    hu = np.zeros((S, S))
    hu[4:12, 4:12] = 80.0
    for k in range(3):
        write_dicom(inp / f"s{k}.dcm", hu, "9.6", z=float(k))
    first = CliRunner().invoke(cli.main, [str(model_dir), str(inp), "--out", str(inp / "pred")])
    assert first.exit_code == 0, first.output
    assert len(list((inp / "pred" / "masks").glob("*.png"))) == 3
    assert json.loads((inp / "pred" / "fusion_predict.json").read_text())["tta"] == "flip"
    # the same --out again: its own files are not inputs
    again = CliRunner().invoke(cli.main, [str(model_dir), str(inp), "--out", str(inp / "pred"),
                                          "--overwrite"])
    assert again.exit_code == 0, again.output
    assert "3 slices predicted" in again.output and "0 inputs skipped" in again.output
    # another --out: the earlier output folder is skipped and said so
    other = CliRunner().invoke(cli.main, [str(model_dir), str(inp), "--out", str(tmp_path / "o")])
    assert other.exit_code == 0, other.output
    assert "3 slices predicted" in other.output and "1 fusion-output" in other.output
    skipped = json.loads((tmp_path / "o" / "skipped.json").read_text())
    assert skipped == [{"path": str(inp / "pred"), "reason": "fusion-output",
                        "detail": "an earlier fusion-predict --out; not read as input"}]
    # --out may not be an input folder itself (its outputs would become inputs)
    same = CliRunner().invoke(cli.main, [str(model_dir), str(inp), "--out", str(inp)])
    assert same.exit_code == 1 and "also an input folder" in same.output
    assert not (inp / "fusion_predict.json").exists()
    # an output of an older version (no marker, only the tables) is recognised too
    (inp / "pred" / "fusion_predict.json").unlink()
    old = CliRunner().invoke(cli.main, [str(model_dir), str(inp), "--out", str(tmp_path / "o2")])
    assert "3 slices predicted" in old.output and "1 fusion-output" in old.output


def test_cli_mask_formats(model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    for k in range(3):
        write_dicom(tmp_path / "in" / f"s{k}.dcm", np.zeros((S, S)), "9.5", z=float(k))
    bad = CliRunner().invoke(cli.main, [str(model_dir), str(tmp_path / "in"), "--out",
                                        str(tmp_path / "o"), "--mask-format", "nrrd"])
    assert bad.exit_code == 2 and "unknown mask format 'nrrd'" in bad.output
    bad = CliRunner().invoke(cli.main, [str(model_dir), str(tmp_path / "in"), "--out",
                                        str(tmp_path / "o"), "--save-probabilities"])
    assert bad.exit_code == 2 and "--mask-format nifti" in bad.output
    pytest.importorskip("nibabel")
    pytest.importorskip("highdicom")
    out = tmp_path / "o"
    res = CliRunner().invoke(cli.main, [str(model_dir), str(tmp_path / "in"), "--out", str(out),
                                        "--mask-format", "nifti,dicom-seg", "--save-probabilities"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (out / "nifti").iterdir()) == [
        "9.5.nii.gz", "9.5_probabilities.nii.gz"]
    assert [p.name for p in (out / "seg").iterdir()] == ["9.5.dcm"]
    assert not (out / "masks").exists() and "nifti/, seg/" in res.output


def test_discover_counts_unlistable_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from factories import deny_listing

    (tmp_path / "locked").mkdir()
    deny_listing(monkeypatch, "locked")
    found = discover([tmp_path])
    assert [(s.path, s.reason, s.detail) for s in found.skipped] == [
        (str(tmp_path / "locked"), "unreadable-folder", "Permission denied")]
