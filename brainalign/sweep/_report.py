"""The HTML report of a sweep (:func:`report`), built from :func:`brainalign.sweep.analyze.analyze`.

Reads the store and never writes into it or beside it (see :mod:`brainalign.sweep.analyze`).
One function per section; each returns a :class:`~brainalign.report.Section` or None
(nothing to show). Every number the Findings quote is a ``span.num`` whose data
attributes say which stored quantity it is (tests/test_report_browser.py recomputes them).
"""

from __future__ import annotations

import html
import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..report import Section, fmt_tokens, num
from .analyze import (
    LEVEL,
    _data_notes,
    _done,
    _has_axis,
    _layer_label,
    analyze,
    consecutive_differences,
    group_significance,
    roi_ceilings,
)

__all__ = ["report"]

#: ROIs quoted one by one in the Findings (the most aligned significant ones).
N_LEAD = 3
#: Past this many ROIs, curves and heatmaps are small multiples.
MAX_OVERLAID = 8


@dataclass
class _Ctx:
    """What every section reads: the analysis, the store and where figures go."""

    path: Path
    out: Path
    figdir: Path | None
    a: dict
    movie: bool
    res: Any = None
    done: Any = None
    curves: Any = None
    phases: dict = field(default_factory=dict)
    cfg: dict = field(default_factory=dict)
    space: str = "fsaverage5"
    x: str = "tokens"
    lead: str = ""
    leads: list = field(default_factory=list)
    ceilings: dict | None = None
    sig: dict = field(default_factory=dict)

    def save(self, fig, name: str):
        if self.figdir:
            fig.savefig(self.figdir / name, dpi=200, bbox_inches="tight")
        return fig

    def peak(self, roi: str) -> str:
        """The checkpoint of ``roi``'s highest subject-mean alignment ("–" when the ROI
        has no finite score, e.g. no target of the atlas in the data)."""
        curve = self.curves["score_mean"].sel(roi=roi)
        if not np.isfinite(curve.values).any():
            return "–"
        return str(curve.idxmax("checkpoint").values)


def _accepts(func: Callable, name: str) -> bool:
    """Whether ``func`` takes keyword ``name`` (plotting features being added)."""
    try:
        return name in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def _context(path: Path, out: Path, figdir: Path | None, a: dict, movie: bool) -> _Ctx:
    res, curves = a["results"], a["curves"]
    ctx = _Ctx(path=path, out=out, figdir=figdir, a=a, movie=movie, res=res, done=_done(res), curves=curves,
               phases=a["phases"], cfg=res.attrs.get("config", {}) or {}, space=res.attrs.get("space", "fsaverage5"))
    ctx.x = "tokens" if _has_axis(curves, "tokens") else "step"
    peak = curves["score_mean"].max("checkpoint")
    order = [str(r) for r in peak.roi.values[np.argsort(-np.nan_to_num(peak.values, nan=-np.inf))]]
    sig = [r for r in order if "significant" not in curves or bool(curves["significant"].sel(roi=r))]
    ctx.leads = (sig or order)[:N_LEAD]
    ctx.lead = ctx.leads[0]
    ctx.ceilings = roi_ceilings(res, ctx.cfg, ctx.space)
    return ctx


def report(path: str | Path, out: str | Path = "report.html", figures_dir: str | Path | None = None,
           internal: bool = True, movie: bool = True, trust_remote_code: bool = False) -> Path:
    """The HTML report of a sweep: findings, curves, phases, maps, internal states, provenance.

    Reads the store and never writes into it or beside it: the training movie goes into
    ``figures_dir`` (as ``movie.gif``) or beside ``out`` (as ``<out stem>_movie.gif``);
    internal states are cached under ``cache_dir()/analysis``. Model code saved with a
    checkpoint runs only with ``trust_remote_code=True``, whatever the store's config says.
    Matplotlib's backend and pyplot's open figures are left as they were: the figures are
    pyplot-free ``Figure`` objects (:mod:`brainalign.plotting`), freed with the report.
    """
    from ..report import write_report

    path, out = Path(path), Path(out)
    a = analyze(path, internal=internal, trust_remote_code=trust_remote_code)
    figdir = Path(figures_dir) if figures_dir else None
    out.parent.mkdir(parents=True, exist_ok=True)
    if figdir:
        figdir.mkdir(parents=True, exist_ok=True)
    ctx = _context(path, out, figdir, a, movie)
    makers = (_findings_section, _summary_section, _curves_section, _normalised_section, _subjects_section,
              _heatmap_section, _maps_section, _internal_section, _llc_section, _downstream_section,
              _cooccurrence_section,
              _config_section, _provenance_section)
    sections = [s for s in (m(ctx) for m in makers) if s is not None]
    return write_report(out, _title(ctx.res), sections, subtitle=f"results store {path}", lead=_lead_line(ctx))


# -- names ----------------------------------------------------------------------------------
def _display_name(name: Any) -> str:
    """A model or dataset name for a title: a filesystem path becomes its last part
    (a hub id such as ``EleutherAI/pythia-160m`` is kept)."""
    s = str(name or "unknown")
    if os.path.isabs(s) or s.startswith(("~", "./", "../")) or os.sep + os.sep in s or Path(s).exists():
        return Path(s.rstrip("/")).name or s
    return s


def _title(res) -> str:
    return (f"Brain alignment of {_display_name(res.attrs.get('model'))} over training — "
            f"{_display_name(res.attrs.get('dataset'))}")


