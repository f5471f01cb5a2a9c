"""Atlases and ROI aggregation: target-level scores -> ROI curves over layers and training.

>>> atlas = load_atlas("language")                       # offline, fsaverage5
>>> curves = aggregate(results, atlas=atlas, how="mean")  # roi x checkpoint x layer x subject

See :mod:`brainalign.surfaces.atlases` for every atlas source and
:mod:`brainalign.surfaces.meshes` for meshes, the medial wall and resampling.
"""

from __future__ import annotations

import logging
import warnings
from typing import Sequence

import numpy as np

from .errors import ValidationError
from .surfaces.atlases import _WHOLE, LANGUAGE_ROIS, OFFLINE_ATLASES, Atlas, load_atlas, whole_targets
from .surfaces.meshes import medial_wall, resample, space_of_size

__all__ = ["Atlas", "load_atlas", "whole_targets", "aggregate", "roi_values", "choose_layer", "LAYER_RULES", "LANGUAGE_ROIS",
           "OFFLINE_ATLASES", "medial_wall", "resample"]

log = logging.getLogger(__name__)

_HOWS = ("mean", "median", "top10", "fraction_significant")

#: How :func:`choose_layer` picks "the best layer", in words (for reports).
LAYER_RULES = {
    "cv": "the layer with the best subject-mean cross-validated score on the training stories (Pearson r on the "
          "validation folds, at each target's chosen alpha, averaged over the ROI); the curve shows that layer's "
          "held-out score on the test stories",
    "test": "the layer with the best subject-mean held-out score on the test stories (these results have no "
            "training-story CV score: the choice uses the data it is scored on, an upward bias)",
}


def choose_layer(score, cv=None, *, rule: str = "auto"):
    """The best layer of each ROI and checkpoint, and the held-out score there.

    The one place where "the best layer" is decided (ROI curves, ``Sweep.roi_curve``,
    :func:`aggregate`, the plots and the report all call it), with one rule for NaNs.

    Parameters
    ----------
    score : xarray.DataArray
        Held-out ROI scores with a ``layer`` dim (and usually ``subject``, ``roi``,
        ``checkpoint``).
    cv : xarray.DataArray, optional
        The training-story CV score of the same cells (e.g. ``roi_cv_score``).
    rule : {"auto", "cv", "test"}
        ``"cv"``: choose by the subject mean of ``cv`` (the choice never sees the test
        stories). ``"test"``: by the subject mean of ``score`` itself (biased upward; for
        results without CV scores). ``"auto"``: ``"cv"`` when ``cv`` is given and has a
        finite value, else ``"test"`` with a warning.

    NaN rule: the criterion is the mean over the subjects that have a value; a layer
    whose criterion is NaN is never chosen; ties go to the first (shallowest) layer;
    where no layer has a finite criterion the best layer and the scores are NaN.

    Returns
    -------
    xarray.Dataset
        ``score`` (the input's dims but ``layer``: each subject's held-out score at the
        chosen layer), ``score_mean`` (over subjects, NaN-skipping), ``best_layer``
        (float, NaN where none), ``best_depth`` (when the input has a ``depth``
        coordinate) and ``criterion`` (the subject-mean value the choice maximised);
        attribute ``layer_rule`` (``"cv"`` or ``"test"``) and ``layer_rule_text``.
    """
    import xarray as xr

    if rule not in ("auto", "cv", "test"):
        raise ValidationError(f"rule must be 'auto', 'cv' or 'test', got {rule!r}")
    if "layer" not in score.dims:
        raise ValidationError(f"choose_layer needs a 'layer' dimension; the scores have {score.dims}")
    has_cv = cv is not None and bool(np.isfinite(np.asarray(cv.values, dtype=np.float64)).any())
    if rule == "cv" and not has_cv:
        raise ValidationError("rule='cv' needs training-story CV scores (cv_score); these results have none")
    if rule == "auto":
        rule = "cv" if has_cv else "test"
        if rule == "test":
            log.warning("no training-story CV scores: the best layer is chosen on the held-out score itself "
                        "(biased upward); refit to store cv_score")
    crit_src = (cv.broadcast_like(score) if rule == "cv" else score).astype(np.float64)
    crit = crit_src.mean("subject", skipna=True) if "subject" in crit_src.dims else crit_src
    dims = [d for d in crit.dims if d != "layer"]
    c = crit.transpose(*dims, "layer")
    vals = np.asarray(c.values, dtype=np.float64)
    ok = np.isfinite(vals)
    idx = np.argmax(np.where(ok, vals, -np.inf), axis=-1)
    found = ok.any(axis=-1)
    layers = np.asarray(score["layer"].values)
    best = np.where(found, layers[idx].astype(np.float64), np.nan)
    coords = {k: v for k, v in c.coords.items() if "layer" not in v.dims}
    idx_da = xr.DataArray(idx, dims=dims, coords=coords)
    at = score.isel(layer=idx_da).drop_vars(["layer", "depth"], errors="ignore")
    found_da = xr.DataArray(found, dims=dims, coords=coords)
    at = at.where(found_da)
    out = xr.Dataset({
        "score": at,
        "score_mean": at.mean("subject", skipna=True) if "subject" in at.dims else at,
        "best_layer": xr.DataArray(best, dims=dims, coords=coords),
        "criterion": xr.DataArray(np.where(found, np.take_along_axis(vals, idx[..., None], -1)[..., 0], np.nan),
                                  dims=dims, coords=coords),
    })
    if "depth" in score.coords and score["depth"].dims == ("layer",):
        depth = np.asarray(score["depth"].values, dtype=np.float64)
        out["best_depth"] = xr.DataArray(np.where(found, depth[idx], np.nan), dims=dims, coords=coords)
    out.attrs.update(layer_rule=rule, layer_rule_text=LAYER_RULES[rule])
    return out


