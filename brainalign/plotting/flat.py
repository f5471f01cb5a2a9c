"""Cortical flatmaps, inflated views and training movies, drawn with plain matplotlib.

Both hemispheres are drawn side by side on the flat patch that nilearn ships for
fsaverage5 (left hemisphere on the left, occipital poles toward the middle), over a
sulcal-depth background; the medial wall is cut out of the patch and so never shown.
Each triangle is one polygon of a single :class:`~matplotlib.collections.PolyCollection`
coloured by the mean of its vertices: as fast as nilearn's ``plot_surf`` on the same flat
mesh (``benchmarks/bench_plotting.py``), with both hemispheres, outlines and one colour bar
in one 2-D axes, and a movie that rasterises the faces once and then only looks colours up. Finer data (fsaverage6/7) are shown through the nested
fsaverage5 vertices; coarser data are carried up by nearest neighbour.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._io import atomic_path
from ..errors import DataNotFoundError, ExternalToolError, MissingDependencyError, ValidationError
from ..stimulus import FSAVERAGE_SIZES, Space
from ..surfaces.meshes import load_mesh, medial_wall, resample, space_of_size, sulcal_depth, surface_space_name
from ._inputs import as_dataarray, colour_faces
from .style import PAPER_RC, paper_style

__all__ = ["flatmap", "surface_views", "flatmap_movie", "flat_coordinates", "FlatmapFigure", "save_figure",
           "subject_flatmap"]

log = logging.getLogger(__name__)

_N5 = FSAVERAGE_SIZES["fsaverage5"]
_GAP = 25.0  # mm between the hemispheres in the layout
_FORMATS = (".png", ".svg", ".pdf", ".jpg", ".jpeg", ".tif", ".tiff")


# ----------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class _Layout:
    xy: np.ndarray  # (2N, 2) flat coordinates, right hemisphere shifted right
    faces: np.ndarray  # (F, 3) into xy
    bg: np.ndarray  # (F, 4) RGBA background per face
    edge_vertices: np.ndarray  # (E, 2) interior edges
    edge_faces: np.ndarray  # (E, 2) the two faces of each interior edge
    hemi_x: tuple[float, float]  # x centre of each hemisphere


def _background(sulc: np.ndarray) -> np.ndarray:
    """Grey per value: gyri light, sulci dark (FreeSurfer sulc > 0 in sulci)."""
    s = np.asarray(sulc, dtype=np.float64)
    scale = np.nanstd(s) or 1.0
    grey = 0.78 - 0.30 * (np.tanh(1.5 * s / scale) + 1) / 2
    rgba = np.empty((len(s), 4))
    rgba[:, :3] = grey[:, None]
    rgba[:, 3] = 1.0
    return rgba


@functools.lru_cache(maxsize=2)
def _layout() -> _Layout:
    flat = load_mesh("fsaverage5", "flat")
    left, right = flat["left"], flat["right"]
    lxy = np.asarray(left.coords[:, :2], dtype=np.float64)
    rxy = np.asarray(right.coords[:, :2], dtype=np.float64).copy()
    lf, rf = np.asarray(left.faces), np.asarray(right.faces)
    l_used, r_used = np.unique(lf), np.unique(rf)
    shift = lxy[l_used, 0].max() - rxy[r_used, 0].min() + _GAP
    rxy[:, 0] += shift
    xy = np.vstack([lxy, rxy])
    faces = np.vstack([lf, rf + _N5])
    sulc = sulcal_depth("fsaverage5")
    bg = _background(sulc[faces].mean(axis=1))
    # interior edges and their two faces (for ROI outlines)
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    fidx = np.tile(np.arange(len(faces)), 3)
    e = np.sort(e, axis=1)
    key = e[:, 0] * (2 * _N5) + e[:, 1]
    order = np.argsort(key, kind="stable")
    key, e, fidx = key[order], e[order], fidx[order]
    pair = np.flatnonzero(key[1:] == key[:-1])
    hemi_x = (float(lxy[l_used, 0].mean()), float(rxy[r_used, 0].mean()))
    for a in (xy, faces, bg):
        a.setflags(write=False)
    return _Layout(xy, faces, bg, e[pair], np.c_[fidx[pair], fidx[pair + 1]], hemi_x)


def flat_coordinates() -> np.ndarray:
    """(20484, 2) positions of the fsaverage5 vertices in :func:`flatmap`'s data coordinates
    (left then right hemisphere; medial-wall vertices have positions but are not drawn)."""
    return _layout().xy


# ----------------------------------------------------------------------------- inputs


def _as_vector(values: Any, what: str = "values") -> tuple[np.ndarray, str | None, str | None]:
    """(1-D float array, space attr, name) from an array, DataArray or Dataset."""
    name = space = None
    try:
        import xarray as xr
    except ImportError:  # pragma: no cover
        xr = None
    if xr is not None and isinstance(values, xr.Dataset):
        values, _ = as_dataarray(values, "score", what=f"{what} (a Dataset is read through its 'score')",
                                 carry_space=True)
    if xr is not None and isinstance(values, xr.DataArray):
        space = values.attrs.get("space")
        name = values.attrs.get("long_name") or values.name
        extra = {d: n for d, n in values.sizes.items() if d != "target" and n > 1}
        if extra:
            raise ValidationError(
                f"{what}: one map at a time; select the other dimensions first (e.g. .sel(layer=..., subject=...)); "
                f"left over: {extra}"
            )
        values = values.squeeze(drop=True).values
    arr = np.asarray(values)
    if arr.dtype == bool:
        arr = arr.astype(np.float64)
    arr = np.asarray(arr, dtype=np.float64).ravel() if arr.ndim <= 1 else arr
    if arr.ndim != 1:
        raise ValidationError(f"{what}: need one value per target (1-D), got shape {arr.shape}")
    return arr, space, name


_VOXELS_HINT = (
    "project them to fsaverage first (ba.surfaces.project(results, dataset), or flatmap(..., dataset=ds) for one "
    "subject's map), or draw them on the subject's own surface with flatmap(values, space=dataset.space(subject))"
)


def _to_fs5(arr: np.ndarray, space: "str | Space | None", what: str) -> tuple[np.ndarray, str]:
    """Values on fsaverage5 (for drawing) and the name of the space they came from."""
    if isinstance(space, Space) and not space.is_surface:
        raise ValidationError(f"{what}: volume data are drawn with pycortex (see flatmap's pycortex argument)")
    name = space.name if isinstance(space, Space) else space
    if name is not None and name != "fsaverage" and name not in FSAVERAGE_SIZES:
        raise ValidationError(f"{what}: {arr.shape[0]} values on {name!r}, not an fsaverage surface (e.g. a LeBel "
                              f"subject's voxels): {_VOXELS_HINT}")
    if name is None and space_of_size_or_none(arr.shape[0]) is None:
        raise ValidationError(f"{what}: {arr.shape[0]} values match no fsaverage surface; if they are a subject's "
                              f"voxels, {_VOXELS_HINT}")
    src = surface_space_name(space) if space is not None else space_of_size(arr.shape[0])
    if arr.shape[0] != 2 * FSAVERAGE_SIZES[src]:
        raise ValidationError(f"{what}: {arr.shape[0]} values but {src} has {2 * FSAVERAGE_SIZES[src]} vertices")
    if src != "fsaverage5":
        arr = resample(arr, src, "fsaverage5")
    return arr, src


def space_of_size_or_none(n: int) -> str | None:
    return next((k for k, v in FSAVERAGE_SIZES.items() if 2 * v == n), None)


def _from_voxels(values: Any, dataset: Any) -> tuple[np.ndarray, str | None]:
    """One subject's voxel map (its ``subject`` coordinate, or the dataset's only subject)
    projected to fsaverage5; fsaverage values pass through."""
    from ..surfaces.project import project_array
    from ..surfaces.subject import SubjectSpace, subject_spaces

    v, vspace, name = _as_vector(values)
    if vspace is not None and (str(vspace) == "fsaverage" or str(vspace) in FSAVERAGE_SIZES):
        return _to_fs5(v, vspace, "values")[0], name
    subject = None
    coord = getattr(values, "coords", {}).get("subject") if hasattr(values, "coords") else None
    if coord is not None and np.ndim(coord.values) == 0:
        subject = str(coord.values)
    elif isinstance(dataset, SubjectSpace):
        subject = dataset.subject
    elif len(getattr(dataset, "subjects", ())) == 1:
        subject = dataset.subjects[0]
    if subject is None:
        raise ValidationError("flatmap(dataset=...): cannot tell whose voxels these are; select one subject first "
                              "(results.score.sel(layer=..., subject='UTS01')): a mean over subjects' voxels has no "
                              "place on the cortex until each subject is projected (ba.surfaces.project)")
    sp = dataset if isinstance(dataset, SubjectSpace) else subject_spaces(dataset, [subject])[subject]
    return project_array(v, sp, "fsaverage5").astype(np.float64), name


def _labels_fs5(rois: Any) -> tuple[np.ndarray, dict[int, str]]:
    from ..surfaces.atlases import Atlas, load_atlas

    if isinstance(rois, (str, os.PathLike, Atlas)):
        atlas = load_atlas(rois, "fsaverage5") if not isinstance(rois, Atlas) else rois
        if atlas.space != "fsaverage5":
            labels = resample(atlas.labels, atlas.space, "fsaverage5")
            return np.asarray(labels), atlas.names
        return np.asarray(atlas.labels), atlas.names
    arr = np.asarray(rois)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValidationError("rois: give an atlas name, an Atlas, or integer labels per vertex")
    arr, _ = _to_fs5(arr.astype(np.float64), None, "rois")
    arr = arr.astype(np.int64)
    return arr, {int(k): str(k) for k in np.unique(arr) if k > 0}


def _limits(v: np.ndarray, vmin, vmax, cmap) -> tuple[float, float, Any]:
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        finite = np.zeros(1)
    signed = finite.min() < 0 < finite.max()
    if vmin is None and vmax is None:
        if signed:
            lim = float(np.percentile(np.abs(finite), 99)) or 1.0
            vmin, vmax = -lim, lim
        else:
            lo, hi = float(np.percentile(finite, 1)), float(np.percentile(finite, 99))
            vmin, vmax = (0.0, hi) if lo >= 0 else (lo, hi)
    elif vmin is None:
        vmin = -abs(float(vmax)) if signed else float(min(finite.min(), vmax))
    elif vmax is None:
        vmax = abs(float(vmin)) if signed and vmin < 0 else float(max(finite.max(), vmin))
    if vmax <= vmin:
        vmax = vmin + 1e-6
    if cmap is None:
        cmap = "RdBu_r" if vmin < 0 < vmax else "viridis"
    return float(vmin), float(vmax), cmap


def _visible(v: np.ndarray, threshold: float | None, mask: np.ndarray | None) -> np.ndarray:
    vis = np.isfinite(v)
    if threshold is not None:
        vis &= np.abs(np.where(vis, v, 0.0)) >= float(threshold)
    if mask is not None:
        vis &= mask
    vis &= ~medial_wall("fsaverage5")
    return vis


def _mask_fs5(mask: Any, what: str = "mask") -> np.ndarray | None:
    if mask is None:
        return None
    m, mspace, _ = _as_vector(mask, what)
    m, _ = _to_fs5(m, mspace, what)
    return np.nan_to_num(m) > 0.5


def _outline_segments(layout: _Layout, labels: np.ndarray) -> np.ndarray:
    fl = labels[layout.faces]
    face_label = np.where(fl[:, 0] == fl[:, 1], fl[:, 0], np.where(fl[:, 1] == fl[:, 2], fl[:, 1], fl[:, 2]))
    a, b = face_label[layout.edge_faces[:, 0]], face_label[layout.edge_faces[:, 1]]
    keep = (a != b) & (np.maximum(a, b) > 0)
    return layout.xy[layout.edge_vertices[keep]]


def save_figure(fig, out: "str | os.PathLike", dpi: float | None = None) -> Path:
    """Write ``fig`` atomically (temp file + rename) as PNG/SVG/PDF/JPG by ``out``'s suffix."""
    out = Path(out).expanduser()
    suffix = out.suffix.lower()
    if suffix not in _FORMATS:
        raise ValidationError(f"out={out}: unknown figure format {suffix!r}; use one of {', '.join(_FORMATS)}")
    if not out.parent.exists():
        raise ValidationError(f"out={out}: folder {out.parent} does not exist")
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=dpi or PAPER_RC["savefig.dpi"], format=suffix.lstrip(".").replace("jpg", "jpeg"),
                    bbox_inches="tight", pad_inches=0.05)
    log.info("wrote %s", out)
    return out


