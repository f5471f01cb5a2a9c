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
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from .._io import atomic_path
from .._version import __version__
from ..config import cache_dir
from ..errors import ValidationError
from .run import Sweep, make_plan
from .store import _quiet, _zarr_kwargs

log = logging.getLogger(__name__)

__all__ = ["roi_curves", "roi_intervals", "roi_pvalues", "roi_significance", "group_significance", "checkpoint_difference", "consecutive_differences", "phase_table",
           "internal_state_curves", "state_curves", "curve_phases", "training_description", "analyze", "report",
           "flatmap_from_store"]

#: Default confidence level of ROI intervals.
LEVEL = 0.95
#: How subjects enter the intervals of a subject mean (see :func:`roi_intervals`).
SUBJECT_RULES = ("resample", "fixed")
#: How replicates become intervals and p-values (see :func:`roi_intervals`).
METHODS = ("t", "percentile")


def _done(res: xr.Dataset) -> xr.Dataset:
    if "done" in res.coords and not bool(res.done.all()):
        res = res.sel(checkpoint=res.done.values)
    if res.sizes.get("checkpoint", 0) == 0:
        raise ValidationError("no checkpoint of this sweep is done yet")
    return res


def _chosen(res: xr.Dataset) -> xr.Dataset:
    """:func:`brainalign.rois.choose_layer` on a store's ROI scores (CV rule when stored)."""
    from ..rois import choose_layer

    return choose_layer(res["roi_score"], res["roi_cv_score"] if "roi_cv_score" in res else None)


def roi_curves(res: xr.Dataset, level: float = LEVEL, subjects: str = "resample", method: str = "t") -> xr.Dataset:
    """Per ROI and checkpoint, the held-out score of the layer chosen on the training stories.

    The layer is chosen by :func:`brainalign.rois.choose_layer` (the best subject-mean
    ``roi_cv_score``; a store without CV scores falls back to the held-out score, and
    says so in the ``layer_rule`` attribute).

    Returns a Dataset with ``score`` (roi, checkpoint, subject), ``score_mean``,
    ``score_sem`` (roi, checkpoint), ``best_layer`` and ``best_depth``; when the store
    has bootstrap replicates (``roi_boot``) and ROI means, ``score_lo`` and ``score_hi``:
    the ``level`` block-bootstrap interval of the subject mean at the chosen layer (see
    :func:`roi_intervals`). Attributes ``layer_rule``, ``layer_rule_text`` and, with
    intervals, ``interval``.
    """
    res = _done(res)
    chosen = _chosen(res)
    score = chosen["score"]
    n = score.notnull().sum("subject")
    out = xr.Dataset(
        {
            "score": score,
            "score_mean": chosen["score_mean"],
            "score_sem": (score.std("subject", ddof=1, skipna=True) / np.sqrt(n)).where(n > 1),
            "best_layer": chosen["best_layer"],
            "best_depth": chosen["best_depth"],
        }
    )
    out.attrs.update(layer_rule=chosen.attrs["layer_rule"], layer_rule_text=chosen.attrs["layer_rule_text"])
    if _has_boot(res):
        _check_method(method, res)
        est, reps, _ = _curve_replicates(res, "best", subjects, chosen)
        lo, hi = _interval(reps, est, level, method, res)
        out["score_lo"] = lo
        out["score_hi"] = hi
        out.attrs.update(interval=_interval_text(res, level, subjects, method), level=level, method=method)
    return out.transpose("roi", "checkpoint", ...)


# -- ROI-level inference -----------------------------------------------------------------
def _has_boot(res: xr.Dataset) -> bool:
    """True when the store holds bootstrap replicates of ROI means (``rois.how: mean``)."""
    if "roi_boot" not in res or not np.isfinite(res["roi_boot"].values).any():
        return False
    how = (res.attrs.get("config") or {}).get("rois", {}).get("how", "mean")
    return how == "mean"


def _need_boot(res: xr.Dataset) -> None:
    if "roi_boot" not in res or not np.isfinite(res["roi_boot"].values).any():
        raise ValidationError("these results have no bootstrap replicates (roi_boot): rerun the sweep with this "
                              "version of brainalign (or fit with rois=...)")
    how = (res.attrs.get("config") or {}).get("rois", {}).get("how", "mean")
    if how != "mean":
        raise ValidationError(f"ROI intervals are for ROI-mean scores (rois.how: mean); these ROI scores are {how!r}")


def _bootstrap_info(res: xr.Dataset) -> dict:
    info = res.attrs.get("bootstrap") or {}
    if isinstance(info, str):
        import json

        info = json.loads(info)
    n_blocks = info.get("n_blocks", res.attrs.get("boot_blocks"))
    return {"n_boot": int(res.sizes.get("boot", info.get("n_boot", 0))),
            "block_length": info.get("block_length", res.attrs.get("boot_block_length")),
            "seed": int(info.get("seed", res.attrs.get("boot_seed", 0))),
            "n_blocks": None if n_blocks is None else int(n_blocks)}


def _check_method(method: str, res: xr.Dataset) -> None:
    if method not in METHODS:
        raise ValidationError(f"method must be one of {METHODS}, got {method!r}")
    if method == "t" and not (_bootstrap_info(res)["n_blocks"] or 0) > 1:
        raise ValidationError("method='t' needs the number of bootstrap blocks (attribute bootstrap.n_blocks or "
                              "boot_blocks), and at least 2; use method='percentile'")


