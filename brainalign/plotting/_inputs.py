"""What the figure functions accept, turned into what they draw: one place for each rule."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ValidationError

__all__ = ["as_dataarray", "colour_faces"]


def as_dataarray(obj: Any, var: str | None = None, *, what: str, default: str = "score",
                 prefer_mean: bool = False, carry_space: bool = False):
    """``obj`` as an ``xarray.DataArray`` and the name of the variable it was read from.

    A DataArray is returned as is (``var`` is ignored). From a Dataset the variable is
    ``var``, else the Dataset's ``attrs["var"]``, else ``default``; with ``prefer_mean``
    its subject mean ``<var>_mean`` when the Dataset has one (as
    :func:`brainalign.rois.aggregate` writes it). With ``carry_space`` the Dataset's
    ``attrs["space"]`` goes onto the DataArray when that has none. Anything else is a
    :class:`~brainalign.errors.ValidationError` naming ``what``.
    """
    import xarray as xr

    if isinstance(obj, xr.DataArray):
        return obj, var
    if not isinstance(obj, xr.Dataset):
        raise ValidationError(f"{what}: give an xarray DataArray or Dataset, got {type(obj).__name__}")
    var = var or obj.attrs.get("var") or default
    name = f"{var}_mean" if prefer_mean and f"{var}_mean" in obj else var
    if name not in obj:
        raise ValidationError(f"{what} has no variable {name!r}; it has {', '.join(map(str, obj.data_vars))}")
    da = obj[name]
    if carry_space and "space" not in da.attrs and obj.attrs.get("space") is not None:
        da = da.assign_attrs(space=obj.attrs["space"])
    return da, var


def colour_faces(faces: np.ndarray, values: np.ndarray, visible: np.ndarray, background: np.ndarray,
                 cmap, norm) -> np.ndarray:
    """RGBA per face: the colour of the mean of its visible vertices' values where at least
    two of its three vertices are visible, else its ``background`` (one RGBA per face;
    not modified)."""
    fvis = visible[faces]
    count = fvis.sum(axis=1)
    show = count >= 2
    fval = np.where(fvis, values[faces], 0.0).sum(axis=1) / np.maximum(count, 1)
    out = np.array(background, copy=True)
    if show.any():
        out[show] = cmap(norm(fval[show]))
    return out