# ----------------------------------------------------------------------------- flatmap


class FlatmapFigure:
    """A flatmap figure that can be recoloured in place (used by :func:`flatmap_movie`).

    Attributes
    ----------
    figure : matplotlib.figure.Figure
    ax : the flatmap's Axes (data coordinates = :func:`flat_coordinates`)
    """

    def __init__(
        self,
        *,
        vmin: float,
        vmax: float,
        cmap: Any,
        label: str | None = None,
        title: str | None = None,
        rois: Any = None,
        roi_labels: bool | None = None,
        colorbar: bool = True,
        figsize: tuple[float, float] = (7.2, 3.0),
        ax=None,
    ) -> None:
        import matplotlib as mpl
        from matplotlib.collections import LineCollection, PolyCollection

        self.layout = layout = _layout()
        self.cmap = mpl.colormaps[cmap] if isinstance(cmap, str) else cmap
        self.norm = mpl.colors.Normalize(vmin=vmin, vmax=vmax)
        with paper_style():
            used = layout.xy[np.unique(layout.faces)]
            pad = 5.0
            xlim = (used[:, 0].min() - pad, used[:, 0].max() + pad)
            ylim = (used[:, 1].min() - pad, used[:, 1].max() + pad)
            if ax is None:
                fig, ax = _map_figure(xlim, ylim, figsize[0], colorbar, bool(title))
            else:
                fig = ax.figure
            ax.set_label("flatmap")
            self.collection = PolyCollection(
                layout.xy[layout.faces], facecolors=layout.bg, edgecolors="none", linewidths=0, antialiaseds=False
            )
            self.collection.set_rasterized(True)
            ax.add_collection(self.collection)
            ax.set_xlim(*xlim)
            ax.set_ylim(*ylim)
            ax.set_aspect("equal")
            ax.set_axis_off()
            ymin = used[:, 1].min()
            for x, h in zip(layout.hemi_x, ("L", "R")):
                ax.text(x, ymin - pad, h, ha="center", va="top", fontsize=9, fontweight="bold", color="0.3")
            if rois is not None:
                labels, names = _labels_fs5(rois)
                segs = _outline_segments(layout, labels)
                ax.add_collection(LineCollection(segs, colors="white", linewidths=0.7, zorder=3))
                ax.add_collection(LineCollection(segs, colors="black", linewidths=0.25, zorder=4))
                if roi_labels if roi_labels is not None else len(names) <= 40:
                    self._roi_text(ax, labels, names)
            self.title = ax.set_title(title or "", pad=2) if title else None
            if colorbar:
                fh = fig.get_figheight()
                cax = fig.add_axes((0.36, 0.42 / fh, 0.28, 0.09 / fh))
                cb = fig.colorbar(mpl.cm.ScalarMappable(norm=self.norm, cmap=self.cmap), cax=cax, orientation="horizontal")
                cb.set_label(label or "value")
                cb.outline.set_linewidth(0.5)
                self.colorbar = cb
            else:
                self.colorbar = None
            self.caption = fig.text(0.01, 0.01, "", ha="left", va="bottom", fontsize=9)
        self.figure = fig
        self.ax = ax

    @staticmethod
    def _roi_text(ax, labels: np.ndarray, names: dict[int, str]) -> None:
        xy = _layout().xy
        wall = medial_wall("fsaverage5")
        for code, nm in names.items():
            for lo, hi in ((0, _N5), (_N5, 2 * _N5)):
                idx = lo + np.flatnonzero((labels[lo:hi] == code) & ~wall[lo:hi])
                if len(idx) == 0:
                    continue
                centre = np.median(xy[idx], axis=0)
                p = xy[idx[np.argmin(((xy[idx] - centre) ** 2).sum(1))]]
                short = nm[2:] if nm[:2] in ("L_", "R_") else nm
                ax.text(p[0], p[1], short, fontsize=5, ha="center", va="center", color="black", zorder=5,
                        bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.6))

    def update(self, values: np.ndarray, *, threshold: float | None = None, mask: np.ndarray | None = None,
               caption: str | None = None) -> None:
        """Recolour with fsaverage5 ``values`` (and an fsaverage5 boolean ``mask``)."""
        vis = _visible(values, threshold, mask)
        self.collection.set_facecolor(colour_faces(self.layout.faces, values, vis, self.layout.bg, self.cmap,
                                                   self.norm))
        if caption is not None:
            self.caption.set_text(caption)

    def _face_ids(self, dpi: float) -> np.ndarray:
        """(H, W) index of the face drawn at each pixel (-1: none), rendered once per dpi
        by drawing every face in a colour that encodes its index."""
        cached = getattr(self, "_ids", None)
        if cached is not None and cached[0] == dpi:
            return cached[1]
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.collections import PolyCollection
        from matplotlib.figure import Figure

        fig = Figure(figsize=self.figure.get_size_inches(), dpi=dpi, facecolor="white")
        FigureCanvasAgg(fig)
        ax = fig.add_axes(self.ax.get_position(original=True).bounds)
        ax.set_xlim(self.ax.get_xlim())
        ax.set_ylim(self.ax.get_ylim())
        ax.set_aspect("equal")
        ax.set_axis_off()
        n = len(self.layout.faces)
        code = np.arange(1, n + 1)
        rgb = np.c_[code & 255, (code >> 8) & 255, (code >> 16) & 255] / 255.0
        ax.add_collection(PolyCollection(self.layout.xy[self.layout.faces], facecolors=rgb, edgecolors="none",
                                         linewidths=0, antialiaseds=False))
        fig.canvas.draw()
        buf = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(np.int64)
        ids = buf[..., 0] + (buf[..., 1] << 8) + (buf[..., 2] << 16) - 1
        ids[(ids < 0) | (ids >= n)] = -1
        self._ids = (dpi, ids)
        return ids

    def frame(self, values: np.ndarray, *, threshold: float | None = None, mask: np.ndarray | None = None,
              caption: str | None = None, dpi: float = 80) -> np.ndarray:
        """An (H, W, 3) uint8 frame for ``values`` without redrawing the polygons.

        The faces are rasterised once into an index image (:meth:`_face_ids`); each frame
        looks its face colours up through it and lays the rest of the figure (colour bar,
        captions, outlines) on top. The same picture as :meth:`to_rgb`, many times faster.
        """
        ids = self._face_ids(dpi)
        vis = _visible(values, threshold, mask)
        colours = colour_faces(self.layout.faces, values, vis, self.layout.bg, self.cmap, self.norm)
        lut = np.vstack([np.round(colours[:, :3] * 255), [[255, 255, 255]]]).astype(np.uint8)
        base = lut[ids]  # -1 -> the white row
        if caption is not None:
            self.caption.set_text(caption)
        self.collection.set_visible(False)
        alpha = self.figure.patch.get_alpha()
        self.figure.patch.set_alpha(0.0)
        try:
            self.figure.set_dpi(dpi)
            self.figure.canvas.draw()
            over = np.asarray(self.figure.canvas.buffer_rgba()).astype(np.float32)
        finally:
            self.collection.set_visible(True)
            self.figure.patch.set_alpha(alpha)
        if over.shape[:2] != base.shape[:2]:  # pragma: no cover - same size and dpi by construction
            raise RuntimeError("flatmap frame: overlay and face image differ in size")
        a = over[..., 3:4] / 255.0
        return np.round(over[..., :3] * a + base * (1 - a)).astype(np.uint8)

    def to_rgb(self, dpi: float = 100) -> np.ndarray:
        """Render to an (H, W, 3) uint8 image."""
        self.figure.set_dpi(dpi)
        self.figure.canvas.draw()
        return np.asarray(self.figure.canvas.buffer_rgba())[..., :3].copy()


