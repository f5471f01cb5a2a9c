"""``brainalign.encoding.fit``: every layer x subject of one checkpoint, as an xarray."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from dataclasses import dataclass, field

from ..errors import ValidationError
from ._backend import Backend, resolve_backend
from ._compat import renamed_keywords
from .bootstrap import DEFAULT_BLOCK_LENGTH, DEFAULT_N_BOOT, MIN_BLOCKS, roi_bootstrap, roi_labels_for, roi_mean, tr_blocks
from .ridge import DEFAULT_ALPHAS, RidgeCVResult, fit_ridge_cv_many
from .significance import ROI_METHOD, roi_null_terms
from .stats import fdr as fdr_correct
from .stats import noise_ceiling, significance, significance_method
from .variables import fit_variables

log = logging.getLogger(__name__)

#: (test stories, block length) already warned about having few bootstrap blocks
_WARNED_BLOCKS: set = set()

__all__ = ["fit", "select_layers", "subject_groups", "load_responses"]


def select_layers(features, layers: Any = "all") -> list[int]:
    """``"all"``, an int, or a list of ints -> list of layers present in ``features``."""
    if isinstance(layers, str):
        if layers != "all":
            raise ValidationError(f"layers must be 'all', an int or a list of ints, got {layers!r}")
        return list(features.layers)
    sel = [int(layers)] if np.isscalar(layers) else [int(x) for x in layers]
    missing = [x for x in sel if x not in features.layers]
    if missing:
        raise ValidationError(f"layers {missing} were not extracted (features have layers {features.layers})")
    if not sel:
        raise ValidationError("layers is empty")
    return sel


def subject_groups(dataset, subjects: Sequence[str]) -> list[tuple[tuple[str, ...], tuple[str, ...], list[str]]]:
    """Subjects grouped by (training stories, test stories): each group shares one design."""
    groups: dict[tuple, list[str]] = {}
    for s in subjects:
        key = (tuple(dataset.train_stories_of(s)), tuple(dataset.test_stories_of(s)))
        if not key[0]:
            raise ValidationError(f"dataset {dataset.name!r}: subject {s!r} has no training stories")
        if not key[1]:
            raise ValidationError(f"dataset {dataset.name!r}: subject {s!r} has no test story to score on")
        groups.setdefault(key, []).append(s)
    return [(k[0], k[1], v) for k, v in groups.items()]


def load_responses(dataset, subject: str, stories: Sequence[str], zscore: bool = True) -> np.ndarray:
    """Responses of ``stories`` stacked in order (float32, read-only), z-scored per story
    if asked; kept in memory by the dataset for the next checkpoint of a sweep."""
    return dataset.stacked_responses(subject, stories, zscore)


def dataset_ceiling(dataset, subject: str, test: Sequence[str], method: str = "ccmax") -> np.ndarray | None:
    """Noise ceiling per target of ``subject`` from the repeats of the ``test`` stories
    (concatenated in time), or None when a test story has no repeats."""
    if not all(dataset.has_repeats(subject, st) for st in test):
        return None
    reps = [dataset.repeats(subject, st) for st in test]
    n_rep = min(r.shape[0] for r in reps)
    if any(r.shape[0] != n_rep for r in reps):
        log.warning("subject %s: test stories have different numbers of repeats; using the first %d of each",
                    subject, n_rep)
    return noise_ceiling(np.concatenate([r[:n_rep] for r in reps], axis=1), method=method)


@dataclass
class _Setup:
    """What :func:`_validate` checked and derived from the inputs of :func:`fit`."""

    layers: list[int]
    subjects: list[str]
    groups: list[tuple[tuple[str, ...], tuple[str, ...], list[str]]]
    spaces: dict
    n_targets: dict[str, int]
    roi_spec: dict | None
    roi_names: list[str]
    n_terms: int


@dataclass
class _Arrays:
    """The result arrays :func:`fit` fills group by group (NaN where not computed)."""

    vars: dict[str, np.ndarray]
    have_ceiling: bool = False
    n_blocks: dict[str, int] = field(default_factory=dict)


def _validate(features, dataset, layers, subjects, rois, n_boot) -> _Setup:
    layer_list = select_layers(features, layers)
    subjects = list(dataset.subjects if subjects is None else subjects)
    if not subjects:
        raise ValidationError("subjects is empty")
    for s in subjects:
        if s not in dataset.subjects:
            raise ValidationError(f"dataset {dataset.name!r} has no subject {s!r} (subjects: {dataset.subjects})")
    groups = subject_groups(dataset, subjects)
    needed = {st for tr, te, _ in groups for st in tr + te}
    missing = sorted(needed - set(features.stories))
    if missing:
        raise ValidationError(f"features of {features.model} lack stories {missing} that the dataset needs")
    spaces = {s: dataset.space(s) for s in subjects}
    n_targets = {s: spaces[s].n_targets for s in subjects}
    roi_spec = {s: roi_labels_for(rois, spaces[s]) for s in subjects} if rois is not None else None
    roi_names: list[str] = []
    n_terms = 0
    if roi_spec is not None:
        for _, _, names in roi_spec.values():
            roi_names += [n for n in names if n not in roi_names]
        if not roi_names:
            raise ValidationError("rois: the atlas labels no target")
        if int(n_boot) < 1:
            raise ValidationError(f"n_boot must be a positive integer, got {n_boot!r}")
        n_terms = max(sum(dataset.stories[st].n_trs for st in te) - len(te) for _, te, _ in groups)
    return _Setup(layer_list, subjects, groups, spaces, n_targets, roi_spec, roi_names, n_terms)


def _empty_arrays(setup: _Setup, stats: bool, n_boot: int) -> _Arrays:
    L, S, T = len(setup.layers), len(setup.subjects), max(setup.n_targets.values())
    sizes = {"layer": L, "subject": S, "target": T, "roi": len(setup.roi_names), "boot": int(n_boot),
             "term": setup.n_terms}
    out = {}
    for name, v in fit_variables(stats=stats, rois=setup.roi_spec is not None, ceiling=True).items():
        if name == "score_normalised":
            continue  # score / ceiling, made when assembling
        fill = False if v.dtype == "bool" else np.nan
        out[name] = np.full(tuple(sizes[d] for d in v.dims), fill, v.dtype)
    return _Arrays(out)


def _warn_few_blocks(test, test_lengths, boot_block_length, nb) -> None:
    key = (tuple(test), int(boot_block_length))
    if nb < MIN_BLOCKS and key not in _WARNED_BLOCKS:
        _WARNED_BLOCKS.add(key)
        log.warning(
            "test stories %s (%d TRs) make only %d bootstrap blocks of %d TRs: ROI intervals will be wide "
            "(t intervals with %d degrees of freedom) and percentile intervals too narrow; more test TRs give "
            "tighter, better calibrated intervals", list(test), sum(test_lengths), nb, boot_block_length, nb - 1)


def _store_subject(arr: _Arrays, setup: _Setup, li: int, s: str, res: RidgeCVResult, yt: np.ndarray,
                   test_lengths: list[int], opts: dict) -> None:
    """One subject's results of one layer into the result arrays (scores, ROI bootstrap
    and null terms, p-values)."""
    v = arr.vars
    si, t = setup.subjects.index(s), setup.n_targets[s]
    v["score"][li, si, :t] = res.score
    v["r2"][li, si, :t] = res.r2
    v["alpha"][li, si, :t] = res.best_alphas
    v["cv_score"][li, si, :t] = res.cv_r
    if setup.roi_spec is not None:
        labels, codes, names = setup.roi_spec[s]
        boot = roi_bootstrap(yt, res.predictions, test_lengths, labels, codes, n_boot=opts["n_boot"],
                             block_length=opts["boot_block_length"], seed=opts["random_state"])
        cols = [setup.roi_names.index(n) for n in names]
        v["roi_boot"][li, si, cols] = boot.T
        v["roi_score"][li, si, cols] = roi_mean(res.score, labels, codes)
        if max(test_lengths) >= 8:  # shorter stories have no test of their correlation
            terms = roi_null_terms(yt, res.predictions, test_lengths, labels, codes).T
            v["roi_null"][li, si, cols] = 0.0
            v["roi_null"][li, si, cols, : terms.shape[1]] = terms
    if opts["stats"]:
        pv = significance(yt, res.predictions, test_lengths, test=opts["stats_test"],
                          n_permutations=opts["n_permutations"], block_size=opts["block_size"],
                          random_state=opts["random_state"])
        v["pvalue"][li, si, :t] = pv
        v["significant"][li, si, :t] = fdr_correct(pv, q=opts["fdr"])[0]


def _fit_group(arr: _Arrays, setup: _Setup, features, dataset, group, b: Backend, opts: dict) -> None:
    """Every layer of one group of subjects sharing their stories: one design per layer,
    one ridge CV for all of them, then each subject's scores and statistics."""
    from ..features import design

    train, test, members = group
    train_st = [dataset.stories[st] for st in train]
    test_st = [dataset.stories[st] for st in test]
    lengths = [st.n_trs for st in train_st]
    log.info("subjects %s: %d training stories, %d test stories", members, len(train), len(test))
    Ys = [load_responses(dataset, s, train, opts["zscore_responses"]) for s in members]
    Yts = [load_responses(dataset, s, test, opts["zscore_responses"]) for s in members]
    for s, y in zip(members, Ys):
        setup.spaces[s].check(y, where=f"responses of subject {s}")
    test_lengths = [st.n_trs for st in test_st]
    if setup.roi_spec is not None:
        nb = int(tr_blocks(test_lengths, opts["boot_block_length"])[-1]) + 1
        arr.n_blocks.update({s: nb for s in members})
        _warn_few_blocks(test, test_lengths, opts["boot_block_length"], nb)
    for s in members if opts["ceiling"] is not None else []:
        c = dataset_ceiling(dataset, s, test, opts["ceiling"])
        if c is not None:
            arr.vars["ceiling"][setup.subjects.index(s), : c.size] = c
            arr.have_ceiling = True
    for li, layer in enumerate(setup.layers):
        X = design(features, train_st, layer, delays=opts["delays"])
        Xt = design(features, test_st, layer, delays=opts["delays"])
        results = fit_ridge_cv_many(
            X, Ys, lengths, alphas=opts["alphas"], n_folds=opts["n_folds"], X_test=Xt, Y_test=Yts,
            method=opts["method"], backend=b, alpha_criterion=opts["alpha_criterion"],
            n_targets_batch=opts["n_targets_batch"], progress=opts["progress"],
        )
        for s, res, yt in zip(members, results, Yts):
            _store_subject(arr, setup, li, s, res, yt, test_lengths, opts)
        log.info("layer %d: median score %.4f", layer, float(np.nanmedian(arr.vars["score"][li])))


