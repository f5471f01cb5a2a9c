"""Curves over training: ROI alignment vs tokens with subject bands and phases (one panel,
or one small panel per ROI), per-subject curves, layer x checkpoint heatmaps, and
internal-state / downstream curves on the same axis as the brain-alignment transitions.

On a log training axis the untrained checkpoint (x == 0) is drawn at a separate "init"
position left of the first positive x, behind an axis break (:class:`_TrainingAxis`)."""

from __future__ import annotations

import functools
import logging
import math
import os
import textwrap
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ValidationError
from ._inputs import as_dataarray
from .flat import save_figure
from .style import line_styles, palette, paper_style

__all__ = ["plot_curves", "plot_curves_grid", "plot_subject_curves", "plot_layer_heatmap", "plot_layer_heatmaps",
           "plot_aligned_curves", "phase_spans", "plot_llc_traces"]

log = logging.getLogger(__name__)

_PHASE_COLOURS = {"rising": "#009E73", "falling": "#D55E00", "flat": "#999999"}
_XLABELS = {"tokens": "training tokens", "step": "training step"}
#: decades (at least) between the "init" position and the first positive x
_INIT_GAP = 0.5
#: least distance (inches) between the "init" tick and the next labelled tick
_INIT_CLEARANCE = 0.32
_LEGENDS = ("outside", "inside", None)


def _new_axes(ax, figsize):
    if ax is not None:
        return ax.figure, ax
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(111)


class _TrainingAxis:
    """Where the untrained checkpoint (x == 0) sits on a log training axis.

    ``init`` lies ``max(0.5, 0.1 * range)`` decades left of the smallest positive x, and
    an axis break (``//``) halfway between marks that the distance to it means nothing.
    Without a zero (or on a linear axis) the mapping is the identity and ``init`` is None.
    """

    def __init__(self, *xs: Any, log: bool = True):
        vals = np.concatenate([np.asarray(v, float).ravel() for v in xs]) if xs else np.array([])
        pos = vals[np.isfinite(vals) & (vals > 0)]
        self.log = log
        self.init = self.brk = self.first = None
        if log and pos.size and (vals == 0).any():
            lo, hi = np.log10(pos.min()), np.log10(pos.max())
            gap = max(_INIT_GAP, 0.1 * (hi - lo))
            self.first = float(pos.min())
            self.init, self.brk = 10.0 ** (lo - gap), 10.0 ** (lo - gap / 2)

    def __call__(self, v):
        """``v`` with zeros moved to the init position (an array, or a float for a float)."""
        out = np.asarray(v, float)
        if self.init is not None:
            out = np.where(out == 0, self.init, out)
        return float(out) if np.ndim(v) == 0 else out

    def label(self, v: float) -> str:
        """A tick label for a training-axis value: "init" for 0, else 2.05B-style."""
        return "init" if v == 0 else _fmt_tokens(v)

    def apply(self, ax) -> None:
        """Log-scale ``ax``'s x axis (when log) with an "init" tick and the break mark."""
        if not self.log:
            return
        import matplotlib.ticker as mticker

        ax.set_xscale("log")
        # labels at the decades only: matplotlib labels minor ticks over short ranges, and
        # in small panels "3x10^0 4x10^0 6x10^0" run into each other
        ax.xaxis.set_minor_formatter(mticker.NullFormatter())
        if self.init is None:
            return
        locator, formatter = _tick_classes()
        ax.xaxis.set_major_locator(locator(self.init, self.brk))
        ax.xaxis.set_minor_locator(locator(None, self.first * 0.999, subs=np.arange(2.0, 10.0)))
        ax.xaxis.set_major_formatter(formatter(self.init))
        _break_mark(ax, self.brk)