def _map_figure(xlim, ylim, width: float, colorbar: bool, title: bool):
    """A figure ``width`` inches wide sized to the map's aspect (so the hemispheres fill
    it), with room below for a colour bar and above for a title; (figure, map axes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    map_h = width * (ylim[1] - ylim[0]) / (xlim[1] - xlim[0])
    bottom = 0.75 if colorbar else 0.25
    top = 0.3 if title else 0.05
    height = map_h + bottom + top
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.add_axes((0.0, bottom / height, 1.0, map_h / height))


def flatmap(
    values: Any,
    space: "str | Space | None" = None,
    threshold: float | None = None,
    mask: Any = None,
    cmap: Any = None,
    vmin: float | None = None,
    vmax: float | None = None,
    rois: Any = None,
    title: str | None = None,
    out: "str | os.PathLike | None" = None,
    *,
    label: str | None = None,
    roi_labels: bool | None = None,
    colorbar: bool = True,
    figsize: tuple[float, float] = (7.2, 3.0),
    dpi: float | None = 150,
    ax=None,
    pycortex: tuple[str, str] | None = None,
    dataset: Any = None,
):
    """Draw one value per vertex on the flattened cortex, both hemispheres side by side.

    Parameters
    ----------
    values : array (n_vertices,), xarray.DataArray or Dataset
        Left hemisphere then right, on an fsaverage level (fsaverage5 drawn directly;
        fsaverage6/7 through their nested fsaverage5 vertices). A DataArray may carry
        ``attrs["space"]`` and singleton dims; a Dataset is read through ``score``.
    space : str or Space, optional
        The values' space; guessed from their number when omitted. A volume
        :class:`~brainalign.stimulus.Space` needs ``pycortex=(subject, xfm)``.
    threshold : float, optional
        Hide values whose magnitude is below this.
    mask : bool array, optional
        Show only where True (e.g. ``results.significant``).
    cmap : str or Colormap, optional
        Default ``RdBu_r`` (symmetric limits) for signed data, ``viridis`` otherwise.
    vmin, vmax : float, optional
        Colour limits (default: the 99th percentile of the magnitudes).
    rois : str, Atlas or int labels, optional
        Draw ROI outlines (and their names when there are at most 40).
    title : str, optional
    out : path, optional
        Write PNG/SVG/PDF (by suffix), atomically.
    label : str, optional
        Colour-bar label (default: the DataArray's name, else "value").
    pycortex : (subject, xfm), optional
        For volume data: draw with pycortex's quickflat from the subject's database.
        Without it, a :class:`~brainalign.surfaces.subject.SubjectSpace` (a LeBel 2023
        subject read with its pycortex files) is drawn by :func:`subject_flatmap`, no
        pycortex needed.
    dataset : Dataset, SubjectSpace or {subject: space}, optional
        For one LeBel 2023 subject's voxel map (a DataArray with a scalar ``subject``
        coordinate, or the dataset's only subject): project it to fsaverage5 first
        (:func:`~brainalign.surfaces.project_array`) and draw it there. Without it,
        voxel values raise, saying how to project them.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if dataset is not None and space is None and pycortex is None:
        values, name = _from_voxels(values, dataset)
        if label is None:
            label = name
        space = "fsaverage5"
    if pycortex is None and _is_subject_space(space):
        return subject_flatmap(values, space, threshold=threshold, mask=mask, cmap=cmap, vmin=vmin, vmax=vmax,
                               title=title, out=out, label=label, colorbar=colorbar, dpi=dpi)
    if pycortex is not None or (isinstance(space, Space) and not space.is_surface):
        return _pycortex_flatmap(values, space, pycortex, cmap=cmap, vmin=vmin, vmax=vmax, title=title, out=out)
    v, vspace, name = _as_vector(values)
    v, _src = _to_fs5(v, space if space is not None else vspace, "values")
    m = _mask_fs5(mask)
    vis = _visible(v, threshold, m)
    shown = np.where(vis, v, np.nan)
    lo, hi, cmap = _limits(shown if np.isfinite(shown).any() else v, vmin, vmax, cmap)
    fm = FlatmapFigure(vmin=lo, vmax=hi, cmap=cmap, label=label or name, title=title, rois=rois,
                       roi_labels=roi_labels, colorbar=colorbar, figsize=figsize, ax=ax)
    fm.update(v, threshold=threshold, mask=m)
    fig = fm.figure
    if out is not None:
        save_figure(fig, out, dpi=dpi)
    return fig


def _pycortex_flatmap(values, space, pycortex, *, cmap, vmin, vmax, title, out):
    try:
        import cortex
    except ImportError as exc:
        raise MissingDependencyError(
            "volume data (e.g. LeBel 2023 voxels) are flattened with pycortex: pip install pycortex "
            "(or 'brainalign[pycortex]'), point pycortex's filestore at the subject's database "
            "(LeBel 2023: derivative/pycortex-db from ds003020), then call "
            "flatmap(values, space=dataset.space(subject), pycortex=('UTS01', 'UTS01_auto')). "
            "Surface data (fsaverage) need none of this."
        ) from exc
    if not isinstance(space, Space) or space.is_surface or pycortex is None:
        raise ValidationError("pycortex flatmaps need a volume Space and pycortex=(subject, xfm)")
    subject, xfm = pycortex
    v, _, _ = _as_vector(values)
    space.check(v, "values")
    vol = np.full(space.mask.shape, np.nan, dtype=np.float32)
    vol[space.mask] = v
    lo, hi, cmap = _limits(v, vmin, vmax, cmap)
    fig = cortex.quickflat.make_figure(cortex.Volume(vol, subject, xfm, vmin=lo, vmax=hi, cmap=cmap), with_curvature=True)
    if title:
        fig.suptitle(title)
    if out is not None:
        save_figure(fig, out)
    return fig


def _is_subject_space(space: Any) -> bool:
    from ..surfaces.subject import SubjectSpace

    return isinstance(space, SubjectSpace)


def subject_flatmap(
    values: Any,
    space: Any,
    threshold: float | None = None,
    mask: Any = None,
    cmap: Any = None,
    vmin: float | None = None,
    vmax: float | None = None,
    title: str | None = None,
    out: "str | os.PathLike | None" = None,
    *,
    label: str | None = None,
    colorbar: bool = True,
    figsize: tuple[float, float] = (7.2, 3.0),
    dpi: float | None = 150,
    n_samples: int = 16,
):
    """Draw values on a subject's own flat cortex (pycortex's ``flat_{lh,rh}``), curvature underneath.

    Parameters
    ----------
    values : array or xarray.DataArray
        Either one value per voxel of ``space`` (mapped to the subject's vertices with
        :meth:`~brainalign.surfaces.subject.SubjectSpace.to_surface`) or one value per
        subject vertex (left then right). NaN (voxels outside the mask) is not drawn.
    space : SubjectSpace
        The subject's space (``dataset.space("UTS01")``), with its ``flat`` surfaces.
    threshold, mask, cmap, vmin, vmax, title, out, label, colorbar, dpi
        As in :func:`flatmap`; ``mask`` is one boolean per voxel or per vertex.

    Notes
    -----
    The hemispheres are placed side by side as pycortex's quickflat places them (left
    hemisphere's right edge and right hemisphere's left edge at the middle, plus a gap).
    Only the faces of the flat patch are drawn (the cut medial wall is not). The grey
    underlay is the subject's curvature (``surface-info/curvature.npz``, pycortex's sign:
    gyri light, sulci dark); without that file it is plain grey.
    """
    import matplotlib as mpl
    from matplotlib.collections import PolyCollection

    if not _is_subject_space(space):
        raise ValidationError("subject_flatmap needs the subject's SubjectSpace (dataset.space(subject)) with its "
                              "pycortex flat surfaces")
    v, _, name = _as_vector(values)
    n_vert = space.n_vertices

    def on_vertices(arr: np.ndarray, what: str) -> np.ndarray:
        if arr.shape[0] == n_vert:
            return arr
        if arr.shape[0] == space.n_targets:
            return space.to_surface(arr, n_samples=n_samples).astype(np.float64)
        raise ValidationError(f"{what}: {arr.shape[0]} values, but subject {space.subject} has {space.n_targets} "
                              f"voxels and {n_vert} vertices")

    v = on_vertices(v, "values")
    vis = np.isfinite(v)
    if threshold is not None:
        vis &= np.abs(np.where(vis, v, 0.0)) >= float(threshold)
    if mask is not None:
        m, _, _ = _as_vector(mask, "mask")
        vis &= np.nan_to_num(on_vertices(m, "mask")) > 0.5
    flat = space.mesh("flat")
    nl = len(flat["left"].coords)
    lxy = np.asarray(flat["left"].coords[:, :2], dtype=np.float64).copy()
    rxy = np.asarray(flat["right"].coords[:, :2], dtype=np.float64).copy()
    lf, rf = np.asarray(flat["left"].faces), np.asarray(flat["right"].faces)
    lu, ru = np.unique(lf), np.unique(rf)
    gap = 0.04 * (np.ptp(lxy[lu, 0]) + np.ptp(rxy[ru, 0]))
    lxy[:, 0] -= lxy[lu, 0].max() + gap / 2
    rxy[:, 0] -= rxy[ru, 0].min() - gap / 2
    xy = np.vstack([lxy, rxy])
    faces = np.vstack([lf, rf + nl])
    try:
        bg_v = _background(-space.curvature())  # FreeSurfer's sign: positive (dark) in sulci
    except DataNotFoundError:
        bg_v = np.tile([0.7, 0.7, 0.7, 1.0], (n_vert, 1))
    lo, hi, cmap = _limits(np.where(vis, v, np.nan) if vis.any() else v, vmin, vmax, cmap)
    cmap = mpl.colormaps[cmap] if isinstance(cmap, str) else cmap
    norm = mpl.colors.Normalize(vmin=lo, vmax=hi)
    colours = colour_faces(faces, v, vis, bg_v[faces].mean(axis=1), cmap, norm)
    used = xy[np.unique(faces)]
    pad = 0.02 * np.ptp(used[:, 0])
    xlim = (used[:, 0].min() - pad, used[:, 0].max() + pad)
    ylim = (used[:, 1].min() - pad, used[:, 1].max() + pad)
    with paper_style():
        fig, ax = _map_figure(xlim, ylim, figsize[0], colorbar, bool(title))
        ax.set_label("subject_flatmap")
        pc = PolyCollection(xy[faces], facecolors=colours, edgecolors="none", linewidths=0, antialiaseds=False)
        pc.set_rasterized(True)
        ax.add_collection(pc)
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_aspect("equal")
        ax.set_axis_off()
        for x, h in ((float(lxy[lu, 0].mean()), "L"), (float(rxy[ru, 0].mean()), "R")):
            ax.text(x, ylim[0], h, ha="center", va="top", fontsize=9, fontweight="bold", color="0.3")
        ax.set_title(title or f"{space.subject} (own surface)", pad=2)
        if colorbar:
            height = fig.get_figheight()
            cax = fig.add_axes((0.36, 0.42 / height, 0.28, 0.09 / height))
            cb = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), cax=cax, orientation="horizontal")
            cb.set_label(label or name or "value")
            cb.outline.set_linewidth(0.5)
    if out is not None:
        save_figure(fig, out, dpi=dpi)
    return fig