def _interval_text(res: xr.Dataset, level: float, subjects: str, method: str) -> str:
    b = _bootstrap_info(res)
    who = ""
    if res.sizes.get("subject", 1) > 1:
        who = ("; subjects resampled too (replicate b of the subject mean is the mean over a resample of subjects of "
               "their replicate b)" if subjects == "resample" else "; subjects fixed (the mean over these subjects)")
    nb = f"{b['n_blocks']} blocks of {b['block_length']} TRs" if b["n_blocks"] else f"blocks of {b['block_length']} TRs"
    how = ("estimate ± t(n_blocks - 1) quantile × sqrt(n_blocks / (n_blocks - 1)) × the bootstrap SD"
           if method == "t" else "percentiles of the replicates")
    return (f"{level:.0%} intervals from a block bootstrap over the test stories' TRs ({b['n_boot']} replicates, "
            f"{nb} within stories{who}; {how})")


def _subject_replicates(boot: np.ndarray, subjects: str, seed: int) -> np.ndarray:
    """Replicates of the subject mean from per-subject replicates (``..., subject, boot``):
    with ``subjects="resample"``, replicate ``b`` averages a resample of the subjects drawn
    by :func:`~brainalign.encoding.bootstrap.subject_draws` (the same at every
    checkpoint); NaN subjects are left out of each mean."""
    from ..encoding.bootstrap import subject_draws

    if subjects not in SUBJECT_RULES:
        raise ValidationError(f"subjects must be one of {SUBJECT_RULES}, got {subjects!r}")
    S, B = boot.shape[-2], boot.shape[-1]
    w = subject_draws(S, B, seed) if subjects == "resample" and S > 1 else np.ones((B, S))
    ok = np.isfinite(boot)
    num = np.einsum("...sb,bs->...b", np.where(ok, boot, 0.0), w)
    den = np.einsum("...sb,bs->...b", ok.astype(np.float64), w)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1e-300), np.nan)


def _strip(reps: xr.DataArray) -> tuple[tuple, dict]:
    return reps.dims[:-1], {k: v for k, v in reps.coords.items() if "boot" not in v.dims}


def _t_factor(res: xr.Dataset, q: float) -> float:
    from scipy import stats

    nb = _bootstrap_info(res)["n_blocks"]
    return float(stats.t.ppf(q, nb - 1) * np.sqrt(nb / (nb - 1)))


