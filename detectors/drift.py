"""River's ADWIN drift detector, imported without River's example datasets.

``river.drift`` imports its ``datasets`` module on import, which imports River's dataset
loaders, and through them scikit-learn and pandas: 0.7-0.8 s of every worker's and replay's
start (``python -X importtime -c "import riskstream.streams.driver"``: 2.0 s, 1.3 s without),
for data the engine never reads. So that one module is stood in for by a placeholder that
imports the real one the first time anything asks for it: nothing changes for code that does
use River's drift datasets, in this process or another.
"""

from __future__ import annotations

import importlib
import sys
import types

_DATASETS = "river.drift.datasets"


class _ImportedOnUse(types.ModuleType):
    def __getattr__(self, name: str):
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        real = importlib.import_module(self.__name__)
        parent = sys.modules.get(self.__name__.rpartition(".")[0])
        if parent is not None:
            setattr(parent, "datasets", real)
        return getattr(real, name)


if "river.drift" not in sys.modules:
    sys.modules.setdefault(_DATASETS, _ImportedOnUse(_DATASETS))

from river.drift import ADWIN  # noqa: E402  (after the placeholder, on purpose)

__all__ = ["ADWIN"]