@functools.lru_cache(maxsize=None)
def _tick_classes():
    """The init-aware locator and formatter (defined on first use: matplotlib is imported
    only when a figure is drawn)."""
    import matplotlib.ticker as mticker

    class BrokenLogLocator(mticker.LogLocator):
        """Log ticks right of ``start`` plus one at ``init`` (when given); a tick closer
        than ``_INIT_CLEARANCE`` inches to ``init`` on screen is left out, so labels never
        collide."""

        def __init__(self, init: float | None, start: float, subs: Any = (1.0,)):
            super().__init__(subs=subs)
            self._init, self._start = init, start

        def tick_values(self, vmin, vmax):
            vmin, vmax = sorted((vmin, vmax))
            ticks = np.asarray(super().tick_values(max(vmin, self._start), max(vmax, self._start * 10)))
            ticks = ticks[ticks >= self._start]
            if self._init is None:
                return ticks
            if self.axis is not None and ticks.size:
                ax = self.axis.axes
                px = ax.transData.transform(np.c_[np.r_[self._init, ticks], np.ones(ticks.size + 1)])[:, 0]
                ticks = ticks[np.abs(px[1:] - px[0]) >= _INIT_CLEARANCE * ax.figure.dpi]
            return np.r_[self._init, ticks]

    class InitFormatter(mticker.LogFormatterSciNotation):
        """Log tick labels, "init" at the init position."""

        def __init__(self, init: float):
            super().__init__()
            self._init = init

        def __call__(self, x, pos=None):
            return "init" if np.isclose(x, self._init, rtol=1e-6) else super().__call__(x, pos)

    return BrokenLogLocator, InitFormatter


def _break_mark(ax, at: float) -> None:
    """``//`` across the bottom spine at data x ``at``."""
    ax.text(at, 0, "//", transform=ax.get_xaxis_transform(), ha="center", va="center", fontsize=8,
            clip_on=False, zorder=6, gid="axis-break",
            bbox=dict(boxstyle="square,pad=0.05", facecolor="white", edgecolor="none"))


def _panel_grid(n: int, ncols: int, panel_size: tuple[float, float], *, sharex: bool = True,
                sharey: bool = True, extra: tuple[float, float] = (0.0, 0.4)):
    """A constrained figure of ``n`` panels in rows of ``ncols`` (unused cells removed),
    ``extra`` inches (width, height) added for colour bars, legends and titles. Tick labels
    only where no panel is below (x) or left (y, when shared)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if n < 1:
        raise ValidationError("nothing to plot: no panels")
    ncols = max(1, min(int(ncols), n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(ncols * panel_size[0] + extra[0], nrows * panel_size[1] + extra[1]), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(nrows, ncols, sharex=sharex, sharey=sharey, squeeze=False)
    axes = list(grid.ravel())
    for ax in axes[n:]:
        fig.delaxes(ax)
    axes = axes[:n]
    for i, ax in enumerate(axes):
        ax.tick_params(labelbottom=not sharex or i + ncols >= n, labelleft=not sharey or i % ncols == 0)
    return fig, axes


def _legend(ax, mode: str | None, n: int):
    """The curves' legend: right of the axes (``"outside"``, all entries, never over the
    data), ``"inside"`` (matplotlib's best spot) or none; none for a single curve."""
    if mode not in _LEGENDS:
        raise ValidationError(f"legend={mode!r}: use 'outside', 'inside' or None")
    if mode is None or n < 2:
        return None
    if mode == "inside":
        return ax.legend(loc="best")
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, ncols=_legend_columns(n),
                     handlelength=1.8, columnspacing=1.0)


def _legend_columns(n: int) -> int:
    return 1 if n <= 12 else 2


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