def _interval(reps: xr.DataArray, est: xr.DataArray, level: float, method: str, res: xr.Dataset):
    """(low, high) of ``level`` intervals from replicates (``boot`` last) around ``est``."""
    if not 0 < level < 1:
        raise ValidationError(f"level must be in (0, 1), got {level}")
    dims, coords = _strip(reps)
    v = np.asarray(reps.values, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells give NaN
        if method == "percentile":
            q = np.nanquantile(v, [(1 - level) / 2, (1 + level) / 2], axis=-1)
            lo, hi = q[0], q[1]
        else:
            half = _t_factor(res, (1 + level) / 2) * np.nanstd(v, axis=-1, ddof=1)
            e = np.asarray(est.transpose(*dims).values, dtype=np.float64)
            lo, hi = e - half, e + half
    return xr.DataArray(lo, dims=dims, coords=coords), xr.DataArray(hi, dims=dims, coords=coords)


def _replicates(res: xr.Dataset, subjects: str) -> xr.DataArray:
    """Subject-mean replicates (roi, checkpoint, layer, boot) of the ROI-mean r."""
    boot = res["roi_boot"].transpose("roi", "checkpoint", "layer", "subject", "boot")
    reps = _subject_replicates(np.asarray(boot.values, dtype=np.float64), subjects, _bootstrap_info(res)["seed"])
    coords = {k: v for k, v in boot.coords.items() if "subject" not in v.dims}
    return xr.DataArray(reps, dims=("roi", "checkpoint", "layer", "boot"), coords=coords)


def _with_checkpoint(res: xr.Dataset) -> xr.Dataset:
    """Results of one fit (no checkpoint dim) as a one-checkpoint store."""
    if "checkpoint" in res.dims:
        return _done(res)
    label = res.attrs.get("revision") or "fit"
    return res.expand_dims(checkpoint=[str(label)])


def roi_intervals(res: xr.Dataset, level: float = LEVEL, subjects: str = "resample", method: str = "t") -> xr.Dataset:
    """Block-bootstrap intervals of every ROI score at every checkpoint and layer.

    ``res`` is a sweep's results (or one :func:`brainalign.encoding.fit` result made
    with ``rois=``: one checkpoint). Each subject's replicates (``roi_boot``) resample
    the test stories' TR blocks. The interval of a subject mean resamples subjects as
    well (``subjects="resample"``: replicate ``b`` = the mean over a resample of
    subjects of their replicate ``b``; for the population the subjects come from, and
    conservative, since the within-subject noise is counted by both resamplings) or
    keeps them (``subjects="fixed"``: the mean over these subjects).

    ``method="t"`` (default): estimate ± ``t_{n_blocks - 1}`` quantile ×
    ``sqrt(n_blocks / (n_blocks - 1))`` × the replicates' SD: with the 4-30 blocks a test
    story gives, the replicates' spread has few degrees of freedom and plain percentiles
    under-cover (measured on simulated data at r = 0, 95% intervals: 80% with 4 blocks, 87% with 8,
    90-91% with 15-36; t intervals 93-96%, see tests/test_roi_inference.py);
    ``method="percentile"``: percentiles of the replicates.

    Returns
    -------
    xarray.Dataset
        ``estimate``, ``lo``, ``hi`` (roi, checkpoint, layer) for the subject mean;
        ``estimate_subject``, ``lo_subject``, ``hi_subject`` (roi, checkpoint, layer,
        subject) for each subject. Attributes ``level``, ``method``, ``interval``.
    """
    res = _with_checkpoint(res)
    _need_boot(res)
    _check_method(method, res)
    rs = res["roi_score"].transpose("roi", "checkpoint", "layer", "subject")
    est = rs.mean("subject", skipna=True)
    lo, hi = _interval(_replicates(res, subjects), est, level, method, res)
    per = res["roi_boot"].astype(np.float64).transpose("roi", "checkpoint", "layer", "subject", "boot")
    lo_s, hi_s = _interval(per, rs, level, method, res)
    out = xr.Dataset({"estimate": est, "lo": lo, "hi": hi, "estimate_subject": rs, "lo_subject": lo_s,
                      "hi_subject": hi_s})
    out.attrs.update(level=level, subjects=subjects, method=method,
                     interval=_interval_text(res, level, subjects, method))
    return out


def _curve_replicates(res: xr.Dataset, layer, subjects: str, chosen: xr.Dataset | None = None):
    """(estimate (roi, checkpoint), replicates (roi, checkpoint, boot), layer (roi, checkpoint))
    of the subject mean at ``layer`` ("best": the layer :func:`choose_layer` picks)."""
    reps = _replicates(res, subjects)
    rs = res["roi_score"]
    if layer == "best":
        chosen = _chosen(res) if chosen is None else chosen
        best = chosen["best_layer"].transpose("roi", "checkpoint")
        layers = np.asarray(res["layer"].values)
        b = np.asarray(best.values)
        found = np.isfinite(b)
        idx = np.searchsorted(layers, np.where(found, b, layers[0]).astype(layers.dtype))
        idx_da = xr.DataArray(idx, dims=("roi", "checkpoint"), coords={k: v for k, v in best.coords.items()})
        est = chosen["score_mean"].transpose("roi", "checkpoint")
        r = reps.isel(layer=idx_da).drop_vars(["layer", "depth"], errors="ignore")
        r = r.where(xr.DataArray(found, dims=("roi", "checkpoint")))
        return est, r.transpose("roi", "checkpoint", "boot"), best
    if int(layer) not in res["layer"].values:
        raise ValidationError(f"no layer {layer} (layers: {list(map(int, res.layer.values))})")
    est = rs.sel(layer=int(layer)).mean("subject", skipna=True).transpose("roi", "checkpoint")
    r = reps.sel(layer=int(layer)).drop_vars(["layer", "depth"], errors="ignore").transpose("roi", "checkpoint", "boot")
    return est.drop_vars(["layer", "depth"], errors="ignore"), r, xr.full_like(est, float(layer))


def _paired(da: xr.DataArray, db: xr.DataArray, diff: xr.DataArray, level: float, method: str,
            res: xr.Dataset) -> dict:
    """Difference ``b - a`` of paired replicates: interval and two-sided p-value."""
    d = (db - da).transpose(..., "boot")
    lo, hi = _interval(d, diff, level, method, res)
    v = np.asarray(d.values, dtype=np.float64)
    ok = np.isfinite(v)
    n = ok.sum(-1)
    dims, coords = _strip(d)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if method == "percentile":
            below = np.where(ok, v <= 0, False).sum(-1)
            above = np.where(ok, v >= 0, False).sum(-1)
            p = np.where(n > 0, np.minimum(1.0, 2 * (np.minimum(below, above) + 1) / (n + 1)), np.nan)
        else:
            from scipy import stats

            nb = _bootstrap_info(res)["n_blocks"]
            se = np.nanstd(v, axis=-1, ddof=1) * np.sqrt(nb / (nb - 1))
            t = np.abs(np.asarray(diff.transpose(*dims).values, dtype=np.float64)) / se
            p = np.where((n > 1) & np.isfinite(t), 2 * stats.t.sf(t, nb - 1), np.nan)
            p = np.where((n > 1) & (se == 0), np.where(np.asarray(diff.transpose(*dims).values) == 0, 1.0, 0.0), p)
    return {"lo": lo, "hi": hi, "pvalue": xr.DataArray(p, dims=dims, coords=coords)}


def checkpoint_difference(res: xr.Dataset, a: str, b: str, *, layer="best", level: float = LEVEL,
                          subjects: str = "resample", method: str = "t") -> xr.Dataset:
    """Paired bootstrap difference of ROI scores between checkpoints ``a`` and ``b`` (b - a).

    Replicate ``k`` of both checkpoints uses the same test-story blocks (and the same
    resample of subjects), so the replicate differences measure the uncertainty of the
    difference itself. ``layer="best"``: each checkpoint's chosen layer (by the
    training-story CV score, :func:`brainalign.rois.choose_layer`); an int: that layer.
    ``method`` and ``subjects`` as in :func:`roi_intervals`.

    Returns
    -------
    xarray.Dataset (roi)
        ``difference``, ``lo``, ``hi`` (``level`` interval), ``pvalue`` (two-sided:
        ``method="t"``: from the t distribution with ``n_blocks - 1`` degrees of freedom
        of ``difference / (sqrt(n_blocks / (n_blocks - 1)) x SD of the replicate
        differences)``; ``"percentile"``: ``2 min(#{d_k <= 0} + 1, #{d_k >= 0} + 1) /
        (n_boot + 1)``, at least ``2 / (n_boot + 1)``), ``layer_a``, ``layer_b``.
    """
    res = _done(res)
    _need_boot(res)
    _check_method(method, res)
    for c in (a, b):
        if c not in res.checkpoint.values:
            raise ValidationError(f"no done checkpoint {c!r} (checkpoints: {list(res.checkpoint.values)})")
    est, reps, layers = _curve_replicates(res, layer, subjects)
    diff = est.sel(checkpoint=b, drop=True) - est.sel(checkpoint=a, drop=True)
    pa = _paired(reps.sel(checkpoint=a, drop=True), reps.sel(checkpoint=b, drop=True), diff, level, method, res)
    out = xr.Dataset({"difference": diff, **pa, "layer_a": layers.sel(checkpoint=a, drop=True),
                      "layer_b": layers.sel(checkpoint=b, drop=True)})
    out = out.drop_vars([c for c in out.coords if c not in out.dims and c != "roi_label"], errors="ignore")
    out.attrs.update(a=str(a), b=str(b), level=level, method=method,
                     interval=_interval_text(res, level, subjects, method))
    return out


def consecutive_differences(res: xr.Dataset, *, layer="best", level: float = LEVEL,
                            subjects: str = "resample", method: str = "t") -> xr.Dataset:
    """:func:`checkpoint_difference` of every pair of consecutive done checkpoints
    (training order), along a ``pair`` dim with coordinates ``start`` and ``end`` (the
    labels) and ``tokens_start``, ``tokens_end``."""
    res = _done(res)
    _need_boot(res)
    _check_method(method, res)
    labels = res.checkpoint.values.tolist()
    if len(labels) < 2:
        raise ValidationError("consecutive differences need at least two done checkpoints")
    est, reps, layers = _curve_replicates(res, layer, subjects)

    def pairs(da: xr.DataArray, first: bool) -> xr.DataArray:
        da = da.isel(checkpoint=slice(None, -1) if first else slice(1, None))
        da = da.drop_vars([c for c in da.coords if "checkpoint" in da[c].dims])
        return da.rename(checkpoint="pair").assign_coords(pair=np.arange(len(labels) - 1))

    diff = pairs(est, False) - pairs(est, True)
    pa = _paired(pairs(reps, True), pairs(reps, False), diff, level, method, res)
    out = xr.Dataset({"difference": diff, **pa, "layer_start": pairs(layers, True), "layer_end": pairs(layers, False)})
    tokens = res["tokens"].values if "tokens" in res.coords else np.full(len(labels), np.nan)
    out = out.assign_coords(start=("pair", labels[:-1]), end=("pair", labels[1:]),
                            tokens_start=("pair", np.asarray(tokens[:-1], dtype=float)),
                            tokens_end=("pair", np.asarray(tokens[1:], dtype=float)))
    out.attrs.update(level=level, method=method, interval=_interval_text(res, level, subjects, method))
    return out.transpose("roi", "pair")


def _has_axis(curves: xr.Dataset, x: str) -> bool:
    return x in curves.coords and np.isfinite(curves[x].values).sum() >= 4


def _has_null(res: xr.Dataset) -> bool:
    return "roi_null" in res and bool(np.isfinite(res["roi_null"].values).any())


def roi_pvalues(res: xr.Dataset, layer="best") -> xr.DataArray:
    """One-sided p-values that each ROI's subject-mean held-out score is above chance.

    Per ROI and checkpoint, at the layer chosen on the training stories (``layer="best"``,
    :func:`brainalign.rois.choose_layer`; or one layer): spectral sign randomisation of
    the ROI mean (:func:`brainalign.encoding.significance.roi_null_terms`), the same random
    signs for every target of the ROI, so the noise's spatial correlation is kept;
    subjects' terms are independent and enter together, so the p-value is that of the
    subject mean. Needs ``roi_null`` (sweeps since brainalign 0.13); NaN where a cell has
    none. Returns a DataArray (roi, checkpoint).
    """
    from ..encoding.significance import ROI_METHOD, sign_pvalues

    res = _done(res)
    if "roi_null" not in res:
        raise ValidationError("these results have no ROI null terms (roi_null): rerun the sweep with this version "
                              "of brainalign for ROI-level tests")
    null = res["roi_null"].astype(np.float64)
    if layer == "best":
        best = _chosen(res)["best_layer"].transpose("roi", "checkpoint")
        first = float(res.layer.values[0])
        pos = {int(v): i for i, v in enumerate(res.layer.values)}
        idx = xr.DataArray(np.vectorize(lambda v: pos[int(v)])(best.fillna(first).values), dims=("roi", "checkpoint"))
        terms = null.isel(layer=idx).where(best.notnull())
    else:
        terms = null.sel(layer=layer)
    terms = terms.transpose("roi", "checkpoint", "subject", "term")
    R, C, S, K = terms.shape
    flat = terms.values.reshape(R * C, S * K).T  # subjects' terms concatenated
    p = sign_pvalues(flat).reshape(R, C)
    out = xr.DataArray(p, dims=("roi", "checkpoint"), coords={"roi": terms.roi.values, "checkpoint": terms.checkpoint.values})
    out.attrs["test"] = ROI_METHOD
    return out


def roi_significance(res: xr.Dataset, alpha: float = 0.05, pvalues: xr.DataArray | None = None) -> xr.DataArray:
    """Per ROI: is the subject-mean score of the chosen layer above chance at some checkpoint?

    With ROI null terms (``roi_null``): the ROI sign randomisation test of
    :func:`roi_pvalues`, Bonferroni over the done checkpoints (the smallest p times their
    number below ``alpha``; ``adjusted_p`` coordinate). Stores without them: the lower end
    of the one-sided ``1 - 2 alpha / n_checkpoints`` block-bootstrap interval of
    :func:`roi_curves` is above zero. Each ROI is tested at ``alpha`` (no correction over
    ROIs: each ROI's phase claim stands on its own; the attribute says so). ``pvalues``:
    :func:`roi_pvalues` of ``res`` when the caller already has them.
    """
    done = _done(res)
    n = int(done.sizes["checkpoint"])
    if _has_null(done):
        p = roi_pvalues(done) if pvalues is None else pvalues
        adj = np.minimum(p.min("checkpoint", skipna=True) * n, 1.0)
        out = (adj < alpha).assign_coords(adjusted_p=adj)
        out.attrs["test"] = (f"{p.attrs['test']}; one-sided alpha = {alpha:g} per ROI, Bonferroni over {n} checkpoints "
                             f"(the smallest p times {n})")
        return out
    lo = roi_curves(done, level=1 - 2 * alpha / n)["score_lo"]
    out = (lo > 0).any("checkpoint")
    out.attrs["test"] = (f"subject-mean ROI score > 0 at some checkpoint (block-bootstrap interval), one-sided "
                         f"alpha = {alpha:g}, Bonferroni over {n} checkpoints")
    return out


def group_significance(res: xr.Dataset, checkpoint: str, layer: int, q: float = 0.05) -> xr.Dataset:
    """Targets whose held-out score is above chance over the subjects, FDR-controlled.

    Each subject's one-sided p-value (``pvalue``, the sweep's ``stats.test``) is turned into
    a z-score and the subjects' z-scores are combined by Stouffer's method (subjects are
    independent); Benjamini-Hochberg at ``q`` over the targets with a p-value. Returns a
    Dataset over ``target``: ``pvalue`` (combined), ``significant`` and ``score`` (the
    subject mean), attributes ``test`` and ``n_significant``.
    """
    from scipy import stats as sstats

    from ..encoding import fdr

    if "pvalue" not in res:
        raise ValidationError("these results have no p-values (stats.test was 'none'): rerun the sweep with "
                              "stats.test: sign for significance maps")
    cell = res.sel(checkpoint=checkpoint, layer=layer)
    p = cell["pvalue"].transpose("subject", "target").values.astype(np.float64)
    z = sstats.norm.isf(np.clip(p, 1e-300, 1.0))
    n = np.isfinite(z).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        combined = sstats.norm.sf(np.nansum(z, 0) / np.sqrt(n))
    combined = np.where(n > 0, combined, np.nan)
    sig = np.zeros(combined.shape, bool)
    ok = np.isfinite(combined)
    if ok.any():
        sig[ok] = fdr(combined[ok], q=q)[0]
    test = res["pvalue"].attrs.get("long_name")
    if not test:
        from ..encoding.stats import significance_method

        st = (res.attrs.get("config") or {}).get("stats") or {}
        test = significance_method(st.get("test", "sign"), st.get("permutations", 1000), st.get("block_size", 20))
    out = xr.Dataset({"pvalue": ("target", combined), "significant": ("target", sig),
                      "score": cell["score"].mean("subject")}, coords={"target": res.target.values})
    out.attrs.update(test=(f"per subject: {test}; subjects combined by Stouffer's method; Benjamini-Hochberg "
                           f"q < {q:g} over {int(ok.sum())} targets"), n_significant=int(sig.sum()), q=q)
    return out


def phase_table(curves: xr.Dataset, x: str = "tokens", n_boot: int = 200,
                significant: "Mapping[str, bool] | xr.DataArray | None" = None) -> tuple[dict, pd.DataFrame]:
    """Phase transitions of each ROI's curve: ({roi: PhaseResult}, one table).

    ``significant`` (roi -> bool, or a boolean DataArray over ``roi``; default
    ``curves["significant"]`` when present) says which ROIs' alignment is significant:
    the others get no phases ("no significant alignment").
    """
    from ..dynamics import detect_phases

    if significant is None and "significant" in curves:
        significant = curves["significant"]
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
                sig = None
                if significant is not None:
                    sig = significant.get(roi) if isinstance(significant, Mapping) else significant.sel(roi=roi).item()
                pr = detect_phases(curve.isel(checkpoint=np.flatnonzero(keep)), x=x, n_boot=n_boot, name=roi,
                                   significant=None if sig is None else bool(sig))
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


#: the built-in instruction probe in a sweep's analysis: prompts per kind, greedy tokens per answer
PROBE_ITEMS_PER_KIND = 3
PROBE_NEW_TOKENS = 6
#: settings of the circuit metrics (part of the analysis cache key)
STATE_SETTINGS = {"version": 2, "probe": [PROBE_ITEMS_PER_KIND, PROBE_NEW_TOKENS], "head_seqs": 16}


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
        "states": STATE_SETTINGS,
        "brainalign": __version__,
    }, n=16)
    return cache_dir() / "analysis" / f"{key}.zarr"