# ----------------------------------------------------------------------------- inflated views

_VIEWS = {
    # (hemi, view): (direction towards the camera, screen-x axis, screen-y axis)
    ("left", "lateral"): ((-1, 0, 0), (0, -1, 0), (0, 0, 1)),
    ("left", "medial"): ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
    ("right", "lateral"): ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
    ("right", "medial"): ((-1, 0, 0), (0, -1, 0), (0, 0, 1)),
    ("left", "ventral"): ((0, 0, -1), (-1, 0, 0), (0, 1, 0)),
    ("right", "ventral"): ((0, 0, -1), (-1, 0, 0), (0, 1, 0)),
    ("left", "dorsal"): ((0, 0, 1), (1, 0, 0), (0, 1, 0)),
    ("right", "dorsal"): ((0, 0, 1), (1, 0, 0), (0, 1, 0)),
}


def surface_views(
    values: Any,
    space: "str | Space | None" = None,
    views: Sequence[str] = ("lateral", "medial"),
    threshold: float | None = None,
    mask: Any = None,
    cmap: Any = None,
    vmin: float | None = None,
    vmax: float | None = None,
    title: str | None = None,
    out: "str | os.PathLike | None" = None,
    *,
    mesh: str = "inflated",
    label: str | None = None,
    dpi: float | None = None,
):
    """Lateral and medial (or dorsal/ventral) views of both hemispheres on the inflated surface.

    An orthographic projection drawn back to front with simple Lambert shading:
    one matplotlib PolyCollection per panel, no 3-D axes. Same value handling as
    :func:`flatmap`; the medial wall shows as background.

    Returns
    -------
    matplotlib.figure.Figure
        ``len(views)`` rows × 2 columns (left, right hemisphere).
    """
    import matplotlib as mpl
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    for vw in views:
        if ("left", vw) not in _VIEWS:
            raise ValidationError(f"unknown view {vw!r}; known: lateral, medial, dorsal, ventral")
    v, vspace, name = _as_vector(values)
    v, _ = _to_fs5(v, space if space is not None else vspace, "values")
    m = _mask_fs5(mask)
    vis = _visible(v, threshold, m)
    lo, hi, cmap = _limits(np.where(vis, v, np.nan) if vis.any() else v, vmin, vmax, cmap)
    cmap = mpl.colormaps[cmap] if isinstance(cmap, str) else cmap
    norm = mpl.colors.Normalize(vmin=lo, vmax=hi)
    meshes = load_mesh("fsaverage5", mesh)
    bg_v = _background(sulcal_depth("fsaverage5"))
    with paper_style():
        fig = Figure(figsize=(5.0, 2.2 * len(views) + 0.6))
        FigureCanvasAgg(fig)
        rows = len(views)
        for r, vw in enumerate(views):
            for c, hemi in enumerate(("left", "right")):
                ax = fig.add_axes((c * 0.5, 0.14 + (rows - 1 - r) * (0.8 / rows), 0.5, 0.8 / rows))
                ax.set_label(f"{hemi}_{vw}")
                _draw_view(ax, meshes[hemi], hemi, vw, v, vis, bg_v, cmap, norm)
                if r == 0:
                    ax.set_title(f"{'Left' if hemi == 'left' else 'Right'} hemisphere", fontsize=8)
        cax = fig.add_axes((0.36, 0.06, 0.28, 0.025))
        cb = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), cax=cax, orientation="horizontal")
        cb.set_label(label or name or "value")
        if title:
            fig.suptitle(title, y=0.99)
    if out is not None:
        save_figure(fig, out, dpi=dpi)
    return fig


