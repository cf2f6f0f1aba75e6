"""Train, export, evaluate and run the multi-task hemorrhage model. The Python API behind
``fusion-train``, ``fusion-evaluate`` and ``fusion-predict``::

    import fusion
    fusion.train_model("shards/", "runs/a", fusion.preset("fusion"))       # fusion-train
    predictor = fusion.load_predictor("runs/a")        # finds runs/a/export/<version>/
    fusion.run_predictions(predictor, ["scans/"], Path("pred"), mask_formats=("nifti",))
    fusion.evaluate_model(predictor, batches, Path("report"))              # fusion-evaluate

The functions carry a suffix because ``fusion.train``, ``fusion.evaluate`` and
``fusion.predict`` are the modules that define them: a function of the same name would
shadow the module (``from fusion import train`` would then give the function). Names are
imported on first use (PEP 562), so ``import fusion`` does not load TensorFlow until a
function that needs it is called.
"""
from __future__ import annotations

from data_build.lazy_api import lazy_exports, package_version

#: Public name -> "module:attribute", loaded on first access.
_API = {
    "train_model": "fusion.train:train",
    "export_run": "fusion.export:export_run",
    "evaluate_model": "fusion.evaluate:evaluate",
    "load_predictor": "fusion.inference:load_predictor",
    "run_predictions": "fusion.predict:run_predictions",
    "RunConfig": "fusion.config:RunConfig",
    "preset": "fusion.config:preset",
    "Predictor": "fusion.inference:Predictor",
}

__all__ = ["__version__", *_API]


__version__ = package_version()
__getattr__, __dir__ = lazy_exports("fusion", _API, globals())
