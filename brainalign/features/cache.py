"""The on-disk feature cache.

Layout (under ``brainalign.config.cache_dir() / "features"``)::

    <model>/<revision>/<commit>/<settings-hash>/<dataset>/<story>-<words-hash>/
        L000.npy  L001.npy ...   one array (n_words x hidden) per layer, float32 or float16
        meta.json                written last: layers present, commit, metrics, settings

* ``<model>``: a hub id as ``org--name``, a local folder as ``<name>-<hash of its path>``.
* ``<settings-hash>``: hash of everything else that changes the numbers: context
  settings, word state (last/mean), model kind, compute dtype, package and cache-format
  versions. ``settings.json`` beside it spells them out.
* ``<words-hash>``: hash of the story's words, so an edited transcript is a new entry.
* ``<commit>``: the resolved commit hash (hub) or a fingerprint of the checkpoint's files
  (local folders), so a branch that moved, or a folder that was overwritten, is a new
  entry (and features already handed out keep reading the old one). When the commit
  cannot be resolved (offline, not in the hub cache) the newest entry of the revision
  is used.

Writes are atomic (temp file + ``os.replace``); ``meta.json`` is replaced last, so an
interrupted write leaves at most unreferenced layer files, never an entry that looks
complete. Layers are read lazily, one ``.npy`` per (story, layer), memory-mapped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import config
from .._io import atomic_save_npy, atomic_write_bytes
from .._version import __version__

__all__ = ["FeatureCache", "StoryEntry", "CACHE_FORMAT", "slug", "digest"]

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


def digest(obj: Any, n: int = 12) -> str:
    """Short stable hash of a JSON-able object."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def slug(name: str) -> str:
    """A file-system-safe name."""
    s = re.sub(r"[^A-Za-z0-9._=+-]+", "-", str(name).replace("/", "--")).strip("-.")
    return s or "_"


def model_key(model: str) -> str:
    p = Path(str(model)).expanduser()
    if p.exists():
        return f"{slug(p.name)}-{digest(str(p.resolve()), 8)}"
    return slug(model)