def _draw_view(ax, mesh, hemi: str, vw: str, v: np.ndarray, vis: np.ndarray, bg_v: np.ndarray, cmap, norm) -> None:
    """One hemisphere seen from one side: an orthographic projection drawn back to front
    with Lambert shading, into ``ax``."""
    from matplotlib.collections import PolyCollection

    coords = np.asarray(mesh.coords)
    faces = np.asarray(mesh.faces)
    off = 0 if hemi == "left" else _N5
    d, sx, sy = (np.asarray(a, dtype=float) for a in _VIEWS[(hemi, vw)])
    xy = np.c_[coords @ sx, coords @ sy]
    tri = coords[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-12
    shade = 0.55 + 0.45 * np.abs(normal @ d)
    depth = tri.mean(axis=1) @ d
    order = np.argsort(depth)
    colours = colour_faces(off + faces, v, vis, bg_v[off + faces].mean(axis=1), cmap, norm)
    colours[:, :3] *= shade[:, None]
    pc = PolyCollection(xy[faces[order]], facecolors=colours[order], edgecolors="none",
                        linewidths=0, antialiaseds=False)
    pc.set_rasterized(True)
    ax.add_collection(pc)
    ax.set_xlim(xy[:, 0].min() - 2, xy[:, 0].max() + 2)
    ax.set_ylim(xy[:, 1].min() - 2, xy[:, 1].max() + 2)
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.text(0.02, 0.02, vw, transform=ax.transAxes, fontsize=7, color="0.35")


# ----------------------------------------------------------------------------- movie


def _frame_labels(frames: Any) -> tuple[list[np.ndarray], list[str] | None, str | None]:
    """Split a DataArray over checkpoints into frames and 'step — tokens' labels."""
    try:
        import xarray as xr
    except ImportError:  # pragma: no cover
        xr = None
    if xr is not None and isinstance(frames, xr.Dataset):
        frames, _ = as_dataarray(frames, "score", what="frames (a Dataset is read through its 'score')",
                                 carry_space=True)
    if xr is not None and isinstance(frames, xr.DataArray):
        space = frames.attrs.get("space")
        lead = [d for d in frames.dims if d != "target"]
        big = [d for d in lead if frames.sizes[d] > 1]
        if len(big) > 1:
            raise ValidationError(f"frames: one dimension besides 'target' may vary, got {big}")
        dim = big[0] if big else lead[0] if lead else None
        if dim is None:
            return [np.asarray(frames.values)], None, space
        arrs = [np.asarray(frames.isel({dim: i}).squeeze(drop=True).values) for i in range(frames.sizes[dim])]
        labels = []
        for i in range(frames.sizes[dim]):
            if "step" in frames.coords and frames["step"].dims == (dim,) and np.isfinite(float(frames["step"].values[i])):
                parts = [f"step {int(frames['step'].values[i]):,}"]
            else:
                parts = [f"{frames[dim].values[i]}"] if dim in frames.coords else []
            if "tokens" in frames.coords and frames["tokens"].dims == (dim,):
                parts.append(f"{_human(float(frames['tokens'].values[i]))} tokens")
            labels.append(" — ".join(parts))
        return arrs, labels, space
    return [np.asarray(f) for f in frames], None, None


def _human(x: float) -> str:
    if not np.isfinite(x):
        return "?"
    for div, suf in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suf}"
    return f"{x:.3g}"