def _lead_line(ctx: _Ctx) -> str:
    res, done = ctx.res, ctx.done
    return html.escape(
        f"{_display_name(res.attrs.get('model'))} ({res.attrs.get('n_layers')} layers, {done.sizes['checkpoint']} "
        f"checkpoints) against {_display_name(res.attrs.get('dataset'))} ({res.sizes['subject']} subjects, "
        f"{res.sizes['target']} targets in {ctx.space}, {res.sizes.get('roi', 0)} ROIs).")


# -- findings -------------------------------------------------------------------------------
def _findings_section(ctx: _Ctx) -> Section:
    items = [_chance_finding(ctx)]
    items += [_roi_finding(ctx, r) for r in ctx.leads]
    items += _transition_findings(ctx)
    items += _cooccurrence_findings(ctx)
    items.append(_map_finding(ctx))
    items.append(_training_finding(ctx))
    lis = "".join(f"<li>{i}</li>" for i in items if i)
    return Section("Findings", id="findings", html=[f"<ul class='findings'>{lis}</ul>"])


def _chance_finding(ctx: _Ctx) -> str:
    c = ctx.curves
    n = int(c.sizes["roi"])
    if "significant" not in c:
        return (f"No test of alignment against chance is stored (no bootstrap replicates or null terms); "
                f"{num(n, 'n_rois', fmt='int')} ROIs are shown without a significance claim.")
    k = int(c["significant"].sum())
    return (f"Alignment is above chance in {num(k, 'n_above_chance', fmt='int')} of {num(n, 'n_rois', fmt='int')} "
            f"ROIs (the ROI test of the Summary, one-sided, alpha = 0.05 per ROI).")


def _roi_finding(ctx: _Ctx, roi: str) -> str:
    c = ctx.curves
    ck = ctx.peak(roi)
    at = dict(roi=roi, checkpoint=ck)
    r = float(c["score_mean"].sel(roi=roi, checkpoint=ck))
    s = f"<b>{html.escape(roi)}</b>: peak alignment r = {num(r, 'peak_r', **at)}"
    if "score_lo" in c:
        lo, hi = float(c["score_lo"].sel(**at)), float(c["score_hi"].sel(**at))
        level = c.attrs.get("level", LEVEL)
        s += f" ({level:.0%} interval {num(lo, 'peak_lo', **at)} to {num(hi, 'peak_hi', **at)})"
    tokens = float(c["tokens"].sel(checkpoint=ck)) if "tokens" in c.coords else np.nan
    s += f" at {html.escape(ck)}"
    if np.isfinite(tokens):
        s += f" ({num(tokens, 'tokens', fmt='tokens', checkpoint=ck)} tokens)"
    layer = float(c["best_layer"].sel(**at))
    if np.isfinite(layer):
        n_layers = ctx.res.attrs.get("n_layers")
        s += (f", best layer {num(layer, 'best_layer', fmt='int', **at)}"
              + (f" of {num(n_layers, 'n_layers', fmt='int')}" if n_layers else "")
              + f" (relative depth {num(float(c['best_depth'].sel(**at)), 'best_depth', **at)})")
    if "adjusted_p" in c.coords:
        s += f"; ROI test against chance: adjusted p = {num(float(c['adjusted_p'].sel(roi=roi)), 'adjusted_p', fmt='p', roi=roi)}"
        if "significant" in c:
            s += " (above chance)" if bool(c["significant"].sel(roi=roi)) else " (not above chance)"
    return s + "."


def _transition_findings(ctx: _Ctx) -> list[str]:
    """One line per ROI with phases: its pattern and each transition with interval and test."""
    out, n_without = [], 0
    for roi, pr in ctx.phases.items():
        if pr.significant is False:
            continue
        if not pr.transitions:
            n_without += 1
            continue
        parts = []
        for i, tr in enumerate(pr.transitions, 1):
            at = dict(roi=roi, transition=i)
            lo, hi = tr.interval
            iv = (f" ({pr.level:.0%} interval {num(lo, 'transition_lo', fmt='tokens', **at)} to "
                  f"{num(hi, 'transition_hi', fmt='tokens', **at)})" if np.isfinite(lo) and np.isfinite(hi) else "")
            what = f"{tr.kind} {html.escape(tr.label)}" if tr.label else tr.kind
            parts.append(f"a {what} at {num(tr.at, 'transition_at', fmt='tokens', **at)} {pr.x_name}{iv}, "
                         f"p = {num(tr.p, 'transition_p', fmt='p', **at)} ({html.escape(tr.test)})")
        out.append(f"<b>{html.escape(roi)}</b> ({html.escape(pr.pattern)}): " + "; ".join(parts) + ".")
    if n_without:
        out.append(f"{num(n_without, 'n_rois_without_transition', fmt='int')} other ROI(s) with significant "
                   f"alignment show no transition that passes its test.")
    if not ctx.phases:
        out.append("Too few checkpoints with a training axis for phase detection: no transition is claimed.")
    return out


def _best_cell(ctx: _Ctx) -> tuple[str, int]:
    """The lead ROI's peak checkpoint and the layer chosen there (the maps show it)."""
    ck = ctx.peak(ctx.lead)
    layer = float(ctx.curves["best_layer"].sel(roi=ctx.lead, checkpoint=ck))
    return ck, int(layer) if np.isfinite(layer) else int(ctx.done.layer.values[0])