def _read_cached(path: Path) -> xr.Dataset | None:
    if not path.is_dir():
        return None
    with _quiet():
        return xr.open_zarr(path, consolidated=False).load()


def _checkpoint_folders(cfg: Mapping, labels: list[str]) -> dict[str, Path]:
    """label -> local checkpoint folder, for a sweep over local folders ({} for hub models)."""
    name = Path(str((cfg.get("model") or {}).get("name", ""))).expanduser()
    if not name.is_dir():
        return {}
    if (name / "config.json").is_file():
        return {la: name for la in labels}
    return {la: name / la for la in labels if (name / la).is_dir()}


def _memorisation(res: xr.Dataset, cfg: Mapping) -> xr.Dataset | None:
    """train / held-out loss and their gap per done checkpoint, from train-tiny's log (or None)."""
    from ..dynamics.memorisation import memorisation_curves

    done = _done(res)
    folders = _checkpoint_folders(cfg, done.checkpoint.values.tolist())
    if not folders:
        return None
    tokens = dict(zip(done.checkpoint.values.tolist(), done.tokens.values.tolist()))
    mem = memorisation_curves(folders, tokens=tokens)
    return None if mem is None else mem.reindex(checkpoint=done.checkpoint.values)


def _circuit_states(plan, ckpts, texts: list[str], tokens: dict) -> xr.Dataset | None:
    """Head scores, ICL score and instruction following of causal-LM checkpoints (local
    folders or hub revisions); None, with a log line, for other models."""
    from ..dynamics.instructions import probe_items
    from ..dynamics.internal import is_causal_lm, model_states

    trust = plan.config.model.trust_remote_code
    last = ckpts[-1]
    try:
        causal = is_causal_lm(last.model, revision=last.revision, trust_remote_code=trust)
    except (OSError, ValueError) as exc:
        log.warning("head scores skipped: cannot read the config of %s: %s", last.model, exc)
        return None
    if not causal:
        log.info("head scores, ICL score and instruction probe skipped: %s is not a causal language model", last.model)
        return None
    from .run import weight_stream

    parts = []
    try:
        # hub revisions a sweep freed are fetched again one at a time, within weights.disk_budget, and freed
        with weight_stream(plan, prefetch=0) as ws:
            for c in ckpts:
                ws.acquire(c.revision)
                parts.append(model_states({c.label: (c.model, c.revision)}, texts=texts, tokens=tokens,
                                          n_seqs=STATE_SETTINGS["head_seqs"], trust_remote_code=trust,
                                          instructions=probe_items(PROBE_ITEMS_PER_KIND),
                                          max_new_tokens=PROBE_NEW_TOKENS))
                ws.done(c.revision)
    except (OSError, ValueError, ValidationError) as exc:  # e.g. weights only as .bin, not downloadable offline
        log.warning("head scores skipped: %s", exc)
        return None
    heads = xr.concat(parts, dim="checkpoint", data_vars="all", coords="different", compat="equals", join="outer")
    return heads[[v for v in heads.data_vars if "head" not in heads[v].dims]]