def _shade(ax, phases: Any, *, text: bool = True, xmap: "_TrainingAxis | None" = None) -> None:
    xmap = xmap or _TrainingAxis(log=False)
    spans = [(xmap(s), xmap(e), lab) for s, e, lab in phase_spans(phases)]
    for i, (s, e, lab) in enumerate(spans):
        colour = _PHASE_COLOURS.get(lab, palette(8)[i % 7])
        ax.axvspan(s, e, color=colour, alpha=0.10, lw=0, zorder=0)
        if i:
            ax.axvline(s, color="0.4", lw=0.6, ls="--", zorder=1, gid="phase-boundary")
        if text and lab:
            xm = np.sqrt(s * e) if s > 0 and ax.get_xscale() == "log" else (s + e) / 2
            ax.text(xm, 0.98, lab, transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=7, color="0.3")
    intervals = getattr(phases, "intervals", None)
    if intervals is not None:
        for lo, hi in np.asarray(intervals, dtype=float).reshape(-1, 2):
            if np.isfinite(lo) and np.isfinite(hi):
                ax.axvspan(xmap(lo), xmap(hi), ymin=0, ymax=0.03, color="0.2", lw=0, zorder=2)


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
    legend: str | None = "outside",
    ax=None,
    title: str | None = None,
    ylabel: str | None = None,
    figsize: tuple[float, float] | None = None,
    out: "str | os.PathLike | None" = None,
):
    """Alignment against training progress, one line per ROI: the subject mean, with its
    block-bootstrap interval as a band when the Dataset has one (``<var>_lo`` and
    ``<var>_hi``, as :func:`brainalign.sweep.analyze.roi_curves` gives for a store with
    bootstrap replicates), else ± SEM over subjects. The untrained checkpoint (x == 0)
    is shown at an "init" position on a log axis. Past ~8 ROIs see :func:`plot_curves_grid`.

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
        Which ROIs (default all).
    var : str, optional
        Variable of a Dataset (default its ``var`` attribute, else "score").
    layer : int, "best" or "max"
        For results with layers: a layer, the best layer per checkpoint
        (:func:`brainalign.rois.choose_layer`: by the subject-mean training-story CV
        score when the Dataset has ``cv_score``, else by the held-out score, with a
        warning), or the max over layers per subject.
    legend : "outside", "inside" or None
        "outside": right of the axes, every ROI listed (two columns past 12); the
        default figure is widened for it. With ``ax=`` of a shared figure, make that
        figure ``layout="constrained"`` so the legend gets its room; for raw and
        normalised panels side by side, give the legend to the right panel only.
    ax : matplotlib Axes, optional
        Draw into it (its figure is returned) instead of a new figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    series, var = _curve_series(roi_curves, x, var, layer, rois)
    if not series:
        raise ValidationError("roi_curves: nothing to plot")
    _legend(None, legend, 0)  # check the mode before drawing
    if figsize is None:
        wide = legend == "outside" and len(series) > 1
        figsize = (3.5 + (1.3 * _legend_columns(len(series)) if wide else 0.0), 2.4)
    tax = _TrainingAxis(*[s[1] for s in series], log=log_x)
    with paper_style():
        fig, ax = _new_axes(ax, figsize)
        for (name, xs, ys, lo, hi), (colour, ls) in zip(series, line_styles(len(series))):
            _draw_series(ax, tax(xs), ys, lo, hi, colour=colour, ls=ls, label=name)
        if phases is not None:
            ph = phases.get(series[0][0]) if isinstance(phases, Mapping) else phases
            _shade(ax, ph, xmap=tax)
        tax.apply(ax)
        ax.set_xlabel(_xlabel(x, log_x))
        ax.set_ylabel(ylabel or _ylabel(var))
        _legend(ax, legend, len(series))
        if title:
            ax.set_title(title)
    if out is not None:
        save_figure(fig, out)
    return fig


def _draw_series(ax, xs, ys, lo, hi, *, colour: str, ls: str = "-", label: str | None = None) -> None:
    """One curve with markers, and its band when it has one."""
    ax.plot(xs, ys, color=colour, ls=ls, label=label, marker="o", ms=2.0)
    if lo is not None and np.isfinite(lo).any():
        ax.fill_between(xs, lo, hi, color=colour, alpha=0.25, lw=0)


def _xlabel(x: str, log_x: bool) -> str:
    return _XLABELS.get(x, x) + (" (log)" if log_x else "")


def plot_curves_grid(
    roi_curves: Any,
    x: str = "tokens",
    phases: Any = None,
    *,
    var: str | None = None,
    rois: Sequence[str] | None = None,
    layer: "int | str" = "best",
    log_x: bool = True,
    ncols: int = 4,
    sharey: bool = True,
    panel_size: tuple[float, float] = (2.4, 1.8),
    title: str | None = None,
    ylabel: str | None = None,
    out: "str | os.PathLike | None" = None,
):
    """Small multiples of :func:`plot_curves`: one panel per ROI (titled with its name),
    its subject-mean curve and band (``<var>_lo``/``<var>_hi`` when present, else ± SEM
    over subjects), its own phases shaded, all panels on one training axis and (with
    ``sharey``) one y scale.

    Parameters
    ----------
    roi_curves, x, var, rois, layer, log_x :
        As for :func:`plot_curves` (every ROI by default).
    phases : dict roi -> PhaseResult (or spans), or one PhaseResult / spans for every panel
        Shaded behind each ROI's curve; a figure legend names the phase colours.
    ncols : int
        Panels per row.
    panel_size : (width, height) in inches of one panel.

    Returns
    -------
    matplotlib.figure.Figure
    """
    series, var = _curve_series(roi_curves, x, var, layer, rois)
    if not series:
        raise ValidationError("roi_curves: nothing to plot")
    tax = _TrainingAxis(*[s[1] for s in series], log=log_x)
    labels: set[str] = set()
    with paper_style():
        fig, axes = _panel_grid(len(series), ncols, panel_size, sharey=sharey, extra=(0.3, 0.7))
        # each ROI keeps its plot_curves colour; one curve per panel needs no dashes
        for ax, (name, xs, ys, lo, hi), colour in zip(axes, series, palette(len(series))):
            _draw_series(ax, tax(xs), ys, lo, hi, colour=colour, label=name)
            ph = phases.get(name) if isinstance(phases, Mapping) else phases
            if ph is not None:
                _shade(ax, ph, text=False, xmap=tax)
                labels |= {lab for _, _, lab in phase_spans(ph) if lab}
            tax.apply(ax)
            ax.set_title(name)
        fig.supxlabel(_xlabel(x, log_x), fontsize=8)
        fig.supylabel(ylabel or _ylabel(var), fontsize=8)
        if labels:
            _phase_legend(fig, sorted(labels))
        if title:
            fig.suptitle(title)
    if out is not None:
        save_figure(fig, out)
    return fig


def _phase_legend(fig, labels: Sequence[str]) -> None:
    """A figure legend of the phase shading colours, right of the panels."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=_PHASE_COLOURS.get(lab, "0.6"), alpha=0.25, label=lab) for lab in labels]
    fig.legend(handles=handles, loc="outside right upper", title="phase")