class StoryEntry:
    """The cached features of one story under one (model, revision, settings)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def meta(self) -> dict | None:
        f = self.path / "meta.json"
        if not f.is_file():
            return None
        try:
            return json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            log.warning("unreadable cache metadata %s; ignoring the entry", f)
            return None

    def has(self, layers: Sequence[int], commit: str | None = None, dtype: str | None = None) -> bool:
        """True when every layer in ``layers`` is cached (and for ``commit``, when known).

        With ``dtype="float32"``, layers stored in float16 do not count (a float16 request
        is happy with float32 layers)."""
        meta = self.meta
        if meta is None:
            return False
        if commit is not None and meta.get("commit") not in (None, commit):
            log.info("cache entry %s is for commit %s, not %s: stale", self.path, meta.get("commit"), commit)
            return False
        present = set(meta.get("layers", []))
        if dtype == "float32":
            stored = meta.get("dtypes", {})
            present = {p for p in present if stored.get(str(p), "float32") == "float32"}
        return all(int(layer) in present and self._layer_file(layer).is_file() for layer in layers)

    def _layer_file(self, layer: int) -> Path:
        return self.path / f"L{int(layer):03d}.npy"

    def load(self, layer: int, mmap: bool = True) -> np.ndarray:
        """The (n_words x hidden) array of ``layer`` (memory-mapped, read on access)."""
        return np.load(self._layer_file(layer), mmap_mode="r" if mmap else None, allow_pickle=False)

    def write(self, arrays: Mapping[int, np.ndarray], meta: Mapping[str, Any], dtype: str = "float32") -> None:
        """Store layers atomically, then record them in ``meta.json``.

        ``dtype="float16"`` halves the size; a layer whose values overflow float16 is
        kept in float32 (logged).
        """
        self.path.mkdir(parents=True, exist_ok=True)
        stored = {}
        for layer, arr in arrays.items():
            a = np.asarray(arr)
            if dtype == "float16":
                h = a.astype(np.float16)
                if np.all(np.isfinite(h)):
                    a = h
                else:
                    log.warning("layer %d of %s overflows float16; stored as float32", layer, self.path.name)
                    a = a.astype(np.float32)
            else:
                a = a.astype(np.float32)
            atomic_save_npy(self._layer_file(layer), np.ascontiguousarray(a))
            stored[int(layer)] = str(a.dtype)
        old = self.meta or {}
        new = dict(meta)
        if old.get("commit") == new.get("commit"):
            dtypes = {int(k): v for k, v in old.get("dtypes", {}).items()}
        else:
            dtypes = {}
        dtypes.update(stored)
        new["layers"] = sorted(dtypes)
        new["dtypes"] = {str(k): v for k, v in sorted(dtypes.items())}
        atomic_write_bytes(self.path / "meta.json", json.dumps(new, indent=1, sort_keys=True).encode())


class FeatureCache:
    """Feature cache rooted at ``root`` (default ``cache_dir()/features``)."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else config.cache_dir() / "features"

    def settings_dir(
        self, model: str, revision: str | None, settings: Mapping[str, Any], commit: str | None = None
    ) -> Path:
        full = dict(settings, package_version=__version__, cache_format=CACHE_FORMAT)
        rev = self.root / model_key(model) / slug(revision or "default")
        return rev / slug(commit or "unknown") / digest(full)

    def entry(
        self,
        model: str,
        revision: str | None,
        settings: Mapping[str, Any],
        dataset: str,
        story: str,
        words: Sequence[str],
        commit: str | None = None,
    ) -> StoryEntry:
        """The entry of one story. With ``commit=None`` (not resolvable), the newest
        complete entry of any commit of this revision, else one under ``unknown``."""
        tail = Path(slug(dataset)) / f"{slug(story)}-{digest(list(words))}"
        d = self.settings_dir(model, revision, settings, commit)
        if commit is None:
            found = [
                c / d.name / tail for c in d.parent.parent.glob("*") if (c / d.name / tail / "meta.json").is_file()
            ]
            if found:
                return StoryEntry(max(found, key=lambda p: (p / "meta.json").stat().st_mtime))
        return StoryEntry(d / tail)

    def record_settings(
        self, model: str, revision: str | None, settings: Mapping[str, Any], commit: str | None = None
    ) -> None:
        d = self.settings_dir(model, revision, settings, commit)
        f = d / "settings.json"
        if not f.is_file():
            d.mkdir(parents=True, exist_ok=True)
            full = dict(settings, model=str(model), revision=revision, commit=commit, package_version=__version__,
                        cache_format=CACHE_FORMAT)
            atomic_write_bytes(f, json.dumps(full, indent=1, sort_keys=True, default=str).encode())

    # -- housekeeping ---------------------------------------------------------------
    def info(self) -> list[dict]:
        """One row per (model, revision, settings): stories cached and bytes on disk."""
        rows = []
        if not self.root.is_dir():
            return rows
        for sdir in sorted(self.root.glob("*/*/*/*")):
            if not sdir.is_dir():
                continue
            settings = {}
            if (sdir / "settings.json").is_file():
                try:
                    settings = json.loads((sdir / "settings.json").read_text())
                except (OSError, json.JSONDecodeError):
                    pass
            stories = [m.parent for m in sdir.glob("*/*/meta.json")]
            size = sum(f.stat().st_size for f in sdir.rglob("*") if f.is_file())
            rows.append(
                {
                    "model": settings.get("model", sdir.parent.parent.parent.name),
                    "revision": settings.get("revision", sdir.parent.parent.name),
                    "commit": settings.get("commit", sdir.parent.name),
                    "settings": sdir.name,
                    "datasets": sorted({s.parent.name for s in stories}),
                    "stories": len(stories),
                    "bytes": size,
                    "path": str(sdir),
                }
            )
        return rows

    def clear(self, model: str | None = None, revision: str | None = None) -> int:
        """Delete cached features (all, one model's, or one revision's). Returns bytes freed."""
        if not self.root.is_dir():
            return 0
        if model is None and revision is not None:
            targets = [p for p in self.root.glob(f"*/{slug(revision)}") if p.is_dir()]
        elif model is None:
            targets = [self.root]
        else:
            mdirs = {self.root / model_key(model), self.root / slug(model)}
            targets = [m / slug(revision) if revision else m for m in mdirs]
            targets = [t for t in targets if t.is_dir()]
        freed = 0
        for t in targets:
            freed += sum(f.stat().st_size for f in t.rglob("*") if f.is_file())
            shutil.rmtree(t)
        return freed
