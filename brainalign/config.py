"""Where brainalign keeps things on disk.

* cache: ``$BRAINALIGN_CACHE`` or ``$XDG_CACHE_HOME/brainalign`` (default ``~/.cache/brainalign``):
  language-model features and other derived data that can be recomputed.
* data home: ``$BRAINALIGN_DATA`` or ``~/brainalign_data``: datasets a user downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "data_home"]


def cache_dir() -> Path:
    """Root of brainalign's caches (not created here)."""
    env = os.environ.get("BRAINALIGN_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "brainalign"


def data_home() -> Path:
    """Default folder for downloaded datasets (not created here)."""
    env = os.environ.get("BRAINALIGN_DATA")
    return Path(env).expanduser() if env else Path.home() / "brainalign_data"
