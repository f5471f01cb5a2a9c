"""fsaverage meshes, sulcal depth, the medial wall, and resampling between fsaverage levels.

The fsaverage5 meshes (pial, white, inflated, sphere and a flat patch) and their sulcal
depth ship inside nilearn and are read from there with nibabel: nothing downloads.
Other levels (fsaverage3/4/6/7) are read from nilearn's data home when a user fetched
them once (``nilearn.datasets.fetch_surf_fsaverage("fsaverage6")``); otherwise a
:class:`~brainalign.errors.DataNotFoundError` says how to get them.

The meshes are nested: the first ``10242`` vertices of each fsaverage6 hemisphere are
the fsaverage5 vertices, in the same order (icosahedral subdivision keeps the old
vertices first). So fsaverage6 -> fsaverage5 is a selection (:func:`resample`), exact.
Going up (fsaverage5 -> fsaverage6) copies, for each fine vertex, the value of the
nearest coarse vertex on the sphere; it needs the fine sphere.

Medial wall
-----------
nilearn's fsaverage5 flat patch is cut along the medial wall: the vertices of the medial
wall belong to no triangle of the flat mesh. :func:`medial_wall` returns exactly those
vertices (777 left, 705 right on fsaverage5; FreeSurfer's ``?h.cortex.label`` leaves out
about 880 per hemisphere, so this mask is a slightly smaller medial wall). For a
finer level the coarse mask is carried up by nearest neighbour on the sphere.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import DataNotFoundError, ValidationError
from ..stimulus import FSAVERAGE_SIZES, Space

__all__ = [
    "Mesh",
    "MESH_KINDS",
    "load_mesh",
    "sulcal_depth",
    "medial_wall",
    "resample",
    "surface_space_name",
    "space_of_size",
    "nilearn_data_dirs",
    "nilearn_package_data",
    "clear_caches",
]

log = logging.getLogger(__name__)

#: mesh kinds and the file prefix nilearn uses for them
MESH_KINDS = {
    "pial": "pial",
    "white": "white",
    "inflated": "infl",
    "sphere": "sphere",
    "flat": "flat",
}
_HEMIS = ("left", "right")
_NILEARN_NAME = {"fsaverage7": "fsaverage", "fsaverage": "fsaverage"}


class Mesh(NamedTuple):
    """One hemisphere's triangle mesh: ``coords`` (n_vertices, 3) float, ``faces`` (n_faces, 3) int."""

    coords: np.ndarray
    faces: np.ndarray


def surface_space_name(space: "str | Space") -> str:
    """Canonical fsaverage name of ``space`` ("fsaverage" is fsaverage7)."""
    name = space.name if isinstance(space, Space) else str(space)
    if isinstance(space, Space) and not space.is_surface:
        raise ValidationError(f"space {name!r} is a volume, not an fsaverage surface")
    if name == "fsaverage":
        name = "fsaverage7"
    if name not in FSAVERAGE_SIZES:
        raise ValidationError(f"unknown surface space {name!r}; known: {', '.join(FSAVERAGE_SIZES)}")
    return name


def space_of_size(n_targets: int) -> str:
    """The fsaverage level with ``n_targets`` vertices in both hemispheres together."""
    for name, n in FSAVERAGE_SIZES.items():
        if 2 * n == n_targets:
            return name
    raise ValidationError(
        f"{n_targets} targets match no fsaverage surface (two hemispheres of "
        + ", ".join(f"{n}" for n in FSAVERAGE_SIZES.values())
        + " vertices)"
    )


def nilearn_package_data() -> Path:
    """nilearn's bundled data folder (found without importing ``nilearn.datasets``,
    whose import costs seconds)."""
    import importlib.util

    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError("nilearn is not installed; it provides the fsaverage meshes (pip install nilearn)")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def nilearn_data_dirs(data_dir: "str | os.PathLike | None" = None) -> list[Path]:
    """Where nilearn keeps fetched data, in nilearn's own order of precedence
    (``data_dir``, ``$NILEARN_SHARED_DATA``, ``$NILEARN_DATA``, ``~/nilearn_data``);
    the same list as ``nilearn.datasets.get_data_dirs``, without its import cost."""
    paths: list[Path] = []
    for src in (data_dir, os.environ.get("NILEARN_SHARED_DATA"), os.environ.get("NILEARN_DATA")):
        if src:
            paths.extend(Path(p).expanduser() for p in str(src).split(os.pathsep) if p)
    paths.append(Path("~/nilearn_data").expanduser())
    return paths


