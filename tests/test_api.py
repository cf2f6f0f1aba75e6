"""The documented Python API: fusion and data_build export what the CLIs wrap, lazily."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules_after(code: str) -> set[str]:
    """sys.modules of a fresh interpreter after running ``code`` (this checkout first)."""
    probe = f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(proc.stdout.split())


def test_data_build_api_stays_free_of_tensorflow() -> None:
    """Build workers import data_build; TensorFlow would cost each of them seconds and memory."""
    mods = _modules_after("import data_build\nassert callable(data_build.build)\n"
                          "assert callable(data_build.verify)\n"
                          "assert callable(data_build.write_synthetic_drop)")
    assert "data_build.records" in mods
    assert "tensorflow" not in mods and "keras" not in mods


def test_import_fusion_is_lazy() -> None:
    mods = _modules_after("import fusion\nprint(fusion.__version__)")
    assert "tensorflow" not in mods and "fusion.train" not in mods


def test_fusion_api_names_resolve_to_the_functions_the_clis_call() -> None:
    import fusion
    from fusion import evaluate as evaluate_module
    from fusion import export, inference, predict, train

    assert fusion.train_model is train.train
    assert fusion.export_run is export.export_run
    assert fusion.evaluate_model is evaluate_module.evaluate
    assert fusion.load_predictor is inference.load_predictor
    assert fusion.run_predictions is predict.run_predictions
    # the submodules keep their names (no function shadows them)
    assert fusion.train is train and fusion.predict is predict
    assert set(fusion.__all__) <= set(dir(fusion))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fusion.nope  # noqa: B018


def test_versions() -> None:
    import data_build
    import fusion

    assert fusion.__version__ == data_build.__version__
    assert fusion.__version__ and fusion.__version__[0].isdigit()


def test_version_falls_back_without_package_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    from data_build.lazy_api import package_version

    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    assert package_version() == "0+unknown"