def plot_subject_curves(
    scores: Any,
    x: str = "tokens",
    *,
    rois: Sequence[str] | None = None,
    var: str | None = None,
    log_x: bool = True,
    ncols: int = 4,
    panel_size: tuple[float, float] = (2.4, 1.8),
    title: str | None = None,
    ylabel: str | None = None,
    out: "str | os.PathLike | None" = None,
):
    """Each subject's curve: one panel per ROI, a thin line per subject (same colour for a
    subject in every panel; the figure legend names them) and the subject mean in bold.

    Parameters
    ----------
    scores : xarray.DataArray (subject, roi, checkpoint) at the chosen layer, with a
        ``tokens``/``step`` coordinate on checkpoint (no ``roi``: one panel), or a
        Dataset with such a variable ``var``.

    Returns
    -------
    matplotlib.figure.Figure
    """
    da, var = as_dataarray(scores, var, what="scores (a DataArray (subject, roi, checkpoint))")
    if "roi" not in da.dims:
        da = da.expand_dims(roi=[da.name or "curve"])
    if set(da.dims) != {"subject", "roi", "checkpoint"}:
        raise ValidationError(f"scores need dims (subject, roi, checkpoint); got {da.dims}: select a layer first")
    names = _roi_names(da, rois)
    xs = _x_of(da, x)
    order = np.argsort(xs)
    tax = _TrainingAxis(xs, log=log_x)
    xs = tax(xs[order])
    subjects = [str(v) for v in da["subject"].values]
    with paper_style():
        fig, axes = _panel_grid(len(names), ncols, panel_size, extra=(0.9, 0.5))
        for ax, name in zip(axes, names):
            ys = np.asarray(da.sel(roi=name).transpose("checkpoint", "subject").values, float)[order]
            for j, (subj, colour) in enumerate(zip(subjects, palette(len(subjects)))):
                ax.plot(xs, ys[:, j], color=colour, lw=0.7, alpha=0.85, label=subj)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                ax.plot(xs, np.nanmean(ys, axis=1), color="black", lw=1.8, label="subject mean")
            tax.apply(ax)
            ax.set_title(name)
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper")
        fig.supxlabel(_xlabel(x, log_x), fontsize=8)
        fig.supylabel(ylabel or _ylabel(var), fontsize=8)
        if title:
            fig.suptitle(title)
    if out is not None:
        save_figure(fig, out)
    return fig