def _map_finding(ctx: _Ctx) -> str | None:
    if ctx.space not in _fsaverage() or "pvalue" not in ctx.done:
        return None
    ck, layer = _best_cell(ctx)
    g = _significance(ctx, ck, layer)
    n_tested = int(np.isfinite(g["pvalue"].values).sum())
    at = dict(checkpoint=ck, layer=layer)
    return (f"At {html.escape(ck)}, layer {layer} (the peak of {html.escape(ctx.lead)}), "
            f"{num(g.attrs['n_significant'], 'n_significant_targets', fmt='int', **at)} of "
            f"{num(n_tested, 'n_tested_targets', fmt='int', **at)} targets are above chance over the subjects "
            f"(FDR q &lt; {g.attrs['q']:g}).")


def _training_finding(ctx: _Ctx) -> str | None:
    t = ctx.a.get("training")
    return _overlap_sentence(t) if t else None


def _overlap_sentence(t: dict) -> str:
    """Whether the model's training corpus holds any stimulus story (analyze()'s ``training``)."""
    docs, words = t.get("documents"), t.get("words")
    size = ""
    if docs is not None and words is not None:
        size = (f" ({num(docs, 'corpus_documents', fmt='int')} documents, "
                f"{num(words, 'corpus_words', fmt='int')} words)")
    inside = t.get("stories_in_corpus")
    if inside is None:
        return (f"The model was trained here (train-tiny) on its own corpus{size}; the stimulus stories were not "
                f"available to compare with it.")
    n = len(t.get("stories") or [])
    overlap = t.get("overlap")
    if inside:
        return (f"Caution: {num(len(inside), 'n_overlap_stories', fmt='int')} of the {num(n, 'n_stories', fmt='int')} "
                f"stimulus stories are in the model's training corpus{size}: {html.escape(', '.join(map(str, inside)))}.")
    if overlap is None:  # the corpus texts are not on this machine: names only
        return (f"The model's training corpus{size} could not be compared with the {num(n, 'n_stories', fmt='int')} "
                f"stimulus stories by text (its files are not on this machine); no corpus file has a stimulus story's "
                f"name.")
    most = max(overlap.values()) if overlap else 0.0
    if most >= DISJOINT_BELOW:
        return (f"The model's training corpus{size} shares up to {num(most, 'max_overlap', fmt='percent')} of a stimulus "
                f"story's 8-word sequences (below the {APPEARS_TEXT} that counts as the story being in it): partly "
                f"overlapping text.")
    return (f"The model's training corpus{size} holds none of the {num(n, 'n_stories', fmt='int')} stimulus stories: "
            f"at most {num(most, 'max_overlap', fmt='percent')} of any story's 8-word sequences appear in it (checked by "
            f"text and names), so the alignment is not to text the model was trained on.")


#: a largest shared fraction of 8-word sequences below this is reported as no overlap
DISJOINT_BELOW = 0.02
APPEARS_TEXT = "half"


def _fsaverage() -> dict:
    from ..stimulus import FSAVERAGE_SIZES

    return FSAVERAGE_SIZES


def _significance(ctx: _Ctx, ck: str, layer: int):
    """:func:`group_significance` of one cell, computed once per report."""
    if (ck, layer) not in ctx.sig:
        ctx.sig[(ck, layer)] = group_significance(ctx.done, ck, layer)
    return ctx.sig[(ck, layer)]


# -- summary --------------------------------------------------------------------------------
def _summary_section(ctx: _Ctx) -> Section:
    res, done, curves = ctx.res, ctx.done, ctx.curves
    text = [
        f"Dataset {_display_name(res.attrs.get('dataset'))} ({res.sizes['subject']} subjects: "
        f"{', '.join(map(str, res.subject.values))}; {res.sizes['target']} targets in {ctx.space}). Model "
        f"{_display_name(res.attrs.get('model'))} with {res.attrs.get('n_layers')} layers; {done.sizes['checkpoint']} "
        f"of {res.sizes['checkpoint']} checkpoints done; layers {list(map(int, res.layer.values))}.",
        "Scores are held-out Pearson r on the test stories, alphas chosen per target by leave-stories-out "
        f"cross-validation on the training stories. ROI curves take, at each checkpoint, {curves.attrs['layer_rule_text']}.",
        "Noise ceilings (CCmax, Schoppe et al. 2016, from the test story's repeats) are shown beside the raw scores when "
        "the data have repeats; they are not applied to the raw scores. CCmax is undefined where the repeats show no "
        "signal; those targets count as 0 in the ROI means.",
    ]
    text += _data_notes(res, ctx.ceilings)
    if "significance_test" in curves.attrs:
        text.append(f"Alignment above chance (\u201cabove chance\u201d; phases are claimed only there): "
                    f"{curves.attrs['significance_test']}.")
    if "interval" in curves.attrs:
        ptext = ("from the t distribution with n_blocks - 1 degrees of freedom of the difference over its bootstrap SD"
                 if curves.attrs.get("method") == "t" else "from the replicates' signs")
        text.append(f"Uncertainty: {curves.attrs['interval']}. Differences between checkpoints are paired (the same "
                    f"blocks in every replicate); their two-sided p-values come {ptext}.")
    return Section("Summary", id="summary", text=text, tables=[_summary_table(ctx)])