def _analysis_config(cfg: Mapping) -> dict:
    """The store's config as the analysis plans with it: without ``downstream`` (the
    results' files need not be here) and ``internal_states`` (stored already; their
    extras, training logs or a metric registered in the sweep's process need not be here)."""
    return {k: v for k, v in cfg.items() if k not in ("downstream", "internal_states", "llc")}


def _compute_states(res: xr.Dataset, cfg: dict, max_words: int) -> xr.Dataset | None:
    from .. import features
    from ..dynamics import internal

    cfg = _analysis_config(cfg)
    try:
        plan = make_plan(cfg)
        ds = plan.dataset()
        f = plan.config.features
        done = set(res.checkpoint.values.tolist())
        ckpts = [c for c in plan.checkpoints if c.label in done]
        feats = {}
        for c in ckpts:
            feats[c.label] = features.extract(
                ds, model=c.model, revision=c.revision, layers=plan.layers, **f.extract_options(),
                trust_remote_code=plan.config.model.trust_remote_code, progress=False,
                training={"step": None if np.isnan(c.step) else c.step, "tokens": None if np.isnan(c.tokens) else c.tokens},
            )
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        log.warning("internal states skipped: the model needs remote code (%s)", exc)
        return None
    tokens = {c.label: c.tokens for c in ckpts}
    out = internal.internal_states(feats, layers=plan.layers, max_words=max_words, tokens=tokens)
    texts = [" ".join(st.words) for st in ds.stories.values()]
    heads = _circuit_states(plan, ckpts, texts, tokens)
    if heads is not None:
        out = xr.merge([out, heads], compat="override", join="outer")
    return out