def _roi_names(da, rois: Sequence[str] | None) -> list[str]:
    """``rois`` (checked against ``da``'s roi coordinate), else all of them."""
    have = [str(r) for r in da["roi"].values]
    if rois is None:
        return have
    missing = [r for r in rois if r not in have]
    if missing:
        raise ValidationError(f"no ROI {missing[0]!r}; have {', '.join(have)}")
    return list(rois)


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
    names = _roi_names(da, rois)
    xs = _x_of(da, x)
    order = np.argsort(xs)
    series = []
    for name in names:
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
    """An axis label for a variable name: ``score``, ``score_mean``, ``best_score`` ->
    "brain alignment (r)"; anything normalised (``score_normalised``, ``score_norm_mean``)
    -> "alignment / noise ceiling"; unknown names with spaces for underscores."""
    if var is None:
        return "brain alignment (r)"
    base = var[len("best_"):] if var.startswith("best_") else var
    for suffix in ("_mean", "_median"):
        base = base[: -len(suffix)] if base.endswith(suffix) else base
    if "norm" in base:
        return "alignment / noise ceiling"
    return {
        "score": "brain alignment (r)",
        "roi_score": "brain alignment (r)",
        "cv_score": "training-story CV r",
        "ceiling": "noise ceiling",
        "fraction_significant": "fraction significant",
        "r2": "R²",
    }.get(base, var.replace("_", " "))


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
    with paper_style():
        fig, ax = _new_axes(ax, figsize)
        im = _draw_heatmap(ax, da, xs, order, cmap=cmap, best=_chosen_layers(da, best, order) if mark_best else None,
                           max_ticks=6)
        ax.set_xlabel(_XLABELS.get(x, x))
        ax.set_ylabel("layer")
        cb = fig.colorbar(im, ax=ax)
        cb.set_label(_ylabel(var))
        if title:
            ax.set_title(title)
    if out is not None:
        save_figure(fig, out)
    return fig


def _draw_heatmap(ax, da, xs: np.ndarray, order: np.ndarray, *, cmap: str, norm=None, best: Any = None,
                  join_best: bool = True, max_ticks: int = 6):
    """``da`` (layer, checkpoint) as an image, checkpoints in ``order`` and labelled by
    ``xs`` (an untrained checkpoint as "init", split off by a white gap and ``//``); the
    chosen layer of each checkpoint (``best``, in ``order``) as white dots."""
    z = np.asarray(da.values, dtype=float)[:, order]
    xs = xs[order]
    layers = np.asarray(da["layer"].values)
    im = ax.imshow(z, aspect="auto", origin="lower", cmap=cmap, norm=norm, interpolation="nearest")
    ystep = max(1, math.ceil(len(layers) / 6))
    ax.set_yticks(np.arange(0, len(layers), ystep))
    ax.set_yticklabels([str(v) for v in layers[::ystep]])
    ticks = np.arange(0, len(xs), max(1, math.ceil(len(xs) / max_ticks)))
    tax = _TrainingAxis(xs)
    ax.set_xticks(ticks)
    ax.set_xticklabels([tax.label(xs[t]) for t in ticks], rotation=0)
    if best is not None:
        pos = {float(v): i for i, v in enumerate(layers)}
        rows = np.array([pos.get(float(v), np.nan) if np.isfinite(v) else np.nan for v in best])
        ok = np.isfinite(rows)
        ax.plot(np.flatnonzero(ok), rows[ok], color="white", marker="o", ms=2.5, lw=0.8, ls="-" if join_best else "none",
                gid="best-layer")
    if len(xs) > 1 and xs[0] == 0:
        ax.axvline(0.5, color="white", lw=2.0)
        _break_mark(ax, 0.5)
    ax.spines[["top", "right"]].set_visible(True)
    return im


