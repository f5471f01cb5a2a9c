"""The results store: one xarray Dataset as zarr, written region by region.

The rules that make a store safe to leave running for days:

* **A store says it is one.** A brainalign store is a folder holding
  ``.brainalign/layout.json``. It is created in a temporary folder beside its final path
  and renamed into place complete, so it exists whole or not at all. A folder without
  the marker is never deleted or written into, ``force`` or not.
* **One writer.** :meth:`ResultsStore.writer` takes an exclusive lock (``filelock``, an
  OS file lock on ``.<name>.lock`` beside the store) for the whole run; a second writer
  is refused at once with the first one's PID, host and start time. The kernel releases
  the lock of a process that died; its owner note is then taken over with a warning.
  Caveat: on network filesystems (NFS, Lustre, GPFS as SLURM clusters mount them) the
  lock is only as good as the filesystem's own locking; where it is node-local
  (``local_lock=`` NFS mounts, Lustre without ``flock``), start one ``brainalign run``
  per store.
* **Done means done.** Each task writes its own region (one checkpoint) and only *then*
  marks itself done by an atomic rename of a small JSON file under
  ``<store>/.brainalign/done/``. A region without a readable marker is redone; an
  empty or corrupt marker (a kill inside its write) counts as not done, with a warning.
  Each marker carries the hash of the settings that made the region, so a later run with
  incompatible settings is refused instead of mixing results.
* **Extending keeps everything.** Regions added to a store (checkpoints added to a
  config) are appended with zarr's own resize, which keeps the store's attributes; a
  journal makes an interrupted extension roll back on the next run.
* **Damage is named.** Reading a store checks its metadata files, the chunks of every
  done region and the decoding of every chunk, and names the file that is wrong.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .._io import atomic_write_text
from ..errors import ValidationError, os_error_message

log = logging.getLogger(__name__)

__all__ = ["ResultsStore", "IncompatibleStoreError", "StoreLockedError", "DamagedStoreError", "StoreWriteError",
           "atomic_write_text"]

_META = ".brainalign"
_JOURNAL = "extending.json"


class IncompatibleStoreError(ValidationError):
    """The store holds results made with other settings (use force=True to start over)."""


class StoreLockedError(ValidationError):
    """Another process is writing the store."""


class DamagedStoreError(ValidationError):
    """A file of the store cannot be read."""


class StoreWriteError(ValidationError):
    """The operating system refused a write (disk full, read-only, permissions)."""


def _zarr_kwargs() -> dict[str, Any]:
    # zarr's v2 format: a stable on-disk format for fixed-width strings
    return {"consolidated": False, "zarr_format": 2}


def _open_kwargs() -> dict[str, Any]:
    return {"consolidated": False}


@contextmanager
def _quiet():
    """Silence zarr's note that our marker folder is not part of the hierarchy."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy")
        yield


@contextmanager
def _os_errors(what: str, after: str = "") -> Iterator[None]:
    """Turn an OSError into a :class:`StoreWriteError` naming ``what`` (and what follows)."""
    try:
        yield
    except OSError as exc:
        raise StoreWriteError(os_error_message(exc, what) + (f"; {after}" if after else "")) from exc


def check_writable(folder: Path, what: str) -> None:
    """Raise a :class:`StoreWriteError` unless files can be created in ``folder`` (or, when
    it does not exist yet, in its nearest existing parent); creates nothing that stays."""
    existing = next((p for p in (folder, *folder.parents) if p.is_dir()), Path("."))
    with _os_errors(f"cannot write {what} {folder}"):
        with tempfile.TemporaryFile(dir=existing, prefix=".brainalign-write-check"):
            pass


