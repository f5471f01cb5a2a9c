"""Results on subjects' voxels -> one fsaverage surface shared by all subjects.

:func:`project` takes encoding or sweep results whose ``target`` dimension holds each
subject's masked voxels (LeBel 2023: NaN-padded to the largest subject) and returns the
same results on fsaverage vertices (left then right hemisphere), ``attrs["space"]`` set to
the level, so that everything written for fsaverage data (ROI aggregation with every
surface atlas, subject means, flatmaps) applies to them unchanged::

    fs5 = ba.surfaces.project(res, ds, to="fsaverage5")
    curves = ba.rois.aggregate(fs5, atlas="language")
    ba.plotting.flatmap(fs5.score.sel(layer=6).mean("subject"), out="map.png")

For one subject's array (e.g. inside a sweep task), use
``dataset.space(subject).to_fsaverage(values, to)`` (values ``(..., n_voxels)``).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from ..errors import ValidationError
from ..stimulus import FSAVERAGE_SIZES
from .meshes import surface_space_name
from .subject import SubjectSpace, subject_spaces

__all__ = ["project", "project_array", "describe"]

log = logging.getLogger(__name__)


def project_array(values: Any, space: Any, to: str = "fsaverage5", *, n_samples: int = 16) -> np.ndarray:
    """One subject's ``(..., n_voxels)`` array -> ``(..., 2 x vertices of to)`` on fsaverage.

    ``space`` is the subject's :class:`~brainalign.surfaces.subject.SubjectSpace`
    (``dataset.space(subject)``). Values beyond the subject's voxel count (NaN padding of
    a multi-subject result) are dropped; NaN inputs are left out of the averages.
    """
    sp = _check_space(space, getattr(space, "name", "?"))
    arr = np.asarray(values)
    n = sp.n_targets
    if arr.shape[-1] < n:
        raise ValidationError(f"values have {arr.shape[-1]} targets but subject {sp.name} has {n} voxels")
    pad = arr[..., n:]
    if arr.shape[-1] > n and (pad.any() if pad.dtype == bool else np.isfinite(pad.astype(np.float64)).any()):
        raise ValidationError(
            f"values have {arr.shape[-1]} targets, subject {sp.name} has {n} voxels, and the extra ones are not "
            "NaN padding: these are not this subject's voxels"
        )
    return sp.to_fsaverage(arr[..., :n], to, n_samples=n_samples)


def describe(to: str = "fsaverage5", n_samples: int = 16) -> str:
    """How :func:`project` maps voxels to ``to``, in words (for results' attributes)."""
    return (
        f"subject voxels -> subject surface (mean of the masked voxels met by {n_samples} points between the "
        "white and pial surfaces, pycortex's coord transform) -> " + surface_space_name(to) +
        " (FreeSurfer sphere.reg, nearest neighbour forward and reverse); NaN where no voxel reaches; "
        "pvalue: twice the weighted mean of the voxels' p-values, capped at 1 (valid under any dependence); "
        "significant: where at least half the weight is significant (each subject's FDR over its voxels)"
    )


def _check_space(space: Any, subject: str) -> SubjectSpace:
    if isinstance(space, SubjectSpace):
        return space
    if getattr(space, "is_surface", False):
        raise ValidationError(f"subject {subject}: already on surface {space.name}; nothing to project")
    raise ValidationError(
        f"subject {subject}: its space {space!r} has no surfaces (a placeholder volume). For lebel2023 the "
        "subject's pycortex database (derivative/pycortex-db/<SUBJ>) and FreeSurfer folder are needed: "
        "`brainalign datasets check lebel2023 ROOT` says what is missing and prints the `datalad get` line"
    )


def project(
    results,
    dataset,
    to: str = "fsaverage5",
    *,
    subjects: Sequence[str] | None = None,
    variables: Sequence[str] | None = None,
    n_samples: int = 16,
):
    """Project every target-level variable of ``results`` from subject voxels to fsaverage.

    Parameters
    ----------
    results : xarray.Dataset or DataArray
        With a ``target`` dimension (the subjects' masked voxels, each subject's first
        ``n_voxels`` entries) and a ``subject`` dimension (or a single subject, see
        ``subjects``); any other dimensions (``checkpoint``, ``layer``...) are kept.
    dataset : Dataset, SubjectSpace, or {subject: SubjectSpace}
        Where each subject's voxels are (``dataset.space(subject)``).
    to : str
        ``"fsaverage5"`` (offline) or another fsaverage level whose sphere is in
        nilearn's data home.
    subjects : list of str, optional
        Subjects to keep (default all of ``results``'s). Needed when ``results`` has no
        ``subject`` dimension and ``dataset`` has several subjects.
    variables : list of str, optional
        Which variables to project (default: every variable with a ``target`` dimension).
        Variables without ``target`` (``roi_score``...) are kept as they are.
    n_samples : int
        Points per vertex between white and pial surfaces.

    Returns
    -------
    xarray.Dataset or DataArray
        ``target`` is now the fsaverage vertices (left then right), with a ``hemi``
        coordinate; ``attrs["space"] = to``. Float variables are NaN-aware means of the
        voxels mapped to each vertex; boolean ones (``significant``) are True where at
        least half of that weight is True. Vertices no voxel reaches are NaN (False).
        A projected ``pvalue`` is twice the weighted mean of the voxels' p-values
        (capped at 1): twice an average of p-values is itself a p-value whatever their
        dependence (Rüschendorf 1982; Vovk & Wang 2020, Biometrika 107:791), so a
        vertex's p-value stays valid, conservatively, for the mean of its voxels.
    """
    import xarray as xr

    level = surface_space_name(to)
    n_out = 2 * FSAVERAGE_SIZES[level]
    is_array = isinstance(results, xr.DataArray)
    ds = results.to_dataset(name=results.name or "score") if is_array else results
    if "target" not in ds.dims:
        raise ValidationError("project: results need a 'target' dimension (the subjects' voxels)")
    has_subject = "subject" in ds.dims
    if has_subject:
        subs = [str(s) for s in ds["subject"].values]
        if subjects is not None:
            unknown = [s for s in subjects if s not in subs]
            if unknown:
                raise ValidationError(f"project: subjects {unknown} are not in the results ({subs})")
            ds = ds.sel(subject=list(subjects))
            subs = list(subjects)
    else:
        if subjects is not None and len(subjects) == 1:
            subs = list(subjects)
        elif isinstance(dataset, SubjectSpace):
            subs = [dataset.subject or dataset.name]
        elif hasattr(dataset, "subjects") and len(dataset.subjects) == 1:
            subs = list(dataset.subjects)
        else:
            raise ValidationError("project: results have no 'subject' dimension; say whose they are with subjects=[...]")
    spaces = subject_spaces(dataset, subs) if not isinstance(dataset, SubjectSpace) else {subs[0]: dataset}
    checked = {s: _check_space(spaces[s], s) for s in subs}
    names = list(variables) if variables is not None else [v for v in ds.data_vars if "target" in ds[v].dims]
    for v in names:
        if v not in ds.data_vars:
            raise ValidationError(f"project: results have no variable {v!r}")
        if "target" not in ds[v].dims:
            raise ValidationError(f"project: variable {v!r} has no 'target' dimension")
    out_vars = {}
    for v in names:
        da = ds[v]
        is_bool = da.dtype == bool
        if not (is_bool or np.issubdtype(da.dtype, np.number)):
            log.info("project: skipping non-numeric variable %s", v)
            continue
        dims = [d for d in da.dims if d != "target"] + ["target"]
        da = da.transpose(*dims)
        arr = np.asarray(da.values)
        arr = arr.astype(np.float32) if arr.dtype.kind in "iu" else arr
        if has_subject:
            si = dims.index("subject")
            parts = []
            for i, s in enumerate(subs):
                sub = np.take(arr, i, axis=si)
                parts.append(project_array(sub, checked[s], level, n_samples=n_samples))
            res = np.stack(parts, axis=si)
        else:
            res = project_array(arr, checked[subs[0]], level, n_samples=n_samples)
        if is_bool:
            res = np.nan_to_num(res, nan=0.0) >= 0.5
        elif v == "pvalue":
            res = np.minimum(2.0 * res, 1.0).astype(res.dtype, copy=False)  # a valid p-value (see docstring)
        coords = {d: da.coords[d] for d in dims if d != "target" and d in da.coords}
        out_vars[v] = xr.DataArray(res, dims=dims, coords=coords, attrs=dict(da.attrs))
    keep = {v: ds[v] for v in ds.data_vars if "target" not in ds[v].dims}
    target_coords = [c for c in ds.coords if "target" in ds[c].dims]
    base = ds.drop_vars(list(ds.data_vars) + target_coords)
    out = base.assign(**keep, **out_vars)
    hemi = np.array(["L"] * (n_out // 2) + ["R"] * (n_out // 2))
    out = out.assign_coords(target=np.arange(n_out, dtype=np.int64), hemi=("target", hemi))
    out.attrs = dict(ds.attrs)
    src = sorted({checked[s].name for s in subs})
    out.attrs.update(space=level, projected_from=", ".join(src), projection=describe(level, n_samples))
    if is_array:
        name = results.name or "score"
        da = out[name]
        da.attrs = dict(results.attrs, **{k: out.attrs[k] for k in ("space", "projected_from", "projection")})
        return da
    return out