def plot_layer_heatmaps(
    scores: Any,
    best: Any = None,
    x: str = "tokens",
    *,
    rois: Sequence[str] | None = None,
    var: str | None = None,
    cmap: str = "viridis",
    ncols: int = 4,
    panel_size: tuple[float, float] = (2.6, 1.9),
    title: str | None = None,
    out: "str | os.PathLike | None" = None,
):
    """Layer × checkpoint heatmaps, one per ROI, on one colour scale with one colour bar.

    Parameters
    ----------
    scores : xarray.DataArray (roi, layer, checkpoint) with a ``tokens``/``step``
        coordinate on checkpoint (a ``subject`` dimension is averaged), or an
        aggregate() Dataset (its subject mean ``<var>_mean``; ``best_layer`` as ``best``).
    best : xarray.DataArray (roi, checkpoint), optional
        The chosen layer per ROI and checkpoint, drawn as white dots.
    rois : list of str, optional
        Which ROIs (default all), in panel order.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import xarray as xr
    from matplotlib.colors import Normalize

    da, var = as_dataarray(scores, var, what="scores (a DataArray (roi, layer, checkpoint))", prefer_mean=True)
    if best is None and isinstance(scores, xr.Dataset) and "best_layer" in scores:
        best = scores["best_layer"]
    if "subject" in da.dims:
        da = da.mean("subject")
    if set(da.dims) != {"roi", "layer", "checkpoint"}:
        raise ValidationError(f"scores need dims (roi, layer, checkpoint), got {da.dims}")
    names = _roi_names(da, rois)
    da = da.sel(roi=names).transpose("roi", "layer", "checkpoint")
    xs = _x_of(da, x) if x in da.coords else np.arange(da.sizes["checkpoint"], dtype=float)
    order = np.argsort(xs)
    vals = np.asarray(da.values, float)
    if not np.isfinite(vals).any():
        raise ValidationError("scores: no finite values to plot")
    norm = Normalize(float(np.nanmin(vals)), float(np.nanmax(vals)))
    with paper_style():
        fig, axes = _panel_grid(len(names), ncols, panel_size, extra=(0.7, 0.5))
        for ax, name in zip(axes, names):
            d = da.sel(roi=name)
            chosen = None
            if best is not None:
                b = best.sel(roi=name) if isinstance(best, xr.DataArray) and "roi" in best.dims else best
                chosen = _chosen_layers(d, b, order)
            im = _draw_heatmap(ax, d, xs, order, cmap=cmap, norm=norm, best=chosen, join_best=False,
                               max_ticks=4)
            ax.set_title(name)
        cb = fig.colorbar(im, ax=axes, shrink=0.9, aspect=30)
        cb.set_label(_ylabel(var))
        fig.supxlabel(_XLABELS.get(x, x), fontsize=8)
        fig.supylabel("layer", fontsize=8)
        if title:
            fig.suptitle(title)
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
    transitions: Sequence[tuple] | None = None,
    panel_phases: Mapping[str, Any] | None = None,
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
        False: one compact panel per curve (about 1.1 in tall, its name left of it),
        sharing the x axis (units differ). True: one panel with each curve min-max
        scaled to [0, 1].
    phases : spans or PhaseResult, shaded on every panel.
    transitions : list of (x, lo, hi, label), optional
        E.g. the brain-alignment transitions with their intervals: a vertical line at
        ``x`` and a light band over ``[lo, hi]`` (NaN: no band) across every panel,
        ``label`` above the top panel.
    panel_phases : dict curve name -> PhaseResult (or transition times), optional
        Each curve's own detected transitions, marked in its panel only: a triangle at
        the top of the panel at the transition and a bar over its interval.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    items = _aligned_items(curves)
    transitions = [_transition_row(t) for t in (transitions or [])]
    unknown = set(panel_phases or {}) - {name for name, *_ in items}
    if unknown:
        raise ValidationError(f"panel_phases: no curve {sorted(unknown)[0]!r}; have {', '.join(n for n, *_ in items)}")
    tax = _TrainingAxis(*[it[1] for it in items], [t[0] for t in transitions], log=log_x)
    n = 1 if overlay else len(items)
    with paper_style():
        fig = Figure(figsize=figsize or (5.2, 0.55 + 1.1 * n), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
        for i, ((name, xs, ys, sem), colour) in enumerate(zip(items, palette(len(items)))):
            ax = axes[0 if overlay else i]
            if overlay:
                lo, hi = np.nanmin(ys), np.nanmax(ys)
                ax.plot(tax(xs), (ys - lo) / ((hi - lo) or 1.0), color=colour, label=name)
            else:
                _draw_series(ax, tax(xs), ys, None if sem is None else ys - sem, None if sem is None else ys + sem,
                             colour=colour)
                ax.set_ylabel(textwrap.fill(name, 16), rotation=0, ha="right", va="center")
                ax.yaxis.set_major_locator(MaxNLocator(3))
            if panel_phases and name in panel_phases:
                _mark_transitions(ax, _transition_times(panel_phases[name]), tax, colour)
        for ax in axes:
            if phases is not None:
                _shade(ax, phases, text=ax is axes[0], xmap=tax)
            _draw_transitions(ax, transitions, tax, labels=ax is axes[0])
            tax.apply(ax)
        if overlay:
            axes[0].set_ylabel("scaled (min–max)")
            axes[0].legend(loc="best")
        fig.align_ylabels(axes)
        axes[-1].set_xlabel(x_label + (" (log)" if log_x else ""))
        if title:
            fig.suptitle(title)
    if out is not None:
        save_figure(fig, out)
    return fig


def _aligned_items(curves: Mapping[str, Any]) -> list[tuple[str, np.ndarray, np.ndarray, "np.ndarray | None"]]:
    """``curves`` as sorted (name, x, y, sem or None), checked."""
    import xarray as xr

    if not curves:
        raise ValidationError("curves: give at least one curve")
    items = []
    for name, c in curves.items():
        if isinstance(c, xr.DataArray):
            xs, ys, sem = _x_of(c, "tokens"), np.asarray(c.values, float), None
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
    return items


def _transition_row(t: Any) -> tuple[float, float, float, str]:
    """One ``transitions=`` entry as (x, lo, hi, label)."""
    t = tuple(t)
    if len(t) not in (1, 3, 4):
        raise ValidationError(f"transitions: each is (x, lo, hi, label), got {t!r}")
    at = float(t[0])
    lo, hi = (float(t[1]), float(t[2])) if len(t) >= 3 else (np.nan, np.nan)
    if not np.isfinite(at):
        raise ValidationError(f"transitions: x must be finite, got {t!r}")
    return at, lo, hi, str(t[3]) if len(t) == 4 else ""


def _transition_times(ph: Any) -> list[tuple[float, float, float]]:
    """(x, lo, hi) of each transition of a PhaseResult (its ``transitions``, else its
    ``breakpoints`` and ``intervals``), or of a list of times or (x, lo, hi) rows."""
    if getattr(ph, "transitions", None):
        return [(float(tr.at), *map(float, tr.interval)) for tr in ph.transitions]
    if hasattr(ph, "breakpoints"):
        bps = np.asarray(ph.breakpoints, float).ravel()
        ivs = np.asarray(getattr(ph, "intervals", np.full((len(bps), 2), np.nan)), float).reshape(-1, 2)
        if len(ivs) != len(bps):
            ivs = np.full((len(bps), 2), np.nan)
        return [(float(b), float(lo), float(hi)) for b, (lo, hi) in zip(bps, ivs)]
    return [_transition_row(t if np.ndim(t) else (t,))[:3] for t in ph]


def _draw_transitions(ax, transitions: Sequence[tuple[float, float, float, str]], tax: "_TrainingAxis", *,
                      labels: bool) -> None:
    """Each (x, lo, hi, label): a vertical line and a light interval band; the label on top."""
    for at, lo, hi, label in transitions:
        ax.axvline(tax(at), color="0.2", lw=0.9, zorder=3, gid="transition")
        if np.isfinite(lo) and np.isfinite(hi):
            ax.axvspan(tax(lo), tax(hi), color="0.55", alpha=0.18, lw=0, zorder=0, gid="transition-interval")
        if labels and label:
            ax.text(tax(at), 1.02, label, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                    fontsize=7, color="0.2")


def _mark_transitions(ax, times: Sequence[tuple[float, float, float]], tax: "_TrainingAxis", colour: str) -> None:
    """A panel's own transitions: a downward triangle at the top edge, a bar over the interval."""
    trans = ax.get_xaxis_transform()
    for at, lo, hi in times:
        if np.isfinite(lo) and np.isfinite(hi):
            ax.plot([tax(lo), tax(hi)], [0.97, 0.97], transform=trans, color=colour, lw=2.0, alpha=0.5,
                    solid_capstyle="butt", clip_on=False, gid="panel-transition-interval")
        ax.plot([tax(at)], [0.97], transform=trans, marker="v", ms=5, color=colour, ls="none", clip_on=False,
                zorder=5, gid="panel-transition")