class ResultsStore:
    """A zarr store of sweep results with per-region done markers.

    Parameters
    ----------
    path : path of the ``.zarr`` folder.
    region_dim : the dimension along which tasks own regions (default ``checkpoint``).
    """

    def __init__(self, path: str | os.PathLike, region_dim: str = "checkpoint") -> None:
        self.path = Path(path)
        self.region_dim = region_dim

    # -- identity ----------------------------------------------------------------
    @property
    def _meta(self) -> Path:
        return self.path / _META

    def exists(self) -> bool:
        """True when ``path`` is a (complete) brainalign results store."""
        return (self._meta / "layout.json").is_file()

    def layout(self) -> dict:
        return self._read_json(self._meta / "layout.json")

    def _read_json(self, p: Path) -> Any:
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise DamagedStoreError(f"results store {self.path}: {p.relative_to(self.path)} is not valid JSON ({exc})") from None

    def check_target(self) -> None:
        """Raise unless a writer may write here: no foreign folder, and writable.

        Raises
        ------
        ValidationError
            ``path`` is a file, or a non-empty folder that is not a brainalign store.
        StoreWriteError
            The folder (or the store) cannot be written.
        """
        self._refuse_foreign()
        check_writable(self.path.parent, "the results store's folder")
        if self.exists():
            check_writable(self._meta, "results store")

    def locked_by(self) -> str | None:
        """Who holds the writer lock now (None when nobody does); takes nothing."""
        if not self._owner_file.is_file():
            return None
        from filelock import FileLock, Timeout

        try:
            with FileLock(str(self._lock_file), timeout=0):
                return None
        except Timeout:
            return self._owner()

    def _refuse_foreign(self) -> None:
        """Refuse a path that holds something other than a brainalign store."""
        p = self.path
        if p.exists() and not p.is_dir():
            raise ValidationError(f"output.store: {p} is a file, not a results store; choose another path")
        if p.is_dir() and not self.exists() and any(p.iterdir()):
            raise ValidationError(
                f"output.store: {p} exists and is not a brainalign results store (it has no {_META}/layout.json); "
                "brainalign never deletes or writes into such a folder, with --force or not: choose another path, "
                "or move that folder away yourself"
            )

    # -- the writer lock -----------------------------------------------------------
    @property
    def _lock_file(self) -> Path:
        real = self.path.resolve()  # one lock per store, whatever path (or symlink) names it
        return real.parent / f".{real.name}.lock"

    @property
    def _owner_file(self) -> Path:
        return self._lock_file.with_name(self._lock_file.name + ".json")

    @contextmanager
    def writer(self) -> Iterator["ResultsStore"]:
        """Hold the store's exclusive writer lock; clean what a killed writer left.

        Raises
        ------
        StoreLockedError
            At once, when another process holds the lock.
        StoreWriteError
            When the store's folder cannot be written.
        """
        from filelock import FileLock, Timeout

        self.check_target()
        with _os_errors(f"cannot write the results store's folder {self.path.parent}"):
            self._lock_file.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self._lock_file), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise StoreLockedError(f"store {self.path} is being written by {self._owner()}; "
                                   "wait for it to finish, or write to another store") from None
        try:
            if self._owner_file.is_file():
                warnings.warn(f"results store {self.path}: taking over the lock left by {self._owner()}, "
                              "which is no longer running", stacklevel=3)
            me = {"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.now(timezone.utc).isoformat()}
            self._owner_file.write_text(json.dumps(me))  # read by refused writers only; they retry
            self._clean()
            yield self
        finally:
            self._owner_file.unlink(missing_ok=True)
            lock.release()

    def _owner(self) -> str:
        for _ in range(20):  # the owner writes its note right after taking the lock
            try:
                o = json.loads(self._owner_file.read_text())
                return f"PID {o['pid']} on {o['host']} since {o['since']}"
            except (OSError, ValueError, KeyError, TypeError):
                import time

                time.sleep(0.05)
        return "another process (its owner note is unreadable)"

    def _clean(self) -> None:
        """Remove what a killed writer left: temp folders, temp files, corrupt markers,
        and roll back an interrupted extension."""
        if self.path.parent.is_dir():
            for p in self.path.parent.iterdir():
                if self._temp_name.fullmatch(p.name) and p.is_dir():  # a store being created or replaced
                    shutil.rmtree(p, ignore_errors=True)
        if not self.exists():
            return
        for p in self.path.rglob("*.partial"):  # zarr's own temp files
            p.unlink(missing_ok=True)
        for p in self._meta.rglob(".*"):  # atomic_write temp files (markers)
            if p.is_file():
                p.unlink(missing_ok=True)
        for p in (self._meta / "done").glob("*.json"):
            if self._marker_info(p) is None:
                p.unlink(missing_ok=True)
        if (self._meta / _JOURNAL).is_file():
            self._roll_back()

    @property
    def _temp_name(self) -> "re.Pattern[str]":
        """Names of this store's own temporary folders (and nothing else's)."""
        return re.compile(rf"\.{re.escape(self.path.name)}\.brainalign-(new|old)-[0-9a-f]{{32}}")

    def _replace_with(self, write) -> None:
        """Create the store whole: ``write(tmp)`` fills a temporary folder beside it,
        which then replaces the store (or the empty folder) by renames."""
        tmp = self.path.parent / f".{self.path.name}.brainalign-new-{uuid.uuid4().hex}"
        try:
            write(tmp)
            if self.path.exists():
                old = self.path.parent / f".{self.path.name}.brainalign-old-{uuid.uuid4().hex}"
                os.replace(self.path, old)
                os.replace(tmp, self.path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, self.path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    # -- layout ------------------------------------------------------------------
    def create(
        self,
        coords: dict[str, Any],
        variables: dict[str, tuple[tuple[str, ...], str]],
        attrs: dict[str, Any] | None = None,
        layout_key: dict[str, Any] | None = None,
        force: bool = False,
        data: dict[str, tuple[tuple[str, ...], np.ndarray]] | None = None,
    ) -> bool:
        """Create the empty store, or check an existing one has the same layout.

        ``coords`` maps names to arrays (dimension coordinates) or ``(dims, values)``;
        ``variables`` maps names to ``(dims, dtype)`` (filled region by region);
        ``data`` maps names to ``(dims, values)`` known at creation and owned by no
        region (e.g. noise ceilings). ``layout_key`` is what must match for a rerun to
        reuse the store (settings hash, dims other than the region dim).

        An existing store with the same layout key is reused; regions (e.g. checkpoints)
        it lacks are appended to it as empty regions, so a sweep can be extended, and its
        attributes are updated with ``attrs``. ``force`` re-creates a brainalign store
        (never anything else). Returns True when a new store was created.
        """
        import dask.array as da

        self._refuse_foreign()
        key = json.loads(json.dumps(layout_key or {}, default=_jsonable))
        ds = xr.Dataset(coords={k: (v if isinstance(v, tuple) else np.asarray(v)) for k, v in coords.items()})
        # room for longer labels, so checkpoints can be appended later
        labels = ds[self.region_dim].values
        if labels.dtype.kind == "U":
            ds = ds.assign_coords({self.region_dim: labels.astype(f"<U{max(64, labels.dtype.itemsize // 4)}")})
        for name, (dims, dtype) in variables.items():
            shape = tuple(ds.sizes[d] for d in dims)
            chunks = tuple(1 if d == self.region_dim else ds.sizes[d] for d in dims)
            fill = False if np.dtype(dtype) == bool else np.nan
            ds[name] = (dims, da.full(shape, fill, chunks=chunks, dtype=dtype))
        if self.exists() and not force:
            old = self.layout()
            if old != key:
                diff = sorted(k for k in set(old) | set(key) if old.get(k) != key.get(k))
                raise IncompatibleStoreError(
                    f"results store {self.path} was made with other settings ({', '.join(diff)} differ); "
                    "use another output store, or --force to discard it and start over"
                )
            with _os_errors(f"cannot extend results store {self.path}"):
                self._append_regions(ds)
                self.set_attrs(**{k: v for k, v in (attrs or {}).items() if k != "created"})
            return False
        for name, (dims, values) in (data or {}).items():
            ds[name] = (dims, np.asarray(values))
        ds.attrs.update({k: _encode_attr(v) for k, v in (attrs or {}).items()})
        def write(tmp: Path) -> None:
            with _quiet():
                ds.to_zarr(tmp, mode="w", compute=False, **_zarr_kwargs())
            atomic_write_text(tmp / _META / "layout.json", json.dumps(key, indent=1, sort_keys=True))

        with _os_errors(f"cannot create results store {self.path}", "nothing was created"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._replace_with(write)
        return True

    def rehash(self, old: str, new: str) -> None:
        """Re-key the layout and the done markers made with settings hash ``old`` to ``new``
        (for a change of the hash's formula, not of the settings)."""
        layout = self.layout()
        for p in sorted((self._meta / "done").glob("[!.]*.json")):
            info = self._marker_info(p)
            if info is not None and info["hash"] == old:
                atomic_write_text(p, json.dumps({**info, "hash": new}, default=_jsonable, indent=1))
        if layout.get("hash") == old:
            atomic_write_text(self._meta / "layout.json", json.dumps({**layout, "hash": new}, indent=1, sort_keys=True))

    def _region_arrays(self, group) -> list[tuple[str, Any, int]]:
        """(name, zarr array, axis of the region dim) of every array along the region dim."""
        with _quiet():
            arrays = list(group.arrays())
        dims = {name: list(arr.attrs.get("_ARRAY_DIMENSIONS", [])) for name, arr in arrays}
        return [(name, arr, dims[name].index(self.region_dim)) for name, arr in arrays if self.region_dim in dims[name]]

    def _append_regions(self, ds: xr.Dataset) -> None:
        """Append the regions of skeleton ``ds`` that the store does not have yet.

        Resizes every array along the region dim in place (attributes untouched), the
        region labels last; a journal written first lets :meth:`_roll_back` undo an
        extension that was killed half-way.
        """
        have = self._open_dataset()[self.region_dim].values.tolist()
        new = [i for i, label in enumerate(ds[self.region_dim].values.tolist()) if label not in set(have)]
        if not new:
            return
        group = _group(self.path, "r+")
        width = group[self.region_dim].dtype.itemsize // 4
        too_long = [str(ds[self.region_dim].values[i]) for i in new if len(str(ds[self.region_dim].values[i])) > width]
        if too_long:
            raise ValidationError(f"results store {self.path}: {self.region_dim} labels {too_long} are longer than the "
                                  f"{width} characters this store has room for; write them to a new store")
        n_old, n_new = len(have), len(have) + len(new)
        atomic_write_text(self._meta / _JOURNAL, json.dumps({"n": n_old}))
        part = ds.isel({self.region_dim: new})
        arrays = sorted(self._region_arrays(group), key=lambda t: t[0] == self.region_dim)  # labels last
        for name, arr, axis in arrays:
            shape = list(arr.shape)
            shape[axis] = n_new
            arr.resize(tuple(shape))
            if name in part.coords:
                arr[n_old:n_new] = part[name].values
        (self._meta / _JOURNAL).unlink()
        log.info("results store %s: added %d %s regions", self.path, len(new), self.region_dim)

    def _roll_back(self) -> None:
        """Undo an extension that was killed half-way (every region array back to its old length)."""
        n = int(self._read_json(self._meta / _JOURNAL)["n"])
        group = _group(self.path, "r+")
        for _, arr, axis in self._region_arrays(group):
            shape = list(arr.shape)
            shape[axis] = n
            arr.resize(tuple(shape))
        (self._meta / _JOURNAL).unlink()
        warnings.warn(f"results store {self.path}: rolled back an extension that was interrupted", stacklevel=2)

    # -- regions -----------------------------------------------------------------
    def _marker(self, label: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(label))
        return self._meta / "done" / f"{safe}.json"

    def _marker_info(self, p: Path) -> dict | None:
        """A marker's content, or None (with a warning) when it is empty or corrupt."""
        try:
            info = json.loads(p.read_text(encoding="utf-8"))
            if isinstance(info, dict) and "label" in info and "hash" in info:
                return info
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            pass
        warnings.warn(f"results store {self.path}: done marker {p.name} is empty or corrupt; "
                      "that region counts as not done and will be redone", stacklevel=3)
        return None

    def done(self, label: str, settings_hash: str | None = None) -> bool:
        """True when region ``label`` was completely written (with these settings)."""
        info = self._marker_info(self._marker(label))
        if info is None:
            return False
        if settings_hash is not None and info.get("hash") != settings_hash:
            raise IncompatibleStoreError(
                f"results store {self.path}: region {label!r} was made with other settings "
                f"(hash {info.get('hash')} != {settings_hash}); use --force to redo it"
            )
        return True

    def done_info(self) -> dict[str, dict]:
        """The markers of the done regions, by label (temp files and corrupt markers ignored)."""
        d = self._meta / "done"
        if not d.is_dir():
            return {}
        infos = (self._marker_info(p) for p in sorted(d.glob("[!.]*.json")))
        return {info["label"]: info for info in infos if info is not None}

    def undo(self, label: str) -> None:
        """Mark region ``label`` not done (its values are rewritten by the next run)."""
        self._marker(label).unlink(missing_ok=True)

    def write_region(self, label: str, region: xr.Dataset, settings_hash: str, provenance: dict | None = None) -> None:
        """Write one region's values, then mark it done (in that order)."""
        stored = self._open_dataset()
        labels = stored[self.region_dim].values.tolist()
        if label not in labels:
            raise ValidationError(f"results store {self.path}: no {self.region_dim} {label!r}")
        i = labels.index(label)
        # only the variables regions own (those along region_dim in the store)
        owned = [v for v in region.data_vars if v in stored and self.region_dim in stored[v].dims]
        unknown = sorted(set(region.data_vars) - set(stored.data_vars))
        if unknown:
            raise ValidationError(f"results store {self.path}: no variables {unknown}")
        region = region[owned]
        region = region.expand_dims(self.region_dim) if self.region_dim not in region.dims else region
        region = region.drop_vars(list(region.coords), errors="ignore")
        with _os_errors(f"cannot write results store {self.path}",
                        f"{self.region_dim} {label!r} is not marked done and will be redone when you rerun"):
            self.undo(label)
            with _quiet():
                region.to_zarr(self.path, region={self.region_dim: slice(i, i + 1)}, mode="r+", write_empty_chunks=True,
                               **_zarr_kwargs())
            info = {"label": label, "index": i, "hash": settings_hash, "all_chunks": True, **(provenance or {})}
            atomic_write_text(self._marker(label), json.dumps(info, default=_jsonable, indent=1))

    # -- reading -------------------------------------------------------------------
    def _check_readable(self) -> None:
        if not self.path.exists():
            raise ValidationError(f"results store {self.path} does not exist")
        if not self.path.is_dir() or not self.exists():
            raise ValidationError(f"{self.path} is not a brainalign results store (it has no {_META}/layout.json)")
        if (self._meta / _JOURNAL).is_file():
            raise DamagedStoreError(f"results store {self.path} is having new regions added by a running `brainalign run`, "
                                    "or was interrupted while they were; in that case run `brainalign run` on its config "
                                    "again to repair it")
        for p in sorted(self.path.rglob(".z*")):
            if p.name not in _ZARR_METADATA:  # e.g. zarr's own temp files, ``.zattrs.<hex>.partial``
                continue
            try:
                meta = self._read_json(p)
            except FileNotFoundError:  # renamed while we looked
                continue
            if p.name == ".zarray" and _holds_objects(meta):
                raise DamagedStoreError(f"results store {self.path}: {p.parent.name} holds Python objects "
                                        f"({p.relative_to(self.path)}); brainalign never unpickles a store")

    def _open_dataset(self) -> xr.Dataset:
        try:
            with _quiet():
                return xr.open_zarr(self.path, **_open_kwargs())
        except Exception as exc:  # noqa: BLE001 - zarr/xarray raise many kinds
            raise DamagedStoreError(f"results store {self.path} cannot be opened: {type(exc).__name__}: {exc}") from exc

    def open(self) -> xr.Dataset:
        """The store, lazily (checked: metadata readable)."""
        self._check_readable()
        return self._open_dataset()

    def missing_chunks(self, done: dict[str, dict] | None = None, opened: xr.Dataset | None = None) -> dict[str, list[str]]:
        """Chunk files of done regions that are missing, by label (a damaged store).

        Every chunk of a region is written when it is marked done (even all-NaN ones;
        its marker says ``all_chunks``), so a missing chunk file means the store was
        damaged afterwards. Regions marked by older versions, which skipped chunks equal
        to the fill value, are not checked. ``done`` and ``opened`` save re-reading the
        markers and re-opening the store.
        """
        done = self.done_info() if done is None else done
        opened = self._open_dataset() if opened is None else opened
        stored = opened[self.region_dim].values.tolist()
        labels = [label for label, info in done.items() if info.get("all_chunks") and label in stored]
        out: dict[str, list[str]] = {}
        for name, arr, axis in self._region_arrays(_group(self.path, "r")) if labels else []:
            if name not in opened.data_vars:  # coordinates are written whole at creation
                continue
            sep = json.loads((self.path / name / ".zarray").read_text()).get("dimension_separator", ".")
            grid = [range(-(-s // c)) for s, c in zip(arr.shape, arr.chunks)]
            for label in labels:
                grid[axis] = [stored.index(label)]
                for idx in np.ndindex(*[len(g) for g in grid]):
                    key = sep.join(str(g[k]) for g, k in zip(grid, idx))
                    if not (self.path / name / key).is_file():
                        out.setdefault(label, []).append(f"{name}/{key}")
        return out

    def load(self) -> xr.Dataset:
        """The whole store in memory, with JSON attrs decoded and a ``done`` mask.

        Raises
        ------
        DamagedStoreError
            Naming the file when a metadata file, a chunk or a done region's chunk is
            missing or cannot be decoded.
        """
        ds = self.open()
        done = self.done_info()
        missing = self.missing_chunks(done, ds)
        if missing:
            label, files = next(iter(missing.items()))
            raise DamagedStoreError(
                f"results store {self.path} is damaged: chunk file(s) {', '.join(files[:3])} of done {self.region_dim} "
                f"{label!r} are missing; remove {self._marker(label).relative_to(self.path.parent)} and rerun to redo it"
            )
        for name, var in ds.variables.items():
            try:
                var.load()
            except Exception as exc:  # noqa: BLE001 - blosc/zarr decoding errors
                raise DamagedStoreError(
                    f"results store {self.path} is damaged: variable {name!r} cannot be read "
                    f"({type(exc).__name__}: {exc}); {self._bad_chunk(ds, name)}"
                ) from exc
        ds.attrs = {k: _maybe_json(v) for k, v in ds.attrs.items()}
        ds.coords["done"] = (self.region_dim, np.array([str(c) in done for c in ds[self.region_dim].values]))
        return ds

    def _bad_chunk(self, ds: xr.Dataset, name: str) -> str:
        """Which region of ``name`` fails to decode, and what to do about it."""
        if self.region_dim not in ds[name].dims:
            return f"the files under {self.path / name} are damaged"
        for label in ds[self.region_dim].values.tolist():
            try:
                ds[name].sel({self.region_dim: label}).load()
            except Exception:  # noqa: BLE001
                return (f"its chunk of {self.region_dim} {label!r} is damaged: remove "
                        f"{self._marker(label).relative_to(self.path.parent)} and rerun to redo it")
        return f"the files under {self.path / name} are damaged"

    def set_attrs(self, **attrs: Any) -> None:
        """Add or replace global attributes (JSON-encoded when not scalar)."""

        group = _group(self.path, "r+")
        group.attrs.update({k: _encode_attr(v) for k, v in attrs.items()})


_ZARR_METADATA = (".zgroup", ".zattrs", ".zarray", ".zmetadata")


def _holds_objects(meta: dict) -> bool:
    """True for a zarr v2 array of Python objects (read by unpickling, or a codec that may)."""
    codecs = [c for c in [meta.get("compressor"), *(meta.get("filters") or [])] if isinstance(c, dict)]
    return "O" in str(meta.get("dtype", "")) or any(c.get("id") in ("pickle", "json", "msgpack", "msgpack2", "vlen-utf8",
                                                                    "vlen-bytes", "vlen-array") for c in codecs)


def _group(path: Path, mode: str):
    """The store's root zarr group (zarr-python's own API, for in-place changes)."""
    import zarr

    return zarr.open_group(str(path), mode=mode, zarr_format=_zarr_kwargs()["zarr_format"])


def _encode_attr(v: Any) -> Any:
    return json.dumps(v, default=_jsonable) if isinstance(v, (dict, list)) else v


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _maybe_json(v: Any) -> Any:
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v
