"""``brainalign.encoding.fit``: every layer x subject of one checkpoint, as an xarray."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ValidationError
from .bootstrap import DEFAULT_BLOCK_LENGTH, DEFAULT_N_BOOT, MIN_BLOCKS, roi_bootstrap, roi_labels_for, roi_mean, tr_blocks
from .ridge import DEFAULT_ALPHAS, fit_ridge_cv
from .significance import ROI_METHOD, roi_null_terms
from .stats import fdr, noise_ceiling, significance, significance_method

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


def fit(
    features,
    dataset,
    layers: Any = "all",
    subjects: Sequence[str] | None = None,
    alphas: Sequence[float] | np.ndarray = DEFAULT_ALPHAS,
    n_folds: int = 5,
    backend: Any = "auto",
    stats: bool = False,
    *,
    delays: Sequence[int] = (1, 2, 3, 4),
    method: str = "auto",
    score_func: str = "l2",
    zscore_responses: bool = True,
    stats_test: str = "sign",
    n_permutations: int = 1000,
    block_length: int = 20,
    fdr_q: float = 0.05,
    ceiling: str = "ccmax",
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
        himalaya backend (``"auto"``: GPU when there, else CPU).
    stats : bool
        Also compute one-sided p-values of the held-out r (``pvalue``) and BH-FDR
        significance (``significant``) over the targets of each layer and subject.
    stats_test : {"sign", "block"}
        The test: ``"sign"`` (default), spectral sign randomisation within test stories,
        analytic, holds its level on BOLD-like autocorrelation and has no p-value floor
        (:mod:`brainalign.encoding.significance`); ``"block"``, the block permutation test
        (``n_permutations`` orders of blocks of ``block_length`` TRs; anti-conservative on
        strongly autocorrelated data, and its smallest p, 1 / (n_permutations + 1), may
        be too large for FDR over a cortex: a warning says so).
    delays : sequence of int
        FIR delays in TRs.
    zscore_responses : bool
        Z-score each story's responses (already so in ds003020; harmless then).
    ceiling : {"ccmax", "ev"}
        Noise ceiling from test-story repeats, when the dataset has them.
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
        dims ``(layer, subject, target)``; ``score`` (held-out Pearson r), ``r2``,
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
    import xarray as xr

    from .. import __version__
    from ..features import design

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
    T = max(n_targets.values())
    L, S = len(layer_list), len(subjects)
    shape = (L, S, T)
    score = np.full(shape, np.nan, np.float32)
    r2 = np.full(shape, np.nan, np.float32)
    alpha = np.full(shape, np.nan, np.float32)
    cv_score = np.full(shape, np.nan, np.float32)
    roi_spec = {s: roi_labels_for(rois, spaces[s]) for s in subjects} if rois is not None else None
    roi_names: list[str] = []
    if roi_spec is not None:
        for _, _, names in roi_spec.values():
            roi_names += [n for n in names if n not in roi_names]
        if not roi_names:
            raise ValidationError("rois: the atlas labels no target")
        if int(n_boot) < 1:
            raise ValidationError(f"n_boot must be a positive integer, got {n_boot!r}")
        roi_boot = np.full((L, S, len(roi_names), int(n_boot)), np.nan, np.float32)
        roi_score = np.full((L, S, len(roi_names)), np.nan, np.float32)
        n_terms = max(sum(dataset.stories[st].n_trs for st in te) - len(te) for _, te, _ in groups)
        roi_null = np.full((L, S, len(roi_names), n_terms), np.nan, np.float32)
    n_blocks: dict[str, int] = {}
    pvalue = np.full(shape, np.nan, np.float32) if stats else None
    signif = np.zeros(shape, bool) if stats else None
    ceil = np.full((S, T), np.nan, np.float32)
    have_ceiling = False
    s_index = {s: i for i, s in enumerate(subjects)}

    for train, test, members in groups:
        train_st = [dataset.stories[st] for st in train]
        test_st = [dataset.stories[st] for st in test]
        lengths = [st.n_trs for st in train_st]
        log.info("subjects %s: %d training stories, %d test stories", members, len(train), len(test))
        Ys = [load_responses(dataset, s, train, zscore_responses) for s in members]
        Yts = [load_responses(dataset, s, test, zscore_responses) for s in members]
        for s, y in zip(members, Ys):
            spaces[s].check(y, where=f"responses of subject {s}")
        test_lengths = [st.n_trs for st in test_st]
        if roi_spec is not None:
            nb = int(tr_blocks(test_lengths, boot_block_length)[-1]) + 1
            for s in members:
                n_blocks[s] = nb
            key = (tuple(test), int(boot_block_length))
            if nb < MIN_BLOCKS and key not in _WARNED_BLOCKS:
                _WARNED_BLOCKS.add(key)
                log.warning(
                    "test stories %s (%d TRs) make only %d bootstrap blocks of %d TRs: ROI intervals will be wide "
                    "(t intervals with %d degrees of freedom) and percentile intervals too narrow; more test TRs give "
                    "tighter, better calibrated intervals", list(test), sum(test_lengths), nb, boot_block_length, nb - 1)
        for s in members:
            c = dataset_ceiling(dataset, s, test, ceiling)
            if c is not None:
                ceil[s_index[s], : c.size] = c
                have_ceiling = True
        for li, layer in enumerate(layer_list):
            X = design(features, train_st, layer, delays=delays)
            Xt = design(features, test_st, layer, delays=delays)
            results = fit_ridge_cv(
                X, Ys, lengths, alphas=alphas, n_folds=n_folds, X_test=Xt, Y_test=Yts, method=method,
                backend=backend, score_func=score_func, n_targets_batch=n_targets_batch, progress=progress,
            )
            for s, res, yt in zip(members, results, Yts):
                si, t = s_index[s], n_targets[s]
                score[li, si, :t] = res.score
                r2[li, si, :t] = res.r2
                alpha[li, si, :t] = res.best_alphas
                cv_score[li, si, :t] = res.cv_r
                if roi_spec is not None:
                    labels, codes, names = roi_spec[s]
                    boot = roi_bootstrap(yt, res.predictions, test_lengths, labels, codes, n_boot=n_boot,
                                         block_length=boot_block_length, seed=random_state)
                    cols = [roi_names.index(n) for n in names]
                    roi_boot[li, si, cols] = boot.T
                    roi_score[li, si, cols] = roi_mean(res.score, labels, codes)
                    if max(test_lengths) >= 8:  # shorter stories have no test of their correlation
                        terms = roi_null_terms(yt, res.predictions, test_lengths, labels, codes).T
                        roi_null[li, si, cols] = 0.0
                        roi_null[li, si, cols, : terms.shape[1]] = terms
                if stats:
                    pv = significance(yt, res.predictions, test_lengths, test=stats_test, n_permutations=n_permutations,
                                      block_length=block_length, random_state=random_state)
                    pvalue[li, si, :t] = pv
                    signif[li, si, :t] = fdr(pv, q=fdr_q)[0]
            log.info("layer %d: median score %.4f", layer, float(np.nanmedian(score[li])))

    dims = ("layer", "subject", "target")
    data = {
        "score": (dims, score, {"long_name": "held-out Pearson r"}),
        "r2": (dims, r2, {"long_name": "held-out R^2"}),
        "alpha": (dims, alpha, {"long_name": "ridge penalty chosen by story-wise CV"}),
        "cv_score": (dims, cv_score, {"long_name": "training-story CV Pearson r at the chosen alpha (mean over folds)"}),
    }
    if roi_spec is not None:
        data["roi_score"] = (("layer", "subject", "roi"), roi_score, {"long_name": "ROI-mean held-out r"})
        data["roi_boot"] = (("layer", "subject", "roi", "boot"), roi_boot, {
            "long_name": f"ROI-mean held-out r, block bootstrap replicates (blocks of {int(boot_block_length)} TRs "
                         f"within test stories, {int(n_boot)} replicates, seed {int(random_state)})"})
        data["roi_null"] = (("layer", "subject", "roi", "term"), roi_null, {
            "long_name": "DCT terms of the ROI-mean held-out r (their sum is the ROI mean less its fixed part); "
                         "the null flips their signs: " + ROI_METHOD})
    if stats:
        data["pvalue"] = (dims, pvalue, {"long_name": significance_method(stats_test, n_permutations, block_length)})
        data["significant"] = (dims, signif, {"long_name": f"BH-FDR q < {fdr_q} over targets"})
    if have_ceiling:
        data["ceiling"] = (("subject", "target"), ceil, {"long_name": f"noise ceiling ({ceiling})"})
        with np.errstate(invalid="ignore", divide="ignore"):
            data["score_normalised"] = (dims, score / ceil[None], {"long_name": "score / ceiling (not clipped)"})
    coords: dict[str, Any] = {
        "layer": np.asarray(layer_list, dtype=np.int64),
        "depth": ("layer", np.asarray([features.depth(x) for x in layer_list], dtype=np.float64)),
        "subject": np.asarray(subjects, dtype=str),
        "target": np.arange(T, dtype=np.int64),
    }
    if roi_spec is not None:
        coords["roi"] = np.asarray(roi_names, dtype=str)
        coords["boot"] = np.arange(int(n_boot), dtype=np.int64)
        coords["term"] = np.arange(roi_null.shape[-1], dtype=np.int64)
    space_names = {sp.name for sp in spaces.values()}
    first = spaces[subjects[0]]
    if all(sp == first for sp in spaces.values()):
        coords["hemi"] = ("target", first.hemi())
    attrs = {
        "model": features.model,
        "revision": features.revision or "",
        "space": space_names.pop() if len(space_names) == 1 else "mixed",
        "dataset": dataset.name,
        "n_folds": int(n_folds),
        "alphas": [float(a) for a in np.asarray(alphas, dtype=np.float64).ravel()],
        "delays": [int(d) for d in delays],
        "score_func": score_func,
        "cv_score": "Pearson r on the validation folds of the training stories, at the chosen alpha, mean over folds",
        "brainalign_version": __version__,
    }
    if roi_spec is not None:
        attrs.update(boot_block_length=int(boot_block_length), n_boot=int(n_boot), boot_seed=int(random_state),
                     boot_blocks=min(n_blocks.values()))
    for key in ("step", "tokens"):
        if features.training.get(key) is not None:
            attrs[key] = features.training[key]
    return xr.Dataset(data, coords=coords, attrs=attrs)
