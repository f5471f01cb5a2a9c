"""Curves over training: ROI alignment vs tokens with subject bands and phases, the
layer x checkpoint heatmap, and internal-state / downstream curves on the same axis."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ValidationError
from ._inputs import as_dataarray
from .flat import save_figure
from .style import palette, paper_style

__all__ = ["plot_curves", "plot_layer_heatmap", "plot_aligned_curves", "phase_spans"]

log = logging.getLogger(__name__)

_PHASE_COLOURS = {"rising": "#009E73", "falling": "#D55E00", "flat": "#999999"}
_XLABELS = {"tokens": "training tokens", "step": "training step"}


def _new_axes(ax, figsize):
    if ax is not None:
        return ax.figure, ax
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(111)


def phase_spans(phases: Any) -> list[tuple[float, float, str]]:
    """Normalise phases to ``[(start, end, label), ...]`` in x units.

    Accepts ``(start, end, label)`` tuples, objects with ``start``/``end``/``label``
    attributes (``brainalign.dynamics.Segment``), an object with ``segments`` (a
    ``PhaseResult``), or a DataFrame with ``start``, ``end``, ``label`` columns.
    """
    if phases is None:
        return []
    if hasattr(phases, "segments"):
        phases = phases.segments
    if hasattr(phases, "to_dict") and hasattr(phases, "columns"):
        cols = set(phases.columns)
        if not {"start", "end"} <= cols:
            raise ValidationError(f"phases: a table needs 'start' and 'end' columns, has {sorted(cols)}")
        return [(float(r["start"]), float(r["end"]), str(r.get("label", ""))) for r in phases.to_dict("records")]
    out = []
    for p in phases:
        if hasattr(p, "start") and hasattr(p, "end"):
            out.append((float(p.start), float(p.end), str(getattr(p, "label", ""))))
        elif isinstance(p, Mapping):
            out.append((float(p["start"]), float(p["end"]), str(p.get("label", ""))))
        else:
            t = tuple(p)
            if len(t) not in (2, 3):
                raise ValidationError(f"phases: each span is (start, end[, label]), got {p!r}")
            out.append((float(t[0]), float(t[1]), str(t[2]) if len(t) == 3 else ""))
    for s, e, _ in out:
        if not (np.isfinite(s) and np.isfinite(e)) or e < s:
            raise ValidationError(f"phases: span ({s}, {e}) is not a finite interval")
    return out


def _shade(ax, phases: Any, *, text: bool = True) -> None:
    spans = phase_spans(phases)
    for i, (s, e, lab) in enumerate(spans):
        colour = _PHASE_COLOURS.get(lab, palette(8)[i % 7])
        ax.axvspan(s, e, color=colour, alpha=0.10, lw=0, zorder=0)
        if i:
            ax.axvline(s, color="0.4", lw=0.6, ls="--", zorder=1)
        if text and lab:
            xm = np.sqrt(s * e) if s > 0 and ax.get_xscale() == "log" else (s + e) / 2
            ax.text(xm, 0.98, lab, transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=6, color="0.3")
    intervals = getattr(phases, "intervals", None)
    if intervals is not None:
        for lo, hi in np.asarray(intervals, dtype=float).reshape(-1, 2):
            if np.isfinite(lo) and np.isfinite(hi):
                ax.axvspan(lo, hi, ymin=0, ymax=0.03, color="0.2", lw=0, zorder=2)


def _x_of(obj, x: str) -> np.ndarray:
    if x in obj.coords:
        return np.asarray(obj[x].values, dtype=float)
    raise ValidationError(f"curves have no {x!r} coordinate; they have {', '.join(map(str, obj.coords))}")


def _select_layer(da, layer, ds=None):
    if "layer" not in da.dims:
        return da
    if layer == "best":
        # the one rule (brainalign.rois.choose_layer): by the training-story CV score
        # when the Dataset has one (aggregate() stores its choice as best_layer)
        if ds is not None and "best_layer" in ds and "checkpoint" in da.dims:
            best = ds["best_layer"]
            return da.sel(layer=best.fillna(da["layer"].values[0]).astype(da["layer"].dtype)).where(best.notnull())
        from ..rois import choose_layer

        cv = ds["cv_score"] if ds is not None and "cv_score" in ds and ds["cv_score"].dims == da.dims else None
        return choose_layer(da, cv)["score"]
    if layer == "max":
        return da.max("layer")
    return da.sel(layer=layer)


def plot_curves(
    roi_curves: Any,
    x: str = "tokens",
    phases: Any = None,
    *,
    rois: Sequence[str] | None = None,
    var: str | None = None,
    layer: "int | str" = "best",
    log_x: bool = True,
    ax=None,
    title: str | None = None,
    ylabel: str | None = None,
    figsize: tuple[float, float] = (3.5, 2.4),
    out: "str | os.PathLike | None" = None,
):
    """Alignment against training progress, one line per ROI: the subject mean, with its
    block-bootstrap interval as a band when the Dataset has one (``<var>_lo`` and
    ``<var>_hi``, as :func:`brainalign.sweep.analyze.roi_curves` gives for a store with
    bootstrap replicates), else ± SEM over subjects.

    Parameters
    ----------
    roi_curves : xarray.Dataset from :func:`brainalign.rois.aggregate`, a DataArray over
        ``checkpoint`` (and optionally ``roi``, ``subject``, ``layer``), or a dict
        name -> (x, y) or (x, y, sem).
    x : str
        Coordinate on ``checkpoint`` to plot against ("tokens" or "step").
    phases : spans, PhaseResult, or dict roi -> either
        Shaded behind the curves (see :func:`phase_spans`); a dict shades the first
        plotted ROI's phases.
    rois : list of str, optional
        Which ROIs (default all, up to 8).
    var : str, optional
        Variable of a Dataset (default its ``var`` attribute, else "score").
    layer : int, "best" or "max"
        For results with layers: a layer, the best layer per checkpoint
        (:func:`brainalign.rois.choose_layer`: by the subject-mean training-story CV
        score when the Dataset has ``cv_score``, else by the held-out score, with a
        warning), or the max over layers per subject.

    Returns
    -------
    matplotlib.figure.Figure
    """
    series, var = _curve_series(roi_curves, x, var, layer, rois)
    if not series:
        raise ValidationError("roi_curves: nothing to plot")
    with paper_style():
        fig, ax = _new_axes(ax, figsize)
        if log_x:
            ax.set_xscale("log")
        for (name, xs, ys, lo, hi), colour in zip(series, palette(len(series))):
            ax.plot(xs, ys, color=colour, label=name, marker="o", ms=2.0)
            if lo is not None and np.isfinite(lo).any():
                ax.fill_between(xs, lo, hi, color=colour, alpha=0.25, lw=0)
        if phases is not None:
            ph = phases.get(series[0][0]) if isinstance(phases, Mapping) else phases
            _shade(ax, ph)
        ax.set_xlabel(_XLABELS.get(x, x) + (" (log)" if log_x else ""))
        ax.set_ylabel(ylabel or _ylabel(var))
        if len(series) > 1:
            ax.legend(loc="best")
        if title:
            ax.set_title(title)
    if out is not None:
        save_figure(fig, out)
    return fig


#: one plotted curve: (name, x, y, band low, band high)
_Series = tuple[str, np.ndarray, np.ndarray, "np.ndarray | None", "np.ndarray | None"]


def _curve_series(roi_curves: Any, x: str, var: str | None, layer: Any,
                  rois: Sequence[str] | None) -> tuple[list[_Series], str | None]:
    """The curves :func:`plot_curves` draws (subject mean and its band per ROI), and the
    variable they show."""
    import xarray as xr

    if isinstance(roi_curves, Mapping) and not isinstance(roi_curves, (xr.Dataset, xr.DataArray)):
        series = []
        for name, val in roi_curves.items():
            t = tuple(val)
            xs, ys = np.asarray(t[0], float), np.asarray(t[1], float)
            sem = np.asarray(t[2], float) if len(t) > 2 else None
            series.append((str(name), xs, ys, None if sem is None else ys - sem, None if sem is None else ys + sem))
        return series, var
    ds = roi_curves if isinstance(roi_curves, xr.Dataset) else None
    da, var = as_dataarray(roi_curves, var, what="roi_curves (an aggregate() Dataset, a DataArray, or a dict "
                                                "name -> (x, y))")
    if "checkpoint" not in da.dims:
        raise ValidationError(f"roi_curves need a 'checkpoint' dimension; they have {da.dims}")
    da = _select_layer(da, layer, ds)
    # block-bootstrap intervals (roi_curves() of a store with replicates) replace the SEM band
    lo_da = hi_da = None
    if ds is not None and f"{var}_lo" in ds and f"{var}_hi" in ds and "layer" not in ds[f"{var}_lo"].dims:
        lo_da, hi_da = ds[f"{var}_lo"], ds[f"{var}_hi"]
    if "roi" not in da.dims:
        da = da.expand_dims(roi=[da.name or "curve"])
    names = list(rois) if rois is not None else [str(r) for r in da["roi"].values[:8]]
    xs = _x_of(da, x)
    order = np.argsort(xs)
    series = []
    for name in names:
        if name not in da["roi"].values:
            raise ValidationError(f"no ROI {name!r}; have {', '.join(map(str, da['roi'].values))}")
        mean, lo, hi = _mean_and_band(da.sel(roi=name), order)
        if lo_da is not None and ("roi" not in lo_da.dims or name in lo_da["roi"].values):
            lo = np.asarray((lo_da.sel(roi=name) if "roi" in lo_da.dims else lo_da).values, float)[order]
            hi = np.asarray((hi_da.sel(roi=name) if "roi" in hi_da.dims else hi_da).values, float)[order]
        series.append((name, xs[order], mean, lo, hi))
    return series, var


def _mean_and_band(d, order: np.ndarray):
    """One ROI's curve in checkpoint ``order``: the subject mean ± SEM over subjects (no
    band without a subject dimension)."""
    extra = [dd for dd in d.dims if dd not in ("checkpoint", "subject")]
    if extra:
        raise ValidationError(f"roi_curves: select {extra} first (one curve per ROI)")
    if "subject" not in d.dims:
        return np.asarray(d.values, float)[order], None, None
    sub = d.transpose("checkpoint", "subject").values[order]
    n = np.isfinite(sub).sum(1)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(sub, 1)
        sem = np.where(n > 1, np.nanstd(sub, 1, ddof=1) / np.sqrt(np.maximum(n, 1)), np.nan)
    return mean, mean - sem, mean + sem


def _ylabel(var: str | None) -> str:
    return {
        None: "brain alignment (r)",
        "score": "brain alignment (r)",
        "score_normalised": "alignment / noise ceiling",
        "fraction_significant": "fraction significant",
        "r2": "R²",
    }.get(var, var or "value")


def plot_layer_heatmap(
    data: Any,
    x: str = "tokens",
    *,
    roi: str | None = None,
    var: str | None = None,
    cmap: str = "viridis",
    mark_best: bool = True,
    best: Any = None,
    ax=None,
    title: str | None = None,
    figsize: tuple[float, float] = (3.6, 2.6),
    out: "str | os.PathLike | None" = None,
):
    """Layer × checkpoint heatmap (checkpoints ordered by ``x``, labelled with it).

    Parameters
    ----------
    data : xarray.DataArray (layer, checkpoint) or an aggregate() Dataset (then ``roi``
        picks the ROI and the subject mean is shown).
    mark_best : bool
        Mark the chosen layer of each checkpoint: ``best`` when given, else the
        Dataset's ``best_layer`` (:func:`brainalign.rois.choose_layer`), else the choice
        that function makes from the shown values (the held-out score, with a warning).
    best : array or DataArray over checkpoint, optional
        The chosen layer of each checkpoint (e.g. ``roi_curves(...)["best_layer"]``).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import xarray as xr

    da, var = as_dataarray(data, var, what="data (a DataArray (layer, checkpoint) or an aggregate() Dataset)",
                           prefer_mean=True)
    if best is None and isinstance(data, xr.Dataset) and "best_layer" in data:
        best = data["best_layer"]
    if "roi" in da.dims:
        if roi is None and da.sizes["roi"] > 1:
            raise ValidationError(f"several ROIs: pick one with roi= ({', '.join(map(str, da['roi'].values[:10]))}...)")
        da = da.sel(roi=roi) if roi is not None else da.isel(roi=0)
        if isinstance(best, xr.DataArray) and "roi" in best.dims:
            best = best.sel(roi=roi) if roi is not None else best.isel(roi=0)
    if "subject" in da.dims:
        da = da.mean("subject")
    if set(da.dims) != {"layer", "checkpoint"}:
        raise ValidationError(f"heatmap needs dims (layer, checkpoint), got {da.dims}")
    da = da.transpose("layer", "checkpoint")
    xs = _x_of(da, x) if x in da.coords else np.arange(da.sizes["checkpoint"], dtype=float)
    order = np.argsort(xs)
    z = np.asarray(da.values, dtype=float)[:, order]
    layers = np.asarray(da["layer"].values)
    with paper_style():
        fig, ax = _new_axes(ax, figsize)
        im = ax.imshow(z, aspect="auto", origin="lower", cmap=cmap, interpolation="nearest")
        ax.set_yticks(np.arange(len(layers)))
        ax.set_yticklabels([str(v) for v in layers])
        step = max(1, len(order) // 6)
        ticks = np.arange(0, len(order), step)
        ax.set_xticks(ticks)
        ax.set_xticklabels([_fmt_tokens(xs[order][t]) for t in ticks], rotation=0)
        ax.set_xlabel(_XLABELS.get(x, x))
        ax.set_ylabel("layer")
        if mark_best:
            chosen = _chosen_layers(da, best, order)
            pos = {float(v): i for i, v in enumerate(layers)}
            rows = np.array([pos.get(float(v), np.nan) if np.isfinite(v) else np.nan for v in chosen])
            ok = np.isfinite(rows)
            ax.plot(np.flatnonzero(ok), rows[ok], color="white", marker="o", ms=2.5, lw=0.8)
        cb = fig.colorbar(im, ax=ax)
        cb.set_label(_ylabel(var))
        if title:
            ax.set_title(title)
        ax.spines[["top", "right"]].set_visible(True)
    if out is not None:
        save_figure(fig, out)
    return fig


def _chosen_layers(da, best: Any, order: np.ndarray) -> np.ndarray:
    """The layer chosen at each checkpoint, in ``order``: ``best`` when given, else
    :func:`brainalign.rois.choose_layer`'s choice from the shown values."""
    import xarray as xr

    if best is None:
        from ..rois import choose_layer

        return np.asarray(choose_layer(da)["best_layer"].transpose("checkpoint").values, float)[order]
    if isinstance(best, xr.DataArray) and "checkpoint" in best.dims:
        if "checkpoint" in da.coords:
            return np.asarray(best.sel(checkpoint=da["checkpoint"].values).values, float)[order]
        return np.asarray(best.values, float)[order]
    return np.asarray(best, float).ravel()[order]


def _fmt_tokens(v: float) -> str:
    from .flat import _human

    return _human(float(v))


def plot_aligned_curves(
    curves: Mapping[str, Any],
    *,
    x_label: str = "training tokens",
    log_x: bool = True,
    phases: Any = None,
    overlay: bool = False,
    figsize: tuple[float, float] | None = None,
    title: str | None = None,
    out: "str | os.PathLike | None" = None,
):
    """Several curves on one training axis: brain alignment, internal states, downstream tasks.

    Parameters
    ----------
    curves : dict name -> (x, y), (x, y, sem), or a 1-D DataArray over checkpoint with
        a ``tokens`` coordinate.
    overlay : bool
        False: one panel per curve, sharing the x axis (units differ). True: one
        panel with each curve min-max scaled to [0, 1].
    phases : spans or PhaseResult, shaded on every panel.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import xarray as xr
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not curves:
        raise ValidationError("curves: give at least one curve")
    items = []
    for name, c in curves.items():
        if isinstance(c, xr.DataArray):
            xs = _x_of(c, "tokens")
            ys = np.asarray(c.values, float)
            sem = None
        else:
            t = tuple(c)
            if len(t) not in (2, 3):
                raise ValidationError(f"curves[{name!r}]: want (x, y) or (x, y, sem)")
            xs, ys = np.asarray(t[0], float), np.asarray(t[1], float)
            sem = np.asarray(t[2], float) if len(t) == 3 else None
        if xs.shape != ys.shape or xs.ndim != 1:
            raise ValidationError(f"curves[{name!r}]: x and y must be 1-D and the same length")
        o = np.argsort(xs)
        items.append((str(name), xs[o], ys[o], None if sem is None else sem[o]))
    n = 1 if overlay else len(items)
    with paper_style():
        fig = Figure(figsize=figsize or (3.6, 1.0 + 1.1 * n), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
        for i, ((name, xs, ys, sem), colour) in enumerate(zip(items, palette(len(items)))):
            ax = axes[0 if overlay else i]
            if log_x:
                ax.set_xscale("log")
            if overlay:
                lo, hi = np.nanmin(ys), np.nanmax(ys)
                span = (hi - lo) or 1.0
                ax.plot(xs, (ys - lo) / span, color=colour, label=name)
            else:
                ax.plot(xs, ys, color=colour, marker="o", ms=1.8)
                if sem is not None:
                    ax.fill_between(xs, ys - sem, ys + sem, color=colour, alpha=0.25, lw=0)
                ax.set_ylabel(name)
        for ax in axes:
            if phases is not None:
                _shade(ax, phases, text=ax is axes[0])
        if overlay:
            axes[0].set_ylabel("scaled (min–max)")
            axes[0].legend(loc="best")
        axes[-1].set_xlabel(x_label + (" (log)" if log_x else ""))
        if title:
            fig.suptitle(title)
    if out is not None:
        save_figure(fig, out)
    return fig