def _mesh_dir(name: str) -> Path:
    if name == "fsaverage5":
        return nilearn_package_data() / "fsaverage5"
    sub = _NILEARN_NAME.get(name, name)
    dirs = [d / sub for d in nilearn_data_dirs()]
    for d in dirs:
        if (d / "sphere_left.gii.gz").exists():
            return d
    raise DataNotFoundError(
        f"the {name} meshes are not on this machine (looked in {', '.join(str(d) for d in dirs)}). "
        f"Fetch them once while online with: python -c \"from nilearn.datasets import "
        f"fetch_surf_fsaverage; fetch_surf_fsaverage('{sub}')\" (about 30 MB for fsaverage6). "
        "fsaverage5 needs no download."
    )


def _read_gifti_mesh(path: Path) -> Mesh:
    import nibabel as nib

    img = nib.load(str(path))
    coords = faces = None
    for da in img.darrays:
        if da.intent == nib.nifti1.intent_codes["NIFTI_INTENT_POINTSET"]:
            coords = np.asarray(da.data, dtype=np.float64)
        elif da.intent == nib.nifti1.intent_codes["NIFTI_INTENT_TRIANGLE"]:
            faces = np.asarray(da.data, dtype=np.int64)
    if coords is None or faces is None:
        raise ValidationError(f"{path}: not a GIfTI surface (needs a pointset and a triangle array)")
    return Mesh(coords, faces)


@functools.lru_cache(maxsize=32)
def _load_mesh(name: str, kind: str) -> tuple[Mesh, Mesh]:
    d = _mesh_dir(name)
    if kind == "midthickness":
        p, w = _load_mesh(name, "pial"), _load_mesh(name, "white")
        return tuple(Mesh((a.coords + b.coords) / 2, a.faces) for a, b in zip(p, w))  # type: ignore[return-value]
    prefix = MESH_KINDS[kind]
    out = []
    n = FSAVERAGE_SIZES[name]
    for hemi in _HEMIS:
        mesh = _read_gifti_mesh(d / f"{prefix}_{hemi}.gii.gz")
        if len(mesh.coords) != n:
            raise ValidationError(f"{d / f'{prefix}_{hemi}.gii.gz'}: {len(mesh.coords)} vertices, {name} has {n}")
        mesh.coords.setflags(write=False)
        mesh.faces.setflags(write=False)
        out.append(mesh)
    return tuple(out)  # type: ignore[return-value]


def load_mesh(space: "str | Space" = "fsaverage5", kind: str = "pial") -> dict[str, Mesh]:
    """Both hemispheres' meshes of an fsaverage level.

    Parameters
    ----------
    space : str or Space
        "fsaverage5" (bundled with nilearn), or another level fetched once into
        nilearn's data home.
    kind : {"pial", "white", "midthickness", "inflated", "sphere", "flat"}
        Which surface. "flat" is the cut, flattened patch (only its x, y are used);
        its faces leave out the medial wall.

    Returns
    -------
    dict
        ``{"left": Mesh, "right": Mesh}``; arrays are read-only and cached.
    """
    name = surface_space_name(space)
    if kind not in MESH_KINDS and kind != "midthickness":
        raise ValidationError(f"unknown mesh kind {kind!r}; known: {', '.join([*MESH_KINDS, 'midthickness'])}")
    left, right = _load_mesh(name, kind)
    return {"left": left, "right": right}


@functools.lru_cache(maxsize=8)
def _sulc(name: str) -> np.ndarray:
    import nibabel as nib

    d = _mesh_dir(name)
    parts = [np.asarray(nib.load(str(d / f"sulc_{h}.gii.gz")).darrays[0].data, dtype=np.float64) for h in _HEMIS]
    out = np.concatenate(parts)
    out.setflags(write=False)
    return out


def sulcal_depth(space: "str | Space" = "fsaverage5") -> np.ndarray:
    """FreeSurfer sulcal depth (positive in sulci) for every vertex, left then right."""
    return _sulc(surface_space_name(space))


