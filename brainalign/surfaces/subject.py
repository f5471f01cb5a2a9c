"""A subject's own volume and cortical surfaces, and the maps volume -> surface -> fsaverage.

This is what a LeBel 2023 (ds003020) subject needs: its responses are voxels of a
functional volume, its anatomy is a pycortex database (``derivative/pycortex-db/<SUBJ>``)
and, for UTS01-UTS08, a FreeSurfer subject folder (``derivative/freesurfer_subjdir/<SUBJ>``).
Everything here is read with nibabel, numpy and scipy; pycortex is never needed.

Column order of masked data (pycortex's rule)
---------------------------------------------
pycortex keeps a volume as an array in ``(z, y, x)`` axis order: the NIfTI array that
nibabel reads, transposed (``nibabel.load(f).get_fdata().T``; ``cortex/database.py``
``get_mask`` returns ``nib.get_data().T != 0`` and ``cortex/xfm.py`` gives the reference's
shape as ``shape[:3][::-1]``). Masked ("linear") data are the values at the mask's
nonzero entries of that ``(z, y, x)`` array, in numpy's C order (``cortex.volume.unmask``
does ``output[mask > 0] = data``; ``cortex/dataset/braindata.py`` ``_find_mask`` picks the
``mask_<type>.nii.gz`` of the transform whose voxel count equals the data's length). So
column ``c`` of a ds003020 ``.hf5`` is voxel ``(i, j, k)`` of ``reference.nii.gz`` (nibabel's
indices) where the ``(i, j, k)`` are the mask's voxels sorted by ``k``, then ``j``, then
``i`` (``i`` fastest) -- Fortran order of nibabel's array, C order of pycortex's.
:class:`SubjectSpace` stores ``mask`` in pycortex's ``(z, y, x)`` order, so that
``volume_zyx[space.mask]`` gives the columns, and converts with :meth:`SubjectSpace.unmask`
and :meth:`SubjectSpace.mask_volume`.

The transform (``matrices.xfm``)
--------------------------------
pycortex's transform file is JSON with 4 x 4 matrices ``coord`` and ``magnet``
(``magnet = reference_affine @ coord``, ``cortex/database.py`` ``save_xfm``). ``coord``
maps a point of the subject's pycortex surfaces (mm, ``(x, y, z, 1)``) to continuous voxel
indices ``(i, j, k)`` of ``reference.nii.gz`` in nibabel's axis order, voxel centres at
integers (``cortex/mapper/samplers.py`` rounds ``coords`` and indexes the ``(z, y, x)``
array with ``coords[::-1]``).

Volume -> subject surface (:func:`line_mapper`)
-----------------------------------------------
As pycortex's line mappers (``cortex/mapper/line.py``) do: each vertex is sampled at
``n_samples`` points evenly spaced strictly between its white-matter (``wm``) and pial
(``pia``) positions, each point is mapped through ``coord`` and rounded to the nearest
voxel. The vertex's value is the mean of the masked voxels its points hit, each weighted
by how many points hit it. Points that land outside the mask are left out (pycortex
counts them as zeros); a vertex none of whose points hits the mask is NaN, never zero.

Subject surface -> fsaverage (:func:`sphere_mapper`)
----------------------------------------------------
Through FreeSurfer's ``surf/?h.sphere.reg`` (the subject's vertices on the registered
sphere, same vertices and order as pycortex's surfaces, which pycortex imports from
FreeSurfer and only shifts) against fsaverage's own sphere (nilearn's, offline for
fsaverage5): the nearest-neighbour "forward and reverse" rule of FreeSurfer's
``mri_surf2surf`` (its default ``nnfr``): each fsaverage vertex averages its nearest
subject vertex and the subject vertices that would otherwise be used by none and whose
nearest fsaverage vertex it is, so no subject vertex is thrown away and every fsaverage
vertex gets a value. Written here (scipy's cKDTree) because nibabel and nilearn have no
sphere-to-sphere resampler.

Both maps are sparse matrices; their product (fsaverage vertices x masked voxels) is
cached on disk under ``brainalign.config.cache_dir() / "surface_maps"``, keyed by the
content of every input file, the settings and the mapper's version. Projecting a map is
then one sparse matrix product.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .._io import atomic_path
from ..errors import DataNotFoundError, NotDownloadedError, ValidationError, check_data_file, is_annex_pointer
from ..stimulus import FSAVERAGE_SIZES, Space
from .meshes import Mesh, load_mesh, surface_space_name

__all__ = [
    "SubjectSpace",
    "read_surface",
    "read_xfm",
    "read_curvature",
    "read_pycortex_mask",
    "line_mapper",
    "sphere_mapper",
    "apply_mapper",
    "SURFACE_KINDS",
    "MAPPER_VERSION",
]

log = logging.getLogger(__name__)

#: bump when the mappers' arithmetic changes (it is part of the cache key)
MAPPER_VERSION = 1
#: pycortex surface names: white matter, pial, inflated, flat
SURFACE_KINDS = ("wm", "pia", "inflated", "flat")
_HEMIS = (("lh", "left"), ("rh", "right"))


# ----------------------------------------------------------------------------- readers


def read_surface(path: "str | os.PathLike") -> Mesh:
    """One hemisphere's mesh from a GIfTI (``.gii``), a pycortex ``.npz`` or a FreeSurfer file.

    The older pycortex databases (ds003020's UTS02) keep surfaces as ``.npz`` with arrays
    ``pts`` (n, 3) and ``polys`` (faces, 3) (``cortex/formats.pyx`` ``read_npz``); newer
    ones as GIfTI with a pointset and a triangle array. Any other name is read as a
    FreeSurfer surface (``lh.white``, ``lh.sphere.reg``...) with nibabel.
    """
    p = check_data_file(path, what="surface file")
    name = p.name.lower()
    try:
        if name.endswith((".gii", ".gii.gz")):
            import nibabel as nib

            img = nib.load(str(p))
            pts = [d.data for d in img.darrays if d.intent == nib.nifti1.intent_codes["NIFTI_INTENT_POINTSET"]]
            tri = [d.data for d in img.darrays if d.intent == nib.nifti1.intent_codes["NIFTI_INTENT_TRIANGLE"]]
            if not pts or not tri:
                raise ValidationError(f"{p}: not a GIfTI surface (needs a pointset and a triangle array)")
            coords, faces = pts[0], tri[0]
        elif name.endswith(".npz"):
            with np.load(p, allow_pickle=False) as z:
                if "pts" not in z or "polys" not in z:
                    raise ValidationError(f"{p}: a pycortex surface .npz needs arrays 'pts' and 'polys' (has {list(z.keys())})")
                coords, faces = z["pts"], z["polys"]
        else:
            import nibabel.freesurfer as fsio

            coords, faces = fsio.read_geometry(str(p))
    except ValidationError:
        raise
    except Exception as exc:
        raise ValidationError(f"{p}: not a readable surface file ({exc})") from exc
    coords = np.asarray(coords, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    if coords.ndim != 2 or coords.shape[1] != 3 or len(coords) == 0:
        raise ValidationError(f"{p}: vertex coordinates must be (n, 3), got {coords.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValidationError(f"{p}: faces must be (n_faces, 3), got {faces.shape}")
    if faces.size and (faces.min() < 0 or faces.max() >= len(coords)):
        raise ValidationError(f"{p}: a face uses vertex {faces.max()} but the surface has {len(coords)} vertices")
    if not np.all(np.isfinite(coords)):
        raise ValidationError(f"{p}: vertex coordinates are not all finite")
    return Mesh(coords, faces)


def read_xfm(path: "str | os.PathLike", reference_affine: np.ndarray | None = None) -> np.ndarray:
    """The 4 x 4 ``coord`` matrix of a pycortex ``matrices.xfm`` (JSON).

    ``coord`` maps surface mm to voxel indices of the transform's reference image. A file
    with only ``magnet`` (surface mm -> reference mm) gives ``inv(reference_affine) @ magnet``.
    """
    p = check_data_file(path, what="pycortex transform")
    try:
        raw = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValidationError(f"{p}: not a pycortex transform (JSON) ({exc})") from exc
    if not isinstance(raw, dict) or not ({"coord", "magnet"} & set(raw)):
        raise ValidationError(f"{p}: a pycortex transform needs a 'coord' (or 'magnet') 4x4 matrix")
    key = "coord" if "coord" in raw else "magnet"
    try:
        mat = np.asarray(raw[key], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{p}: '{key}' is not a numeric 4x4 matrix ({exc})") from exc
    if mat.shape != (4, 4) or not np.all(np.isfinite(mat)):
        raise ValidationError(f"{p}: '{key}' must be a finite 4x4 matrix, got shape {mat.shape}")
    if abs(np.linalg.det(mat[:3, :3])) < 1e-12:
        raise ValidationError(f"{p}: '{key}' is singular")
    if key == "magnet":
        if reference_affine is None:
            raise ValidationError(f"{p}: has only 'magnet'; the reference image's affine is needed to get 'coord'")
        mat = np.linalg.inv(np.asarray(reference_affine, dtype=np.float64)) @ mat
    return mat


def read_pycortex_mask(path: "str | os.PathLike") -> tuple[np.ndarray, np.ndarray]:
    """A pycortex mask NIfTI as ``(mask in (z, y, x) order, the NIfTI affine)``."""
    import nibabel as nib

    p = check_data_file(path, what="mask")
    try:
        img = nib.load(str(p))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise ValidationError(f"{p}: not a readable NIfTI mask ({exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValidationError(f"{p}: a mask must be 3-D, got shape {data.shape}")
    return np.ascontiguousarray(data.T != 0), np.asarray(img.affine, dtype=np.float64)


def read_curvature(path: "str | os.PathLike") -> tuple[np.ndarray, np.ndarray]:
    """pycortex ``surface-info/curvature.npz``: ``(left, right)`` per-vertex curvature.

    pycortex stores minus FreeSurfer's ``?h.curv`` (``cortex/freesurfer.py`` ``import_subj``
    saves ``left=-lh``): positive on gyri, negative in sulci.
    """
    p = check_data_file(path, what="curvature file")
    try:
        with np.load(p, allow_pickle=False) as z:
            if "left" not in z or "right" not in z:
                raise ValidationError(f"{p}: needs arrays 'left' and 'right' (has {list(z.keys())})")
            return np.asarray(z["left"], dtype=np.float64).ravel(), np.asarray(z["right"], dtype=np.float64).ravel()
    except ValidationError:
        raise
    except Exception as exc:
        raise ValidationError(f"{p}: not a readable .npz ({exc})") from exc


# ----------------------------------------------------------------------------- mappers


def line_mapper(
    white: np.ndarray,
    pial: np.ndarray,
    coord: np.ndarray,
    mask: np.ndarray,
    n_samples: int = 16,
):
    """Sparse (vertices x masked voxels) matrix that averages the voxels each vertex's line hits.

    Parameters
    ----------
    white, pial : (n_vertices, 3) float
        The same vertices on the white-matter and pial surfaces, in the surfaces' mm.
    coord : (4, 4)
        surface mm -> voxel indices (i, j, k) of the reference (pycortex's ``coord``).
    mask : bool (z, y, x)
        The mask in pycortex's axis order; its nonzero entries in C order are the columns.
    n_samples : int
        Points per vertex, at ``t = (1..n) / (n + 1)`` of the way from white to pial.

    Returns
    -------
    scipy.sparse.csr_matrix, float64
        Rows sum to 1, or to 0 for a vertex whose points hit no masked voxel (NaN there
        through :func:`apply_mapper`).
    """
    import scipy.sparse as sp

    white = np.asarray(white, dtype=np.float64)
    pial = np.asarray(pial, dtype=np.float64)
    if white.shape != pial.shape or white.ndim != 2 or white.shape[1] != 3:
        raise ValidationError(f"line_mapper: white {white.shape} and pial {pial.shape} must be the same (n, 3) shape")
    n_samples = int(n_samples)
    if n_samples < 1:
        raise ValidationError(f"n_samples must be >= 1, got {n_samples}")
    mask = np.asarray(mask, dtype=bool)
    nz, ny, nx = mask.shape
    lookup = np.full(mask.size, -1, dtype=np.int64)
    on = np.flatnonzero(mask.ravel())
    lookup[on] = np.arange(on.size)
    coord = np.asarray(coord, dtype=np.float64)
    A, b = coord[:3, :3], coord[:3, 3]
    n = len(white)
    rows, cols = [], []
    for t in np.linspace(0.0, 1.0, n_samples + 2)[1:-1]:
        ijk = (white * (1.0 - t) + pial * t) @ A.T + b
        idx = np.floor(ijk + 0.5).astype(np.int64)
        ok = (idx[:, 0] >= 0) & (idx[:, 0] < nx) & (idx[:, 1] >= 0) & (idx[:, 1] < ny) & (idx[:, 2] >= 0) & (idx[:, 2] < nz)
        v = np.flatnonzero(ok)
        c = lookup[(idx[v, 2] * ny + idx[v, 1]) * nx + idx[v, 0]]
        hit = c >= 0
        rows.append(v[hit].astype(np.int32))
        cols.append(c[hit].astype(np.int32))
    r, c = np.concatenate(rows), np.concatenate(cols)
    M = sp.csr_matrix((np.ones(r.size), (r, c)), shape=(n, on.size))
    M.sum_duplicates()
    return _normalise_rows(M)


def sphere_mapper(source: np.ndarray, target: np.ndarray):
    """Sparse (target vertices x source vertices) nearest-neighbour map on the sphere.

    FreeSurfer ``mri_surf2surf``'s ``nnfr`` rule: each target vertex takes its nearest
    source vertex; each source vertex that no target vertex took goes to its nearest
    target vertex; a target vertex averages what it got (rows sum to 1).
    Both inputs are points on (any radius) spheres centred at 0, in one coordinate frame.
    """
    import scipy.sparse as sp
    from scipy.spatial import cKDTree

    src = np.asarray(source, dtype=np.float64)
    dst = np.asarray(target, dtype=np.float64)
    src = src / np.linalg.norm(src, axis=1, keepdims=True)
    dst = dst / np.linalg.norm(dst, axis=1, keepdims=True)
    _, fwd = cKDTree(src).query(dst)
    used = np.zeros(len(src), dtype=bool)
    used[fwd] = True
    spare = np.flatnonzero(~used)
    rows = [np.arange(len(dst))]
    cols = [np.asarray(fwd, dtype=np.int64)]
    if spare.size:
        _, rev = cKDTree(dst).query(src[spare])
        rows.append(np.asarray(rev, dtype=np.int64))
        cols.append(spare)
    r, c = np.concatenate(rows), np.concatenate(cols)
    M = sp.csr_matrix((np.ones(r.size), (r, c)), shape=(len(dst), len(src)))
    M.sum_duplicates()
    return _normalise_rows(M)


def _normalise_rows(M):
    import scipy.sparse as sp

    s = np.asarray(M.sum(axis=1)).ravel()
    inv = np.where(s > 0, 1.0 / np.where(s > 0, s, 1.0), 0.0)
    out = sp.diags(inv) @ M
    out = sp.csr_matrix(out)
    out.eliminate_zeros()
    return out


def apply_mapper(M, values: Any, *, what: str = "values") -> np.ndarray:
    """``M @ values`` along the last axis, NaN-aware; float32 out (float64 for float64 in).

    A row of ``M`` that sums to 0, or whose inputs are all NaN, gives NaN. NaN inputs are
    left out of a row's mean (its weights renormalised over the finite inputs).
    """
    arr = np.asarray(values)
    if arr.dtype == bool:
        arr = arr.astype(np.float32)
    if arr.ndim == 0 or arr.shape[-1] != M.shape[1]:
        raise ValidationError(f"{what}: last axis has {arr.shape[-1] if arr.ndim else 0} entries, the map expects {M.shape[1]}")
    out_dtype = np.float64 if arr.dtype == np.float64 else np.float32
    lead = arr.shape[:-1]
    X = arr.reshape(-1, arr.shape[-1]).astype(np.float64, copy=False)
    finite = np.isfinite(X)
    rowsum = np.asarray(M.sum(axis=1)).ravel()
    if finite.all():
        out = np.asarray(M @ X.T).T
        den = np.broadcast_to(rowsum, out.shape)
        out = np.where(den > 1e-12, out / np.where(den > 1e-12, den, 1.0), np.nan)
    else:
        num = np.asarray(M @ np.where(finite, X, 0.0).T).T
        den = np.asarray(M @ finite.T.astype(np.float64)).T
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(den > 1e-12, num / np.where(den > 1e-12, den, 1.0), np.nan)
    return out.reshape(*lead, M.shape[0]).astype(out_dtype, copy=False)


# ----------------------------------------------------------------------------- caching

_DIGESTS: dict[tuple, str] = {}
_MEMORY: dict[str, Any] = {}


def _file_digest(path: "str | os.PathLike") -> str:
    """sha256 of a file's content (memoised per path, size and mtime in this process)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    hit = _DIGESTS.get(key)
    if hit is None:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        hit = _DIGESTS[key] = h.hexdigest()
    return hit


def _cache_path(kind: str, key: Mapping[str, Any]) -> Path:
    from .. import __version__
    from ..config import cache_dir

    blob = json.dumps({"kind": kind, "mapper_version": MAPPER_VERSION, "brainalign": __version__, **key}, sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:24]
    return cache_dir() / "surface_maps" / f"{kind}-{digest}.npz"


def _cached(kind: str, key: Mapping[str, Any], build):
    """Load the sparse matrix for ``key`` from memory, then disk; else build and store it."""
    import scipy.sparse as sp

    path = _cache_path(kind, key)
    hit = _MEMORY.get(str(path))
    if hit is not None:
        return hit
    M = None
    if path.exists():
        try:
            M = sp.csr_matrix(sp.load_npz(path))
            log.debug("read cached %s map %s", kind, path)
        except Exception as exc:  # a damaged cache file is rebuilt
            log.warning("cached map %s is unreadable (%s); rebuilding it", path, exc)
            M = None
    if M is None:
        M = sp.csr_matrix(build())
        try:
            with atomic_path(path) as tmp:
                sp.save_npz(tmp, M, compressed=False)
            log.info("cached the %s map in %s", kind, path)
        except OSError as exc:  # a read-only cache is not fatal
            log.warning("could not cache the %s map in %s (%s)", kind, path, exc)
    _MEMORY[str(path)] = M
    if len(_MEMORY) > 16:
        _MEMORY.pop(next(iter(_MEMORY)))
    return M


def clear_memory_cache() -> None:
    """Forget maps and file digests held in memory (the disk cache stays)."""
    _MEMORY.clear()
    _DIGESTS.clear()
    _read_mesh.cache_clear()


@functools.lru_cache(maxsize=32)
def _read_mesh(path: str, size: int, mtime: int) -> Mesh:
    mesh = read_surface(path)
    mesh.coords.setflags(write=False)
    mesh.faces.setflags(write=False)
    return mesh


def _mesh(path: "str | os.PathLike") -> Mesh:
    p = check_data_file(path, what="surface file")
    st = p.stat()
    return _read_mesh(str(p), st.st_size, st.st_mtime_ns)


# ----------------------------------------------------------------------------- the space


def _pycortex_transform(base: Path, subject: str, xfm: str | None, hint: str):
    """(transform folder, reference image path, its affine, its shape, ``matrices.xfm``,
    the voxel -> surface-coordinate transform) of a subject's pycortex transform."""
    import nibabel as nib

    tdir = base / "transforms"
    if not tdir.is_dir():
        raise DataNotFoundError(f"{tdir} does not exist: no pycortex transform for {subject}.{_sp(hint)}")
    if xfm is None:
        names = sorted(p.name for p in tdir.iterdir() if p.is_dir())
        xfm = f"{subject}_auto" if f"{subject}_auto" in names else (names[0] if len(names) == 1 else None)
        if xfm is None:
            raise ValidationError(f"{tdir}: several transforms ({', '.join(names) or 'none'}); pass xfm=")
    xdir = tdir / xfm
    ref = check_data_file(xdir / "reference.nii.gz", what="pycortex reference image", hint=hint)
    try:
        ref_img = nib.load(str(ref))
    except Exception as exc:
        raise ValidationError(f"{ref}: not a readable NIfTI ({exc})") from exc
    shape = tuple(int(s) for s in ref_img.shape[:3])
    affine = np.asarray(ref_img.affine, dtype=np.float64)
    xfm_file = xdir / "matrices.xfm"
    coord = read_xfm(check_data_file(xfm_file, what="pycortex transform", hint=hint), affine)
    return xdir, ref, affine, shape, xfm_file, coord


def _pycortex_mask(xdir: Path, ref: Path, shape: tuple, mask: str | None, n_targets: int | None,
                   targets_file, hint: str) -> tuple[Path, np.ndarray]:
    """The mask file of the responses' voxels (by size, pycortex's own rule, or by name)."""
    mask_files = sorted(xdir.glob("mask_*.nii.gz")) if mask is None else [xdir / f"mask_{mask}.nii.gz"]
    if not mask_files:
        raise DataNotFoundError(f"{xdir} has no mask_*.nii.gz: the voxels of the responses are unknown.{_sp(hint)}")
    tried: list[str] = []
    candidates: list[tuple[Path, np.ndarray]] = []
    for mf in mask_files:
        if is_annex_pointer(mf):
            tried.append(f"{mf.name}: not downloaded (git-annex pointer)")
            continue
        m, _ = read_pycortex_mask(check_data_file(mf, what="mask", hint=hint))
        if m.shape[::-1] != shape:
            raise ValidationError(f"{mf}: mask shape {m.shape[::-1]} differs from {ref}'s {shape}")
        tried.append(f"{mf.name}: {int(m.sum())} voxels")
        if n_targets is None or int(m.sum()) == int(n_targets):
            candidates.append((mf, m))
    if not candidates:
        if tried and all("not downloaded" in t for t in tried):
            raise NotDownloadedError(f"{xdir}: every mask is a git-annex pointer ({'; '.join(tried)}).{_sp(hint)}")
        src = f"{targets_file} has {n_targets} voxel columns" if targets_file else f"the responses have {n_targets} columns"
        raise ValidationError(
            f"{src}, but no mask of {xdir} has that many voxels ({'; '.join(tried)}): the responses and this "
            "pycortex transform do not belong together"
        )
    if n_targets is None:
        thick = [c for c in candidates if c[0].name == "mask_thick.nii.gz"]
        candidates = thick or candidates
    mask_file, mask_zyx = candidates[0]
    for other, m in candidates[1:]:
        if not np.array_equal(m, mask_zyx):
            log.warning("%s and %s both have %d voxels but differ; using %s (pycortex would take either)",
                        mask_file, other, int(m.sum()), mask_file.name)
    return mask_file, mask_zyx


def _pycortex_surfaces(sdir: Path) -> dict[str, tuple[str, str]]:
    """The surface files (both hemispheres) of each kind the pycortex database has."""
    surfaces: dict[str, tuple[str, str]] = {}
    for kind in SURFACE_KINDS:
        pair = []
        for h, _ in _HEMIS:
            found = [sdir / f"{kind}_{h}{ext}" for ext in (".gii", ".npz")]
            found = [f for f in found if f.exists() or f.is_symlink()]
            pair.append(str(found[0]) if found else None)
        if all(pair):
            surfaces[kind] = (pair[0], pair[1])
    return surfaces


def _spheres(subject: str, freesurfer_dir, sphere_hint: str) -> tuple[tuple[str, str] | None, str]:
    """(the FreeSurfer ``sphere.reg`` pair, or None and why not)."""
    if freesurfer_dir is None:
        return None, f"no FreeSurfer subject folder was given for {subject}"
    fs = Path(freesurfer_dir).expanduser()
    sph = [fs / "surf" / f"{h}.sphere.reg" for h, _ in _HEMIS]
    if all(s.exists() or s.is_symlink() for s in sph):
        return (str(sph[0]), str(sph[1])), ""
    if not fs.exists():
        return None, f"{subject} has no FreeSurfer subject folder ({fs} does not exist), so no sphere.reg" + _sp(sphere_hint)
    missing = [str(s) for s in sph if not (s.exists() or s.is_symlink())]
    return None, f"{', '.join(missing)} does not exist" + _sp(sphere_hint)


@dataclass(frozen=True, eq=False)
class SubjectSpace(Space):
    """One subject's functional volume with its cortical surfaces (a volume :class:`Space`).

    Targets are the voxels of ``mask``; ``mask`` is in pycortex's ``(z, y, x)`` axis order
    (``mask[k, j, i]`` is voxel ``(i, j, k)`` of the reference image) and the targets are its
    nonzero entries in C order, as the columns of ds003020's ``.hf5`` files (see the module
    docstring). ``affine`` is the reference NIfTI's affine (nibabel's ``(i, j, k)`` -> mm).
    Build one with :meth:`from_pycortex`.

    Attributes
    ----------
    subject : str
    reference, mask_file, xfm_file : str
        ``reference.nii.gz``, the ``mask_<type>.nii.gz`` that matched and ``matrices.xfm``.
    coord : (4, 4) array
        surface mm -> voxel indices (pycortex's ``coord``).
    surfaces : dict kind -> (lh path, rh path)
        pycortex surfaces found (``wm``, ``pia``, ``inflated``, ``flat``).
    spheres : (lh, rh) paths or None
        FreeSurfer ``?h.sphere.reg``; None when the subject has none (then ``no_sphere``
        says why and fsaverage projection raises).
    curvature_file : str or None
        pycortex ``surface-info/curvature.npz``.
    """

    subject: str = ""
    reference: str | None = None
    mask_file: str | None = None
    xfm_file: str | None = None
    coord: np.ndarray | None = None
    surfaces: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    spheres: tuple[str, str] | None = None
    curvature_file: str | None = None
    no_sphere: str = ""
    hint: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind != "volume":
            raise ValidationError(f"space {self.name!r}: a SubjectSpace is a volume")
        if self.coord is not None:
            c = np.asarray(self.coord, dtype=np.float64)
            if c.shape != (4, 4):
                raise ValidationError(f"space {self.name!r}: coord must be 4x4, got {c.shape}")
            c.setflags(write=False)
            object.__setattr__(self, "coord", c)
        self.mask.setflags(write=False)
        object.__setattr__(self, "surfaces", dict(self.surfaces))

    # -- construction ----------------------------------------------------------------
    @classmethod
    def from_pycortex(
        cls,
        subject: str,
        pycortex_dir: "str | os.PathLike",
        *,
        xfm: str | None = None,
        n_targets: int | None = None,
        targets_file: "str | os.PathLike | None" = None,
        freesurfer_dir: "str | os.PathLike | None" = None,
        mask: str | None = None,
        hint: str = "",
        sphere_hint: str = "",
    ) -> "SubjectSpace":
        """Read a subject's pycortex database (and FreeSurfer ``sphere.reg`` when given).

        Parameters
        ----------
        subject : str
            Subject name (``UTS01``).
        pycortex_dir : path
            The subject's pycortex folder (``.../pycortex-db/UTS01``).
        xfm : str, optional
            Transform name; default ``<subject>_auto`` if present, else the only one.
        n_targets : int, optional
            Voxels of the responses: the ``mask_*.nii.gz`` with this many voxels is used
            (pycortex's own rule); a clear error when none has it.
        targets_file : path, optional
            The response file ``n_targets`` came from (named in errors).
        freesurfer_dir : path, optional
            The subject's FreeSurfer folder (``.../freesurfer_subjdir/UTS01``), for
            ``surf/?h.sphere.reg``; absent or None: no fsaverage projection.
        mask : str, optional
            Use ``mask_<mask>.nii.gz`` (e.g. ``"thick"``) instead of matching by size.
        hint : str
            What gets missing pycortex files (a ``datalad get`` command), added to errors.
        sphere_hint : str
            The same for a FreeSurfer folder that lacks its ``sphere.reg``.
        """
        base = Path(pycortex_dir).expanduser()
        xdir, ref, affine, shape, xfm_file, coord = _pycortex_transform(base, subject, xfm, hint)
        mask_file, mask_zyx = _pycortex_mask(xdir, ref, shape, mask, n_targets, targets_file, hint)
        spheres, why = _spheres(subject, freesurfer_dir, sphere_hint)
        curv = base / "surface-info" / "curvature.npz"
        return cls(
            name=subject,
            kind="volume",
            mask=mask_zyx,
            affine=affine,
            subject=subject,
            reference=str(ref),
            mask_file=str(mask_file),
            xfm_file=str(xfm_file),
            coord=coord,
            surfaces=_pycortex_surfaces(base / "surfaces"),
            spheres=spheres,
            curvature_file=str(curv) if (curv.exists() or curv.is_symlink()) else None,
            no_sphere=why,
            hint=hint,
        )

    # -- volumes ---------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """The reference volume's shape in nibabel's ``(i, j, k)`` order."""
        return tuple(int(s) for s in self.mask.shape[::-1])  # type: ignore[return-value]

    @property
    def mask_ijk(self) -> np.ndarray:
        """The mask in nibabel's ``(i, j, k)`` order (a view)."""
        return self.mask.T

    def unmask(self, values: Any, fill: float = np.nan) -> np.ndarray:
        """Targets (..., n_targets) -> volumes (..., i, j, k) in nibabel's order, ``fill`` outside."""
        v = np.asarray(values)
        self.check(v, "values")
        dtype = np.result_type(v.dtype, np.float32) if np.isnan(fill) else v.dtype
        out = np.full(v.shape[:-1] + self.mask.shape, fill, dtype=dtype)
        out[..., self.mask] = v
        return np.moveaxis(out, (-3, -2, -1), (-1, -2, -3))

    def mask_volume(self, volume: Any) -> np.ndarray:
        """Volumes (..., i, j, k) in nibabel's order -> targets (..., n_targets) in pycortex's order."""
        v = np.asarray(volume)
        if v.shape[-3:] != self.shape:
            raise ValidationError(f"volume has shape {v.shape[-3:]}, space {self.name!r} has {self.shape}")
        return np.moveaxis(v, (-3, -2, -1), (-1, -2, -3))[..., self.mask]

    def to_nifti(self, values: Any):
        """A nibabel image of ``values`` (targets, or (n, targets) for a 4-D image), NaN outside."""
        import nibabel as nib

        vol = self.unmask(values)
        if vol.ndim == 4:
            vol = np.moveaxis(vol, 0, -1)
        return nib.Nifti1Image(np.asarray(vol, dtype=np.float32), self.affine)

    # -- surfaces --------------------------------------------------------------------
    def _need_surface(self, kind: str) -> tuple[str, str]:
        if kind not in self.surfaces:
            base = Path(self.xfm_file).parents[2] / "surfaces" if self.xfm_file else "surfaces/"
            raise DataNotFoundError(
                f"subject {self.subject}: no {kind}_lh / {kind}_rh surface (.gii or .npz) in {base}.{_sp(self.hint)}"
            )
        return self.surfaces[kind]

    def mesh(self, kind: str = "wm") -> dict[str, Mesh]:
        """``{"left": Mesh, "right": Mesh}`` of a pycortex surface (``wm``, ``pia``,
        ``inflated``, ``flat``, or ``fiducial`` = the mean of ``wm`` and ``pia``)."""
        if kind == "fiducial":
            w, p = self.mesh("wm"), self.mesh("pia")
            return {h: Mesh((w[h].coords + p[h].coords) / 2, w[h].faces) for h in w}
        lh, rh = self._need_surface(kind)
        out = {"left": _mesh(lh), "right": _mesh(rh)}
        ref = self.n_vertices_per_hemi()
        for (_, hemi), path in zip(_HEMIS, (lh, rh)):
            if len(out[hemi].coords) != ref[hemi][0]:
                raise ValidationError(
                    f"{path}: {len(out[hemi].coords)} vertices but {ref[hemi][1]} has {ref[hemi][0]}: "
                    f"the {kind} and wm surfaces of {self.subject} must share their vertices"
                )
        return out

    def n_vertices_per_hemi(self) -> dict[str, tuple[int, str]]:
        """{"left": (n, file), "right": (n, file)} of the white-matter surface."""
        lh, rh = self._need_surface("wm")
        return {"left": (len(_mesh(lh).coords), lh), "right": (len(_mesh(rh).coords), rh)}

    @property
    def n_vertices(self) -> int:
        """Vertices of the subject's surface, both hemispheres."""
        n = self.n_vertices_per_hemi()
        return n["left"][0] + n["right"][0]

    def hemi_of_vertices(self) -> np.ndarray:
        n = self.n_vertices_per_hemi()
        return np.array(["L"] * n["left"][0] + ["R"] * n["right"][0])

    def curvature(self) -> np.ndarray:
        """Per-vertex curvature (left then right), pycortex's sign (positive on gyri)."""
        if self.curvature_file is None:
            raise DataNotFoundError(f"subject {self.subject}: no surface-info/curvature.npz.{_sp(self.hint)}")
        left, right = read_curvature(self.curvature_file)
        n = self.n_vertices_per_hemi()
        for arr, hemi in ((left, "left"), (right, "right")):
            if len(arr) != n[hemi][0]:
                raise ValidationError(
                    f"{self.curvature_file}: {hemi} has {len(arr)} values but {n[hemi][1]} has {n[hemi][0]} vertices"
                )
        return np.concatenate([left, right])

    def sphere(self) -> dict[str, Mesh]:
        """The subject's FreeSurfer ``?h.sphere.reg`` meshes."""
        if self.spheres is None:
            raise DataNotFoundError(
                f"subject {self.subject} cannot be projected to fsaverage: {self.no_sphere or 'no sphere.reg'}. "
                "Its maps on its own surface and its own flatmap work (to_surface, subject_flatmap)."
            )
        out = {"left": _mesh(self.spheres[0]), "right": _mesh(self.spheres[1])}
        n = self.n_vertices_per_hemi()
        for path, hemi in zip(self.spheres, ("left", "right")):
            if len(out[hemi].coords) != n[hemi][0]:
                raise ValidationError(
                    f"{path}: {len(out[hemi].coords)} vertices but {n[hemi][1]} has {n[hemi][0]}: this sphere.reg "
                    f"is not of {self.subject}'s surfaces (pycortex imports them from FreeSurfer, vertex for vertex)"
                )
        return out

    @property
    def can_project(self) -> bool:
        """True when the subject has a sphere.reg (fsaverage projection possible)."""
        return self.spheres is not None

    # -- maps ------------------------------------------------------------------------
    def _volume_key(self, n_samples: int) -> dict[str, Any]:
        wm, pia = self._need_surface("wm"), self._need_surface("pia")
        return {
            "files": [_file_digest(p) for p in (*wm, *pia, self.xfm_file, self.mask_file, self.reference)],
            "n_samples": int(n_samples),
        }

    def surface_map(self, n_samples: int = 16):
        """Sparse (subject vertices x targets) volume -> surface map (:func:`line_mapper`), cached."""
        def build():
            w, p = self.mesh("wm"), self.mesh("pia")
            white = np.vstack([w["left"].coords, w["right"].coords])
            pial = np.vstack([p["left"].coords, p["right"].coords])
            log.info("subject %s: building the volume -> surface map (%d vertices, %d voxels)",
                     self.subject, len(white), self.n_targets)
            return line_mapper(white, pial, self.coord, self.mask, n_samples)

        return _cached("volume_to_surface", self._volume_key(n_samples), build)

    def fsaverage_map(self, to: str = "fsaverage5", n_samples: int = 16):
        """Sparse (fsaverage vertices x targets) map, volume -> subject surface -> ``to``, cached."""
        import scipy.sparse as sp

        level = surface_space_name(to)
        sph = self.sphere()
        key = self._volume_key(n_samples)
        key.update(to=level, spheres=[_file_digest(p) for p in self.spheres], nilearn=_nilearn_version())

        def build():
            target = load_mesh(level, "sphere")
            blocks = [sphere_mapper(sph[h].coords, target[h].coords) for h in ("left", "right")]
            S = sp.block_diag(blocks, format="csr")
            return _normalise_rows(S @ self.surface_map(n_samples))

        return _cached("volume_to_" + level, key, build)

    def to_surface(self, values: Any, n_samples: int = 16) -> np.ndarray:
        """Targets (..., n_targets) -> the subject's vertices (..., n_vertices), left then right.

        NaN where a vertex's line through the cortex meets no masked voxel."""
        self.check(np.asarray(values), "values")
        return apply_mapper(self.surface_map(n_samples), values)

    def to_fsaverage(self, values: Any, to: str = "fsaverage5", n_samples: int = 16) -> np.ndarray:
        """Targets (..., n_targets) -> fsaverage vertices (..., 2 x vertices per hemisphere)."""
        self.check(np.asarray(values), "values")
        return apply_mapper(self.fsaverage_map(to, n_samples), values)

    def labels_from_fsaverage(self, labels: Any, to: str = "fsaverage5", n_samples: int = 16) -> np.ndarray:
        """Integer labels of ``to``'s vertices (an fsaverage atlas) -> one label per voxel.

        The same map as :meth:`to_fsaverage`, read backwards: voxel ``j`` feeds fsaverage
        vertex ``v`` with weight ``M[v, j]``; it takes the label carrying the most of its
        weight, label 0 (unlabelled, the medial wall) included, so a voxel that mostly
        feeds vertices outside every ROI stays 0, and so does a voxel that feeds none.
        Ties go to the smaller label (0 first).
        """
        import scipy.sparse as sp

        lab = np.asarray(labels)
        M = self.fsaverage_map(to, n_samples)
        if lab.ndim != 1 or lab.shape[0] != M.shape[0]:
            raise ValidationError(
                f"labels have shape {lab.shape}, but {surface_space_name(to)} has {M.shape[0]} vertices")
        codes, idx = np.unique(lab.astype(np.int64), return_inverse=True)
        onehot = sp.csr_matrix((np.ones(lab.size), (np.arange(lab.size), idx)), shape=(lab.size, codes.size))
        W = sp.csr_matrix(M.T @ onehot)  # voxels x codes: weight each voxel gives each label
        best = np.asarray(W.argmax(axis=1)).ravel()
        out = codes[best]
        fed = np.diff(W.indptr) > 0
        return np.where(fed, out, 0).astype(np.int64)

    def __repr__(self) -> str:
        extra = "sphere.reg" if self.spheres else "no sphere.reg"
        return f"SubjectSpace({self.name!r}, {self.n_targets} voxels, {self.shape}, surfaces {sorted(self.surfaces)}, {extra})"


def _sp(hint: str) -> str:
    return f" {hint}" if hint else ""


def _nilearn_version() -> str:
    try:
        from importlib.metadata import version

        return version("nilearn")
    except Exception:  # pragma: no cover
        return "unknown"


def fsaverage_size(to: str) -> int:
    """Vertices of ``to`` in both hemispheres."""
    return 2 * FSAVERAGE_SIZES[surface_space_name(to)]


def subject_spaces(dataset_or_spaces: Any, subjects: Sequence[str]) -> dict[str, Space]:
    """``{subject: Space}`` from a :class:`~brainalign.datasets.base.Dataset`, a mapping or one space."""
    if isinstance(dataset_or_spaces, Space):
        return {s: dataset_or_spaces for s in subjects}
    if isinstance(dataset_or_spaces, Mapping):
        missing = [s for s in subjects if s not in dataset_or_spaces]
        if missing:
            raise ValidationError(f"no space given for subjects {missing}")
        return {s: dataset_or_spaces[s] for s in subjects}
    if hasattr(dataset_or_spaces, "space"):
        try:
            return {s: dataset_or_spaces.space(s) for s in subjects}
        except KeyError as exc:
            raise ValidationError(f"the results' subjects are not all in the dataset: {exc.args[0]}") from None
    raise ValidationError(f"give a dataset, a SubjectSpace or {{subject: space}}, got {type(dataset_or_spaces).__name__}")
