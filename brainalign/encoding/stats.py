"""Statistics of encoding scores: noise ceiling, significance tests, FDR, bootstrap.

* :func:`noise_ceiling` -- from single presentations of a repeated test story:
  Schoppe et al. (2016) ``CCmax`` (the highest correlation any model can reach with
  the mean response), or the explainable variance. Reported *beside* raw scores.
* :func:`significance` -- p-values of held-out r: the default spectral sign
  randomisation test (:mod:`brainalign.encoding.significance`), or
* :func:`permutation_test` -- shuffles blocks of TRs of the held-out responses against
  the stored predictions, vectorised over targets through block cross-products.
  Anti-conservative on strongly autocorrelated BOLD (block edges cut the
  autocorrelation), and its p-values stop at 1 / (n_permutations + 1); kept for
  comparison and for data with short autocorrelation.
* :func:`fdr` -- Benjamini-Hochberg (``scipy.stats.false_discovery_control``).
* :func:`bootstrap_roi_ci` -- confidence intervals of ROI means.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..errors import ValidationError
from ._compat import renamed_keywords

log = logging.getLogger(__name__)

__all__ = ["noise_ceiling", "significance", "significance_method", "permutation_test", "fdr", "bootstrap_roi_ci"]

#: significance tests of :func:`significance`
TESTS = ("sign", "block")
#: fewest blocks a block permutation test accepts (10! orders; with 4 blocks there are 24)
MIN_PERMUTATION_BLOCKS = 10


_ZSCORE_TOL = 1e-3  # per-target mean / sd of a repeat this close to 0 / 1 counts as z-scored


def _repeats_zscored(r: np.ndarray, tol: float = _ZSCORE_TOL) -> bool:
    """True when every repeat of every non-constant target has mean ~0 and sd ~1 over time."""
    sd = r.std(1)
    live = sd > 0  # constant targets (e.g. medial wall zeros) have no ceiling either way
    mean = r.mean(1)
    return bool(np.all(np.abs(mean[live]) <= tol) and np.all(np.abs(sd[live] - 1.0) <= tol))


def noise_ceiling(repeats: np.ndarray, method: str = "ccmax", zscore: bool | str = "auto") -> np.ndarray:
    """Noise ceiling per target from repeated presentations (n_repeats, n_trs, n_targets).

    ``method="ccmax"`` (Schoppe et al. 2016): with ``N`` repeats, mean response ``ybar``,
    signal power ``SP = (N Var(ybar) - mean_n Var(r_n)) / (N - 1)``,
    ``CCmax = sqrt(SP / Var(ybar))``: the largest Pearson r a model can reach against the
    mean response. ``method="ev"``: explainable variance ``SP / mean_n Var(r_n)`` of a
    single presentation (Hsu et al. 2004 / Huth et al. 2016 convention).

    Parameters
    ----------
    repeats : array (n_repeats >= 2, n_trs, n_targets)
        Single presentations of the same stimulus (several test stories may be
        concatenated in time).
    method : {"ccmax", "ev"}
    zscore : {"auto", True, False}
        Z-score each repeat of each target over time before estimating. The signal-power
        estimator (Sahani & Linden 2003; Schoppe et al. 2016) assumes every repeat
        carries the signal and the noise with the same gain; repeats that differ in
        scale (sessions, runs, scanner drift in raw or percent-signal-change units)
        break that assumption and bias the ceiling down: with gains ``g_n`` the
        expected EV is multiplied by ``(N mean(g)^2 - mean(g^2)) / ((N - 1) mean(g^2))``
        (gains drawn from 0.5-2 read a true EV of 0.30 as about 0.26). Z-scoring each
        repeat removes the gains; the ceiling then refers to the mean of z-scored
        repeats, which is how brainalign's datasets average test responses.
        ``"auto"`` (default) z-scores unless the data already are: every repeat's
        per-target mean and sd within 1e-3 of 0 and 1 (constant targets are ignored in
        this check). On already z-scored data it is a no-op; repeats that differ only by
        offsets or by one common scale give today's raw estimate to float precision (the
        raw estimator is invariant to both); with equal true gains on raw data the two
        differ only through the sampling noise of each repeat's sd (measured mean change
        2e-4, at most 4e-3 per target, 4 repeats x 300 TRs). ``False`` gives the raw
        estimator.

    Targets with no signal power (``SP <= 0``) get NaN: no ceiling is estimable; nothing
    is clipped.
    """
    if method not in ("ccmax", "ev"):
        raise ValidationError(f"method must be 'ccmax' or 'ev', got {method!r}")
    if not (isinstance(zscore, (bool, np.bool_)) or (isinstance(zscore, str) and zscore == "auto")):
        raise ValidationError(f"zscore must be 'auto', True or False, got {zscore!r}")
    r = np.asarray(repeats, dtype=np.float64)
    if r.ndim != 3 or r.shape[0] < 2:
        raise ValidationError(f"repeats must be (n_repeats >= 2, n_trs, n_targets), got shape {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ValidationError("repeats contain NaN or inf")
    if zscore == "auto":
        zscore = not _repeats_zscored(r)
        if zscore:
            log.debug("noise_ceiling: repeats are not z-scored per target; z-scoring each repeat")
    if zscore:
        sd = r.std(1, keepdims=True)
        r = (r - r.mean(1, keepdims=True)) / np.where(sd > 0, sd, 1.0)  # constant stays 0
    n = r.shape[0]
    var_mean = r.mean(0).var(0)
    mean_var = r.var(1).mean(0)
    sp = (n * var_mean - mean_var) / (n - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.sqrt(sp / var_mean) if method == "ccmax" else sp / mean_var
    return np.where((sp > 0) & (var_mean > 0), out, np.nan).astype(np.float32)


def _zscore_cols(a: np.ndarray) -> np.ndarray:
    a = a - a.mean(0)
    sd = a.std(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sd > 0, a / sd, 0.0)


@renamed_keywords(block_length="block_size")
def permutation_test(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    n_permutations: int = 1000,
    block_size: int = 10,
    random_state: Any = 0,
    return_null: bool = False,
):
    """One-sided block permutation test of held-out Pearson r, per target.

    The held-out responses are cut into consecutive blocks of ``block_size`` TRs
    (about the width of the haemodynamic response and of the features' autocorrelation)
    and the blocks are shuffled against the fixed predictions; the same block orders are
    used for every target. ``p = (1 + #{null r >= observed r}) / (1 + n_permutations)``.

    The statistic is Pearson r on the first ``n_blocks * block_size`` rows (a last
    partial block, fewer than ``block_size`` rows, is left out of both the observed
    and the null statistics). Implementation: with block cross-products
    ``C[b, b', t] = sum_j zp[b, j, t] zy[b', j, t]``, a permuted r is
    ``sum_b C[b, pi(b), t] / n`` -- one small gather-and-sum per permutation.
    (``block_size`` was called ``block_length``; the old keyword still works, with a
    DeprecationWarning.)

    ``block_size`` (config ``stats.block_size``) is the *permutation* test's block: the
    whole held-out series is cut into blocks that are shuffled, without replacement, to
    make a null. It is not the ROI bootstrap's ``block_length``
    (:func:`brainalign.encoding.bootstrap.tr_blocks`, ``boot_block_length`` of
    :func:`brainalign.encoding.fit`, ``BOOTSTRAP["block_length"]`` of a sweep): those
    blocks lie within stories and are resampled with replacement for confidence
    intervals. The two are set apart on purpose (different tests, different defaults);
    do not merge them or rename one into the other.

    Returns
    -------
    pvalue : array (n_targets,); NaN where a column is constant.
    null : array (n_permutations, n_targets), only with ``return_null=True``.
    """
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if y.ndim == 1:
        y, p = y[:, None], p[:, None]
    if y.shape != p.shape or y.ndim != 2:
        raise ValidationError(f"y_true {y.shape} and y_pred {p.shape} must be the same 2-D shape")
    block_length = int(block_size)
    if block_length < 1:
        raise ValidationError(f"block_size must be >= 1, got {block_size}")
    if int(n_permutations) < 1:
        raise ValidationError(f"n_permutations must be >= 1, got {n_permutations}")
    nb = y.shape[0] // block_length
    if nb < MIN_PERMUTATION_BLOCKS:
        raise ValidationError(
            f"{y.shape[0]} test TRs make only {nb} blocks of {block_length}: a permutation test needs at least "
            f"{MIN_PERMUTATION_BLOCKS} (use shorter blocks, more test TRs, or the default sign test)"
        )
    n = nb * block_length
    rng = np.random.default_rng(random_state)
    perms = np.stack([rng.permutation(nb) for _ in range(n_permutations)])  # (P, nb)
    t = y.shape[1]
    pval = np.full(t, np.nan)
    null_all = np.empty((n_permutations, t), np.float32) if return_null else None
    rows = np.arange(nb)[None, :]
    chunk = max(1, (1 << 24) // (n_permutations * nb))  # ~128 MB of float64 gathers
    for s in range(0, t, chunk):
        sl = slice(s, min(s + chunk, t))
        zy = _zscore_cols(y[:n, sl]).reshape(nb, block_length, -1)
        zp = _zscore_cols(p[:n, sl]).reshape(nb, block_length, -1)
        C = np.einsum("ajt,bjt->abt", zp, zy, optimize=True)  # (nb, nb, c)
        obs = np.einsum("aat->t", C) / n
        null = C[rows, perms].sum(1) / n  # (P, c)
        valid = (y[:n, sl].std(0) > 0) & (p[:n, sl].std(0) > 0)
        pv = (1.0 + (null >= obs[None] - 1e-12).sum(0)) / (1.0 + n_permutations)
        pval[sl] = np.where(valid, pv, np.nan)
        if return_null:
            null_all[:, sl] = null
    return (pval, null_all) if return_null else pval


@renamed_keywords(block_length="block_size")
def significance(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    lengths: "list[int] | None" = None,
    test: str = "sign",
    n_permutations: int = 1000,
    block_size: int = 20,
    random_state: Any = 0,
) -> np.ndarray:
    """One-sided p-values of the held-out Pearson r of each target.

    ``test="sign"`` (default): :func:`~brainalign.encoding.significance.sign_randomisation_test`
    over the held-out stories of ``lengths`` TRs; ``test="block"``: :func:`permutation_test`
    with blocks of ``block_size`` TRs (the permutation blocks, not the bootstrap's
    ``block_length`` of :mod:`brainalign.encoding.bootstrap`; see :func:`permutation_test`).
    """
    if test == "sign":
        from .significance import sign_randomisation_test

        return sign_randomisation_test(y_true, y_pred, lengths)
    if test == "block":
        return permutation_test(y_true, y_pred, n_permutations=n_permutations, block_size=block_size,
                                random_state=random_state)
    raise ValidationError(f"test must be one of {', '.join(TESTS)}, got {test!r}")


@renamed_keywords(block_length="block_size")
def significance_method(test: str, n_permutations: int = 1000, block_size: int = 20) -> str:
    """What :func:`significance` did, in words (for results' attributes)."""
    if test == "sign":
        from .significance import METHOD

        return METHOD
    return (f"block permutation, {n_permutations} orders of blocks of {block_size} TRs; smallest reachable "
            f"p = {1 / (n_permutations + 1):.2g}")


def fdr(pvalues: np.ndarray, q: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Benjamini-Hochberg FDR over all finite p-values.

    Returns ``(significant, qvalues)``; NaN p-values are not tests (never significant,
    q = NaN) and do not count in the correction.
    """
    from scipy.stats import false_discovery_control

    p = np.asarray(pvalues, dtype=np.float64)
    if not 0 < q < 1:
        raise ValidationError(f"q must be in (0, 1), got {q}")
    ok = np.isfinite(p)
    if np.any((p[ok] < 0) | (p[ok] > 1)):
        raise ValidationError("p-values must lie in [0, 1]")
    qv = np.full(p.shape, np.nan)
    if ok.any():
        qv[ok] = false_discovery_control(p[ok], method="bh")
    return np.where(ok, qv <= q, False), qv


def bootstrap_roi_ci(
    scores: np.ndarray,
    labels: np.ndarray,
    n_boot: int = 1000,
    ci: float = 0.95,
    random_state: Any = 0,
    names: dict | None = None,
) -> dict:
    """Mean score per ROI with a percentile bootstrap confidence interval.

    Parameters
    ----------
    scores : array (n_targets,)
        One score per target (NaN targets are ignored).
    labels : array (n_targets,) of int, or boolean mask
        ROI label per target (0 = unassigned, left out), or a mask for one ROI.
    n_boot, ci, random_state
        Resamples, interval level, seed.
    names : dict int -> str, optional
        ROI names for the output keys.

    Returns
    -------
    dict ROI -> {"mean", "low", "high", "n"}. Targets are resampled with replacement
    within the ROI; neighbouring targets are correlated, so this interval reflects the
    spread of scores over the ROI, not the uncertainty of a time series.
    """
    s = np.asarray(scores, dtype=np.float64)
    lab = np.asarray(labels)
    if lab.shape != s.shape:
        raise ValidationError(f"labels {lab.shape} and scores {s.shape} must have the same shape")
    if lab.dtype == bool:
        lab = lab.astype(np.int64)
        names = names or {1: "roi"}
    if not 0 < ci < 1:
        raise ValidationError(f"ci must be in (0, 1), got {ci}")
    rng = np.random.default_rng(random_state)
    out = {}
    for k in np.unique(lab):
        if k == 0:
            continue
        v = s[(lab == k) & np.isfinite(s)]
        key = (names or {}).get(int(k), int(k))
        if v.size == 0:
            out[key] = dict(mean=np.nan, low=np.nan, high=np.nan, n=0)
            continue
        boots = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(1)
        lo, hi = np.quantile(boots, [(1 - ci) / 2, 1 - (1 - ci) / 2])
        out[key] = dict(mean=float(v.mean()), low=float(lo), high=float(hi), n=int(v.size))
    return out