def internal_state_curves(path: str | Path, max_words: int = 1500, trust_remote_code: bool = False) -> xr.Dataset | None:
    """Internal-state metrics of every done checkpoint.

    From the feature cache: representation metrics (``cka_prev``, ``cka_final``,
    ``eff_dim``, ``twonn``) per checkpoint x layer. For causal LMs (local folders and hub
    revisions alike; encoders are skipped with a log line): ``induction_max``,
    ``prev_token_max`` (checkpoint x layer, max over heads), ``icl_score`` (on the
    stimulus stories' text) and ``instruction_following`` (the built-in probe,
    :data:`PROBE_ITEMS_PER_KIND` prompts per kind) per checkpoint. For models trained by
    ``train-tiny``: ``train_loss``, ``heldout_loss``, ``memorisation_gap`` from its
    ``training_log.json``. Cached under ``cache_dir()/analysis`` (never written into
    the store). Models are loaded with remote code only when ``trust_remote_code=True``,
    whatever the store's config says; None when a model needs remote code that was not
    granted.
    """
    sweep = Sweep(path)
    res = sweep.results
    cfg = _trusted_config(res.attrs.get("config", {}), trust_remote_code)
    cached = _analysis_cache(sweep, res, max_words, cfg["model"]["trust_remote_code"])
    out = _read_cached(cached)
    if out is None:
        out = _compute_states(_done(res), cfg, max_words)
        if out is None:
            return None
        with atomic_path(cached, directory=True) as tmp, _quiet():
            out.to_zarr(tmp, mode="w", **_zarr_kwargs())
    mem = _memorisation(res, cfg)  # read fresh: cheap, and the log may be newer than the cache
    if mem is not None:
        out = xr.merge([out, mem.drop_vars(["step", "tokens"])], compat="override", join="left")
    return out