def flatmap_movie(
    frames: Any,
    labels: Sequence[str] | None = None,
    out: "str | os.PathLike" = "movie.gif",
    fps: float = 4.0,
    *,
    space: "str | Space | None" = None,
    threshold: float | None = None,
    mask: Any = None,
    cmap: Any = None,
    vmin: float | None = None,
    vmax: float | None = None,
    rois: Any = None,
    title: str | None = None,
    label: str | None = None,
    dpi: float = 80,
    mp4: bool | None = None,
) -> list[Path]:
    """One flatmap per checkpoint, written as an animated GIF (and an MP4 with ffmpeg).

    One figure is built and only its colours and caption change between frames.

    Parameters
    ----------
    frames : sequence of arrays, or xarray.DataArray with one dim besides ``target``
        One map per frame (same space). A DataArray over ``checkpoint`` with a ``tokens``
        coordinate labels frames "checkpoint step1000 — 2.1B tokens" by itself.
    labels : sequence of str, optional
        Caption per frame (e.g. "step 1000 — 2.1B tokens").
    out : path
        ``.gif`` (always possible) or ``.mp4`` (needs ``ffmpeg`` on PATH).
    fps : float
    vmin, vmax : float, optional
        Shared colour limits (default: from all frames together).
    mp4 : bool, optional
        Also write ``out`` with suffix ``.mp4`` next to a GIF; default: when ffmpeg is
        on PATH.

    Returns
    -------
    list of Path
        The files written.
    """
    arrs, auto_labels, fspace = _frame_labels(frames)
    if not arrs:
        raise ValidationError("frames: no frames given")
    if labels is None:
        labels = auto_labels or [f"frame {i + 1}" for i in range(len(arrs))]
    labels = list(labels)
    if len(labels) != len(arrs):
        raise ValidationError(f"labels: {len(labels)} labels for {len(arrs)} frames")
    if fps <= 0:
        raise ValidationError(f"fps must be positive, got {fps}")
    out = Path(out).expanduser()
    if out.suffix.lower() not in (".gif", ".mp4"):
        raise ValidationError(f"out={out}: a movie is .gif or .mp4")
    if not out.parent.exists():
        raise ValidationError(f"out={out}: folder {out.parent} does not exist")
    ffmpeg = shutil.which("ffmpeg")
    if out.suffix.lower() == ".mp4" and not ffmpeg:
        raise ValidationError(f"out={out}: MP4 needs ffmpeg on PATH (e.g. apt-get install ffmpeg); write a .gif instead")
    sp = space if space is not None else fspace
    data = [_to_fs5(_as_vector(a, f"frame {i}")[0], sp, f"frame {i}")[0] for i, a in enumerate(arrs)]
    m = _mask_fs5(mask)
    stack = np.stack([np.where(_visible(d, threshold, m), d, np.nan) for d in data])
    lo, hi, cmap = _limits(stack if np.isfinite(stack).any() else np.stack(data), vmin, vmax, cmap)
    fm = FlatmapFigure(vmin=lo, vmax=hi, cmap=cmap, label=label, title=title, rois=rois)
    from tqdm.auto import tqdm

    images = []
    for d, cap in tqdm(list(zip(data, labels)), desc="movie frames", unit="frame", disable=None if len(data) >= 5 else True):
        img = fm.frame(d, threshold=threshold, mask=m, caption=cap, dpi=dpi)
        images.append(img[: img.shape[0] // 2 * 2, : img.shape[1] // 2 * 2])  # even sizes for video codecs
    written = []
    if out.suffix.lower() == ".gif":
        written.append(_write_gif(images, out, fps))
        if mp4 or (mp4 is None and ffmpeg):
            if not ffmpeg:
                raise ValidationError("mp4=True needs ffmpeg on PATH (e.g. apt-get install ffmpeg)")
            written.append(_write_mp4(images, out.with_suffix(".mp4"), fps, ffmpeg))
    else:
        written.append(_write_mp4(images, out, fps, ffmpeg))
    return written


def _write_gif(images: list[np.ndarray], out: Path, fps: float) -> Path:
    import imageio.v3 as iio

    with atomic_path(out) as tmp:
        iio.imwrite(tmp, np.stack(images), extension=".gif", duration=1000.0 / fps, loop=0)
    log.info("wrote %s (%d frames)", out, len(images))
    return out


def _write_mp4(images: list[np.ndarray], out: Path, fps: float, ffmpeg: str) -> Path:
    h, w = images[0].shape[:2]
    with atomic_path(out) as tmp:
        cmd = [ffmpeg, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
               "-r", f"{fps}", "-i", "-", "-pix_fmt", "yuv420p", "-vcodec", "libx264", str(tmp)]
        proc = subprocess.run(cmd, input=b"".join(np.ascontiguousarray(i).tobytes() for i in images),
                              capture_output=True, check=False)
        if proc.returncode != 0:
            raise ExternalToolError(f"ffmpeg failed writing {out}: {proc.stderr.decode(errors='replace')[-500:]}")
    log.info("wrote %s", out)
    return out