def plot_llc_traces(trace: Any, init_loss: Any = None, settled: Any = None, *, ax=None, figsize=(6.0, 3.2),
                    out: "str | os.PathLike | None" = None, title: str | None = None):
    """The LLC's chain diagnostics: each chain's SGLD loss over its draws, minus the
    checkpoint's loss, one colour per checkpoint (training order, light to dark); chains
    that did not settle are dashed.

    Parameters
    ----------
    trace : DataArray (checkpoint, chain, draw)
        Loss traces (a results store's ``llc_trace``, or ``loss_trace`` of
        :func:`brainalign.dynamics.llc.llc_curve`).
    init_loss : DataArray (checkpoint), optional
        The loss at each checkpoint (``llc_init_loss`` / ``init_loss``); None: the first draw.
    settled : DataArray (checkpoint, chain) of bool, optional
        ``llc_settled`` / ``settled``.
    """
    import matplotlib as mpl

    tr, _ = as_dataarray(trace, "llc_trace", what="plot_llc_traces(trace)")
    if set(tr.dims) != {"checkpoint", "chain", "draw"}:
        raise ValidationError(f"plot_llc_traces(): trace must have dims (checkpoint, chain, draw), has {tr.dims}")
    tr = tr.transpose("checkpoint", "chain", "draw")
    vals = np.asarray(tr.values, float)
    base = vals[:, :, :1] if init_loss is None else np.asarray(init_loss, float).reshape(-1, 1, 1)
    ok = np.ones(vals.shape[:2], bool) if settled is None else np.asarray(settled, bool).reshape(vals.shape[:2])
    labels = [str(c) for c in tr["checkpoint"].values]
    with paper_style():
        fig, ax = _new_axes(ax, figsize)
        cmap = mpl.colormaps["viridis"]
        n, draws = len(labels), vals.shape[2]
        w = max(1, draws // 10)  # each draw is one minibatch: the running mean shows the level
        xs = np.arange(1, draws + 1)
        for i, label in enumerate(labels):
            colour = cmap(0.9 - 0.8 * i / max(n - 1, 1))
            for c in range(vals.shape[1]):
                ys = vals[i, c] - base[i, 0 if base.shape[1] == 1 else c]
                if not np.isfinite(ys).any():
                    continue
                ax.plot(xs, ys, color=colour, lw=0.5, alpha=0.25)
                smooth = np.convolve(ys, np.ones(w) / w, mode="valid")
                ax.plot(xs[w - 1:], smooth, color=colour, lw=1.1, ls="-" if ok[i, c] else "--",
                        label=label if c == 0 and (i in (0, n - 1) or n <= 6) else None)
        ax.axhline(0, color="0.6", lw=0.6)
        ax.set_xlabel("SGLD draw")
        ax.set_ylabel("loss − checkpoint loss" + (f"\n(running mean of {w} draws)" if w > 1 else ""))
        if title:
            ax.set_title(title)
        if n:
            ax.legend(fontsize="small", frameon=False, title="checkpoint", title_fontsize="small")
    if out is not None:
        save_figure(fig, out)
    return fig
