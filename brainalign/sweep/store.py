"""The results store: one xarray Dataset as zarr, written region by region.

The store is created once with its full coordinates and empty (NaN) variables. Each
task writes its own region (one checkpoint) and only *then* marks itself done by an
atomic rename of a small JSON file under ``<store>/.brainalign/done/``. A region without
its marker is never taken as done: a run killed mid-write redoes that region. Each
marker carries the hash of the settings that made the region, so a later run with
incompatible settings is refused instead of mixing results.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .._io import atomic_write_text
from ..errors import ValidationError

log = logging.getLogger(__name__)

__all__ = ["ResultsStore", "IncompatibleStoreError", "atomic_write_text"]

_META = ".brainalign"


class IncompatibleStoreError(ValidationError):
    """The store holds results made with other settings (use force=True to start over)."""


def _zarr_kwargs() -> dict[str, Any]:
    import zarr

    kw: dict[str, Any] = {"consolidated": False}
    if int(zarr.__version__.split(".")[0]) >= 3:
        kw["zarr_format"] = 2  # stable on-disk format for fixed-width strings
    return kw


def _open_kwargs() -> dict[str, Any]:
    return {"consolidated": False}


@contextmanager
def _quiet():
    """Silence zarr's note that our marker folder is not part of the hierarchy."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy")
        yield


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

    # -- layout ------------------------------------------------------------------
    @property
    def _meta(self) -> Path:
        return self.path / _META

    def exists(self) -> bool:
        return (self._meta / "layout.json").is_file()

    def layout(self) -> dict:
        return json.loads((self._meta / "layout.json").read_text())

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
        it lacks are appended to it as empty regions, so a sweep can be extended.

        Returns True when a new store was created.
        """
        import dask.array as da

        key = json.loads(json.dumps(layout_key or {}, default=_jsonable))
        ds = xr.Dataset(coords={k: (v if isinstance(v, tuple) else np.asarray(v)) for k, v in coords.items()})
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
            self._append_regions(ds)
            return False
        if self.path.exists():
            shutil.rmtree(self.path)
        for name, (dims, values) in (data or {}).items():
            ds[name] = (dims, np.asarray(values))
        ds.attrs.update({k: json.dumps(v, default=_jsonable) if isinstance(v, (dict, list)) else v for k, v in (attrs or {}).items()})
        ds.to_zarr(self.path, mode="w", compute=False, **_zarr_kwargs())
        atomic_write_text(self._meta / "layout.json", json.dumps(key, indent=1, sort_keys=True))
        return True

    def _append_regions(self, ds: xr.Dataset) -> None:
        """Append the regions of skeleton ``ds`` that the store does not have yet."""
        have = set(self.open()[self.region_dim].values.tolist())
        new = [i for i, label in enumerate(ds[self.region_dim].values.tolist()) if label not in have]
        if not new:
            return
        part = ds.isel({self.region_dim: new})
        part = part[[v for v in part.data_vars if self.region_dim in part[v].dims]]
        part = part.drop_vars([c for c in part.coords if self.region_dim not in part[c].dims])
        with _quiet():
            part.to_zarr(self.path, append_dim=self.region_dim, compute=False, **_zarr_kwargs())
        log.info("results store %s: added %d %s regions", self.path, len(new), self.region_dim)

    # -- regions -----------------------------------------------------------------
    def _marker(self, label: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(label))
        return self._meta / "done" / f"{safe}.json"

    def done(self, label: str, settings_hash: str | None = None) -> bool:
        """True when region ``label`` was completely written (with these settings)."""
        m = self._marker(label)
        if not m.is_file():
            return False
        info = json.loads(m.read_text())
        if settings_hash is not None and info.get("hash") != settings_hash:
            raise IncompatibleStoreError(
                f"results store {self.path}: region {label!r} was made with other settings "
                f"(hash {info.get('hash')} != {settings_hash}); use --force to redo it"
            )
        return True

    def done_info(self) -> dict[str, dict]:
        d = self._meta / "done"
        if not d.is_dir():
            return {}
        infos = (json.loads(p.read_text()) for p in sorted(d.glob("*.json")))
        return {info["label"]: info for info in infos}

    def write_region(self, label: str, region: xr.Dataset, settings_hash: str, provenance: dict | None = None) -> None:
        """Write one region's values, then mark it done (in that order)."""
        stored = self.open()
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
        self._marker(label).unlink(missing_ok=True)
        with _quiet():
            region.to_zarr(self.path, region={self.region_dim: slice(i, i + 1)}, mode="r+", **_zarr_kwargs())
        info = {"label": label, "index": i, "hash": settings_hash, **(provenance or {})}
        atomic_write_text(self._marker(label), json.dumps(info, default=_jsonable, indent=1))

    def open(self) -> xr.Dataset:
        if not self.path.exists():
            raise ValidationError(f"results store {self.path} does not exist")
        with _quiet():
            return xr.open_zarr(self.path, **_open_kwargs())

    def load(self) -> xr.Dataset:
        """The whole store in memory, with JSON attrs decoded and a ``done`` mask."""
        with _quiet():
            ds = self.open().load()
        ds.attrs = {k: _maybe_json(v) for k, v in ds.attrs.items()}
        done = self.done_info()
        ds.coords["done"] = (self.region_dim, np.array([str(c) in done for c in ds[self.region_dim].values]))
        return ds

    def set_attrs(self, **attrs: Any) -> None:
        """Add or replace global attributes (JSON-encoded when not scalar)."""
        import zarr

        group = zarr.open_group(str(self.path), mode="r+")
        group.attrs.update({k: json.dumps(v, default=_jsonable) if isinstance(v, (dict, list)) else v for k, v in attrs.items()})


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
