"""After a sweep: ROI curves, phase transitions, internal states, figures, the report.

Everything here reads the results store (and the feature cache, for internal states)
and can be rerun at any time; nothing here writes into the store or beside it, so a
read-only store (or one received from someone else) works. The internal states are
cached under ``cache_dir()/analysis``, keyed by the store's settings hash and its done
markers, so they are recomputed when the store changes; figures and the training movie
go beside the report (or into ``figures_dir``).

A store is data, not code: the config saved in it may say
``model.trust_remote_code: true``, but model code from the hub or a checkpoint folder
runs only when the caller passes ``trust_remote_code=True`` (``--trust-remote-code``).
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from .._io import atomic_path
from .._version import __version__
from ..config import cache_dir
from ..errors import ValidationError
from .run import Sweep, _dataset, make_plan
from .store import _quiet, _zarr_kwargs

log = logging.getLogger(__name__)

__all__ = ["roi_curves", "phase_table", "internal_state_curves", "analyze", "report", "flatmap_from_store"]


def _done(res: xr.Dataset) -> xr.Dataset:
    if "done" in res.coords and not bool(res.done.all()):
        res = res.sel(checkpoint=res.done.values)
    if res.sizes.get("checkpoint", 0) == 0:
        raise ValidationError("no checkpoint of this sweep is done yet")
    return res


def roi_curves(res: xr.Dataset) -> xr.Dataset:
    """Per ROI and checkpoint, the best layer's score (best by subject mean).

    Returns a Dataset with ``score`` (roi, checkpoint, subject), ``score_mean``,
    ``score_sem`` (roi, checkpoint), ``best_layer`` and ``best_depth``.
    """
    rs = _done(res)["roi_score"]
    mean = rs.mean("subject")
    best = mean.fillna(-np.inf).argmax("layer")
    score = rs.isel(layer=best)
    n = rs.sizes["subject"]
    out = xr.Dataset(
        {
            "score": score.drop_vars(["layer", "depth"], errors="ignore"),
            "score_mean": score.mean("subject").drop_vars(["layer", "depth"], errors="ignore"),
            "score_sem": (score.std("subject", ddof=1) / np.sqrt(n) if n > 1 else score.mean("subject") * np.nan).drop_vars(
                ["layer", "depth"], errors="ignore"
            ),
            "best_layer": rs.layer[best].drop_vars(["layer", "depth"], errors="ignore"),
            "best_depth": rs.depth[best].drop_vars(["layer", "depth"], errors="ignore"),
        }
    )
    return out.transpose("roi", "checkpoint", ...)


def _has_axis(curves: xr.Dataset, x: str) -> bool:
    return x in curves.coords and np.isfinite(curves[x].values).sum() >= 4


def phase_table(curves: xr.Dataset, x: str = "tokens", n_boot: int = 200) -> tuple[dict, pd.DataFrame]:
    """Phase transitions of each ROI's curve: ({roi: PhaseResult}, one table)."""
    from ..dynamics import detect_phases

    if not _has_axis(curves, x):
        x = "step"
    if not _has_axis(curves, x):
        return {}, pd.DataFrame()
    results, rows = {}, []
    for roi in curves.roi.values.tolist():
        curve = curves["score"].sel(roi=roi)
        keep = np.isfinite(curve[x].values) & (curve[x].values > 0) & np.isfinite(curve.values).all(axis=-1)
        if keep.sum() < 4:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pr = detect_phases(curve.isel(checkpoint=np.flatnonzero(keep)), x=x, n_boot=n_boot, name=roi)
        except ValidationError as exc:  # too few checkpoints for a segmentation
            log.info("no phase detection for %s: %s", roi, exc)
            continue
        results[roi] = pr
        frame = pr.to_frame()
        frame.insert(0, "roi", roi)
        rows.append(frame)
    return results, (pd.concat(rows, ignore_index=True) if rows else pd.DataFrame())


