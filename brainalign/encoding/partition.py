"""Variance partitioning: what the LM features explain beyond word and phoneme rate.

The default low-level baseline is word rate + phoneme rate. Phoneme rate needs phoneme
timings (a phone tier in the transcript); when any story used lacks them (simulated
data, CSV transcripts, TextGrids without a phone tier) the default falls back to word
rate alone, with a logged warning and a note in the result (``attrs["baselines_note"]``).

Three models per target, all scored as held-out R^2 on the test stories: the LM
features alone (brainalign's ridge), the low-level baseline alone (the same ridge), and
both together with one penalty per feature space (himalaya's banded ridge,
``BandedRidgeCV`` when samples outnumber features, else ``MultipleKernelRidgeCV`` on
precomputed linear kernels; random search over the feature-space weights). With ``R2_ab`` the joint score::

    unique_lm       = R2_ab - R2_baseline
    unique_baseline = R2_ab - R2_lm
    shared          = R2_lm + R2_baseline - R2_ab

Nothing is clipped: small negative values are estimation noise and are reported as such.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ValidationError
from ..timing import Delayer, phoneme_rate, word_rate, zscore_per_story
from ._backend import resolve_backend
from .ridge import DEFAULT_ALPHAS, fit_ridge_cv, r2_score, story_folds

log = logging.getLogger(__name__)

__all__ = ["partition_variance", "partition_variance_arrays", "baseline_design", "default_baselines",
           "variance_partition"]

DEFAULT_BASELINES: tuple[str, ...] = ("word_rate", "phoneme_rate")


def partition_variance_arrays(
    X_lm: np.ndarray,
    X_base: np.ndarray,
    Y: np.ndarray,
    story_lengths: Sequence[int],
    X_lm_test: np.ndarray,
    X_base_test: np.ndarray,
    Y_test: np.ndarray,
    *,
    alphas: Any = DEFAULT_ALPHAS,
    n_folds: int = 5,
    n_iter: int = 20,
    backend: Any = "auto",
    random_state: int = 0,
) -> dict[str, np.ndarray]:
    """Unique and shared held-out R^2 of two feature spaces (arrays in, dict of arrays out).

    Returns keys ``r2_joint``, ``r2_lm``, ``r2_baseline``, ``unique_lm``,
    ``unique_baseline``, ``shared`` (each (n_targets,)), and ``deltas`` (2, n_targets):
    the log feature-space weights the banded ridge chose. (Formerly ``variance_partition``.)
    """
    from himalaya.kernel_ridge import MultipleKernelRidgeCV
    from himalaya.ridge import BandedRidgeCV

    arrs = [np.asarray(a, dtype=np.float32) for a in (X_lm, X_base, Y, X_lm_test, X_base_test, Y_test)]
    X_lm, X_base, Y, X_lm_test, X_base_test, Y_test = arrs
    if not (X_lm.shape[0] == X_base.shape[0] == Y.shape[0]):
        raise ValidationError(f"training rows differ: X_lm {X_lm.shape}, X_base {X_base.shape}, Y {Y.shape}")
    if not (X_lm_test.shape[0] == X_base_test.shape[0] == Y_test.shape[0]):
        raise ValidationError("test rows differ between X_lm_test, X_base_test and Y_test")
    b = resolve_backend(backend)
    kw = dict(alphas=alphas, n_folds=n_folds, backend=b, progress=False)
    lm = fit_ridge_cv(X_lm, Y, story_lengths, X_test=X_lm_test, Y_test=Y_test, **kw)
    base = fit_ridge_cv(X_base, Y, story_lengths, X_test=X_base_test, Y_test=Y_test, **kw)
    folds = story_folds(story_lengths, n_folds)
    params = dict(n_iter=n_iter, alphas=np.asarray(alphas, dtype=np.float32), progress_bar=False)
    n, p = X_lm.shape[0], X_lm.shape[1] + X_base.shape[1]
    from threadpoolctl import threadpool_limits

    # small problems: BLAS threads only add synchronisation (measured 10x slower on a busy machine)
    with b.as_global(), threadpool_limits(1 if n * p < 5_000_000 else None):
        if n >= p:  # banded ridge in primal form: one SVD per fold and feature-space weighting
            groups = np.r_[np.zeros(X_lm.shape[1], int), np.ones(X_base.shape[1], int)]
            model = BandedRidgeCV(groups=groups, solver_params=params, cv=folds, random_state=random_state)
            model.fit(np.hstack([X_lm, X_base]), Y)
            pred = b.to_numpy(model.predict(np.hstack([X_lm_test, X_base_test])))
        else:  # multiple-kernel ridge on precomputed linear kernels
            Ks = np.stack([X_lm @ X_lm.T, X_base @ X_base.T]).astype(np.float32)
            Ks_test = np.stack([X_lm_test @ X_lm.T, X_base_test @ X_base.T]).astype(np.float32)
            model = MultipleKernelRidgeCV(kernels="precomputed", solver="random_search", cv=folds,
                                          random_state=random_state, solver_params=params)
            model.fit(Ks, Y)
            pred = b.to_numpy(model.predict(Ks_test))
        deltas = b.to_numpy(model.deltas_)
    r2_joint = r2_score(Y_test, pred)
    r2_lm = lm.r2.astype(np.float64)
    r2_base = base.r2.astype(np.float64)
    return dict(
        r2_joint=r2_joint, r2_lm=r2_lm, r2_baseline=r2_base,
        unique_lm=r2_joint - r2_base, unique_baseline=r2_joint - r2_lm,
        shared=r2_lm + r2_base - r2_joint, deltas=deltas,
    )


def _has_phones(story) -> bool:
    return story.phones is not None and len(story.phones[0]) > 0


def default_baselines(stories) -> tuple[tuple[str, ...], str]:
    """The default baselines for ``stories`` and a note saying which were used.

    Word rate + phoneme rate when every story has a phone tier; otherwise word rate
    alone (the same for all stories, so train and test designs match), and the note
    names the stories without phoneme timings.
    """
    stories = list(stories)
    missing = [s.name for s in stories if not _has_phones(s)]
    if not missing:
        return DEFAULT_BASELINES, "word rate + phoneme rate"
    shown = ", ".join(repr(m) for m in missing[:3]) + (", ..." if len(missing) > 3 else "")
    return ("word_rate",), (f"word rate (no phone tier: {len(missing)} of {len(stories)} stories have no "
                            f"phoneme timings ({shown}), so phoneme rate is left out)")


def _resolve_baselines(stories, baselines) -> tuple[tuple[str, ...], str]:
    if baselines is not None:
        names = (baselines,) if isinstance(baselines, str) else tuple(baselines)
        return names, " + ".join(n.replace("_", " ") for n in names)
    names, note = default_baselines(stories)
    if names != DEFAULT_BASELINES:
        log.warning("variance partitioning: low-level baseline is %s", note)
    return names, note


def baseline_design(stories, baselines: Sequence[str] | None = None,
                    delays: Sequence[int] = (1, 2, 3, 4)) -> np.ndarray:
    """Low-level baseline design for ``stories``: rates on the TR grid, z-scored per
    story, delayed. ``phoneme_rate`` needs a phone tier in every story; the default
    (``None``) is :func:`default_baselines`: word + phoneme rate, or word rate alone
    (with a logged warning) when a story has no phone tier."""
    stories = list(stories)
    baselines, _ = _resolve_baselines(stories, baselines)
    funcs = {"word_rate": word_rate, "phoneme_rate": phoneme_rate}
    unknown = [x for x in baselines if x not in funcs]
    if unknown or not baselines:
        raise ValidationError(f"baselines must be a non-empty subset of {list(funcs)}, got {list(baselines)}")
    cols = [np.concatenate([funcs[name](s) for s in stories]) for name in baselines]
    lengths = [s.n_trs for s in stories]
    X = zscore_per_story(np.stack(cols, axis=1), lengths)
    return Delayer(delays).fit_transform(X, story_lengths=lengths).astype(np.float32)


def partition_variance(features, dataset, layer: int, subjects: Sequence[str] | None = None,
                       baselines: Sequence[str] | None = None,
                       delays: Sequence[int] = (1, 2, 3, 4), **kwargs):
    """:func:`partition_variance_arrays` of one layer against low-level baselines, per subject.

    ``baselines=None`` (default) uses word rate + phoneme rate when every story used
    has a phone tier, else word rate alone for all of them (logged as a warning); an
    explicit list (``"word_rate"``, ``"phoneme_rate"``) is used as given, and
    ``phoneme_rate`` then fails on a story without phoneme timings.

    Returns an ``xarray.Dataset`` (subject x target) with the variables of
    :func:`partition_variance_arrays` (without ``deltas``); ``attrs["baselines"]`` lists the
    baselines used and ``attrs["baselines_note"]`` says so in words (and why, after a
    fallback: e.g. ``"word rate (no phone tier: ...)"``).
    """
    import xarray as xr

    from ..features import design
    from .api import load_responses, subject_groups

    subjects = list(dataset.subjects if subjects is None else subjects)
    T = max(dataset.space(s).n_targets for s in subjects)
    names = ("r2_joint", "r2_lm", "r2_baseline", "unique_lm", "unique_baseline", "shared")
    out = {k: np.full((len(subjects), T), np.nan, np.float32) for k in names}
    groups = subject_groups(dataset, subjects)
    used = list(dict.fromkeys(st for train, test, _ in groups for st in (*train, *test)))
    # resolved once over every story used, so all groups share one baseline
    baselines, note = _resolve_baselines([dataset.stories[st] for st in used], baselines)
    kwargs["backend"] = resolve_backend(kwargs.get("backend", "auto"))  # once for every subject
    for train, test, members in groups:
        tr = [dataset.stories[s] for s in train]
        te = [dataset.stories[s] for s in test]
        X, Xt = design(features, tr, layer, delays=delays), design(features, te, layer, delays=delays)
        B, Bt = baseline_design(tr, baselines, delays), baseline_design(te, baselines, delays)
        for s in members:
            Y = load_responses(dataset, s, train)
            Yt = load_responses(dataset, s, test)
            res = partition_variance_arrays(X, B, Y, [x.n_trs for x in tr], Xt, Bt, Yt, **kwargs)
            for k in names:
                out[k][subjects.index(s), : Y.shape[1]] = res[k]
    return xr.Dataset(
        {k: (("subject", "target"), v) for k, v in out.items()},
        coords={"subject": np.asarray(subjects, dtype=str), "target": np.arange(T)},
        attrs={"model": features.model, "revision": features.revision or "", "layer": int(layer),
               "baselines": list(baselines), "baselines_note": note, "dataset": dataset.name},
    )


def variance_partition(*args, **kwargs) -> dict[str, np.ndarray]:
    """Deprecated name of :func:`partition_variance_arrays` (same arguments, same result)."""
    warnings.warn("variance_partition is deprecated: use partition_variance_arrays (arrays) or partition_variance "
                  "(features and a dataset)", DeprecationWarning, stacklevel=2)
    return partition_variance_arrays(*args, **kwargs)