def _target_labels(results, atlas: "str | Atlas", **atlas_kw) -> tuple[Atlas, np.ndarray]:
    """The atlas on the results' space and one label per entry of the target dim."""
    n = int(results.sizes["target"])
    space = results.attrs.get("space")
    if not isinstance(atlas, Atlas):
        if space is None:
            space = space_of_size(n)
        elif not str(space).startswith("fsaverage"):
            if isinstance(atlas, str) and atlas.lower() in _WHOLE:
                whole = whole_targets(n, str(space))
                return whole, np.asarray(whole.labels)
            raise ValidationError(
                f"results are on the voxels of volume space {space!r}, and atlas {getattr(atlas, 'name', atlas)!r} is "
                "on fsaverage: pass dataset= (aggregate(results, atlas, dataset=ds) carries the atlas to each "
                "subject's voxels; LeBel 2023 subjects with their surfaces), or project the results first with "
                "ba.surfaces.project(results, dataset, to='fsaverage5'), or give an Atlas on that volume space, "
                "e.g. load_atlas('labels.nii.gz', dataset.space(subject))"
            )
        atlas = load_atlas(atlas, space, **atlas_kw)
    elif space is not None and str(space).startswith("fsaverage") and atlas.space != space:
        atlas = atlas.resample(space)
    if n == atlas.n_targets:
        return atlas, np.asarray(atlas.labels)
    tgt = np.asarray(results["target"].values) if "target" in results.coords else None
    if tgt is not None and np.issubdtype(tgt.dtype, np.integer) and tgt.size and 0 <= tgt.min() and tgt.max() < atlas.n_targets:
        return atlas, np.asarray(atlas.labels)[tgt]
    raise ValidationError(
        f"results have {n} targets but atlas {atlas.name!r} ({atlas.space}) has {atlas.n_targets}, "
        "and the 'target' coordinate does not index into it"
    )