def _trusted_config(stored: dict, trust_remote_code: bool) -> dict:
    """The store's config, with ``model.trust_remote_code`` granted only by the caller."""
    cfg = copy.deepcopy(stored)
    model = cfg.setdefault("model", {})
    if model.get("trust_remote_code") and not trust_remote_code:
        log.warning(
            "the results store's config sets model.trust_remote_code, but a store cannot grant it: internal states "
            "of models that need remote code are skipped unless --trust-remote-code (trust_remote_code=True) is given"
        )
    model["trust_remote_code"] = bool(model.get("trust_remote_code")) and trust_remote_code
    return cfg


def _analysis_cache(sweep: Sweep, res: xr.Dataset, max_words: int, trust_remote_code: bool) -> Path:
    """Where the internal states of this store's done checkpoints are cached.

    Keyed by the store's settings hash and done markers (rewritten when a region is
    redone), the metric settings and the package version.
    """
    from ..features.cache import digest

    key = digest({
        "settings_hash": res.attrs.get("settings_hash"),
        "done": sweep.store.done_info(),
        "max_words": max_words,
        "trust_remote_code": trust_remote_code,
        "brainalign": __version__,
    }, n=16)
    return cache_dir() / "analysis" / f"{key}.zarr"


def _read_cached(path: Path) -> xr.Dataset | None:
    if not path.is_dir():
        return None
    with _quiet():
        return xr.open_zarr(path, consolidated=False).load()


def internal_state_curves(path: str | Path, max_words: int = 1500, trust_remote_code: bool = False) -> xr.Dataset | None:
    """Internal-state metrics of every done checkpoint, from the feature cache.

    Representation metrics (CKA to previous / final checkpoint, participation ratio,
    TwoNN dimension) per checkpoint x layer, and for local causal-LM checkpoints the
    induction / previous-token head scores. Cached under ``cache_dir()/analysis``
    (never written into the store). Models are loaded with remote code only when
    ``trust_remote_code=True``, whatever the store's config says; None when a model
    needs remote code that was not granted.
    """
    from .. import features
    from ..dynamics.internal import internal_states, model_states

    sweep = Sweep(path)
    res = sweep.results
    cfg = _trusted_config(res.attrs.get("config", {}), trust_remote_code)
    cached = _analysis_cache(sweep, res, max_words, cfg["model"]["trust_remote_code"])
    out = _read_cached(cached)
    if out is not None:
        return out
    res = _done(res)
    try:
        plan = make_plan(cfg)
        ds = _dataset(plan.config)
        f = plan.config.features
        done = set(res.checkpoint.values.tolist())
        ckpts = [c for c in plan.checkpoints if c.label in done]
        feats = {}
        for c in ckpts:
            feats[c.label] = features.extract(
                ds, model=c.model, revision=c.revision, layers=plan.layers, context_tokens=f.context_tokens,
                batch_size=f.batch_size, device=f.device, dtype=f.dtype, cache=f.cache, word_state=f.word_reduction,
                trust_remote_code=plan.config.model.trust_remote_code, progress=False,
                training={"step": None if np.isnan(c.step) else c.step, "tokens": None if np.isnan(c.tokens) else c.tokens},
            )
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        log.warning("internal states skipped: the model needs remote code (%s)", exc)
        return None
    tokens = {c.label: c.tokens for c in ckpts}
    out = internal_states(feats, layers=plan.layers, max_words=max_words, tokens=tokens)
    local = all(Path(c.model).is_dir() for c in ckpts)
    if local:
        try:
            heads = model_states({c.label: c.model for c in ckpts}, tokens=tokens,
                                 trust_remote_code=plan.config.model.trust_remote_code)
            out = xr.merge([out, heads[[v for v in heads.data_vars if "head" not in heads[v].dims]]], compat="override", join="outer")
        except Exception as exc:  # noqa: BLE001 - head scores are optional (e.g. an encoder model)
            log.warning("head scores skipped: %s", exc)
    with atomic_path(cached, directory=True) as tmp, _quiet():
        out.to_zarr(tmp, mode="w", **_zarr_kwargs())
    return out


