"""kaseg: compact, fast semantic segmentation by knowledge distillation.

Implements He et al., "Knowledge Adaptation for Efficient Semantic Segmentation" (CVPR 2019).
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

from .core.errors import KasegError

__version__ = "0.1.0"
__all__ = ["KasegError", "__version__"]

# the modules of release 0.1.0, flat in kaseg/, and where they live now: importing an old path
# still works for one release, with a DeprecationWarning naming the new one (kaseg.compare and
# kaseg.presets are subpackages now that re-export what those modules offered)
MOVED = {
    "errors": "core.errors",
    "config": "core.config",
    "files": "core.files",
    "distributed": "core.distributed",
    "runtime": "core.runtime",
    "tensors": "core.tensors",
    "labels": "core.labels",
    "stats": "core.stats",
    "specs": "nets.specs",
    "external": "nets.external",
    "models": "nets.models",
    "checkpoint": "nets.checkpoint",
    "export": "nets.export",
    "cost": "nets.cost",
    "inference": "nets.inference",
    "method": "losses.method",
    "gram": "losses.gram",
    "kd_losses": "losses.registry",
    "contrastive_losses": "losses.contrastive",
    "metrics": "engine.metrics",
    "evaluate": "engine.evaluate",
    "train": "engine.train",
    "tasks": "engine.tasks",
    "runs": "engine.runs",
    "supervised": "engine.supervised",
    "stages": "engine.stages",
    "experiment": "engine.experiment",
    "bench": "engine.bench",
    "predict": "engine.predict",
    "visualize": "engine.visualize",
    "arms": "compare.arms",
    "comparison": "compare.runner",
    "compare_report": "compare.report",
    "cluster": "compare.cluster",
    "demo": "presets.demo",
    "fewlabels": "presets.limited_labels",
    "study": "presets.study",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``kaseg.<old>`` as the module now at ``kaseg.<new>`` (the same module object, so
    a patch through either name is seen through both)."""

    def find_spec(self, fullname, path=None, target=None):
        old = fullname[len(__name__) + 1:] if fullname.startswith(__name__ + ".") else None
        if old in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        new = f"{__name__}.{MOVED[spec.name[len(__name__) + 1:]]}"
        warnings.warn(f"{spec.name} moved to {new}; the old path goes in the next release",
                      DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        self._spec = module.__spec__  # the import system sets the alias's spec on it: undone
        return module

    def exec_module(self, module):
        module.__spec__ = self._spec


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())