def _summary_table(ctx: _Ctx) -> pd.DataFrame:
    c = ctx.curves
    last = str(ctx.done.checkpoint.values[-1])
    rois = [str(r) for r in c.roi.values]
    t = pd.DataFrame({
        "ROI": rois,
        "best checkpoint": [ctx.peak(r) for r in rois],
        "best r (subject mean)": [float(c["score_mean"].sel(roi=r).max()) for r in rois],
        f"r at {last}": [float(c["score_mean"].sel(roi=r, checkpoint=last)) for r in rois],
        f"chosen layer at {last}": [_layer_label(c["best_layer"].sel(roi=r, checkpoint=last)) for r in rois],
        "pattern": [ctx.phases[r].pattern if r in ctx.phases else "(too few checkpoints)" for r in rois],
    })
    if "significant" in c:
        adj = c["adjusted_p"] if "adjusted_p" in c.coords else None
        t.insert(1, "above chance", ["yes" if bool(c["significant"].sel(roi=r)) else "no" for r in rois])
        if adj is not None:
            t.insert(2, "adjusted p", [float(adj.sel(roi=r)) for r in rois])
    if ctx.ceilings is not None:
        t.insert(3, "noise ceiling (ROI mean)", [ctx.ceilings.get(r, np.nan) for r in rois])
    return t.sort_values("best r (subject mean)", ascending=False)


# -- curves and phases ----------------------------------------------------------------------
def _curves_figure(ctx: _Ctx, data, var: str | None = None, ylabel: str | None = None, title: str | None = None):
    """All ROIs: one panel with the legend outside, or small multiples past MAX_OVERLAID."""
    from ..plotting import curves as pc

    rois = [str(r) for r in data.roi.values]
    if len(rois) > MAX_OVERLAID and hasattr(pc, "plot_curves_grid"):
        kw = {"var": var} if var else {}
        return pc.plot_curves_grid(data, x=ctx.x, phases=ctx.phases, **kw)
    if len(rois) > MAX_OVERLAID:
        return _grid(rois, lambda ax, r: pc.plot_curves(data, x=ctx.x, rois=[r], phases=ctx.phases.get(r), ax=ax,
                                                         var=var, ylabel=ylabel, title=r))
    kw = {"legend": "outside"} if _accepts(pc.plot_curves, "legend") else {"figsize": (7.5, 3.6)}
    fig = pc.plot_curves(data, x=ctx.x, rois=rois, phases=ctx.phases.get(ctx.lead), var=var, ylabel=ylabel,
                         title=title, **kw)
    if "legend" not in kw and fig.axes and fig.axes[0].get_legend() is not None:  # until legend="outside" lands
        fig.axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    return fig


def _top_rois(ctx: _Ctx, n: int) -> list[str]:
    """The ``n`` ROIs of highest peak subject-mean alignment, in the store's order."""
    peak = ctx.curves["score_mean"].max("checkpoint")
    rois = [str(r) for r in peak.roi.values]
    best = set(np.array(rois)[np.argsort(-np.nan_to_num(peak.values, nan=-np.inf))[:n]])
    return [r for r in rois if r in best]


def _grid(names: list[str], draw: Callable, ncols: int = 4, panel=(2.6, 1.9)):
    """Small multiples: ``draw(ax, name)`` in one panel per name."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    nrows = int(np.ceil(len(names) / ncols))
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        draw(ax, name)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    return fig


def _curves_section(ctx: _Ctx) -> Section:
    c = ctx.curves
    title = ("Brain alignment over training (layer chosen on the training stories)" if c.attrs["layer_rule"] == "cv"
             else "Brain alignment over training (best held-out layer)")
    band = (f"{c.attrs.get('level', LEVEL):.0%} block-bootstrap intervals of the subject mean" if "score_lo" in c
            else "mean ± SEM over subjects")
    top = _top_rois(ctx, MAX_OVERLAID)
    fig = _curves_figure(ctx, c.sel(roi=top), title=title)
    what = "every ROI" if len(top) == c.sizes["roi"] else f"the {len(top)} most aligned of {c.sizes['roi']} ROIs"
    figs = [(ctx.save(fig, "curves.png"), f"Alignment over training at the chosen layer, {what}, {band}; shading: "
             f"phases of {ctx.lead}; bars at the bottom: transition intervals.")]
    if len(top) < c.sizes["roi"]:
        grid = _curves_figure(ctx, c)
        figs.append((ctx.save(grid, "curves_rois.png"), f"Every ROI in its own panel ({band}; shading: its phases)."))
    sec = Section("Alignment over training and phase transitions", id="curves", figures=figs)
    summaries = [p.summary().split("\n") for p in ctx.phases.values()]
    sec.lists = summaries or [["Too few checkpoints with a training axis for phase detection."]]
    table = ctx.a.get("phase_table")
    if table is not None and len(table):
        sec.tables.append(_phase_frame(table))
    diffs = _differences_frame(ctx)
    if diffs is not None:
        sec.tables.append(diffs)
    return sec


def _phase_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The phase table with one ROI column (``curve`` repeats ``roi``) and readable names."""
    t = table.drop(columns=[c for c in ("curve",) if c in table.columns and "roi" in table.columns])
    names = {"roi": "ROI", "start": "start (tokens)", "end": "end (tokens)", "breakpoint": "transition (tokens)",
             "breakpoint_lo": "transition low (tokens)", "breakpoint_hi": "transition high (tokens)",
             "change_lo": "change low", "change_hi": "change high", "width": "width (decades)", "amp": "amplitude"}
    t = t.rename(columns=names)
    return t.drop(columns=[c for c in t.columns if t[c].isna().all()])