#: internal-state variable -> (name of its summary curve, how layers and heads are summarised)
STATE_CURVES = {
    "cka_final": ("CKA to the final checkpoint", "mean"),
    "cka_prev": ("CKA to the previous checkpoint", "mean"),
    "eff_dim": ("effective dimensionality", "mean"),
    "twonn": ("TwoNN intrinsic dimension", "mean"),
    "induction_max": ("induction head score", "max"),
    "prev_token_max": ("previous-token head score", "max"),
    "icl_score": ("in-context learning score", None),
    "instruction_following": ("instruction following", None),
    "train_loss": ("training loss", None),
    "heldout_loss": ("held-out loss", None),
    "memorisation_gap": ("memorisation gap", None),
    "train_acc": ("training accuracy", None),
    "heldout_acc": ("held-out accuracy", None),
    "memorisation": ("memorisation index", None),
    "weight_norm": ("weight norm", None),
    "llc": ("local learning coefficient", None),
}
#: the summary curve of the store's ``lm_loss``
LM_LOSS_CURVE = "LM loss on the stories"


def state_curves(states: xr.Dataset | None, res: xr.Dataset) -> dict[str, xr.DataArray]:
    """The summarised internal-state curves: name (:data:`STATE_CURVES`) -> 1-D DataArray
    over ``checkpoint`` with a ``tokens`` coordinate (layers averaged for CKA and
    dimensionality, the max over layers for head scores), plus the store's ``lm_loss``.
    A variable the store holds (``internal_states:`` of the run config: ``llc``,
    ``weight_norm``, the memorisation columns) is read there, before ``states``.
    Curves with no finite value are left out."""
    done = _done(res)
    tokens = done.tokens.reindex(checkpoint=done.checkpoint.values)
    out = {}
    for var, (name, how) in STATE_CURVES.items():
        if var in done.data_vars and done[var].dims == ("checkpoint",):
            out[name] = done[var].astype(float)
            continue
        if states is None or var not in states:
            continue
        da = states[var]
        if "layer" in da.dims:
            da = da.mean("layer") if how == "mean" else da.max("layer")
        out[name] = da
    named = {var for var, (name, _) in STATE_CURVES.items() if name in out}
    info = res.attrs.get("internal_states") or {}
    for var in info.get("curves") or []:  # a metric with no STATE_CURVES entry: under its variable's name
        if var not in named and var in done.data_vars and done[var].dims == ("checkpoint",):
            out.setdefault(var, done[var].astype(float))
    if "lm_loss" in done:
        out[LM_LOSS_CURVE] = done["lm_loss"].astype(float)
    keep = {}
    for name, da in out.items():
        da = da.reindex(checkpoint=done.checkpoint.values).drop_vars([c for c in da.coords if c != "checkpoint"])
        da = da.assign_coords(tokens=("checkpoint", tokens.values), step=("checkpoint", done.step.values)).rename(name)
        if np.isfinite(da.values).any():
            keep[name] = da
    return keep


def curve_phases(curves: Mapping[str, xr.DataArray], n_boot: int = 200, x: str = "tokens") -> dict:
    """:func:`~brainalign.dynamics.detect_phases` of each 1-D curve (name -> PhaseResult),
    with the brain curves' settings and no significance gate; curves with fewer than 4
    checkpoints on the positive log axis, or that cannot be segmented, are left out."""
    from ..dynamics import detect_phases

    out = {}
    for name, curve in curves.items():
        xs = curve[x].values if x in curve.coords else np.full(curve.sizes["checkpoint"], np.nan)
        keep = np.isfinite(xs) & (xs > 0) & np.isfinite(curve.values)
        if keep.sum() < 4:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[name] = detect_phases(curve.isel(checkpoint=np.flatnonzero(keep)), x=x, n_boot=n_boot, name=name)
        except ValidationError as exc:
            log.info("no phase detection for %s: %s", name, exc)
    return out


def training_description(res: xr.Dataset, cfg: Mapping) -> dict | None:
    """What a train-tiny model of the sweep was trained on
    (:func:`brainalign.dynamics.memorisation.training_corpus`, with the sweep dataset's
    stimulus stories), or None for other models."""
    from ..dynamics.memorisation import find_training_log, training_corpus

    folders = _checkpoint_folders(cfg, _done(res).checkpoint.values.tolist())
    logs = {p for p in map(find_training_log, folders.values()) if p is not None}
    if not logs:
        return None
    stories = None
    try:
        from .config import load_config
        from .run import load_dataset

        ds = load_dataset(load_config(_analysis_config(cfg)))
        stories = {name: st.words for name, st in ds.stories.items()}
    except Exception as exc:  # noqa: BLE001 - the dataset may not be on this machine; say what is known
        log.warning("the sweep's stories are not available to compare with the training corpus: %s", exc)
    out = training_corpus(sorted(logs)[0], stories)
    if len(logs) > 1:
        out["other_logs"] = [str(p) for p in sorted(logs)[1:]]
    return out


