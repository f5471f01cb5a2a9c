"""Ridge regression with per-target alphas chosen by story-wise cross-validation.

The core works on arrays: :func:`fit_ridge_cv` takes a training design ``X`` (TRs x
features), one or several response arrays ``Y`` that share it (subjects who heard the
same stories), the story lengths (for leave-stories-out folds) and optionally a test
design and test responses. It returns, per target, the chosen alpha, the mean CV score
at that alpha, held-out predictions and scores.

It computes exactly what :class:`himalaya.ridge.RidgeCV` (primal form) and
:class:`himalaya.kernel_ridge.KernelRidgeCV` (linear kernel) compute given the same
splits -- same fold score (``l2_neg_loss`` by default: minus the mean squared error on
the validation fold), averaged over folds in float64, same tie-break toward larger
alphas, no intercept -- but organises the work so that less of it is done:

* The decomposition of each fold is done **once** (float64 eigendecomposition of the
  training Gram ``X'X`` in primal form, of the kernel ``XX'`` in kernel form) and
  applied to every target of every subject that shares the design, in chunks of
  targets sized from free memory.
* Primal form: ``X_train' Y_train`` of every fold comes from per-fold blocks
  ``X_val' Y_val`` computed once (one pass over the data instead of ``n_folds - 1``).
* Validation errors of all alphas at once: the prediction for alpha ``a`` is
  ``A diag(1 / (a + lambda)) z`` (``A = X_val V``, ``z = V' X_train' y``), and its squared
  error needs only ``y'A``, ``z`` and the quadratic form ``z' D_a A'A D_a z``, which
  partial fractions over the eigenvalues turn into one float64 ``r x r`` GEMM per fold
  shared by every alpha (:func:`_plan_validation`). himalaya's plain route multiplies
  ``n_val x n_train`` resolution matrices by ``n_train x targets`` responses per alpha;
  for short alpha grids, where it is cheaper, brainalign makes one ``n_val x r``
  prediction GEMM per alpha instead.
* The refit on all training data uses each target's own alpha as a diagonal scaling
  in the eigenbasis, so all targets are refit with one GEMM.
* The validation Pearson r of every alpha (``cv_r`` at the chosen one) comes from the
  same pieces: ``y'p`` and ``|p|^2`` are the terms of the squared error above, and the
  prediction's sum ``1'A D_a z`` is one ``n_alphas x r`` product per fold (``1'A`` is
  computed once per fold), small next to the ``r x r`` one.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..errors import ValidationError
from ..timing import StoryKFold, story_bounds
from ._backend import Backend, resolve_backend
from ._compat import renamed_keywords

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_ALPHAS", "RidgeCVResult", "fit_ridge_cv", "fit_ridge_cv_many", "fit_flops", "pearson_r", "r2_score",
           "story_folds"]

#: Default alpha grid: 13 log-spaced values from 1 to 1e6.
DEFAULT_ALPHAS = np.logspace(0, 6, 13)


@dataclass
class RidgeCVResult:
    """What :func:`fit_ridge_cv` returns for one response array.

    Attributes
    ----------
    alphas : array (n_alphas,)
        The candidate grid (float32, as used).
    best_alpha_index : array (n_targets,) of int
        Index of each target's chosen alpha in ``alphas``.
    best_alphas : array (n_targets,)
        Each target's chosen alpha.
    cv_scores : array (n_targets,)
        Mean cross-validation score at the chosen alpha (before the tie-break slope).
    cv_r : array (n_targets,)
        Pearson r between the validation responses and the predictions at the chosen
        alpha, averaged over the folds where it is defined (NaN where no fold has a
        non-constant response and prediction). A training-story score on the scale of
        the held-out ``score``, for choices (e.g. a layer) that must not use the test
        stories.
    method : str
        ``"primal"`` or ``"kernel"``.
    predictions : array (n_test, n_targets) or None
        Held-out predictions of the refit model (when ``X_test`` was given).
    score, r2 : array (n_targets,) or None
        Held-out Pearson r and R^2 (when ``Y_test`` was given).
    coef : array (n_features, n_targets) or None
        Refit weights (when ``return_coef=True``).
    """

    alphas: np.ndarray
    best_alpha_index: np.ndarray
    best_alphas: np.ndarray
    cv_scores: np.ndarray
    method: str
    cv_r: np.ndarray | None = None
    predictions: np.ndarray | None = None
    score: np.ndarray | None = None
    r2: np.ndarray | None = None
    coef: np.ndarray | None = None
    info: dict = field(default_factory=dict)


# -- scores ----------------------------------------------------------------------
def pearson_r(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Per-column Pearson correlation (float64); NaN where either column is constant."""
    a = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if a.shape != p.shape:
        raise ValidationError(f"pearson_r: shapes differ, {a.shape} vs {p.shape}")
    a = a - a.mean(0)
    p = p - p.mean(0)
    den = np.sqrt((a * a).sum(0) * (p * p).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * p).sum(0) / den
    return np.where(den > 0, r, np.nan)