def _differences_frame(ctx: _Ctx) -> pd.DataFrame | None:
    if "score_lo" not in ctx.curves or ctx.done.sizes["checkpoint"] < 2:
        return None
    d = consecutive_differences(ctx.done).sel(roi=ctx.lead)
    return pd.DataFrame({
        f"{ctx.lead}: from": d.start.values, "to": d.end.values,
        "difference in r": d.difference.values,
        "interval low": d.lo.values, "interval high": d.hi.values,
        "p (two-sided bootstrap)": d.pvalue.values,
    })


def _normalised_section(ctx: _Ctx) -> Section | None:
    """Raw and ceiling-normalised curves side by side (only ROIs with a positive ceiling)."""
    if not ctx.ceilings:
        return None
    import xarray as xr

    rois = [r for r in map(str, ctx.curves.roi.values) if ctx.ceilings.get(r, 0) > 0]
    if not rois:
        return None
    c = ctx.curves.sel(roi=rois)
    ceil = xr.DataArray([ctx.ceilings[r] for r in rois], dims="roi", coords={"roi": rois})
    keep = [v for v in ("score", "score_mean", "score_lo", "score_hi", "score_sem") if v in c]
    norm = c[keep] / ceil
    norm["best_layer"] = c["best_layer"]
    norm.attrs = dict(c.attrs)
    raw = _curves_figure(ctx, c, title="raw held-out r")
    scaled = _curves_figure(ctx, norm, ylabel="alignment / noise ceiling", title="divided by the noise ceiling")
    return Section("Raw and ceiling-normalised alignment", id="normalised", text=[
        "Left: the raw held-out r. Right: the same curves (and intervals) divided by the ROI's noise ceiling (the mean "
        "CCmax over its targets and subjects, in the Summary table): the fraction of the explainable correlation "
        "reached. Not clipped; ROIs without a positive ceiling are left out."],
        figures=[(ctx.save(raw, "curves_raw.png"), "Raw held-out r.", 0.5),
                 (ctx.save(scaled, "curves_normalised.png"), "ROI score / ROI noise ceiling.", 0.5)])


def _subjects_section(ctx: _Ctx) -> Section | None:
    c = ctx.curves
    if c.sizes.get("subject", 1) < 2:
        return None
    from ..plotting import curves as pc

    score = c["score"].transpose("subject", "roi", "checkpoint")
    rois = [str(r) for r in c.roi.values]
    if hasattr(pc, "plot_subject_curves"):
        fig = pc.plot_subject_curves(score)
    else:
        xs = np.asarray(c[ctx.x].values, float)

        def draw(ax, r):
            series = {str(s): (xs, score.sel(subject=s, roi=r).values) for s in score.subject.values}
            pc.plot_curves(series, x=ctx.x, ax=ax, title=r)
        fig = _grid(rois, draw)
    return Section("Per-subject curves", id="subjects", figures=[(ctx.save(fig, "subject_curves.png"),
                   "Each subject's held-out ROI score at the chosen layer (the layer chosen on the subject mean).")])


# -- heatmaps -------------------------------------------------------------------------------
def _heatmap_section(ctx: _Ctx) -> Section:
    from ..plotting import curves as pc

    heat = ctx.done["roi_score"].mean("subject").transpose("roi", "layer", "checkpoint")
    best = ctx.curves["best_layer"]
    rois = [str(r) for r in heat.roi.values]
    if hasattr(pc, "plot_layer_heatmaps"):
        fig = pc.plot_layer_heatmaps(heat, best=best, x=ctx.x) if _accepts(pc.plot_layer_heatmaps, "x") \
            else pc.plot_layer_heatmaps(heat, best=best)
    else:
        fig = _grid(rois, lambda ax, r: pc.plot_layer_heatmap(heat.sel(roi=r), x=ctx.x, best=best.sel(roi=r), ax=ax,
                                                               title=f"{r}: layer × checkpoint"), ncols=3,
                    panel=(3.5, 2.4))
    rule = "training-story CV score" if ctx.curves.attrs["layer_rule"] == "cv" else "held-out score (no CV scores stored)"
    return Section("Layers × checkpoints", id="heatmaps", figures=[(ctx.save(fig, "layer_heatmap.png"),
                   "Subject-mean held-out ROI score per layer and checkpoint, one panel per ROI; dots mark the layer "
                   "chosen by the " + rule + ".")])


