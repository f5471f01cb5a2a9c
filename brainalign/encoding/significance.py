"""Significance of held-out scores that keeps its level on autocorrelated BOLD.

The default test is a **spectral sign-randomisation test** of the held-out Pearson r,
computed analytically rather than by drawing surrogates.

Why not shuffle blocks of TRs? Shuffling blocks cuts the autocorrelation of BOLD (and
of the predictions) at every block edge, so the null distribution is too narrow and the
test is anti-conservative: 7-12% of null targets at p < 0.05 for lag-1 autocorrelations
of 0.9-0.97, as story fMRI has.

The idea is that of phase randomisation (Theiler et al. 1992; Prichard & Theiler 1994):
a stationary series and its surrogates share their power spectrum, so surrogates are as
autocorrelated as the data, and independent of the predictions. Within each held-out
story of ``m`` TRs, with ``Y_k`` and ``P_k`` the orthonormal type-II discrete cosine
transforms (DCT) of the z-scored responses and predictions,

    sum_t y_t p_t = Y_0 P_0 + sum_{k>=1} Y_k P_k

(Parseval). The DCT rather than the Fourier transform: the DCT-II nearly diagonalises the
covariance of autocorrelated stationary series (it is the limit of the Karhunen-Loeve
basis of an AR(1) process as its coefficient goes to 1) and has no wrap-around leakage,
so its coefficients are close to independent; under the null (responses independent of
the predictions) the signs of the products ``Y_k P_k`` are then independent fair coins.
Measured on AR(1) noise: 4.9-5.6% of null targets at p < 0.05 and 1.0-1.2% at p < 0.01 for
lag-1 autocorrelations 0.9-0.97 of both series (``benchmarks/bench_stats.py``), where the
Fourier version gives up to 6.0% and 1.4%.

Under the null, Pearson r over all held-out TRs is a fixed offset (the stories' mean
terms, zero when stories are z-scored) plus ``S = sum_k c_k e_k`` with ``c_k = |Y_k P_k| / n``
and independent signs ``e_k``. Its tail is computed by the saddlepoint approximation of
Lugannani & Rice (1980) with the exact cumulant generating function
``K(s) = sum_k log cosh(s c_k)``, accurate far into the tail (checked against Monte Carlo
in the tests), so the p-values have the resolution a whole cortex needs for FDR: there is
no 1 / (n_permutations + 1) floor. Stories are randomised independently: TRs of different
stories are never mixed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import fft, stats

from ..errors import ValidationError

__all__ = ["sign_randomisation_test", "sign_pvalues", "roi_null_terms", "null_weights", "METHOD", "ROI_METHOD"]

#: how the p-values of :func:`sign_randomisation_test` were obtained (stored in results)
METHOD = ("spectral sign randomisation within test stories (DCT), saddlepoint tail; analytic, "
          "no smallest reachable p-value")
#: how ROI p-values from :func:`roi_null_terms` are obtained
ROI_METHOD = ("spectral sign randomisation of the ROI-mean held-out r (the same random signs for every target of "
              "the ROI, so the noise's spatial correlation is kept; subjects independent), saddlepoint tail")


def _check(y_true: np.ndarray, y_pred: np.ndarray, lengths: Sequence[int] | None) -> list[int]:
    if y_true.shape != y_pred.shape or y_true.ndim != 2:
        raise ValidationError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be the same 2-D shape (TRs x targets)")
    n = y_true.shape[0]
    lengths = [n] if lengths is None else [int(m) for m in lengths]
    if sum(lengths) != n or min(lengths) < 1:
        raise ValidationError(f"lengths {lengths} must be positive and sum to the {n} held-out TRs")
    if max(lengths) < 8:
        raise ValidationError(f"held-out stories of {lengths} TRs are too short for a test of their correlation")
    return lengths


def _zscore(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = a - a.mean(0)
    sd = a.std(0)
    return a / np.where(sd > 0, sd, 1.0), sd > 0


def null_weights(y_true: np.ndarray, y_pred: np.ndarray, lengths: Sequence[int] | None = None):
    """The null of held-out Pearson r under sign randomisation, per target.

    Returns ``(r, offset, c, valid)``: the observed r over all held-out TRs; the part of r
    that randomisation keeps fixed (the stories' mean terms); the weights ``c``
    (coefficients x targets), so that under the null ``r - offset = sum_k c_k e_k`` with
    independent random signs, and observed ``r - offset = sum_k signed c_k``; and the
    targets where both series vary (elsewhere the p-value is NaN).
    """
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    lengths = _check(y, p, lengths)
    n = y.shape[0]
    zy, vy = _zscore(y)
    zp, vp = _zscore(p)
    offset = np.zeros(y.shape[1])
    parts = []
    start = 0
    for m in lengths:
        Y = fft.dct(zy[start:start + m], type=2, norm="ortho", axis=0)
        P = fft.dct(zp[start:start + m], type=2, norm="ortho", axis=0)
        start += m
        offset += Y[0] * P[0] / n
        parts.append(Y[1:] * P[1:] / n)
    c = np.concatenate(parts, axis=0)
    return offset + c.sum(0), offset, c, vy & vp


def _saddlepoint_sf(s_obs: np.ndarray, c: np.ndarray, n_iter: int = 50) -> np.ndarray:
    """P(S >= s_obs) for S = sum_k c_k e_k (independent fair signs), by Lugannani-Rice.

    ``s_obs > 0``; ``c >= 0`` of shape (terms, targets).
    """
    var = (c ** 2).sum(0)
    # K'(s) = sum c tanh(s c) is increasing and concave on s > 0, so Newton from s = 0
    # climbs to the root from below without overshooting (its first step is s_obs / var).
    # The iterations run in float32 (the tail formula below is stationary in s, so an s
    # good to 1e-6 changes p by far less); K and the tail are then evaluated in float64.
    c32, c2 = c.astype(np.float32), (c ** 2).astype(np.float32)
    target = s_obs.astype(np.float32)
    s = (s_obs / var).astype(np.float32)
    for _ in range(n_iter):
        th = np.tanh(s * c32)
        k1 = np.einsum("kt,kt->t", c32, th)
        k2 = np.einsum("kt,kt->t", c2, 1.0 - th * th)
        step = (target - k1) / np.maximum(k2, np.float32(1e-30))
        s += step
        if np.all(np.abs(step) <= 1e-6 * np.maximum(s, 1.0)):
            break
    s = s.astype(np.float64)
    sc = s * c
    K = (sc + np.log1p(np.exp(-2.0 * sc)) - np.log(2.0)).sum(0)  # sum log cosh(s c)
    k2 = (c ** 2 * (1.0 - np.tanh(sc) ** 2)).sum(0)
    w = np.sqrt(np.maximum(2.0 * (s * s_obs - K), 0.0))
    u = s * np.sqrt(k2)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        p = stats.norm.sf(w) + stats.norm.pdf(w) * (1.0 / u - 1.0 / w)
    # where w is tiny the formula is 0/0 and the Gaussian is right; beyond the largest
    # possible sum (all signs positive) nothing is as extreme
    p = np.where(np.isfinite(p) & (w > 1e-3), np.clip(p, 0.0, 1.0), stats.norm.sf(s_obs / np.sqrt(var)))
    return np.where(s_obs >= c.sum(0) * (1 - 1e-12), 0.5 ** c.shape[0], p)


def sign_pvalues(terms: np.ndarray, refine_below: float = 0.5) -> np.ndarray:
    """One-sided p-values of ``sum_k terms[k]`` under independent random signs of its terms.

    ``terms`` (n_terms, n): per column, the observed statistic is the sum of its terms and
    the null flips the sign of each term independently (Gaussian with the same variance
    where that gives p >= ``refine_below``, Lugannani-Rice saddlepoint below). NaN terms
    count as zero; a column with no nonzero term gets NaN. This is the tail of
    :func:`sign_randomisation_test`, and of any statistic made of the same DCT terms:
    ROI means (:func:`roi_null_terms`, whose signs are shared across an ROI's targets) and
    their means over subjects (the subjects' terms concatenated: their noise is independent).
    """
    a = np.nan_to_num(np.asarray(terms, dtype=np.float64), nan=0.0)
    if a.ndim == 1:
        a = a[:, None]
    s_obs = a.sum(0)
    c = np.abs(a)
    var = (c ** 2).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        pv = stats.norm.sf(s_obs / np.sqrt(var))
    tail = (var > 0) & (pv < refine_below) & (s_obs > 0)
    if tail.any():
        pv[tail] = _saddlepoint_sf(s_obs[tail], c[:, tail])
    return np.where(var > 0, pv, np.nan)


def roi_null_terms(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    lengths: Sequence[int] | None,
    labels: np.ndarray,
    codes: Sequence[int],
    chunk: int = 8192,
) -> np.ndarray:
    """The DCT terms of each ROI's mean held-out r, for a test of the ROI as a whole.

    The ROI mean of r over its targets (those where both series vary) is a fixed offset
    plus ``sum_k a_k`` with ``a_k`` the mean over the ROI's targets of their terms
    ``Y_k P_k / n`` (:func:`null_weights`). Randomising the sign of coefficient ``k`` of
    the responses of *every* target at once keeps the noise's correlation across
    targets (neighbouring voxels, a smooth cortex), which a test of independent targets
    would not; under the null the ROI statistic is then ``sum_k |a_k| e_k``:
    :func:`sign_pvalues` of these terms is its p-value.

    Returns an array (n_terms, len(codes)), NaN for an ROI without a valid target.
    """
    y = np.asarray(y_true)
    p = np.asarray(y_pred)
    lengths = _check(y, p, lengths)
    labels = np.asarray(labels)
    if labels.shape != (y.shape[1],):
        raise ValidationError(f"labels must give one ROI per target ({y.shape[1]}), got shape {labels.shape}")
    col = {int(c): j for j, c in enumerate(codes)}
    keep = np.flatnonzero(np.isin(labels, list(col)))
    n_terms = y.shape[0] - len(lengths)
    total = np.zeros((n_terms, len(codes)))
    count = np.zeros(len(codes))
    for s in range(0, keep.size, int(chunk)):
        cols = keep[s:s + int(chunk)]
        _, _, c, valid = null_weights(y[:, cols], p[:, cols], lengths)
        roi = np.array([col[int(v)] for v in labels[cols]], dtype=np.int64)
        onehot = np.zeros((cols.size, len(codes)))
        onehot[np.flatnonzero(valid), roi[valid]] = 1.0
        total += np.where(valid, c, 0.0) @ onehot
        count += onehot.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1.0), np.nan)


def sign_randomisation_test(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    lengths: Sequence[int] | None = None,
    refine_below: float = 0.5,
    chunk: int = 8192,
) -> np.ndarray:
    """One-sided p-values of held-out Pearson r, with a null as autocorrelated as the data.

    Parameters
    ----------
    y_true, y_pred : arrays (n_trs, n_targets)
        Held-out responses and the model's predictions of them, stories stacked in time.
    lengths : sequence of int, optional
        TRs of each held-out story, in order (default: one story). Each story is
        randomised on its own.
    refine_below : float
        The saddlepoint approximation gives the p-values whose Gaussian approximation
        (same variance) is below this (default: every r above its null mean); above it,
        the Gaussian.
    chunk : int
        Targets per batch (memory: about 24 x n_trs x chunk bytes).

    Returns
    -------
    array (n_targets,)
        p-values of "r is larger than under the null" (NaN where a series is constant);
        see the module docstring for the test and its measured level.
    """
    y = np.asarray(y_true)
    p = np.asarray(y_pred)
    lengths = _check(y, p, lengths)
    out = np.full(y.shape[1], np.nan)
    for s in range(0, y.shape[1], chunk):
        sl = slice(s, min(s + chunk, y.shape[1]))
        _, _, c, valid = null_weights(y[:, sl], p[:, sl], lengths)
        out[sl] = np.where(valid, sign_pvalues(np.where(valid, c, 0.0), refine_below), np.nan)
    return out
