"""A scikit-learn style encoder for single fits: per-story scaling + FIR delays + ridge CV."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import NotFittedError as _SklearnNotFittedError
from sklearn.utils.validation import check_is_fitted

from ..errors import ValidationError
from ..timing import Delayer, story_bounds, zscore_per_story
from ._compat import warn_renamed
from .ridge import DEFAULT_ALPHAS, fit_ridge_cv, pearson_r

__all__ = ["Encoder", "NotFittedError"]


class NotFittedError(ValidationError, _SklearnNotFittedError):
    """An estimator used before ``fit``: scikit-learn's ``NotFittedError`` (so
    ``except sklearn.exceptions.NotFittedError`` catches it) and a brainalign
    :class:`~brainalign.errors.ValidationError`."""


class Encoder(RegressorMixin, BaseEstimator):
    """Delayer + per-story z-scoring + ridge with per-target alphas from story-wise CV.

    Parameters
    ----------
    delays : sequence of int
        FIR delays in TRs.
    alphas : array, optional
        Candidate ridge penalties (default :data:`~brainalign.encoding.DEFAULT_ALPHAS`).
    n_folds : int
        Story folds for choosing alphas.
    scale : bool
        Z-score the features of each story before delaying.
    backend, method, alpha_criterion
        Passed to :func:`brainalign.encoding.fit_ridge_cv` (``alpha_criterion``: the fold
        score alphas are chosen by, ``"l2"`` or ``"r2"``).
    score_func
        Deprecated name of ``alpha_criterion`` (a DeprecationWarning at ``fit``).

    Attributes
    ----------
    coef_ : array (n_features * n_delays, n_targets)
    best_alphas_ : array (n_targets,)
    cv_scores_ : array (n_targets,)
    n_features_in_ : int

    Notes
    -----
    :meth:`score` returns the mean over targets of the per-target Pearson r (the field's
    encoding score), not R^2; :meth:`score_targets` gives the per-target values.
    """

    def __init__(self, delays: Sequence[int] = (1, 2, 3, 4), alphas: Any = None, n_folds: int = 5,
                 scale: bool = True, backend: Any = "auto", method: str = "auto", alpha_criterion: str = "l2",
                 score_func: str = "deprecated"):
        self.delays = delays
        self.alphas = alphas
        self.n_folds = n_folds
        self.scale = scale
        self.backend = backend
        self.method = method
        self.alpha_criterion = alpha_criterion
        self.score_func = score_func

    def _criterion(self) -> str:
        if self.score_func != "deprecated":
            warn_renamed("Encoder", "score_func", "alpha_criterion", stacklevel=4)
            return self.score_func
        return self.alpha_criterion

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True  # one column per voxel / vertex
        tags.target_tags.single_output = True
        return tags

    def _transform(self, X, story_lengths) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise ValidationError(f"X must be 2-D (TRs x features), got shape {X.shape}")
        lengths = list(story_lengths) if story_lengths is not None else [X.shape[0]]
        story_bounds(lengths, X.shape[0])
        if self.scale:
            X = zscore_per_story(X, lengths)
        return Delayer(self.delays).fit_transform(X, story_lengths=lengths).astype(np.float32)

    def fit(self, X, y, story_lengths: Sequence[int] | None = None):
        """Fit on stacked training stories; ``story_lengths`` gives the rows of each.

        Without ``story_lengths`` the rows are one story (scaled and delayed as one, as
        :meth:`predict` does), and alphas are chosen on ``n_folds`` contiguous runs of
        rows, each held out whole (never a random split of TRs); give the story lengths
        whenever the rows are several stories.
        """
        from sklearn.utils.validation import validate_data

        X, Y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=np.float64)
        n = X.shape[0]
        cv = None
        if story_lengths is None:
            if n < max(2, int(self.n_folds)):
                raise ValidationError(f"Encoder.fit: {n} sample{'s' if n != 1 else ''} cannot make "
                                      f"{self.n_folds} folds of contiguous rows (n_samples = {n})")
            from sklearn.model_selection import KFold

            cv = list(KFold(int(self.n_folds), shuffle=False).split(X))
        Xd = self._transform(X, story_lengths)
        Y = np.asarray(Y, dtype=np.float32)
        self._y_1d = Y.ndim == 1
        if Y.ndim == 1:
            Y = Y[:, None]
        res = fit_ridge_cv(Xd, Y, story_lengths, cv=cv, alphas=DEFAULT_ALPHAS if self.alphas is None else self.alphas,
                           n_folds=self.n_folds, method=self.method, backend=self.backend,
                           alpha_criterion=self._criterion(), return_coef=True, progress=False)
        self.coef_ = res.coef
        self.best_alphas_ = res.best_alphas
        self.cv_scores_ = res.cv_scores
        return self

    def predict(self, X, story_lengths: Sequence[int] | None = None) -> np.ndarray:
        """Predictions (TRs x targets; 1-D when ``fit`` got a 1-D ``Y``) of stacked stories."""
        from sklearn.utils.validation import validate_data

        try:
            check_is_fitted(self, "coef_")
        except _SklearnNotFittedError:
            raise NotFittedError("this Encoder is not fitted yet: call fit() first") from None
        X = validate_data(self, X, reset=False, dtype=np.float64)  # also: as many features as in fit
        pred = self._transform(X, story_lengths) @ self.coef_
        return pred[:, 0] if getattr(self, "_y_1d", False) else pred

    def score_targets(self, X, y, story_lengths: Sequence[int] | None = None) -> np.ndarray:
        """Per-target Pearson r between predictions and ``y``."""
        Y = np.asarray(y, dtype=np.float32)
        pred = self.predict(X, story_lengths)
        return pearson_r(Y if Y.ndim == 2 else Y[:, None], pred if pred.ndim == 2 else pred[:, None])

    def score(self, X, y, story_lengths: Sequence[int] | None = None, sample_weight=None) -> float:
        """Mean over targets of the per-target Pearson r (not R^2; ``sample_weight`` is not used)."""
        return float(np.nanmean(self.score_targets(X, y, story_lengths)))