# -- maps -----------------------------------------------------------------------------------
def _maps_section(ctx: _Ctx) -> Section | None:
    if ctx.space not in _fsaverage():
        return None
    from ..plotting import flatmap

    ck, layer = _best_cell(ctx)
    atlas = (ctx.cfg.get("rois") or {}).get("atlas")
    mean_score = ctx.done["score"].mean("subject")
    v = mean_score.sel(checkpoint=ck, layer=layer).values
    maps = []
    title = f"{ck}, layer {layer}: held-out r (subject mean)"
    if "pvalue" in ctx.done:
        g = _significance(ctx, ck, layer)
        fig = _flatmap(flatmap, g["score"].values, ctx.space, atlas, mask=g["significant"].values, title=None,
                       figsize=(7.2, 3.0))
        maps.append((ctx.save(fig, "flatmap_significant.png"),
                     f"{title}, where above chance (FDR q < {g.attrs['q']:g}) over the subjects: {g.attrs['n_significant']} of "
                     f"{int(np.isfinite(g['pvalue'].values).sum())} targets ({g.attrs['test']}); ROI outlines of the "
                     f"sweep's atlas over the sulcal pattern.", 0.66))
        width = 0.34  # beside the thresholded map, smaller (drawn at full size, shown scaled)
    else:
        width = 1.0
    fig = flatmap(v, space=ctx.space, label="held-out r", figsize=(7.2, 3.0))  # as stored, no overlay
    maps.append((ctx.save(fig, "flatmap_best.png"), f"Unthresholded: {title}, the peak checkpoint and layer of "
                 f"{ctx.lead}.", width))
    movie = _movie(ctx, mean_score)
    if movie is not None:
        maps.append((movie, "Training movie: best layer at each checkpoint (subject mean).", 0.6))
    return Section("Cortical maps", id="maps", figures=maps)


def _flatmap(flatmap, values, space, atlas, title, figsize, mask=None):
    kw = dict(space=space, mask=mask, title=title, label="held-out r", figsize=figsize)
    if atlas and atlas != "whole_cortex":
        try:
            return flatmap(values, rois=atlas, **kw)
        except Exception:  # noqa: BLE001 - outlines are an extra: a map without them beats none
            pass
    return flatmap(values, **kw)


def _movie(ctx: _Ctx, mean_score) -> Path | None:
    from ..plotting import flatmap_movie

    done = ctx.done
    if not ctx.movie or done.sizes["checkpoint"] < 2:
        return None
    first = int(done.layer.values[0])
    frames, labels = [], []
    for c, t in zip(done.checkpoint.values.tolist(), done.tokens.values):
        b = float(ctx.curves["best_layer"].sel(roi=ctx.lead, checkpoint=c))
        frames.append(mean_score.sel(checkpoint=c, layer=int(b) if np.isfinite(b) else first).values)
        labels.append(f"{c} — {fmt_tokens(float(t))} tokens")
    gif = ctx.figdir / "movie.gif" if ctx.figdir else ctx.out.with_name(f"{ctx.out.stem}_movie.gif")
    flatmap_movie(frames, labels, out=gif, space=ctx.space, label="held-out r")
    return gif


# -- internal states, downstream tasks, co-occurrence ---------------------------------------
def _alignment_transitions(ctx: _Ctx) -> list[tuple[float, float, float, str]]:
    """(x, low, high, label) of every transition of the lead ROIs."""
    out = []
    for roi in ctx.leads:
        pr = ctx.phases.get(roi)
        for i, tr in enumerate(getattr(pr, "transitions", []) or [], 1):
            lo, hi = tr.interval
            out.append((float(tr.at), float(lo), float(hi), f"{roi} {i}"))
    return out


def _aligned_figure(ctx: _Ctx, curves: dict, title: str):
    """:func:`plot_aligned_curves` with the alignment transitions drawn across every panel."""
    from ..plotting import plot_aligned_curves

    trans = _alignment_transitions(ctx)
    kw: dict = {"title": title}
    if _accepts(plot_aligned_curves, "panel_phases"):
        sp = ctx.a.get("state_phases") or {}
        kw["panel_phases"] = {k: v for k, v in sp.items() if k in curves}
    if _accepts(plot_aligned_curves, "transitions"):
        return plot_aligned_curves(curves, transitions=trans, **kw)
    fig = plot_aligned_curves(curves, **kw)
    for ax in fig.axes:  # until transitions= lands in plotting
        for x, lo, hi, _ in trans:
            ax.axvline(x, color="0.25", lw=0.8, ls=":")
            if np.isfinite(lo) and np.isfinite(hi):
                ax.axvspan(lo, hi, color="0.5", alpha=0.12, lw=0)
    return fig


def _positive(xs, ys) -> tuple[np.ndarray, np.ndarray]:
    """Finite points; the untrained checkpoint (x = 0) is kept (plotted at "init")."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    ok = np.isfinite(xs) & (xs >= 0) & np.isfinite(ys)
    return xs[ok], ys[ok]


def _state_curves(ctx: _Ctx) -> dict:
    """name -> (x, y): the lead ROI's alignment, then the internal states."""
    cur = {f"brain alignment ({ctx.lead})": (ctx.curves.tokens.values, ctx.curves["score_mean"].sel(roi=ctx.lead).values)}
    given = ctx.a.get("state_curves")
    if given:
        for name, da in given.items():
            cur[str(name)] = (da["tokens"].values, da.values)
    else:
        cur.update(_legacy_states(ctx))
    keep = {k: _positive(*v) for k, v in cur.items()}
    return {k: v for k, v in keep.items() if len(v[0]) >= 2}


def _legacy_states(ctx: _Ctx) -> dict:
    """The internal-state curves from ``analyze()["internal"]`` (before ``state_curves``)."""
    states, done, cur = ctx.a.get("internal"), ctx.done, {}
    if states is None:
        return cur
    x = states["tokens"].values if "tokens" in states.coords else np.arange(states.sizes["checkpoint"])
    for var in ("cka_final", "cka_prev", "eff_dim", "twonn"):
        if var in states:
            cur[var.replace("_", " ")] = (x, states[var].mean("layer").values)
    for var in ("induction_max", "prev_token_max"):
        if var in states:
            cur[var.replace("_", " ")] = (x, states[var].max("layer").values)
    if "icl_score" in states:
        cur["in-context learning score"] = (x, states["icl_score"].values)
    if "lm_loss" in done and np.isfinite(done["lm_loss"].values).any():
        cur["LM loss on the stories"] = (done.tokens.values, done["lm_loss"].values)
    return cur