def analyze(path: str | Path, internal: bool = True, n_boot: int = 200, trust_remote_code: bool = False) -> dict:
    """ROI curves, phases and (optionally) internal states of a sweep."""
    sweep = Sweep(path)
    res = sweep.results
    curves = roi_curves(res)
    phases, table = phase_table(curves, n_boot=n_boot)
    states = internal_state_curves(path, trust_remote_code=trust_remote_code) if internal else None
    return {"results": res, "curves": curves, "phases": phases, "phase_table": table, "internal": states}


def _tokens_label(v: float) -> str:
    if not np.isfinite(v):
        return "?"
    for div, suf in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:.3g}{suf}"
    return f"{v:.0f}"


def _roi_ceilings(res: xr.Dataset, cfg: dict, space: str) -> dict | None:
    """Mean noise ceiling (over subjects and targets) of each ROI, or None.

    CCmax is undefined (NaN) where the repeats' estimated signal power is not positive;
    those targets count as 0 (no explainable signal): averaging only the defined ones
    would select noise targets that looked reliable by chance.
    """
    if "ceiling" not in res or not np.isfinite(res["ceiling"].values).any():
        return None
    from .. import rois
    from ..stimulus import FSAVERAGE_SIZES

    c = np.nan_to_num(res["ceiling"].values, nan=0.0)
    if space not in FSAVERAGE_SIZES:
        return {"whole_cortex": float(c.mean())}
    atlas = rois.load_atlas(cfg.get("rois", {}).get("atlas", "whole_cortex"), space=space)
    return {str(r): float(c[:, atlas.mask(str(r))].mean()) for r in res.roi.values}


def flatmap_from_store(path, checkpoint: str, layer: int, subject: str | None = None, out="flatmap.png", threshold=None):
    """Write a flatmap of one checkpoint and layer (subject mean unless ``subject``).

    Reads only the store's scores and loads no model; nothing is written but ``out``.
    """
    from ..plotting import flatmap

    res = Sweep(path).results
    if checkpoint not in res.checkpoint.values:
        raise ValidationError(f"no checkpoint {checkpoint!r} in {path} (checkpoints: {list(res.checkpoint.values)})")
    if layer not in res.layer.values:
        raise ValidationError(f"no layer {layer} in {path} (layers: {list(res.layer.values)})")
    s = res["score"].sel(checkpoint=checkpoint, layer=layer)
    if subject is not None:
        if subject not in s.subject.values:
            raise ValidationError(f"no subject {subject!r} in {path} (subjects: {list(s.subject.values)})")
        s, who = s.sel(subject=subject), subject
    else:
        s, who = s.mean("subject"), "subject mean"
    title = f"{checkpoint} ({_tokens_label(float(res.tokens.sel(checkpoint=checkpoint)))} tokens), layer {layer}, {who}"
    fig = flatmap(s.values, space=res.attrs.get("space", "fsaverage5"), threshold=threshold, title=title, label="held-out r", out=out)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return Path(out)