def r2_score(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Per-column R^2 = 1 - SSE / SST (himalaya's convention; 0 where ``y_true`` is constant)."""
    a = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    sse = ((a - p) ** 2).sum(0)
    sst = ((a - a.mean(0)) ** 2).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = 1.0 - sse / sst
    return np.where(sst > 0, r2, 0.0)


def story_folds(story_lengths: Sequence[int], n_folds: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    """Leave-stories-out folds (:class:`brainalign.timing.StoryKFold`) as a list."""
    return list(StoryKFold(n_folds).split(story_lengths))


def _check_folds(cv, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    folds = []
    for k, (tr, va) in enumerate(cv):
        tr = np.asarray(tr, dtype=np.int64)
        va = np.asarray(va, dtype=np.int64)
        if tr.size == 0 or va.size == 0:
            raise ValidationError(f"cv fold {k} has an empty training or validation set")
        if max(tr.max(), va.max()) >= n or min(tr.min(), va.min()) < 0:
            raise ValidationError(f"cv fold {k} has indices outside 0..{n - 1}")
        folds.append((tr, va))
    if len(folds) < 2:
        raise ValidationError(f"cv must have at least 2 folds, got {len(folds)}")
    return folds


def _is_partition(folds, n: int) -> bool:
    """True when the validation sets partition 0..n-1 and each train set is the rest."""
    seen = np.zeros(n, dtype=np.int64)
    for tr, va in folds:
        seen[va] += 1
        if tr.size + va.size != n:
            return False
    return bool(np.all(seen == 1))


def _check_2d(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 2:
        raise ValidationError(f"{name} must be 2-D, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValidationError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.size and not np.all(np.isfinite(arr)):
        r, c = np.nonzero(~np.isfinite(arr))
        raise ValidationError(f"{name} contains NaN or inf (first at row {r[0]}, column {c[0]})")
    return arr


# -- validation scores ----------------------------------------------------------------
#: Eigenvalues closer than this (relative to their size plus the smallest alpha) are
#: treated as one (see :func:`_plan_validation`).
_CLUSTER_TOL = 1e-7
#: What :func:`_plan_validation` adds to a fold.
_PF_KEYS = ("H", "G_diag", "G_runs", "D64")


def _eigen_runs(lam: np.ndarray, scale: float) -> list[tuple[int, int]]:
    """Runs ``[start, stop)`` of ascending eigenvalues within ``_CLUSTER_TOL * (|first| + scale)``
    of the run's first value (size-1 runs are left out)."""
    runs, start = [], 0
    for k in range(1, len(lam) + 1):
        if k == len(lam) or lam[k] - lam[start] > _CLUSTER_TOL * (abs(lam[start]) + scale):
            if k - start > 1:
                runs.append((start, k))
            start = k
    return runs


def _alpha_free_is_cheaper(n_val: int, r: int, n_alphas: int) -> bool:
    """Whether :func:`_plan_validation`'s route costs fewer FLOPs per target than one
    ``n_val x r`` prediction GEMM per alpha (float64 FLOPs counted twice: half the rate
    of float32 on CPUs)."""
    alpha_free = 2 * (2 * r * r) + 2 * n_val * r + 2 * (3 * 2 * n_alphas * r)
    return alpha_free < n_alphas * 2 * n_val * r


def fit_flops(n: int, p: int, n_targets: int, *, n_folds: int = 5, n_alphas: int = 13, n_test: int = 0,
              method: str = "auto") -> dict[str, float]:
    """FLOPs of one :func:`fit_ridge_cv` call, as its solver spends them.

    ``design``: the part shared by all targets (per-fold Gram or kernel matrices and
    their eigendecompositions, the validation rows in the eigenbasis, the held-out
    design); ``targets``: the part that grows with ``n_targets`` (projections,
    validation scores by the cheaper of the two routes :func:`_alpha_free_is_cheaper`
    chooses between, the refit and the held-out predictions). Float64 FLOPs count
    twice (half the float32 rate on CPUs), as in that rule. ``method="auto"`` picks
    the form the solver would (primal when ``n >= p``).
    """
    if method == "auto":
        method = "primal" if n >= p else "kernel"
    k, r = int(n_folds), (p if method == "primal" else n)
    n_val = n / k
    r_fold = p if method == "primal" else n - n_val
    eigh = (k + 1) * 9.0 * r ** 3 * 2  # symmetric eigendecomposition ~ 9 r^3, float64
    if method == "primal":
        gram = 2.0 * n * p * p * 2  # per-fold validation Grams, float64
        basis = k * 2.0 * n_val * p * p * 2
        per_target = 2.0 * n * p + k * 2.0 * p * p + 2.0 * p * p
    else:
        gram = 2.0 * n * n * p * 2
        basis = k * 2.0 * n_val * r_fold * r_fold * 2
        per_target = k * 2.0 * r_fold * (n - n_val) + 2.0 * n * n
    alpha_free = _alpha_free_is_cheaper(int(n_val), int(r_fold), int(n_alphas))
    if alpha_free:
        basis += k * 2.0 * r_fold * r_fold * n_val * 2  # G = A'A, float64
        per_target += k * (2 * (2 * r_fold * r_fold) + 2 * n_val * r_fold + 2 * (3 * 2 * n_alphas * r_fold))
    else:
        per_target += k * n_alphas * 2.0 * n_val * r_fold
    test_design = 2.0 * n_test * p * r if n_test else 0.0
    per_target += 2.0 * n_test * r if n_test else 0.0
    return {"design": gram + eigh + basis + test_design, "targets": per_target * n_targets, "method": method,
            "alpha_free": bool(alpha_free)}


def _plan_validation(b, fold: dict, lam, A64, alphas_d, alpha_min: float) -> None:
    """Prepare the alpha-free route to validation scores when it costs fewer FLOPs.

    The validation error of alpha ``a`` is ``|y|^2 - 2 y'A D_a z + z'D_a G D_a z`` with
    ``A`` the validation rows in the eigenbasis, ``D_a = diag(1 / (a + lambda))``,
    ``z`` the projected training targets and ``G = A'A``. The partial fractions
    ``d_k d_l = (d_k - d_l) / (lambda_l - lambda_k)`` turn the quadratic term into
    ``sum_k z_k (2 d_k (H z)_k + d_k^2 (G_c z)_k)`` with ``H = G / (lambda_l - lambda_k)``
    off the runs of equal eigenvalues and ``G_c`` the block diagonal of ``G`` on them:
    one float64 ``r x r`` GEMM per fold for every alpha at once, instead of one
    ``n_val x r`` float32 GEMM per alpha. Eigenvalues within ``_CLUSTER_TOL`` of each
    other are set to their mean (a relative change below float32 resolution), which
    keeps ``H`` bounded; ``H`` is applied in float64, so the cancellation between its
    large entries costs at most ``1e-16 / _CLUSTER_TOL`` of relative precision.
    """
    n_val, r = A64.shape
    if not _alpha_free_is_cheaper(n_val, r, alphas_d.shape[0]):
        return
    lam_np = np.asarray(b.to_numpy(lam), dtype=np.float64)
    runs = _eigen_runs(lam_np, alpha_min)
    for s, e in runs:
        lam_np[s:e] = lam_np[s:e].mean()
    lam_c = b.to_device(lam_np, "float64")
    G = A64.T @ A64
    diff = lam_c[None, :] - lam_c[:, None]
    diff.reshape(-1)[:: r + 1] = float("inf")
    for s, e in runs:
        diff[s:e, s:e] = float("inf")
    H = G / diff
    del diff
    fold.update(
        H=H, G_diag=G.reshape(-1)[:: r + 1] * 1.0, G_runs=[(s, e, G[s:e, s:e] * 1.0) for s, e in runs],
        D64=1.0 / (alphas_d[:, None] + lam_c[None, :]),
    )


def _pearson_from_sums(b, n: int, sy, yy, sp, pp, yp):
    """Pearson r (n_alphas x targets, float64) from the sums of ``y``, ``y^2`` (per
    target), ``p``, ``p^2`` and ``y p`` (per alpha and target) over ``n`` rows; NaN where
    ``y`` or ``p`` is constant to float precision (e.g. a zero-padded target)."""
    cov = yp - sy[None, :] * sp / n
    vy = (yy - sy * sy / n)[None, :]
    vp = pp - sp * sp / n
    ok = (vy > 1e-12 * yy[None, :]) & (vp > 1e-12 * pp)
    den2 = vy * vp
    den2[~ok] = 1.0
    r = cov / b.sqrt(den2)
    r[~ok] = float("nan")
    return r


def _validation_sse(b, fold: dict, Z, Yv, want_r: bool = False):
    """Sum of squared validation errors of every alpha (n_alphas x targets); with
    ``want_r``, also the validation Pearson r of every alpha (float64).

    The prediction for alpha ``a`` is ``A diag(D[a]) Z``: ``A`` maps the eigenbasis to the
    validation rows, ``D[a]`` is the ridge shrinkage of each eigen-direction, ``Z`` the
    training targets projected on the eigenbasis (primal and kernel forms alike).
    The r needs only sums that the squared error is made of, plus the prediction's sum
    ``1'A D_a z``; computing it leaves the squared error's arithmetic as it was.
    """
    n_val = Yv.shape[0]
    if "H" not in fold:  # direct: one prediction per alpha
        sse = b.zeros_like(Yv, shape=(len(fold["D"]), Yv.shape[1]))
        if want_r:
            yp, pp, sp = (b.zeros_like(Yv, shape=sse.shape) for _ in range(3))
        for a in range(len(fold["D"])):
            pred = fold["A"] @ (fold["D"][a][:, None] * Z)
            err = Yv - pred
            sse[a] = (err * err).sum(0)
            del err
            if want_r:
                yp[a] = (Yv * pred).sum(0)
                pp[a] = (pred * pred).sum(0)
                sp[a] = pred.sum(0)
            del pred
        if not want_r:
            return sse
        yv = b.asarray(Yv, dtype="float64")
        f64 = [b.asarray(v, dtype="float64") for v in (sp, pp, yp)]
        return sse, _pearson_from_sums(b, n_val, yv.sum(0), (yv * yv).sum(0), *f64)
    D = fold["D64"]
    z = b.asarray(Z, dtype="float64")
    P = fold["H"] @ z
    P *= z
    sse = 2.0 * (D @ P)
    del P
    R = fold["G_diag"][:, None] * z
    for s, e, Gc in fold["G_runs"]:
        R[s:e] = Gc @ z[s:e]
    R *= z
    sse += (D * D) @ R
    del R
    pp = sse * 1.0 if want_r else None
    Bz = b.asarray(fold["A"].T @ Yv, dtype="float64")
    Bz *= z
    yp = D @ Bz
    del Bz
    sse -= 2.0 * yp
    yv = b.asarray(Yv, dtype="float64")
    yy = (yv * yv).sum(0)
    sse += yy[None, :]
    if not want_r:
        return sse
    sp = (D * fold["a1"][None, :]) @ z  # the prediction sums 1'A D_a z, no targets-sized temporary
    return sse, _pearson_from_sums(b, n_val, yv.sum(0), yy, sp, pp, yp)


# -- decompositions ----------------------------------------------------------------
def _shrinkage(b, alphas_d, lam):
    """``1 / (alpha + lambda)`` for every alpha (rows) and eigenvalue (columns), float32."""
    return b.asarray(1.0 / (alphas_d[:, None] + lam[None, :]), dtype="float32")


def _make_fold(b, tr_d, va_d, lam, V, A64, alphas_d, invalid: np.ndarray) -> dict:
    """One fold's shared state (primal and kernel forms alike): the eigenbasis ``V``, the
    map ``A`` from it to the validation rows, the shrinkage ``D``, and the alpha-free
    validation route when it is the cheaper one."""
    fold = dict(tr=tr_d, va=va_d, V=b.asarray(V, dtype="float32"), A=b.asarray(A64, dtype="float32"),
                D=_shrinkage(b, alphas_d, lam), invalid=invalid, a1=A64.sum(0))
    _plan_validation(b, fold, lam, A64, alphas_d, float(b.to_numpy(alphas_d).min()))
    return fold


class _Primal:
    """Per-fold eigendecompositions of X_train' X_train, shared by all targets."""

    method = "primal"

    def __init__(self, b, X: np.ndarray, folds, alphas64: np.ndarray, X_test: np.ndarray | None):
        self.b = b
        n, p = X.shape
        self.rank = p
        self.partition = _is_partition(folds, n)
        Xd = b.to_device(X)
        self.X = Xd
        self.folds = []
        alphas_d = b.to_device(alphas64, "float64")
        grams = []
        for tr, va in folds:
            va_d = b.rows(va, Xd)
            Xv = Xd[va_d]
            Xv64 = b.asarray(Xv, dtype="float64")
            grams.append(Xv64.T @ Xv64)
        G = sum(grams[1:], grams[0]) if self.partition else None
        mats = []
        for k, (tr, va) in enumerate(folds):
            if self.partition:
                mats.append(G - grams[k])
            else:
                Xt64 = b.asarray(Xd[b.rows(tr, Xd)], dtype="float64")
                mats.append(Xt64.T @ Xt64)
        del grams
        if G is None:
            X64 = b.asarray(Xd, dtype="float64")
            G = X64.T @ X64
        mats.append(G)
        del G
        decs = b.eigh_many(mats)
        del mats
        for (tr, va), (lam, V) in zip(folds, decs[:-1]):
            va_d = b.rows(va, Xd)
            A64 = b.asarray(Xd[va_d], dtype="float64") @ V
            self.folds.append(_make_fold(b, b.rows(tr, Xd), va_d, b.clamp0(lam), V, A64, alphas_d,
                                         np.zeros(len(alphas64), bool)))
            del A64
        lam, W = decs[-1]
        del decs
        self.D_full = _shrinkage(b, alphas_d, b.clamp0(lam))
        self.W = b.asarray(W, dtype="float32")
        self.XteW = b.to_device(X_test) @ self.W if X_test is not None else None

    def cv_scores(self, Yc, score_fn, n_alphas: int):
        """Fold scores and validation r of every alpha (folds x alphas x targets), and
        what :meth:`refit` needs of these targets: ``X' Y`` on all training rows (made
        from the per-fold blocks computed here, so it is not computed twice)."""
        b = self.b
        blocks = [self.X[f["va"]].T @ Yc[f["va"]] for f in self.folds] if self.partition else None
        total = sum(blocks[1:], blocks[0]) if self.partition else self.X.T @ Yc
        scores = b.zeros_like(Yc, shape=(len(self.folds), n_alphas, Yc.shape[1]))
        rs = b.zeros_like(Yc, shape=scores.shape)
        for k, f in enumerate(self.folds):
            if self.partition:
                XtY = total - blocks[k]
            else:
                XtY = self.X[f["tr"]].T @ Yc[f["tr"]]
            Z = f["V"].T @ XtY
            del XtY
            sse, r = _validation_sse(b, f, Z, Yc[f["va"]], want_r=True)
            scores[k] = score_fn(sse, Yc[f["va"]])
            rs[k] = r
            del Z, sse, r
        return scores, rs, total

    def refit(self, XtY, best_idx, return_coef: bool):
        """Held-out predictions (and weights) at each target's alpha ``best_idx``, from
        ``X' Y`` as :meth:`cv_scores` returned it."""
        Z = self.W.T @ XtY
        S = self.D_full[best_idx].T * Z
        pred = self.XteW @ S if self.XteW is not None else None
        coef = self.W @ S if return_coef else None
        return pred, coef


class _Kernel:
    """Per-fold eigendecompositions of the linear kernel X_train X_train'."""

    method = "kernel"

    def __init__(self, b, X: np.ndarray, folds, alphas64: np.ndarray, X_test: np.ndarray | None):
        self.b = b
        n, p = X.shape
        Xd = b.to_device(X)
        self.X = Xd
        X64 = b.asarray(Xd, dtype="float64")
        K = X64 @ X64.T
        self.rank = n
        alphas_d = b.to_device(alphas64, "float64")
        self.folds = []
        idx = [(b.rows(tr, K), b.rows(va, K)) for tr, va in folds]
        decs = b.eigh_many([K[tr_d][:, tr_d] for tr_d, _ in idx] + [K])
        for (tr, va), (tr_d, va_d), (lam, V) in zip(folds, idx, decs[:-1]):
            lam_min = float(b.to_numpy(lam[0]))
            # himalaya's rule ("nan"): an alpha that does not compensate twice a negative
            # eigenvalue (float error of an indefinite kernel) cannot be chosen
            invalid = alphas64 < -2 * lam_min if lam_min < 0 else np.zeros(len(alphas64), bool)
            A64 = K[va_d][:, tr_d] @ V
            self.folds.append(_make_fold(b, b.rows(tr, Xd), b.rows(va, Xd), lam, V, A64, alphas_d, invalid))
            del A64
        lam, W = decs[-1]
        del decs
        self.D_full = _shrinkage(b, alphas_d, b.clamp0(lam))
        self.W = b.asarray(W, dtype="float32")
        if X_test is not None:
            Kte = b.asarray(b.asarray(b.to_device(X_test), dtype="float64") @ X64.T, dtype="float32")
            self.KteW = Kte @ self.W
        else:
            self.KteW = None
        del K, X64

    def cv_scores(self, Yc, score_fn, n_alphas: int):
        """Fold scores and validation r of every alpha (folds x alphas x targets), and
        what :meth:`refit` needs of these targets (the training responses themselves)."""
        b = self.b
        scores = b.zeros_like(Yc, shape=(len(self.folds), n_alphas, Yc.shape[1]))
        rs = b.zeros_like(Yc, shape=scores.shape)
        for k, f in enumerate(self.folds):
            Z = f["V"].T @ Yc[f["tr"]]
            sse, r = _validation_sse(b, f, Z, Yc[f["va"]], want_r=True)
            scores[k] = score_fn(sse, Yc[f["va"]])
            rs[k] = r
            del Z, sse, r
        return scores, rs, Yc

    def refit(self, Yc, best_idx, return_coef: bool):
        """Held-out predictions (and weights) at each target's alpha ``best_idx``."""
        S = self.D_full[best_idx].T * (self.W.T @ Yc)
        pred = self.KteW @ S if self.KteW is not None else None
        coef = self.X.T @ (self.W @ S) if return_coef else None
        return pred, coef


def _score_fn(name: str):
    """Fold score from the summed squared validation error ``sse`` and the responses."""
    if name in ("l2", "l2_neg_loss"):
        def l2(sse, y):
            return -sse / y.shape[0]

        return l2
    if name in ("r2", "r2_score"):
        def r2(sse, y):
            var = ((y - y.mean(0)) ** 2).sum(0)
            out = 1.0 - sse / (var + (var == 0))
            out[:, var == 0] = 0
            return out

        return r2
    raise ValidationError(f"alpha_criterion must be 'l2' (himalaya's default) or 'r2', got {name!r}")


def _select(b, scores, alphas32: np.ndarray, invalid: np.ndarray):
    """himalaya's ``_select_best_alphas`` (local alpha, not conservative), on numpy."""
    s = b.to_numpy(scores)
    s = np.array(s, copy=True)
    for k, inv in enumerate(invalid):
        s[k, inv] = -1e5
    mean = s.mean(0, dtype=np.float64).astype(np.float32)
    mean_tb = mean + (np.log(alphas32) * np.float32(1e-10))[:, None]
    idx = np.argmax(mean_tb, axis=0)
    best = np.take_along_axis(mean_tb, idx[None], 0)[0]
    return idx, best


def _fold_mean_at(b, rs, idx: np.ndarray) -> np.ndarray:
    """Mean over folds (where finite) of ``rs`` (folds x alphas x targets) at each
    target's alpha ``idx``; NaN where no fold has a finite value."""
    r = b.to_numpy(rs)
    at = np.take_along_axis(np.asarray(r, dtype=np.float64), np.asarray(idx)[None, None, :], 1)[:, 0]
    ok = np.isfinite(at)
    n = ok.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.where(ok, at, 0.0).sum(0) / np.maximum(n, 1), np.nan).astype(np.float32)


def _chunk_size(per_target_bytes: int, n_targets: int, b: Backend, memory_fraction: float,
                n_targets_batch: int | None) -> int:
    if n_targets_batch is not None:
        if int(n_targets_batch) < 1:
            raise ValidationError(f"n_targets_batch must be a positive integer, got {n_targets_batch!r}")
        return int(n_targets_batch)
    budget = memory_fraction * b.available_memory()
    return int(max(1, min(n_targets, budget // max(per_target_bytes, 1))))


@dataclass
class _Problem:
    """Checked inputs of one ridge CV problem (what :func:`_check_problem` returns)."""

    X: np.ndarray
    Ys: list[np.ndarray]
    Yts: list[np.ndarray | None]
    X_test: np.ndarray | None
    alphas32: np.ndarray
    alphas64: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]
    method: str


def _check_responses(Ys: list, Y_test: Sequence | None, X_test, n: int, p: int, named: bool):
    Ys = [_check_2d(y, f"Y[{i}]" if named else "Y") for i, y in enumerate(Ys)]
    for i, y in enumerate(Ys):
        if y.shape[0] != n:
            raise ValidationError(f"Y{f'[{i}]' if named else ''} has {y.shape[0]} rows but X has {n}")
    if Y_test is not None:
        Yts = [_check_2d(y, "Y_test") for y in Y_test]
        if len(Yts) != len(Ys):
            raise ValidationError(f"Y_test has {len(Yts)} arrays but Y has {len(Ys)}")
        if X_test is None:
            raise ValidationError("Y_test was given without X_test")
    else:
        Yts = [None] * len(Ys)
    if X_test is not None:
        X_test = _check_2d(X_test, "X_test")
        if X_test.shape[1] != p:
            raise ValidationError(f"X_test has {X_test.shape[1]} features but X has {p}")
        for i, (y, yt) in enumerate(zip(Ys, Yts)):
            if yt is not None and (yt.shape[0] != X_test.shape[0] or yt.shape[1] != y.shape[1]):
                raise ValidationError(
                    f"Y_test[{i}] has shape {yt.shape}, expected ({X_test.shape[0]}, {y.shape[1]})"
                )
    return Ys, Yts, X_test


def _check_problem(X, Ys: list, story_lengths, alphas, n_folds: int, cv, X_test, Y_test, method: str,
                   named: bool) -> _Problem:
    """Validate the inputs at the boundary (shapes, finiteness, alphas, folds, method)."""
    X = _check_2d(X, "X")
    n, p = X.shape
    Ys, Yts, X_test = _check_responses(Ys, Y_test, X_test, n, p, named)
    alphas64 = np.asarray(alphas, dtype=np.float64).ravel()
    if alphas64.size == 0 or not np.all(np.isfinite(alphas64)) or np.any(alphas64 <= 0):
        raise ValidationError(f"alphas must be a non-empty list of positive numbers, got {alphas!r}")
    alphas32 = alphas64.astype(np.float32)
    alphas64 = alphas32.astype(np.float64)  # the grid as himalaya sees it (float32)
    if cv is None:
        if story_lengths is None:
            raise ValidationError(
                "fit_ridge_cv needs story_lengths (folds hold out whole stories) or an explicit cv="
            )
        story_bounds(story_lengths, n)
        folds = story_folds(story_lengths, n_folds)
    else:
        folds = _check_folds(cv, n)
    if method == "auto":
        method = "primal" if n >= p else "kernel"
    if method not in ("primal", "kernel"):
        raise ValidationError(f"method must be 'auto', 'primal' or 'kernel', got {method!r}")
    return _Problem(X, Ys, Yts, X_test, alphas32, alphas64, folds, method)


def _solve(b: Backend, pb: _Problem, score_fn, return_coef: bool, n_targets_batch, memory_fraction: float,
           progress: bool) -> tuple[list[dict], int]:
    """Alphas, CV scores, predictions (and weights) of every target, in chunks of targets."""
    (n, p), folds, alphas32 = pb.X.shape, pb.folds, pb.alphas32
    dec = (_Primal if pb.method == "primal" else _Kernel)(b, pb.X, folds, pb.alphas64, pb.X_test)
    invalid = [f["invalid"] for f in dec.folds]
    n_val = max(len(va) for _, va in folds)
    n_test = 0 if pb.X_test is None else pb.X_test.shape[0]
    per_target = 4 * (2 * n + (len(folds) + 12) * dec.rank + 2 * n_val + n_test + 2 * len(folds) * len(alphas32)
                      + (p if return_coef else 0))
    chunk = _chunk_size(per_target, max(y.shape[1] for y in pb.Ys), b, memory_fraction, n_targets_batch)
    tasks = [(i, s) for i, y in enumerate(pb.Ys) for s in range(0, y.shape[1], chunk)]
    out = []
    for y in pb.Ys:
        t = y.shape[1]
        out.append(
            dict(idx=np.zeros(t, np.int64), cv=np.zeros(t, np.float32), cv_r=np.zeros(t, np.float32),
                 pred=np.zeros((n_test, t), np.float32) if n_test else None,
                 coef=np.zeros((p, t), np.float32) if return_coef else None)
        )
    for i, start in tqdm(tasks, desc="ridge targets", unit="chunk", disable=not progress or len(tasks) < 2):
        sl = slice(start, min(start + chunk, pb.Ys[i].shape[1]))
        Yc = b.to_device(pb.Ys[i][:, sl])
        scores, rs, fit_targets = dec.cv_scores(Yc, score_fn, len(alphas32))
        idx, best = _select(b, scores, alphas32, invalid)
        del scores
        out[i]["cv_r"][sl] = _fold_mean_at(b, rs, idx)
        del rs
        pred, coef = dec.refit(fit_targets, b.rows(idx, Yc), return_coef)
        del fit_targets
        o = out[i]
        o["idx"][sl] = idx
        o["cv"][sl] = best - np.log(alphas32[idx]) * np.float32(1e-10)
        if pred is not None:
            o["pred"][:, sl] = b.to_numpy(pred)
        if coef is not None:
            o["coef"][:, sl] = b.to_numpy(coef)
        del Yc, pred, coef
    return out, chunk


def fit_ridge_cv_many(
    X: np.ndarray,
    Ys: Sequence[np.ndarray],
    story_lengths: Sequence[int] | None = None,
    *,
    alphas: Sequence[float] | np.ndarray = DEFAULT_ALPHAS,
    n_folds: int = 5,
    cv: Iterable[tuple[np.ndarray, np.ndarray]] | None = None,
    X_test: np.ndarray | None = None,
    Y_test: Sequence[np.ndarray] | None = None,
    method: str = "auto",
    backend: Any = "auto",
    alpha_criterion: str = "l2",
    return_coef: bool = False,
    n_targets_batch: int | None = None,
    memory_fraction: float = 0.2,
    progress: bool = True,
) -> list[RidgeCVResult]:
    """:func:`fit_ridge_cv` for several response arrays that share one design ``X``
    (subjects who heard the same stories): the decompositions are made once for all of
    them. ``Ys`` and ``Y_test`` are lists (one array per subject); returns one
    :class:`RidgeCVResult` per array, in order. Other parameters as in
    :func:`fit_ridge_cv`."""
    return _fit(X, list(Ys), story_lengths, alphas=alphas, n_folds=n_folds, cv=cv, X_test=X_test,
                Y_test=None if Y_test is None else list(Y_test), method=method, backend=backend,
                alpha_criterion=alpha_criterion, return_coef=return_coef, n_targets_batch=n_targets_batch,
                memory_fraction=memory_fraction, progress=progress, named=True)


@renamed_keywords(score_func="alpha_criterion")
def fit_ridge_cv(
    X: np.ndarray,
    Y: np.ndarray,
    story_lengths: Sequence[int] | None = None,
    *,
    alphas: Sequence[float] | np.ndarray = DEFAULT_ALPHAS,
    n_folds: int = 5,
    cv: Iterable[tuple[np.ndarray, np.ndarray]] | None = None,
    X_test: np.ndarray | None = None,
    Y_test: np.ndarray | None = None,
    method: str = "auto",
    backend: Any = "auto",
    alpha_criterion: str = "l2",
    return_coef: bool = False,
    n_targets_batch: int | None = None,
    memory_fraction: float = 0.2,
    progress: bool = True,
) -> RidgeCVResult:
    """Ridge regression with a per-target alpha chosen by story-wise cross-validation.

    Parameters
    ----------
    X : array (n_samples, n_features)
        Training design (already delayed and scaled). Not centred here: like himalaya's
        ``fit_intercept=False``, features and responses are expected zero-mean
        (z-scored per story).
    Y : array (n_samples, n_targets)
        Training responses. Several subjects that share ``X`` (heard the same stories)
        go to :func:`fit_ridge_cv_many`, which makes the decompositions once for all.
        (A list here is still accepted, with a DeprecationWarning, and gives a list.)
    story_lengths : sequence of int, optional
        Rows of each training story, in order; folds hold out whole stories
        (:class:`brainalign.timing.StoryKFold`). Required unless ``cv`` is given.
    alphas : array (n_alphas,)
        Candidate regularisation strengths.
    n_folds : int
        Number of story folds.
    cv : iterable of (train_indices, validation_indices), optional
        Explicit splits (overrides ``story_lengths``/``n_folds``).
    X_test : array (n_test, n_features), optional
        Test design; gives ``predictions``.
    Y_test : array (n_test, n_targets), optional
        Test responses; gives ``score`` (Pearson r) and ``r2``.
    method : {"auto", "primal", "kernel"}
        ``"auto"``: primal when n_samples >= n_features, else kernel.
    backend : str, himalaya backend module or :class:`~brainalign.encoding._backend.Backend`
        ``"auto"``, ``"numpy"``, ``"torch"``, ``"torch_cuda"``, ``"cupy"``.
    alpha_criterion : {"l2", "r2"}
        Fold score by which alphas are chosen (formerly ``score_func``). ``"l2"`` (minus
        the mean squared error) is what himalaya's RidgeCV and KernelRidgeCV use by default.
    return_coef : bool
        Also return the refit weights (n_features x n_targets).
    n_targets_batch : int, optional
        Targets per chunk; default: sized so one chunk uses ``memory_fraction`` of the
        free memory of the backend's device.
    progress : bool
        Show a tqdm bar over chunks.

    Returns
    -------
    RidgeCVResult
        Besides the chosen alphas and their mean fold score (``cv_scores``, in
        ``alpha_criterion``'s units), it holds ``cv_r``: the validation Pearson r at the
        chosen alpha, averaged over folds.
    """
    kw = dict(alphas=alphas, n_folds=n_folds, cv=cv, X_test=X_test, method=method, backend=backend,
              alpha_criterion=alpha_criterion, return_coef=return_coef, n_targets_batch=n_targets_batch,
              memory_fraction=memory_fraction, progress=progress)
    if isinstance(Y, (list, tuple)):
        warnings.warn("fit_ridge_cv(X, [Y1, Y2, ...]) is deprecated: call fit_ridge_cv_many for several "
                      "response arrays sharing one design (fit_ridge_cv now always returns one result)",
                      DeprecationWarning, stacklevel=3)
        Yt = None if Y_test is None else list(Y_test if isinstance(Y_test, (list, tuple)) else [Y_test])
        return _fit(X, list(Y), story_lengths, Y_test=Yt, named=True, **kw)
    return _fit(X, [Y], story_lengths, Y_test=None if Y_test is None else [Y_test], named=False, **kw)[0]


def _fit(X, Ys: list, story_lengths, *, alphas, n_folds, cv, X_test, Y_test, method, backend, alpha_criterion,
         return_coef, n_targets_batch, memory_fraction, progress, named: bool) -> list[RidgeCVResult]:
    """Validate, solve every target, and assemble one result per response array."""
    pb = _check_problem(X, Ys, story_lengths, alphas, n_folds, cv, X_test, Y_test, method, named)
    b = resolve_backend(backend)
    score_fn = _score_fn(alpha_criterion)
    log.info(
        "ridge CV (%s, backend %s): %d samples x %d features, %d target arrays, %d alphas, %d folds",
        pb.method, b.name, pb.X.shape[0], pb.X.shape[1], len(pb.Ys), len(pb.alphas64), len(pb.folds),
    )
    out, chunk = _solve(b, pb, score_fn, return_coef, n_targets_batch, memory_fraction, progress)
    results = []
    for o, yt in zip(out, pb.Yts):
        res = RidgeCVResult(
            alphas=pb.alphas32, best_alpha_index=o["idx"], best_alphas=pb.alphas32[o["idx"]], cv_scores=o["cv"],
            method=pb.method, predictions=o["pred"], coef=o["coef"], cv_r=o["cv_r"],
            info=dict(backend=b.name, n_folds=len(pb.folds), chunk=chunk, alpha_criterion=alpha_criterion),
        )
        if yt is not None:
            res.score = pearson_r(yt, o["pred"]).astype(np.float32)
            res.r2 = r2_score(yt, o["pred"]).astype(np.float32)
        results.append(res)
    return results