def _assemble(arr: _Arrays, setup: _Setup, features, dataset, opts: dict):
    """The result arrays as an ``xarray.Dataset`` with coordinates and attributes."""
    import xarray as xr

    from .. import __version__

    v, rois = arr.vars, setup.roi_spec is not None
    settings = dict(fdr=opts["fdr"], ceiling=opts["ceiling"], n_boot=int(opts["n_boot"]),
                    boot_block_length=int(opts["boot_block_length"]), seed=int(opts["random_state"]),
                    roi_method=ROI_METHOD,
                    pvalue_method=significance_method(opts["stats_test"], opts["n_permutations"], opts["block_size"]))
    data = {}
    for name, var in fit_variables(stats=opts["stats"], rois=rois, ceiling=arr.have_ceiling).items():
        if name == "score_normalised":
            with np.errstate(invalid="ignore", divide="ignore"):
                values = v["score"] / v["ceiling"][None]
        else:
            values = v[name]
        data[name] = (var.dims, values, {"long_name": var.describe(**settings)})
    layers, subjects, spaces = setup.layers, setup.subjects, setup.spaces
    coords: dict[str, Any] = {
        "layer": np.asarray(layers, dtype=np.int64),
        "depth": ("layer", np.asarray([features.depth(x) for x in layers], dtype=np.float64)),
        "subject": np.asarray(subjects, dtype=str),
        "target": np.arange(v["score"].shape[-1], dtype=np.int64),
    }
    if rois:
        coords["roi"] = np.asarray(setup.roi_names, dtype=str)
        coords["boot"] = np.arange(int(opts["n_boot"]), dtype=np.int64)
        coords["term"] = np.arange(v["roi_null"].shape[-1], dtype=np.int64)
    space_names = {sp.name for sp in spaces.values()}
    first = spaces[subjects[0]]
    if all(sp == first for sp in spaces.values()):
        coords["hemi"] = ("target", first.hemi())
    attrs = {
        "model": features.model,
        "revision": features.revision or "",
        "space": space_names.pop() if len(space_names) == 1 else "mixed",
        "dataset": dataset.name,
        "n_folds": int(opts["n_folds"]),
        "alphas": [float(a) for a in np.asarray(opts["alphas"], dtype=np.float64).ravel()],
        "delays": [int(d) for d in opts["delays"]],
        "alpha_criterion": opts["alpha_criterion"],
        "cv_score": "Pearson r on the validation folds of the training stories, at the chosen alpha, mean over folds",
        "brainalign_version": __version__,
    }
    if rois:
        attrs.update(boot_block_length=int(opts["boot_block_length"]), n_boot=int(opts["n_boot"]),
                     boot_seed=int(opts["random_state"]), boot_blocks=min(arr.n_blocks.values()))
    for key in ("step", "tokens"):
        if features.training.get(key) is not None:
            attrs[key] = features.training[key]
    return xr.Dataset(data, coords=coords, attrs=attrs)