def report(path: str | Path, out: str | Path = "report.html", figures_dir: str | Path | None = None,
           internal: bool = True, movie: bool = True, trust_remote_code: bool = False) -> Path:
    """The HTML report of a sweep: config, data, curves, phases, maps, provenance.

    Reads the store and never writes into it or beside it: the training movie goes into
    ``figures_dir`` (as ``movie.gif``) or beside ``out`` (as ``<out stem>_movie.gif``);
    internal states are cached under ``cache_dir()/analysis``. Model code saved with a
    checkpoint runs only with ``trust_remote_code=True``, whatever the store's config says.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    best_layer = int(curves["best_layer"].sel(roi=lead, checkpoint=best_ck))

    sections = []
    # -- summary
    summary = pd.DataFrame(
        {
            "ROI": curves.roi.values,
            "best checkpoint": [str(curves["score_mean"].sel(roi=r).idxmax("checkpoint").values) for r in curves.roi.values],
            "best r (subject mean)": [float(curves["score_mean"].sel(roi=r).max()) for r in curves.roi.values],
            f"r at {last}": [float(curves["score_mean"].sel(roi=r, checkpoint=last)) for r in curves.roi.values],
            f"best layer at {last}": [int(curves["best_layer"].sel(roi=r, checkpoint=last)) for r in curves.roi.values],
            "pattern": [phases[r].pattern if r in phases else "(too few checkpoints)" for r in curves.roi.values],
        }
    )
    ceilings = _roi_ceilings(res, cfg, space)
    if ceilings is not None:
        summary.insert(3, "noise ceiling (ROI mean)", [ceilings.get(str(r), np.nan) for r in curves.roi.values])
    summary = summary.sort_values("best r (subject mean)", ascending=False)
    text = [
        f"Dataset {res.attrs.get('dataset')} ({res.sizes['subject']} subjects: {', '.join(map(str, res.subject.values))}; "
        f"{res.sizes['target']} targets in {space}). Model {res.attrs.get('model')} with {res.attrs.get('n_layers')} layers; "
        f"{done.sizes['checkpoint']} of {res.sizes['checkpoint']} checkpoints done; layers {list(map(int, res.layer.values))}.",
        "Scores are held-out Pearson r on the test stories, alphas chosen per target by leave-stories-out "
        "cross-validation on the training stories. ROI curves take, at each checkpoint, the layer with the best subject-mean score.",
        "Noise ceilings (CCmax, Schoppe et al. 2016, from the test story's repeats) are shown beside the raw scores when the "
        "data have repeats; they are not applied to the scores. CCmax is undefined where the repeats show no signal; "
        "those targets count as 0 in the ROI means.",
    ]
    sections.append(Section("Summary", text=text, tables=[summary]))

    # -- curves and phases
    figs = []
    fig = plot_curves(curves, x="tokens" if _has_axis(curves, "tokens") else "step", phases=phases.get(lead),
                      figsize=(6.5, 3.6), title="Brain alignment over training (best layer)")
    figs.append((save(fig, "curves.png"), f"ROI alignment over training, mean ± SEM over subjects; shading: phases of {lead}."))
    sec = Section("Alignment over training and phase transitions", figures=figs)
    sec.text = [p.summary() for p in phases.values()] or ["Too few checkpoints with a training axis for phase detection."]
    if len(table):
        sec.tables.append(table)
    sections.append(sec)

    # -- layers x checkpoints
    heat = done["roi_score"].sel(roi=lead).mean("subject")
    fig = plot_layer_heatmap(heat.transpose("layer", "checkpoint"), x="tokens" if _has_axis(curves, "tokens") else "step",
                             figsize=(6.5, 3.4), title=f"{lead}: layer × checkpoint")
    sections.append(Section("Layers × checkpoints", figures=[(save(fig, "layer_heatmap.png"), "Subject-mean ROI score per layer and checkpoint; dots mark the best layer.")]))

    # -- maps
    if surface:
        maps = []
        v = mean_score.sel(checkpoint=best_ck, layer=best_layer).values
        fig = flatmap(v, space=space, title=f"{best_ck}, layer {best_layer}: held-out r (subject mean)", label="held-out r")
        maps.append((save(fig, "flatmap_best.png"), f"Best checkpoint and layer of {lead}."))
        if movie and done.sizes["checkpoint"] > 1:
            frames = [mean_score.sel(checkpoint=c, layer=int(curves["best_layer"].sel(roi=lead, checkpoint=c))).values
                      for c in done.checkpoint.values]
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
    plt.close("all")
    return out