def _subject_labels(results, atlas: "str | Atlas", dataset, **atlas_kw) -> tuple[Atlas, np.ndarray]:
    """The atlas and labels per subject's voxels, ``(subject, target)`` (or ``(target,)``
    for results of one subject), for results on the voxels of ``dataset``'s subjects.

    Surface atlases are carried to each subject's voxels (:func:`~brainalign.surfaces.atlases.subject_atlas`),
    with the atlas's codes; targets past a subject's voxels (NaN padding) get label 0.
    """
    from .surfaces.atlases import subject_atlas
    from .surfaces.subject import SubjectSpace, subject_spaces

    n = int(results.sizes["target"])
    if "subject" in results.dims:
        subs = [str(x) for x in results["subject"].values]
    elif "subject" in results.coords:
        subs = [str(results["subject"].values)]
    elif isinstance(dataset, SubjectSpace):
        subs = [dataset.subject]
    elif len(getattr(dataset, "subjects", ())) == 1:
        subs = list(dataset.subjects)
    else:
        raise ValidationError("aggregate: results have no 'subject' dimension or coordinate; say whose voxels they "
                              "are, e.g. results.sel(subject='UTS01') or results.expand_dims(subject=['UTS01'])")
    spaces = {subs[0]: dataset} if isinstance(dataset, SubjectSpace) else subject_spaces(dataset, subs)
    whole = isinstance(atlas, str) and atlas.lower() in _WHOLE
    source = None if whole else (atlas if isinstance(atlas, Atlas) else load_atlas(atlas, "fsaverage5", **atlas_kw))
    rows = []
    for s in subs:
        sp = spaces[s]
        if sp.is_surface:
            raise ValidationError(f"subject {s} is on surface {sp.name}, not voxels: aggregate without dataset=")
        if sp.n_targets > n:
            raise ValidationError(f"results have {n} targets but subject {s} has {sp.n_targets} voxels")
        lab = np.zeros(n, dtype=np.int64)
        if whole:
            lab[: sp.n_targets] = 1
        elif not isinstance(sp, SubjectSpace):
            raise ValidationError(
                f"subject {s}: its space {sp.name!r} has no surfaces, so fsaverage atlas {source.name!r} cannot reach "
                "its voxels (for lebel2023: `brainalign datasets check lebel2023 ROOT` says which pycortex and "
                "FreeSurfer files are missing)")
        else:
            lab[: sp.n_targets] = subject_atlas(source, sp).labels
        rows.append(lab)
    named = whole_targets(n, "voxels") if whole else source
    return named, (np.stack(rows) if "subject" in results.dims else rows[0])


def _per_subject(labels: np.ndarray, fn, *arrays: np.ndarray) -> np.ndarray:
    """``fn(*arrays, labels)`` over the last axis; with labels (subject, target), per subject
    (the arrays' axis -2), the results stacked back on axis -2."""
    if labels.ndim == 1:
        return fn(*arrays, labels)
    return np.stack([fn(*(a[..., i, :] for a in arrays), labels[i]) for i in range(labels.shape[0])], axis=-2)