@renamed_keywords(score_func="alpha_criterion", block_length="block_size", fdr_q="fdr")
def fit(
    features,
    dataset,
    *,
    layers: Any = "all",
    subjects: Sequence[str] | None = None,
    alphas: Sequence[float] | np.ndarray = DEFAULT_ALPHAS,
    n_folds: int = 5,
    backend: Any = "auto",
    stats: bool = False,
    delays: Sequence[int] = (1, 2, 3, 4),
    method: str = "auto",
    alpha_criterion: str = "l2",
    zscore_responses: bool = True,
    stats_test: str = "sign",
    n_permutations: int = 1000,
    block_size: int = 20,
    fdr: float = 0.05,
    ceiling: str | None = "ccmax",
    n_targets_batch: int | None = None,
    random_state: int = 0,
    progress: bool = True,
    rois: Any = None,
    n_boot: int = DEFAULT_N_BOOT,
    boot_block_length: int = DEFAULT_BLOCK_LENGTH,
):
    """Fit voxelwise/vertexwise ridge encoders for every layer and subject.

    For each layer, the design (Lanczos to the TR grid, z-scored per story, delayed) is
    built once per group of subjects who heard the same training stories; alphas are
    chosen per target by leave-stories-out CV on the training stories; the refit model
    is scored once on the held-out test stories.

    Everything after ``features`` and ``dataset`` is keyword-only. Old keyword names are
    still accepted with a DeprecationWarning: ``score_func`` (now ``alpha_criterion``),
    ``block_length`` (now ``block_size``, as in the sweep config's ``stats.block_size``)
    and ``fdr_q`` (now ``fdr``, as in ``stats.fdr``).

    Parameters
    ----------
    features : WordFeatures
        Hidden states of one checkpoint.
    dataset : Dataset
        Stories, split and responses.
    layers : "all", int or list of int
    subjects : list of str, optional
        Default: all of the dataset's subjects.
    alphas : array
        Candidate ridge penalties.
    n_folds : int
        Story folds for choosing alphas.
    backend : str
        himalaya backend (``"auto"``: GPU when there, else CPU), resolved once for the
        whole fit; himalaya's global backend is left as it was.
    stats : bool
        Also compute one-sided p-values of the held-out r (``pvalue``) and BH-FDR
        significance (``significant``) over the targets of each layer and subject.
    delays : sequence of int
        FIR delays in TRs.
    method : {"auto", "primal", "kernel"}
        Ridge solver form (:func:`~brainalign.encoding.fit_ridge_cv`).
    alpha_criterion : {"l2", "r2"}
        The fold score by which alphas are chosen (minus the mean squared error, or R^2);
        not the held-out ``score``.
    zscore_responses : bool
        Z-score each story's responses (already so in ds003020; harmless then).
    stats_test : {"sign", "block"}
        The test: ``"sign"`` (default), spectral sign randomisation within test stories,
        analytic, holds its level on BOLD-like autocorrelation and has no p-value floor
        (:mod:`brainalign.encoding.significance`); ``"block"``, the block permutation test
        (``n_permutations`` orders of blocks of ``block_size`` TRs; anti-conservative on
        strongly autocorrelated data, and its smallest p, 1 / (n_permutations + 1), may
        be too large for FDR over a cortex: a warning says so).
    block_size : int
        TRs per block of the block permutation test.
    fdr : float
        The BH-FDR level ``q`` of ``significant``.
    ceiling : {"ccmax", "ev"} or None
        Noise ceiling from test-story repeats, when the dataset has them; None: none
        computed (a sweep computes it once for all checkpoints).
    rois : atlas name, Atlas, or int label array (one label per target, 0 = none), optional
        Also bootstrap the ROI-mean held-out r (``roi_boot``): the test TRs are cut into
        blocks of ``boot_block_length`` TRs within stories, and ``n_boot`` replicates
        resample whole blocks with replacement (:mod:`brainalign.encoding.bootstrap`).
        The draws depend only on the number of blocks, ``n_boot`` and ``random_state``,
        so replicate ``b`` uses the same blocks at every checkpoint and layer (paired
        differences between checkpoints are taken replicate by replicate).
    n_boot : int
        Bootstrap replicates (with ``rois``).
    boot_block_length : int
        TRs per bootstrap block (with ``rois``).

    Returns
    -------
    xarray.Dataset
        The variables of :data:`brainalign.encoding.SCORE_VARIABLES` that apply: dims
        ``(layer, subject, target)``; ``score`` (held-out Pearson r), ``r2``,
        ``alpha``, ``cv_score`` (the training-story score: Pearson r on the validation
        folds at the chosen alpha, averaged over folds; what a layer is chosen by);
        with ``stats`` ``pvalue`` and ``significant``; with ``rois``, ``roi_score``
        (layer, subject, roi: the ROI-mean held-out r) and ``roi_boot`` (layer,
        subject, roi, boot: its value in each bootstrap replicate; coordinates ``roi``
        and ``boot``, attributes ``n_boot``, ``boot_block_length``, ``boot_seed``,
        ``boot_blocks``) and ``roi_null`` (layer, subject, roi, term: the DCT terms of
        the ROI mean, whose signs the ROI-level sign randomisation test flips together
        for all of an ROI's targets; :func:`brainalign.encoding.significance.sign_pvalues`
        of them, or of several subjects' terms concatenated, is the one-sided p-value of
        the ROI mean, or of the subject mean; zero-padded); with repeats
        ``ceiling`` (subject, target) and ``score_normalised`` = score / ceiling
        (not clipped; NaN where no ceiling is estimable). Subjects with fewer targets
        than others are NaN-padded.
    """
    opts = dict(alphas=alphas, n_folds=n_folds, stats=stats, delays=delays, method=method,
                alpha_criterion=alpha_criterion, zscore_responses=zscore_responses, stats_test=stats_test,
                n_permutations=n_permutations, block_size=block_size, fdr=fdr, ceiling=ceiling,
                n_targets_batch=n_targets_batch, random_state=random_state, progress=progress, n_boot=n_boot,
                boot_block_length=boot_block_length)
    setup = _validate(features, dataset, layers, subjects, rois, n_boot)
    b = resolve_backend(backend)  # once per fit: every layer and group uses this one
    arr = _empty_arrays(setup, stats, n_boot)
    for group in setup.groups:
        _fit_group(arr, setup, features, dataset, group, b, opts)
    return _assemble(arr, setup, features, dataset, opts)