def _internal_section(ctx: _Ctx) -> Section | None:
    """Internal states (from the models) or, when they were not computed, the training
    curves the store and the training log hold (LM loss, memorisation)."""
    cur = _state_curves(ctx)
    if len(cur) < 2:
        return None
    stored = list((ctx.res.attrs.get("internal_states") or {}).get("computed") or [])
    models = ctx.a.get("internal") is not None
    title = "Internal states" if models or stored else "Training curves"
    fig = _aligned_figure(ctx, cur, "Brain alignment next to the model's internal states" if models or stored
                          else "Brain alignment next to the training curves")
    note = ("CKA/dimensionality averaged over layers, head scores max over heads and layers." if models else
            "Internal states of the models were not computed for this report (internal=False, or the model needs "
            "remote code that was not granted).")
    if stored:
        note += f" Stored by the sweep (internal_states): {', '.join(stored)}."
    sec = Section(title, id="internal", figures=[(ctx.save(fig, "internal_states.png"),
                  "Same training axis; the brain-alignment transitions of "
                  f"{', '.join(ctx.leads)} with their intervals drawn across every panel. " + note)])
    _phase_parts(sec, {k: p for k, p in (ctx.a.get("state_phases") or {}).items() if k in cur})
    return sec


def _phase_parts(sec: Section, phases: Mapping) -> None:
    """The transitions of several curves in one table, in training order (so that
    transitions that line up sit together), each curve's pattern, and the test and
    bootstrap scheme once (it is the same for all)."""
    if not phases:
        return
    frames = [p.transitions_frame() for p in phases.values() if p.transitions]
    lines = []
    for name, p in phases.items():
        line = f"{name}: {p.pattern}" + ("" if p.transitions else " (no transition passes its test)")
        lines.append(" ".join([line, *p.notes]))
    sec.lists = [lines]
    if frames:
        t = pd.concat(frames, ignore_index=True).sort_values("log_at", kind="stable")
        t["phases"] = [f"{b}\u2192{a}" if b or a else "" for b, a in zip(t["before"], t["after"])]
        t = t[["curve", "transition", "kind", "at", "lo", "hi", "change", "phases", "p"]].rename(
            columns={"at": "at (tokens)", "lo": "low (tokens)", "hi": "high (tokens)", "change": "change (step amplitude "
                     "or slope change per decade)"})
        sec.tables = [t.reset_index(drop=True)]
    first = next(iter(phases.values()))
    sec.text = [*sec.text, f"Phase detection of each curve (detect_phases on log10 training tokens). Tests: "
                f"{first.tests}. Intervals: {first.bootstrap}."]


def _llc_section(ctx: _Ctx) -> Section | None:
    """The LLC's chain diagnostics (stored with ``internal_states: [llc]``): loss traces,
    settings, and the checkpoints whose chains did not settle."""
    from ..plotting import plot_llc_traces

    done = ctx.done
    if "llc_trace" not in done or not np.isfinite(done["llc_trace"].values).any():
        return None
    info = (ctx.res.attrs.get("internal_states") or {}).get("llc") or {}
    fig = plot_llc_traces(done["llc_trace"], done["llc_init_loss"], done["llc_settled"])
    settled = done["llc_settled"].values.astype(bool)
    n_chain = int(done.sizes["chain"])
    bad = [str(c) for c, ok in zip(done.checkpoint.values, settled.all(axis=1)) if not ok]
    neg = [str(c) for c, v in zip(done.checkpoint.values, done["llc"].values) if np.isfinite(v) and v < 0]
    text = []
    if info:
        st = info.get("settings", {})
        text.append(f"Measured on {info.get('data', 'the stories')}: {n_chain} SGLD chains of {st.get('draws')} draws, "
                    f"lr {st.get('lr')}, n·β {st.get('n_beta')}, localization {st.get('localization')}, seed "
                    f"{st.get('seed')}. A chain has settled when the mean loss of its last quarter differs from the "
                    f"quarter before by at most {info.get('settle_tol')} of its rise, or by at most twice the "
                    "standard error of that difference (the minibatch noise).")
    text.append(f"Chains did not settle at {len(bad)} of {len(done.checkpoint)} checkpoints ({', '.join(bad)}): their "
                "LLC is uncertain; use more draws, a smaller lr or a stronger localization." if bad else
                "Every chain settled.")
    if neg:
        text.append(f"Negative LLC at {', '.join(neg)}: those checkpoints are not near a minimum of the loss "
                    "(or the chains are too hot).")
    return Section("Learning coefficient: chain diagnostics", id="llc", text=text, figures=[(
        ctx.save(fig, "llc_traces.png"), "Each SGLD chain's loss minus the checkpoint's loss over its draws; dashed: "
        "a chain that did not settle.", 0.6)])


