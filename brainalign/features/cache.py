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
  (local folders, :func:`path_fingerprint`), so a branch that moved, or a folder that was
  overwritten, is a new entry (and features already handed out keep reading the old
  one). When the commit cannot be resolved (offline, not in the hub cache) the newest
  entry of the revision is used.
* a tokenizer given by path enters ``<settings-hash>`` through the same content-sensitive
  :func:`path_fingerprint` of its files, so an edited ``tokenizer.json`` is a new entry.

Local files are keyed by name, size, mtime, inode number and inode change time
(``st_ctime_ns``, which no call can set back: every write, rename, copy or ``utime``
moves it to now), and files under :data:`HASH_MAX_BYTES` (configs, tokenizers) also by a blake2b
hash of their bytes. Weights replaced with their size and mtime kept (``cp -p``,
``rsync -a``, ``tar x``) are therefore a new entry, and keying a multi-GB checkpoint
costs a few ``stat`` calls, never a read of its weights.

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

__all__ = ["FeatureCache", "StoryEntry", "CACHE_FORMAT", "HASH_MAX_BYTES", "slug", "digest", "path_fingerprint",
           "tokenizer_key"]

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


#: local files smaller than this are keyed by a hash of their bytes as well as their
#: stat fields; larger ones (weights) by their stat fields only
HASH_MAX_BYTES = 64 * 2**20

#: files ``save_pretrained`` of a tokenizer writes that hold a tokenizer (one is enough
#: to say a folder has one)
TOKENIZER_CORE_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "merges.txt",
    "spiece.model", "tokenizer.model", "sentencepiece.bpe.model",
)
#: every tokenizer file beside a model (what ``AutoTokenizer.from_pretrained`` reads)
TOKENIZER_FILES = TOKENIZER_CORE_FILES + ("special_tokens_map.json", "added_tokens.json")

# (path, size, mtime, inode, ctime) -> content hash: a file is read once per process
# while it stays unchanged
_content_hashes: dict[tuple, str] = {}


def _content_hash(path: Path, stat_key: tuple) -> str:
    key = (str(path),) + stat_key
    hit = _content_hashes.get(key)
    if hit is None:
        h = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        hit = _content_hashes[key] = h.hexdigest()
    return hit


def _file_key(path: Path) -> str:
    st = path.stat()
    stat_key = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    key = f"{path.name}:" + ":".join(str(v) for v in stat_key)
    if st.st_size < HASH_MAX_BYTES:
        key += ":" + _content_hash(path, stat_key)
    return key


def path_fingerprint(path: str | os.PathLike, names: Sequence[str] | None = None) -> str:
    """A short key of a local file, or of the files directly in a folder, that changes with their content.

    Each file is keyed by its name, size, mtime, inode number and inode change time
    (``st_ctime_ns``: no call can set it back; every write, rename, copy or
    ``os.utime`` moves it to now), and, when smaller than :data:`HASH_MAX_BYTES`, by a blake2b
    hash of its bytes. Symlinks are followed (a hub snapshot links to its blobs).

    Parameters
    ----------
    path : path
        A file, or a folder (its files, not its sub-folders).
    names : sequence of str, optional
        Only these file names of a folder (looked up directly, the folder is not listed).

    Returns
    -------
    str
        16 hex digits; ``"missing"`` when ``path`` does not exist.
    """
    p = Path(path).expanduser()
    if p.is_file():
        keys = [_file_key(p)]
    elif p.is_dir():
        candidates = p.iterdir() if names is None else (p / n for n in names)
        files = sorted(f for f in candidates if f.is_file())
        keys = [_file_key(f) for f in files]
    else:
        return "missing"
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def tokenizer_key(tokenizer: Any) -> str | None:
    """What identifies a tokenizer in the cache key.

    ``None`` (the model's own tokenizer, covered by the checkpoint's fingerprint) stays
    ``None``; a path is its name plus :func:`path_fingerprint` of its files; a hub id is
    its name; a tokenizer object is its ``name_or_path`` plus a hash of its full
    serialised state (fast tokenizers), so two different in-memory tokenizers never
    share features.
    """
    if tokenizer is None:
        return None
    if isinstance(tokenizer, (str, os.PathLike)):
        return _tokenizer_path_key(str(tokenizer))
    name = str(getattr(tokenizer, "name_or_path", "") or "")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = backend.to_str() + json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str)
        return f"{name}#{hashlib.blake2b(state.encode(), digest_size=16).hexdigest()}"
    return _tokenizer_path_key(name) if name else type(tokenizer).__name__


def _tokenizer_path_key(name: str) -> str:
    if name.strip() and Path(name).expanduser().exists():
        return f"{name}#{path_fingerprint(name)}"
    return name


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
