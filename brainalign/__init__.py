"""brainalign: how brain-like is a language model, layer by layer and checkpoint by
checkpoint of its training.

Submodules are imported on first use (``ba.datasets``, ``ba.features``...), so
``import brainalign`` stays fast and downloads nothing.
"""

from __future__ import annotations

import importlib

from ._version import __version__
from .errors import BrainalignError, DataNotFoundError, NotDownloadedError, ValidationError
from .stimulus import Responses, Space, Story, Word

_SUBMODULES = (
    "config",
    "datasets",
    "dynamics",
    "encoding",
    "features",
    "plotting",
    "rois",
    "surfaces",
    "sweep",
    "timing",
    "training",
    "transcripts",
)

__all__ = [
    "__version__",
    "BrainalignError",
    "DataNotFoundError",
    "NotDownloadedError",
    "ValidationError",
    "Responses",
    "Space",
    "Story",
    "Word",
    *_SUBMODULES,
]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'brainalign' has no attribute {name!r}")