def analyze(path: str | Path, internal: bool = True, n_boot: int = 200, trust_remote_code: bool = False) -> dict:
    """ROI curves, phases, internal states and downstream tasks of a sweep, and how their
    transitions line up.

    Returns
    -------
    dict
        ``results``: the store (Dataset). ``curves``: :func:`roi_curves` (with
        ``significant`` / ``roi_pvalue`` when tested). ``phases``: roi -> PhaseResult of
        the brain-alignment curves; ``phase_table``: their transitions in one DataFrame.
        ``internal``: :func:`internal_state_curves` (checkpoint [x layer]) or None.
        ``state_curves``: name -> 1-D DataArray over ``checkpoint`` (coords ``tokens``,
        ``step``), the summarised curves of :data:`STATE_CURVES` that exist (CKA and
        dimensionality averaged over layers, head scores max over layers and heads, ICL
        score, instruction following, training / held-out loss and accuracy, memorisation
        gap and index, weight norm, LLC) and :data:`LM_LOSS_CURVE` (the store's
        ``lm_loss``); the states the store holds (``internal_states:``) are read from it;
        with ``internal=False`` (then ``internal`` is None) only the memorisation
        curves, the stored states and the LM loss. ``downstream``: Dataset over ``checkpoint``
        (coords ``tokens``, ``step``), one variable per task (the store's copy, else
        the files of its config's ``downstream:``; see
        :func:`brainalign.sweep.downstream.downstream_table`), or None.
        ``state_phases``: name -> PhaseResult for every state curve and downstream task
        (keyed by the task's name) with enough checkpoints (:func:`curve_phases`).
        ``cooccurrence``: DataFrame, one row per transition of each ROI whose alignment
        is significant (from ``phases``): ``roi``, ``transition`` (rise / fall /
        plateau), ``change``, ``tokens``, ``tokens_lo``, ``tokens_hi``, then ``state``,
        ``state_tokens``, ``state_distance_log10`` (state minus brain, log10 tokens),
        ``state_change``, and the same four for ``downstream`` (None / NaN without such a
        transition; :func:`brainalign.dynamics.downstream.nearest_transitions`).
        ``training``: the train-tiny corpus description (:func:`training_description`:
        source, files, documents, words, which stimulus stories it contains,
        ``disjoint``) or None.
    """
    from ..dynamics.downstream import nearest_transitions
    from .downstream import store_downstream

    sweep = Sweep(path)
    res = sweep.results
    curves = roi_curves(res)
    if _has_null(_done(res)) or "score_lo" in curves:  # phases only where alignment is significant
        p = roi_pvalues(res) if _has_null(_done(res)) else None
        sig = roi_significance(res, pvalues=p)
        curves["significant"] = sig
        curves.attrs["significance_test"] = sig.attrs["test"]
        if p is not None:
            curves["roi_pvalue"] = p
    phases, table = phase_table(curves, n_boot=n_boot)
    cfg = res.attrs.get("config", {}) or {}
    states = internal_state_curves(path, trust_remote_code=trust_remote_code) if internal else None
    summary = state_curves(states if internal else _memorisation(res, cfg), res)
    try:
        downstream = store_downstream(path, res, cfg)
    except ValidationError as exc:
        log.warning("downstream results skipped: %s", exc)
        downstream = None
    state_ph = curve_phases(summary, n_boot=n_boot)
    task_ph = curve_phases({v: downstream[v] for v in downstream.data_vars}, n_boot=n_boot) if downstream is not None else {}
    co = nearest_transitions(phases, {"state": state_ph, "downstream": task_ph})
    return {"results": res, "curves": curves, "phases": phases, "phase_table": table, "internal": states,
            "state_curves": summary, "downstream": downstream, "state_phases": {**state_ph, **task_ph},
            "cooccurrence": co, "training": training_description(res, cfg)}


def _layer_label(v) -> str:
    v = float(v)
    return str(int(v)) if np.isfinite(v) else "-"


def _tokens_label(v: float) -> str:
    if not np.isfinite(v):
        return "?"
    for div, suf in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:.3g}{suf}"
    return f"{v:.0f}"


def roi_ceilings(res: xr.Dataset, cfg: dict, space: str) -> dict | None:
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


def _data_notes(res: xr.Dataset, ceilings: dict | None) -> list[str]:
    """Report lines on how the maps reached their surface and where the ceilings come from."""
    lines = []
    proj = res.attrs.get("projection")
    if isinstance(proj, Mapping):
        lines.append(f"Maps: each subject's voxel maps were projected to {proj.get('to')} ({proj.get('maps')}). "
                     f"{proj.get('rois', '')}.")
    note = res.attrs.get("ceiling_note")
    if note and ceilings is None:
        lines.append(f"Noise ceiling: none for these data. {note}")
    elif note:
        lines.append(f"Noise ceilings: {note}.")
    return lines


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
    # a pyplot-free Figure (brainalign.plotting): nothing to close, no global matplotlib state touched
    flatmap(s.values, space=res.attrs.get("space", "fsaverage5"), threshold=threshold, title=title, label="held-out r", out=out)
    return Path(out)


def report(*args, **kwargs):
    """The HTML report of a sweep: see :func:`brainalign.sweep._report.report`."""
    from ._report import report as _report

    return _report(*args, **kwargs)
