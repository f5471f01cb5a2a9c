"""``brainalign.encoding.fit``: every layer x subject of one checkpoint, as an xarray."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ValidationError
from .ridge import DEFAULT_ALPHAS, fit_ridge_cv
from .stats import fdr, noise_ceiling, permutation_test

log = logging.getLogger(__name__)

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
    n_permutations: int = 1000,
    block_length: int = 10,
    fdr_q: float = 0.05,
    ceiling: str = "ccmax",
    n_targets_batch: int | None = None,
    random_state: int = 0,
    progress: bool = True,
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
        Also compute block-permutation p-values (``pvalue``) and BH-FDR significance
        (``significant``) over the targets of each layer and subject.
    delays : sequence of int
        FIR delays in TRs.
    zscore_responses : bool
        Z-score each story's responses (already so in ds003020; harmless then).
    ceiling : {"ccmax", "ev"}
        Noise ceiling from test-story repeats, when the dataset has them.

    Returns
    -------
    xarray.Dataset
        dims ``(layer, subject, target)``; ``score`` (held-out Pearson r), ``r2``,
        ``alpha``; with ``stats`` ``pvalue`` and ``significant``; with repeats
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
                if stats:
                    pv = permutation_test(yt, res.predictions, n_permutations=n_permutations,
                                          block_length=block_length, random_state=random_state)
                    pvalue[li, si, :t] = pv
                    signif[li, si, :t] = fdr(pv, q=fdr_q)[0]
            log.info("layer %d: median score %.4f", layer, float(np.nanmedian(score[li])))

    dims = ("layer", "subject", "target")
    data = {
        "score": (dims, score, {"long_name": "held-out Pearson r"}),
        "r2": (dims, r2, {"long_name": "held-out R^2"}),
        "alpha": (dims, alpha, {"long_name": "ridge penalty chosen by story-wise CV"}),
    }
    if stats:
        data["pvalue"] = (dims, pvalue, {"long_name": f"block permutation p ({n_permutations} permutations, "
                                                      f"blocks of {block_length} TRs)"})
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
        "brainalign_version": __version__,
    }
    for key in ("step", "tokens"):
        if features.training.get(key) is not None:
            attrs[key] = features.training[key]
    return xr.Dataset(data, coords=coords, attrs=attrs)