def roi_values(
    values: np.ndarray,
    labels: np.ndarray,
    codes: Sequence[int],
    how: str = "mean",
    *,
    top: float = 0.1,
) -> np.ndarray:
    """Aggregate the last axis of ``values`` within each label in ``codes``.

    NaNs are ignored; an ROI with no finite value gives NaN.

    Parameters
    ----------
    values : array (..., n_targets)
    labels : int array (n_targets,)
    codes : label values, one output column each
    how : "mean", "median", "top10" (mean of the top ``top`` fraction, at least one
        target, by value) or "fraction_significant" (mean of a boolean array)

    Returns
    -------
    array (..., len(codes)), float64
    """
    values = np.asarray(values)
    labels = np.asarray(labels)
    if values.shape[-1] != labels.shape[0]:
        raise ValidationError(f"values have {values.shape[-1]} targets, labels {labels.shape[0]}")
    if how not in _HOWS:
        raise ValidationError(f"how must be one of {', '.join(_HOWS)}, got {how!r}")
    lead = values.shape[:-1]
    flat = values.reshape(-1, values.shape[-1]).astype(np.float64, copy=False)
    out = np.full((flat.shape[0], len(codes)), np.nan)
    if how in ("mean", "fraction_significant"):
        import scipy.sparse as sp

        finite = np.isfinite(flat)
        clean = np.where(finite, flat, 0.0)
        col = {c: j for j, c in enumerate(codes)}
        rows = np.flatnonzero(np.isin(labels, list(codes)))
        onehot = sp.csr_matrix(
            (np.ones(len(rows)), (rows, [col[c] for c in labels[rows]])), shape=(labels.shape[0], len(codes))
        )
        sums = np.asarray((onehot.T @ clean.T).T)
        counts = np.asarray((onehot.T @ finite.T.astype(np.float64)).T)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    else:
        for j, c in enumerate(codes):
            sub = flat[:, labels == c]
            if sub.shape[1] == 0:
                continue
            if how == "median":
                with np.errstate(all="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    out[:, j] = np.nanmedian(np.where(np.isfinite(sub), sub, np.nan), axis=1)
                continue
            k = max(1, int(np.ceil(top * sub.shape[1])))
            s = np.where(np.isfinite(sub), sub, -np.inf)
            part = -np.partition(-s, k - 1, axis=1)[:, :k] if k < s.shape[1] else s
            part = np.where(np.isfinite(part), part, np.nan)
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                out[:, j] = np.nanmean(part, axis=1)
    return out.reshape(*lead, len(codes))


def _top_ceiling(score: np.ndarray, ceiling: np.ndarray, labels: np.ndarray, codes: Sequence[int], top: float) -> np.ndarray:
    """Mean ceiling over the same top targets that ``top10`` picks by score."""
    flat_s = score.reshape(-1, score.shape[-1])
    flat_c = ceiling.reshape(-1, ceiling.shape[-1])
    out = np.full((flat_s.shape[0], len(codes)), np.nan)
    for j, c in enumerate(codes):
        m = labels == c
        s, cc = flat_s[:, m], flat_c[:, m]
        if s.shape[1] == 0:
            continue
        k = max(1, int(np.ceil(top * s.shape[1])))
        order = np.argsort(-np.where(np.isfinite(s), s, -np.inf), axis=1)[:, :k]
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out[:, j] = np.nanmean(np.take_along_axis(cc, order, axis=1), axis=1)
    return out.reshape(*score.shape[:-1], len(codes))


def _aggregated_variable(results, how: str, var: str, alpha: float):
    """(the target-level variable an ROI aggregate is taken of, the output's name)."""
    if how == "fraction_significant":
        if "significant" in results:
            return results["significant"].astype(np.float64), "fraction_significant"
        if "pvalue" in results:
            return (results["pvalue"] < alpha).astype(np.float64).where(results["pvalue"].notnull()), "fraction_significant"
        raise ValidationError("how='fraction_significant' needs a 'significant' or 'pvalue' variable (fit with stats=True)")
    if var not in results:
        raise ValidationError(f"results have no variable {var!r}; they have {', '.join(results.data_vars)}")
    return results[var], var


def _n_targets(labels: np.ndarray, codes: list[int]) -> tuple:
    """Targets per ROI (per subject, for per-subject labels), as an xarray variable tuple."""
    size = max(codes, default=0) + 1
    if labels.ndim == 2:
        counts = np.stack([np.bincount(row, minlength=size)[codes] for row in labels])
        return ("subject", "roi"), counts.astype(np.int64)
    return "roi", np.bincount(labels, minlength=size)[codes].astype(np.int64)


def _ceiling_aggregate(ceil, data: np.ndarray, labels: np.ndarray, codes: list[int], how: str, top: float) -> np.ndarray:
    """The ROI aggregate of the noise ceiling over the same targets as the scores'
    (for "top10": the ceilings of the best-scoring targets)."""
    cdata = np.asarray(ceil.values, dtype=np.float64)
    if how == "top10":
        cagg = _per_subject(labels, lambda d, c, lab: _top_ceiling(d, c, lab, codes, top),
                            np.asarray(data, dtype=np.float64), cdata)
    else:
        cagg = _per_subject(labels, lambda c, lab: roi_values(c, lab, codes, how), cdata)
    bad = np.isfinite(cagg) & (cagg <= 0)
    if bad.any():
        log.warning("ROI ceiling <= 0 in %d cells; their normalised scores are NaN", int(bad.sum()))
    return cagg


def _add_subject_means(ds) -> None:
    """``<name>_mean`` and ``<name>_sem`` over subjects of every per-subject variable."""
    for name in [v for v in list(ds.data_vars) if v not in ("n_targets", "ceiling")]:
        if "subject" in ds[name].dims:
            n = ds[name].notnull().sum("subject")
            ds[f"{name}_mean"] = ds[name].mean("subject", skipna=True)
            sd = ds[name].std("subject", ddof=1, skipna=True)
            ds[f"{name}_sem"] = (sd / np.sqrt(n)).where(n > 1)


def aggregate(
    results,
    atlas: "str | Atlas" = "whole_cortex",
    how: str = "mean",
    *,
    var: str = "score",
    top: float = 0.1,
    alpha: float = 0.05,
    rois: Sequence[str] | None = None,
    dataset=None,
    **atlas_kw,
):
    """Aggregate target-level results within each ROI of an atlas.

    Parameters
    ----------
    results : xarray.Dataset or xarray.DataArray
        Encoding (or sweep) results with a ``target`` dimension and any of
        ``checkpoint``, ``layer``, ``subject``. A DataArray is taken as ``var``.
    atlas : str or Atlas
        An atlas name for :func:`load_atlas` (on the results' ``space`` attribute), or an
        :class:`Atlas` (surface atlases are carried to the results' fsaverage level).
    how : {"mean", "median", "top10", "fraction_significant"}
        Mean over the ROI's targets; median; mean of the best ``top`` fraction (10%);
        or the fraction of targets significant (the ``significant`` variable, else
        ``pvalue < alpha``).
    var : str
        The variable aggregated by "mean"/"median"/"top10".
    rois : list of str, optional
        Keep only these ROIs.
    dataset : Dataset, SubjectSpace or {subject: space}, optional
        For results on subjects' voxels (LeBel 2023, before
        :func:`~brainalign.surfaces.project`): the subjects' spaces. A surface atlas is
        then carried to each subject's voxels
        (:func:`~brainalign.surfaces.atlases.subject_atlas`) and each subject's ROIs are
        means over its own voxels; ``n_targets`` is per subject. Without it, volume
        results take only ``"whole_cortex"`` or an Atlas on their volume; any other atlas
        raises, saying to pass ``dataset=`` or to project first. Ignored for results on
        fsaverage.

    Returns
    -------
    xarray.Dataset
        Dims ``roi`` then the input's other dims (e.g. ``checkpoint, layer, subject``).
        Variables: ``<var>`` (or ``fraction_significant``) per subject;
        ``<name>_mean`` and ``<name>_sem`` over subjects (SEM = sd(ddof=1)/sqrt(n),
        NaN for one subject); with a ``ceiling`` variable, ``<var>_normalised`` =
        ROI aggregate of the score / the mean ceiling over the same targets (ratio of
        means, not clipped), with its mean and SEM; with a ``cv_score`` variable and a
        ``layer`` dim, ``cv_score`` (its ROI aggregate, same ``how``; the mean for
        ``fraction_significant``) with mean and SEM; with a ``layer`` dim,
        ``best_layer`` (per ROI and checkpoint, by :func:`choose_layer`: the best
        subject-mean ``cv_score`` when there is one, else the best subject-mean
        ``<name>``, with a warning; float with NaN where an ROI has no finite value),
        ``best_depth`` (relative depth = layer / number of layers of that layer) and
        ``best_<name>`` (the subject-mean held-out value at that layer); attribute
        ``layer_rule``; ``n_targets`` per ROI. Coordinates ``roi_label`` and the
        input's (``depth``, ``step``, ``tokens``...) are kept.
    """
    import xarray as xr

    if how not in _HOWS:
        raise ValidationError(f"how must be one of {', '.join(_HOWS)}, got {how!r}")
    if isinstance(results, xr.DataArray):
        results = results.to_dataset(name=results.name or var)
    if not isinstance(results, xr.Dataset):
        raise ValidationError(f"results must be an xarray Dataset or DataArray, got {type(results).__name__}")
    if "target" not in results.dims:
        raise ValidationError(f"results need a 'target' dimension; they have {tuple(results.dims)}")
    if not 0 < top <= 1:
        raise ValidationError(f"top must be in (0, 1], got {top}")
    on_voxels = dataset is not None and not str(results.attrs.get("space", "")).startswith("fsaverage")
    if on_voxels:
        atlas, labels = _subject_labels(results, atlas, dataset, **atlas_kw)
    else:
        atlas, labels = _target_labels(results, atlas, **atlas_kw)
    codes = list(atlas.names)
    names = [atlas.names[c] for c in codes]
    if rois is not None:
        keep = [atlas.label_of(r) for r in rois]
        codes, names = keep, [atlas.names[c] for c in keep]

    src, out_name = _aggregated_variable(results, how, var, alpha)
    agg_how = how
    src = src.transpose(..., "subject", "target") if labels.ndim == 2 else src.transpose(..., "target")
    other = [d for d in src.dims if d != "target"]
    data = np.asarray(src.values)
    agg = _per_subject(labels, lambda d, lab: roi_values(d, lab, codes, agg_how, top=top), data)
    cv_agg = None
    if "cv_score" in results and var != "cv_score" and "layer" in src.dims:
        # the training-story score over the same ROIs (fraction_significant: its mean),
        # by which the best layer is chosen
        cv_src = results["cv_score"].broadcast_like(src).transpose(*src.dims)
        cv_how = "mean" if how == "fraction_significant" else how
        cv_agg = _per_subject(labels, lambda d, lab: roi_values(d, lab, codes, cv_how, top=top),
                              np.asarray(cv_src.values))

    coords = {k: v for k, v in src.coords.items() if "target" not in v.dims}
    coords["roi"] = names
    coords["roi_label"] = ("roi", np.asarray(codes, dtype=np.int64))
    dims = (*other, "roi")
    ds = xr.Dataset({out_name: (dims, agg)}, coords=coords)
    if cv_agg is not None:
        ds["cv_score"] = (dims, cv_agg)
    ds["n_targets"] = _n_targets(labels, codes)
    if how != "fraction_significant" and "ceiling" in results and var != "ceiling":
        cagg = _ceiling_aggregate(results["ceiling"].broadcast_like(src).transpose(*src.dims), data, labels, codes,
                                  how, top)
        with np.errstate(all="ignore"):
            norm = np.where(cagg > 0, agg / np.where(cagg > 0, cagg, 1.0), np.nan)
        ds[f"{var}_normalised"] = (dims, norm)
        ds["ceiling"] = (dims, cagg)
    _add_subject_means(ds)

    if "layer" in ds.dims:
        if "depth" not in ds.coords:
            ds = ds.assign_coords(depth=("layer", _depth(results)))
        chosen = choose_layer(ds[out_name], ds["cv_score"] if "cv_score" in ds else None)
        ds["best_layer"] = chosen["best_layer"]
        ds["best_depth"] = chosen["best_depth"]
        ds[f"best_{out_name}"] = chosen["score_mean"]
        ds.attrs["layer_rule"] = chosen.attrs["layer_rule"]

    ds = ds.transpose("roi", *[d for d in ds.dims if d != "roi"])
    rule = ds.attrs.get("layer_rule")
    ds.attrs = {k: v for k, v in results.attrs.items()}
    if rule is not None:
        ds.attrs["layer_rule"] = rule
    ds.attrs.update(atlas=atlas.name, atlas_space=atlas.space, how=how, var=out_name)
    if on_voxels:
        ds.attrs["rois_on"] = ("each subject's voxels (the atlas carried from fsaverage to the voxels by the subject's "
                               "voxels -> fsaverage map; each voxel in the ROI that carries most of its weight)")
    if how == "top10":
        ds.attrs["top"] = top
    return ds


def _depth(results) -> np.ndarray:
    """Relative depth per layer: the ``depth`` coord, else layer / n_layers (attr), else layer / max layer."""
    if "depth" in results.coords and results["depth"].dims == ("layer",):
        return np.asarray(results["depth"].values, dtype=np.float64)
    layers = np.asarray(results["layer"].values, dtype=np.float64)
    n = results.attrs.get("n_layers")
    n = float(n) if n else float(layers.max() or 1.0)
    return layers / n