def _downstream_section(ctx: _Ctx) -> Section | None:
    ds = ctx.a.get("downstream")
    if ds is None or not len(getattr(ds, "data_vars", {})):
        return None
    x = ds["tokens"].values if "tokens" in ds.coords else ctx.done.tokens.values
    cur = {f"brain alignment ({ctx.lead})": _positive(ctx.curves.tokens.values,
                                                      ctx.curves["score_mean"].sel(roi=ctx.lead).values)}
    cur.update({str(v): _positive(x, ds[v].values) for v in ds.data_vars})
    cur = {k: v for k, v in cur.items() if len(v[0]) >= 2}
    if len(cur) < 2:
        return None
    fig = _aligned_figure(ctx, cur, "Brain alignment next to downstream tasks")
    sec = Section("Downstream tasks", id="downstream", figures=[(ctx.save(fig, "downstream.png"),
                  "Downstream-task scores per checkpoint on the same training axis, with the brain-alignment transitions.")])
    _phase_parts(sec, {k: p for k, p in (ctx.a.get("state_phases") or {}).items() if k in ds.data_vars})
    return sec


def _cooccurrence_section(ctx: _Ctx) -> Section | None:
    t = ctx.a.get("cooccurrence")
    if t is None or not len(t):
        others = [p for p in (ctx.a.get("state_phases") or {}).values() if p.transitions]
        if not others:
            return None
        # there are internal-state or downstream transitions, but none of the brain's to set them against
        c = ctx.curves
        if "significant" in c and not bool(c["significant"].any()):
            why = ("no ROI's alignment is above chance (the ROI test of the Summary), so there is no "
                   "brain-alignment transition to compare with.")
        else:
            why = "no brain-alignment transition passes its test (see the phase transitions above)."
        return Section("Co-occurrence of transitions", id="cooccurrence", text=[
            f"Not computed: {why} The transitions of the internal states and downstream tasks are in their own "
            "sections, in training order."])
    names = {"roi": "ROI", "transition": "alignment transition", "change": "phases", "tokens": "at (tokens)",
             "tokens_lo": "low (tokens)", "tokens_hi": "high (tokens)"}
    for g, what in (("state", "internal state"), ("downstream", "downstream task")):
        names.update({g: f"nearest {what}", f"{g}_tokens": f"{what} at (tokens)",
                      f"{g}_distance_log10": f"{what} distance (log10 tokens)", f"{g}_change": f"{what} phases"})
    shown = t.rename(columns=names)
    return Section("Co-occurrence of transitions", id="cooccurrence", tables=[shown], text=[
        "Each brain-alignment transition (of the ROIs whose alignment is above chance) with the nearest internal-state "
        "and downstream-task transitions; distance = their log10 training tokens minus the brain transition's "
        "(decades; negative: the other transition comes first)."])


def _cooccurrence_findings(ctx: _Ctx) -> list[str]:
    t = ctx.a.get("cooccurrence")
    if t is None or not len(t):
        return []
    out = []
    for i, row in enumerate(t.to_dict("records")):
        parts = []
        for g, what in (("state", "internal-state"), ("downstream", "downstream-task")):
            name, d = row.get(g), row.get(f"{g}_distance_log10")
            if name is not None and isinstance(name, str) and np.isfinite(float(d)):
                parts.append(f"the nearest {what} transition is {html.escape(name)}, "
                             f"{num(float(d), f'{g}_distance_log10', row=i, roi=row['roi'])} decades away")
        if parts:
            out.append(f"<b>{html.escape(str(row['roi']))}</b> {html.escape(str(row.get('transition', '')))} at "
                       f"{num(float(row['tokens']), 'cooccurrence_tokens', fmt='tokens', row=i, roi=row['roi'])} "
                       f"tokens: " + "; ".join(parts) + ".")
    return out


# -- configuration and provenance -----------------------------------------------------------
def _config_section(ctx: _Ctx) -> Section:
    from ..report import yaml_block

    return Section("Configuration", id="config", collapsed=True, code=yaml_block(ctx.cfg),
                   text=["The run config saved in the store (YAML)."])


def _provenance_section(ctx: _Ctx) -> Section:
    from ..report import yaml_block

    res = ctx.res
    return Section(
        "Provenance", id="provenance", collapsed=True,
        text=[f"brainalign {res.attrs.get('brainalign_version')}, git commit {res.attrs.get('git_commit')}, Python "
              f"{res.attrs.get('python')}, store created {res.attrs.get('created')}, completed "
              f"{res.attrs.get('completed')}. Settings hash {res.attrs.get('settings_hash')}. Results store: {ctx.path}."],
        tables=[t for t in [_provenance_frame(res)] if len(t)],
        code="package versions:\n" + yaml_block(res.attrs.get("package_versions", {})),
    )


def _provenance_frame(res) -> pd.DataFrame:
    """One row per checkpoint task, in training order (tokens, then step, then store order)."""
    tasks = res.attrs.get("tasks", {}) or {}
    order = {str(c): i for i, c in enumerate(res.checkpoint.values)}

    def coord(name, ck):
        if name in res.coords and ck in order:
            return float(res[name].values[order[ck]])
        return np.nan

    rows = [{"checkpoint": k, "step": coord("step", k), "tokens": coord("tokens", k), "seconds": v.get("seconds"),
             "peak RSS (MB)": v.get("peak_rss_mb"), "host": v.get("host"), "finished": v.get("finished")}
            for k, v in tasks.items() if isinstance(v, dict)]
    t = pd.DataFrame(rows)
    if not len(t):
        return t
    t["_order"] = [order.get(k, len(order)) for k in t["checkpoint"]]
    return t.sort_values(["tokens", "step", "_order"], na_position="last").drop(columns="_order")
