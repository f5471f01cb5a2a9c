"""The HTML report of a sweep (:func:`report`), built from :func:`brainalign.sweep.analyze.analyze`.

Reads the store and never writes into it or beside it (see :mod:`brainalign.sweep.analyze`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .analyze import (
    LEVEL,
    _data_notes,
    _done,
    _has_axis,
    _layer_label,
    _tokens_label,
    analyze,
    consecutive_differences,
    group_significance,
    roi_ceilings,
)

__all__ = ["report"]


def report(path: str | Path, out: str | Path = "report.html", figures_dir: str | Path | None = None,
           internal: bool = True, movie: bool = True, trust_remote_code: bool = False) -> Path:
    """The HTML report of a sweep: config, data, curves, phases, maps, provenance.

    Reads the store and never writes into it or beside it: the training movie goes into
    ``figures_dir`` (as ``movie.gif``) or beside ``out`` (as ``<out stem>_movie.gif``);
    internal states are cached under ``cache_dir()/analysis``. Model code saved with a
    checkpoint runs only with ``trust_remote_code=True``, whatever the store's config says.
    Matplotlib's backend and pyplot's open figures are left as they were: the figures are
    pyplot-free ``Figure`` objects (:mod:`brainalign.plotting`), freed with the report.
    """
    from ..plotting import flatmap, flatmap_movie, plot_aligned_curves, plot_curves, plot_layer_heatmap
    from ..report import Section, json_block, write_report

    path, out = Path(path), Path(out)
    a = analyze(path, internal=internal, trust_remote_code=trust_remote_code)
    res, curves, phases, table, states = a["results"], a["curves"], a["phases"], a["phase_table"], a["internal"]
    done = _done(res)
    cfg = res.attrs.get("config", {})
    figdir = Path(figures_dir) if figures_dir else None
    out.parent.mkdir(parents=True, exist_ok=True)
    if figdir:
        figdir.mkdir(parents=True, exist_ok=True)

    def save(fig, name):
        if figdir:
            fig.savefig(figdir / name, dpi=150, bbox_inches="tight")
        return fig

    space = res.attrs.get("space", "fsaverage5")
    from ..stimulus import FSAVERAGE_SIZES

    surface = space in FSAVERAGE_SIZES
    mean_score = done["score"].mean("subject")
    last = done.checkpoint.values[-1]
    # the lead ROI (best subject-mean alignment at any checkpoint) is the one the
    # single-ROI figures show
    lead = str(curves["score_mean"].max("checkpoint").idxmax("roi").values)
    best_ck = str(curves["score_mean"].sel(roi=lead).idxmax("checkpoint").values)
    layer_of = {c: float(curves["best_layer"].sel(roi=lead, checkpoint=c)) for c in done.checkpoint.values.tolist()}
    layer_of = {c: int(v) if np.isfinite(v) else int(done.layer.values[0]) for c, v in layer_of.items()}
    best_layer = layer_of[best_ck]

    sections = []
    # -- summary
    summary = pd.DataFrame(
        {
            "ROI": curves.roi.values,
            "best checkpoint": [str(curves["score_mean"].sel(roi=r).idxmax("checkpoint").values) for r in curves.roi.values],
            "best r (subject mean)": [float(curves["score_mean"].sel(roi=r).max()) for r in curves.roi.values],
            f"r at {last}": [float(curves["score_mean"].sel(roi=r, checkpoint=last)) for r in curves.roi.values],
            f"chosen layer at {last}": [_layer_label(curves["best_layer"].sel(roi=r, checkpoint=last)) for r in curves.roi.values],
            "pattern": [phases[r].pattern if r in phases else "(too few checkpoints)" for r in curves.roi.values],
        }
    )
    if "significant" in curves:
        adj = curves["adjusted_p"] if "adjusted_p" in curves.coords else None
        summary.insert(1, "above chance", [
            ("yes" if bool(curves["significant"].sel(roi=r)) else "no")
            + (f" (p = {float(adj.sel(roi=r)):.2g})" if adj is not None else "") for r in curves.roi.values])
    ceilings = roi_ceilings(res, cfg, space)
    if ceilings is not None:
        summary.insert(3, "noise ceiling (ROI mean)", [ceilings.get(str(r), np.nan) for r in curves.roi.values])
    summary = summary.sort_values("best r (subject mean)", ascending=False)
    text = [
        f"Dataset {res.attrs.get('dataset')} ({res.sizes['subject']} subjects: {', '.join(map(str, res.subject.values))}; "
        f"{res.sizes['target']} targets in {space}). Model {res.attrs.get('model')} with {res.attrs.get('n_layers')} layers; "
        f"{done.sizes['checkpoint']} of {res.sizes['checkpoint']} checkpoints done; layers {list(map(int, res.layer.values))}.",
        "Scores are held-out Pearson r on the test stories, alphas chosen per target by leave-stories-out "
        f"cross-validation on the training stories. ROI curves take, at each checkpoint, {curves.attrs['layer_rule_text']}.",
        "Noise ceilings (CCmax, Schoppe et al. 2016, from the test story's repeats) are shown beside the raw scores when the "
        "data have repeats; they are not applied to the scores. CCmax is undefined where the repeats show no signal; "
        "those targets count as 0 in the ROI means.",
    ]
    text += _data_notes(res, ceilings)
    if "significance_test" in curves.attrs:
        text.append(f"Alignment above chance (\u201cabove chance\u201d; phases are claimed only there): "
                    f"{curves.attrs['significance_test']}.")
    if "interval" in curves.attrs:
        ptext = ("from the t distribution with n_blocks - 1 degrees of freedom of the difference over its bootstrap SD"
                 if curves.attrs.get("method") == "t" else "from the replicates' signs")
        text.append(f"Uncertainty: {curves.attrs['interval']}. Differences between checkpoints are paired (the same "
                    f"blocks in every replicate); their two-sided p-values come {ptext}.")
    sections.append(Section("Summary", text=text, tables=[summary]))

    # -- curves and phases
    figs = []
    fig = plot_curves(curves, x="tokens" if _has_axis(curves, "tokens") else "step", phases=phases.get(lead),
                      figsize=(6.5, 3.6), title="Brain alignment over training (layer chosen on the training stories)"
                      if curves.attrs["layer_rule"] == "cv" else "Brain alignment over training (best held-out layer)")
    band = (f"{curves.attrs.get('level', LEVEL):.0%} block-bootstrap intervals of the subject mean" if "score_lo" in curves
            else "mean ± SEM over subjects")
    figs.append((save(fig, "curves.png"), f"ROI alignment over training at the chosen layer, {band}; shading: phases of {lead}."))
    sec = Section("Alignment over training and phase transitions", figures=figs)
    sec.text = [p.summary() for p in phases.values()] or ["Too few checkpoints with a training axis for phase detection."]
    if len(table):
        sec.tables.append(table)
    if "score_lo" in curves and done.sizes["checkpoint"] > 1:
        diffs = consecutive_differences(done).sel(roi=lead)
        sec.tables.append(pd.DataFrame({
            "ROI": lead,
            "from": diffs.start.values, "to": diffs.end.values,
            "difference in r": diffs.difference.values,
            "interval low": diffs.lo.values, "interval high": diffs.hi.values,
            "p (two-sided bootstrap)": diffs.pvalue.values,
        }))
    sections.append(sec)

    # -- layers x checkpoints
    heat = done["roi_score"].sel(roi=lead).mean("subject")
    fig = plot_layer_heatmap(heat.transpose("layer", "checkpoint"), x="tokens" if _has_axis(curves, "tokens") else "step",
                             best=curves["best_layer"].sel(roi=lead), figsize=(6.5, 3.4), title=f"{lead}: layer × checkpoint")
    rule = "training-story CV score" if curves.attrs["layer_rule"] == "cv" else "held-out score (no CV scores stored)"
    sections.append(Section("Layers × checkpoints", figures=[(save(fig, "layer_heatmap.png"), "Subject-mean held-out ROI score per layer and checkpoint; dots mark the layer chosen by the " + rule + ".")]))

    # -- maps
    if surface:
        maps = []
        v = mean_score.sel(checkpoint=best_ck, layer=best_layer).values
        fig = flatmap(v, space=space, title=f"{best_ck}, layer {best_layer}: held-out r (subject mean)", label="held-out r")
        maps.append((save(fig, "flatmap_best.png"), f"Best checkpoint and layer of {lead}."))
        if "pvalue" in done:
            g = group_significance(done, best_ck, best_layer)
            fig = flatmap(g["score"].values, space=space, mask=g["significant"].values,
                          title=f"{best_ck}, layer {best_layer}: held-out r where above chance (FDR q < {g.attrs['q']:g})",
                          label="held-out r")
            maps.append((save(fig, "flatmap_significant.png"),
                         f"The same map, only where the score is above chance over the subjects: "
                         f"{g.attrs['n_significant']} of {int(np.isfinite(g['pvalue'].values).sum())} targets "
                         f"({g.attrs['test']})."))
        if movie and done.sizes["checkpoint"] > 1:
            frames = [mean_score.sel(checkpoint=c, layer=layer_of[c]).values for c in done.checkpoint.values.tolist()]
            labels = [f"{c} — {_tokens_label(float(t))} tokens" for c, t in zip(done.checkpoint.values, done.tokens.values)]
            gif = figdir / "movie.gif" if figdir else out.with_name(f"{out.stem}_movie.gif")
            flatmap_movie(frames, labels, out=gif, space=space, label="held-out r")
            maps.append((gif, "Training movie: best layer at each checkpoint (subject mean)."))
        sections.append(Section("Cortical maps", figures=maps))

    # -- internal states
    if states is not None:
        x = states["tokens"].values if "tokens" in states.coords else np.arange(states.sizes["checkpoint"])
        ok = np.isfinite(x) & (x > 0)
        cur = {f"brain alignment ({lead})": (curves.tokens.values, curves["score_mean"].sel(roi=lead).values)}
        for var in ("cka_final", "cka_prev", "eff_dim", "twonn"):
            if var in states:
                cur[var.replace("_", " ")] = (x[ok], states[var].mean("layer").values[ok])
        for var in ("induction_max", "prev_token_max"):
            if var in states:
                cur[var.replace("_", " ")] = (x[ok], states[var].max("layer").values[ok])
        if "icl_score" in states:
            cur["in-context learning score"] = (x[ok], states["icl_score"].values[ok])
        if "lm_loss" in done and np.isfinite(done["lm_loss"].values).any():
            cur["LM loss on the stories"] = (done.tokens.values, done["lm_loss"].values)
        keep = {k: (np.asarray(xx), np.asarray(yy)) for k, (xx, yy) in cur.items()}
        keep = {k: (xx[(xx > 0) & np.isfinite(yy)], yy[(xx > 0) & np.isfinite(yy)]) for k, (xx, yy) in keep.items()}
        keep = {k: v for k, v in keep.items() if len(v[0]) >= 2}
        if keep:
            fig = plot_aligned_curves(keep, title="Brain alignment next to the model's internal states",
                                      figsize=(6.5, 1.3 * len(keep) + 0.8))
            sections.append(Section("Internal states", figures=[(save(fig, "internal_states.png"), "Same training axis; CKA/dimensionality averaged over layers, head scores max over heads and layers.")]))

    # -- config and provenance
    tasks = res.attrs.get("tasks", {})
    prov = pd.DataFrame(
        [{"checkpoint": k, "seconds": v.get("seconds"), "peak RSS (MB)": v.get("peak_rss_mb"), "host": v.get("host"), "finished": v.get("finished")}
         for k, v in tasks.items()]
    )
    sections.append(Section("Configuration", code=json_block(cfg)))
    sections.append(Section(
        "Provenance",
        text=[f"brainalign {res.attrs.get('brainalign_version')}, git commit {res.attrs.get('git_commit')}, Python {res.attrs.get('python')}, "
              f"store created {res.attrs.get('created')}, completed {res.attrs.get('completed')}. Settings hash {res.attrs.get('settings_hash')}."],
        tables=[prov] if len(prov) else [],
        code=json_block(res.attrs.get("package_versions", {})),
    ))
    out = write_report(out, f"brainalign: {res.attrs.get('model')} on {res.attrs.get('dataset')}", sections,
                       subtitle=f"results store {path}")
    return out