@functools.lru_cache(maxsize=8)
def _medial_wall(name: str) -> np.ndarray:
    if name == "fsaverage5":
        parts = []
        for mesh in _load_mesh(name, "flat"):
            used = np.zeros(len(mesh.coords), dtype=bool)
            used[mesh.faces.ravel()] = True
            parts.append(~used)
        out = np.concatenate(parts)
    else:
        # coarser levels: a nested selection; finer: nearest neighbour on the sphere
        out = resample(_medial_wall("fsaverage5"), "fsaverage5", name)
    out = np.array(out, dtype=bool)
    out.setflags(write=False)
    return out


def medial_wall(space: "str | Space" = "fsaverage5") -> np.ndarray:
    """Boolean mask (left then right), True on the medial wall.

    Taken from nilearn's fsaverage5 flat patch: the vertices that no triangle of the
    flat mesh uses. Other levels get the fsaverage5 mask through :func:`resample`.
    """
    return _medial_wall(surface_space_name(space))


@functools.lru_cache(maxsize=8)
def _nearest_coarse(fine: str, coarse: str) -> np.ndarray:
    """For each vertex of ``fine`` (both hemispheres), the index (in ``coarse``'s
    concatenated numbering) of the nearest coarse vertex on the sphere."""
    from scipy.spatial import cKDTree

    fine_s = _load_mesh(fine, "sphere")
    coarse_s = _load_mesh(coarse, "sphere")
    n_coarse = FSAVERAGE_SIZES[coarse]
    out = []
    for h, (f, c) in enumerate(zip(fine_s, coarse_s)):
        fc = f.coords / np.linalg.norm(f.coords, axis=1, keepdims=True)
        cc = c.coords / np.linalg.norm(c.coords, axis=1, keepdims=True)
        _, idx = cKDTree(cc).query(fc)
        idx = np.asarray(idx, dtype=np.int64)
        # nested vertices map onto themselves exactly
        idx[:n_coarse] = np.arange(n_coarse)
        out.append(idx + h * n_coarse)
    res = np.concatenate(out)
    res.setflags(write=False)
    return res


def resample(values, source: "str | Space", target: "str | Space", *, axis: int = -1):
    """Move per-vertex values from one fsaverage level to another.

    Down (e.g. fsaverage6 -> fsaverage5) keeps the nested vertices' values exactly: the
    first ``n`` vertices of each hemisphere. Up (fsaverage5 -> fsaverage6) gives every
    fine vertex the value of the nearest coarse vertex on the sphere (the nested
    vertices keep theirs); it needs the finer level's sphere on disk.

    Parameters
    ----------
    values : array-like or xarray.DataArray/Dataset
        Left hemisphere then right along ``axis`` (numpy) or along the ``target``
        dimension (xarray; its ``target`` and ``hemi`` coordinates are rebuilt).
    source, target : str or Space
        fsaverage levels.
    axis : int
        The vertex axis of a numpy array.
    """
    src, dst = surface_space_name(source), surface_space_name(target)
    ns, nd = FSAVERAGE_SIZES[src], FSAVERAGE_SIZES[dst]
    if nd <= ns:
        index = np.concatenate([np.arange(nd), ns + np.arange(nd)])
    else:
        index = _nearest_coarse(dst, src)
    try:
        import xarray as xr
    except ImportError:  # pragma: no cover - xarray is a dependency
        xr = None
    if xr is not None and isinstance(values, (xr.DataArray, xr.Dataset)):
        if "target" not in values.dims:
            raise ValidationError("resample: xarray input needs a 'target' dimension")
        if values.sizes["target"] != 2 * ns:
            raise ValidationError(f"resample: 'target' has {values.sizes['target']} entries; {src} has {2 * ns}")
        out = values.isel(target=index)
        hemi = np.array(["L"] * nd + ["R"] * nd)
        out = out.assign_coords(target=np.arange(2 * nd))
        if "hemi" in values.coords:
            out = out.assign_coords(hemi=("target", hemi))
        if "space" in out.attrs:
            out.attrs["space"] = dst
        return out
    arr = np.asarray(values)
    if arr.ndim == 0 or arr.shape[axis] != 2 * ns:
        raise ValidationError(
            f"resample: values have {arr.shape[axis] if arr.ndim else 0} entries on axis {axis}; "
            f"{src} has {2 * ns} vertices (two hemispheres of {ns})"
        )
    return np.take(arr, index, axis=axis)


def clear_caches() -> None:
    """Forget cached meshes and maps (after fetching a new level into nilearn's data home)."""
    for f in (_load_mesh, _sulc, _medial_wall, _nearest_coarse):
        f.cache_clear()
